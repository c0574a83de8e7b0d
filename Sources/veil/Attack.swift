import ArgumentParser
import Foundation
import VeilData
import VeilGraph
import VeilModels
import VeilPrivacy
import VeilTensor

struct Attack: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Attack a model's feature map at one cut: rebuild held-out photos and score how much leaks.",
    discussion: """
      With --attacker, one attacker at one seed: cgan (pix2pix's conditional GAN on the feature
      map), inverse (the same U-Net on the reconstruction loss alone, He et al.'s inverse network),
      optimisation (white-box: Adam on the pixels so that the head's features match the observed
      ones, under a total-variation prior; needs the head's weights and no data), substitute
      (black-box: the same optimisation through a substitute head trained from queries), hybrid
      (white-box: the inverse network's images refined by the optimisation; --inverse-from reuses
      a finished inverse attack's network instead of training one) or substitute-hybrid
      (black-box: the same refinement through a substitute head; --substitute-from reuses a
      finished substitute attack's head). Without
      --attacker, the verdict at the cut under --threat-model and --budget: every attacker of the
      threat model under every seed, each measure's worst attacker against its threshold, the
      rule `veil plan` uses.

      Photos are split into training, validation and held-out photos (crops of one photo never
      straddle a split); the learning-based attackers train until the validation loss stops
      improving (--patience) and the best epoch's weights rebuild the held-out images. Scores:
      SSIM, PSNR, recognition and re-identification by a reference ImageNet classifier
      (EfficientNet-Lite0 with its real weights; `make assets`), field recovery for TON_IoT
      images. Writes grid.png (held-out originals above their reconstructions), checkpoints per
      epoch and result.json per attack; a rerun resumes. See docs/privacy.md.
      """)

  @Option(help: "A zoo model name, an ONNX file, or a state_dict of a zoo architecture.")
  var model: String
  @Option(help: "The cut: its name, a unique part of its name (block1_pool), or its index (see `veil cuts`).")
  var cut: String
  @Option(help: "One attacker: cgan, inverse, optimisation, substitute, hybrid or substitute-hybrid (default: every attacker of --threat-model).")
  var attacker: AttackerKind?
  @Option(
    help: ArgumentHelp(
      "With --attacker hybrid or substitute-hybrid: the --out folder of a finished inverse attack with the same data and options, whose network is refined instead of training another.",
      valueName: "dir"))
  var inverseFrom: String?
  @Option(
    help: ArgumentHelp(
      "With --attacker substitute-hybrid: the --out folder of a finished substitute attack with the same data and options, whose substitute head is reused.",
      valueName: "dir"))
  var substituteFrom: String?
  @OptionGroup var options: AttackOptions
  @Option(help: ArgumentHelp("Output folder.", valueName: "dir"))
  var out: String = "out/attack"
  @Flag(help: "Print the result as one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  func validate() throws {
    if let attacker, attacker != .optimisation, options.testFraction == 1 {
      throw ValidationError("--test-fraction 1 holds out every photo: only the optimisation attacker learns from nothing")
    }
    if inverseFrom != nil, attacker != .hybrid, attacker != .substituteHybrid {
      throw ValidationError("--inverse-from goes with --attacker hybrid or substitute-hybrid: it names the inverse network the hybrid refines")
    }
    if substituteFrom != nil, attacker != .substituteHybrid {
      throw ValidationError("--substitute-from goes with --attacker substitute-hybrid: it names the substitute head the hybrid refines through")
    }
    for (flag, folder, kind) in [("--inverse-from", inverseFrom, AttackerKind.inverse), ("--substitute-from", substituteFrom, .substitute)] {
      guard let folder, let name = kind.checkpointName else { continue }
      guard FileManager.default.fileExists(atPath: URL(fileURLWithPath: folder).appendingPathComponent(name).path) else {
        throw ValidationError("\(flag) \(folder): no \(name) there; give the --out folder of a finished \(kind.rawValue) attack")
      }
    }
  }

  func run() throws {
    try engine.apply()
    let (graph, preprocessing) = try attackModel(model, preset: options.preprocess)
    let point: CutPoint
    do { point = try graph.attackCut(named: cut) } catch { throw ValidationError("\(error)") }
    let outDir = URL(fileURLWithPath: out)
    try options.clear(outDir)
    let evaluation = try options.evaluation(graph, name: model, preprocessing: preprocessing, out: outDir)
    guard let attacker else {
      note("verdict at \(point.name) of \(model): \(options.threatModel.rawValue) threat model, budget \(options.budget.rawValue), measures \(evaluation.measures.described)")
      var printers: [String: AttackProgressPrinter] = [:]
      let v = try evaluation.evaluate(cut: point, index: point.index) { kind, seed, event in
        let key = "\(kind.rawValue) seed \(seed)"
        let p = printers[key] ?? AttackProgressPrinter(prefix: "[\(key)] ")
        printers[key] = p
        p(event)
      }
      if json { return try printJSON(v) }
      for line in verdictLines(v) { print(line) }
      return
    }
    var config = evaluation.settings.config
    config.attacker = attacker
    config.seed = options.seed
    let data: AttackImages
    do { data = try evaluation.images(config) } catch { throw ValidationError("--data: \(error)") }
    note(
      "attack \(attacker.rawValue) on \(model) at \(point.name): \(data.train.count) training crops of \(data.trainPhotos.count) photos, \(data.validation.count) validation crops, \(data.test.count) held-out crops of \(data.testPhotos.count) photos, \(config.imageSize)×\(config.imageSize), \(preprocessing.name) preprocessing"
    )
    let r = try runAttack(
      model: graph, modelName: model, cut: point, data: data, preprocessing: preprocessing, config: config, outDir: outDir,
      cacheDirectory: options.cacheDirectory, measures: evaluation.measures,
      trainedFolders: [.inverse: inverseFrom.map { URL(fileURLWithPath: $0) }, .substitute: substituteFrom.map { URL(fileURLWithPath: $0) }]
        .compactMapValues { $0 },
      progress: AttackProgressPrinter().callAsFunction)
    if json { return try printJSON(r) }
    print(
      "\(r.attacker.title) at \(r.cut) (feature map \(r.featureShape.map(String.init).joined(separator: "×"))), \(r.heldOutCount) held-out images of \(r.heldOutPhotos) photos:"
    )
    for m in r.measures {
      print(
        String(
          format: "%@ %.4f ± %.4f (95%% bound %.4f, clustered by photo; mean-image baseline %.4f, colour guess %@)", pad(m.name, 17), m.mean,
          ScoreSummary(m.perImage).std, m.estimate.upper, m.baseline, m.colourGuess.map { String(format: "%.4f", $0) } ?? "-"))
    }
    print(String(format: "%@ in all; %@%@", duration(r.seconds), r.converged ? "converged" : "NOT converged", r.bestEpoch.map { ", best epoch \($0)" } ?? ""))
    for n in r.notes { print(n) }
    print("grid \(r.gridPath), result \(outDir.appendingPathComponent("result.json").path)")
  }
}
