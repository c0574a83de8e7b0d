import Foundation
import VeilData
import VeilGraph
import VeilModels
import VeilPrivacy
import VeilServing
import VeilTEE

/// A whole plan, as `veil plan` and `veil demo` run it: profile every cut, evaluate the cuts
/// the search needs under the threat model, confirm the choice at the model's deployed
/// resolution (standard and thorough budgets), write the deployment, plan.json and
/// report.html. The command-line tool only parses arguments into this and prints the result.
public struct PlanJob {
  public var graph: Graph
  /// The model's name in reports (its file name, or a zoo name).
  public var name: String
  /// A photo folder (any depth), or a TON_IoT image folder from `veil data ton-iot`.
  public var data: URL
  /// "imagenet-style photos (registry-shipped)" or "user images": for the report.
  public var dataOrigin: String
  /// The attackers' own photos, apart from `data` (every photo of `data` is then held out).
  public var attackData: URL?
  public var folder: URL
  public var options = PlanOptions()
  public var threatModel = ThreatModel.whiteBox
  public var thresholds = LeakageThresholds.defaults
  /// Side of the first pass's square attack images.
  public var imageSize = 64
  public var seed: UInt64 = 0
  /// Changes to the budget's attack options (the command line's --epochs, --steps, …), applied
  /// to the first pass and the deployed-resolution pass alike.
  public var overrides: (inout AttackConfig) -> Void = { _ in }
  /// Confirm the choice at the model's own input size (nil: the budget decides: standard and
  /// thorough do, quick does not).
  public var confirmAtDeployedSize: Bool?
  /// Recognition and re-identification need the reference classifier (EfficientNet-Lite0's
  /// ImageNet weights in the asset cache); off, only the pixel measures are computed.
  public var semanticMeasures = true
  /// How an image becomes the model's input.
  public var preprocessing: InputPreprocessing
  /// The preset the client applies when deployed (nil: the nearest to the model's own).
  public var clientPreset: VeilData.Preprocessing.Preset?
  public var labels: [String]?
  public var teePreset = "sgx1"
  public var cacheDirectory: URL? = FeatureExtractor.defaultCacheDirectory
  /// Defence kinds the cut × defence search tries before the undefended choice (empty: none).
  public var defenceKinds: [DefenceKind] = []
  /// A defended plan (or frontier point) must keep this top-1 agreement with the undefended
  /// model; below it a defence is reported as such and never deployed.
  public var utilityFloor = 0.95
  /// Keep the answer in the enclave (`--private-output`): the last layer with weights and what
  /// follows run there; the report says what it costs.
  public var privateOutput = false
  /// Fine-tune the tail on each defence's maps before its utility is measured (nil: the
  /// model's own tail); the deployed tail is then the fine-tuned one.
  public var fineTuning: TailFineTuning?

  public init(graph: Graph, name: String, data: URL, dataOrigin: String, folder: URL, preprocessing: InputPreprocessing) {
    self.graph = graph
    self.name = name
    self.data = data
    self.dataOrigin = dataOrigin
    self.folder = folder
    self.preprocessing = preprocessing
  }

  /// The evaluation settings of the first pass.
  public var settings: EvaluationSettings {
    var s = EvaluationSettings(
      threatModel: threatModel, budget: options.budget, imageSize: imageSize, seed: seed, thresholds: thresholds)
    overrides(&s.config)
    return s
  }

  /// The model's own input side, when its input is square and larger than the attack images.
  public var deployedSize: Int? {
    guard let input = graph.inputs.first, let shape = graph.shape(input), shape.count == 4 else { return nil }
    let (h, w) = [1, 3].contains(shape[1]) ? (shape[2], shape[3]) : (shape[1], shape[2])
    return h == w && h > imageSize ? h : nil
  }

  /// The measures for `data`: field recovery for TON_IoT image folders, recognition and
  /// re-identification for photos (with their reference networks, `MeasureSet.semantic(for:)`),
  /// SSIM and PSNR always.
  public func measures() throws -> MeasureSet {
    var m = MeasureSet.pixels
    if let fields = try FieldRecoveryMeasure.forDataFolder(data) {
      m.measures.append(fields)
    } else if semanticMeasures {
      m.measures += try MeasureSet.semantic(for: graph)
    }
    return m
  }

  /// Everything the plan wrote.
  public struct Result {
    public var document: PlanDocument
    public var planFile: URL
    public var report: URL
  }

  /// The settings of the confirmation at the deployed resolution `size`: the first attacker of
  /// the first pass (`first`) on the model's own input size, one seed, each held-out photo
  /// whole (one crop). An attacker that learns nothing (the optimisation) needs no photos but
  /// the few that calibrate its prior, so of `photos` (without separate attack data) every
  /// other one is held out: the 14 held-out photos of the demo's split decide nothing at
  /// 224 px, where one re-identified photo puts the bound at 0.25, over 0.2, and 32 photos
  /// give 32 clusters. An attacker that learns keeps the first pass's split and its crops per
  /// held-out photo.
  public func confirmationSettings(size: Int, first: EvaluationSettings, photos: Int) -> EvaluationSettings {
    var c = EvaluationSettings(threatModel: threatModel, budget: options.budget, imageSize: size, seed: seed, thresholds: thresholds)
    overrides(&c.config)
    c.attackers = [first.attackers[0]]
    c.seeds = [seed]
    c.config.imageSize = size
    c.config.optimisationBatch = 8
    // Calibrating with every step at full size costs steps × weights per photo: 4 of the
    // attacker's photos keep it near the cost of the attack itself.
    c.config.calibrationImages = min(c.config.calibrationImages, 4)
    if !c.attackers[0].needsTrainingData {
      c.config.testCropsPerPhoto = 1
      c.config.optimisationCropsPerPhoto = 1
      if attackData == nil, photos > 1 {
        let own = max(1, min(c.config.calibrationImages, photos - 1))
        c.config.testFraction = Double(photos - own) / Double(photos)
      }
    }
    return c
  }

  public func run(
    log: (String) -> Void, attackProgress: (CutPoint, AttackerKind, UInt64, AttackProgress) -> Void = { _, _, _, _ in }
  ) throws -> Result {
    for (measure, t) in thresholds.values where !(t > 0 && t < 1) { throw PlanError.invalidThreshold(measure: measure, value: t) }
    let planner = try Planner(graph: graph, model: name, options: options, folder: folder)
    try self.settings.config.validate()
    let files = try PrivacyEvaluation.photoFiles(data)
    let training = try attackData.map(PrivacyEvaluation.photoFiles)
    let source = data.path + (attackData.map { " (attackers trained on \($0.path))" } ?? "")
    let measures = try self.measures()
    guard utilityFloor >= 0, utilityFloor <= 1 else {
      throw PrivacyError.invalidConfig("the utility floor must be in [0, 1] (a share of photos), found \(utilityFloor)")
    }
    // A plan under a defence keeps its attacks apart from the undefended ones.
    let defence = self.settings.config.defence
    let attacksFolder = PlanRecord.attacksFolder(defence)
    let evaluation = PrivacyEvaluation(
      model: graph, modelName: name, preprocessing: preprocessing, files: files, training: training, source: source,
      settings: self.settings, measures: measures, outDir: folder.appendingPathComponent(attacksFolder), cacheDirectory: cacheDirectory)
    // Measures whose classifier is the model itself are reported without deciding.
    let settings = evaluation.settings
    // The first seed's split, for the up-front figures and the held-out check.
    var first = settings.config
    first.attacker = settings.attackers[0]
    first.seed = settings.seeds[0]
    var learner = first
    learner.attacker = .inverse
    let images = try evaluation.images(settings.attackers.contains(where: \.needsTrainingData) ? learner : first)
    try planner.checkHeldOut(images.test.count)
    let cutCount = try graph.candidateCuts().count
    log(
      "plan: \(name), \(cutCount) cuts, \(settings.threatModel.rawValue) threat model, budget \(settings.budget.rawValue): attackers \(settings.attackers.map(\.rawValue).joined(separator: ", ")) × \(settings.seeds.count) seed(s) on about \(settings.budget.cutsExpected(cutCount: cutCount)) cuts; \(images.train.count) training crops (\(images.trainPhotos.count) photos), \(images.test.count) held-out crops (\(images.testPhotos.count) photos) at \(imageSize) px; measures \(measures.described); thresholds \(settings.thresholds.values.filter { measures.names.contains($0.key) }.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
    for w in settings.weakerThanDefault { log("note: weaker than the standard budget: \(w)") }

    var confirmation: PrivacyEvaluation?
    if let size = deployedSize, confirmAtDeployedSize ?? (options.budget != .quick) {
      var c = confirmationSettings(size: size, first: settings, photos: files.count)
      c.reportOnly(measures.dependent(on: graph))
      var e = evaluation
      e.settings = c
      e.outDir = folder.appendingPathComponent(attacksFolder + "-\(size)px")
      confirmation = e
    }
    let outcome = try planner.run(evaluation: evaluation, confirmation: confirmation, log: log, attackProgress: attackProgress)
    var deployment: DeploymentPlan?
    var summary: PlanRecord.Deployment?
    var defenceRecord: DefenceRecord?
    var notDeployed: String?
    var privateOutputRecord: PrivateOutputRecord?
    var tunedTail: Graph?
    if let chosen = outcome.chosen, let defence {
      let (record, tuned) = try measureDefence(defence, cut: chosen, photos: try utilityPhotos(evaluation), log: log)
      defenceRecord = record
      tunedTail = tuned
      log("defence: \(record.defence) at \(chosen.name): \(record.utility.summary); \(String(format: "%.3f", record.utility.defenceMs)) ms per map natively; \(record.utility.encodedBytes) bytes encoded against \(record.utility.mapBytes) as FP32")
      if record.belowFloor {
        notDeployed = "the defence \(defence.spec) keeps \(record.utility.summary), under the utility floor \(utilityFloor): not deployed; weaken it, choose another defence, or lower --utility-floor knowingly"
        log("defence: " + notDeployed!)
      }
    }
    if let chosen = outcome.chosen, notDeployed == nil {
      // A fine-tuned tail is deployed in place of the model's own (the head is unchanged).
      let deployed = try tunedTail.map { try graph.replacingWeights(from: $0) } ?? graph
      let written = try PlanDeployment(
        graph: deployed, name: name, cut: chosen, folder: folder, profile: outcome.profile, labels: labels, preset: clientPreset,
        teePreset: teePreset, outputCut: privateOutput ? "auto" : nil,
        defence: defenceRecord.map {
          DeploymentPlan.Defence(defence: $0.defence, channelAxis: $0.channelAxis, utility: $0.utility.summary)
        }
      ).write()
      deployment = written.plan
      summary = written.summary
      privateOutputRecord = written.privateOutput
      if let p = written.privateOutput {
        log(String(format: "private output: the enclave keeps everything after %@ (%d KiB of weights): %.3f ms natively, %.3f ms in the TEE (%@); the accelerator answers %@", p.cut, p.parameterBytes >> 10, p.nativeMs, p.teeMs, p.teeTime, "\(p.acceleratorAnswer)"))
      }
    }
    var frontier: DefenceFrontier?
    if !defenceKinds.isEmpty {
      if defence != nil {
        log("defences: the search is skipped: this plan is already made under one defence (--defence); run the search without it")
      } else {
        frontier = try searchDefences(evaluation: evaluation, outcome: outcome, log: log, attackProgress: attackProgress)
        if let best = frontier?.earliestDefended {
          log(
            "defences: \(best.cut) with \(best.defence!) is private under the adaptive attackers and keeps top-1 agreement \(String(format: "%.3f", best.agreement)), earlier than the undefended choice \(outcome.chosen?.name ?? "(none)"); the paper's rule stays this plan's choice: to deploy the defence, plan again with `--defence \(best.defence!)` (the plan then chooses under it)")
        } else {
          log("defences: no defended cut before \(outcome.chosen?.name ?? "the deepest cut") is private and above the utility floor \(utilityFloor)")
        }
      }
    }
    let origin = (try? FieldRecoveryMeasure.forDataFolder(data)) != nil ? "ton-iot images" : dataOrigin
    var record = PlanRecord(
      model: name, modelDigest: planner.modelDigest,
      data: .init(
        origin: origin, path: data.path, trainingPath: attackData?.path,
        sourceImages: images.trainPhotos.count + images.validationPhotos.count + images.testPhotos.count,
        trainImages: images.train.count, heldOutImages: images.test.count, heldOutPhotos: images.testPhotos.count, imageSize: imageSize,
        deployedSize: deployedSize),
      evaluation: settings, confirmation: confirmation?.settings, measures: measures.names,
      settings: [
        "preprocessing": preprocessing.name, "TEE preset": teePreset, "profile runs": "\(options.profile.runs)",
        "seed (splits, crops, attackers, profile input)": "\(seed)",
      ], profile: outcome.profile, outcome: outcome, deployment: summary, versions: MachineInfo.versions)
    record.defence = defenceRecord
    record.notDeployed = notDeployed
    record.frontier = frontier
    record.privateOutput = privateOutputRecord
    let document = PlanDocument(deployment: deployment, planning: record)
    let planFile = folder.appendingPathComponent(DeploymentPlan.fileName)
    try document.write(to: planFile)
    let report = folder.appendingPathComponent("report.html")
    try HTMLReport.render(record, folder: folder).write(to: report, atomically: true, encoding: .utf8)
    return Result(document: document, planFile: planFile, report: report)
  }
}
