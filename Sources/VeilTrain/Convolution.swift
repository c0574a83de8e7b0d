import VeilTensor

// Conv and ConvTranspose (2-D, NCHW): forward, backward-data and backward-weights all run on
// oneDNN's convolution primitives (`ConvolutionTraining`), so the backward of each is the
// matching oneDNN backward primitive. Grouped convolutions (depthwise ones in MobileNet and
// EfficientNet) run on plain loops here, since the oneDNN training wrapper takes groups = 1.

func convolutionOutputDims(_ spec: ConvolutionSpec, input: [Int], weights: [Int]) throws -> [Int] {
  guard input.count == 4, weights.count == 4 else {
    throw TrainError.shapeMismatch(op: spec.transposed ? "ConvTranspose" : "Conv", detail: "input \(input) and weights \(weights) must be 4-D")
  }
  var out = [input[0], spec.transposed ? weights[1] : weights[0]]
  for i in 0..<2 {
    let k = spec.dilations[i] * (weights[2 + i] - 1) + 1
    let extent = spec.transposed
      ? (input[2 + i] - 1) * spec.strides[i] - spec.padsBegin[i] - spec.padsEnd[i] + k
      : (input[2 + i] + spec.padsBegin[i] + spec.padsEnd[i] - k) / spec.strides[i] + 1
    guard extent >= 1 else {
      throw TrainError.shapeMismatch(op: "Conv", detail: "input \(input), weights \(weights), \(spec) leave no output")
    }
    out.append(extent)
  }
  return out
}

/// A convolution (or, with `spec.transposed`, a transposed convolution) of x by w, plus b.
public func convolution(_ x: Variable, _ w: Variable, _ b: Variable?, _ spec: ConvolutionSpec) throws -> Variable {
  let outDims = try convolutionOutputDims(spec, input: x.shape, weights: w.shape)
  if spec.groups != 1 { return try groupedConvolution(x, w, b, spec, outputDims: outDims) }
  let kernel = try ConvolutionTraining.make(
    spec, inputDims: x.shape, weightShape: w.shape, outputDims: outDims, hasBias: b != nil)
  let y = try kernel.forward(input: x.value, weights: w.value, bias: b?.value)
  return Variable(y, parents: [x, w] + (b.map { [$0] } ?? [])) { g in
    let dx = x.requiresGrad ? try kernel.backwardData(outputGradient: g, weights: w.value) : nil
    guard w.requiresGrad || b?.requiresGrad == true else { return [dx, nil, nil] }
    // One oneDNN pass gives both; hand back only what is wanted.
    let (dw, db) = try kernel.backwardWeights(input: x.value, outputGradient: g)
    return [dx, w.requiresGrad ? dw : nil, b?.requiresGrad == true ? db : nil]
  }
}

/// Conv2d with square kernels, PyTorch-style attributes and parameters named `name.weight`,
/// `name.bias`. With `transposed` it is ConvTranspose2d, the upsampling layer of pix2pix's
/// decoder, whose weights are [in, out, k, k] as PyTorch and ONNX store them.
public final class Conv2d: Layer {
  public let weight: Variable
  public let bias: Variable?
  public let spec: ConvolutionSpec

  public init(
    _ name: String, inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
    bias: Bool = true, transposed: Bool = false,
    initializer: Initializer = .kaimingUniform(negativeSlope: Float(5).squareRoot()), generator: inout SeededGenerator
  ) {
    let shape = transposed ? [inChannels, outChannels, kernel, kernel] : [outChannels, inChannels, kernel, kernel]
    weight = parameter("\(name).weight", shape, initializer, &generator)
    self.bias = bias ? parameter("\(name).bias", [outChannels], .zeros, &generator) : nil
    spec = ConvolutionSpec(
      strides: [stride, stride], dilations: [1, 1], padsBegin: [padding, padding], padsEnd: [padding, padding], groups: 1,
      transposed: transposed)
  }

  public var parameters: [Variable] { [weight] + (bias.map { [$0] } ?? []) }

  public func callAsFunction(_ x: Variable) throws -> Variable { try convolution(x, weight, bias, spec) }
}

/// A grouped (for example depthwise) convolution on direct loops: output channel o reads the
/// input channels of its group, weights [out, in/groups, kh, kw] as ONNX stores them.
func groupedConvolution(_ x: Variable, _ w: Variable, _ b: Variable?, _ spec: ConvolutionSpec, outputDims: [Int]) throws
  -> Variable
{
  let groups = spec.groups
  let (n, ic, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
  let (oc, oh, ow) = (outputDims[1], outputDims[2], outputDims[3])
  let (icg, kh, kw) = (w.shape[1], w.shape[2], w.shape[3])
  guard !spec.transposed, groups >= 1, ic == icg * groups, oc % groups == 0, w.shape[0] == oc else {
    throw TrainError.shapeMismatch(
      op: spec.transposed ? "ConvTranspose" : "Conv",
      detail: "input \(x.shape), weights \(w.shape), groups \(groups)\(spec.transposed ? " (grouped transposed convolution is not supported)" : "")")
  }
  if let b, b.shape != [oc] { throw TrainError.shapeMismatch(op: "Conv", detail: "bias \(b.shape) for \(oc) outputs") }
  let ocg = oc / groups
  let (sh, sw, dh, dw, ph, pw) = (spec.strides[0], spec.strides[1], spec.dilations[0], spec.dilations[1], spec.padsBegin[0], spec.padsBegin[1])
  /// Visits every (output index, input index, weight index) triple that contributes.
  func forEachTap(_ body: (Int, Int, Int) -> Void) {
    for bi in 0..<n {
      for o in 0..<oc {
        let g = o / ocg
        for c in 0..<icg {
          let xPlane = (bi * ic + g * icg + c) * h * wd
          for ki in 0..<kh {
            for kj in 0..<kw {
              let wi = ((o * icg + c) * kh + ki) * kw + kj
              for i in 0..<oh {
                let r = i * sh - ph + ki * dh
                guard r >= 0, r < h else { continue }
                let yRow = ((bi * oc + o) * oh + i) * ow
                for j in 0..<ow {
                  let q = j * sw - pw + kj * dw
                  guard q >= 0, q < wd else { continue }
                  body(yRow + j, xPlane + r * wd + q, wi)
                }
              }
            }
          }
        }
      }
    }
  }
  let y = x.value.withUnsafeBuffer { xp in
    w.value.withUnsafeBuffer { wp in
      Tensor(shape: outputDims) { yp in
        forEachTap { yi, xi, wi in yp[yi] += wp[wi] * xp[xi] }
        if let b {
          b.value.withUnsafeBuffer { bp in
            for bi in 0..<n { for o in 0..<oc { for i in 0..<oh * ow { yp[(bi * oc + o) * oh * ow + i] += bp[o] } } }
          }
        }
      }
    }
  }
  return Variable(y, parents: [x, w] + (b.map { [$0] } ?? [])) { g in
    g.withUnsafeBuffer { gp in
      let dx = x.requiresGrad
        ? w.value.withUnsafeBuffer { wp in Tensor(shape: x.shape) { d in forEachTap { yi, xi, wi in d[xi] += wp[wi] * gp[yi] } } }
        : nil
      let dw = w.requiresGrad
        ? x.value.withUnsafeBuffer { xp in Tensor(shape: w.shape) { d in forEachTap { yi, xi, wi in d[wi] += xp[xi] * gp[yi] } } }
        : nil
      let db = b?.requiresGrad == true
        ? Tensor(shape: [oc]) { d in for bi in 0..<n { for o in 0..<oc { for i in 0..<oh * ow { d[o] += gp[(bi * oc + o) * oh * ow + i] } } } }
        : nil
      return [dx, dw, db]
    }
  }
}
