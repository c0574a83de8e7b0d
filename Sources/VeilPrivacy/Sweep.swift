import Foundation
import VeilGraph

/// The attack at every chosen cut of a model, as `veil privacy` runs it: one sub-folder per cut
/// (`NN-name`, each resumable by epoch), and in `outDir` `sweep.json`, `sweep.csv` and `sweep.svg`
/// rewritten after every cut. A rerun with the same options skips the cuts `sweep.json` already
/// holds, so an interrupted sweep resumes.
public struct PrivacySweep {
  public var modelName: String
  public var cuts: [CutPoint]
  /// SSIM threshold: a cut is private when the upper confidence bound of its mean held-out SSIM
  /// is below it.
  public var threshold: Double
  public var config: AttackConfig
  public var outDir: URL
  public var cacheDirectory: URL?

  public init(
    modelName: String, cuts: [CutPoint], threshold: Double, config: AttackConfig, outDir: URL,
    cacheDirectory: URL? = FeatureExtractor.defaultCacheDirectory
  ) {
    self.modelName = modelName
    self.cuts = cuts
    self.threshold = threshold
    self.config = config
    self.outDir = outDir
    self.cacheDirectory = cacheDirectory
  }

  public var jsonFile: URL { outDir.appendingPathComponent("sweep.json") }
  public var csvFile: URL { outDir.appendingPathComponent("sweep.csv") }
  public var svgFile: URL { outDir.appendingPathComponent("sweep.svg") }

  /// Runs the cuts not yet in `sweep.json`; `progress` hears each attack's events with the cut.
  public func run(
    model: Graph, data: AttackImages, preprocessing: InputPreprocessing,
    progress: (CutPoint, AttackProgress) -> Void = { _, _ in }
  ) throws -> SweepReport {
    guard !cuts.isEmpty else { throw PrivacyError.invalidConfig("a sweep needs at least one cut") }
    guard threshold > 0, threshold <= 1 else {
      throw PrivacyError.invalidConfig("the SSIM threshold must be in (0, 1], found \(threshold)")
    }
    try config.validate()
    try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
    var report = SweepReport(model: modelName, attacker: config.attacker, threshold: threshold, config: config, results: [])
    if FileManager.default.fileExists(atPath: jsonFile.path) {
      let stored: SweepReport
      do { stored = try JSONDecoder().decode(SweepReport.self, from: Data(contentsOf: jsonFile)) } catch {
        throw PrivacyError.resume(file: jsonFile.path, detail: "cannot read it as a sweep (\(error)); use another --out folder or --fresh")
      }
      guard stored.model == modelName, stored.config == config else {
        throw PrivacyError.resume(
          file: jsonFile.path,
          detail: "holds a sweep of '\(stored.model)' with other attack options; use another --out folder, or --fresh to start over")
      }
      report.results = stored.results.filter { r in cuts.contains { $0.name == r.cut } }
    }
    for cut in cuts where !report.results.contains(where: { $0.cut == cut.name }) {
      let dir = outDir.appendingPathComponent(String(format: "%02d-", cut.index) + Self.fileName(cut.name))
      let r = try runAttack(
        model: model, modelName: modelName, cut: cut, data: data, preprocessing: preprocessing, config: config, outDir: dir,
        cacheDirectory: cacheDirectory
      ) { progress(cut, $0) }
      report.results.append(r)
      report.results.sort { a, b in
        (cuts.firstIndex { $0.name == a.cut } ?? 0) < (cuts.firstIndex { $0.name == b.cut } ?? 0)
      }
      try write(report)
    }
    try write(report)
    return report
  }

  /// A cut name as a file name: anything but letters, digits, '.', '-' and '_' becomes '_'.
  static func fileName(_ s: String) -> String {
    String(s.map { $0.isLetter || $0.isNumber || "._-".contains($0) ? $0 : "_" })
  }

  public func write(_ report: SweepReport) throws {
    try writeJSON(report, to: jsonFile)
    try atomically(csvFile) { try Data(report.csv.utf8).write(to: $0) }
    try atomically(svgFile) { try Data(report.svg.utf8).write(to: $0) }
  }
}

/// A sweep's results, in cut order.
public struct SweepReport: Codable, Sendable, Equatable {
  public var model: String
  public var attacker: AttackerKind
  public var threshold: Double
  public var config: AttackConfig
  public var results: [AttackResult]

  /// The earliest cut from which every evaluated cut (it and all deeper ones) has its SSIM upper
  /// bound below the threshold: the least work in the TEE that keeps the input private. Nil
  /// when even the deepest cut is above it.
  public var chosenCut: String? {
    var chosen: String?
    for r in results.reversed() {
      guard r.ssimUpperBound < threshold else { break }
      chosen = r.cut
    }
    return chosen
  }

  public var csv: String {
    var lines = [
      "cut,feature_shape,attacker,ssim_mean,ssim_std,ssim_upper95,psnr_mean,psnr_std,baseline_ssim,held_out,train,images_per_s,seconds,private"
    ]
    for r in results {
      let cut = r.cut.contains(",") || r.cut.contains("\"") ? "\"\(r.cut.replacingOccurrences(of: "\"", with: "\"\""))\"" : r.cut
      lines.append(
        [
          cut, r.featureShape.map(String.init).joined(separator: "x"), r.attacker.rawValue, f(r.ssim.mean), f(r.ssim.std),
          f(r.ssimUpperBound), f(r.psnr.mean), f(r.psnr.std), f(r.baselineSSIM), "\(r.heldOutCount)", "\(r.trainCount)",
          String(format: "%.2f", r.imagesPerSecond), String(format: "%.1f", r.seconds), r.ssimUpperBound < threshold ? "yes" : "no",
        ].joined(separator: ","))
    }
    return lines.joined(separator: "\n") + "\n"
  }

  private func f(_ x: Double) -> String { String(format: "%.4f", x) }

  /// SSIM (mean, with a bar up to the 95 % upper bound and down by one std) against the cut,
  /// the trivial baseline dotted, and the threshold as a dashed red line.
  public var svg: String {
    let (w, h) = (max(480, 90 * results.count + 140), 360)
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 110.0)
    let plotW = Double(w) - left - right
    let plotH = Double(h) - top - bottom
    func x(_ i: Int) -> Double { left + plotW * (Double(i) + 0.5) / Double(max(results.count, 1)) }
    func y(_ v: Double) -> Double { top + plotH * (1 - min(max(v, 0), 1)) }
    func esc(_ s: String) -> String {
      s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
    var s = """
      <svg xmlns="http://www.w3.org/2000/svg" width="\(w)" height="\(h)" font-family="sans-serif" font-size="11">
      <rect width="100%" height="100%" fill="white"/>
      <text x="\(left)" y="20" font-size="13">\(esc(model)): held-out SSIM of the \(attacker.rawValue) attacker per cut (threshold \(threshold))</text>

      """
    for t in stride(from: 0.0, through: 1.0, by: 0.2) {
      s += "<line x1=\"\(left)\" y1=\"\(y(t))\" x2=\"\(Double(w) - right)\" y2=\"\(y(t))\" stroke=\"#ddd\"/>"
      s += "<text x=\"\(left - 6)\" y=\"\(y(t) + 4)\" text-anchor=\"end\">\(String(format: "%.1f", t))</text>\n"
    }
    s += "<text x=\"14\" y=\"\(top + plotH / 2)\" transform=\"rotate(-90 14 \(top + plotH / 2))\" text-anchor=\"middle\">SSIM</text>\n"
    s += "<line x1=\"\(left)\" y1=\"\(y(threshold))\" x2=\"\(Double(w) - right)\" y2=\"\(y(threshold))\" stroke=\"#c00\" stroke-dasharray=\"6 4\"/>"
    s += "<text x=\"\(Double(w) - right)\" y=\"\(y(threshold) - 4)\" text-anchor=\"end\" fill=\"#c00\">threshold \(threshold)</text>\n"
    let mean = results.indices.map { "\(x($0)),\(y(results[$0].ssim.mean))" }.joined(separator: " ")
    let base = results.indices.map { "\(x($0)),\(y(results[$0].baselineSSIM))" }.joined(separator: " ")
    s += "<polyline points=\"\(base)\" fill=\"none\" stroke=\"#888\" stroke-dasharray=\"2 3\"/>\n"
    s += "<polyline points=\"\(mean)\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\"/>\n"
    for (i, r) in results.enumerated() {
      let upper = r.ssimUpperBound.isFinite ? r.ssimUpperBound : r.ssim.mean
      s += "<line x1=\"\(x(i))\" y1=\"\(y(upper))\" x2=\"\(x(i))\" y2=\"\(y(r.ssim.mean - r.ssim.std))\" stroke=\"#1f5fbf\"/>"
      s += "<circle cx=\"\(x(i))\" cy=\"\(y(r.ssim.mean))\" r=\"4\" fill=\"\(upper < threshold ? "#2a2" : "#1f5fbf")\"/>"
      s += "<text x=\"\(x(i) + 6)\" y=\"\(y(r.ssim.mean) - 6)\">\(String(format: "%.2f", r.ssim.mean))</text>"
      let label = r.cut.count > 24 ? "…" + r.cut.suffix(23) : r.cut
      s += "<text x=\"\(x(i))\" y=\"\(top + plotH + 14)\" transform=\"rotate(35 \(x(i)) \(top + plotH + 14))\">\(esc(label))</text>\n"
    }
    s += "<text x=\"\(left)\" y=\"\(h - 8)\" fill=\"#555\">blue: mean SSIM (bar: −1 std to the 95 % upper bound; green dot: private); grey dotted: mean-image baseline</text>\n"
    s += "</svg>\n"
    return s
  }
}
