import VeilGraph

extension ModelZoo {
  /// ResNet-50 (He et al., 2015) as torchvision's `resnet50`: "v1.5", whose bottleneck
  /// strides in its 3×3 conv rather than its first 1×1. Convs have no bias; BatchNorm ε 1e-5.
  /// Cuts: `stem` (after the max-pool), every bottleneck (`layer1.0`, `layer1.1`), each
  /// stage (`layer1` … `layer4`, the stage's last block), and `avgpool`.
  public static func resnet50(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    var b = try NetworkBuilder(.resnet50, batch: batch, seed: seed)
    var x = b.convBN(b.input, 3, 64, .square(7, stride: 2), conv: "conv1", bn: "bn1")
    x = b.activation(x, .relu, name: "relu")
    x = b.maxPool(x, kernel: 3, stride: 2, padding: 1, name: "maxpool")
    b.cut(x, "stem")
    var channels = 64
    for (i, stage) in resnet50Stages.enumerated() {
      for j in 0..<stage.blocks {
        let name = "layer\(i + 1).\(j)"
        x = b.bottleneck(x, channels, width: stage.width, stride: j == 0 ? stage.stride : 1, name: name)
        b.cut(x, j == stage.blocks - 1 ? "layer\(i + 1)" : name)
        channels = stage.width * bottleneckExpansion
      }
    }
    x = b.globalAveragePool(x, name: "avgpool")
    b.cut(x, "avgpool")
    x = b.flatten(x, name: "flatten")
    return try b.finish(logits: b.linear(x, channels, 1000, name: "fc"))
  }

  /// Table 1, 50-layer column (conv2_x … conv5_x): bottleneck width, number of blocks, and
  /// the stride of the stage's first block.
  static let resnet50Stages: [(width: Int, blocks: Int, stride: Int)] = [
    (64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2),
  ]

  /// A bottleneck's output has four times its width.
  static let bottleneckExpansion = 4
}

extension NetworkBuilder {
  /// The bottleneck residual block (He et al., Fig. 5 right) in torchvision's form: 1×1
  /// reduce, 3×3 carrying the stride, 1×1 expand, each with BatchNorm; a projection shortcut
  /// (`downsample`: 1×1 conv with the stride, BatchNorm) where the shape changes; ReLU after
  /// the sum.
  mutating func bottleneck(_ x: ValueID, _ inChannels: Int, width: Int, stride: Int, name: String) -> ValueID {
    let outChannels = width * ModelZoo.bottleneckExpansion
    var y = convBN(x, inChannels, width, .square(1), conv: "\(name).conv1", bn: "\(name).bn1")
    y = activation(y, .relu, name: "\(name).relu1")
    y = convBN(y, width, width, .square(3, stride: stride), conv: "\(name).conv2", bn: "\(name).bn2")
    y = activation(y, .relu, name: "\(name).relu2")
    y = convBN(y, width, outChannels, .square(1), conv: "\(name).conv3", bn: "\(name).bn3")
    var shortcut = x
    if stride != 1 || inChannels != outChannels {
      shortcut = convBN(
        x, inChannels, outChannels, .square(1, stride: stride), conv: "\(name).downsample.0",
        bn: "\(name).downsample.1")
    }
    return activation(add(y, shortcut, name: "\(name).add"), .relu, name: "\(name).relu3")
  }
}
