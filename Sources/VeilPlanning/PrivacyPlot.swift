import Foundation

/// SSIM against cut: the attacked cuts' mean SSIM with ±1 standard deviation bars and the upper
/// bound the choice uses, the threshold as a dashed line, and the chosen cut's column shaded.
public struct PrivacyPlot {
  public var model: String
  /// Every candidate cut in order, attacked or not, so the x axis is the profile's.
  public var cuts: [String]
  public var points: [PrivacyPoint]
  public var threshold: Double
  public var chosen: String?

  public init(model: String, cuts: [String], points: [PrivacyPoint], threshold: Double, chosen: String?) {
    self.model = model
    self.cuts = cuts
    self.points = points
    self.threshold = threshold
    self.chosen = chosen
  }

  public var svg: String {
    let width = max(860, 120 + cuts.count * 44)
    let height = 400
    let left = 60.0, right = 20.0, top = 46.0, bottom = 110.0
    let plotW = Double(width) - left - right
    let plotH = Double(height) - top - bottom
    func y(_ v: Double) -> Double { top + plotH - min(max(v, 0), 1) * plotH }
    let slot = plotW / Double(max(cuts.count, 1))
    func x(_ k: Int) -> Double { left + slot * (Double(k) + 0.5) }
    var s = """
      <svg class="plot" xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" font-family="sans-serif" font-size="11">
      <text x="\(width / 2)" y="18" text-anchor="middle" font-size="14">\(xml(model)): SSIM of the attacker's reconstructions per cut (held-out images)</text>

      """
    if let c = chosen, let k = cuts.firstIndex(of: c) {
      s += String(
        format: "<rect class=\"chosen\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#2ca02c\" fill-opacity=\"0.18\"><title>chosen cut %@</title></rect>\n",
        x(k) - slot / 2, top, slot, plotH, xml(c))
    }
    for k in 0...5 {
      let v = Double(k) / 5
      s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, y(v), Double(width) - right, y(v))
      s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", left - 6, y(v) + 4, v)
    }
    s += String(format: "<text x=\"16\" y=\"%.1f\" transform=\"rotate(-90 16 %.1f)\" text-anchor=\"middle\">SSIM (1 = perfect rebuild)</text>\n", top + plotH / 2, top + plotH / 2)
    for (k, name) in cuts.enumerated() {
      s += String(
        format: "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-50 %.1f %.1f)\" text-anchor=\"end\"%@>%@</text>\n", x(k), top + plotH + 12, x(k),
        top + plotH + 12, name == chosen ? " font-weight=\"bold\"" : "", xml(name))
    }
    // Threshold.
    s += String(
      format: "<line class=\"threshold\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/>\n",
      left, y(threshold), Double(width) - right, y(threshold))
    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#d62728\">threshold %.2f</text>\n", Double(width) - right, y(threshold) - 4, threshold)
    // Points, one series per attacker.
    let colours = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b"]
    let attackers = points.map(\.attacker).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
    for (a, attacker) in attackers.enumerated() {
      let colour = colours[a % colours.count]
      let offset = (Double(a) - Double(attackers.count - 1) / 2) * 8
      let series = points.filter { $0.attacker == attacker }.sorted { $0.cutIndex < $1.cutIndex }
      let path = series.compactMap { p -> String? in
        guard let k = cuts.firstIndex(of: p.cut) else { return nil }
        return String(format: "%.1f,%.1f", x(k) + offset, y(p.ssimMean))
      }
      if path.count > 1 {
        s += "<polyline points=\"\(path.joined(separator: " "))\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\"/>\n"
      }
      for p in series {
        guard let k = cuts.firstIndex(of: p.cut) else { continue }
        let cx = x(k) + offset
        s += String(
          format: "<line class=\"errorbar\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-width=\"1.5\"/>\n", cx,
          y(p.ssimMean - p.ssimStd), cx, y(p.ssimMean + p.ssimStd), colour)
        for v in [p.ssimMean - p.ssimStd, p.ssimMean + p.ssimStd] {
          s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%@\"/>\n", cx - 4, y(v), cx + 4, y(v), colour)
        }
        if p.ssimUpper.isFinite {
          s += String(format: "<path d=\"M%.1f %.1fl4 -6h-8z\" fill=\"%@\"/>\n", cx, y(p.ssimUpper), colour)
        }
        s += String(
          format: "<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"%@\"><title>%@ %@: SSIM %.3f ± %.3f (upper bound %.3f), PSNR %.1f dB, %d held-out images</title></circle>\n",
          cx, y(p.ssimMean), colour, xml(p.cut), xml(p.attacker), p.ssimMean, p.ssimStd, p.ssimUpper, p.psnrMean, p.heldOut)
      }
    }
    // Legend.
    let ly = Double(height) - 18
    var lx = left
    var entries = attackers.enumerated().map { (colours[$0.offset % colours.count], "\($0.element): mean ± 1 s.d., ▼ 95 % upper bound") }
    if let c = chosen { entries.append(("#2ca02c", "chosen: \(c)")) }
    for (fill, text) in entries {
      s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%@\"/><text x=\"%.1f\" y=\"%.1f\">%@</text>\n", lx, ly - 10, fill, lx + 16, ly, xml(text))
      lx += 16 + Double(text.count) * 6.2 + 18
    }
    s += "</svg>\n"
    return s
  }
}
