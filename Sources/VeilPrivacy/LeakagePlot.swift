import Foundation

/// One measure against the cut: per attacker its mean over seeds and held-out images with a
/// bar up to its clustered 95 % upper bound, the threshold as a dashed line, the chosen cut's
/// column shaded. Measures on [0, 1] (SSIM, recognition, re-identification, fields).
public struct LeakagePlot {
  public var model: String
  public var measure: String
  /// Every candidate cut in order, evaluated or not, so the x axis is the model's.
  public var cuts: [String]
  public var verdicts: [CutVerdict]
  public var threshold: Double?
  public var chosen: String?

  public init(model: String, measure: String, cuts: [String], verdicts: [CutVerdict], threshold: Double?, chosen: String?) {
    self.model = model
    self.measure = measure
    self.cuts = cuts
    self.verdicts = verdicts
    self.threshold = threshold
    self.chosen = chosen
  }

  static let titles = [
    SSIMMeasure.name: "SSIM (1 = perfect rebuild)", RecognitionMeasure.name: "recognised (share of images)",
    ReidentificationMeasure.name: "re-identified (share of images)", FieldRecoveryMeasure.name: "fields recovered (share)",
  ]

  public var svg: String {
    let width = max(860, 120 + cuts.count * 44)
    let height = 400
    let left = 60.0, right = 20.0, top = 46.0, bottom = 110.0
    let plotW = Double(width) - left - right
    let plotH = Double(height) - top - bottom
    func y(_ v: Double) -> Double { top + plotH - min(max(v, 0), 1) * plotH }
    let slot = plotW / Double(max(cuts.count, 1))
    func x(_ k: Int) -> Double { left + slot * (Double(k) + 0.5) }
    let title = Self.titles[measure] ?? measure
    var s = """
      <svg class="plot" xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" font-family="sans-serif" font-size="11">
      <text x="\(width / 2)" y="18" text-anchor="middle" font-size="14">\(escape(model)): \(escape(title)) per cut, held-out images</text>

      """
    if let c = chosen, let k = cuts.firstIndex(of: c) {
      s += String(
        format: "<rect class=\"chosen\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#2ca02c\" fill-opacity=\"0.18\"><title>chosen cut %@</title></rect>\n",
        x(k) - slot / 2, top, slot, plotH, escape(c))
    }
    for k in 0...5 {
      let v = Double(k) / 5
      s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, y(v), Double(width) - right, y(v))
      s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", left - 6, y(v) + 4, v)
    }
    s += String(
      format: "<text x=\"16\" y=\"%.1f\" transform=\"rotate(-90 16 %.1f)\" text-anchor=\"middle\">%@</text>\n", top + plotH / 2,
      top + plotH / 2, escape(title))
    for (k, name) in cuts.enumerated() {
      s += String(
        format: "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-50 %.1f %.1f)\" text-anchor=\"end\"%@>%@</text>\n", x(k), top + plotH + 12,
        x(k), top + plotH + 12, name == chosen ? " font-weight=\"bold\"" : "", escape(name.count > 28 ? "…" + name.suffix(27) : name))
    }
    if let threshold {
      s += String(
        format: "<line class=\"threshold\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/>\n",
        left, y(threshold), Double(width) - right, y(threshold))
      s += String(
        format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#d62728\">threshold %.2f</text>\n", Double(width) - right,
        y(threshold) - 4, threshold)
    }
    // One series per attacker.
    let colours = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b"]
    let attackers = AttackerKind.allCases.filter { kind in verdicts.contains { $0.measure(measure)?.estimates[kind.rawValue] != nil } }
    for (a, kind) in attackers.enumerated() {
      let colour = colours[a % colours.count]
      let offset = (Double(a) - Double(attackers.count - 1) / 2) * 8
      let series = verdicts.compactMap { v -> (Int, LeakageEstimate, CutVerdict)? in
        guard let k = cuts.firstIndex(of: v.cut), let e = v.measure(measure)?.estimates[kind.rawValue] else { return nil }
        return (k, e, v)
      }.sorted { $0.0 < $1.0 }
      if series.count > 1 {
        let path = series.map { String(format: "%.1f,%.1f", x($0.0) + offset, y($0.1.mean)) }
        s += "<polyline points=\"\(path.joined(separator: " "))\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\"/>\n"
      }
      for (k, e, v) in series {
        let cx = x(k) + offset
        if e.upper.isFinite {
          s += String(
            format: "<line class=\"errorbar\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-width=\"1.5\"/>\n", cx,
            y(e.mean), cx, y(e.upper), colour)
          s += String(format: "<path d=\"M%.1f %.1fl4 -6h-8z\" fill=\"%@\"/>\n", cx, y(e.upper), colour)
        }
        s += String(
          format: "<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"%@\"><title>%@, %@: %.3f (95 %% bound %.3f; %d images, %d photo clusters, %d seed(s))</title></circle>\n",
          cx, y(e.mean), colour, escape(v.cut), escape(kind.title), e.mean, e.upper, e.images, e.clusters, e.seeds)
      }
    }
    let ly = Double(height) - 18
    var lx = left
    var entries = attackers.enumerated().map { (colours[$0.offset % colours.count], "\($0.element.title): mean, ▼ 95 % bound") }
    if let c = chosen { entries.append(("#2ca02c", "chosen: \(c)")) }
    for (fill, text) in entries {
      s += String(
        format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%@\"/><text x=\"%.1f\" y=\"%.1f\">%@</text>\n", lx, ly - 10,
        fill, lx + 16, ly, escape(text))
      lx += 16 + Double(text.count) * 6.2 + 18
    }
    s += "</svg>\n"
    return s
  }
}

/// Text for XML and HTML.
public func escape(_ s: String) -> String {
  s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    .replacingOccurrences(of: "\"", with: "&quot;")
}
