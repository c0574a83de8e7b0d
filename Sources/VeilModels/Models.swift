/// VeilModels: the model zoo.
///
/// Owns the builders that write VGG-16, ResNet-50, EfficientNet-B0, EfficientNet-Lite0 and
/// Lite1, MobileNetV2 and the vision transformers (ViT-B/16, ViT-Ti/16, and `small-vit` for training
/// on small images) straight into the graph IR with seeded random weights (never pretrained
/// ones: a checkpoint importer supplies those, by parameter name), and the facts about each
/// model (paper, preprocessing, published parameter count), and `ModelLoader`, the one model
/// loader of the library (zoo names, ONNX files, state_dicts of zoo architectures). The builders
/// depend on VeilGraph and VeilTensor only and run nothing; the loader and ImageNet's class
/// names (`ImageNetClasses.load`) alone read files, through VeilFormats (the layer below). It
/// must not import data, or any higher layer.
///
/// Conventions every builder keeps, so that planners, importers and tests can rely on them:
/// - The input value is `input`, [batch, 3, 224, 224] NCHW RGB (240 for efficientnet_lite1, its
///   published resolution); the output value is `logits`, [batch, 1000] (except `small-vit`, a training-time architecture sized by its data: its
///   input's channels and side and its classes are arguments). Shapes are inferred before a
///   builder returns.
/// - Parameter (initializer) names are the reference implementation's `state_dict` keys:
///   torchvision's for vgg16, resnet50, efficientnet_b0, mobilenet_v2 and the ViTs; lukemelas'
///   EfficientNet-PyTorch, as ml-illustrated's Lite port names it, for efficientnet_lite0 and
///   efficientnet_lite1.
///   BatchNorm's `num_batches_tracked` is left out: inference never reads it. A constant of
///   the computation that is no parameter (a transformer's attention scale) is named by its
///   node's path and a '/' (`….self_attention/scale`), a character no state_dict key has: it is
///   neither counted nor expected in a checkpoint.
/// - Node names are module paths (`layer1.0.conv1`, `features.0.2`). Work that has no module
///   of its own (a residual sum, the squeeze-excitation product, a ReLU module reused three
///   times) takes the block's path plus a word: `layer1.0.add`, `layer1.0.relu3`.
/// - Cut points are value names. `metadata["cuts"]` lists, in graph order, the values where
///   exactly one tensor crosses from everything before to everything after: stage and block
///   outputs. The cut value is renamed, its node keeps its module path; the last block of a
///   stage takes the stage's name (`layer1`, not `layer1.2`; `features.2`, not
///   `features.2.1`). The inference passes keep value names (a folded or fused node produces
///   the value of the node it absorbed), so cut names survive `optimizeForInference()`.
/// - Metadata keys: `model.name`, `model.paper`, `model.reference`, `model.parameters`,
///   `weights`, `input.name`, `input.layout`, `input.size`, `input.color`, `output.name`,
///   `preprocess.range`, `preprocess.mean`, `preprocess.std`, `preprocess.resize`,
///   `preprocess.crop`, `preprocess.interpolation`, `cuts`; `Preprocessing(metadata:)` reads
///   the `preprocess.*` keys back.
import VeilGraph
import VeilTensor

/// What went wrong asking the zoo for a model.
public enum ModelZooError: Error, CustomStringConvertible, Equatable {
  case unknownModel(String, valid: [String])
  case invalidBatch(Int)
  case invalidShape(String)

  public var description: String {
    switch self {
    case .unknownModel(let name, let valid):
      return "unknown model '\(name)'; valid names: \(valid.joined(separator: ", "))"
    case .invalidBatch(let n):
      return "batch size must be at least 1, found \(n)"
    case .invalidShape(let detail):
      return "cannot build this vision transformer: \(detail)"
    }
  }
}

/// How an image becomes the model's input: scale pixels to [0, range], resize the shorter
/// side, center-crop, then (x − mean) / std per RGB channel.
public struct Preprocessing: Sendable, Equatable {
  /// Pixels are scaled to [0, range] before normalizing: 1 for torchvision, 255 for TF Lite.
  public var range: Float
  public var mean: [Float]
  public var std: [Float]
  public var resize: Int
  public var crop: Int
  public var interpolation: String

  /// torchvision's ImageNet evaluation transform (as its V1 weights use it).
  public static func imageNet(interpolation: String = "bilinear") -> Preprocessing {
    Preprocessing(
      range: 1, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], resize: 256, crop: 224,
      interpolation: interpolation)
  }

  /// TensorFlow's EfficientNet-Lite evaluation transform: (x − 127) / 128 on 0…255 pixels.
  public static let tfLite = Preprocessing(
    range: 255, mean: [127, 127, 127], std: [128, 128, 128], resize: 256, crop: 224, interpolation: "bicubic")

  /// Lite1's: the same at 240 px, from a 272 px resize (TensorFlow's crop padding of 32).
  public static let tfLite1 = Preprocessing(
    range: 255, mean: [127, 127, 127], std: [128, 128, 128], resize: 272, crop: 240, interpolation: "bicubic")

  /// The mean and std on the 0…255 pixel scale (what VeilData's `Normalization` takes).
  public var pixelMean: [Float] { mean.map { $0 * 255 / range } }
  public var pixelStd: [Float] { std.map { $0 * 255 / range } }

  public var summary: String {
    let r = range == 1 ? "[0, 1]" : "[0, \(Int(range))]"
    let normalize = "(x − mean) / std with mean \(mean), std \(std)"
    return "RGB scaled to \(r), resize \(resize) (\(interpolation)), center-crop \(crop), \(normalize)"
  }
}

extension Preprocessing {
  /// The transform a zoo model records in its metadata (`preprocess.*`, as the zoo writes it:
  /// the range as "0,R", the mean and std as comma-separated lists); nil when any key is missing
  /// or does not parse, or the mean and std lists differ in length.
  public init?(metadata m: [String: String]) {
    func floats(_ key: String) -> [Float]? {
      guard let text = m[key] else { return nil }
      let parts = text.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
      guard !parts.isEmpty, !parts.contains(nil) else { return nil }
      return parts.compactMap { $0 }
    }
    guard let bounds = floats("preprocess.range"), bounds.count == 2, bounds[0] == 0, bounds[1] > 0,
      let mean = floats("preprocess.mean"), let std = floats("preprocess.std"), mean.count == std.count,
      !std.contains(where: { $0 <= 0 }),
      let resize = m["preprocess.resize"].flatMap({ Int($0) }), let crop = m["preprocess.crop"].flatMap({ Int($0) }),
      let interpolation = m["preprocess.interpolation"]
    else { return nil }
    self.init(range: bounds[1], mean: mean, std: std, resize: resize, crop: crop, interpolation: interpolation)
  }
}

/// Facts about a zoo model, for listings, reports and tests.
public struct ModelInfo: Sendable, Equatable {
  /// The zoo name (`ModelZoo.names`).
  public var name: String
  public var paper: String
  public var year: Int
  /// The implementation whose architecture and parameter names the builder reproduces.
  public var reference: String
  /// N×C×H×W at batch 1; builders take any batch.
  public var inputShape: [Int]
  /// The evaluation transform, field by field; `preprocessing` says it in words.
  public var transform: Preprocessing
  /// Learnable parameters as the reference publishes them (BatchNorm statistics excluded);
  /// the builder's graph has exactly this many.
  public var parameterCount: Int
  public var summary: String

  public var preprocessing: String { transform.summary }
}

/// The model zoo: every model by name, with its facts.
public enum ModelZoo {
  /// Every model, in listing order, with its builder.
  static let catalog: [(info: ModelInfo, build: @Sendable (Int, UInt64) throws -> Graph)] = [
    (.vgg16, { try vgg16(batch: $0, seed: $1) }),
    (.resnet50, { try resnet50(batch: $0, seed: $1) }),
    (.efficientNetB0, { try efficientNetB0(batch: $0, seed: $1) }),
    (.efficientNetLite0, { try efficientNetLite0(batch: $0, seed: $1) }),
    (.efficientNetLite1, { try efficientNetLite1(batch: $0, seed: $1) }),
    (.mobileNetV2, { try mobileNetV2(batch: $0, seed: $1) }),
    (.vitB16, { try vitB16(batch: $0, seed: $1) }),
    (.vitTi16, { try vitTi16(batch: $0, seed: $1) }),
  ]

  public static let models: [ModelInfo] = catalog.map(\.info)

  /// ["vgg16", "resnet50", "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "mobilenet_v2", "vit_b_16",
  /// "vit_ti_16"]
  public static let names: [String] = models.map(\.name)

  public static func info(_ name: String) throws -> ModelInfo {
    guard let entry = catalog.first(where: { $0.info.name == name }) else {
      throw ModelZooError.unknownModel(name, valid: names)
    }
    return entry.info
  }

  /// Builds a model by zoo name with seeded random weights; the same seed gives the same weights.
  public static func build(_ name: String, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    guard let entry = catalog.first(where: { $0.info.name == name }) else {
      throw ModelZooError.unknownModel(name, valid: names)
    }
    return try entry.build(batch, seed)
  }

  /// Learnable parameters, as PyTorch's `sum(p.numel() for p in model.parameters())` counts
  /// them: every initializer except BatchNorm's running mean and variance, which are buffers,
  /// and the computation's own constants (named with a '/').
  public static func learnableParameterCount(_ graph: Graph) -> Int {
    var statistics = Set<ValueID>()
    for n in graph.nodes {
      if case .batchNormalization = n.op, n.inputs.count >= 5 { statistics.formUnion(n.inputs[3...4]) }
    }
    return graph.initializers.reduce(0) {
      $0 + (statistics.contains($1.key) || graph[$1.key].name.contains("/") ? 0 : $1.value.count)
    }
  }
}

extension ModelInfo {
  public static let vgg16 = ModelInfo(
    name: "vgg16", paper: "Very Deep Convolutional Networks for Large-Scale Image Recognition", year: 2014,
    reference: "torchvision.models.vgg16", inputShape: [1, 3, 224, 224], transform: .imageNet(),
    parameterCount: 138_357_544,
    summary: "13 3×3 convolutions in five max-pooled blocks, then three fully connected layers; no BatchNorm")

  public static let resnet50 = ModelInfo(
    name: "resnet50", paper: "Deep Residual Learning for Image Recognition", year: 2015,
    reference: "torchvision.models.resnet50", inputShape: [1, 3, 224, 224], transform: .imageNet(),
    parameterCount: 25_557_032,
    summary: "v1.5: 16 bottleneck residual blocks in four stages [3, 4, 6, 3], stride in the 3×3 conv")

  public static let efficientNetB0 = ModelInfo(
    name: "efficientnet_b0", paper: "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    year: 2019, reference: "torchvision.models.efficientnet_b0", inputShape: [1, 3, 224, 224],
    transform: .imageNet(interpolation: "bicubic"), parameterCount: 5_288_548,
    summary: "16 MBConv blocks with squeeze-excitation and SiLU in seven stages, 1280-channel head")

  public static let efficientNetLite0 = ModelInfo(
    name: "efficientnet_lite0", paper: "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    year: 2019, reference: "efficientnet_lite_pytorch (lukemelas/EfficientNet-PyTorch naming), TF 'SAME' padding",
    inputShape: [1, 3, 224, 224], transform: .tfLite, parameterCount: 4_652_008,
    summary: "EfficientNet-Lite (TensorFlow, 2020): B0's stages without squeeze-excitation, ReLU6, fixed stem and head")

  public static let efficientNetLite1 = ModelInfo(
    name: "efficientnet_lite1", paper: "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    year: 2019, reference: "efficientnet_lite_pytorch (lukemelas/EfficientNet-PyTorch naming), TF 'SAME' padding",
    inputShape: [1, 3, 240, 240], transform: .tfLite1, parameterCount: 5_416_680,
    summary: "EfficientNet-Lite1: Lite0 at depth ×1.1 (21 blocks) and 240 px, stem and head fixed")

  public static let mobileNetV2 = ModelInfo(
    name: "mobilenet_v2", paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", year: 2018,
    reference: "torchvision.models.mobilenet_v2", inputShape: [1, 3, 224, 224], transform: .imageNet(),
    parameterCount: 3_504_872,
    summary: "17 inverted residual blocks with linear bottlenecks and ReLU6, 1280-channel head")
}
