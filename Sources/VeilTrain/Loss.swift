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

/// Softmax cross-entropy of logits [N, K] against class indices, the mean over the batch:
/// log Σ_k e^{x_k} − x_label (through the max for stability); gradient softmax(x) − onehot.
public func softmaxCrossEntropy(_ logits: Variable, labels: [Int]) throws -> Variable {
  guard logits.shape.count == 2, logits.shape[0] == labels.count else {
    throw TrainError.shapeMismatch(
      op: "softmax cross-entropy", detail: "logits \(logits.shape) for \(labels.count) labels (want [N, classes])")
  }
  let (n, k) = (logits.shape[0], logits.shape[1])
  if let bad = labels.firstIndex(where: { !(0..<k).contains($0) }) {
    throw TrainError.invalidArgument("softmax cross-entropy: label \(labels[bad]) at \(bad) is outside 0..<\(k)")
  }
  var total = 0.0
  let probabilities = logits.value.withUnsafeBuffer { x in
    Tensor(shape: [n, k]) { p in
      for i in 0..<n {
        var top = -Float.infinity
        for j in 0..<k { top = max(top, x[i * k + j]) }
        var sum: Float = 0
        for j in 0..<k {
          p[i * k + j] = expf(x[i * k + j] - top)
          sum += p[i * k + j]
        }
        for j in 0..<k { p[i * k + j] /= sum }
        total += Double(logf(sum) + top - x[i * k + labels[i]])
      }
    }
  }
  let loss = Tensor(shape: [1], repeating: Float(total / Double(n)))
  return Variable(loss, parents: [logits]) { g in
    let scale = g.scalars[0] / Float(n)
    return [
      probabilities.withUnsafeBuffer { p in
        Tensor(shape: [n, k]) { d in
          for i in 0..<n {
            for j in 0..<k { d[i * k + j] = scale * (p[i * k + j] - (j == labels[i] ? 1 : 0)) }
          }
        }
      }
    ]
  }
}
