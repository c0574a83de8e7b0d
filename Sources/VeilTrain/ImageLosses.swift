import Foundation
import VeilTensor

// Losses on images and feature maps that inversion attacks optimise: a feature-matching
// distance normalised per sample, and the total-variation prior on images. Each returns a
// one-element tensor with its gradient with respect to its first operand.

/// The mean over the batch of ‖p_i − t_i‖² / (‖t_i‖² + ε): how far each sample's features are
/// from the target's, relative to the target's energy, so that cuts with large and small
/// activations are optimised on one scale (Mahendran & Vedaldi's normalised loss).
public func featureMatchingLoss(_ prediction: Variable, _ target: Tensor, epsilon: Float = 1e-8) throws -> Variable {
  guard prediction.shape == target.shape, let n = prediction.shape.first, n > 0 else {
    throw TrainError.shapeMismatch(op: "feature matching loss", detail: "prediction \(prediction.shape) against target \(target.shape)")
  }
  let per = target.count / n
  let energies = sampleEnergies(target, per: per, epsilon: epsilon)
  let distances = featureDistances(prediction.value, target, epsilon: epsilon)
  let loss = Tensor(shape: [1], repeating: Float(distances.reduce(0, +) / Double(n)))
  return Variable(loss, parents: [prediction]) { g in
    let scale = g.scalars[0] / Float(n)
    let out = Tensor(uninitialized: prediction.shape)
    let (p, t, d) = (prediction.value.storage.pointer, target.storage.pointer, out.storage.pointer)
    for i in 0..<n {
      let k = 2 * scale / Float(energies[i])
      let base = i * per
      for j in base..<(base + per) { d[j] = k * (p[j] - t[j]) }
    }
    withExtendedLifetime((prediction.value, target)) {}
    return [out]
  }
}

/// Each sample's ‖p_i − t_i‖² / (‖t_i‖² + ε), the per-sample terms of `featureMatchingLoss`
/// (an optimisation attack keeps, per image, the restart whose features come closest).
public func featureDistances(_ prediction: Tensor, _ target: Tensor, epsilon: Float = 1e-8) -> [Double] {
  precondition(prediction.shape == target.shape && !target.shape.isEmpty, "feature distances of different shapes")
  let n = target.shape[0]
  let per = target.count / max(n, 1)
  let energies = sampleEnergies(target, per: per, epsilon: epsilon)
  return prediction.withUnsafeBuffer { p in
    target.withUnsafeBuffer { t in
      (0..<n).map { i in
        var s = 0.0
        for j in (i * per)..<((i + 1) * per) {
          let d = Double(p[j] - t[j])
          s += d * d
        }
        return s / energies[i]
      }
    }
  }
}

private func sampleEnergies(_ t: Tensor, per: Int, epsilon: Float) -> [Double] {
  t.withUnsafeBuffer { p in
    (0..<(t.count / max(per, 1))).map { i in
      var s = 0.0
      for j in (i * per)..<((i + 1) * per) { s += Double(p[j]) * Double(p[j]) }
      return s + Double(epsilon)
    }
  }
}

/// The total-variation prior of images [N, C, H, W]: the mean over samples, channels and
/// positions of (Δx² + Δy² + ε)^(β/2), with Δx, Δy the differences to the right and lower
/// neighbour (the last row and column have none). β = 1 favours piecewise-flat images with
/// sharp edges, β = 2 smooth ones (Mahendran & Vedaldi, CVPR 2015).
public func totalVariation(_ x: Variable, beta: Float = 1, epsilon: Float = 1e-6) throws -> Variable {
  guard x.shape.count == 4, x.shape[2] >= 2, x.shape[3] >= 2 else {
    throw TrainError.shapeMismatch(op: "total variation", detail: "images [N, C, H, W] of at least 2×2, found \(x.shape)")
  }
  guard beta > 0, beta.isFinite else { throw TrainError.invalidArgument("total variation: β must be > 0, found \(beta)") }
  let (planes, h, w) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
  let count = Float(planes * (h - 1) * (w - 1))
  let half = beta / 2
  // Every pixel with a right and a lower neighbour: its index, Δx and Δy.
  func forEachDifference(_ p: UnsafePointer<Float>, _ body: (_ i: Int, _ dx: Float, _ dy: Float) -> Void) {
    for plane in 0..<planes {
      let base = plane * h * w
      for r in 0..<(h - 1) {
        for c in 0..<(w - 1) {
          let i = base + r * w + c
          body(i, p[i + 1] - p[i], p[i + w] - p[i])
        }
      }
    }
  }
  var total = 0.0
  x.value.withUnsafeBuffer { p in
    forEachDifference(p.baseAddress!) { _, dx, dy in total += Double(pow(dx * dx + dy * dy + epsilon, half)) }
  }
  let value = Tensor(shape: [1], repeating: Float(total / Double(count)))
  return Variable(value, parents: [x]) { g in
    let scale = g.scalars[0] / count
    let out = Tensor(zeros: x.shape)
    let d = out.storage.pointer
    forEachDifference(x.value.storage.pointer) { i, dx, dy in
      // d/dΔ of (Δx² + Δy² + ε)^(β/2) = β·Δ·(…)^(β/2 − 1).
      let k = scale * beta * pow(dx * dx + dy * dy + epsilon, half - 1)
      d[i + 1] += k * dx
      d[i + w] += k * dy
      d[i] -= k * (dx + dy)
    }
    withExtendedLifetime(x.value) {}
    return [out]
  }
}
