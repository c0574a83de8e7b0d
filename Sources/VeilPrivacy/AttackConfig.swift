import Foundation
import VeilData

/// Which inversion attacker to train.
public enum AttackerKind: String, Codable, Sendable, CaseIterable {
  /// pix2pix conditional GAN: U-Net generator + PatchGAN discriminator, adversarial + λ·L1.
  case cgan
  /// He et al.'s black-box inverse network: the same generator trained on L1 (or MSE) alone.
  case inverse
}

/// The reconstruction loss of the generator (the L1 of pix2pix; MSE is offered for the
/// inverse network).
public enum ReconstructionLoss: String, Codable, Sendable, CaseIterable {
  case l1
  case mse
}

/// Everything that decides an attack's outcome. Defaults are documented in docs/privacy.md;
/// they keep one attack at a few minutes on two cores.
public struct AttackConfig: Codable, Sendable, Equatable {
  public var attacker: AttackerKind = .cgan
  /// Side of the square images (pixels); the feature map at the cut must divide it by a power
  /// of two.
  public var imageSize: Int = 64
  public var epochs: Int = 10
  public var batch: Int = 16
  public var seed: UInt64 = 0
  /// Adam's learning rate and β1 (β2 = 0.999), as pix2pix.
  public var learningRate: Float = 2e-4
  public var beta1: Float = 0.5
  /// Weight of the reconstruction loss against the adversarial one (pix2pix's λ = 100).
  public var lambda: Float = 100
  public var loss: ReconstructionLoss = .l1
  /// Generator width (pix2pix's ngf) and the most U-Net levels below the feature map.
  public var generatorWidth: Int = 32
  public var generatorDepth: Int = 4
  /// Discriminator width (pix2pix's ndf).
  public var discriminatorWidth: Int = 32
  /// The feature map is averaged down to at most this many channels (groups of consecutive
  /// channels) and upsampled (nearest) to the image size before it conditions the discriminator.
  public var discriminatorFeatureChannels: Int = 16
  /// Random crops per training photo and per held-out photo (see `AttackData.photos`).
  public var trainCropsPerPhoto: Int = 40
  public var testCropsPerPhoto: Int = 4
  /// Share of photos held out for the SSIM/PSNR figures (at least one photo).
  public var testFraction: Double = 0.25
  /// Held-out pairs drawn in the PNG grid.
  public var gridImages: Int = 8

  public init() {}

  /// Checks ranges before any work, naming the option to change.
  public func validate() throws {
    func bad(_ s: String) -> PrivacyError { .invalidConfig(s) }
    guard imageSize >= 16 else { throw bad("image size \(imageSize) is below 16 (SSIM's window needs 11 px; the U-Net halves it)") }
    guard epochs >= 1 else { throw bad("epochs must be ≥ 1, found \(epochs)") }
    guard batch >= 2 else { throw bad("batch must be ≥ 2 (BatchNorm trains on batch statistics), found \(batch)") }
    guard learningRate > 0, learningRate.isFinite else { throw bad("learning rate must be > 0, found \(learningRate)") }
    guard (0..<1).contains(beta1) else { throw bad("β1 must be in [0, 1), found \(beta1)") }
    guard lambda >= 0 else { throw bad("λ must be ≥ 0, found \(lambda)") }
    guard generatorWidth >= 4, discriminatorWidth >= 4 else {
      throw bad("generator and discriminator widths must be ≥ 4, found \(generatorWidth), \(discriminatorWidth)")
    }
    guard generatorDepth >= 0 else { throw bad("generator depth must be ≥ 0, found \(generatorDepth)") }
    guard discriminatorFeatureChannels >= 1 else { throw bad("discriminator feature channels must be ≥ 1") }
    guard trainCropsPerPhoto >= 1, testCropsPerPhoto >= 1 else { throw bad("crops per photo must be ≥ 1") }
    guard testFraction > 0, testFraction < 1 else { throw bad("test fraction must be in (0, 1), found \(testFraction)") }
    guard gridImages >= 1 else { throw bad("grid images must be ≥ 1") }
  }
}

/// Mean, standard deviation and each held-out image's score.
public struct ScoreSummary: Codable, Sendable, Equatable {
  public var mean: Double
  /// Sample standard deviation (n − 1); 0 for one image.
  public var std: Double
  public var perImage: [Double]

  public init(_ values: [Double]) {
    perImage = values
    let n = Double(values.count)
    mean = values.isEmpty ? .nan : values.reduce(0, +) / n
    let m = mean
    std = values.count < 2 ? 0 : (values.reduce(0) { $0 + ($1 - m) * ($1 - m) } / (n - 1)).squareRoot()
  }

  /// One-sided upper confidence bound of the mean at 95 %: mean + t·std/√n with Student's t
  /// quantile for n − 1 degrees of freedom. A cut is called private only when this bound (not
  /// the bare mean) is below the threshold. Infinite for fewer than two images.
  public var upperConfidenceBound: Double {
    let n = perImage.count
    guard n >= 2 else { return .infinity }
    return mean + StudentT.quantile95(degreesOfFreedom: n - 1) * std / Double(n).squareRoot()
  }
}

/// The one-sided 95 % quantile of Student's t distribution.
public enum StudentT {
  static let table: [Double] = [
    6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
    1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697,
  ]

  /// Exact table values for 1–30 degrees of freedom; above, the Cornish–Fisher expansion
  /// around the normal quantile 1.6449 (error below 1e-3).
  public static func quantile95(degreesOfFreedom v: Int) -> Double {
    precondition(v >= 1, "degrees of freedom must be ≥ 1")
    if v <= table.count { return table[v - 1] }
    let z = 1.6448536269514722
    let n = Double(v)
    let g1 = (z * z * z + z) / 4
    let g2 = (5 * pow(z, 5) + 16 * z * z * z + 3 * z) / 96
    return z + g1 / n + g2 / (n * n)
  }
}

/// What one attack found, as `veil attack --json` prints it and the planner reads it.
public struct AttackResult: Codable, Sendable, Equatable {
  public var model: String
  public var cut: String
  /// The crossing tensor's shape per image at the attack's image size, [C, h, w].
  public var featureShape: [Int]
  public var attacker: AttackerKind
  public var config: AttackConfig
  /// SSIM and PSNR (dB) of each held-out reconstruction against its original.
  public var ssim: ScoreSummary
  public var psnr: ScoreSummary
  /// `ssim.upperConfidenceBound`, stored for readers without this library.
  public var ssimUpperBound: Double
  /// The trivial baseline: SSIM of the mean training image against each held-out image.
  public var baselineSSIM: Double
  public var trainCount: Int
  public var heldOutCount: Int
  public var trainPhotos: Int
  public var heldOutPhotos: Int
  /// Training throughput (images per second over the epochs run in this call) and wall time
  /// of the whole attack (features, training, evaluation).
  public var imagesPerSecond: Double
  public var seconds: Double
  public var epochsRun: Int
  public var resumedFromEpoch: Int
  /// Final epoch's mean losses (the discriminator's is nil for the inverse network).
  public var generatorLoss: Double
  public var discriminatorLoss: Double?
  public var gridPath: String
  public var generatorWeightsPath: String
  public var discriminatorWeightsPath: String?
}

/// Errors of the privacy layer, naming the images, cut, step or option involved.
public enum PrivacyError: Error, CustomStringConvertible, Equatable {
  /// Two images that cannot be compared sample by sample.
  case mismatchedImages(first: String, second: String, detail: String)
  /// An image too small for the 11×11 SSIM window.
  case imageTooSmall(name: String, width: Int, height: Int, minimum: Int)
  /// An option out of range.
  case invalidConfig(String)
  /// A data set an attack cannot learn from.
  case data(source: String, detail: String)
  /// A cut the attack cannot use.
  case cut(name: String, detail: String)
  /// A loss that became NaN or infinite.
  case nonFiniteLoss(step: Int, epoch: Int, loss: String, advice: String)
  /// A checkpoint or sweep state that does not match this run.
  case resume(file: String, detail: String)

  public var description: String {
    switch self {
    case .mismatchedImages(let a, let b, let detail):
      return "cannot compare \(a) with \(b): \(detail)"
    case .imageTooSmall(let name, let w, let h, let minimum):
      return "\(name) is \(w)×\(h); SSIM needs at least \(minimum)×\(minimum) pixels (its Gaussian window)"
    case .invalidConfig(let s): return "attack options: \(s)"
    case .data(let source, let detail): return "data '\(source)': \(detail)"
    case .cut(let name, let detail): return "cut '\(name)': \(detail)"
    case .nonFiniteLoss(let step, let epoch, let loss, let advice):
      return "the \(loss) loss is not finite at step \(step) (epoch \(epoch)); training stopped. \(advice)"
    case .resume(let file, let detail): return "\(file): \(detail)"
    }
  }
}

/// Progress events of a long attack or sweep, for a bar on stderr or a log.
public enum AttackProgress: Sendable {
  case features(done: Int, total: Int, cached: Bool)
  case step(epoch: Int, epochs: Int, step: Int, steps: Int, generatorLoss: Double, discriminatorLoss: Double?, etaSeconds: Double)
  case epochDone(epoch: Int, epochs: Int, generatorLoss: Double, discriminatorLoss: Double?, seconds: Double)
  case message(String)
}
