import VeilTensor

// Conv and ConvTranspose (2-D, NCHW, grouped or not): forward, backward-data and
// backward-weights all run on the training backend's convolution (`TrainingBackend`; on
// oneDNN, its forward and backward primitives), depthwise convolutions (MobileNet,
// EfficientNet) included.

func convolutionOutputDims(_ spec: ConvolutionSpec, input: [Int], weights: [Int]) throws -> [Int] {
  guard input.count == 4, weights.count == 4 else {
    throw TrainError.shapeMismatch(op: spec.transposed ? "ConvTranspose" : "Conv", detail: "input \(input) and weights \(weights) must be 4-D")
  }
  var out = [input[0], spec.transposed ? weights[1] * spec.groups : weights[0]]
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
public func convolution(
  _ x: Variable, _ w: Variable, _ b: Variable?, _ spec: ConvolutionSpec, backend: any TrainingBackend = Backends.training
) throws -> Variable {
  let outDims = try convolutionOutputDims(spec, input: x.shape, weights: w.shape)
  let kernel = try backend.trainingConvolution(
    spec, inputDims: x.shape, weightShape: w.shape, outputDims: outDims, hasBias: b != nil)
  let y = try kernel.forward(input: x.value, weights: w.value, bias: b?.value)
  return Variable(y, parents: [x, w] + (b.map { [$0] } ?? [])) { g in
    let dx = x.requiresGrad ? try kernel.backwardData(outputGradient: g, weights: w.value) : nil
    guard w.requiresGrad || b?.requiresGrad == true else { return [dx, nil, nil] }
    // One pass gives both; hand back only what is wanted.
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
  public let backend: any TrainingBackend

  public init(
    _ name: String, inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
    bias: Bool = true, transposed: Bool = false,
    initializer: Initializer = .kaimingUniform(negativeSlope: Float(5).squareRoot()), generator: inout SeededGenerator,
    backend: any TrainingBackend = Backends.training
  ) {
    self.backend = backend
    let shape = transposed ? [inChannels, outChannels, kernel, kernel] : [outChannels, inChannels, kernel, kernel]
    weight = parameter("\(name).weight", shape, initializer, &generator)
    self.bias = bias ? parameter("\(name).bias", [outChannels], .zeros, &generator) : nil
    spec = ConvolutionSpec(
      strides: [stride, stride], dilations: [1, 1], padsBegin: [padding, padding], padsEnd: [padding, padding], groups: 1,
      transposed: transposed)
  }

  public var parameters: [Variable] { [weight] + (bias.map { [$0] } ?? []) }

  public func callAsFunction(_ x: Variable) throws -> Variable { try convolution(x, weight, bias, spec, backend: backend) }
}
