import VeilTensor

// Add, Sub, Mul and Div with numpy broadcasting. The backward of a broadcast operand sums the
// output gradient over the axes it was stretched along.

/// How two shapes broadcast: the output shape and each operand's element strides in it (0
/// along a stretched axis).
struct Broadcast {
  let shape: [Int]
  let aStrides: [Int]
  let bStrides: [Int]

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
  }

  /// Calls `body(output index, a index, b index)` for every output element in order.
  func forEach(_ body: (Int, Int, Int) -> Void) {
    let n = shape.reduce(1, *)
    let rank = shape.count
    var index = Array(repeating: 0, count: rank)
    var ia = 0
    var ib = 0
    for o in 0..<n {
      body(o, ia, ib)
      var d = rank - 1
      while d >= 0 {
        index[d] += 1
        ia += aStrides[d]
        ib += bStrides[d]
        if index[d] < shape[d] { break }
        ia -= aStrides[d] * shape[d]
        ib -= bStrides[d] * shape[d]
        index[d] = 0
        d -= 1
      }
    }
  }

  /// f(a, b) element by element over the broadcast shape.
  func apply(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
    a.withUnsafeBuffer { x in
      b.withUnsafeBuffer { y in
        Tensor(shape: shape) { out in forEach { o, i, j in out[o] = f(x[i], y[j]) } }
      }
    }
  }

  /// Σ over the stretched axes of `g` (output-shaped) times `other` (the other operand, or
  /// nil for 1), into a tensor of the first operand's shape (`first`) or the second's.
  func reduce(_ g: Tensor, times other: Tensor?, into shape: [Int], first: Bool) -> Tensor {
    g.withUnsafeBuffer { gp in
      Tensor(shape: shape) { out in
        if let other {
          other.withUnsafeBuffer { op in
            forEach { o, i, j in
              if first { out[i] += gp[o] * op[j] } else { out[j] += gp[o] * op[i] }
            }
          }
        } else {
          forEach { o, i, j in out[first ? i : j] += gp[o] }
        }
      }
    }
  }
}

/// a + b with broadcasting.
public func add(_ a: Variable, _ b: Variable) throws -> Variable {
  let bc = try Broadcast(a.shape, b.shape, op: "Add")
  let y = bc.apply(a.value, b.value, +)
  return Variable(y, parents: [a, b]) { g in
    [
      a.requiresGrad ? bc.reduce(g, times: nil, into: a.shape, first: true) : nil,
      b.requiresGrad ? bc.reduce(g, times: nil, into: b.shape, first: false) : nil,
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
      a.requiresGrad ? bc.reduce(g, times: nil, into: a.shape, first: true) : nil,
      b.requiresGrad ? Kernels.map(bc.reduce(g, times: nil, into: b.shape, first: false)) { -$0 } : nil,
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
        ? try Kernels.zip(bc.reduce(try Kernels.zip(g, y, *), times: nil, into: b.shape, first: false), b.value) { -$0 / $1 }
        : nil,
    ]
  }
}
