import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilPlanning
import VeilPrivacy
import VeilServing
import VeilTEE

/// Which attackers a plan runs; `both` decides on the stronger of the two at every cut.
enum PlanAttacker: String, ExpressibleByArgument, CaseIterable {
  case cgan, inverse, both

  var kinds: [AttackerKind] {
    switch self {
    case .cgan: [.cgan]
    case .inverse: [.inverse]
    case .both: [.cgan, .inverse]
    }
  }
}

extension PlanBudget: ExpressibleByArgument {}

struct Plan: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Choose where to cut a model: the earliest cut an inversion attacker cannot rebuild the input from, with its runtime.",
    discussion: """
      Profiles every cut (head in the TEE + transfer + tail, against the whole model in the TEE;
      TEE time MODELED outside a real TEE), then attacks cuts with an inversion attacker trained
      on the feature maps (the pix2pix c-GAN, the inverse network, or both) and scores its
      reconstructions of held-out photos with SSIM. It attacks as few cuts as the budget allows
      (bisection, then the neighbours of the candidate) and chooses the earliest cut whose 95 %
      upper confidence bound of the mean SSIM is below --threshold, and whose next deeper cut
      passes too. It also reports the fastest cut regardless of privacy and the whole model in
      the TEE, so the price of privacy is visible.

      Writes to --out: plan.json (the deployment `veil enclave serve --plan` reads, and under
      "planning" every figure, setting, version and seed), head.onnx and tail.onnx, the head
      sealed with AES-256-GCM (head.onnx.sealed; its key head.key stays with the model owner:
      `veil keys serve`), the Gramine manifest template, the attacks' grids and weights, and
      report.html (self-contained). An interrupted plan resumes from plan-state.json.

      Budgets: quick (about log2(cuts)+2 attacks, short training), standard (the neighbours of
      every bisection step, longer training), thorough (every cut). --epochs overrides the
      budget's training length.
      """)

  @Option(help: "A zoo model name (see `veil models`), an ONNX file, or a PyTorch state_dict / safetensors of a zoo architecture.")
  var model: String
  @Option(
    help: ArgumentHelp(
      "A folder of photos (PNG/JPEG, any depth; TON_IoT images from `veil data ton-iot` too), or 'photos': the registry-shipped photos scripts/prepare_photos.py gathers.",
      valueName: "folder|photos"))
  var data = "photos"
  @Option(help: "TEE cost-model preset: sgx1, sgx2, tdx, snp.")
  var tee = "sgx1"
  @Option(help: "SSIM threshold in (0, 1): a cut is private enough when the 95 % upper bound of its mean SSIM is below it.")
  var threshold = PlanOptions().threshold
  @Option(help: "cgan, inverse, or both (the stronger decides).")
  var attacker = PlanAttacker.cgan
  @Option(
    help: ArgumentHelp(
      "Where the tail runs while profiling: local (Veil's engine here) or the HOST:PORT of a KServe v2 server that serves every cut's tail (`veil accelerator serve --every-cut MODEL`).",
      valueName: "local|HOST:PORT"))
  var accelerator = "local"
  @Option(help: "quick, standard or thorough.")
  var budget = PlanBudget.quick
  @Option(help: "Folder for the plan (default: plan-<model>).")
  var out: String?
  @Option(help: "Timed runs per segment in the profile.")
  var runs = 5
  @Option(help: "Attack training epochs (default: 4 quick, 10 standard, 20 thorough).")
  var epochs: Int?
  @Option(help: "Side of the square attack images.")
  var imageSize = 64
  @Option(help: "Random crops per training photo (default: 24 quick, 40 otherwise).")
  var crops: Int?
  @Option(help: "Seed of the split, crops, attacker weights and profile input.")
  var seed: UInt64 = 0
  @Option(
    help: "How an image becomes the model's input: imagenet, caffe, tensorflow, tensorflow-lite or unit (default: a zoo architecture's own, else imagenet).")
  var preprocess: VeilData.Preprocessing.Preset?
  @Option(help: "Class names, one per line, shipped with the plan for `veil infer`.")
  var labels: String?
  @Flag(help: "Profile again even when plan-state.json holds a profile (taken on a busy machine, say); finished attacks are kept.")
  var reprofile = false
  @Flag(help: "Print plan.json's planning record as JSON.")
  var json = false
  @OptionGroup var engine: EngineOptions

  func validate() throws {
    guard threshold > 0, threshold < 1 else { throw ValidationError("\(PlanError.invalidThreshold(threshold))") }
    guard runs >= 1 else { throw ValidationError("--runs must be ≥ 1, found \(runs)") }
    _ = try remoteTailTimer(accelerator, model: model)  // a malformed HOST:PORT fails before any work
  }

  /// The attack settings the budget implies.
  func attackConfig(_ kind: AttackerKind) -> AttackConfig {
    var c = AttackConfig()
    c.attacker = kind
    c.imageSize = imageSize
    c.seed = seed
    c.epochs = epochs ?? [PlanBudget.quick: 4, .standard: 10, .thorough: 20][budget]!
    c.trainCropsPerPhoto = crops ?? (budget == .quick ? 24 : 40)
    return c
  }

  func run() throws {
    try engine.apply()
    try ModelSource.check(model)
    let graph = try ModelSource.load(model, seed: seed)
    let name = URL(fileURLWithPath: model).lastPathComponent
    let folder = URL(fileURLWithPath: out ?? "plan-\(name.split(separator: ".").first.map(String.init) ?? name)")
    var options = PlanOptions()
    options.threshold = threshold
    options.budget = budget
    options.profile.runs = runs
    options.profile.seed = seed
    options.profile.tailTimer = try remoteTailTimer(accelerator, model: model)
    options.reprofile = reprofile
    let c = attackConfig(.cgan)
    options.attackSettings =
      "epochs \(c.epochs), crops \(c.trainCropsPerPhoto), image \(imageSize), seed \(seed), data \(URL(fileURLWithPath: data).standardizedFileURL.path), preprocess \(preprocess?.rawValue ?? "default")"
    do { options.profile.preset = try TEEPreset.named(tee) } catch { throw ValidationError("--tee: \(error)") }
    let planner: Planner
    do { planner = try Planner(graph: graph, model: name, options: options, folder: folder) } catch { throw ValidationError("\(error)") }

    // The photos, split by source photo into training and held-out crops.
    let configs = attacker.kinds.map(attackConfig)
    let images: AttackImages
    let dataFolder = data == "photos" ? AttackImages.registryPhotosFolder : URL(fileURLWithPath: data)
    if data == "photos", !FileManager.default.fileExists(atPath: dataFolder.path) {
      throw ValidationError(
        "--data photos: \(dataFolder.path) is missing; gather the registry-shipped photos with `.venv/bin/python scripts/prepare_photos.py` (make assets does)")
    }
    do { images = try AttackImages.folder(dataFolder, config: configs[0]) } catch { throw ValidationError("--data: \(error)") }
    do { try planner.checkHeldOut(images.test.count) } catch { throw ValidationError("--data: \(error)") }
    let preprocessing = try InputPreprocessing.forModel(name, graph: graph, preset: preprocess)
    let cutCount = try graph.candidateCuts().count
    let attacks = planner.attacksExpected(cutCount: cutCount) * configs.count
    // Up front: a rough estimate of what the budget will cost, assuming 20 (c-GAN) or 45
    // (inverse) training images per second; not measured on this machine.
    let perImage = configs.map { $0.attacker == .cgan ? 1 / 20.0 : 1 / 45.0 }.reduce(0, +) / Double(configs.count)
    let estimate = Double(attacks) * Double(images.train.count * configs[0].epochs) * perImage
    note(
      "plan: \(name), \(cutCount) cuts, threshold \(threshold), budget \(budget.rawValue): up to \(attacks) attacks of \(configs[0].epochs) epochs on \(images.train.count) crops (\(images.trainPhotos.count) photos), \(images.test.count) held-out crops (\(images.testPhotos.count) photos); roughly \(duration(estimate)) of training (estimate at an assumed 20 c-GAN / 45 inverse images/s)")
    if estimate > 4 * 3600 {
      note("warning: this budget is estimated at \(duration(estimate)); choose --budget quick, fewer --epochs or fewer --crops to finish sooner")
    }

    let attackRoot = folder.appendingPathComponent("attacks")
    let outcome = try planner.run(attacker: attacker.rawValue, unattackable: { cut in
      do {
        let fx = try FeatureExtractor(model: graph, cut: cut, imageSize: imageSize, batch: 1, preprocessing: preprocessing)
        try InversionGenerator.check(featureShape: fx.featureShape, imageSize: imageSize)
        return nil
      } catch let e as PrivacyError {
        if case .cut(_, let detail) = e { return detail }
        if case .invalidConfig(let detail) = e { return detail }
        return "\(e)"
      } catch { return "\(error)" }
    }, attack: { cut, index in
      var worst: PrivacyPoint?
      for config in configs {
        let dir = attackRoot.appendingPathComponent("\(cut.name)-\(config.attacker.rawValue)")
        let printer = AttackProgressPrinter(prefix: "  \(cut.name) \(config.attacker.rawValue): ")
        let r = try runAttack(
          model: graph, modelName: name, cut: cut, data: images, preprocessing: preprocessing, config: config, outDir: dir,
          progress: { printer($0) })
        let point = PrivacyPoint(
          cutIndex: index, cut: cut.name, attacker: attacker.rawValue, ssimMean: r.ssim.mean, ssimStd: r.ssim.std,
          ssimUpper: r.ssimUpperBound, psnrMean: r.psnr.mean, psnrStd: r.psnr.std, heldOut: r.heldOutCount,
          trainImages: r.trainCount, seconds: r.seconds,
          gridPNG: "attacks/\(cut.name)-\(config.attacker.rawValue)/grid.png")
        if worst == nil || point.ssimUpper > worst!.ssimUpper { worst = point }
      }
      return worst!
    }, progress: { note($0) })

    var deployment: DeploymentPlan?
    var summary: PlanRecord.Deployment?
    if let chosen = outcome.chosen {
      let (plan, s) = try writeDeployment(graph: graph, name: name, cut: chosen, folder: folder, profile: outcome.profile)
      deployment = plan
      summary = s
    }
    let record = PlanRecord(
      model: name, modelDigest: planner.modelDigest,
      data: .init(
        origin: data == "photos" ? "imagenet-style photos (registry-shipped)" : "user images", path: dataFolder.path,
        images: images.train.count + images.test.count, sourceImages: images.trainPhotos.count + images.testPhotos.count,
        trainImages: images.train.count, heldOutImages: images.test.count, imageSize: imageSize),
      threshold: threshold, attacker: attacker.rawValue, budget: budget, seeds: ["split, crops, attacker, profile input": seed],
      settings: [
        "epochs": "\(configs[0].epochs)", "crops per photo": "\(configs[0].trainCropsPerPhoto)", "batch": "\(configs[0].batch)",
        "preprocessing": preprocessing.name, "TEE preset": tee, "profile runs": "\(runs)",
      ].merging(outcome.skipped.map { ("not attacked: \($0.key)", $0.value) }) { a, _ in a },
      profile: outcome.profile, privacy: outcome.privacy, chosenCut: outcome.chosen?.name, fastestCut: outcome.profile.fastestCut,
      deployment: summary, versions: MachineInfo.versions)
    let document = PlanDocument(deployment: deployment, planning: record)
    try document.write(to: folder.appendingPathComponent(DeploymentPlan.fileName))
    let report = folder.appendingPathComponent("report.html")
    try HTMLReport.render(record, folder: folder).write(to: report, atomically: true, encoding: .utf8)
    if json { return try printJSON(record) }
    print(PlanSummary.text(record))
    print("report: \(report.path)")
  }

  /// head.onnx, tail.onnx and plan.json's deployment part; the sealed head and its key; the
  /// Gramine manifest template; the policy a client pins.
  func writeDeployment(graph: Graph, name: String, cut: CutPoint, folder: URL, profile: ProfileReport) throws
    -> (DeploymentPlan, PlanRecord.Deployment)
  {
    var labelNames: [String]?
    if let labels {
      do {
        labelNames = try String(contentsOfFile: labels, encoding: .utf8).split(whereSeparator: \.isNewline).map(String.init)
      } catch { throw ValidationError("--labels '\(labels)': \(error.localizedDescription)") }
    } else if ModelZoo.names.contains(graph.metadata["architecture"] ?? name), let shape = graph.outputs.first.flatMap(graph.shape), shape.last == 1000 {
      labelNames = try AssetCache.imageNetClasses()
    }
    let presetName = (preprocess ?? Self.closestPreset(graph: graph, name: name)).rawValue
    let loaded = try DeploymentPlan.write(
      model: graph, name: name, cut: cut.name, preprocessing: .init(preset: presetName, appliedIn: .client), labels: labelNames,
      teePreset: tee, evidenceMode: "simulated", to: folder)
    // The sealed head: only an enclave that satisfies the owner's policy gets the key.
    let key = SealedHead.newKey()
    let sealed = try SealedHead.seal(Array(try Data(contentsOf: loaded.headURL)), key: key)
    try Data(sealed).write(to: folder.appendingPathComponent("head.onnx.sealed"))
    let keyFile = folder.appendingPathComponent("head.key")
    try key.withUnsafeBytes { Data($0) }.write(to: keyFile)
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyFile.path)
    var plan = loaded.plan
    plan.sealedHead = "head.onnx.sealed"
    // The manifest template for gramine-sgx, sized from the head's measured peak memory.
    let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    let peak = profile.cuts.first { $0.cut.name == cut.name }?.headPeakBytes ?? cut.headParameterBytes
    let libs = (try? sharedLibraries(of: binary)) ?? []
    let size: (String) -> Int = { (try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0 }
    let manifest = try GramineManifest(
      binary: binary, libraries: libs, head: loaded.headURL.path, peakMemory: max(peak, 1),
      kernelThreads: ProcessInfo.processInfo.activeProcessorCount, fileBytes: ([binary, loaded.headURL.path] + libs).map(size).reduce(0, +))
    try Data(manifest.template.utf8).write(to: folder.appendingPathComponent("veil.manifest.template"))
    // The policy a client pins for the simulated enclave this machine can run; under SGX the
    // MRENCLAVE comes from gramine-sgx-sigstruct-view instead.
    let mr = SimulatedEnclave.measurement(
      binaryDigest: try fileDigest(URL(fileURLWithPath: binary)), headDigest: try fileDigest(loaded.headURL))
    let policy = "{\n  \"mrenclave\": \"\(mr.map { String(format: "%02x", $0) }.joined())\",\n  \"allow_simulation\": true,\n  \"allow_debug\": true\n}\n"
    try Data(policy.utf8).write(to: folder.appendingPathComponent("client-policy.json"))
    let summary = PlanRecord.Deployment(
      enclave: "the head up to \(cut.name) (\(cut.headFlops / 1_000_000) MFLOP, \(cut.headParameterBytes >> 10) KiB of weights), `veil enclave serve --plan \(folder.path)`; Gramine manifest veil.manifest.template (\(manifest.enclaveSize >> 20) MiB enclave)",
      accelerator: "the tail after \(cut.name) as KServe v2 model '\(plan.accelerator.modelName)' (`veil accelerator serve --model \(plan.accelerator.modelName)=\(folder.appendingPathComponent("tail.onnx").path)`, or Triton)",
      evidenceMode: "simulated on this machine (no TEE); gramine-sgx, configfs-tsm where present", clientPolicy: policy,
      files: [
        "head": "head.onnx", "tail": "tail.onnx", "sealed head": "head.onnx.sealed", "head key (owner only)": "head.key",
        "Gramine manifest": "veil.manifest.template", "client policy (simulated enclave)": "client-policy.json",
      ].merging(labelNames == nil ? [:] : ["labels": "labels.txt"]) { a, _ in a })
    return (plan, summary)
  }

  /// The VeilData preset nearest to a zoo model's own normalisation, for the client's side.
  static func closestPreset(graph: Graph, name: String) -> VeilData.Preprocessing.Preset {
    let architecture = graph.metadata["architecture"] ?? name
    guard let t = try? ModelZoo.info(architecture).transform else { return .imagenet }
    let k = 255 / t.range
    let mean = t.mean.map { $0 * k }
    return VeilData.Preprocessing.Preset.allCases.min { a, b in
      let na = VeilData.Preprocessing(preset: a).normalization.mean
      let nb = VeilData.Preprocessing(preset: b).normalization.mean
      func d(_ m: [Float]) -> Float { zip(mean, m.count == 1 ? Array(repeating: m[0], count: mean.count) : m).map { abs($0 - $1) }.reduce(0, +) }
      return d(na) < d(nb)
    } ?? .imagenet
  }
}

/// The plan in a few lines for the terminal.
enum PlanSummary {
  static func text(_ r: PlanRecord) -> String {
    var lines: [String] = []
    let modeled = r.profile.teeTime == "modeled" ? " (TEE time modeled, preset \(r.profile.preset.name))" : ""
    lines.append(String(format: "whole model in the TEE: %.1f ms%@", r.profile.baseline.totalMs, modeled))
    for p in r.privacy {
      lines.append(String(format: "  %-16@ SSIM %.3f ± %.3f  upper bound %.3f  PSNR %.1f dB  %@", p.cut as NSString, p.ssimMean, p.ssimStd, p.ssimUpper, p.psnrMean, p.ssimUpper < r.threshold ? "private" : "leaks"))
    }
    if let c = r.chosenCut, let row = r.row(c) {
      lines.append(String(format: "chosen: %@ — %.1f ms per request (speed-up %.1f %%), SSIM upper bound under %.2f", c, row.totalMs, row.speedupPercent, r.threshold))
    } else {
      lines.append(String(format: "chosen: none — no cut keeps the SSIM upper bound under %.2f; keep the whole model in the TEE", r.threshold))
    }
    if let f = r.fastestCut, let row = r.row(f) {
      lines.append(String(format: "fastest regardless of privacy: %@ — %.1f ms", f, row.totalMs))
    }
    return lines.joined(separator: "\n")
  }
}
