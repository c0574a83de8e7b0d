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
