import VeilTensor

// Add, Sub, Mul and Div with numpy broadcasting. The backward of a broadcast operand sums the
// output gradient over the axes it was stretched along.

/// How two shapes broadcast: the output shape and each operand's element strides in it (0
/// along a stretched axis). Loops run over rows: adjacent axes along which both operands step
/// alike are merged, so that the innermost loop is long and runs with a fixed step (1, or 0 for
/// a stretched operand) and vectorises; [N, C, H, W] ⊙ [N, C, 1, 1] is N·C rows of H·W.
struct Broadcast {
  let shape: [Int]
  let aStrides: [Int]
  let bStrides: [Int]
  /// The merged outer axes (every row), and each operand's stride along them.
  private let outer: [Int]
  private let aOuter, bOuter: [Int]
  /// The row: its length and each operand's step along it (1 or 0).
  private let inner: Int
  private let aStep, bStep: Int

  init(_ a: [Int], _ b: [Int], op: String) throws {
    let rank = max(a.count, b.count)
    let pa = Array(repeating: 1, count: rank - a.count) + a
    let pb = Array(repeating: 1, count: rank - b.count) + b
    var out: [Int] = []
    for (x, y) in Swift.zip(pa, pb) {
      guard x == y || x == 1 || y == 1 else {
        throw TrainError.shapeMismatch(op: op, detail: "shapes \(a) and \(b) do not broadcast")
      }
      out.append(x == 1 ? y : x)
    }
    func strides(_ s: [Int]) -> [Int] {
      var st = Array(repeating: 0, count: rank)
      var acc = 1
      for i in stride(from: rank - 1, through: 0, by: -1) {
        st[i] = s[i] == 1 ? 0 : acc
        acc *= s[i]
      }
      return st
    }
    shape = out
    aStrides = strides(pa)
    bStrides = strides(pb)
    // Merge from the innermost axis out: axis d joins the one inside it when, for both
    // operands, stepping once along d is stepping a whole run of the inner one (or both are 0).
    var dims: [(extent: Int, a: Int, b: Int)] = []
    for d in stride(from: rank - 1, through: 0, by: -1) where out[d] != 1 {
      if let last = dims.last, aStrides[d] == last.a * last.extent, bStrides[d] == last.b * last.extent {
        dims[dims.count - 1].extent *= out[d]
      } else {
        dims.append((out[d], aStrides[d], bStrides[d]))
      }
    }
    // The row is the innermost merged axis when both step by 0 or 1 along it.
    if let first = dims.first, first.a <= 1, first.b <= 1 {
      (inner, aStep, bStep) = (first.extent, first.a, first.b)
      dims.removeFirst()
    } else {
      (inner, aStep, bStep) = (1, 0, 0)
    }
    outer = dims.reversed().map(\.extent)
    aOuter = dims.reversed().map(\.a)
    bOuter = dims.reversed().map(\.b)
  }

  /// Calls `body(output offset, a offset, b offset)` at the start of every row, in order.
  @inline(__always)
  func forEachRow(_ body: (Int, Int, Int) -> Void) {
    let rows = outer.reduce(1, *)
    var index = [Int](repeating: 0, count: outer.count)
    var (ia, ib) = (0, 0)
    for r in 0..<rows {
      body(r * inner, ia, ib)
      var d = outer.count - 1
      while d >= 0 {
        index[d] += 1
        ia += aOuter[d]
        ib += bOuter[d]
        if index[d] < outer[d] { break }
        ia -= aOuter[d] * outer[d]
        ib -= bOuter[d] * outer[d]
        index[d] = 0
        d -= 1
      }
    }
  }

  /// f(a, b) element by element over the broadcast shape.
  @inline(__always)
  func apply(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
    let result = Tensor(uninitialized: shape)
    let (x, y, out) = (a.storage.pointer, b.storage.pointer, result.storage.pointer)
    let n = inner
    forEachRow { o, i, j in
      switch (aStep, bStep) {
      case (1, 1): for k in 0..<n { out[o + k] = f(x[i + k], y[j + k]) }
      case (1, 0):
        let v = y[j]
        for k in 0..<n { out[o + k] = f(x[i + k], v) }
      case (0, 1):
        let u = x[i]
        for k in 0..<n { out[o + k] = f(u, y[j + k]) }
      default: for k in 0..<n { out[o + k] = f(x[i], y[j]) }
      }
    }
    withExtendedLifetime((a, b)) {}
    return result
  }

  /// Σ over the stretched axes of `g` into the first operand's shape or the second's: `g`
  /// itself where that operand was not stretched (tensors are never changed in place).
  func sum(_ g: Tensor, into shape: [Int], first: Bool) -> Tensor {
    shape == self.shape ? g : reduce(g, times: nil, into: shape, first: first)
  }

  /// Σ over the stretched axes of `g` (output-shaped) times `other` (the other operand, or
  /// nil for 1), into a tensor of the first operand's shape (`first`) or the second's.
  func reduce(_ g: Tensor, times other: Tensor?, into shape: [Int], first: Bool) -> Tensor {
    let result = Tensor(zeros: shape)
    let (gp, out, n) = (g.storage.pointer, result.storage.pointer, inner)
    // The target's step along a row, and the other operand's.
    let (into, by) = first ? (aStep, bStep) : (bStep, aStep)
    let op = other?.storage.pointer
    forEachRow { o, ia, ib in
      let (t, u) = first ? (ia, ib) : (ib, ia)
      switch (into, op) {
      case (1, nil): for k in 0..<n { out[t + k] += gp[o + k] }
      case (1, let p?): for k in 0..<n { out[t + k] += gp[o + k] * p[u + k * by] }
      case (_, nil):
        var s: Float = 0
        for k in 0..<n { s += gp[o + k] }
        out[t] += s
      case (_, let p?):
        var s: Float = 0
        for k in 0..<n { s += gp[o + k] * p[u + k * by] }
        out[t] += s
      }
    }
    withExtendedLifetime((g, other)) {}
    return result
  }
}

/// a + b with broadcasting.
public func add(_ a: Variable, _ b: Variable) throws -> Variable {
  let bc = try Broadcast(a.shape, b.shape, op: "Add")
  let y = bc.apply(a.value, b.value, +)
  return Variable(y, parents: [a, b]) { g in
    [
      a.requiresGrad ? bc.sum(g, into: a.shape, first: true) : nil,
      b.requiresGrad ? bc.sum(g, into: b.shape, first: false) : nil,
    ]
  }
}

/// a ⊙ b with broadcasting.
public func mul(_ a: Variable, _ b: Variable) throws -> Variable {
  let bc = try Broadcast(a.shape, b.shape, op: "Mul")
  let y = bc.apply(a.value, b.value, *)
  return Variable(y, parents: [a, b]) { g in
    [
      a.requiresGrad ? bc.reduce(g, times: b.value, into: a.shape, first: true) : nil,
      b.requiresGrad ? bc.reduce(g, times: a.value, into: b.shape, first: false) : nil,
    ]
  }
}

/// a − b with broadcasting.
public func sub(_ a: Variable, _ b: Variable) throws -> Variable {
  let bc = try Broadcast(a.shape, b.shape, op: "Sub")
  let y = bc.apply(a.value, b.value, -)
  return Variable(y, parents: [a, b]) { g in
    [
      a.requiresGrad ? bc.sum(g, into: a.shape, first: true) : nil,
      b.requiresGrad ? Kernels.map(bc.sum(g, into: b.shape, first: false)) { -$0 } : nil,
    ]
  }
}

/// a / b with broadcasting. ∂a = g / b; ∂b = −g·a/b² = −(g·y)/b, summed over b's stretched
/// axes before the division by b (b is constant along them).
public func div(_ a: Variable, _ b: Variable) throws -> Variable {
  let bc = try Broadcast(a.shape, b.shape, op: "Div")
  let y = bc.apply(a.value, b.value, /)
  return Variable(y, parents: [a, b]) { g in
    [
      a.requiresGrad ? bc.reduce(g, times: Kernels.map(b.value) { 1 / $0 }, into: a.shape, first: true) : nil,
      b.requiresGrad
        ? try Kernels.zip(bc.sum(try Kernels.zip(g, y, *), into: b.shape, first: false), b.value) { -$0 / $1 }
        : nil,
    ]
  }
}
