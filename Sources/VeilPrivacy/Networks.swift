import Foundation
import VeilTensor
import VeilTrain

// The attackers' networks, as pix2pix builds them (Isola et al. 2017, REFERENCES.md), adapted to
// a feature map instead of an image at the generator's input.

/// A convolution followed by BatchNorm and an activation: the unit every level is made of.
final class ConvUnit {
  enum Activation { case leakyRelu, relu, none }
  let conv: Conv2d
  let norm: BatchNorm?
  let activation: Activation

  init(
    _ name: String, _ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int, padding: Int, transposed: Bool = false,
    norm: Bool, activation: Activation, generator: inout SeededGenerator
  ) {
    conv = Conv2d(
      name, inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride, padding: padding, bias: !norm,
      transposed: transposed, initializer: .normal(mean: 0, std: 0.02), generator: &generator)
    self.norm = norm ? BatchNorm("\(name).bn", channels: outChannels) : nil
    self.activation = activation
  }

  /// With `frozen`, the weights enter as constants: a generator step back-propagates through
  /// the discriminator without computing the discriminator's weight gradients.
  func callAsFunction(_ x: Variable, frozen: Bool = false) throws -> Variable {
    let w = frozen ? Variable(conv.weight.value) : conv.weight
    let b = conv.bias.map { frozen ? Variable($0.value) : $0 }
    var y = try convolution(x, w, b, conv.spec, backend: conv.backend)
    if let norm { y = try norm(y) }
    switch activation {
    case .leakyRelu: y = leakyRelu(y, alpha: 0.2)
    case .relu: y = relu(y)
    case .none: break
    }
    return y
  }

  var parameters: [Variable] { conv.parameters + (norm?.parameters ?? []) }
}

/// pix2pix's U-Net, fed a feature map [N, C, h, w] and producing an image [N, channels, S, S]
/// in [-1, 1]:
/// 1. a learned 1×1 channel reduction to `c0` channels at h×w (Conv → BatchNorm → LeakyReLU);
/// 2. `levels` encoder levels (Conv 4×4 stride 2 → BatchNorm → LeakyReLU, widths doubling up
///    to 8·width) down to no less than 2×2, and the mirrored decoder levels (ConvTranspose 4×4
///    stride 2 → BatchNorm → ReLU), each concatenated with the encoder level of its size;
/// 3. log2(S/h) ConvTranspose 4×4 stride 2 steps up to the image size, the last one to the
///    image's channels with tanh (a 3×3 Conv with tanh when h = S).
/// The reduction is wider for deeper (smaller) feature maps, c0 = width·min(8, max(1, S/2h)),
/// so a deep cut is not judged private because the attacker's bottleneck was too narrow.
/// Dropout (pix2pix's noise source) is left out: the attack is deterministic given its seed.
public final class InversionGenerator {
  public let featureShape: [Int]
  public let imageSize: Int
  public let imageChannels: Int
  let reduce: ConvUnit
  let down: [ConvUnit]
  let up: [ConvUnit]
  let upsample: [ConvUnit]

  /// Whether the generator can rebuild S×S images from feature maps of this shape: [C, h, w]
  /// with h = w and S/h a power of two.
  public static func check(featureShape: [Int], imageSize: Int) throws {
    guard featureShape.count == 3 else {
      throw PrivacyError.invalidConfig("the generator takes a feature map [C, h, w], found \(featureShape)")
    }
    let (h, w) = (featureShape[1], featureShape[2])
    guard h == w, h >= 1, imageSize % h == 0, (imageSize / h).nonzeroBitCount == 1 else {
      throw PrivacyError.invalidConfig(
        "the feature map is \(h)×\(w) at image size \(imageSize): the generator needs a square map whose side divides the image size by a power of two; choose an image size that is a power of two (64, 128) so every cut's map does")
    }
  }

  public init(featureShape: [Int], imageSize: Int, imageChannels: Int = 3, width: Int, depth: Int, seed: UInt64) throws {
    try Self.check(featureShape: featureShape, imageSize: imageSize)
    let (c, h) = (featureShape[0], featureShape[1])
    self.featureShape = featureShape
    self.imageSize = imageSize
    self.imageChannels = imageChannels
    var g = SeededGenerator(seed: seed)
    let ratio = imageSize / h
    let c0 = width * min(8, max(1, ratio / 2))
    reduce = ConvUnit("reduce", c, c0, kernel: 1, stride: 1, padding: 0, norm: true, activation: .leakyRelu, generator: &g)
    let levels = min(depth, max(0, h.trailingZeroBitCount - 1))
    var widths = [c0]
    var down: [ConvUnit] = []
    for i in 1...max(levels, 1) where levels > 0 {
      widths.append(min(c0 << i, 8 * width))
      down.append(
        ConvUnit("down\(i)", widths[i - 1], widths[i], kernel: 4, stride: 2, padding: 1, norm: true, activation: .leakyRelu, generator: &g))
    }
    var up: [ConvUnit] = []
    for i in stride(from: levels, through: 1, by: -1) {
      let input = i == levels ? widths[i] : 2 * widths[i]
      up.append(
        ConvUnit(
          "up\(i)", input, widths[i - 1], kernel: 4, stride: 2, padding: 1, transposed: true, norm: true, activation: .relu, generator: &g))
    }
    var channels = levels > 0 ? 2 * c0 : c0
    var upsample: [ConvUnit] = []
    let steps = ratio.trailingZeroBitCount
    if steps == 0 {
      upsample.append(
        ConvUnit("out", channels, imageChannels, kernel: 3, stride: 1, padding: 1, norm: false, activation: .none, generator: &g))
    }
    for k in 0..<steps {
      let last = k == steps - 1
      let out = last ? imageChannels : max(width, c0 >> (k + 1))
      upsample.append(
        ConvUnit(
          last ? "out" : "upsample\(k + 1)", channels, out, kernel: 4, stride: 2, padding: 1, transposed: true, norm: !last,
          activation: last ? .none : .relu, generator: &g))
      channels = out
    }
    self.down = down
    self.up = up
    self.upsample = upsample
  }

  public func callAsFunction(_ features: Variable) throws -> Variable {
    var skips = [try reduce(features)]
    for d in down { skips.append(try d(skips[skips.count - 1])) }
    var x = skips[skips.count - 1]
    for (k, u) in up.enumerated() {
      x = try concat([try u(x), skips[skips.count - 2 - k]])
    }
    for u in upsample { x = try u(x) }
    return tanh(x)
  }

  var units: [ConvUnit] { [reduce] + down + up + upsample }
  public var parameters: [Variable] { units.flatMap(\.parameters) }
  public var batchNorms: [BatchNorm] { units.compactMap(\.norm) }
  public func setTraining(_ on: Bool) { for n in batchNorms { n.training = on } }
  public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }
}

/// pix2pix's PatchGAN on (condition, image) pairs concatenated along channels: Conv 4×4
/// stride 2 → LeakyReLU(0.2), then `layers − 1` stride-2 and one stride-1 Conv → BatchNorm →
/// LeakyReLU with widths width·(2, 4, 8), then a stride-1 Conv to one logit per patch.
/// `layers` is 3 from 64 px (pix2pix's 70×70 receptive field at 256 px), fewer for smaller
/// images so the patch grid stays at least 1×1.
public final class PatchDiscriminator {
  let units: [ConvUnit]

  public init(inputChannels: Int, imageSize: Int, width: Int, seed: UInt64) {
    var g = SeededGenerator(seed: seed ^ 0xD15C)
    let layers = max(1, min(3, imageSize.trailingZeroBitCount - 3))
    var units = [
      ConvUnit("d0", inputChannels, width, kernel: 4, stride: 2, padding: 1, norm: false, activation: .leakyRelu, generator: &g)
    ]
    var channels = width
    for n in 1...layers {
      let out = width * min(1 << n, 8)
      units.append(
        ConvUnit(
          "d\(n)", channels, out, kernel: 4, stride: n == layers ? 1 : 2, padding: 1, norm: true, activation: .leakyRelu,
          generator: &g))
      channels = out
    }
    units.append(
      ConvUnit("d\(layers + 1)", channels, 1, kernel: 4, stride: 1, padding: 1, norm: false, activation: .none, generator: &g))
    self.units = units
  }

  public func callAsFunction(_ x: Variable, frozen: Bool = false) throws -> Variable {
    var y = x
    for u in units { y = try u(y, frozen: frozen) }
    return y
  }

  public var parameters: [Variable] { units.flatMap(\.parameters) }
  public var batchNorms: [BatchNorm] { units.compactMap(\.norm) }
}

/// The discriminator's view of a feature map: groups of consecutive channels averaged down to
/// at most `channels`, then each value repeated over the block of image pixels it covers
/// (nearest-neighbour upsampling to S×S). Data preparation, outside the tape.
public func discriminatorCondition(_ features: Tensor, channels maxChannels: Int, imageSize s: Int) -> Tensor {
  let (n, c, h, w) = (features.shape[0], features.shape[1], features.shape[2], features.shape[3])
  let k = min(c, maxChannels)
  let (fy, fx) = (s / h, s / w)
  return features.withUnsafeBuffer { src in
    Tensor(shape: [n, k, s, s]) { dst in
      var small = [Float](repeating: 0, count: h * w)
      for b in 0..<n {
        for g in 0..<k {
          let lo = g * c / k
          let hi = (g + 1) * c / k
          for i in 0..<(h * w) { small[i] = 0 }
          for ch in lo..<hi {
            let base = (b * c + ch) * h * w
            for i in 0..<(h * w) { small[i] += src[base + i] }
          }
          let inv = 1 / Float(hi - lo)
          let out = (b * k + g) * s * s
          for y in 0..<s {
            let row = (y / fy) * w
            for x in 0..<s { dst[out + y * s + x] = small[row + x / fx] * inv }
          }
        }
      }
    }
  }
}
