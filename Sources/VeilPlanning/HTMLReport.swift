import Foundation
import VeilGraph
import VeilPrivacy

/// `report.html`: one self-contained page (inline SVG, PNG grids as data URIs, no script, no
/// network) that a person reads offline: the weakest link first (settings below the default,
/// the attacker that won), then the verdict, the runtime, the privacy evidence per measure and
/// attacker, the learning curves, the reconstructions, the deployment and the settings.
public enum HTMLReport {
  /// Renders `record`; grid PNGs named in its verdicts are read relative to `folder` (a
  /// missing grid is said so in the page, not silently dropped).
  public static func render(_ record: PlanRecord, folder: URL) -> String {
    let p = record.profile
    let modeled = p.teeTime == "modeled"
    let teeNote = modeled ? "modeled (no TEE on this machine; cost model preset \(p.preset.name))" : p.teeTime
    var h = """
      <!DOCTYPE html>
      <html lang="en"><head><meta charset="utf-8">
      <title>Veil plan: \(xml(record.model))</title>
      <style>
      body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
      h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
      table{border-collapse:collapse;margin:1em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
      td:first-child,th:first-child,td.name{text-align:left} tr.chosen{background:#e3f4e3;font-weight:bold} tr.fastest td.name::after{content:" (fastest)"}
      .verdict{font-size:1.15em;background:#f4f7fb;border-left:4px solid #1f77b4;padding:.8em 1em}
      .warn{border-left:4px solid #d62728;background:#fbf1f1;padding:.8em 1em}
      .leaks{color:#b00} .private{color:#060} .undecided{color:#a60}
      .modeled{color:#b15928;font-style:italic} figure{margin:1em 0;overflow-x:auto} figcaption{font-size:.85em;color:#555}
      img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}
      pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
      dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dt{font-weight:bold}
      </style></head><body>
      <h1>Where to cut \(xml(record.model))</h1>

      """
    if let u = p.unstableLine {
      h += "<p class=\"warn\"><b>Profile unstable:</b> \(xml(String(u.dropFirst("PROFILE UNSTABLE: ".count))))</p>\n"
    }
    let weak = record.weaknesses
    if !weak.isEmpty {
      h += "<p class=\"warn\"><b>Weaker than the default evaluation:</b> \(weak.map(xml).joined(separator: "; ")). A stronger attacker may rebuild more than this page shows.</p>\n"
    }
    h += verdict(record)
    // Runtime.
    h += "<h2>Runtime per cut</h2>\n"
    // The bands and the machine's load belong to the runtime's paragraph.
    let bands = p.cuts.contains { $0.speedupBand != nil }
    var more = ""
    if bands, let b = p.baseline.totalBand {
      more += " <span class=\"modeled\">Bands: each modeled figure from the cost model's cheap end to its costly end over its uncertain parameters (runtime pages, EPC size, compute factor, transition cost; docs/tee-cost-model.md); the whole model in the TEE \(String(format: "%.1f ms, band %.1f … %.1f ms", b.preset, b.low, b.high)).</span>"
    }
    if let c = p.conditions, !c.summary.isEmpty { more += " While profiling: \(xml(c.summary))." }
    h += "<p>Head in the TEE (<span class=\"modeled\">\(xml(teeNote))</span>) + transfer of the feature map + tail on the accelerator (\(xml(p.accelerator))), against the whole model in the TEE. Link: \(xml(p.link)). Medians of \(p.runs) runs, batch \(p.batch), \(p.threads) threads.\(more)</p>\n"
    h += "<table class=\"runtime\"><tr><th>#</th><th>cut</th><th>feature</th><th>head in TEE ms\(modeled ? " (modeled)" : "")</th><th>transfer ms</th><th>tail ms</th><th>partitioned ms\(modeled ? " (modeled)" : "")</th><th>full enclave ms\(modeled ? " (modeled)" : "")</th><th>speed-up %</th>\(bands ? "<th>partitioned band ms (modeled)</th><th>speed-up band % (modeled)</th>" : "")<th>verdict</th></tr>\n"
    for c in p.cuts {
      let cls = [c.cut.name == record.chosenCut ? "chosen" : nil, c.cut.name == record.fastestCut ? "fastest" : nil].compactMap { $0 }
      let v = record.verdict(c.cut.name)
      h += "<tr\(cls.isEmpty ? "" : " class=\"\(cls.joined(separator: " "))\"")><td>\(c.cut.index)</td><td class=\"name\">\(xml(c.cut.name))</td><td>\(c.cut.shape.dropFirst().map(String.init).joined(separator: "×"))</td>"
      h += String(format: "<td>%.1f</td><td>%.2f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td>", c.headTEEMs, c.transferMs, c.tailMs, c.totalMs, p.baseline.totalMs, c.speedupPercent)
      if bands {
        let flips = c.speedupSignDependsOn?.isEmpty == false ? " class=\"undecided\" title=\"its sign changes within the band\"" : ""
        h += "<td class=\"modeled\">\(ProfileReport.range(c.totalBand))</td><td\(flips)>\(ProfileReport.range(c.speedupBand))</td>"
      }
      h += "<td>\(v.map { "<span class=\"\($0.status.rawValue)\">\($0.status.rawValue)</span>" } ?? (record.notAttacked[c.cut.name] != nil ? "not attacked" : "—"))</td></tr>\n"
    }
    h += "</table>\n<figure>\(p.svg)<figcaption>Latency per request, stacked: head in the TEE, transfer, tail. \(modeled ? "Hatched parts are modeled." : "")</figcaption></figure>\n"
    h += privacy(record, folder: folder)
    h += defences(record, folder: folder)
    // Deployment.
    h += "<h2>Deployment</h2>\n"
    if let d = record.deployment {
      h += "<dl><dt>inside the TEE</dt><dd>\(xml(d.enclave))</dd><dt>on the accelerator</dt><dd>\(xml(d.accelerator))</dd><dt>evidence</dt><dd>\(xml(d.evidenceMode))</dd></dl>\n"
      if let p = record.privateOutput {
        h += "<p><b>Private output:</b> the enclave also runs everything after \(xml(p.cut)) (\(p.parameterBytes >> 10) KiB of weights) on the accelerator's answer \(xml("\(p.acceleratorAnswer)")): \(String(format: "%.3f", p.teeMs)) ms in the TEE (<span class=\"modeled\">\(xml(p.teeTime))</span>), \(String(format: "%.3f", p.nativeMs)) ms natively. \(xml(p.note)).</p>\n"
      }
      h += "<p>Files next to <code>plan.json</code>:</p><ul>\n"
      for (k, v) in d.files.sorted(by: { $0.key < $1.key }) { h += "<li>\(xml(k)): <code>\(xml(v))</code></li>\n" }
      h += "</ul>\n<p>The policy every client must pin (<code>veil infer --policy</code>):</p>\n<pre>\(xml(d.clientPolicy))</pre>\n"
    } else {
      h += "<p class=\"warn\">Nothing to deploy: no cut is private under this evaluation. Run the whole model in the TEE, or add a defence at the cut.</p>\n"
    }
    // Settings.
    let e = record.evaluation
    h += "<h2>Settings, machine and versions</h2>\n<dl>\n"
    var rows: [(String, String)] = [
      ("model", record.model), ("model digest (SHA-256)", record.modelDigest),
      ("data", "\(record.data.origin): \(record.data.path) — \(record.data.sourceImages) source images; \(record.data.trainImages) training crops, \(record.data.heldOutImages) held-out crops of \(record.data.heldOutPhotos) photos (first seed), \(record.data.imageSize)×\(record.data.imageSize)"),
      ("attackers trained on", record.data.trainingPath ?? "the data's training split"),
      ("threat model", e.threatModel.rawValue), ("budget", e.budget.rawValue),
      ("attackers", e.attackers.map(\.title).joined(separator: ", ")), ("seeds", e.seeds.map(String.init).joined(separator: ", ")),
      ("measures", record.measures.map { m in e.references?[m].map { "\(m) (judged by \($0))" } ?? m }.joined(separator: ", ")),
      ("thresholds", e.thresholds.values.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")),
      ("reported without deciding", e.reportedOnly.map { $0.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ") } ?? "none"),
      ("attack options", "at most \(e.config.epochs) epochs (patience \(e.config.patience)), \(e.config.trainCropsPerPhoto) crops per training photo, \(e.config.optimisationSteps) optimisation steps × \(e.config.restarts) restart(s), TV weight \(e.config.tvWeight)"),
      ("deployed resolution", record.confirmation.map { "confirmed at \($0.config.imageSize) px with \($0.attackers.map(\.title).joined(separator: ", "))" } ?? "not confirmed"),
      ("TEE", teeNote), ("machine", p.machine), ("created", record.created),
    ]
    rows += record.settings.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value) }
    rows += record.notAttacked.sorted(by: { $0.key < $1.key }).map { ("not attacked: \($0.key)", $0.value) }
    rows += record.versions.sorted(by: { $0.key < $1.key }).map { ("version: \($0.key)", $0.value) }
    for (k, v) in rows { h += "<dt>\(xml(k))</dt><dd>\(xml(v))</dd>\n" }
    h += "</dl>\n<p class=\"modeled\">Measured here: \(xml(p.measured.joined(separator: ", "))). Modeled: \(xml(p.modeled.joined(separator: ", "))).</p>\n"
    h += "</body></html>\n"
    return h
  }

  static func verdict(_ record: PlanRecord) -> String {
    let p = record.profile
    let e = record.evaluation
    let scope = "under the \(e.threatModel.rawValue) threat model, against \(e.attackers.map(\.title).joined(separator: ", ")) (\(e.seeds.count) seed\(e.seeds.count == 1 ? "" : "s") each), on \(record.data.heldOutImages) held-out images of \(record.data.heldOutPhotos) photos per seed at \(record.data.imageSize) px\(record.confirmation.map { " and confirmed at \($0.config.imageSize) px" } ?? "")"
    guard let chosen = record.chosenCut, let row = record.row(chosen) else {
      return "<p class=\"verdict warn\">No cut is private \(xml(scope)). Keep the whole model in the TEE: \(String(format: "%.1f", p.baseline.totalMs)) ms per request.</p>\n"
    }
    var s = "<p class=\"verdict\">Cut at <b>\(xml(chosen))</b>: "
    s += String(format: "%.1f ms per request against %.1f ms for the whole model in the TEE (", row.totalMs, p.baseline.totalMs) + xml(p.speedupStatement(row)) + ")"
    s += ". Private \(xml(scope)).</p>\n"
    if let v = record.verdict(chosen) {
      s += "<p>At this cut: " + v.measures.map { m in
        let t = m.threshold.map { String(format: " (threshold %.2f)", $0) } ?? " (reported only)"
        return String(format: "%@ %.3f, 95 %% bound %.3f%@, won by the %@", xml(m.measure), m.estimate.mean, m.estimate.upper, t, xml(m.worstAttacker.title))
      }.joined(separator: "; ") + ".</p>\n"
    }
    if let f = record.firstPassChoice {
      s += "<p class=\"warn\">The first pass (\(record.data.imageSize) px) chose \(xml(f)); at the deployed resolution it was not private, so the choice moved to \(xml(chosen)).</p>\n"
    }
    if !record.tiedCuts.isEmpty {
      s += "<p class=\"warn\">Within noise: \(record.tiedCuts.map(xml).joined(separator: ", ")) \(record.tiedCuts.count == 1 ? "is" : "are") undecided (the 95 % interval contains a threshold), so another run of this plan with other seeds may choose \(record.tiedCuts.count == 1 ? "it" : "one of them") instead of \(xml(chosen)).</p>\n"
    }
    if let f = record.fastestCut, f != chosen, let fr = record.row(f) {
      s += String(format: "<p>The fastest cut regardless of privacy is %@ at %.1f ms: privacy costs %.1f ms per request here%@.</p>\n", xml(f), fr.totalMs, row.totalMs - fr.totalMs, p.unstableSegments.isEmpty ? "" : " (runtime figures unstable: not to be decided on)")
    }
    return s
  }

  static func privacy(_ record: PlanRecord, folder: URL) -> String {
    let e = record.evaluation
    var h = "<h2>Privacy per cut</h2>\n"
    h += "<p>Attackers who see the feature map at a cut rebuild the input (\(xml(e.attackers.map(\.title).joined(separator: ", ")))); the white-box optimisation needs the head's weights and no data, the others learn from their own photos' feature maps. Each attack is scored on held-out images it never saw, with every measure; per measure the attacker with the highest 95 % bound decides (the bound is clustered by source photo and includes the spread across seeds). A cut is private only when every measure with a threshold is under it; <span class=\"undecided\">undecided</span> means the interval contains the threshold (within noise), and counts as not private.</p>\n"
    guard !record.privacy.isEmpty else { return h + "<p class=\"warn\">No cut was attacked.</p>\n" }
    h += "<table class=\"privacy\"><tr><th>cut</th><th>measure</th><th>threshold</th>"
    for kind in AttackerKind.allCases where e.attackers.contains(kind) { h += "<th>\(xml(kind.title)): mean (bound)</th>" }
    h += "<th>baseline</th><th>colour guess</th><th>status</th></tr>\n"
    for v in record.privacy.sorted(by: { $0.cutIndex < $1.cutIndex }) {
      for m in v.measures {
        h += "<tr\(v.cut == record.chosenCut ? " class=\"chosen\"" : "")><td class=\"name\">\(xml(v.cut))</td><td class=\"name\">\(xml(m.measure))</td><td>\(m.threshold.map { String(format: "%.2f", $0) } ?? "—")</td>"
        for kind in AttackerKind.allCases where e.attackers.contains(kind) {
          if let x = m.estimates[kind.rawValue] {
            let bold = kind == m.worstAttacker ? " style=\"font-weight:bold\"" : ""
            h += String(format: "<td%@>%.3f (%@)</td>", bold, x.mean, x.upper.isFinite ? String(format: "%.3f", x.upper) : "∞")
          } else {
            h += "<td>\(v.stoppedEarly ? "skipped" : "—")</td>"
          }
        }
        h += String(format: "<td>%.3f</td>", m.baseline)
        h += "<td>\(m.colourGuess.map { String(format: "%.3f", $0) } ?? "—")</td>"
        let undecidable = m.thresholdAsSet.map { String(format: "decides nothing: the colour guess reaches the threshold %.2f", $0) }
        h += "<td>\(m.status.map { "<span class=\"\($0.rawValue)\">\($0.rawValue)</span>" } ?? undecidable ?? "reported")</td></tr>\n"
      }
    }
    h += "</table>\n<p>Baseline: the trivial attacker (the mean training image for every image). Colour guess: a flat image of each original's own mean colour, which an attacker reads from any cut (recognition does not count an image this guess or the baseline already recognises). Skipped: the cut had already leaked beyond doubt.</p>\n"
    let cuts = record.profile.cuts.map(\.cut.name)
    for m in [SSIMMeasure.name, RecognitionMeasure.name, ReidentificationMeasure.name, FieldRecoveryMeasure.name]
    where record.privacy.contains(where: { $0.measure(m) != nil }) {
      let plot = LeakagePlot(
        model: record.model, measure: m, cuts: cuts, verdicts: record.privacy, threshold: e.thresholds[m], chosen: record.chosenCut)
      h += "<figure>\(plot.svg)<figcaption>Cuts without a point were not evaluated (the search evaluates as few as the budget '\(e.budget.rawValue)' needs).</figcaption></figure>\n"
    }
    if !record.confirmations.isEmpty {
      h += "<h3>At the deployed resolution</h3>\n<ul>\n"
      for v in record.confirmations { h += "<li>\(xml(v.statement))</li>\n" }
      h += "</ul>\n"
    }
    h += "<h3>Learning curves</h3>\n<p>Per attack: the training loss and, where the attacker keeps validation photos, the validation loss per epoch (the stopping rule reads it); for the optimisation, its objective per step.</p>\n"
    for v in (record.privacy + record.confirmations) where v.cut == record.chosenCut || v.cutIndex == record.privacy.map(\.cutIndex).max() {
      for a in v.attacks where !a.curve.isEmpty {
        h += "<figure>\(curve(a, cut: v.cut))</figure>\n"
      }
    }
    h += "<h3>Held-out originals (top row) and what each attacker rebuilt (bottom row)</h3>\n"
    // The first pass's attacks live in the attacks folder, the confirmation's at the deployed
    // resolution in one of their own (`PlanJob`): the same relative grid path in both.
    let passes = record.privacy.map { ($0, false) } + record.confirmations.map { ($0, true) }
    for (v, confirming) in passes.sorted(by: { $0.0.cutIndex < $1.0.cutIndex }) {
      for a in v.attacks where a.seed == v.attacks.first(where: { $0.attacker == a.attacker })?.seed {
        let ssim = a.measure(SSIMMeasure.name).map { String(format: ": SSIM %.3f", $0.mean) } ?? ""
        let caption = "\(xml(v.cut)), \(xml(a.attacker.title)), seed \(a.seed), \(a.imageSize) px\(ssim)"
        let gridFolder = record.attacksFolder + (confirming ? "-\(a.imageSize)px" : "")
        if let png = try? Data(contentsOf: folder.appendingPathComponent(gridFolder).appendingPathComponent(a.grid)) {
          h += "<figure><img class=\"grid\" alt=\"reconstructions at \(xml(v.cut))\" src=\"data:image/png;base64,\(png.base64EncodedString())\"><figcaption>\(caption)</figcaption></figure>\n"
        } else {
          h += "<p class=\"warn\">\(caption): the image grid \(xml(a.grid)) is missing from \(xml(folder.path)).</p>\n"
        }
      }
    }
    return h
  }

  /// The defence the plan was made under, and the cut × defence search with its frontier and
  /// the reconstructions per defended point.
  static func defences(_ record: PlanRecord, folder: URL) -> String {
    var h = ""
    if let d = record.defence {
      h += "<h2>Defence at the cut</h2>\n<p>Every verdict above is under <b>\(xml(d.defence.description))</b>, applied in the enclave before the map leaves and known to every attacker (the learning-based ones learned from defended maps; the white-box optimisation differentiated through the defence: its expectation for noise, straight through for quantisation, the known mask for pruning). Its cost at \(xml(d.utility.cut)): \(xml(d.utility.summary)); \(String(format: "%.3f", d.utility.defenceMs)) ms per map (measured natively); \(d.utility.encodedBytes) bytes per map on the wire as the enclave sends it (a quantised map as its codes), against \(d.utility.mapBytes) as FP32.</p>\n"
      if let why = record.notDeployed { h += "<p class=\"warn\">Not deployed: \(xml(why))</p>\n" }
    }
    guard let f = record.frontier else { return h }
    h += "<h2>Defences searched: cut × defence</h2>\n"
    h += "<p>Kinds \(xml(f.kinds.map(\.rawValue).joined(separator: ", "))) at the cuts before the undefended choice (\(xml(f.undefendedChoice ?? "none"))), each kind's parameters from the weakest: a parameter whose top-1 agreement falls under the floor \(f.utilityFloor) is not attacked and ends the kind at that cut; a private one ends it too. Leakage is under attackers who know the defence. \(f.notes.map(xml).joined(separator: " "))</p>\n"
    h += "<table class=\"frontier\"><tr><th>cut</th><th>defence</th><th>latency ms</th><th>top-1 agreement (95 % lower)</th><th>SSIM bound</th><th>verdict</th><th>bytes per map (encoded / FP32)</th><th>frontier</th></tr>\n"
    for p in f.points {
      let cls = p.cut == f.earliestDefended?.cut && p.defence == f.earliestDefended?.defence ? " class=\"chosen\"" : ""
      let verdict = p.belowFloor ? "<span class=\"leaks\">under the utility floor</span>" : p.status.map { "<span class=\"\($0.rawValue)\">\($0.rawValue)</span>" } ?? "—"
      h += "<tr\(cls)><td class=\"name\">\(xml(p.cut))</td><td class=\"name\">\(xml(p.defence ?? "none"))</td>"
      h += String(format: "<td>%.1f</td><td>%.3f (%.3f)</td><td>%@</td>", p.latencyMs, p.agreement, p.agreementLower, p.ssimBound.map { String(format: "%.3f", $0) } ?? "—")
      h += "<td>\(verdict)</td><td>\(p.encodedBytes) / \(p.mapBytes)</td><td>\(p.onFrontier ? "★" : "")</td></tr>\n"
    }
    h += "</table>\n"
    if let b = f.earliestDefended {
      h += "<p class=\"verdict\">Earliest private defended cut: <b>\(xml(b.cut))</b> with <b>\(xml(b.defence ?? ""))</b> (top-1 agreement \(String(format: "%.3f", b.agreement))), against the undefended choice \(xml(f.undefendedChoice ?? "none")). The paper's rule stays this plan's choice; plan again with <code>--defence \(xml(b.defence ?? ""))</code> to deploy it.</p>\n"
    } else {
      h += "<p>No defended cut before \(xml(f.undefendedChoice ?? "the deepest cut")) is private under the adaptive attackers and above the utility floor.</p>\n"
    }
    h += frontierPlot(f)
    h += "<h3>Reconstructions per defence (the attacker that decided SSIM)</h3>\n"
    for p in f.points where p.defence != nil {
      guard let grid = p.grid else { continue }
      let caption = "\(xml(p.cut)) with \(xml(p.defence!))" + (p.ssimBound.map { String(format: ": SSIM bound %.3f", $0) } ?? "")
      if let png = try? Data(contentsOf: folder.appendingPathComponent(grid)) {
        h += "<figure><img class=\"grid\" alt=\"reconstructions\" src=\"data:image/png;base64,\(png.base64EncodedString())\"><figcaption>\(caption)</figcaption></figure>\n"
      } else {
        h += "<p class=\"warn\">\(caption): the image grid \(xml(grid)) is missing from \(xml(folder.path)).</p>\n"
      }
    }
    return h
  }

  /// Latency against SSIM bound of the attacked points: undefended ones grey, defended ones
  /// coloured by kind, frontier points ringed.
  static func frontierPlot(_ f: DefenceFrontier) -> String {
    let points = f.points.filter { $0.ssimBound != nil && $0.ssimBound!.isFinite }
    guard points.count >= 2 else { return "" }
    let (w, hgt, l, r, t, b) = (640.0, 320.0, 60.0, 20.0, 20.0, 45.0)
    let xs = points.map(\.latencyMs)
    let ys = points.map { $0.ssimBound! }
    let (x0, x1) = (xs.min()!, max(xs.max()!, xs.min()! + 1e-6))
    let (y0, y1) = (min(0, ys.min()!), max(ys.max()!, 0.05))
    func x(_ v: Double) -> Double { l + (w - l - r) * (v - x0) / (x1 - x0) }
    func y(_ v: Double) -> Double { t + (hgt - t - b) * (1 - (v - y0) / (y1 - y0)) }
    let colours = ["gaussian": "#1f77b4", "laplace": "#17becf", "quant": "#ff7f0e", "prune": "#2ca02c"]
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(hgt))\" font-size=\"11\">"
    s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\"/>", l, hgt - b, w - r, hgt - b)
    s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\"/>", l, t, l, hgt - b)
    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">latency per request, ms (head in the TEE modeled)</text>", (l + w - r) / 2, hgt - 8)
    s += String(format: "<text x=\"12\" y=\"%.1f\" transform=\"rotate(-90 12 %.1f)\" text-anchor=\"middle\">SSIM bound</text>", (t + hgt - b) / 2, (t + hgt - b) / 2)
    for v in [x0, x1] { s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.1f</text>", x(v), hgt - b + 14, v) }
    for v in [y0, y1] { s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>", l - 4, y(v) + 4, v) }
    for p in points {
      let kind = p.defence.map { String($0.split(separator: ":")[0]) }
      let colour = kind.flatMap { colours[$0] } ?? "#999"
      s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%@\"%@><title>%@ %@</title></circle>", x(p.latencyMs), y(p.ssimBound!), colour,
        p.onFrontier ? " stroke=\"#000\" stroke-width=\"1.5\"" : "", xml(p.cut), xml(p.defence ?? "none"))
    }
    s += "</svg>"
    return "<figure>\(s)<figcaption>Each attacked point: grey undefended, blue Gaussian noise, cyan Laplace, orange quantisation, green pruning; ringed: on the Pareto frontier of latency, SSIM bound and top-1 agreement.</figcaption></figure>\n"
  }

  /// A small line chart of one attack's curve.
  static func curve(_ a: AttackRecord, cut: String) -> String {
    let (w, hgt) = (420.0, 160.0)
    let (l, r, t, b) = (50.0, 10.0, 24.0, 28.0)
    let values = a.curve.flatMap { [$0.loss] + ($0.validation.map { [$0] } ?? []) }.filter(\.isFinite)
    guard let lo = values.min(), let hi = values.max(), let last = a.curve.last?.at, let first = a.curve.first?.at else { return "" }
    let span = max(hi - lo, 1e-9)
    func x(_ at: Int) -> Double { l + (w - l - r) * Double(at - first) / Double(max(last - first, 1)) }
    func y(_ v: Double) -> Double { t + (hgt - t - b) * (1 - (v - lo) / span) }
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(hgt))\" font-family=\"sans-serif\" font-size=\"10\">"
    s += "<text x=\"\(l)\" y=\"14\" font-size=\"11\">\(xml(cut)), \(xml(a.attacker.title)), seed \(a.seed)\(a.converged ? "" : " (not converged)")</text>"
    s += String(format: "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.3g</text><text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.3g</text>", l - 4, y(hi) + 4, hi, l - 4, y(lo) + 4, lo)
    s += "<text x=\"\(w - r)\" y=\"\(hgt - 6)\" text-anchor=\"end\">\(a.attacker == .optimisation ? "step" : "epoch") \(last)</text>"
    let train = a.curve.map { String(format: "%.1f,%.1f", x($0.at), y($0.loss)) }.joined(separator: " ")
    s += "<polyline points=\"\(train)\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>"
    let validation = a.curve.compactMap { p in p.validation.map { String(format: "%.1f,%.1f", x(p.at), y($0)) } }
    if !validation.isEmpty {
      s += "<polyline points=\"\(validation.joined(separator: " "))\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"4 2\"/>"
      s += "<text x=\"\(l + 4)\" y=\"\(hgt - 6)\" fill=\"#d62728\">validation (dashed)</text>"
    }
    return s + "</svg>"
  }
}
