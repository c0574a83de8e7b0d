import Foundation
import VeilTensor

// Batch normalisation over [N, C, ...]: statistics per channel over the batch and every
// spatial position. Layer normalisation: statistics per row of the trailing axes.

/// LayerNormalization over the axes from `axis` to the last: each row of those axes is
/// normalised by its own mean and biased variance, then scaled by `scale` and shifted by `shift`
/// (both of the normalised axes' shape, or broadcastable to it; `shift` optional). The
/// backward pass is the usual one: with x̂ the normalised row, r = 1/√(var + ε) and
/// d = g·γ, ∂x = r·(d − mean(d) − x̂·mean(d·x̂)); ∂γ = Σ g·x̂ and ∂β = Σ g over the rows.
public func layerNormalization(_ x: Variable, scale: Variable, shift: Variable?, axis: Int = -1, epsilon: Float = 1e-5) throws
  -> Variable
{
  let rank = x.shape.count
  let ax = axis < 0 ? axis + rank : axis
  guard ax >= 0, ax < rank else {
    throw TrainError.shapeMismatch(op: "LayerNormalization", detail: "axis \(axis) of an input of rank \(rank)")
  }
  let normalized = Array(x.shape[ax...])
  let f = normalized.reduce(1, *)
  for p in [scale, shift].compactMap({ $0 }) where p.value.count != f {
    throw TrainError.shapeMismatch(
      op: "LayerNormalization", detail: "scale or shift \(p.shape) for normalised axes \(normalized) (want \(f) values)")
  }
  let rows = x.value.count / max(f, 1)
  var hat = [Float](repeating: 0, count: x.value.count)
  var inverse = [Float](repeating: 0, count: rows)
  let y = x.value.withUnsafeBuffer { xp in
    scale.value.withUnsafeBuffer { gamma in
      Tensor(shape: x.shape) { yp in
        for r in 0..<rows {
          let row = xp.baseAddress! + r * f
          var mean = 0.0
          for k in 0..<f { mean += Double(row[k]) }
          mean /= Double(f)
          var variance = 0.0
          for k in 0..<f { variance += (Double(row[k]) - mean) * (Double(row[k]) - mean) }
          let inv = Float(1 / (variance / Double(f) + Double(epsilon)).squareRoot())
          inverse[r] = inv
          for k in 0..<f {
            let h = (row[k] - Float(mean)) * inv
            hat[r * f + k] = h
            yp[r * f + k] = h * gamma[k]
          }
        }
        if let shift {
          shift.value.withUnsafeBuffer { beta in for i in 0..<(rows * f) { yp[i] += beta[i % f] } }
        }
      }
    }
  }
  return Variable(y, parents: [x, scale] + (shift.map { [$0] } ?? [])) { g in
    g.withUnsafeBuffer { gp in
      scale.value.withUnsafeBuffer { gamma in
        let dx = x.requiresGrad
          ? Tensor(shape: x.shape) { d in
            for r in 0..<rows {
              var (meanD, meanDH) = (0.0, 0.0)
              for k in 0..<f {
                let dk = Double(gp[r * f + k] * gamma[k])
                meanD += dk
                meanDH += dk * Double(hat[r * f + k])
              }
              meanD /= Double(f)
              meanDH /= Double(f)
              for k in 0..<f {
                let dk = Double(gp[r * f + k] * gamma[k])
                d[r * f + k] = Float(Double(inverse[r]) * (dk - meanD - Double(hat[r * f + k]) * meanDH))
              }
            }
          } : nil
        let dScale = scale.requiresGrad
          ? Tensor(shape: scale.shape) { d in
            for i in 0..<(rows * f) { d[i % f] += gp[i] * hat[i] }
          } : nil
        let dShift = shift?.requiresGrad == true
          ? Tensor(shape: shift!.shape) { d in
            for i in 0..<(rows * f) { d[i % f] += gp[i] }
          } : nil
        return [dx, dScale] + (shift == nil ? [] : [dShift])
      }
    }
  }
}

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
  public let backend: any TrainingBackend
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

  public init(
    _ name: String, channels: Int, momentum: Float = 0.1, epsilon: Float = 1e-5,
    backend: any TrainingBackend = Backends.training
  ) {
    self.backend = backend
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
    epsilon: Float = 1e-5, backend: any TrainingBackend = Backends.training
  ) throws {
    self.backend = backend
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
    let backend = self.backend
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
    if training {
      let (mu, variance) = backend.channelMeanVariance(x.value)
      let unbiased = Double(m) / Double(m - 1)
      runningMean.withUnsafeMutableBuffer { r in
        for ch in 0..<c { r[ch] = (1 - momentum) * r[ch] + momentum * Float(mu[ch]) }
      }
      runningVariance.withUnsafeMutableBuffer { r in
        for ch in 0..<c { r[ch] = (1 - momentum) * r[ch] + momentum * Float(variance[ch] * unbiased) }
      }
      for ch in 0..<c {
        mean[ch] = Float(mu[ch])
        invStd[ch] = Float(1 / (variance[ch] + Double(epsilon)).squareRoot())
      }
    } else {
      runningMean.withUnsafeBuffer { r in for ch in 0..<c { mean[ch] = r[ch] } }
      runningVariance.withUnsafeBuffer { r in for ch in 0..<c { invStd[ch] = 1 / (r[ch] + epsilon).squareRoot() } }
    }
    // γ/σ per channel: the slope of y in x when the statistics are fixed.
    let k = scale.value.withUnsafeBuffer { gamma in (0..<c).map { gamma[$0] * invStd[$0] } }
    if !training && !scale.requiresGrad && !shift.requiresGrad {
      // A fixed affine map (a frozen network, an attacker differentiating through it): one pass
      // forward, one backward, and x̂ is neither stored nor read.
      let beta = shift.value.scalars
      let y = backend.channelAffine(x.value, scale: k, center: mean, shift: beta)
      let zero = [Float](repeating: 0, count: c)
      return Variable(y, parents: [x]) { g in [backend.channelAffine(g, scale: k, center: zero, shift: zero)] }
    }
    let (normalized, y) = backend.batchNormApply(
      x.value, mean: mean, invStd: invStd, scale: scale.value, shift: shift.value)
    let isTraining = training
    return Variable(y, parents: [x, scale, shift]) { [scale, shift] g in
      let (sumG, sumGH) = backend.channelSums(g, normalized)
      // Training: x̂ depends on the batch statistics, so
      // ∂x = γ/σ · (g − mean(g) − x̂·mean(g·x̂)); evaluation: ∂x = γ/σ · g.
      let mg = isTraining ? sumG.map { Float($0 / Double(m)) } : [Float](repeating: 0, count: c)
      let mgh = isTraining ? sumGH.map { Float($0 / Double(m)) } : [Float](repeating: 0, count: c)
      let dx = x.requiresGrad ? backend.batchNormBackward(g, normalized: normalized, k: k, a: mg, b: mgh) : nil
      let dGamma = scale.requiresGrad ? Tensor(shape: [c]) { d in for ch in 0..<c { d[ch] = Float(sumGH[ch]) } } : nil
      let dBeta = shift.requiresGrad ? Tensor(shape: [c]) { d in for ch in 0..<c { d[ch] = Float(sumG[ch]) } } : nil
      return [dx, dGamma, dBeta]
    }
  }
}

/// Local response normalisation across channels (ONNX LRN; AlexNet, GoogLeNet) over
/// [N, C, ...]: y = x / s^β with s = bias + α/size · Σ x² over the channels
/// c − ⌊(size−1)/2⌋ … c + ⌈(size−1)/2⌉ (clipped to the tensor). With t = g·y/s, the backward
/// is ∂x_j = g_j·s_j^−β − (2αβ/size)·x_j·Σ t_c over the channels c whose window holds j, the
/// same window mirrored.
public func localResponseNormalization(_ x: Variable, size: Int, alpha: Float, beta: Float, bias: Float) throws
  -> Variable
{
  guard x.shape.count >= 3, size >= 1 else {
    throw TrainError.shapeMismatch(op: "LRN", detail: "input \(x.shape) with size \(size) (want rank ≥ 3 and size ≥ 1)")
  }
  let (below, above) = ((size - 1) / 2, size / 2)
  let k = alpha / Float(size)
  let s = Kernels.map(channelWindowSums(Kernels.map(x.value) { $0 * $0 }, below: below, above: above)) { bias + k * $0 }
  let y = try Kernels.zip(x.value, s) { x, s in x * powf(s, -beta) }
  let scale = 2 * alpha * beta / Float(size)
  return Variable(y, parents: [x]) { g in
    let t = try Kernels.zip(try Kernels.zip(g, y, *), s, /)
    // Channel j is in the window of c for c in j − above … j + below.
    let u = channelWindowSums(t, below: above, above: below)
    let direct = try Kernels.zip(g, s) { g, s in g * powf(s, -beta) }
    return [try Kernels.zip(direct, try Kernels.zip(x.value, u, *)) { $0 - scale * $1 }]
  }
}

/// Per item and position, the sum of `p` over the channels c − below … c + above (clipped), for
/// every channel c of [N, C, ...].
func channelWindowSums(_ p: Tensor, below: Int, above: Int) -> Tensor {
  let (n, c) = (p.shape[0], p.shape[1])
  let inner = p.shape.dropFirst(2).reduce(1, *)
  let out = Tensor(zeros: p.shape)
  let (src, dst) = (p.storage.pointer, out.storage.pointer)
  for b in 0..<n {
    for ch in 0..<c {
      let plane = dst + (b * c + ch) * inner
      for w in max(ch - below, 0)...min(ch + above, c - 1) {
        let other = src + (b * c + w) * inner
        for i in 0..<inner { plane[i] += other[i] }
      }
    }
  }
  withExtendedLifetime(p) {}
  return out
}
