import VeilGraph
import VeilTensor

/// A zoo model under construction: the graph, the seeded initializer that fills its weights
/// in the order layers are added (so a seed fixes every weight), and the cut points so far.
///
/// Initialization is torchvision's for VGG and MobileNetV2 (He-normal fan-out convs, γ = 1,
/// β = 0, zero biases, N(0, 0.01) linears), used for every model; it departs on purpose in one
/// place: BatchNorm running statistics are drawn away from (0, 1), so that BatchNorm folding
/// changes the weights and a wrong fold shows in a numerical comparison.
struct NetworkBuilder {
  var graph: Graph
  let input: ValueID
  private let info: ModelInfo
  private let seed: UInt64
  var rng: SeededGenerator
  private var cuts: [String] = []

  init(_ info: ModelInfo, batch: Int, seed: UInt64) throws {
    guard batch >= 1 else { throw ModelZooError.invalidBatch(batch) }
    self.info = info
    self.seed = seed
    rng = SeededGenerator(seed: seed)
    graph = Graph(name: info.name)
    input = graph.addInput(name: "input", shape: [batch] + info.inputShape.dropFirst())
  }

  /// Conv2d with He-normal weights in fan-out mode, as torchvision initializes them:
  /// std = √(2 / (out·k·k)); bias, where there is one, zero.
  mutating func conv(
    _ x: ValueID, _ inChannels: Int, _ outChannels: Int, _ a: ConvAttributes, bias: Bool = false, name: String
  ) -> ValueID {
    let fanOut = outChannels * a.kernel.reduce(1, *)
    let weight = Tensor.randomNormal(
      shape: [outChannels, inChannels / a.groups] + a.kernel, std: (2 / Float(fanOut)).squareRoot(), generator: &rng)
    return graph.conv(x, weight: weight, bias: bias ? Tensor(zeros: [outChannels]) : nil, a, name: name)
  }

  /// Inference BatchNorm2d: γ = 1 and β = 0 as at initialization; running mean ~ N(0, 0.1)
  /// and running variance ~ U(0.5, 1.5) rather than (0, 1), so folding has work to do.
  mutating func batchNorm(_ x: ValueID, _ channels: Int, epsilon: Float, name: String) -> ValueID {
    let mean = Tensor.randomNormal(shape: [channels], std: 0.1, generator: &rng)
    let variance = Tensor.randomUniform(shape: [channels], low: 0.5, high: 1.5, generator: &rng)
    return graph.batchNorm(
      x, scale: Tensor(shape: [channels], repeating: 1), bias: Tensor(zeros: [channels]), mean: mean,
      variance: variance, epsilon: epsilon, name: name)
  }

  /// Linear with weights ~ N(0, 0.01) and zero bias.
  mutating func linear(_ x: ValueID, _ inFeatures: Int, _ outFeatures: Int, name: String) -> ValueID {
    let weight = Tensor.randomNormal(shape: [outFeatures, inFeatures], std: 0.01, generator: &rng)
    return graph.linear(x, weight: weight, bias: Tensor(zeros: [outFeatures]), name: name)
  }

  mutating func activation(_ x: ValueID, _ a: Activation, name: String) -> ValueID {
    graph.activation(x, a, name: name)
  }

  mutating func add(_ a: ValueID, _ b: ValueID, name: String) -> ValueID { graph.add(a, b, name: name) }

  mutating func maxPool(_ x: ValueID, kernel: Int, stride: Int, padding: Int = 0, name: String) -> ValueID {
    graph.maxPool(
      x, PoolAttributes(kernel: [kernel, kernel], strides: [stride, stride], padsBegin: [padding, padding]), name: name)
  }

  mutating func globalAveragePool(_ x: ValueID, name: String) -> ValueID { graph.globalAveragePool(x, name: name) }
  mutating func flatten(_ x: ValueID, name: String) -> ValueID { graph.flatten(x, name: name) }
  mutating func dropout(_ x: ValueID, _ ratio: Float, name: String) -> ValueID {
    graph.dropout(x, ratio: ratio, name: name)
  }

  /// Gives value `x` another name (its node keeps its own).
  mutating func rename(_ x: ValueID, _ name: String) { graph[x].name = name }

  /// Names `x` as a cut point: the one tensor that crosses from the layers before it to the
  /// layers after it.
  mutating func cut(_ x: ValueID, _ name: String) {
    rename(x, name)
    cuts.append(name)
  }

  /// Marks `logits` as the graph's output, records the model's facts, and infers shapes.
  /// Mutating so that `b.finish(logits: b.linear(…))` sees the layer its argument adds.
  mutating func finish(logits: ValueID) throws -> Graph {
    graph[logits].name = "logits"
    graph.outputs = [logits]
    let p = info.transform
    func list(_ v: [Float]) -> String { v.map { "\($0)" }.joined(separator: ",") }
    let facts: [(String, String)] = [
      ("model.name", info.name),
      ("model.paper", "\(info.paper) (\(info.year))"),
      ("model.reference", info.reference),
      ("model.parameters", String(ModelZoo.learnableParameterCount(graph))),
      ("weights", "random: seeded initialization (seed \(seed)), not pretrained"),
      ("input.name", "input"),
      ("input.layout", "NCHW"),
      ("input.size", String(info.inputShape[2])),
      // A one-channel model (small-vit on TON_IoT images) takes the images' luma.
      ("input.color", info.inputShape[1] == 1 ? "grey" : "RGB"),
      ("output.name", "logits"),
      ("preprocess.range", "0,\(Int(p.range))"),
      ("preprocess.mean", list(p.mean)),
      ("preprocess.std", list(p.std)),
      ("preprocess.resize", String(p.resize)),
      ("preprocess.crop", String(p.crop)),
      ("preprocess.interpolation", p.interpolation),
      ("cuts", cuts.joined(separator: ",")),
    ]
    for (key, value) in facts { graph.metadata[key] = value }
    try graph.inferShapes()
    return graph
  }
}

// MARK: - Blocks shared by several families

extension NetworkBuilder {
  /// Convolution without bias followed by BatchNorm, each under its own module path.
  mutating func convBN(
    _ x: ValueID, _ inChannels: Int, _ outChannels: Int, _ a: ConvAttributes, epsilon: Float = 1e-5,
    conv convName: String, bn bnName: String
  ) -> ValueID {
    batchNorm(conv(x, inChannels, outChannels, a, name: convName), outChannels, epsilon: epsilon, name: bnName)
  }

  /// torchvision's `Conv2dNormActivation`: `name.0` conv, `name.1` BatchNorm, `name.2` activation.
  mutating func convNormActivation(
    _ x: ValueID, _ inChannels: Int, _ outChannels: Int, _ a: ConvAttributes, epsilon: Float = 1e-5,
    activation act: Activation?, name: String
  ) -> ValueID {
    let y = convBN(x, inChannels, outChannels, a, epsilon: epsilon, conv: "\(name).0", bn: "\(name).1")
    guard let act else { return y }
    return activation(y, act, name: "\(name).2")
  }

  /// The end of torchvision's MobileNetV2 and EfficientNet: a 1×1 `Conv2dNormActivation` to
  /// 1280 channels (`name`, a cut), average pool (cut `avgpool`), dropout 0.2 and the linear
  /// classifier to 1000 classes (`classifier.0`, `classifier.1`).
  mutating func finishWith1280Head(_ x: ValueID, _ inChannels: Int, activation act: Activation, name: String) throws
    -> Graph
  {
    var x = convNormActivation(x, inChannels, 1280, .square(1), activation: act, name: name)
    cut(x, name)
    x = globalAveragePool(x, name: "avgpool")
    cut(x, "avgpool")
    x = dropout(flatten(x, name: "flatten"), 0.2, name: "classifier.0")
    return try finish(logits: linear(x, 1280, 1000, name: "classifier.1"))
  }
}

extension Activation {
  /// min(max(x, 0), 6): MobileNet's activation, kept bounded for low-precision inference.
  static let relu6 = Activation.clip(min: 0, max: 6)
}

extension ConvAttributes {
  /// TensorFlow's "SAME" padding for a square kernel on an n×n input: the output is ⌈n / s⌉,
  /// and when the padding is odd the extra row and column go at the end (bottom, right).
  static func tfSame(_ k: Int, stride s: Int = 1, inputSize n: Int, groups: Int = 1) -> ConvAttributes {
    let total = max(((n + s - 1) / s - 1) * s + k - n, 0)
    let (begin, end) = (total / 2, total - total / 2)
    return ConvAttributes(
      kernel: [k, k], strides: [s, s], padsBegin: [begin, begin], padsEnd: [end, end], groups: groups)
  }
}
