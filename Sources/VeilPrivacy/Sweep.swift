import Foundation
import VeilFormats
import VeilGraph

/// The evaluation at every chosen cut of a model, as `veil privacy` runs it: one verdict per cut
/// (`PrivacyEvaluation`, its attacks in `<out>/<cut>/<attacker>-seed<k>`, each resumable), and
/// in `outDir` `sweep.json`, `sweep.csv` and one SVG per measure, rewritten after every cut. A
/// rerun with the same settings skips the cuts `sweep.json` already holds, so an interrupted
/// sweep resumes. The suggested cut follows `PrivacyChoice`, the rule `veil plan` uses.
public struct PrivacySweep {
  public var evaluation: PrivacyEvaluation
  public var cuts: [CutPoint]

  public init(evaluation: PrivacyEvaluation, cuts: [CutPoint]) {
    self.evaluation = evaluation
    self.cuts = cuts
  }

  var outDir: URL { evaluation.outDir }
  public var jsonFile: URL { outDir.appendingPathComponent("sweep.json") }
  public var csvFile: URL { outDir.appendingPathComponent("sweep.csv") }
  public func svgFile(_ measure: String) -> URL { outDir.appendingPathComponent("sweep-\(measure).svg") }

  /// Runs the cuts not yet in `sweep.json`; `progress` hears each attack's events with the cut.
  public func run(progress: (CutPoint, AttackerKind, UInt64, AttackProgress) -> Void = { _, _, _, _ in }) throws -> SweepReport {
    guard !cuts.isEmpty else { throw PrivacyError.invalidConfig("a sweep needs at least one cut") }
    for (name, t) in evaluation.settings.thresholds.values where !(t > 0 && t <= 1) {
      throw PrivacyError.invalidConfig("the \(name) threshold must be in (0, 1], found \(t)")
    }
    try evaluation.settings.config.validate()
    try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
    var report = SweepReport(model: evaluation.modelName, settings: evaluation.settings, cuts: cuts.map(\.name), results: [])
    if FileManager.default.fileExists(atPath: jsonFile.path) {
      let stored: SweepReport
      do { stored = try VeilJSON.decoder().decode(SweepReport.self, from: Data(contentsOf: jsonFile)) } catch {
        throw PrivacyError.resume(file: jsonFile.path, detail: "cannot read it as a sweep of this version (\(error)); use another --out folder or --fresh")
      }
      guard stored.model == evaluation.modelName, stored.settings == evaluation.settings else {
        throw PrivacyError.resume(
          file: jsonFile.path,
          detail: "holds a sweep of '\(stored.model)' under other settings; use another --out folder, or --fresh to start over")
      }
      report.results = stored.results.filter { r in cuts.contains { $0.name == r.cut } }
    }
    for (k, cut) in cuts.enumerated() where !report.results.contains(where: { $0.cut == cut.name }) {
      if let why = evaluation.unattackable(cut) {
        throw PrivacyError.cut(name: cut.name, detail: "not attacked: \(why)")
      }
      let verdict = try evaluation.evaluate(cut: cut, index: k) { progress(cut, $0, $1, $2) }
      report.results.append(verdict)
      report.results.sort { $0.cutIndex < $1.cutIndex }
      try write(report)
    }
    try write(report)
    return report
  }

  public func write(_ report: SweepReport) throws {
    try writeJSON(report, to: jsonFile)
    try atomically(csvFile) { try Data(report.csv.utf8).write(to: $0) }
    for m in report.plottedMeasures {
      let plot = LeakagePlot(
        model: report.model, measure: m, cuts: report.cuts, verdicts: report.results, threshold: report.settings.thresholds[m],
        chosen: report.chosenCut)
      try atomically(svgFile(m)) { try Data(plot.svg.utf8).write(to: $0) }
    }
  }
}

/// A sweep's verdicts, in cut order.
public struct SweepReport: Codable, Sendable, Equatable {
  public var model: String
  public var settings: EvaluationSettings
  /// Every cut of the sweep, in order.
  public var cuts: [String]
  public var results: [CutVerdict]

  /// The earliest cut from which every evaluated cut is private (`PrivacyChoice`); nil when
  /// even the deepest is not.
  public var chosenCut: String? {
    PrivacyChoice.earliest(results.map { ($0.cutIndex, $0.isPrivate) }).flatMap { k in results.first { $0.cutIndex == k }?.cut }
  }

  /// Undecided cuts before the choice: another run may choose them.
  public var tiedCuts: [String] {
    PrivacyChoice.tied(results, chosen: chosenCut.flatMap { c in results.first { $0.cut == c }?.cutIndex })
  }

  /// Measures on [0, 1] that were computed, in a fixed order.
  public var plottedMeasures: [String] {
    [SSIMMeasure.name, RecognitionMeasure.name, ReidentificationMeasure.name, FieldRecoveryMeasure.name].filter { m in
      results.contains { $0.measure(m) != nil }
    }
  }

  /// One row per cut, attacker and measure: each attacker's estimate, and whether it decided.
  public var csv: String {
    var lines = ["cut,feature_shape,threat_model,measure,attacker,mean,upper95,lower95,images,photo_clusters,seeds,baseline,colour_guess,threshold,worst,cut_status"]
    func quote(_ s: String) -> String { s.contains(",") || s.contains("\"") ? "\"\(s.replacingOccurrences(of: "\"", with: "\"\""))\"" : s }
    func f(_ x: Double) -> String { x.isFinite ? String(format: "%.4f", x) : "inf" }
    for r in results {
      for m in r.measures {
        for kind in AttackerKind.allCases {
          guard let e = m.estimates[kind.rawValue] else { continue }
          lines.append(
            [
              quote(r.cut), r.featureShape.map(String.init).joined(separator: "x"), r.settings.threatModel.rawValue, m.measure, kind.rawValue,
              f(e.mean), f(e.upper), f(e.lower), "\(e.images)", "\(e.clusters)", "\(e.seeds)", f(m.baseline),
              m.colourGuess.map(f) ?? "",
              m.threshold.map(f) ?? "", kind == m.worstAttacker ? "yes" : "no", r.status.rawValue,
            ].joined(separator: ","))
        }
      }
    }
    return lines.joined(separator: "\n") + "\n"
  }
}
