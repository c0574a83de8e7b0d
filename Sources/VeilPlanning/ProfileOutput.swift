import Foundation
import VeilTEE

/// The profile as a person or a script reads it: the paper-style table, CSV, and an SVG plot.
extension ProfileReport {
  /// Whether the TEE figures are modeled (no TEE was detected).
  var teeModeled: Bool { teeTime == "modeled" }

  /// Whether each cut was timed run by run beside the whole model (`PacedTimes`); profiles
  /// made before that (each cut's `wholeBesideMs` nil) are timed again by the planner.
  public var isPaced: Bool { cuts.allSatisfy { $0.wholeBesideMs != nil } }

  /// The segments that stayed unstable (empty for a stable profile, or one older than the check).
  public var unstableSegments: [UnstableSegment] { unstable ?? [] }

  /// The first line of every output of an unstable profile ("PROFILE UNSTABLE: …"), or nil.
  public var unstableLine: String? {
    let u = unstableSegments
    guard !u.isEmpty else { return nil }
    let shown = u.prefix(4).map { "\($0.segment): \($0.reason)" }
    let more = u.count > 4 ? "; and \(u.count - 4) more (the profile's `unstable` list)" : ""
    let machine = conditions.map { c in c.summary.isEmpty ? "" : " (\(c.summary))" } ?? ""
    return "PROFILE UNSTABLE: " + shown.joined(separator: "; ") + more + machine
      + ". Its runtime figures are not to be decided on: profile again when the machine is quiet (`veil plan --reprofile`, `veil profile`), or with more --runs."
  }

  /// "%.1f … %.1f" of a band, or "" when there is none.
  static func range(_ b: ModeledBand?, _ format: String = "%.1f") -> String {
    b.map { String(format: "\(format) … \(format)", $0.low, $0.high) } ?? ""
  }

  /// A cut's speed-up as a person reads it: "speed-up 36.1 % modeled (band −2.0 … 41.0 %: its
  /// sign depends on the cost model's runtime pages)", and whether the runtime is unstable.
  public func speedupStatement(_ c: CutProfile) -> String {
    var s = String(format: "speed-up %.1f %%", c.speedupPercent) + (teeModeled ? " modeled" : "")
    if let b = c.speedupBand {
      s += " (band " + Self.range(b) + " %"
      if let flips = c.speedupSignDependsOn, !flips.isEmpty {
        let names = flips == ["together"] ? "uncertain parameters taken together" : flips.map(TEEPreset.parameterTitle).joined(separator: " and ")
        s += ": its sign depends on the cost model's " + names
      }
      s += ")"
    }
    if !unstableSegments.isEmpty { s += "; runtime figures UNSTABLE (see the first line)" }
    return s
  }

  /// The paper's table (full enclave, partitioned, speed-up) for every cut, with the parts of
  /// the partitioned time and the modeled figures' bands, followed by the fastest cut. An
  /// unstable profile says so on the first line.
  public var table: String {
    let tee = teeModeled ? "TEE, modeled" : teeTime
    var lines: [String] = []
    if let u = unstableLine { lines.append(u) }
    lines.append("\(model), batch \(batch), \(threads) threads, preset \(preset.name) (\(tee)); accelerator \(accelerator)")
    lines.append(
      String(
        format: "full model in the TEE: %.1f ms%@ (native %.1f ms; paging %.1f ms for %d page swaps; working set %.1f MiB)",
        baseline.totalMs, baseline.totalBand.map { " modeled, band " + Self.range($0) + " ms" } ?? "", baseline.nativeMs,
        baseline.tee.pagingSeconds * 1e3, baseline.tee.pageSwaps, Double(baseline.tee.workingSetPages) * 4 / 1024))
    if let c = conditions, !c.summary.isEmpty { lines.append("while profiling: " + c.summary) }
    let bands = cuts.contains { $0.speedupBand != nil }
    var header = ["#", "cut", "feature", "head TEE ms", "(swaps)", "transfer ms", "tail ms", "partitioned ms", "full enclave ms", "speed-up %"]
    if bands { header += ["partitioned band", "speed-up band"] }
    var rows = [header]
    for c in cuts {
      var row = [
        "\(c.cut.index)", c.cut.name, "\(c.cut.shape.dropFirst().map(String.init).joined(separator: "×"))",
        String(format: "%.1f", c.headTEEMs), "\(c.headTEE.pageSwaps)", String(format: "%.2f", c.transferMs),
        String(format: "%.1f", c.tailMs), String(format: "%.1f", c.totalMs), String(format: "%.1f", baseline.totalMs),
        String(format: "%.1f", c.speedupPercent),
      ]
      if bands { row += [Self.range(c.totalBand), Self.range(c.speedupBand) + (c.speedupSignDependsOn?.isEmpty == false ? " ±" : "")] }
      rows.append(row)
    }
    let widths = header.indices.map { k in rows.map { $0[k].count }.max() ?? 0 }
    for r in rows {
      lines.append(
        r.enumerated().map { k, cell in
          k <= 2 ? cell.padding(toLength: widths[k], withPad: " ", startingAt: 0)
            : String(repeating: " ", count: widths[k] - cell.count) + cell
        }.joined(separator: "  "))
    }
    if let f = fastestCut, let c = cuts.first(where: { $0.cut.name == f }) {
      lines.append(
        String(format: "fastest: %@ — %.1f ms partitioned against %.1f ms in the TEE whole (", f, c.totalMs, baseline.totalMs)
          + speedupStatement(c) + ")")
    }
    if bands {
      lines.append(
        "bands: low … high of the modeled figures over the cost model's uncertain parameters (docs/tee-cost-model.md#band); ± marks a speed-up whose sign changes within its band")
    }
    lines.append("measured here: head native, transfer seal/open, tail; modeled: " + modeled.joined(separator: ", "))
    return lines.joined(separator: "\n")
  }

  /// One row per cut, then the baseline row; columns say which figures are modeled.
  public var csv: String {
    let m = teeModeled ? "_modeled" : ""
    var lines = [
      "index,cut,tensor,shape,feature_bytes,head_parameter_bytes,head_flops,head_native_ms,head_tee_ms\(m),head_page_swaps\(m),transfer_seal_ms,transfer_open_ms,transfer_wire_ms_modeled,tail_ms,tail_roofline_ms_modeled,total_ms\(m),full_enclave_ms\(m),speedup_percent\(m),total_ms_low_modeled,total_ms_high_modeled,speedup_percent_low_modeled,speedup_percent_high_modeled,head_spread,tail_spread,whole_beside_ms"
    ]
    func q(_ s: String) -> String { s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s }
    for c in cuts {
      let fields: [String] = [
        "\(c.cut.index)", q(c.cut.name), q(c.cut.tensor), q(c.cut.shape.map(String.init).joined(separator: "x")), "\(c.cut.bytes)",
        "\(c.cut.headParameterBytes)", "\(c.cut.headFlops)", f(c.headNativeMs), f(c.headTEEMs), "\(c.headTEE.pageSwaps)",
        f(c.transferSealMs), f(c.transferOpenMs), f(c.transferWireMs), f(c.tailMs), c.tailRooflineMs.map(f) ?? "",
        f(c.totalMs), f(baseline.totalMs), f(c.speedupPercent), c.totalBand.map { f($0.low) } ?? "", c.totalBand.map { f($0.high) } ?? "",
        c.speedupBand.map { f($0.low) } ?? "", c.speedupBand.map { f($0.high) } ?? "", c.headRuns.map { f($0.spread) } ?? "",
        c.tailRuns.map { f($0.spread) } ?? "", c.wholeBesideMs.map(f) ?? "",
      ]
      lines.append(fields.joined(separator: ","))
    }
    lines.append(
      ([
        "", "full_enclave", "", "", "", "", "", f(baseline.nativeMs), f(baseline.totalMs), "\(baseline.tee.pageSwaps)", "", "", "", "", "",
        f(baseline.totalMs), f(baseline.totalMs), "0", baseline.totalBand.map { f($0.low) } ?? "", baseline.totalBand.map { f($0.high) } ?? "",
        "", "", baseline.nativeRuns.map { f($0.spread) } ?? "", "", "",
      ])
      .joined(separator: ","))
    return lines.joined(separator: "\n") + "\n"
  }

  private func f(_ v: Double) -> String { String(format: "%.4f", v) }

  /// Latency per cut as stacked bars (head in the TEE, transfer, tail) with the full-enclave
  /// baseline as a dashed line; modeled parts are hatched and say so in the legend.
  public var svg: String {
    let width = max(860, 120 + cuts.count * 44)  // the legend needs about 760 px
    let height = 420
    let left = 70.0, right = 20.0, top = 50.0, bottom = 110.0
    let plotW = Double(width) - left - right
    let plotH = Double(height) - top - bottom
    let peak = max(baseline.totalBand?.high ?? baseline.totalMs, cuts.map { $0.totalBand?.high ?? $0.totalMs }.max() ?? 0) * 1.08
    // A round tick step (1, 2 or 5 × 10^k) giving about five grid lines.
    let rough = max(peak, 1e-6) / 5
    let magnitude = pow(10, floor(log10(rough)))
    let tickStep = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rough } ?? rough
    let ticks = Int((peak / tickStep).rounded(.up))
    let maxMs = Double(ticks) * tickStep
    func y(_ ms: Double) -> Double { top + plotH - ms / maxMs * plotH }
    let slot = plotW / Double(max(cuts.count, 1))
    let bar = min(32, slot * 0.7)
    var s = """
      <svg class="plot" xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" font-family="sans-serif" font-size="11">
      <defs><pattern id="modeled" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#d62728"/><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/></pattern></defs>
      <text x="\(width / 2)" y="18" text-anchor="middle" font-size="14">\(xml(model)): latency per cut, preset \(preset.name)\(teeModeled ? " (TEE time modeled)" : "")\(cuts.contains { $0.totalBand != nil } ? "; whiskers: the modeled total's band" : "")</text>

      """
    // Axis and grid.
    for k in 0...ticks {
      let v = tickStep * Double(k)
      s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, y(v), Double(width) - right, y(v))
      s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 6, y(v) + 4, tickStep < 1 ? String(format: "%.2g", v) : String(format: "%.0f", v))
    }
    s += String(format: "<text x=\"16\" y=\"%.1f\" transform=\"rotate(-90 16 %.1f)\" text-anchor=\"middle\">ms per request</text>\n", top + plotH / 2, top + plotH / 2)
    let headFill = teeModeled ? "url(#modeled)" : "#d62728"
    for (k, c) in cuts.enumerated() {
      let x = left + slot * (Double(k) + 0.5) - bar / 2
      var base = 0.0
      for (ms, fill, what) in [(c.headTEEMs, headFill, "head in TEE"), (c.transferMs, "#ff7f0e", "transfer"), (c.tailMs, "#1f77b4", "tail")] {
        s += String(
          format: "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\"><title>%@ %@: %.2f ms</title></rect>\n",
          x, y(base + ms), bar, max(0, y(base) - y(base + ms)), fill, xml(c.cut.name), what, ms)
        base += ms
      }
      let lx = x + bar / 2
      if let b = c.totalBand {
        // The band of the modeled total over the cost model's uncertain parameters.
        s += String(
          format: "<path class=\"band\" d=\"M%.1f %.1fH%.1fM%.1f %.1fV%.1fM%.1f %.1fH%.1f\" stroke=\"#000\" fill=\"none\"><title>%@ partitioned, modeled: band %.2f … %.2f ms</title></path>\n",
          lx - 4, y(b.low), lx + 4, lx, y(b.low), y(b.high), lx - 4, y(b.high), lx + 4, xml(c.cut.name), b.low, b.high)
      }
      s += String(
        format: "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-50 %.1f %.1f)\" text-anchor=\"end\">%@</text>\n", lx,
        top + plotH + 12, lx, top + plotH + 12, xml(c.cut.name))
    }
    s += String(
      format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\" stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/>\n",
      left, y(baseline.totalMs), Double(width) - right, y(baseline.totalMs))
    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">full model in TEE: %.0f ms</text>\n", Double(width) - right, y(baseline.totalMs) - 4, baseline.totalMs)
    // Legend.
    let ly = Double(height) - 18
    var lx = left
    for (fill, text) in [(headFill, teeModeled ? "head in TEE (modeled)" : "head in TEE"), ("#ff7f0e", "transfer (seal/open measured, wire modeled)"), ("#1f77b4", "tail on accelerator (measured)")] {
      s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%@\"/><text x=\"%.1f\" y=\"%.1f\">%@</text>\n", lx, ly - 10, fill, lx + 16, ly, text)
      lx += 16 + Double(text.count) * 6.2 + 18
    }
    s += "</svg>\n"
    return s
  }
}

func xml(_ s: String) -> String {
  s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
