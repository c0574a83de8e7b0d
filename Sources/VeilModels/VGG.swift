import VeilGraph

extension ModelZoo {
  /// VGG-16 (Simonyan & Zisserman, 2014), configuration D, as torchvision's `vgg16` (no
  /// BatchNorm). Module paths follow torchvision's `features` and `classifier` Sequentials;
  /// each conv's ReLU output also carries its Keras name (`block1_conv1`), and each block's
  /// pool is a cut (`block1_pool` … `block5_pool`), as are the first two fully connected
  /// layers (`fc1`, `fc2`, after their ReLU).
  public static func vgg16(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    var b = try NetworkBuilder(.vgg16, batch: batch, seed: seed)
    var x = b.input
    var channels = 3
    var index = 0  // position in torchvision's `features`
    for (block, widths) in vgg16Blocks.enumerated() {
      for (layer, width) in widths.enumerated() {
        x = b.conv(x, channels, width, .square(3), bias: true, name: "features.\(index)")
        x = b.activation(x, .relu, name: "features.\(index + 1)")
        b.rename(x, "block\(block + 1)_conv\(layer + 1)")
        (channels, index) = (width, index + 2)
      }
      x = b.maxPool(x, kernel: 2, stride: 2, name: "features.\(index)")
      b.cut(x, "block\(block + 1)_pool")
      index += 1
    }
    // torchvision's AdaptiveAvgPool2d(7) is the identity on the 7×7 map of a 224 input.
    x = b.flatten(x, name: "flatten")
    x = b.activation(b.linear(x, 512 * 7 * 7, 4096, name: "classifier.0"), .relu, name: "classifier.1")
    b.cut(x, "fc1")
    x = b.dropout(x, 0.5, name: "classifier.2")
    x = b.activation(b.linear(x, 4096, 4096, name: "classifier.3"), .relu, name: "classifier.4")
    b.cut(x, "fc2")
    x = b.dropout(x, 0.5, name: "classifier.5")
    return try b.finish(logits: b.linear(x, 4096, 1000, name: "classifier.6"))
  }

  /// Table 1, column D: the output channels of each block's 3×3 convolutions (pad 1); every
  /// block ends in a 2×2 max-pool of stride 2.
  static let vgg16Blocks = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
}
