import VeilGraph
import VeilTensor

// Ops that move elements without computing: their backward moves the gradient back.

/// The same elements under another shape (same count); `-1` in one place is inferred.
public func reshape(_ x: Variable, _ shape: [Int]) throws -> Variable {
  var target = shape
  if let i = shape.firstIndex(of: -1) {
    let known = shape.filter { $0 != -1 }.reduce(1, *)
    guard known > 0, x.value.count % known == 0, shape.filter({ $0 == -1 }).count == 1 else {
      throw TrainError.shapeMismatch(op: "Reshape", detail: "cannot reshape \(x.shape) to \(shape)")
    }
    target[i] = x.value.count / known
  }
  guard target.reduce(1, *) == x.value.count else {
    throw TrainError.shapeMismatch(op: "Reshape", detail: "cannot reshape \(x.shape) (\(x.value.count) elements) to \(shape)")
  }
  let original = x.shape
  return Variable(try x.value.reshaped(target), parents: [x]) { g in [try g.reshaped(original)] }
}

/// [N, ...] → [N, product of the rest], as before a Linear layer.
public func flatten(_ x: Variable) throws -> Variable {
  try reshape(x, [x.shape[0], -1])
}

/// Joins tensors along `axis` (default: channels); all other dimensions must agree.
public func concat(_ xs: [Variable], axis: Int = 1) throws -> Variable {
  guard let first = xs.first else { throw TrainError.invalidArgument("Concat of no tensors") }
  guard axis >= 0, axis < first.shape.count else {
    throw TrainError.invalidArgument("Concat axis \(axis) for rank \(first.shape.count)")
  }
  for x in xs {
    var a = x.shape
    var b = first.shape
    guard a.count == b.count else {
      throw TrainError.shapeMismatch(op: "Concat", detail: "ranks differ: \(first.shape) and \(x.shape)")
    }
    a[axis] = 0
    b[axis] = 0
    guard a == b else {
      throw TrainError.shapeMismatch(op: "Concat", detail: "\(first.shape) and \(x.shape) differ off axis \(axis)")
    }
  }
  // outer × (axis extent × inner) blocks copied side by side.
  let outer = first.shape[..<axis].reduce(1, *)
  let inner = first.shape[(axis + 1)...].reduce(1, *)
  let blocks = xs.map { $0.shape[axis] * inner }
  let row = blocks.reduce(0, +)
  var shape = first.shape
  shape[axis] = xs.map { $0.shape[axis] }.reduce(0, +)
  let y = Tensor(shape: shape) { dst in
    var offset = 0
    for (x, block) in Swift.zip(xs, blocks) {
      x.value.withUnsafeBuffer { src in
        for o in 0..<outer {
          (dst.baseAddress! + o * row + offset).update(from: src.baseAddress! + o * block, count: block)
        }
      }
      offset += block
    }
  }
  return Variable(y, parents: xs) { g in
    g.withUnsafeBuffer { src in
      var offset = 0
      return Swift.zip(xs, blocks).map { x, block in
        defer { offset += block }
        guard x.requiresGrad else { return nil }
        return Tensor(shape: x.shape) { dst in
          for o in 0..<outer {
            (dst.baseAddress! + o * block).update(from: src.baseAddress! + o * row + offset, count: block)
          }
        }
      }
    }
  }
}

/// Row-major element strides of a shape.
func contiguousStrides(_ shape: [Int]) -> [Int] {
  var strides = [Int](repeating: 1, count: shape.count)
  for i in stride(from: shape.count - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * shape[i + 1] }
  return strides
}

/// x with its axes permuted: output axis i is input axis `permutation[i]` (ONNX Transpose; a
/// model exported from Keras starts with one, NHWC → NCHW). The backward is the inverse
/// permutation of the gradient.
public func transpose(_ x: Variable, _ permutation: [Int]) throws -> Variable {
  let rank = x.shape.count
  guard permutation.count == rank, Set(permutation) == Set(0..<rank) else {
    throw TrainError.shapeMismatch(op: "Transpose", detail: "perm \(permutation) is not a permutation of the axes of \(x.shape)")
  }
  var inverse = [Int](repeating: 0, count: rank)
  for (i, p) in permutation.enumerated() { inverse[p] = i }
  let y = permuted(x.value, permutation)
  return Variable(y, parents: [x]) { g in [permuted(g, inverse)] }
}

/// The copy of `t` whose axis i is t's axis `p[i]`.
func permuted(_ t: Tensor, _ p: [Int]) -> Tensor {
  let rank = t.shape.count
  guard rank > 1, p != Array(0..<rank) else { return t }
  let shape = p.map { t.shape[$0] }
  let source = contiguousStrides(t.shape)
  // The input stride of each output axis; the innermost output axis is the loop.
  let strides = p.map { source[$0] }
  let (inner, step) = (shape[rank - 1], strides[rank - 1])
  let rows = t.count / max(inner, 1)
  let out = Tensor(uninitialized: shape)
  let (src, dst) = (t.storage.pointer, out.storage.pointer)
  // The outer axes walk like an odometer, one step a row.
  var outer = StridedWalk(shape: Array(shape.dropLast()), strides: Array(strides.dropLast()))
  for r in 0..<rows {
    let row = dst + r * inner
    for j in 0..<inner { row[j] = src[outer.offset + j * step] }
    outer.advance()
  }
  withExtendedLifetime(t) {}
  return out
}

/// ONNX Slice (negative indices count from the end, out-of-range ones are clamped, steps may be
/// above 1 or negative: `SliceAttributes.resolved`). The backward scatters the gradient into
/// zeros of the input's shape: each output element copied exactly one input element.
public func slice(_ x: Variable, _ attributes: SliceAttributes) throws -> Variable {
  let shape = x.shape
  let r: (starts: [Int], steps: [Int], extents: [Int])
  do { r = try attributes.resolved(shape) } catch {
    throw TrainError.shapeMismatch(op: "Slice", detail: "\(attributes) on \(shape): \(error.detail)")
  }
  guard r.extents.allSatisfy({ $0 >= 1 }) else {
    throw TrainError.shapeMismatch(op: "Slice", detail: "\(attributes) takes nothing of \(shape)")
  }
  let (offset, strides) = sliceView(inputDims: shape, starts: r.starts, steps: r.steps)
  let y = Tensor(uninitialized: r.extents) { dst in
    x.value.withUnsafeBuffer { src in
      StridedCopy.gather(src.baseAddress!, offset: offset, strides: strides, shape: r.extents, into: dst.baseAddress!)
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      Tensor(shape: shape) { dx in
        g.withUnsafeBuffer {
          StridedCopy.scatter($0.baseAddress!, shape: r.extents, into: dx.baseAddress!, offset: offset, strides: strides)
        }
      }
    ]
  }
}

/// Per output index along one padded axis: the input index it copies, or −1 for a constant.
func padSources(extent n: Int, before: Int, after: Int, mode: PadMode) -> [Int] {
  (0..<(n + before + after)).map { o in
    let i = o - before
    if i >= 0 && i < n { return i }
    switch mode {
    case .constant: return -1
    case .edge: return i < 0 ? 0 : n - 1
    case .reflect:
      // Mirror about the first and last element (numpy "reflect", ONNX "reflect").
      guard n > 1 else { return 0 }
      let period = 2 * (n - 1)
      let m = ((i % period) + period) % period
      return m < n ? m : period - m
    }
  }
}

/// ONNX Pad: `pads` holds the begins of every axis, then the ends (negative ones crop);
/// `constant` fills with `value`, `reflect` mirrors without repeating the edge, `edge` repeats
/// it. Each output element copies at most one input element, so the backward adds every
/// output gradient onto the element it copied (edges and mirrored elements collect several).
public func pad(_ x: Variable, pads: [Int], mode: PadMode = .constant, value: Float = 0) throws -> Variable {
  let shape = x.shape
  let rank = shape.count
  guard rank >= 1, pads.count == 2 * rank else {
    throw TrainError.shapeMismatch(op: "Pad", detail: "\(pads.count) pads for input \(shape) (want \(2 * rank): begins, then ends)")
  }
  let out = (0..<rank).map { shape[$0] + pads[$0] + pads[rank + $0] }
  guard out.allSatisfy({ $0 >= 1 }) else {
    throw TrainError.shapeMismatch(op: "Pad", detail: "pads \(pads) crop input \(shape) to nothing")
  }
  if mode == .reflect {
    for d in 0..<rank where shape[d] > 1 && (pads[d] >= shape[d] || pads[rank + d] >= shape[d]) {
      throw TrainError.invalidArgument("Pad: reflect pads \(pads) must be smaller than the input's extent \(shape[d]) on axis \(d)")
    }
  }
  let sources = (0..<rank).map { padSources(extent: shape[$0], before: pads[$0], after: pads[rank + $0], mode: mode) }
  let strides = contiguousStrides(shape)
  let inner = out[rank - 1]
  let last = sources[rank - 1]
  /// Calls body(output row start, input row start) for every output row (all axes but the
  /// last) that reads the input; rows that fall in constant padding are skipped.
  func forEachRow(_ body: (Int, Int) -> Void) {
    let rows = out.count > 1 ? out.dropLast().reduce(1, *) : 1
    var index = [Int](repeating: 0, count: rank - 1)
    for r in 0..<rows {
      var offset = 0
      var inside = true
      for d in 0..<(rank - 1) {
        let s = sources[d][index[d]]
        if s < 0 { inside = false; break }
        offset += s * strides[d]
      }
      if inside { body(r * inner, offset) }
      var d = rank - 2
      while d >= 0 {
        index[d] += 1
        if index[d] < out[d] { break }
        index[d] = 0
        d -= 1
      }
    }
  }
  let y = x.value.withUnsafeBuffer { xp in
    Tensor(shape: out) { yp in
      if value != 0 { yp.update(repeating: value) }
      forEachRow { o, i in
        for j in 0..<inner where last[j] >= 0 { yp[o + j] = xp[i + last[j]] }
      }
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      g.withUnsafeBuffer { gp in
        Tensor(shape: shape) { d in
          forEachRow { o, i in
            for j in 0..<inner where last[j] >= 0 { d[i + last[j]] += gp[o + j] }
          }
        }
      }
    ]
  }
}
