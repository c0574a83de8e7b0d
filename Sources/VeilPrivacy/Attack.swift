import Foundation
import VeilData
import VeilGraph
import VeilTensor
import VeilTrain

// One interface for every inversion attacker: the head (which a white-box attacker may
// differentiate and any attacker may query), its own photos' (feature map, image) pairs where it
// learns, the observed feature maps of the held-out images; out come the rebuilt images, which
// the measures score against the originals.

/// Images [N, 3, S, S] in [-1, 1] and their feature maps [N, C, h, w] at the cut.
public struct FeaturePairs {
  public var images: Tensor
  public var features: Tensor
  public init(images: Tensor, features: Tensor) {
    self.images = images
    self.features = features
  }
}

/// What an attacker is given.
public struct AttackInputs {
  /// The head up to the cut: queried for features, differentiated by the white-box attacker.
  public let extractor: FeatureExtractor
  public let config: AttackConfig
  /// The attacker's own photos (nil for the optimisation attacker, which needs none).
  public let train: FeaturePairs?
  /// Photos kept apart for the stopping rule.
  public let validation: FeaturePairs?
  /// The held-out images' observed feature maps (the images are withheld from the attacker).
  public let test: FeaturePairs
  public let outDir: URL
  let identity: AttackIdentity
  /// The defence on the maps (fitted), which the white-box attacker differentiates through.
  var defence: CutDefence?
  /// Finished attacks with the same data and options (the inverse network's, the substitute
  /// head's), whose trained networks a hybrid attacker reuses instead of training its own.
  var trainedFolders: [AttackerKind: URL] = [:]
  /// Given the reconstructions of the first held-out images (in order), why a measure already
  /// leaks beyond doubt on them (nil: not yet). The optimisation, whose cost grows with every
  /// image, stops there.
  var leakCheck: ((Tensor) throws -> String?)?
}

/// What an attacker produced.
public struct AttackOutput {
  /// One image per held-out feature map, [N, 3, S, S] in [-1, 1].
  public var reconstructions: Tensor
  /// Its learning (or optimisation) curve.
  public var curve: [CurvePoint]
  /// Whether training met its stopping rule (always true for the optimisation, which runs its
  /// steps).
  public var converged: Bool
  public var bestEpoch: Int?
  public var epochsRun: Int
  public var resumedFrom: Int
  public var trainSeconds: Double
  /// Images (or image-steps of the optimisation) processed while training.
  public var trainedImages: Int
  public var finalLoss: Double
  public var discriminatorLoss: Double?
  /// Weights files written.
  public var weights: [String]
  /// What a reader of the result should know (not converged, …).
  public var notes: [String]
}

/// An inversion attacker.
protocol InversionAttacker {
  func run(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws -> AttackOutput
}

extension AttackerKind {
  var implementation: InversionAttacker {
    switch self {
    case .cgan, .inverse: LearnedAttacker()
    case .optimisation: OptimisationAttacker()
    case .substitute: SubstituteAttacker()
    case .hybrid, .substituteHybrid: HybridAttacker()
    }
  }
}

extension AttackInputs {
  /// The head as the white-box attacker differentiates it, for `batch` images at once, with
  /// the defence on the tape when there is one (the attacker knows it: `CutDefence.onTape`).
  func whiteBoxHead(batch: Int) throws -> (Variable) throws -> Variable {
    let model = try extractor.differentiableHead(batch: batch)
    return { [extractor, defence] x in
      let features = try model(x)
      return try defence.map { try extractor.onTape($0, features) } ?? features
    }
  }

  /// The same inputs for another attacker: the hybrid's inverse network is trained as the
  /// inverse attacker trains it, so that its checkpoints are that attacker's.
  func `as`(_ attacker: AttackerKind) -> AttackInputs {
    var config = config
    config.attacker = attacker
    var identity = identity
    identity.config.attacker = attacker
    return AttackInputs(
      extractor: extractor, config: config, train: train, validation: validation, test: test, outDir: outDir,
      identity: identity, defence: defence)
  }
}

/// The white-box attacker: the optimisation through the real head, its prior's weight
/// calibrated on the attacker's own photos.
struct OptimisationAttacker: InversionAttacker {
  func run(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws -> AttackOutput {
    let config = inputs.config
    let n = inputs.test.features.shape[0]
    let head = try inputs.whiteBoxHead(batch: min(config.optimisationBatch, max(n, inputs.train?.features.shape[0] ?? 0)))
    let started = Date()
    var inversion = FeatureInversion(config)
    var notes: [String] = []
    if let own = inputs.train {
      let (weight, report) = try inversion.calibrate(head: head, on: own, weights: config.tvWeights, progress: progress)
      inversion.tvWeight = weight ?? inversion.tvWeight
      notes.append(report)
    } else {
      notes.append("prior weight \(config.tvWeight) as given (no photos of the attacker's own to calibrate it on)")
    }
    var stopped: String?
    let outcome = try inversion.run(
      head: head, targets: inputs.test.features, imageShape: [3, config.imageSize, config.imageSize], progress: progress,
      stop: inputs.leakCheck.map { check in
        { rebuilt in
          stopped = try check(rebuilt)
          return stopped != nil
        }
      })
    let rebuilt = outcome.images.shape[0]
    if let stopped {
      notes.append("stopped after \(rebuilt) of \(n) held-out images: \(stopped)")
      progress(.message("\(stopped) after \(rebuilt) of \(n) held-out images: the rest are not rebuilt"))
    }
    notes.append(Self.distanceNote(outcome.distances))
    return AttackOutput(
      reconstructions: outcome.images, curve: outcome.curve, converged: true, bestEpoch: nil, epochsRun: 0, resumedFrom: 0,
      trainSeconds: Date().timeIntervalSince(started), trainedImages: rebuilt * config.restarts * config.optimisationSteps,
      finalLoss: outcome.curve.last?.loss ?? .nan, discriminatorLoss: nil, weights: [], notes: notes)
  }

  static func distanceNote(_ distances: [Double]) -> String {
    String(format: "median normalised feature distance of the rebuilt images: %.4f", distances.median)
  }
}

/// The white-box attacker that starts where the inverse network stops: the inverse network's
/// reconstructions are the optimisation's first restart, refined through the real head under
/// the prior (a learned inversion as the starting point of an optimisation, as encoder-then-
/// optimise GAN inversion does: Zhu et al., ECCV 2020). Deep in a network the optimisation
/// from grey stops at an image whose features match only loosely and which shows little,
/// while the inverse network's image is recognisable but blurred; the hybrid starts from the
/// second and moves it towards the features the victim's image really had.
///
/// The prior's weight is calibrated as the optimisation attacker calibrates it, on photos of
/// the attacker's own that the network did not train on (its validation split), with the
/// unrefined reconstructions competing: when no weight improves on them, the hybrid keeps the
/// inverse network's images, so on the attacker's own photos it does no worse than the
/// inverse network.
struct HybridAttacker: InversionAttacker {
  func run(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws -> AttackOutput {
    let config = inputs.config
    let started = Date()
    let learner = inputs.as(.inverse)
    try Self.adopt(
      [AttackTrainer.generatorName, AttackTrainer.bestName], what: "inverse network", from: inputs.trainedFolders[.inverse],
      into: inputs.outDir, identity: learner.identity, progress: progress)
    let (trainer, learned) = try LearnedAttacker().train(learner, progress: progress)
    var notes = learned.notes
    let n = inputs.test.features.shape[0]
    var own = inputs.validation.map { Self.spread($0, count: config.calibrationImages) } ?? nil
    let unrefinedStarts = try own.map { try trainer.reconstruct($0.features) }
    // What the images are refined through: the real head (white-box), or a substitute head
    // trained from queries (black-box), whose targets are the maps standardised as it
    // predicts them.
    let head: (Variable) throws -> Variable
    var targets = inputs.test.features
    if config.attacker == .substituteHybrid {
      let querier = inputs.as(.substitute)
      let (last, best) = TrainedSubstitute.files(in: inputs.outDir)
      try Self.adopt(
        [last.lastPathComponent, best.lastPathComponent], what: "substitute head", from: inputs.trainedFolders[.substitute],
        into: inputs.outDir, identity: querier.identity, progress: progress)
      let substitute = try TrainedSubstitute(querier, progress: progress)
      head = { try substitute.head($0) }
      targets = substitute.standardiser.apply(targets)
      if let pairs = own { own = FeaturePairs(images: pairs.images, features: substitute.standardiser.apply(pairs.features)) }
      notes += substitute.notes
    } else {
      head = try inputs.whiteBoxHead(batch: min(config.optimisationBatch, max(n, own?.features.shape[0] ?? 0)))
    }
    var inversion = FeatureInversion(config)
    if let own, let unrefinedStarts {
      let (weight, report) = try inversion.calibrate(
        head: head, on: own, weights: config.tvWeights, starts: unrefinedStarts, progress: progress)
      notes.append(report)
      guard let weight else {
        var output = learned
        output.notes = notes
        output.trainSeconds = Date().timeIntervalSince(started)
        return output
      }
      inversion.tvWeight = weight
    } else {
      notes.append("prior weight \(config.tvWeight) as given (no validation photos of the attacker's own to calibrate it on)")
    }
    let outcome = try inversion.run(
      head: head, targets: targets, imageShape: [3, config.imageSize, config.imageSize], starts: learned.reconstructions,
      progress: progress)
    notes.append(OptimisationAttacker.distanceNote(outcome.distances))
    var output = learned
    output.reconstructions = outcome.images
    output.notes = notes
    output.trainSeconds = Date().timeIntervalSince(started)
    output.trainedImages += n * config.restarts * config.optimisationSteps
    return output
  }

  /// At most `count` pairs spread over `pairs` (nil when there are none).
  static func spread(_ pairs: FeaturePairs, count: Int) -> FeaturePairs? {
    let total = pairs.features.shape[0]
    guard count > 0, total > 0 else { return nil }
    let rows = Array(stride(from: 0, to: total, by: max(1, total / count)).prefix(count))
    return FeaturePairs(images: gather(pairs.images, rows), features: gather(pairs.features, rows))
  }

  /// Copies a finished attack's trained network (the files `names`, its last checkpoint first)
  /// from `folder` into `dir` when `dir` has none and the checkpoint was saved for an attack
  /// `identity` may resume: the training then goes on after that attack's last epoch instead
  /// of repeating it. A checkpoint of other settings is left where it is, and said so.
  static func adopt(
    _ names: [String], what: String, from folder: URL?, into dir: URL, identity: AttackIdentity,
    progress: (AttackProgress) -> Void
  ) throws {
    guard let folder else { return }
    let fm = FileManager.default
    let checkpoint = folder.appendingPathComponent(names[0])
    guard !fm.fileExists(atPath: dir.appendingPathComponent(names[0]).path), fm.fileExists(atPath: checkpoint.path) else { return }
    guard AttackIdentity.stored(in: checkpoint)?.compatible(with: identity) == true else {
      progress(.message("the \(what) of \(folder.path) was trained with other settings: training another"))
      return
    }
    try fm.createDirectory(at: dir, withIntermediateDirectories: true)
    for name in names where fm.fileExists(atPath: folder.appendingPathComponent(name).path) {
      try fm.copyItem(at: folder.appendingPathComponent(name), to: dir.appendingPathComponent(name))
    }
    progress(.message("the \(what) of \(folder.path) is reused"))
  }
}

/// Trains an inversion attacker on the feature maps of `model` at `cut` (or, for the
/// optimisation attacker, differentiates the head) and scores its reconstructions of the
/// held-out photos with every measure of `measures`: the library form of `veil attack`, and
/// what a privacy evaluation runs per attacker and seed.
///
/// Writes into `outDir`: for the learning-based attackers `checkpoint-g.safetensors` (and
/// `checkpoint-d.safetensors` for the c-GAN) after every epoch, with the Adam state and the
/// stopping rule's state, so a rerun with the same options resumes after the last finished
/// epoch, and `best-g.safetensors`, the generator of the epoch with the lowest validation
/// loss; `grid.png` (held-out originals above their reconstructions); `result.json`. Features
/// are cached in `cacheDirectory` (nil: not cached). The hybrid attackers start from the
/// networks of finished attacks in `trainedFolders` (the inverse network's, and for the
/// black-box hybrid the substitute head's; same data and options) when there are such, and
/// train their own otherwise. With `stopOnLeak`, the optimisation attacker stops once a measure
/// that scores each image alone leaks beyond doubt on the images it has rebuilt (their bound's
/// lower end reaches the threshold): the result then holds those images only, and says so.
public func runAttack(
  model: Graph, modelName: String, cut: CutPoint, data: AttackImages, preprocessing: InputPreprocessing,
  config: AttackConfig, outDir: URL, cacheDirectory: URL? = FeatureExtractor.defaultCacheDirectory,
  measures: MeasureSet = .pixels, trainedFolders: [AttackerKind: URL] = [:], stopOnLeak: LeakageThresholds? = nil,
  progress: (AttackProgress) -> Void = { _ in }
) throws -> AttackResult {
  try config.validate()
  let t0 = Date()
  // The attackers that optimise each image through the real head rebuild whole photos (their
  // cost grows with every image).
  let optimises = [.optimisation, .hybrid, .substituteHybrid].contains(config.attacker)
  let data = optimises ? data.heldOut(cropsPerPhoto: config.optimisationCropsPerPhoto) : data
  guard data.imageSize == config.imageSize else {
    throw PrivacyError.invalidConfig("the images are \(data.imageSize) px, the options say \(config.imageSize)")
  }
  let learns = config.attacker.needsTrainingData
  if learns {
    guard data.train.count >= config.batch else {
      throw PrivacyError.data(
        source: data.source,
        detail: "\(data.train.count) training crops for batch \(config.batch): too small a data set; add photos, raise the crops per photo or lower the batch")
    }
  }
  guard !data.test.isEmpty else { throw PrivacyError.data(source: data.source, detail: "no held-out images") }
  try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)

  // Features, once per image (cached across runs and attackers).
  let extractor = try FeatureExtractor(model: model, cut: cut, imageSize: config.imageSize, batch: 8, preprocessing: preprocessing)
  if learns { try InversionGenerator.check(featureShape: extractor.featureShape, imageSize: config.imageSize) }
  // The optimisation attack reads a few of its own photos to calibrate its prior (at most
  // `calibrationImages`, spread over the training photos).
  let calibration = learns || data.train.isEmpty || config.calibrationImages == 0
    ? [] : stride(from: 0, to: data.train.count, by: max(1, data.train.count / config.calibrationImages)).prefix(config.calibrationImages).map { data.train[$0] }
  let sets = learns ? [data.train, data.validation, data.test] : [calibration, [], data.test]
  let total = sets.reduce(0) { $0 + $1.count }
  var done = 0
  var allCached = true
  func pairs(_ images: [ByteImage]) throws -> FeaturePairs? {
    guard !images.isEmpty else { return nil }
    let offset = done
    let (features, cached) = try extractor.cachedFeatures(images, directory: cacheDirectory) {
      // The last image is announced once, with whether the cache answered.
      if offset + $0 < total { progress(.features(done: offset + $0, total: total, cached: false)) }
    }
    done += images.count
    allCached = allCached && cached
    return FeaturePairs(images: try stack(images.map { try $0.signedTensor() }), features: features)
  }
  var train = try pairs(sets[0])
  var validation = try pairs(sets[1])
  guard var test = try pairs(sets[2]) else { throw PrivacyError.data(source: data.source, detail: "no held-out images") }
  progress(.features(done: total, total: total, cached: allCached))
  // The defence, fitted to the held-out maps, on every map the attacker sees.
  var defence: AttackDefence?
  if let spec = config.defence {
    let d = try AttackDefence(spec, heldOut: test.features, extractor: extractor)
    train = try d.defend(train, seed: config.seed, stream: 0)
    validation = try d.defend(validation, seed: config.seed, stream: 1)
    test = try d.defend(test, seed: config.seed, stream: 2)!
    defence = d
  }

  let identity = AttackIdentity(
    model: modelName, cut: cut.name, headDigest: extractor.headDigest, featureShape: extractor.featureShape, config: config)
  // Held-out scores are against the trivial attacker's: the mean training image (mid-grey
  // without training images).
  let reference = train.map { meanImage($0.images) } ?? Tensor(zeros: [1, 3, config.imageSize, config.imageSize])
  var inputs = AttackInputs(
    extractor: extractor, config: config, train: train, validation: validation, test: test, outDir: outDir, identity: identity,
    defence: defence?.defence, trainedFolders: trainedFolders)
  if let stopOnLeak {
    let alone = MeasureSet(measures.measures.filter { $0.scoresEachImageAlone && stopOnLeak[$0.name] != nil })
    if !alone.measures.isEmpty {
      inputs.leakCheck = { rebuilt in
        let k = rebuilt.shape[0]
        let scores = try alone.score(
          originals: gather(test.images, Array(0..<k)), reconstructions: rebuilt, baseline: reference, names: Array(data.testNames.prefix(k)),
          sources: Array(data.testSources.prefix(k)), seed: config.seed)
        for s in scores {
          let estimate = LeakageEstimate(s.samples, binary: s.binary)
          guard let limit = MeasureVerdict.limit(stopOnLeak[s.name], colourGuess: s.colourGuess).threshold,
            LeakageStatus(estimate, threshold: limit) == .leaks
          else { continue }
          return String(format: "%@ leaks beyond doubt (%.3f, lower bound %.3f ≥ %.2f)", s.name, estimate.mean, estimate.lower, limit)
        }
        return nil
      }
    }
  }
  // Every attacker's step allocates the same activations and gradients: keep freed blocks for
  // reuse while it trains, and give them back when it is done.
  var output = try withBlockReuse { try config.attacker.implementation.run(inputs, progress: progress) }
  if let defence { output.notes.insert(defence.note, at: 0) }

  // An attack that stopped once a leak was certain rebuilt the first held-out images only.
  let rebuilt = output.reconstructions.shape[0]
  let stoppedEarly = rebuilt < test.images.shape[0]
  let originals = stoppedEarly ? gather(test.images, Array(0..<rebuilt)) : test.images
  let names = Array(data.testNames.prefix(rebuilt))
  let sources = Array(data.testSources.prefix(rebuilt))
  let scores = try measures.score(
    originals: originals, reconstructions: output.reconstructions, baseline: reference, names: names, sources: sources, seed: config.seed,
    gallery: stoppedEarly ? gather(test.images, Array(rebuilt..<test.images.shape[0])) : nil)
  let grid = outDir.appendingPathComponent("grid.png")
  let ssim = scores.first { $0.name == SSIMMeasure.name }?.perImage ?? []
  try writeGrid(originals: originals, rebuilt: output.reconstructions, ssim: ssim, count: config.gridImages, to: grid)

  var result = AttackResult(
    model: modelName, cut: cut.name, featureShape: extractor.featureShape, attacker: config.attacker, config: config,
    testNames: names, testSources: sources, measures: scores,
    trainCount: data.train.count, validationCount: learns ? data.validation.count : 0, heldOutCount: rebuilt,
    trainPhotos: learns ? data.trainPhotos.count : 0, heldOutPhotos: Set(sources).count,
    curve: output.curve, converged: output.converged, bestEpoch: output.bestEpoch,
    imagesPerSecond: output.trainSeconds > 0 ? Double(output.trainedImages) / output.trainSeconds : 0,
    seconds: Date().timeIntervalSince(t0), epochsRun: output.epochsRun, resumedFromEpoch: output.resumedFrom,
    finalLoss: output.finalLoss, discriminatorLoss: output.discriminatorLoss, gridPath: grid.path, weightsPaths: output.weights,
    notes: output.notes)
  if stoppedEarly { result.stoppedEarly = true }
  try writeJSON(result, to: outDir.appendingPathComponent("result.json"))
  return result
}

/// What one attack found, as `veil attack --json` prints it and an evaluation reads it.
public struct AttackResult: Codable, Sendable, Equatable {
  public var model: String
  public var cut: String
  /// The crossing tensor's shape per image at the attack's image size, [C, h, w].
  public var featureShape: [Int]
  public var attacker: AttackerKind
  public var config: AttackConfig
  /// Each held-out image's name and source photo (its cluster).
  public var testNames: [String]
  public var testSources: [String]
  /// Every measure's per-image scores, mean-image baseline and clustered estimate.
  public var measures: [MeasureScores]
  public var trainCount: Int
  public var validationCount: Int
  public var heldOutCount: Int
  public var trainPhotos: Int
  public var heldOutPhotos: Int
  /// The learning curve (epochs) or the optimisation's objective (steps).
  public var curve: [CurvePoint]
  public var converged: Bool
  public var bestEpoch: Int?
  /// Training throughput (images, or image-steps of the optimisation, per second) and wall
  /// time of the whole attack (features, training, evaluation).
  public var imagesPerSecond: Double
  public var seconds: Double
  public var epochsRun: Int
  public var resumedFromEpoch: Int
  public var finalLoss: Double
  public var discriminatorLoss: Double?
  public var gridPath: String
  public var weightsPaths: [String]
  public var notes: [String]
  /// The attack stopped once a measure leaked beyond doubt, before rebuilding every held-out
  /// image (nil: it rebuilt them all).
  public var stoppedEarly: Bool?

  /// The scores of measure `name`, if it was computed.
  public func measure(_ name: String) -> MeasureScores? { measures.first { $0.name == name } }
  /// SSIM of each held-out image (the paper's measure).
  public var ssim: ScoreSummary { ScoreSummary(measure(SSIMMeasure.name)?.perImage ?? []) }
  public var psnr: ScoreSummary { ScoreSummary(measure(PSNRMeasure.name)?.perImage ?? []) }
  /// The one-sided 95 % bound of the mean SSIM, clustered by source photo.
  public var ssimUpperBound: Double { measure(SSIMMeasure.name)?.estimate.upper ?? .infinity }
  public var baselineSSIM: Double { measure(SSIMMeasure.name)?.baseline ?? .nan }
}

// MARK: - Helpers

/// The mean of a [-1, 1] batch, [1, C, H, W]: the trivial attacker's answer.
func meanImage(_ t: Tensor) -> Tensor {
  let n = t.shape[0]
  let per = t.count / n
  var sum = [Double](repeating: 0, count: per)
  t.withUnsafeBuffer { p in
    for i in 0..<n { for k in 0..<per { sum[k] += Double(p[i * per + k]) } }
  }
  return Tensor(shape: [1] + t.shape.dropFirst()) { d in for k in 0..<per { d[k] = Float(sum[k] / Double(n)) } }
}

/// Image `i` of a [-1, 1] NCHW batch on SSIM's [0, 1] scale (clamped).
func unitImage(_ t: Tensor, _ i: Int) -> UnitImage {
  let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3])
  let per = c * h * w
  return t.withUnsafeBuffer { p in
    UnitImage(width: w, height: h, channels: c, samples: (0..<per).map { min(max((Double(p[i * per + $0]) + 1) / 2, 0), 1) })
  }
}

/// Image `i` of a [-1, 1] NCHW batch as 8-bit pixels (what a saved reconstruction holds).
func byteImage(_ t: Tensor, _ i: Int) throws -> ByteImage {
  let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3])
  let plane = w * h
  return try t.withUnsafeBuffer { p in
    let base = i * c * plane
    return try ByteImage(
      width: w, height: h, channels: c,
      pixels: (0..<(plane * c)).map { k in
        UInt8((min(max((p[base + (k % c) * plane + k / c] + 1) / 2, 0), 1) * 255).rounded())
      })
  }
}

/// Originals in the first row, reconstructions (captioned with their SSIM) in the second, for
/// `count` held-out images spread over the set.
func writeGrid(originals: Tensor, rebuilt: Tensor, ssim: [Double], count: Int, to url: URL) throws {
  let n = originals.shape[0]
  let k = min(count, n)
  let picks = (0..<k).map { $0 * n / k }
  var items: [(image: ByteImage, caption: String)] = []
  for i in picks { items.append((try byteImage(originals, i), "#\(i)")) }
  for i in picks { items.append((try byteImage(rebuilt, i), i < ssim.count ? String(format: "%.2f", ssim[i]) : "")) }
  try ImageCodec.writePNG(try ImageGrid.make(items, tile: max(originals.shape[3], 48), columns: k), to: url)
}
