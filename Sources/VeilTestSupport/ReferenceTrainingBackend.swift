import Foundation
import VeilTensor

/// The plain-loop backend's side of the `TrainingBackend` seam: convolutions with their two
/// backward passes, the batch-normalisation kernels and Adam, each written from its formula.
/// A transposed convolution is the regular one run backwards (its forward is the regular
/// convolution's backward-data with ONNX's [in, out/groups, kh, kw] weights), so one set of
/// loops serves both.
extension ReferenceBackend: TrainingBackend {
  public func trainingConvolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool
  ) throws -> any TrainingConvolutionKernel {
    guard inputDims.count == 4, outputDims.count == 4, weightShape.count == 4 else {
      throw TensorError.invalidArgument("reference training convolution: 2-D only (input \(inputDims), weights \(weightShape))")
    }
    // The regular convolution's input is the transposed one's output, and the other way round.
    let (x, y) = spec.transposed ? (outputDims, inputDims) : (inputDims, outputDims)
    return ReferenceTrainingConvolution(
      taps: ConvolutionTaps(spec, input: x, weights: weightShape, output: y), transposed: spec.transposed,
      inputDims: inputDims, weightShape: weightShape, outputDims: outputDims, hasBias: hasBias)
  }

  public func channelMeanVariance(_ x: Tensor) -> (mean: [Double], variance: [Double]) {
    let (c, inner) = channels(x)
    var (sum, squares) = ([Double](repeating: 0, count: c), [Double](repeating: 0, count: c))
    let v = x.scalars
    for k in v.indices { sum[(k / inner) % c] += Double(v[k]) }
    let m = Double(v.count / c)
    let mean = sum.map { $0 / m }
    for k in v.indices {
      let d = Double(v[k]) - mean[(k / inner) % c]
      squares[(k / inner) % c] += d * d
    }
    return (mean, squares.map { $0 / m })
  }

  public func batchNormApply(_ x: Tensor, mean: [Float], invStd: [Float], scale: Tensor, shift: Tensor)
    -> (normalized: Tensor, output: Tensor)
  {
    let (c, inner) = channels(x)
    let (v, g, b) = (x.scalars, scale.scalars, shift.scalars)
    let h = v.indices.map { (v[$0] - mean[($0 / inner) % c]) * invStd[($0 / inner) % c] }
    let y = h.indices.map { g[($0 / inner) % c] * h[$0] + b[($0 / inner) % c] }
    return (tensor(x.shape, h), tensor(x.shape, y))
  }

  public func channelSums(_ g: Tensor, _ h: Tensor) -> (sum: [Double], dot: [Double]) {
    let (c, inner) = channels(g)
    var (sum, dot) = ([Double](repeating: 0, count: c), [Double](repeating: 0, count: c))
    let (gv, hv) = (g.scalars, h.scalars)
    for k in gv.indices {
      sum[(k / inner) % c] += Double(gv[k])
      dot[(k / inner) % c] += Double(gv[k]) * Double(hv[k])
    }
    return (sum, dot)
  }

  public func batchNormBackward(_ g: Tensor, normalized h: Tensor, k: [Float], a: [Float], b: [Float]) -> Tensor {
    let (c, inner) = channels(g)
    let (gv, hv) = (g.scalars, h.scalars)
    return tensor(g.shape, gv.indices.map { let ch = ($0 / inner) % c; return k[ch] * (gv[$0] - a[ch] - hv[$0] * b[ch]) })
  }

  public func channelAffine(_ x: Tensor, scale a: [Float], center m: [Float], shift b: [Float]) -> Tensor {
    let (c, inner) = channels(x)
    let v = x.scalars
    return tensor(x.shape, v.indices.map { let ch = ($0 / inner) % c; return a[ch] * (v[$0] - m[ch]) + b[ch] })
  }

  /// The plain triple loop, innermost index contiguous in c.
  public func multiplyAccumulate(
    _ a: UnsafePointer<Float>, transposeA: Bool, _ b: UnsafePointer<Float>, transposeB: Bool,
    into c: UnsafeMutablePointer<Float>, m: Int, k: Int, n: Int, alpha: Float
  ) {
    products.withLock { $0 += 1 }
    for i in 0..<m {
      for j in 0..<n {
        var s: Float = 0
        for t in 0..<k { s += (transposeA ? a[t * m + i] : a[i * k + t]) * (transposeB ? b[j * k + t] : b[t * n + j]) }
        c[i * n + j] += alpha * s
      }
    }
  }

  public func adamStep(
    weights: inout Tensor, firstMoment: inout Tensor, secondMoment: inout Tensor, gradient: Tensor,
    beta1: Float, beta2: Float, learningRate: Float, biasCorrection1 c1: Float, biasCorrection2 c2: Float,
    epsilon: Float, weightDecay: Float
  ) {
    var (w, m, v) = (weights.scalars, firstMoment.scalars, secondMoment.scalars)
    let g = gradient.scalars
    for i in w.indices {
      let gi = g[i] + weightDecay * w[i]
      m[i] = beta1 * m[i] + (1 - beta1) * gi
      v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
      w[i] -= learningRate * (m[i] / c1) / ((v[i] / c2).squareRoot() + epsilon)
    }
    (weights, firstMoment, secondMoment) = (tensor(weights.shape, w), tensor(weights.shape, m), tensor(weights.shape, v))
  }

  private func channels(_ x: Tensor) -> (channels: Int, inner: Int) { (x.shape[1], x.shape.dropFirst(2).reduce(1, *)) }

  private func tensor(_ shape: [Int], _ values: [Float]) -> Tensor {
    Tensor(shape: shape) { b in for i in values.indices { b[i] = values[i] } }
  }
}

/// Every (input, weight, output) element triple a regular 2-D convolution multiplies: its
/// forward, backward-data and backward-weights are three sums over the same taps.
struct ConvolutionTaps {
  let input: [Int], weights: [Int], output: [Int]
  let spec: ConvolutionSpec

  init(_ spec: ConvolutionSpec, input: [Int], weights: [Int], output: [Int]) {
    (self.spec, self.input, self.weights, self.output) = (spec, input, weights, output)
  }

  /// Calls `body(x, w, y)` with the flat indices of each tap.
  func forEach(_ body: (Int, Int, Int) -> Void) {
    let (n, c, h, w) = (input[0], input[1], input[2], input[3])
    let (o, oh, ow) = (output[1], output[2], output[3])
    let (kh, kw) = (weights[2], weights[3])
    let (cg, og) = (c / spec.groups, o / spec.groups)
    for b in 0..<n {
      for oc in 0..<o {
        let first = oc / og * cg
        for oy in 0..<oh {
          for ox in 0..<ow {
            let yi = ((b * o + oc) * oh + oy) * ow + ox
            for ci in 0..<cg {
              for ky in 0..<kh {
                let iy = oy * spec.strides[0] - spec.padsBegin[0] + ky * spec.dilations[0]
                guard iy >= 0, iy < h else { continue }
                for kx in 0..<kw {
                  let ix = ox * spec.strides[1] - spec.padsBegin[1] + kx * spec.dilations[1]
                  guard ix >= 0, ix < w else { continue }
                  body(((b * c + first + ci) * h + iy) * w + ix, ((oc * cg + ci) * kh + ky) * kw + kx, yi)
                }
              }
            }
          }
        }
      }
    }
  }

  /// y = Σ x·w.
  func forward(_ x: [Float], _ w: [Float]) -> [Float] {
    var y = [Float](repeating: 0, count: output.reduce(1, *))
    forEach { xi, wi, yi in y[yi] += x[xi] * w[wi] }
    return y
  }

  /// ∂x = Σ ∂y·w.
  func backwardData(_ dy: [Float], _ w: [Float]) -> [Float] {
    var dx = [Float](repeating: 0, count: input.reduce(1, *))
    forEach { xi, wi, yi in dx[xi] += dy[yi] * w[wi] }
    return dx
  }

  /// ∂w = Σ ∂y·x.
  func backwardWeights(_ x: [Float], _ dy: [Float]) -> [Float] {
    var dw = [Float](repeating: 0, count: weights.reduce(1, *))
    forEach { xi, wi, yi in dw[wi] += dy[yi] * x[xi] }
    return dw
  }
}

/// A training convolution on `ConvolutionTaps`; transposed ones swap the roles of the passes.
final class ReferenceTrainingConvolution: TrainingConvolutionKernel, @unchecked Sendable {
  let taps: ConvolutionTaps
  let transposed: Bool
  let inputDims: [Int], weightShape: [Int], outputDims: [Int]
  let hasBias: Bool

  init(taps: ConvolutionTaps, transposed: Bool, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool) {
    (self.taps, self.transposed, self.hasBias) = (taps, transposed, hasBias)
    (self.inputDims, self.weightShape, self.outputDims) = (inputDims, weightShape, outputDims)
  }

  private func check(_ t: Tensor, _ shape: [Int], _ what: String) throws {
    guard t.shape == shape else {
      throw TensorError.shapeMismatch(what: "reference convolution \(what)", expected: "\(shape)", found: "\(t.shape)")
    }
  }

  func forward(input: Tensor, weights: Tensor, bias: Tensor?) throws -> Tensor {
    try check(input, inputDims, "input")
    try check(weights, weightShape, "weights")
    var y = transposed ? taps.backwardData(input.scalars, weights.scalars) : taps.forward(input.scalars, weights.scalars)
    if hasBias, let b = bias?.scalars {
      let plane = outputDims[2] * outputDims[3]
      for k in y.indices { y[k] += b[(k / plane) % outputDims[1]] }
    }
    return Tensor(shape: outputDims) { out in for k in y.indices { out[k] = y[k] } }
  }

  func backwardData(outputGradient dy: Tensor, weights: Tensor) throws -> Tensor {
    try check(dy, outputDims, "output gradient")
    let dx = transposed ? taps.forward(dy.scalars, weights.scalars) : taps.backwardData(dy.scalars, weights.scalars)
    return Tensor(shape: inputDims) { out in for k in dx.indices { out[k] = dx[k] } }
  }

  func backwardWeights(input: Tensor, outputGradient dy: Tensor) throws -> (weights: Tensor, bias: Tensor?) {
    try check(input, inputDims, "input")
    try check(dy, outputDims, "output gradient")
    let dw = transposed ? taps.backwardWeights(dy.scalars, input.scalars) : taps.backwardWeights(input.scalars, dy.scalars)
    var db: Tensor?
    if hasBias {
      let (c, plane) = (outputDims[1], outputDims[2] * outputDims[3])
      var s = [Float](repeating: 0, count: c)
      for (k, v) in dy.scalars.enumerated() { s[(k / plane) % c] += v }
      db = Tensor(shape: [c]) { out in for i in 0..<c { out[i] = s[i] } }
    }
    return (Tensor(shape: weightShape) { out in for k in dw.indices { out[k] = dw[k] } }, db)
  }
}
