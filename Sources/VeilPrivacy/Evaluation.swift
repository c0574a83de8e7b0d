import Foundation
import VeilFormats
import VeilData
import VeilGraph

// The verdict at a cut, as `veil privacy` and `veil plan` both reach it: every attacker of the
// threat model, under every seed the budget asks for, scored with every measure; per measure
// the worst attacker's clustered bound against the measure's threshold; the cut private only
// when every measure with a threshold is. A verdict is the whole tuple (cut, threat model,
// attackers, data, measures, thresholds, seeds), never a bare "private".

/// How much evidence an evaluation gathers: which attackers, how many seeds, how long they
/// train. `standard` is the default, the one a verdict is held to; `quick` is a first pass
/// that says so.
public enum PrivacyBudget: String, Codable, Sendable, CaseIterable {
  case quick
  case standard
  case thorough

  /// The attackers run, in order (a leak shown beyond doubt stops the rest): a quick pass
  /// leaves out the c-GAN, the costliest to train and the one that decided no verdict.
  public func attackers(_ threatModel: ThreatModel) -> [AttackerKind] {
    switch self {
    case .quick: threatModel.attackers.filter { $0 != .cgan }
    case .standard, .thorough: threatModel.attackers
    }
  }

  /// Seeds (and photo splits) per attacker.
  public var seedCount: Int {
    switch self {
    case .quick: 1
    case .standard: 2
    case .thorough: 3
    }
  }

  /// The attack settings: the most epochs (the stopping rule usually ends sooner), crops per
  /// training photo, optimisation steps and restarts. The steps are set for VGG-16's deeper
  /// cuts, where the optimisation converges slowest: at `block4_conv2` (9 photos, 64 px) 100
  /// steps rebuilt SSIM 0.22 and 400 steps 0.37; at `block3_pool` 100 steps already reach 0.53.
  public func config(imageSize: Int) -> AttackConfig {
    var c = AttackConfig()
    c.imageSize = imageSize
    switch self {
    case .quick:
      c.epochs = 6
      c.patience = 2
      c.trainCropsPerPhoto = 24
      c.optimisationSteps = 200
      c.tvWeights = [0.3, 3, 30]
      // Every held-out crop: with one crop per photo (9 images) the binary measures' bounds
      // stay above 0.2 even at 0 of 9 recognised, so no cut could ever be chosen.
      c.optimisationCropsPerPhoto = c.testCropsPerPhoto
    case .standard:
      c.epochs = 12
      c.patience = 3
      c.trainCropsPerPhoto = 40
      c.optimisationSteps = 400
      c.optimisationCropsPerPhoto = c.testCropsPerPhoto
    case .thorough:
      c.epochs = 20
      c.patience = 4
      c.trainCropsPerPhoto = 40
      c.optimisationSteps = 800
      c.restarts = 2
      c.optimisationCropsPerPhoto = c.testCropsPerPhoto
    }
    return c
  }
}

/// The measures' thresholds: a cut is private only when the bound of every measure listed here
/// is under its threshold. Measures not listed (PSNR by default) are reported only.
public struct LeakageThresholds: Codable, Sendable, Equatable {
  public var values: [String: Double]

  public init(_ values: [String: Double]) { self.values = values }

  /// SSIM 0.3 (the paper's measure; at 64 px, SSIM under 0.3 left shapes unrecognisable in
  /// c-GAN reconstructions), recognition 0.2 and re-identification 0.2 (shares of images; a
  /// guess without the feature map recognises nothing, as recognition discounts what the mean
  /// image and the image's own colour give, and re-identifies one over the held-out images),
  /// fields 0.3 (share of a record's informative fields).
  public static let defaults = LeakageThresholds([
    SSIMMeasure.name: 0.3, RecognitionMeasure.name: 0.2, ReidentificationMeasure.name: 0.2, FieldRecoveryMeasure.name: 0.3,
  ])

  public subscript(_ measure: String) -> Double? { values[measure] }
}

/// Everything an evaluation is run under (recorded with every verdict).
public struct EvaluationSettings: Codable, Sendable, Equatable {
  public var threatModel: ThreatModel
  public var budget: PrivacyBudget
  public var attackers: [AttackerKind]
  public var seeds: [UInt64]
  /// The attack options (the attacker and seed are set per attack).
  public var config: AttackConfig
  public var thresholds: LeakageThresholds
  /// Measures reported without their threshold, each with the reason (nil: none).
  public var reportedOnly: [String: String]?
  /// The network that judges each measure that needs one (recognition, re-identification), by
  /// measure name (nil: none, or settings written before Veil recorded them).
  public var references: [String: String]?

  public init(
    threatModel: ThreatModel = .whiteBox, budget: PrivacyBudget = .standard, imageSize: Int = 64, seed: UInt64 = 0,
    thresholds: LeakageThresholds = .defaults
  ) {
    self.threatModel = threatModel
    self.budget = budget
    attackers = budget.attackers(threatModel)
    seeds = (0..<UInt64(budget.seedCount)).map { seed &+ $0 }
    config = budget.config(imageSize: imageSize)
    self.thresholds = thresholds
  }

  /// Reports `reasons`' measures without deciding on them (their thresholds removed).
  public mutating func reportOnly(_ reasons: [String: String]) {
    guard !reasons.isEmpty else { return }
    for (measure, why) in reasons {
      thresholds.values[measure] = nil
      reportedOnly = (reportedOnly ?? [:]).merging([measure: why]) { _, new in new }
    }
  }

  /// The settings are weaker than the standard budget's in these ways (empty: not weaker).
  public var weakerThanDefault: [String] {
    let standard = EvaluationSettings(threatModel: threatModel, budget: .standard, imageSize: config.imageSize)
    var out: [String] = []
    let missing = standard.attackers.filter { !attackers.contains($0) }
    if !missing.isEmpty { out.append("not run: the \(missing.map(\.title).joined(separator: ", ")) attacker\(missing.count > 1 ? "s" : "")") }
    if seeds.count < standard.seeds.count { out.append("\(seeds.count) seed\(seeds.count == 1 ? "" : "s") per attacker (standard: \(standard.seeds.count))") }
    if config.epochs < standard.config.epochs { out.append("at most \(config.epochs) training epochs (standard: \(standard.config.epochs))") }
    if config.trainCropsPerPhoto < standard.config.trainCropsPerPhoto {
      out.append("\(config.trainCropsPerPhoto) crops per training photo (standard: \(standard.config.trainCropsPerPhoto))")
    }
    if attackers.contains(where: \.optimisesPixels), config.optimisationSteps < standard.config.optimisationSteps {
      out.append("\(config.optimisationSteps) optimisation steps (standard: \(standard.config.optimisationSteps))")
    }
    for (measure, why) in (reportedOnly ?? [:]).sorted(by: { $0.key < $1.key }) {
      out.append("\(measure) reported without its threshold: \(why)")
    }
    return out
  }
}

/// One attack behind a verdict.
public struct AttackRecord: Codable, Sendable, Equatable {
  public var attacker: AttackerKind
  public var seed: UInt64
  /// The attack's folder and grid, relative to the evaluation's folder.
  public var folder: String
  public var grid: String
  public var imageSize: Int
  public var heldOut: Int
  public var heldOutPhotos: Int
  public var trainImages: Int
  public var seconds: Double
  public var converged: Bool
  public var curve: [CurvePoint]
  public var notes: [String]
  public var measures: [MeasureScores]

  public init(
    attacker: AttackerKind, seed: UInt64, folder: String, grid: String, imageSize: Int, heldOut: Int, heldOutPhotos: Int,
    trainImages: Int, seconds: Double, converged: Bool, curve: [CurvePoint], notes: [String], measures: [MeasureScores]
  ) {
    self.attacker = attacker
    self.seed = seed
    self.folder = folder
    self.grid = grid
    self.imageSize = imageSize
    self.heldOut = heldOut
    self.heldOutPhotos = heldOutPhotos
    self.trainImages = trainImages
    self.seconds = seconds
    self.converged = converged
    self.curve = curve
    self.notes = notes
    self.measures = measures
  }

  public func measure(_ name: String) -> MeasureScores? { measures.first { $0.name == name } }
}

/// One measure's verdict at a cut: each attacker's estimate over its seeds, and the worst.
public struct MeasureVerdict: Codable, Sendable, Equatable {
  public var measure: String
  /// nil: reported only.
  public var threshold: Double?
  public var estimates: [String: LeakageEstimate]
  /// The attacker whose bound is highest (it decides), and its estimate.
  public var worstAttacker: AttackerKind
  public var estimate: LeakageEstimate
  /// The trivial attacker's mean score under that attacker's seeds.
  public var baseline: Double
  /// The colour guess's (a flat image of each original's mean colour) under that attacker's
  /// seeds; nil: scores written before Veil computed it.
  public var colourGuess: Double?
  public var status: LeakageStatus?
  /// The threshold as set, when the colour guess already reached it and `threshold` was raised
  /// to the guess's score (nil: not raised). Such a measure can show a leak (its lower bound
  /// reaches the guess) and nothing else: its status is then nil.
  public var thresholdAsSet: Double?

  /// The threshold a measure is judged against: the one set, or the colour guess's score when
  /// the guess reaches it (then with the threshold as set).
  public static func limit(_ threshold: Double?, colourGuess: Double?) -> (threshold: Double?, asSet: Double?) {
    guard let t = threshold, let g = colourGuess, g.isFinite, g >= t else { return (threshold, nil) }
    return (g, t)
  }
}

/// The verdict at one cut.
public struct CutVerdict: Codable, Sendable, Equatable {
  public var cut: String
  /// The cut's position among the model's cuts (0 = shallowest), where the caller knows it.
  public var cutIndex: Int
  /// [C, h, w] at the attack's image size.
  public var featureShape: [Int]
  public var settings: EvaluationSettings
  public var attacks: [AttackRecord]
  public var measures: [MeasureVerdict]
  /// Private only when every thresholded measure is; leaks when any measure leaks beyond
  /// doubt; otherwise undecided (within noise).
  public var status: LeakageStatus
  /// A leak was shown beyond doubt before every attacker had run, or before the optimisation
  /// had rebuilt every held-out image; the rest were skipped.
  public var stoppedEarly: Bool
  /// What the attack data was.
  public var data: String

  /// The verdict of `attacks` at a cut: each measure's worst attacker against its threshold.
  public init(
    cut: String, cutIndex: Int, featureShape: [Int], settings: EvaluationSettings, attacks: [AttackRecord], stoppedEarly: Bool = false,
    data: String
  ) {
    self.cut = cut
    self.cutIndex = cutIndex
    self.featureShape = featureShape
    self.settings = settings
    self.attacks = attacks
    measures = Self.judge(attacks, thresholds: settings.thresholds)
    status = Self.status(measures)
    self.stoppedEarly = stoppedEarly
    self.data = data
  }

  public var isPrivate: Bool { status == .private }

  public func measure(_ name: String) -> MeasureVerdict? { measures.first { $0.measure == name } }

  /// The one-sentence form: under which threat model, attackers, data and measures it holds.
  public var statement: String {
    let attackers = Array(Set(attacks.map(\.attacker))).sorted { $0.rawValue < $1.rawValue }.map(\.title)
    let seeds = Set(attacks.map(\.seed)).count
    let images = attacks.first.map { first in
      let crops = attacks.map(\.heldOut).max() ?? first.heldOut
      return "\(first.heldOutPhotos) held-out photos per seed (\(crops) images) at \(first.imageSize) px"
    } ?? "no images"
    let measured = measures.map { m -> String in
      var t = m.threshold.map { String(format: " %@ %.2f", m.status == .private ? "<" : "≥", $0) } ?? ""
      if let set = m.thresholdAsSet, let guess = m.threshold {
        t = m.status == .leaks
          ? String(format: " ≥ %.2f (the colour guess's score, over the threshold %.2f)", guess, set)
          : String(format: " (decides nothing here: the colour guess scores %.2f, over the threshold %.2f)", guess, set)
      }
      return String(format: "%@ %.3f (bound %.3f, %@)%@", m.measure, m.estimate.mean, m.estimate.upper, m.worstAttacker.rawValue, t)
    }
    let verdict: String
    switch status {
    case .private: verdict = "private"
    case .leaks: verdict = "leaks"
    case .undecided: verdict = "undecided (within noise: another run may decide either way; counted as not private)"
    }
    return "\(cut): \(verdict) under the \(settings.threatModel.rawValue) threat model against \(attackers.joined(separator: ", ")) (\(seeds) seed\(seeds == 1 ? "" : "s")\(stoppedEarly ? ", stopped once a leak was certain" : "")), \(images) from \(data); \(measured.joined(separator: "; "))"
  }

  /// Verdicts of the measures over `attacks`.
  static func judge(_ attacks: [AttackRecord], thresholds: LeakageThresholds) -> [MeasureVerdict] {
    var names: [String] = []
    for a in attacks { for m in a.measures where !names.contains(m.name) { names.append(m.name) } }
    return names.compactMap { name in
      var estimates: [String: LeakageEstimate] = [:]
      var baselines: [String: Double] = [:]
      var guesses: [String: Double] = [:]
      var binary = false
      for kind in AttackerKind.allCases {
        let scores = attacks.filter { $0.attacker == kind }.compactMap { $0.measure(name) }
        guard !scores.isEmpty else { continue }
        binary = scores[0].binary
        estimates[kind.rawValue] = LeakageEstimate(scores.flatMap(\.samples), binary: binary)
        baselines[kind.rawValue] = scores.map(\.baseline).reduce(0, +) / Double(scores.count)
        let colour = scores.compactMap(\.colourGuess)
        if colour.count == scores.count { guesses[kind.rawValue] = colour.reduce(0, +) / Double(colour.count) }
      }
      guard let worst = estimates.max(by: { a, b in (a.value.upper, a.value.mean) < (b.value.upper, b.value.mean) }),
        let kind = AttackerKind(rawValue: worst.key)
      else { return nil }
      // No cut hides a photo's colour, so a threshold that the colour guess already reaches
      // would call every cut leaking, the whole model in the enclave included (SSIM at 224 px:
      // a flat image of each photo's colour scores 0.33-0.39 on the registry photos, over
      // 0.3). There the measure is held to the guess: an attacker that comes closer than the
      // colour alone beyond doubt leaks; anything else decides nothing, because an image
      // that repeats the colour with faint structure scores about the guess too (Lite0's
      // `head` at 224 px: 0.336, bound 0.386, against 0.386), so the other measures decide.
      let (threshold, asSet) = MeasureVerdict.limit(thresholds[name], colourGuess: guesses[worst.key])
      var status = threshold.map { LeakageStatus(worst.value, threshold: $0) }
      if asSet != nil, status != .leaks { status = nil }
      return MeasureVerdict(
        measure: name, threshold: threshold, estimates: estimates, worstAttacker: kind, estimate: worst.value,
        baseline: baselines[worst.key] ?? .nan, colourGuess: guesses[worst.key], status: status, thresholdAsSet: asSet)
    }
  }

  static func status(_ measures: [MeasureVerdict]) -> LeakageStatus {
    let statuses = measures.compactMap(\.status)
    if statuses.contains(.leaks) { return .leaks }
    if statuses.isEmpty || statuses.contains(.undecided) { return .undecided }
    return .private
  }
}

/// The choice both `veil privacy` and `veil plan` make from verdicts in cut order: the earliest
/// cut from which every evaluated cut, it and all deeper ones, is private. A deeper cut that
/// is not private means the curve is not monotone there, and nothing shallower is chosen: the
/// feature map of a shallow cut determines the deeper ones, so it cannot be safer than they are.
public enum PrivacyChoice {
  /// `verdicts`: (cut position, private?) of the evaluated cuts, any order.
  public static func earliest(_ verdicts: [(index: Int, isPrivate: Bool)]) -> Int? {
    var chosen: Int?
    for v in verdicts.sorted(by: { $0.index > $1.index }) {
      guard v.isPrivate else { break }
      chosen = v.index
    }
    return chosen
  }

  /// Cuts shallower than the chosen one whose verdict is undecided: another run of the same
  /// plan may choose them (within noise).
  public static func tied(_ verdicts: [CutVerdict], chosen: Int?) -> [String] {
    guard let chosen else { return verdicts.filter { $0.status == .undecided }.sorted { $0.cutIndex < $1.cutIndex }.map(\.cut) }
    return verdicts.filter { $0.cutIndex < chosen && $0.status == .undecided }.sorted { $0.cutIndex < $1.cutIndex }.map(\.cut)
  }
}

/// Evaluates cuts of one model on one photo collection: the attackers of the settings under
/// every seed, each attack in its own folder (`<cut>/<attacker>-seed<k>`), resumable: an
/// attack whose `result.json` holds the same options and measures is not run again.
public struct PrivacyEvaluation {
  public var model: Graph
  public var modelName: String
  public var preprocessing: InputPreprocessing
  /// The photos: held out (and, without `training`, also learned from).
  public var files: [URL]
  /// The attackers' own photos, when they are not to be split off `files`.
  public var training: [URL]?
  public var source: String
  public var settings: EvaluationSettings
  public var measures: MeasureSet
  public var outDir: URL
  public var cacheDirectory: URL?

  public init(
    model: Graph, modelName: String, preprocessing: InputPreprocessing, files: [URL], training: [URL]? = nil, source: String,
    settings: EvaluationSettings, measures: MeasureSet, outDir: URL, cacheDirectory: URL? = FeatureExtractor.defaultCacheDirectory
  ) {
    self.model = model
    self.modelName = modelName
    self.preprocessing = preprocessing
    self.files = files
    self.training = training
    self.source = source
    self.settings = settings
    self.settings.reportOnly(measures.dependent(on: model))
    let references = measures.references
    self.settings.references = references.isEmpty ? nil : references
    self.measures = measures
    self.outDir = outDir
    self.cacheDirectory = cacheDirectory
  }

  /// A photo folder (any depth) as `veil attack --data` reads it.
  public static func photoFiles(_ folder: URL) throws -> [URL] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isDir), isDir.boolValue else {
      throw PrivacyError.data(source: folder.path, detail: "no such folder")
    }
    do { return try DataSet.imageFiles(under: folder) } catch { throw PrivacyError.data(source: folder.path, detail: "\(error)") }
  }

  /// The attack images of one attacker and seed.
  public func images(_ config: AttackConfig) throws -> AttackImages {
    try AttackImages.photos(files, config: config, source: source, training: training)
  }

  /// Why the attackers cannot run at `cut` (nil when they can): a map that is not spatial, or
  /// one the learning-based attackers' generator cannot rebuild from.
  public func unattackable(_ cut: CutPoint) -> String? {
    do {
      let fx = try FeatureExtractor(model: model, cut: cut, imageSize: settings.config.imageSize, batch: 1, preprocessing: preprocessing)
      if settings.attackers.contains(where: \.needsTrainingData) {
        try InversionGenerator.check(featureShape: fx.featureShape, imageSize: settings.config.imageSize)
      }
      return nil
    } catch let e as PrivacyError {
      if case .cut(_, let detail) = e { return detail }
      if case .invalidConfig(let detail) = e { return detail }
      return "\(e)"
    } catch { return "\(error)" }
  }

  /// Runs the settings' attackers at `cut` and judges it. Attackers run in the settings'
  /// order, each under every seed; once a measure leaks beyond doubt (its lower bound reaches
  /// the threshold) the cut leaks whatever the others find, and they are skipped.
  public func evaluate(
    cut: CutPoint, index: Int, progress: (AttackerKind, UInt64, AttackProgress) -> Void = { _, _, _ in }
  ) throws -> CutVerdict {
    let folder = outDir.appendingPathComponent(Self.fileName(cut.name))
    var attacks: [AttackRecord] = []
    var featureShape: [Int] = []
    var stoppedEarly = false
    attackers: for (a, kind) in settings.attackers.enumerated() {
      for seed in settings.seeds {
        var config = settings.config
        config.attacker = kind
        config.seed = seed
        let dir = folder.appendingPathComponent(Self.attackFolder(kind, seed: seed))
        let relative = "\(Self.fileName(cut.name))/\(Self.attackFolder(kind, seed: seed))"
        func record(_ result: AttackResult) -> AttackRecord {
          AttackRecord(
            attacker: kind, seed: seed, folder: relative, grid: "\(relative)/grid.png", imageSize: config.imageSize,
            heldOut: result.heldOutCount, heldOutPhotos: result.heldOutPhotos, trainImages: result.trainCount,
            seconds: result.seconds, converged: result.converged, curve: result.curve, notes: result.notes,
            measures: result.measures.filter { measures.names.contains($0.name) })
        }
        let result: AttackResult
        if let done = try? VeilJSON.decoder().decode(AttackResult.self, from: Data(contentsOf: dir.appendingPathComponent("result.json"))),
          done.config.relevant == config.relevant, done.cut == cut.name, measures.isCovered(by: done.measures),
          // An attack that stopped on a leak holds part of the held-out images: it stands for
          // this one only while it still leaks under these thresholds.
          done.stoppedEarly != true || CutVerdict.judge([record(done)], thresholds: settings.thresholds).contains { $0.status == .leaks }
        {
          progress(kind, seed, .message("done before: \(dir.path)"))
          result = done
        } else {
          let data = try images(config)
          // The hybrids refine the inverse network (through a substitute head, black-box): the
          // networks trained here already under this seed are reused.
          let trained = Dictionary(uniqueKeysWithValues: [AttackerKind.inverse, .substitute].map {
            ($0, folder.appendingPathComponent(Self.attackFolder($0, seed: seed)))
          })
          result = try runAttack(
            model: model, modelName: modelName, cut: cut, data: data, preprocessing: preprocessing, config: config, outDir: dir,
            cacheDirectory: cacheDirectory, measures: measures, trainedFolders: trained, stopOnLeak: settings.thresholds
          ) { progress(kind, seed, $0) }
        }
        featureShape = result.featureShape
        attacks.append(record(result))
        let verdicts = CutVerdict.judge(attacks, thresholds: settings.thresholds)
        if verdicts.contains(where: { $0.status == .leaks }) {
          let moreSeeds = seed != settings.seeds.last
          stoppedEarly = moreSeeds || a < settings.attackers.count - 1 || result.stoppedEarly == true
          if stoppedEarly { progress(kind, seed, .message("a measure leaks beyond doubt at \(cut.name): the remaining attacks are skipped")) }
          break attackers
        }
      }
    }
    return CutVerdict(
      cut: cut.name, cutIndex: index, featureShape: featureShape, settings: settings, attacks: attacks, stoppedEarly: stoppedEarly,
      data: source)
  }

  /// The folder of one attack within its cut's.
  static func attackFolder(_ kind: AttackerKind, seed: UInt64) -> String { "\(kind.rawValue)-seed\(seed)" }

  /// A cut name as a file name: anything but letters, digits, '.', '-' and '_' becomes '_'.
  public static func fileName(_ s: String) -> String {
    String(s.map { $0.isLetter || $0.isNumber || "._-".contains($0) ? $0 : "_" })
  }
}
