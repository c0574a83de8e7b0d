import Foundation
import VeilTensor

// Point-wise activations: forward and backward side by side. The backward of each is written
// in terms of what the forward kept (the input, or the output where that is cheaper).

/// max(x, 0); the gradient at 0 is taken as 0, as PyTorch does.
public func relu(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value) { max($0, 0) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in x > 0 ? g : 0 }]
  }
}

/// x for x ≥ 0, α·x below.
public func leakyRelu(_ x: Variable, alpha: Float = 0.2) -> Variable {
  let y = Kernels.map(x.value) { $0 >= 0 ? $0 : alpha * $0 }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in x >= 0 ? g : alpha * g }]
  }
}

/// tanh(x); dy/dx = 1 − y².
public func tanh(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value) { Foundation.tanh($0) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, y) { g, y in g * (1 - y * y) }]
  }
}

/// 1 / (1 + e^−x); dy/dx = y·(1 − y).
public func sigmoid(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value, stableSigmoid)
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, y) { g, y in g * y * (1 - y) }]
  }
}

/// The logistic function without overflow for large |x|.
@inline(__always)
func stableSigmoid(_ x: Float) -> Float {
  if x >= 0 { return 1 / (1 + expf(-x)) }
  let e = expf(x)
  return e / (1 + e)
}
