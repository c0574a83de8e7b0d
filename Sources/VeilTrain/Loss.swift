import Foundation
import VeilTensor

// Losses: the mean over every element, returned as a one-element tensor, with their gradient
// with respect to the prediction (the target is a constant).

private func checkSameShape(_ op: String, _ prediction: Variable, _ target: Tensor) throws {
  guard prediction.shape == target.shape else {
    throw TrainError.shapeMismatch(op: op, detail: "prediction \(prediction.shape) against target \(target.shape)")
  }
}

/// A loss: value Σ f(p, t) / n and gradient f′(p, t) / n, both element by element.
private func meanLoss(
  _ op: String, _ prediction: Variable, _ target: Tensor, value: (Float, Float) -> Double,
  gradient: @escaping (Float, Float) -> Float
) throws -> Variable {
  try checkSameShape(op, prediction, target)
  let n = prediction.value.count
  let total = prediction.value.withUnsafeBuffer { p in
    target.withUnsafeBuffer { t in
      var s = 0.0
      for i in 0..<n { s += value(p[i], t[i]) }
      return s
    }
  }
  let loss = Tensor(shape: [1], repeating: Float(total / Double(n)))
  return Variable(loss, parents: [prediction]) { g in
    let scale = g.scalars[0] / Float(n)
    return [try Kernels.zip(prediction.value, target) { p, t in scale * gradient(p, t) }]
  }
}

/// Mean absolute error; the gradient at p = t is 0.
public func l1Loss(_ prediction: Variable, _ target: Tensor) throws -> Variable {
  try meanLoss("L1 loss", prediction, target, value: { Double(abs($0 - $1)) }) { p, t in
    p > t ? 1 : (p < t ? -1 : 0)
  }
}

/// Mean squared error.
public func mseLoss(_ prediction: Variable, _ target: Tensor) throws -> Variable {
  try meanLoss("MSE loss", prediction, target, value: { Double(($0 - $1) * ($0 - $1)) }) { p, t in 2 * (p - t) }
}

/// Binary cross-entropy of sigmoid(logits) against targets in [0, 1], computed from the
/// logits without overflow: max(x, 0) − x·t + log(1 + e^−|x|); gradient sigmoid(x) − t.
public func binaryCrossEntropyWithLogits(_ logits: Variable, _ target: Tensor) throws -> Variable {
  try meanLoss("binary cross-entropy", logits, target, value: { x, t in
    let x = Double(x)
    return max(x, 0) - x * Double(t) + log1p(exp(-abs(x)))
  }) { x, t in stableSigmoid(x) - t }
}
