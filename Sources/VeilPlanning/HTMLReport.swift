import Foundation

/// `report.html`: one self-contained page (inline SVG, PNG grids as data URIs, no script, no
/// network) that a person reads offline: the verdict first, then the runtime, the privacy
/// evidence, the deployment and the settings it all came from.
public enum HTMLReport {
  /// Renders `record`; grid PNGs named in its privacy points are read relative to `folder`
  /// (a missing grid is said so in the page, not silently dropped).
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
      .warn{border-left-color:#d62728;background:#fbf1f1}
      .modeled{color:#b15928;font-style:italic} figure{margin:1em 0;overflow-x:auto} figcaption{font-size:.85em;color:#555}
      img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}
      pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
      dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dt{font-weight:bold}
      </style></head><body>
      <h1>Where to cut \(xml(record.model))</h1>

      """
    h += verdict(record)
    // Runtime.
    h += "<h2>Runtime per cut</h2>\n"
    h += "<p>Head in the TEE (<span class=\"modeled\">\(xml(teeNote))</span>) + transfer of the feature map + tail on the accelerator (\(xml(p.accelerator))), against the whole model in the TEE. Link: \(xml(p.link)). Medians of \(p.runs) runs, batch \(p.batch), \(p.threads) threads.</p>\n"
    h += "<table class=\"runtime\"><tr><th>#</th><th>cut</th><th>feature</th><th>head in TEE ms\(modeled ? " (modeled)" : "")</th><th>transfer ms</th><th>tail ms</th><th>partitioned ms\(modeled ? " (modeled)" : "")</th><th>full enclave ms\(modeled ? " (modeled)" : "")</th><th>speed-up %</th><th>SSIM</th></tr>\n"
    for c in p.cuts {
      let cls = [c.cut.name == record.chosenCut ? "chosen" : nil, c.cut.name == record.fastestCut ? "fastest" : nil].compactMap { $0 }
      let ssim = record.privacy.filter { $0.cut == c.cut.name }.map { String(format: "%.3f", $0.ssimMean) }.joined(separator: " / ")
      h += "<tr\(cls.isEmpty ? "" : " class=\"\(cls.joined(separator: " "))\"")><td>\(c.cut.index)</td><td class=\"name\">\(xml(c.cut.name))</td><td>\(c.cut.shape.dropFirst().map(String.init).joined(separator: "×"))</td>"
      h += String(format: "<td>%.1f</td><td>%.2f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td>", c.headTEEMs, c.transferMs, c.tailMs, c.totalMs, p.baseline.totalMs, c.speedupPercent)
      h += "<td>\(ssim.isEmpty ? "—" : ssim)</td></tr>\n"
    }
    h += "</table>\n<figure>\(p.svg)<figcaption>Latency per request, stacked: head in the TEE, transfer, tail. \(modeled ? "Hatched parts are modeled." : "")</figcaption></figure>\n"
    // Privacy.
    h += "<h2>Privacy per cut</h2>\n"
    h += "<p>An attacker who sees the feature map at a cut trains a network (\(xml(record.attacker))) to rebuild the input, on \(record.data.trainImages) training images; the rebuilt held-out images (\(record.data.heldOutImages), never seen in training) are scored with SSIM (1 = identical) and PSNR. A cut is private enough when the 95 % upper bound of its mean SSIM is below the threshold <b>\(String(format: "%.2f", record.threshold))</b>.</p>\n"
    if record.privacy.isEmpty {
      h += "<p class=\"verdict warn\">No cut was attacked.</p>\n"
    } else {
      h += "<table class=\"privacy\"><tr><th>cut</th><th>attacker</th><th>SSIM mean</th><th>± s.d.</th><th>95 % upper bound</th><th>PSNR dB</th><th>held-out</th><th>train</th><th>seconds</th></tr>\n"
      for q in record.privacy.sorted(by: { ($0.cutIndex, $0.attacker) < ($1.cutIndex, $1.attacker) }) {
        h += "<tr\(q.cut == record.chosenCut ? " class=\"chosen\"" : "")><td>\(xml(q.cut))</td><td class=\"name\">\(xml(q.attacker))</td>"
        h += String(format: "<td>%.3f</td><td>%.3f</td><td>%.3f %@</td><td>%.1f ± %.1f</td><td>%d</td><td>%d</td><td>%.0f</td></tr>\n", q.ssimMean, q.ssimStd, q.ssimUpper, q.ssimUpper < record.threshold ? "✓" : "✗", q.psnrMean, q.psnrStd, q.heldOut, q.trainImages, q.seconds)
      }
      h += "</table>\n"
      let plot = PrivacyPlot(model: record.model, cuts: p.cuts.map(\.cut.name), points: record.privacy, threshold: record.threshold, chosen: record.chosenCut)
      h += "<figure>\(plot.svg)<figcaption>Cuts without a point were not attacked (the search attacks as few as the budget '\(record.budget.rawValue)' needs).</figcaption></figure>\n"
      h += "<h3>Held-out originals (top row) and what the attacker rebuilt (bottom row)</h3>\n"
      for q in record.privacy.sorted(by: { ($0.cutIndex, $0.attacker) < ($1.cutIndex, $1.attacker) }) {
        let caption = String(format: "%@, %@: SSIM %.3f", xml(q.cut), xml(q.attacker), q.ssimMean)
        if let g = q.gridPNG, let png = try? Data(contentsOf: folder.appendingPathComponent(g)) {
          h += "<figure><img class=\"grid\" alt=\"reconstructions at \(xml(q.cut))\" src=\"data:image/png;base64,\(png.base64EncodedString())\"><figcaption>\(caption)</figcaption></figure>\n"
        } else {
          h += "<p class=\"warn\">\(caption): the image grid \(xml(q.gridPNG ?? "(none)")) is missing from \(xml(folder.path)).</p>\n"
        }
      }
    }
    // Deployment.
    h += "<h2>Deployment</h2>\n"
    if let d = record.deployment {
      h += "<dl><dt>inside the TEE</dt><dd>\(xml(d.enclave))</dd><dt>on the accelerator</dt><dd>\(xml(d.accelerator))</dd><dt>evidence</dt><dd>\(xml(d.evidenceMode))</dd></dl>\n"
      h += "<p>Files next to <code>plan.json</code>:</p><ul>\n"
      for (k, v) in d.files.sorted(by: { $0.key < $1.key }) { h += "<li>\(xml(k)): <code>\(xml(v))</code></li>\n" }
      h += "</ul>\n<p>The policy every client must pin (<code>veil infer --policy</code>):</p>\n<pre>\(xml(d.clientPolicy))</pre>\n"
    } else {
      h += "<p class=\"verdict warn\">Nothing to deploy: no cut meets the threshold. Run the whole model in the TEE, or raise the threshold knowingly.</p>\n"
    }
    // Settings.
    h += "<h2>Settings, machine and versions</h2>\n<dl>\n"
    var rows: [(String, String)] = [
      ("model", record.model), ("model digest (SHA-256)", record.modelDigest),
      ("data", "\(record.data.origin): \(record.data.path) — \(record.data.images) images from \(record.data.sourceImages) sources, \(record.data.imageSize)×\(record.data.imageSize)"),
      ("threshold", String(format: "%.3f", record.threshold)), ("attacker", record.attacker), ("budget", record.budget.rawValue),
      ("TEE", teeNote), ("machine", p.machine), ("created", record.created),
    ]
    rows += record.settings.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value) }
    rows += record.seeds.sorted(by: { $0.key < $1.key }).map { ("seed: \($0.key)", String($0.value)) }
    rows += record.versions.sorted(by: { $0.key < $1.key }).map { ("version: \($0.key)", $0.value) }
    for (k, v) in rows { h += "<dt>\(xml(k))</dt><dd>\(xml(v))</dd>\n" }
    h += "</dl>\n<p class=\"modeled\">Measured here: \(xml(p.measured.joined(separator: ", "))). Modeled: \(xml(p.modeled.joined(separator: ", "))).</p>\n"
    h += "</body></html>\n"
    return h
  }

  static func verdict(_ record: PlanRecord) -> String {
    let p = record.profile
    guard let chosen = record.chosenCut, let row = record.row(chosen) else {
      let best = record.privacy.min { $0.ssimUpper < $1.ssimUpper }
      return "<p class=\"verdict warn\">No cut keeps the attacker's SSIM under \(String(format: "%.2f", record.threshold))\(best.map { String(format: " (lowest upper bound: %.3f at %@)", $0.ssimUpper, xml($0.cut)) } ?? ""). Keep the whole model in the TEE: \(String(format: "%.1f", p.baseline.totalMs)) ms per request.</p>\n"
    }
    let q = record.privacy.filter { $0.cut == chosen }.max { $0.ssimUpper < $1.ssimUpper }
    var s = "<p class=\"verdict\">Cut at <b>\(xml(chosen))</b>: "
    s += String(format: "%.1f ms per request against %.1f ms for the whole model in the TEE (speed-up %.1f %%)", row.totalMs, p.baseline.totalMs, row.speedupPercent)
    if let q { s += String(format: "; the attacker's SSIM is %.3f (upper bound %.3f) under the threshold %.2f", q.ssimMean, q.ssimUpper, record.threshold) }
    s += ".</p>\n"
    if let f = record.fastestCut, f != chosen, let fr = record.row(f) {
      s += String(format: "<p>The fastest cut regardless of privacy is %@ at %.1f ms: privacy costs %.1f ms per request here.</p>\n", xml(f), fr.totalMs, row.totalMs - fr.totalMs)
    }
    return s
  }
}
