import ArgumentParser
import Foundation
import VeilGraph
import VeilPrivacy

struct Privacy: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "The privacy sweep: the verdict at each cut under a threat model, with every attacker and measure.",
    discussion: """
      Runs the evaluation of `veil attack` (without --attacker) at every chosen cut with the same
      data and settings: the attackers of --threat-model (white-box: the optimisation through
      the head, the inverse network, the inverse network refined through the head (hybrid) and
      the c-GAN; black-box: the inverse network, the optimisation through a substitute head
      trained from queries, the inverse network refined through that substitute, the c-GAN)
      under the budget's seeds, scored with SSIM, PSNR, recognition and re-identification, each
      of the last two judged by a reference network independent of the model (field recovery for
      TON_IoT images). Per measure the attacker with the highest one-sided 95 % bound
      (clustered by source photo, across seeds) decides; a cut is private only when every
      measure with a threshold is under it. DIR/sweep.json, sweep.csv and one SVG per measure
      are rewritten after each cut, each attack lives in DIR/<cut>/<attacker>-seed<k>; a rerun
      with the same settings skips finished cuts and attacks. The suggested cut is the earliest
      from which every evaluated cut is private: the rule `veil plan` applies. See
      docs/privacy.md.
      """)

  @Option(help: "A zoo model name, an ONNX file, or a state_dict of a zoo architecture.")
  var model: String
  @Option(
    help: ArgumentHelp(
      "'all' (every cut whose tensor is a feature map [N,C,h,w] or a transformer's tokens [N,T,D]: a zoo model's structural cuts, an imported model's single-tensor points) or a comma-separated list of cut names, unique name parts or indices.",
      valueName: "all|LIST"))
  var cuts: String = "all"
  @OptionGroup var options: AttackOptions
  @Option(help: ArgumentHelp("Output folder.", valueName: "dir"))
  var out: String = "out/privacy"
  @Flag(help: "Print the report as one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  func run() throws {
    try engine.apply()
    let (graph, preprocessing) = try attackModel(model, preset: options.preprocess)
    let chosen: [CutPoint]
    if cuts == "all" {
      // Feature maps, and a transformer's tokens [N, T, D].
      chosen = try graph.candidateCuts().filter { [3, 4].contains($0.shape.count) }
    } else {
      chosen = try cuts.split(separator: ",").map { name in
        do { return try graph.attackCut(named: name.trimmingCharacters(in: .whitespaces)) } catch {
          throw ValidationError("--cuts: \(error)")
        }
      }
    }
    guard !chosen.isEmpty else { throw ValidationError("--cuts: no cut of \(model) has a feature map [N,C,h,w] or tokens [N,T,D]") }
    let outDir = URL(fileURLWithPath: out)
    try options.clear(outDir)
    let evaluation = try options.evaluation(graph, name: model, preprocessing: preprocessing, out: outDir)
    let s = evaluation.settings
    note(
      "privacy sweep of \(model) over \(chosen.count) cut(s): \(s.threatModel.rawValue) threat model, budget \(s.budget.rawValue): \(s.attackers.map(\.rawValue).joined(separator: ", ")) × \(s.seeds.count) seed(s); measures \(evaluation.measures.described)")
    for w in s.weakerThanDefault { note("note: weaker than the standard budget: \(w)") }
    var printers: [String: AttackProgressPrinter] = [:]
    let sweep = PrivacySweep(evaluation: evaluation, cuts: chosen)
    let report = try sweep.run { cut, kind, seed, event in
      let key = "\(cut.name) \(kind.rawValue) seed \(seed)"
      let p = printers[key] ?? AttackProgressPrinter(prefix: "[\(key)] ")
      printers[key] = p
      p(event)
    }
    if json { return try printJSON(report) }
    for v in report.results { for line in verdictLines(v) { print(line) } }
    print("suggested cut: \(report.chosenCut ?? "none (even the deepest cut evaluated is not private)")")
    if !report.tiedCuts.isEmpty {
      print("within noise: \(report.tiedCuts.joined(separator: ", ")) undecided (the interval contains a threshold): another run may choose differently")
    }
    print("wrote \(sweep.jsonFile.path), \(sweep.csvFile.lastPathComponent), \(report.plottedMeasures.map { sweep.svgFile($0).lastPathComponent }.joined(separator: ", "))")
  }
}
