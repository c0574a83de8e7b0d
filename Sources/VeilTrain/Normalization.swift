import Foundation
import VeilTensor

// Batch normalisation over [N, C, ...]: statistics per channel over the batch and every
// spatial position.

/// BatchNormalization with a learned scale (γ) and shift (β). In training mode it normalises
/// by the batch's mean and biased variance and updates the running statistics as PyTorch does
/// (running ← (1 − momentum)·running + momentum·batch, with the unbiased variance); in
/// evaluation mode it uses the running statistics, a fixed affine map.
public final class BatchNorm: Layer {
  public let scale: Variable
  public let shift: Variable
  public private(set) var runningMean: Tensor
  public private(set) var runningVariance: Tensor
  public let momentum: Float
  public let epsilon: Float
  public var training = true
  public let name: String
  /// With `accumulating`, training-mode calls average their batch statistics with equal
  /// weights (momentum 1/k for the k-th batch since `resetRunningStatistics()`), as PyTorch's
  /// `momentum=None`: how a trained network's statistics are re-estimated, since exponential
  /// averages lag the weights when the learning rate is high.
  public var accumulating = false
  private var accumulatedBatches = 0

  /// Running mean 0, variance 1, nothing accumulated.
  public func resetRunningStatistics() {
    runningMean = Tensor(zeros: runningMean.shape)
    runningVariance = Tensor(shape: runningVariance.shape, repeating: 1)
    accumulatedBatches = 0
  }

  public init(_ name: String, channels: Int, momentum: Float = 0.1, epsilon: Float = 1e-5) {
    var unused = SeededGenerator(seed: 0)
    scale = parameter("\(name).weight", [channels], .ones, &unused)
    shift = parameter("\(name).bias", [channels], .zeros, &unused)
    runningMean = Tensor(zeros: [channels])
    runningVariance = Tensor(shape: [channels], repeating: 1)
    self.momentum = momentum
    self.epsilon = epsilon
    self.name = name
  }

  /// A BatchNorm over existing parameters and statistics (a graph's BatchNormalization node:
  /// its scale and bias initializers may be frozen leaves). `name` prefixes the buffers.
  public init(
    name: String, scale: Variable, shift: Variable, runningMean: Tensor, runningVariance: Tensor, momentum: Float = 0.1,
    epsilon: Float = 1e-5
  ) throws {
    let c = scale.shape
    guard c.count == 1, shift.shape == c, runningMean.shape == c, runningVariance.shape == c else {
      throw TrainError.shapeMismatch(
        op: "BatchNorm '\(name)'",
        detail: "scale \(scale.shape), bias \(shift.shape), mean \(runningMean.shape), variance \(runningVariance.shape) must be one [C] each")
    }
    self.scale = scale
    self.shift = shift
    self.runningMean = runningMean
    self.runningVariance = runningVariance
    self.momentum = momentum
    self.epsilon = epsilon
    self.name = name
  }

  public var parameters: [Variable] { [scale, shift] }

  /// The running statistics, saved with the parameters (not trained).
  public var buffers: [(name: String, tensor: Tensor)] {
    [("\(name).running_mean", runningMean), ("\(name).running_var", runningVariance)]
  }

  public func load(runningMean mean: Tensor, runningVariance variance: Tensor) throws {
    guard mean.shape == runningMean.shape, variance.shape == runningVariance.shape else {
      throw TrainError.shapeMismatch(
        op: "BatchNorm '\(name)'", detail: "running statistics \(mean.shape), \(variance.shape) for \(runningMean.shape)")
    }
    runningMean = mean
    runningVariance = variance
  }

  public func callAsFunction(_ x: Variable) throws -> Variable {
    let c = scale.shape[0]
    guard x.shape.count >= 2, x.shape[1] == c else {
      throw TrainError.shapeMismatch(op: "BatchNorm '\(name)'", detail: "input \(x.shape) for \(c) channels")
    }
    let n = x.shape[0]
    let inner = x.shape.dropFirst(2).reduce(1, *)
    let m = n * inner
    guard !training || m > 1 else {
      throw TrainError.invalidArgument(
        "BatchNorm '\(name)': training needs more than one value per channel (input \(x.shape)); use a batch above 1")
    }
    // Per channel: mean and 1/√(var + ε), from the batch or the running statistics.
    var mean = [Float](repeating: 0, count: c)
    var invStd = [Float](repeating: 0, count: c)
    let momentum = accumulating ? 1 / Float(accumulatedBatches + 1) : self.momentum
    if training && accumulating { accumulatedBatches += 1 }
    x.value.withUnsafeBuffer { xp in
      for ch in 0..<c {
        if training {
          var s = 0.0
          var ss = 0.0
          for b in 0..<n {
            let base = (b * c + ch) * inner
            for i in 0..<inner {
              let v = Double(xp[base + i])
              s += v
              ss += v * v
            }
          }
          let mu = s / Double(m)
          let variance = max(ss / Double(m) - mu * mu, 0)
          mean[ch] = Float(mu)
          invStd[ch] = Float(1 / (variance + Double(epsilon)).squareRoot())
          runningMean.withUnsafeMutableBuffer { $0[ch] = (1 - momentum) * $0[ch] + momentum * Float(mu) }
          runningVariance.withUnsafeMutableBuffer {
            $0[ch] = (1 - momentum) * $0[ch] + momentum * Float(variance * Double(m) / Double(m - 1))
          }
        } else {
          mean[ch] = runningMean.scalars[ch]
          invStd[ch] = 1 / (runningVariance.scalars[ch] + epsilon).squareRoot()
        }
      }
    }
    let normalized = x.value.withUnsafeBuffer { xp in
      Tensor(shape: x.shape) { d in
        for b in 0..<n {
          for ch in 0..<c {
            let base = (b * c + ch) * inner
            for i in 0..<inner { d[base + i] = (xp[base + i] - mean[ch]) * invStd[ch] }
          }
        }
      }
    }
    let y = normalized.withUnsafeBuffer { h in
      scale.value.withUnsafeBuffer { gamma in
        shift.value.withUnsafeBuffer { beta in
          Tensor(shape: x.shape) { d in
            for b in 0..<n {
              for ch in 0..<c {
                let base = (b * c + ch) * inner
                for i in 0..<inner { d[base + i] = gamma[ch] * h[base + i] + beta[ch] }
              }
            }
          }
        }
      }
    }
    let isTraining = training
    return Variable(y, parents: [x, scale, shift]) { [scale] g in
      var dGamma = [Float](repeating: 0, count: c)
      var dBeta = [Float](repeating: 0, count: c)
      let dx = g.withUnsafeBuffer { gp in
        normalized.withUnsafeBuffer { h in
          scale.value.withUnsafeBuffer { gamma in
            Tensor(shape: x.shape) { d in
              for ch in 0..<c {
                var sg = 0.0
                var sgh = 0.0
                for b in 0..<n {
                  let base = (b * c + ch) * inner
                  for i in 0..<inner {
                    sg += Double(gp[base + i])
                    sgh += Double(gp[base + i] * h[base + i])
                  }
                }
                dBeta[ch] = Float(sg)
                dGamma[ch] = Float(sgh)
                // Training: x̂ depends on the batch statistics, so
                // ∂x = γ/σ · (g − mean(g) − x̂·mean(g·x̂)); evaluation: ∂x = γ/σ · g.
                let k = gamma[ch] * invStd[ch]
                let mg = isTraining ? Float(sg / Double(m)) : 0
                let mgh = isTraining ? Float(sgh / Double(m)) : 0
                for b in 0..<n {
                  let base = (b * c + ch) * inner
                  for i in 0..<inner { d[base + i] = k * (gp[base + i] - mg - h[base + i] * mgh) }
                }
              }
            }
          }
        }
      }
      return [dx, Tensor(shape: [c]) { _ = $0.initialize(from: dGamma) }, Tensor(shape: [c]) { _ = $0.initialize(from: dBeta) }]
    }
  }
}
