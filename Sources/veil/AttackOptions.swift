import ArgumentParser
import Foundation
import VeilData
import VeilGraph
import VeilModels
import VeilPrivacy
import VeilTensor

extension AttackerKind: ExpressibleByArgument {}

extension ReconstructionLoss: ExpressibleByArgument {}

extension ThreatModel: ExpressibleByArgument {}

extension PrivacyBudget: ExpressibleByArgument {}

/// Options `veil attack`, `veil privacy` and `veil plan` share: the data, the threat model and
/// budget, and overrides of the attack options the budget sets.
struct AttackOptions: ParsableArguments {
  @Option(
    help: ArgumentHelp(
      "A folder of photos (PNG/JPEG, any depth; TON_IoT images from `veil data ton-iot` too), or 'photos': the registry-shipped photos that scripts/prepare_photos.py gathers.",
      valueName: "folder|photos"))
  var data = "photos"
  @Option(
    help: ArgumentHelp(
      "The attackers' own photos, at any size and count: they learn from every photo there and every photo of --data is held out (default: --data is split by photo).",
      valueName: "folder"))
  var attackData: String?
  @Option(help: "white-box (the attacker holds the head's weights; the default, the stronger) or black-box (queries only).")
  var threatModel: ThreatModel = .whiteBox
  @Option(help: "quick (a first pass: every attacker but the c-GAN, one seed, short training), standard (every attacker of the threat model, two seeds) or thorough (three seeds, longer).")
  var budget: PrivacyBudget = .standard
  @Option(help: "Side of the square attack images; a power of two so every cut's map divides it.")
  var imageSize: Int = 64
  @Option(help: "First seed of the splits, crops, attacker weights and shuffling (seeds seed, seed+1, … per the budget).")
  var seed: UInt64 = 0
  @Option(help: "SSIM threshold: a cut is private only when the 95 % bound of every measure is under its threshold.")
  var threshold: Double = LeakageThresholds.defaults[SSIMMeasure.name]!
  @Option(help: "Threshold on the share of reconstructions a reference ImageNet classifier recognises (top-5 holds the original's top-1, where neither the mean image nor the original's own colour already gives it).")
  var recognitionThreshold: Double = LeakageThresholds.defaults[RecognitionMeasure.name]!
  @Option(help: "Threshold on the share of reconstructions re-identified among the held-out originals.")
  var reidThreshold: Double = LeakageThresholds.defaults[ReidentificationMeasure.name]!
  @Option(help: "Threshold on the share of a record's informative fields recovered (TON_IoT images).")
  var fieldsThreshold: Double = LeakageThresholds.defaults[FieldRecoveryMeasure.name]!
  @Flag(help: "Only SSIM and PSNR (no reference classifier: recognition and re-identification are not measured, and the verdict says so).")
  var pixelMeasuresOnly = false
  @Option(help: "Most training epochs (default: the budget's; the stopping rule usually ends sooner).")
  var epochs: Int?
  @Option(help: "Stop after this many epochs without a 1 % better validation loss (0: train every epoch).")
  var patience: Int?
  @Option(help: "Random crops per training photo (default: the budget's).")
  var crops: Int?
  @Option(help: "Crops per held-out photo (the first is the whole photo).")
  var testCrops: Int?
  @Option(help: "Share of the photos held out for scoring.")
  var testFraction: Double?
  @Option(help: "Images per training step.")
  var batch: Int?
  @Option(help: "Adam's learning rate of the learning-based attackers (β1 0.5, β2 0.999).")
  var lr: Float?
  @Option(help: "Weight λ of the reconstruction loss against the adversarial loss (c-GAN).")
  var lambda: Float?
  @Option(help: "Reconstruction loss of the inverse network: l1 or mse.")
  var loss: ReconstructionLoss?
  @Option(help: "Generator width (pix2pix's ngf).")
  var width: Int?
  @Option(help: "Optimisation attack: Adam steps on the pixels (default: the budget's).")
  var steps: Int?
  @Option(help: "Optimisation attack: learning rate on the [-1, 1] pixel scale (cosine decay to a tenth).")
  var optLr: Float?
  @Option(help: "Optimisation attack: weight of the total-variation prior when it is not calibrated (--calibration-images 0).")
  var tvWeight: Float?
  @Option(help: "Optimisation attack: the prior's weight is calibrated on this many of the attacker's own photos, each weight with every step (0: --tv-weight as given).")
  var calibrationImages: Int?
  @Option(help: "Optimisation attack: restarts per image (the closest in feature space is kept).")
  var restarts: Int?
  @Option(
    help: ArgumentHelp(
      "A defence the enclave applies to the map before it leaves, known to the attackers (they learn from defended maps; the white-box optimisation differentiates through it): gaussian:σ or laplace:σ (σ in 0…100, a multiple of each channel's scale), quant:BITS (2…16, per image and channel), prune:SHARE (share of channels zeroed, [0, 1)).",
      valueName: "kind:value"))
  var defence: String?
  @Option(
    help: "How an image becomes the model's input: imagenet, caffe, tensorflow, tensorflow-lite or unit (default: a zoo architecture's own, else imagenet).")
  var preprocess: VeilData.Preprocessing.Preset?
  @Option(help: ArgumentHelp("Feature cache folder (default: <cache>/features beside the asset cache).", valueName: "dir"))
  var cache: String?
  @Flag(help: "Do not read or write the feature cache.")
  var noCache = false
  @Flag(help: "Delete what an earlier run left in --out and start over.")
  var fresh = false

  var thresholds: LeakageThresholds {
    LeakageThresholds([
      SSIMMeasure.name: threshold, RecognitionMeasure.name: recognitionThreshold, ReidentificationMeasure.name: reidThreshold,
      FieldRecoveryMeasure.name: fieldsThreshold,
    ])
  }

  /// The evaluation settings: the budget's, with every option given here applied.
  var settings: EvaluationSettings {
    var s = EvaluationSettings(threatModel: threatModel, budget: budget, imageSize: imageSize, seed: seed, thresholds: thresholds)
    apply(to: &s.config)
    return s
  }

  /// The options given on the command line, over `config`.
  func apply(to c: inout AttackConfig) {
    if let epochs { c.epochs = epochs }
    if let patience { c.patience = patience }
    if let crops { c.trainCropsPerPhoto = crops }
    if let testCrops { c.testCropsPerPhoto = testCrops }
    if let testFraction { c.testFraction = testFraction }
    if let batch { c.batch = batch }
    if let lr { c.learningRate = lr }
    if let lambda { c.lambda = lambda }
    if let loss { c.loss = loss }
    if let width { c.generatorWidth = width }
    if let steps { c.optimisationSteps = steps }
    if let optLr { c.optimisationLearningRate = optLr }
    if let tvWeight { c.tvWeight = tvWeight }
    if let calibrationImages { c.calibrationImages = calibrationImages }
    if let restarts { c.restarts = restarts }
    // Checked in validate(), which names the valid range.
    if let defence { c.defence = try? CutDefence(parsing: defence) }
  }

  var cacheDirectory: URL? {
    noCache ? nil : cache.map { URL(fileURLWithPath: $0) } ?? FeatureExtractor.defaultCacheDirectory
  }

  func validate() throws {
    for (name, t) in thresholds.values where !(t > 0 && t < 1) {
      throw ValidationError("the \(name) threshold must be in (0, 1), found \(t)")
    }
    if let defence {
      do { _ = try CutDefence(parsing: defence) } catch { throw ValidationError("--defence: \(error)") }
    }
    var c = settings.config
    c.attacker = .inverse
    if testFraction == 1 { c.attacker = .optimisation }
    do { try c.validate() } catch { throw ValidationError("\(error)") }
  }

  /// The photo folder: --data, with 'photos' meaning the registry photos.
  var dataFolder: URL {
    get throws {
      guard data == "photos" else { return URL(fileURLWithPath: data) }
      let folder = AttackImages.registryPhotosFolder
      guard FileManager.default.fileExists(atPath: folder.path) else {
        throw ValidationError(
          "--data photos: \(folder.path) is missing; gather the registry-shipped photos with `.venv/bin/python scripts/prepare_photos.py` (make assets does)")
      }
      return folder
    }
  }

  /// The measures of `graph`'s reconstructions: field recovery for TON_IoT images,
  /// recognition and re-identification with their reference networks for photos
  /// (`MeasureSet.semantic(for:)`), SSIM and PSNR always.
  func measures(_ graph: Graph) throws -> MeasureSet {
    var m = MeasureSet.pixels
    if let fields = try FieldRecoveryMeasure.forDataFolder(try dataFolder) {
      m.measures.append(fields)
    } else if !pixelMeasuresOnly {
      do { m.measures += try MeasureSet.semantic(for: graph) } catch {
        throw ValidationError("\(error)\n(or pass --pixel-measures-only to measure SSIM and PSNR alone)")
      }
    }
    return m
  }

  /// The privacy evaluation of `graph` with these options, its attacks under `out`.
  func evaluation(_ graph: Graph, name: String, preprocessing: InputPreprocessing, out: URL) throws -> PrivacyEvaluation {
    let folder = try dataFolder
    let files: [URL]
    let training: [URL]?
    do {
      files = try PrivacyEvaluation.photoFiles(folder)
      training = try attackData.map { try PrivacyEvaluation.photoFiles(URL(fileURLWithPath: $0)) }
    } catch { throw ValidationError("--data: \(error)") }
    return PrivacyEvaluation(
      model: graph, modelName: name, preprocessing: preprocessing, files: files, training: training,
      source: folder.path + (attackData.map { " (attackers trained on \($0))" } ?? ""), settings: settings, measures: try measures(graph),
      outDir: out, cacheDirectory: cacheDirectory)
  }

  func clear(_ out: URL) throws {
    guard fresh, FileManager.default.fileExists(atPath: out.path) else { return }
    try FileManager.default.removeItem(at: out)
  }
}

/// Draws an attack's progress on stderr: the feature pass, then epoch, step, losses and ETA,
/// or the optimisation's steps.
final class AttackProgressPrinter {
  let prefix: String
  let terminal = isatty(STDERR_FILENO) == 1
  var last = Date.distantPast

  init(prefix: String = "") { self.prefix = prefix }

  func callAsFunction(_ event: AttackProgress) {
    let now = Date()
    switch event {
    case .features(let done, let total, let cached):
      if done == total {
        note("\(terminal ? "\r" : "")\(prefix)features: \(total) images\(cached ? " (from the cache)" : "")")
      } else if terminal, now.timeIntervalSince(last) > 0.2 {
        last = now
        FileHandle.standardError.write(Data("\r\(prefix)features: \(done)/\(total)".utf8))
      }
    case .step(let epoch, let epochs, let step, let steps, let g, let d, let eta):
      // A terminal gets a redrawn line; a log one line per ~10 % of an epoch.
      let due = terminal ? now.timeIntervalSince(last) > 0.2 : step % max(steps / 10, 1) == 0
      guard due || step == steps else { return }
      last = now
      let losses = String(format: "G %.4f", g) + (d.map { String(format: " D %.4f", $0) } ?? "")
      redraw("\(prefix)epoch \(epoch)/\(epochs) step \(step)/\(steps) \(losses) ETA \(duration(eta))")
    case .epochDone(let epoch, let epochs, let g, let d, let seconds):
      let losses = String(format: "G %.4f", g) + (d.map { String(format: " D %.4f", $0) } ?? "")
      note("\(terminal ? "\r" : "")\(prefix)epoch \(epoch)/\(epochs) done in \(duration(seconds)): mean \(losses); checkpoint saved")
    case .optimisation(let step, let steps, let restart, let restarts, let loss, let eta):
      let due = terminal ? now.timeIntervalSince(last) > 0.2 : step % max(steps / 5, 1) == 0
      guard due || step == steps else { return }
      last = now
      redraw(
        "\(prefix)optimisation step \(step)/\(steps)\(restarts > 1 ? " restart \(restart)/\(restarts)" : "") objective \(String(format: "%.4f", loss)) ETA \(duration(eta))")
    case .message(let s):
      note("\(terminal ? "\r" : "")\(prefix)\(s)")
    }
  }

  func redraw(_ line: String) {
    if terminal {
      FileHandle.standardError.write(Data(("\r" + line + "   ").utf8))
    } else {
      note(line)
    }
  }
}

/// Loads a model and its preprocessing for the attack commands, with errors a user can act on.
func attackModel(_ spec: String, preset: VeilData.Preprocessing.Preset?) throws -> (Graph, InputPreprocessing) {
  try ModelSource.check(spec)
  let g = try ModelSource.load(spec)
  return (g, try InputPreprocessing.forModel(spec, graph: g, preset: preset))
}

/// A verdict in a few lines for the terminal.
func verdictLines(_ v: CutVerdict) -> [String] {
  var lines = ["\(v.cut): \(v.status.rawValue.uppercased()) under the \(v.settings.threatModel.rawValue) threat model"]
  let attackers = v.settings.attackers.filter { k in v.attacks.contains { $0.attacker == k } }
  // A column as wide as its heading (substitute-hybrid's is the longest).
  func width(_ k: AttackerKind) -> Int { max(24, k.rawValue.count + 15) }
  lines.append(
    "  " + pad("measure", 18) + pad("threshold", 11) + attackers.map { pad($0.rawValue + " mean (bound)", width($0)) }.joined()
      + pad("baseline", 10) + pad("colour", 8) + "status")
  for m in v.measures {
    var row = "  " + pad(m.measure, 18) + pad(m.threshold.map { String(format: "%.2f", $0) } ?? "-", 11)
    for k in attackers {
      let e = m.estimates[k.rawValue]
      row += pad(
        e.map { String(format: "%.3f (%@)%@", $0.mean, $0.upper.isFinite ? String(format: "%.3f", $0.upper) : "inf", k == m.worstAttacker ? "*" : "") }
          ?? "-", width(k))
    }
    lines.append(
      row + pad(String(format: "%.3f", m.baseline), 10) + pad(m.colourGuess.map { String(format: "%.3f", $0) } ?? "-", 8)
        + (m.status?.rawValue ?? "reported"))
  }
  lines.append(
    "  (* the attacker whose bound decides; bounds are one-sided 95 %, clustered by photo, across seeds; baseline: the mean training image; colour: a flat image of each original's mean colour)"
  )
  for a in v.attacks {
    let ssim = a.measure(SSIMMeasure.name).map { String(format: "SSIM %.3f", $0.mean) } ?? ""
    lines.append("  \(a.attacker.rawValue) seed \(a.seed): \(ssim), \(a.heldOut) held-out images, \(duration(a.seconds))\(a.converged ? "" : ", NOT converged"); grid \(a.grid)")
    for n in a.notes { lines.append("    \(n)") }
  }
  if v.stoppedEarly { lines.append("  a measure leaked beyond doubt: the remaining attacks were skipped") }
  return lines
}
