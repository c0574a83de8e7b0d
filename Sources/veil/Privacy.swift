import ArgumentParser
import Foundation
import VeilGraph
import VeilPrivacy

struct Privacy: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "The privacy sweep: train the inversion attacker at each cut and plot held-out SSIM against the cut.",
    discussion: """
      Runs `veil attack` at every chosen cut with the same data and options (features are
      computed once per cut and cached). DIR/sweep.json, sweep.csv and sweep.svg (SSIM per cut
      with the threshold line) are rewritten after each cut, and each cut's attack lives in its
      own sub-folder; a rerun with the same options skips finished cuts and resumes the one that
      was interrupted. A cut is private when the 95 % upper confidence bound of its mean
      held-out SSIM (mean + t·std/√n) is below --threshold; the suggested cut is the earliest
      one from which every deeper cut is private. See docs/privacy.md.
      """)

  @Option(help: "A zoo model name, an ONNX file, or a state_dict of a zoo architecture.")
  var model: String
  @Option(
    help: ArgumentHelp(
      "'all' (every cut whose tensor is a feature map [N,C,h,w]: a zoo model's structural cuts, an imported model's single-tensor points) or a comma-separated list of cut names, unique name parts or indices.",
      valueName: "all|LIST"))
  var cuts: String = "all"
  @Option(help: "SSIM threshold below which a cut counts as private (the paper's value is not published).")
  var threshold: Double = 0.3
  @OptionGroup var options: AttackOptions
  @Option(help: ArgumentHelp("Output folder.", valueName: "dir"))
  var out: String = "out/privacy"
  @Flag(help: "Print the report as one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  func validate() throws {
    guard threshold > 0, threshold <= 1 else { throw ValidationError("--threshold must be in (0, 1], found \(threshold)") }
  }

  func run() throws {
    try engine.apply()
    let (graph, preprocessing) = try attackModel(model, preset: options.preprocess)
    let chosen: [CutPoint]
    if cuts == "all" {
      chosen = try graph.candidateCuts().filter { $0.shape.count == 4 }
    } else {
      chosen = try cuts.split(separator: ",").map { name in
        do { return try graph.attackCut(named: name.trimmingCharacters(in: .whitespaces)) } catch {
          throw ValidationError("--cuts: \(error)")
        }
      }
    }
    guard !chosen.isEmpty else { throw ValidationError("--cuts: no cut of \(model) has a feature map [N,C,h,w]") }
    let data = try options.images()
    note(
      "privacy sweep of \(model) over \(chosen.count) cut(s) with the \(options.attacker.rawValue) attacker: \(data.train.count) training crops of \(data.trainPhotos.count) photos, \(data.test.count) held-out crops of \(data.testPhotos.count) photos"
    )
    let outDir = URL(fileURLWithPath: out)
    try options.clear(outDir)
    let sweep = PrivacySweep(
      modelName: model, cuts: chosen, threshold: threshold, config: options.config, outDir: outDir,
      cacheDirectory: options.cacheDirectory)
    var printers: [String: AttackProgressPrinter] = [:]
    let report = try sweep.run(model: graph, data: data, preprocessing: preprocessing) { cut, event in
      let p = printers[cut.name] ?? AttackProgressPrinter(prefix: "[\(cut.name)] ")
      printers[cut.name] = p
      p(event)
    }
    if json { return try printJSON(report) }
    print("held-out SSIM of the \(report.attacker.rawValue) attacker per cut of \(model) (threshold \(threshold)):")
    print(pad("cut", 44) + pad("feature map", 16) + pad("SSIM", 18) + pad("upper 95%", 11) + pad("PSNR dB", 9) + pad("baseline", 10) + "private")
    for r in report.results {
      print(
        pad(r.cut, 44) + pad(r.featureShape.map(String.init).joined(separator: "×"), 16)
          + pad(String(format: "%.4f ± %.4f", r.ssim.mean, r.ssim.std), 18) + pad(String(format: "%.4f", r.ssimUpperBound), 11)
          + pad(String(format: "%.2f", r.psnr.mean), 9) + pad(String(format: "%.4f", r.baselineSSIM), 10)
          + (r.ssimUpperBound < threshold ? "yes" : "no"))
    }
    print("baseline: the SSIM of the mean training image, what an attacker learns without the feature map")
    print("suggested cut: \(report.chosenCut ?? "none (even the deepest cut is above the threshold)")")
    print("wrote \(sweep.jsonFile.path), \(sweep.csvFile.lastPathComponent), \(sweep.svgFile.lastPathComponent)")
  }
}
