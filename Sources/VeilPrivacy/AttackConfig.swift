import Foundation
import VeilData
import VeilGraph

/// What the attacker holds besides the feature maps it observes at the cut.
public enum ThreatModel: String, Codable, Sendable, CaseIterable {
  /// The attacker has the head's weights: a public backbone, or a head leaked or extracted.
  /// It can run every attack, including the optimisation through the head. The default: the
  /// stronger attacker.
  case whiteBox = "white-box"
  /// The attacker can only query the head (send images, see their feature maps): the
  /// learning-based attackers, and the optimisation through a substitute head trained from
  /// those queries.
  case blackBox = "black-box"

  /// The attackers of this threat model, cheapest decisive first: a verdict stops early once
  /// one of them has shown a leak beyond doubt. Each hybrid follows the attackers whose trained
  /// networks it reuses (the inverse network; the substitute head).
  public var attackers: [AttackerKind] {
    switch self {
    case .whiteBox: [.optimisation, .inverse, .hybrid, .cgan]
    case .blackBox: [.inverse, .substitute, .substituteHybrid, .cgan]
    }
  }
}

/// Which inversion attacker to run.
public enum AttackerKind: String, Codable, Sendable, CaseIterable {
  /// pix2pix conditional GAN: U-Net generator + PatchGAN discriminator, adversarial + λ·L1.
  case cgan
  /// He et al.'s inverse network: the same generator trained on L1 (or MSE) alone.
  case inverse
  /// White-box regularised maximum likelihood (He et al. 2019; Mahendran & Vedaldi 2015): an
  /// image optimised so that the head's features of it match the observed ones, under a
  /// total-variation prior. Needs the head's weights, no data.
  case optimisation
  /// The same optimisation through a substitute head that the attacker trains from queries
  /// (image in, feature map out): the black-box form of the optimisation attack.
  case substitute
  /// White-box: the inverse network's reconstructions refined by the optimisation through the
  /// real head, the prior's weight calibrated with the unrefined images competing.
  case hybrid
  /// Black-box: the same refinement through the substitute head trained from queries.
  case substituteHybrid = "substitute-hybrid"

  /// Whether it learns from (image, feature map) pairs of its own photos.
  public var needsTrainingData: Bool { self != .optimisation }

  /// Whether it optimises the pixels through a head (the model's or a substitute's), so that
  /// the optimisation's steps, learning rate and prior decide it.
  public var optimisesPixels: Bool { self != .cgan && self != .inverse }

  /// The file in an attack's folder that holds its trained network's last checkpoint, which a
  /// rerun resumes and a hybrid reuses (nil: the optimisation trains nothing).
  public var checkpointName: String? {
    switch self {
    case .cgan, .inverse, .hybrid, .substituteHybrid: AttackTrainer.generatorName
    case .substitute: "substitute.safetensors"
    case .optimisation: nil
    }
  }

  /// A name for reports.
  public var title: String {
    switch self {
    case .cgan: "c-GAN (pix2pix)"
    case .inverse: "inverse network"
    case .optimisation: "white-box optimisation"
    case .substitute: "substitute-head optimisation"
    case .hybrid: "inverse network refined by white-box optimisation"
    case .substituteHybrid: "inverse network refined through a substitute head"
    }
  }
}

/// The reconstruction loss of the generator (the L1 of pix2pix; MSE is offered for the
/// inverse network).
public enum ReconstructionLoss: String, Codable, Sendable, CaseIterable {
  case l1
  case mse
}

/// Everything that decides an attack's outcome. Defaults are documented in docs/privacy.md.
public struct AttackConfig: Codable, Sendable, Equatable {
  public var attacker: AttackerKind = .cgan
  /// Side of the square images (pixels); for the learning-based attackers the feature map at
  /// the cut must divide it by a power of two.
  public var imageSize: Int = 64
  /// The most training epochs of a learning-based attacker (and of the substitute head).
  public var epochs: Int = 10
  /// Training stops when the validation loss has not improved by 1 % for this many epochs in a
  /// row, and the best epoch's weights are kept; 0 trains every epoch.
  public var patience: Int = 3
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
  /// Random crops per training photo and per held-out photo (see `AttackImages.photos`).
  public var trainCropsPerPhoto: Int = 40
  public var testCropsPerPhoto: Int = 4
  /// Share of photos held out for the scores (at least one photo). The optimisation attacker
  /// learns from nothing and may hold out every photo (1).
  public var testFraction: Double = 0.25
  /// Share of the training photos kept apart for the stopping rule (at least one photo when
  /// there are three or more training photos; 0: no validation, every epoch is trained).
  public var validationFraction: Double = 0.1
  /// Held-out pairs drawn in the PNG grid.
  public var gridImages: Int = 8
  /// The optimisation attack: Adam steps on the images, its learning rate (images on the
  /// [-1, 1] scale, cosine decay to a tenth), the weight and exponent of the total-variation
  /// prior, restarts per image (the first from grey, the others from noise; per image the one
  /// whose features come closest is kept), and images optimised together.
  public var optimisationSteps: Int = 400
  public var optimisationLearningRate: Float = 0.5
  /// The prior's weight when it is not calibrated (no photos of the attacker's own).
  public var tvWeight: Float = 1
  public var tvBeta: Float = 1
  public var restarts: Int = 1
  public var optimisationBatch: Int = 36
  /// The optimisation rebuilds this many crops of each held-out photo (1: the whole photo);
  /// its cost grows with every image, and crops of one photo are one cluster of the bound.
  public var optimisationCropsPerPhoto: Int = 1
  /// The prior's weight is calibrated on this many of the attacker's own photos (the training
  /// split, whole): each weight of `tvWeights` rebuilds them (see `calibrationAtFullSteps`), and
  /// the one with the best mean SSIM against them is used on the held-out images. 0 (or no photos of its
  /// own): `tvWeight` as given.
  public var calibrationImages: Int = 8
  public var tvWeights: [Float] = [0.1, 0.3, 1, 3, 10, 30]
  /// Whether each weight's calibration runs as many steps as the attack itself (true, the
  /// default). Weights that tie after a third of the steps can part widely after all of them
  /// (Lite0's `_blocks.4`: 0.202 against 0.212 on the attacker's photos, 0.30 against 0.20 on
  /// the held-out ones), so a shorter calibration can hand the attacker the weaker prior.
  /// nil: a result recorded before this option, calibrated in a third of the steps (kept apart
  /// from new results, never reused for them).
  public var calibrationAtFullSteps: Bool? = true
  /// The substitute head's width (channels of its first stage).
  public var substituteWidth: Int = 32
  /// The defence the enclave applies to the map before it leaves (nil: none). The attackers
  /// know it: they learn from defended maps and the white-box optimisation differentiates
  /// through it. Fitted per cut to the held-out maps' channel statistics.
  public var defence: CutDefence?

  public init() {}

  /// The options that decide what `attacker` does, the others at their defaults: two attacks
  /// whose relevant options agree are the same attack (a finished one is reused, a checkpoint
  /// resumed), whatever the options of the other attackers say.
  public var relevant: AttackConfig {
    let d = AttackConfig()
    var c = self
    func optimisation() {
      (c.optimisationSteps, c.optimisationLearningRate, c.tvWeight, c.tvBeta) = (d.optimisationSteps, d.optimisationLearningRate, d.tvWeight, d.tvBeta)
      (c.restarts, c.optimisationBatch, c.optimisationCropsPerPhoto) = (d.restarts, d.optimisationBatch, d.optimisationCropsPerPhoto)
      (c.calibrationImages, c.tvWeights, c.calibrationAtFullSteps) = (d.calibrationImages, d.tvWeights, d.calibrationAtFullSteps)
    }
    func generator() {
      (c.lambda, c.loss, c.generatorWidth, c.generatorDepth) = (d.lambda, d.loss, d.generatorWidth, d.generatorDepth)
    }
    func discriminator() {
      (c.discriminatorWidth, c.discriminatorFeatureChannels) = (d.discriminatorWidth, d.discriminatorFeatureChannels)
    }
    switch attacker {
    case .cgan:
      optimisation()
      c.loss = d.loss
      c.substituteWidth = d.substituteWidth
    case .inverse:
      optimisation()
      discriminator()
      c.lambda = d.lambda
      c.substituteWidth = d.substituteWidth
    case .optimisation:
      // It learns nothing: its own photos are read whole, for calibration only.
      generator()
      discriminator()
      (c.epochs, c.patience, c.batch, c.learningRate, c.beta1) = (d.epochs, d.patience, d.batch, d.learningRate, d.beta1)
      (c.trainCropsPerPhoto, c.validationFraction, c.substituteWidth) = (d.trainCropsPerPhoto, d.validationFraction, d.substituteWidth)
    case .substitute:
      generator()
      discriminator()
    case .hybrid, .substituteHybrid:
      // The inverse network's options and the optimisation's (and the substitute head's for
      // the black-box one).
      discriminator()
      c.lambda = d.lambda
      if attacker == .hybrid { c.substituteWidth = d.substituteWidth }
    }
    c.gridImages = d.gridImages
    return c
  }

  /// Checks ranges before any work, naming the option to change.
  public func validate() throws {
    func bad(_ s: String) -> PrivacyError { .invalidConfig(s) }
    guard imageSize >= 16 else { throw bad("image size \(imageSize) is below 16 (SSIM's window needs 11 px; the U-Net halves it)") }
    guard epochs >= 1 else { throw bad("epochs must be ≥ 1, found \(epochs)") }
    guard patience >= 0 else { throw bad("patience must be ≥ 0 (0: no early stopping), found \(patience)") }
    guard batch >= 2 else { throw bad("batch must be ≥ 2 (BatchNorm trains on batch statistics), found \(batch)") }
    guard learningRate > 0, learningRate.isFinite else { throw bad("learning rate must be > 0, found \(learningRate)") }
    guard (0..<1).contains(beta1) else { throw bad("β1 must be in [0, 1), found \(beta1)") }
    guard lambda >= 0, lambda.isFinite else { throw bad("λ must be ≥ 0, found \(lambda)") }
    guard generatorWidth >= 4, discriminatorWidth >= 4, substituteWidth >= 4 else {
      throw bad("generator, discriminator and substitute widths must be ≥ 4, found \(generatorWidth), \(discriminatorWidth), \(substituteWidth)")
    }
    guard generatorWidth <= 1024, discriminatorWidth <= 1024, substituteWidth <= 1024 else {
      throw bad("widths above 1024 are refused (found \(generatorWidth), \(discriminatorWidth), \(substituteWidth))")
    }
    guard generatorDepth >= 0, generatorDepth <= 8 else { throw bad("generator depth must be in 0…8, found \(generatorDepth)") }
    guard discriminatorFeatureChannels >= 1 else { throw bad("discriminator feature channels must be ≥ 1") }
    guard trainCropsPerPhoto >= 1, testCropsPerPhoto >= 1 else { throw bad("crops per photo must be ≥ 1") }
    let maximumTest = attacker == .optimisation ? 1.0 : 1.0.nextDown
    guard testFraction > 0, testFraction <= maximumTest else {
      throw bad(
        attacker == .optimisation
          ? "test fraction must be in (0, 1], found \(testFraction)"
          : "test fraction must be in (0, 1) (the \(attacker.rawValue) attacker trains on the rest), found \(testFraction)")
    }
    guard validationFraction >= 0, validationFraction < 1 else {
      throw bad("validation fraction must be in [0, 1), found \(validationFraction)")
    }
    guard gridImages >= 1 else { throw bad("grid images must be ≥ 1") }
    guard optimisationSteps >= 1 else { throw bad("optimisation steps must be ≥ 1, found \(optimisationSteps)") }
    guard optimisationLearningRate > 0, optimisationLearningRate.isFinite else {
      throw bad("the optimisation learning rate must be > 0, found \(optimisationLearningRate)")
    }
    guard tvWeight >= 0, tvWeight.isFinite else { throw bad("the total-variation weight must be ≥ 0, found \(tvWeight)") }
    guard tvBeta >= 1, tvBeta <= 2 else { throw bad("the total-variation exponent β must be in [1, 2], found \(tvBeta)") }
    guard restarts >= 1, restarts <= 16 else { throw bad("restarts must be in 1…16, found \(restarts)") }
    guard optimisationCropsPerPhoto >= 1 else { throw bad("the optimisation's crops per photo must be ≥ 1, found \(optimisationCropsPerPhoto)") }
    guard optimisationBatch >= 1 else { throw bad("the optimisation batch must be ≥ 1, found \(optimisationBatch)") }
    try defence?.validate()
    guard calibrationImages >= 0, !tvWeights.isEmpty, tvWeights.allSatisfy({ $0 >= 0 && $0.isFinite }) else {
      throw bad("calibration needs ≥ 0 images and a non-empty list of weights ≥ 0, found \(calibrationImages), \(tvWeights)")
    }
  }
}

/// Mean, standard deviation and each held-out image's score (the display form of a measure;
/// the bound a verdict uses is `LeakageEstimate`'s, clustered by photo).
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
}

/// One point of a learning (or optimisation) curve.
public struct CurvePoint: Codable, Sendable, Equatable {
  /// The epoch (learning-based attackers, the substitute head) or the step (optimisation).
  public var at: Int
  /// The training loss (mean over the epoch), or the optimisation's objective.
  public var loss: Double
  /// The validation loss (L1 on the validation photos) where there is one.
  public var validation: Double?

  public init(at: Int, loss: Double, validation: Double? = nil) {
    self.at = at
    self.loss = loss
    self.validation = validation
  }
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
  /// A measure that cannot be computed (its reference model or transform is missing).
  case measure(name: String, detail: String)

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
      return "the \(loss) loss is not finite at step \(step)\(epoch > 0 ? " (epoch \(epoch))" : ""); the attack stopped. \(advice)"
    case .resume(let file, let detail): return "\(file): \(detail)"
    case .measure(let name, let detail): return "measure '\(name)': \(detail)"
    }
  }
}

/// Progress events of a long attack or sweep, for a bar on stderr or a log.
public enum AttackProgress: Sendable {
  case features(done: Int, total: Int, cached: Bool)
  case step(epoch: Int, epochs: Int, step: Int, steps: Int, generatorLoss: Double, discriminatorLoss: Double?, etaSeconds: Double)
  case epochDone(epoch: Int, epochs: Int, generatorLoss: Double, discriminatorLoss: Double?, seconds: Double)
  /// A step of the optimisation attack (restart `restart` of `restarts`, images `batch`).
  case optimisation(step: Int, steps: Int, restart: Int, restarts: Int, loss: Double, etaSeconds: Double)
  case message(String)
}
