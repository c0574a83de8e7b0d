import ArgumentParser
import Foundation
import VeilData
import VeilGraph
import VeilModels
import VeilPlanning
import VeilPrivacy
import VeilTEE

struct Plan: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Choose where to cut a model: the earliest cut no attacker of the threat model can rebuild the input from, with its runtime.",
    discussion: """
      Profiles every cut (head in the TEE + transfer + tail, against the whole model in the TEE;
      TEE time MODELED outside a real TEE), then evaluates cuts as `veil privacy` does: every
      attacker of --threat-model under the budget's seeds, scored with SSIM, PSNR, recognition and
      re-identification (field recovery for TON_IoT images); a cut is private only when every
      measure's one-sided 95 % bound (clustered by photo, across seeds) is under its threshold.
      It evaluates as few cuts as the budget allows (bisection, then the neighbours of the
      candidate) and chooses the earliest cut from which every evaluated cut is private; the
      standard and thorough budgets then confirm the choice at the model's own input size
      (deeper if it does not hold there). It reports cuts whose verdict is within noise, and
      the fastest cut regardless of privacy, so the price of privacy is visible.

      Writes to --out: plan.json (the deployment `veil enclave serve --plan` reads, and under
      "planning" every verdict with its threat model, attackers, seeds, data and thresholds),
      head.onnx and tail.onnx, the head sealed with AES-256-GCM (head.onnx.sealed; its key
      head.key, 0600, stays with the model owner: `veil keys serve`), the Gramine manifest
      template, the attacks' grids, curves and weights, and report.html (self-contained; its first
      line says when the settings are weaker than the default). An interrupted plan resumes.

      Budgets: quick (a first pass: every attacker of the threat model but the c-GAN, one seed, short
      training, not confirmed at the deployed size), standard (the default: every attacker, two
      seeds), thorough (every cut, three seeds, longer).
      """)

  @Option(help: "A zoo model name (see `veil models`), an ONNX file, or a PyTorch state_dict / safetensors of a zoo architecture.")
  var model: String
  @OptionGroup var attack: AttackOptions
  @Option(help: "TEE cost-model preset: sgx1, sgx2, tdx, snp.")
  var tee = "sgx1"
  @Option(
    help: ArgumentHelp(
      "Where the tail runs while profiling: local (Veil's engine here) or the HOST:PORT of a KServe v2 server that serves every cut's tail (`veil accelerator serve --every-cut MODEL`).",
      valueName: "local|HOST:PORT"))
  var accelerator = "local"
  @Option(help: "Folder for the plan (default: plan-<model>).")
  var out: String?
  @Option(help: "Timed runs per segment in the profile.")
  var runs = 5
  @Option(help: "Confirm the choice at the model's own input size: true or false (default: true for standard and thorough).")
  var confirm: Bool?
  @Option(help: "Class names, one per line, shipped with the plan for `veil infer`.")
  var labels: String?
  @Flag(help: "Profile again even when plan-state.json holds a profile (taken on a busy machine, say); finished attacks are kept.")
  var reprofile = false
  @Option(
    help: ArgumentHelp(
      "Search cut × defence before the undefended choice: a comma list of gaussian, laplace, quant, prune (noise = gaussian); the budget sets the parameter grid and how many cuts. Reports the Pareto frontier of latency, leakage under attackers who know the defence, and top-1 agreement; the choice stays the paper's rule.",
      valueName: "kinds"))
  var defences: String?
  @Option(help: "Top-1 agreement with the undefended model a defence must keep (share of photos); below it a defence is reported and never deployed.")
  var utilityFloor = 0.95
  @Flag(
    help: "Keep the answer in the enclave: the last layer with weights and what follows run there on what the accelerator returns (the logits never leave the enclave); the plan reports what it costs.")
  var privateOutput = false
  @Flag(
    help: "Fine-tune the tail on each defence's maps (the undefended model's own classes as labels, crops of half the photos) before its utility is measured on the other half; the deployed tail is then the fine-tuned one.")
  var fineTuneTail = false
  @Option(help: "With --fine-tune-tail: epochs of logit distillation (Adam, learning rate 1e-4, batch 16, 6 crops per photo, fresh noise each epoch).")
  var fineTuneEpochs = 3
  @Flag(help: "Print plan.json's planning record as JSON.")
  var json = false
  @OptionGroup var engine: EngineOptions

  /// --defences as kinds.
  var defenceKinds: [DefenceKind] {
    get throws {
      guard let defences else { return [] }
      var kinds: [DefenceKind] = []
      for word in defences.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) where !word.isEmpty {
        guard let kind = DefenceKind(name: word) else { throw ValidationError("--defences: unknown defence '\(word)'; known: gaussian (noise), laplace, quant, prune") }
        if !kinds.contains(kind) { kinds.append(kind) }
      }
      guard !kinds.isEmpty else { throw ValidationError("--defences: empty list; give e.g. noise,quant,prune") }
      return kinds
    }
  }

  func validate() throws {
    _ = try defenceKinds
    guard (1...100).contains(fineTuneEpochs) else { throw ValidationError("--fine-tune-epochs must be in 1…100, found \(fineTuneEpochs)") }
    if fineTuneTail, attack.defence == nil, defences == nil {
      throw ValidationError("--fine-tune-tail fine-tunes the tail to a defence: give --defence or --defences too")
    }
    guard utilityFloor >= 0, utilityFloor <= 1 else { throw ValidationError("--utility-floor must be in [0, 1], found \(utilityFloor)") }
    guard runs >= 1 else { throw ValidationError("--runs must be ≥ 1, found \(runs)") }
    _ = try remoteTailTimer(accelerator, model: model)  // a malformed HOST:PORT fails before any work
  }

  func run() throws {
    try engine.apply()
    try ModelSource.check(model)
    let graph = try ModelSource.load(model, seed: attack.seed)
    let name = URL(fileURLWithPath: model).lastPathComponent
    let folder = URL(fileURLWithPath: out ?? "plan-\(name.split(separator: ".").first.map(String.init) ?? name)")
    if attack.fresh, FileManager.default.fileExists(atPath: folder.path) { try FileManager.default.removeItem(at: folder) }
    let preprocessing = try InputPreprocessing.forModel(name, graph: graph, preset: attack.preprocess)
    var job = PlanJob(
      graph: graph, name: name, data: try attack.dataFolder,
      dataOrigin: attack.data == "photos" ? "imagenet-style photos (registry-shipped)" : "user images", folder: folder,
      preprocessing: preprocessing)
    job.attackData = attack.attackData.map { URL(fileURLWithPath: $0) }
    job.options.budget = attack.budget
    job.options.profile.runs = runs
    job.options.profile.seed = attack.seed
    job.options.profile.tailTimer = try remoteTailTimer(accelerator, model: model)
    do { job.options.profile.preset = try TEEPreset.named(tee) } catch { throw ValidationError("--tee: \(error)") }
    job.options.reprofile = reprofile
    job.threatModel = attack.threatModel
    job.thresholds = attack.thresholds
    job.imageSize = attack.imageSize
    job.seed = attack.seed
    let options = attack
    job.overrides = { options.apply(to: &$0) }
    job.confirmAtDeployedSize = confirm
    job.semanticMeasures = !attack.pixelMeasuresOnly
    job.clientPreset = attack.preprocess
    job.teePreset = tee
    job.cacheDirectory = attack.cacheDirectory
    job.defenceKinds = try defenceKinds
    job.utilityFloor = utilityFloor
    job.privateOutput = privateOutput
    if fineTuneTail {
      var t = TailFineTuning()
      t.epochs = fineTuneEpochs
      job.fineTuning = t
    }
    if let labels {
      do {
        job.labels = try String(contentsOfFile: labels, encoding: .utf8).split(whereSeparator: \.isNewline).map(String.init)
      } catch { throw ValidationError("--labels '\(labels)': \(error.localizedDescription)") }
    }
    var printers: [String: AttackProgressPrinter] = [:]
    let result: PlanJob.Result
    do {
      result = try job.run(log: { note($0) }) { cut, kind, seed, event in
        let key = "\(cut.name) \(kind.rawValue) seed \(seed)"
        let p = printers[key] ?? AttackProgressPrinter(prefix: "  [\(key)] ")
        printers[key] = p
        p(event)
      }
    } catch let e as PlanError {
      throw ValidationError("\(e)")
    }
    let record = result.document.planning
    if json { return try printJSON(record) }
    print(PlanSummary.text(record))
    print("report: \(result.report.path)")
  }
}

/// The plan in a few lines for the terminal.
enum PlanSummary {
  static func text(_ r: PlanRecord) -> String {
    var lines: [String] = []
    if let u = r.profile.unstableLine { lines.append(u) }
    let weak = r.weaknesses
    if !weak.isEmpty { lines.append("WEAKER THAN THE DEFAULT EVALUATION: " + weak.joined(separator: "; ")) }
    let modeled = r.profile.teeTime == "modeled" ? " (TEE time modeled, preset \(r.profile.preset.name))" : ""
    let band = r.profile.baseline.totalBand.map { String(format: " (band %.1f … %.1f ms)", $0.low, $0.high) } ?? ""
    lines.append(String(format: "whole model in the TEE: %.1f ms%@%@", r.profile.baseline.totalMs, band, modeled))
    for v in r.privacy {
      let worst = v.measures.filter { $0.threshold != nil }.map { m in
        String(format: "%@ %.3f (bound %.3f, %@)", m.measure, m.estimate.mean, m.estimate.upper, m.worstAttacker.rawValue)
      }
      lines.append("  \(pad(v.cut, 16)) \(pad(v.status.rawValue, 10)) \(worst.joined(separator: ", "))")
    }
    for v in r.confirmations { lines.append("  at \(v.settings.config.imageSize) px: \(v.statement)") }
    if let c = r.chosenCut, let row = r.row(c) {
      lines.append(String(format: "chosen: %@ — %.1f ms per request (", c, row.totalMs) + r.profile.speedupStatement(row) + ")")
      if let v = r.verdict(c) { lines.append("verdict: " + v.statement) }
    } else {
      lines.append("chosen: none — no cut is private under this evaluation; keep the whole model in the TEE")
    }
    if let d = r.defence {
      lines.append("defence: \(d.defence) (fitted at \(d.utility.imageSize) px), known to every attacker; \(d.utility.summary)")
    }
    if let why = r.notDeployed { lines.append("NOT DEPLOYED: " + why) }
    if let p = r.privateOutput {
      lines.append(
        String(
          format: "private output: the enclave runs everything after %@ (%d KiB of weights): +%.3f ms in the TEE (%@), %.3f ms natively; the accelerator answers %@, never the logits",
          p.cut, p.parameterBytes >> 10, p.teeMs, p.teeTime, p.nativeMs, "\(p.acceleratorAnswer)"))
    }
    if let f = r.frontier {
      lines.append("defences searched (\(f.kinds.map(\.rawValue).joined(separator: ", ")); utility floor \(f.utilityFloor)):")
      for p in f.points where p.defence != nil || p.onFrontier {
        let leak = p.status.map { s in String(format: "%@ (SSIM bound %.3f)", s.rawValue, p.ssimBound ?? .nan) } ?? "not attacked"
        lines.append(
          String(
            format: "  %@ %@ %@ %.1f ms, top-1 agreement %.3f, %@%@", p.onFrontier ? "*" : " ", pad(p.cut, 14), pad(p.defence ?? "none", 14),
            p.latencyMs, p.agreement, leak, p.belowFloor ? ", UNDER THE UTILITY FLOOR" : ""))
      }
      if let b = f.earliestDefended {
        lines.append("earliest private defended cut: \(b.cut) with \(b.defence!) (undefended choice: \(f.undefendedChoice ?? "none")); deploy with --defence \(b.defence!)")
      } else {
        lines.append("no defended cut before \(f.undefendedChoice ?? "the deepest cut") is private and above the utility floor")
      }
      lines.append("  (* on the Pareto frontier of latency, SSIM bound and agreement)")
    }
    if !r.tiedCuts.isEmpty {
      lines.append(
        "within noise: \(r.tiedCuts.joined(separator: ", ")) undecided; another run with other seeds may choose differently. More held-out photos narrow the bounds (--test-fraction, or --data with more photos and --attack-data for the attackers' own), and so do more seeds (--budget standard)")
    }
    if let f = r.fastestCut, let row = r.row(f) {
      let unstable = r.profile.unstableSegments.isEmpty ? "" : " (runtime figures UNSTABLE: not to be decided on)"
      lines.append(String(format: "fastest regardless of privacy: %@ — %.1f ms%@", f, row.totalMs, unstable))
    }
    return lines.joined(separator: "\n")
  }
}
