import VeilGraph

extension ModelZoo {
  /// MobileNetV2 (Sandler et al., 2018) as torchvision's `mobilenet_v2` at width 1.0: a 3×3/2
  /// stem of 32 channels, 17 inverted residual blocks (`features.1` … `features.17`), a 1×1
  /// head to 1280, average pool, dropout 0.2, linear classifier; ReLU6, BatchNorm ε 1e-5.
  /// Cuts: every `features.N` and `avgpool`.
  public static func mobileNetV2(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    var b = try NetworkBuilder(.mobileNetV2, batch: batch, seed: seed)
    var x = b.convNormActivation(b.input, 3, 32, .square(3, stride: 2), activation: .relu6, name: "features.0")
    b.cut(x, "features.0")
    var channels = 32
    var index = 1  // position in torchvision's `features`
    for stage in mobileNetV2Stages {
      for r in 0..<stage.n {
        x = b.invertedResidual(
          x, channels, stage.c, expandRatio: stage.t, stride: r == 0 ? stage.s : 1, name: "features.\(index)")
        b.cut(x, "features.\(index)")
        (channels, index) = (stage.c, index + 1)
      }
    }
    return try b.finishWith1280Head(x, channels, activation: .relu6, name: "features.\(index)")
  }

  /// Table 2 of the MobileNetV2 paper: expansion factor t, output channels c, repeats n, and
  /// the stride s of each sequence's first block.
  static let mobileNetV2Stages: [(t: Int, c: Int, n: Int, s: Int)] = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
  ]
}

extension NetworkBuilder {
  /// The inverted residual with linear bottleneck (Sandler et al., Table 1) as torchvision's
  /// `InvertedResidual`: `conv.0` a 1×1 expansion with ReLU6 (left out at t = 1), a 3×3
  /// depthwise conv with ReLU6 carrying the stride, then a linear 1×1 projection (a bare conv
  /// and BatchNorm in the same Sequential); an identity shortcut where the shape is kept.
  mutating func invertedResidual(
    _ x: ValueID, _ inChannels: Int, _ outChannels: Int, expandRatio: Int, stride: Int, name: String
  ) -> ValueID {
    let hidden = inChannels * expandRatio
    var layer = 0  // position in the block's `conv` Sequential
    var y = x
    if expandRatio != 1 {
      y = convNormActivation(y, inChannels, hidden, .square(1), activation: .relu6, name: "\(name).conv.0")
      layer = 1
    }
    y = convNormActivation(
      y, hidden, hidden, .square(3, stride: stride, groups: hidden), activation: .relu6, name: "\(name).conv.\(layer)")
    y = convBN(y, hidden, outChannels, .square(1), conv: "\(name).conv.\(layer + 1)", bn: "\(name).conv.\(layer + 2)")
    return stride == 1 && inChannels == outChannels ? add(y, x, name: "\(name).add") : y
  }
}
