import ArgumentParser
import Foundation
import VeilGraph
import VeilPlanning
import VeilServing
import VeilTEE

struct Profile: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Time every cut: head in the TEE + transfer + tail on the accelerator, against the whole model in the TEE.",
    discussion: """
      For each cut point (see `veil cuts`) the head and the tail are compiled separately and
      timed on this machine (median of --runs after a warm-up), and the feature map's transfer
      is timed with the real code (KServe v2 serialisation and AES-256-GCM records, both ways);
      its time on the wire is modeled from --link-gbps. Outside a real TEE the head's and the
      whole model's TEE time is MODELED from the native time (docs/tee-cost-model.md): a
      memory-encryption factor, EPC paging simulated from the executor's real memory trace,
      and enclave transitions. Inside one (Gramine SGX, TDX, SNP: detected at run time) it is
      measured. Presets: sgx1 (93.5 MiB EPC), sgx2, tdx, snp; override any parameter with
      --tee-param KEY=VALUE (keys: \(TEEPreset.parameterKeys.joined(separator: ", "))).
      The table has the paper's form: full enclave, partitioned, speed-up %, with each modeled
      figure's band (low … high over the cost model's uncertain parameters). A segment whose
      runs spread too far, or a cut whose head + tail disagrees with the whole model, is timed
      again (twice at most); a profile that stays unstable says so on its first line
      ("PROFILE UNSTABLE: …") and in the JSON's `unstable` list, with the load average and the
      CPU time other processes used while it ran.
      """)

  @Option(help: "A zoo model name (see `veil models`) or a model file.")
  var model: String
  @Option(help: "TEE preset: sgx1, sgx2, tdx, snp.")
  var tee = "sgx1"
  @Option(name: .customLong("tee-param"), help: ArgumentHelp("Override a preset parameter (repeatable).", valueName: "key=value"))
  var teeParams: [String] = []
  @Option(
    help: ArgumentHelp(
      "Where the tail runs: local (Veil's engine here) or the HOST:PORT of a KServe v2 server that serves every cut's tail (`veil accelerator serve --every-cut MODEL`); the remote round trip is measured, wire included.",
      valueName: "local|HOST:PORT"))
  var accelerator = "local"
  @Option(help: "Timed runs per segment (the median is reported).")
  var runs = 5
  @Option(help: "Enclave → accelerator link rate, Gb/s (the wire time is modeled).")
  var linkGbps = 10.0
  @Option(help: "Roofline estimate of the tail on a named GPU: NAME:TFLOPS:GB/s (e.g. H100:60:3350); modeled.")
  var gpu: String?
  @Flag(help: "Every single-tensor cut point, not only the structural ones.")
  var all = false
  @Option(help: "Batch size.")
  var batch = 1
  @Option(help: "Seed for the zoo's weight initialisation.")
  var seed: UInt64 = 0
  @Option(help: "Write the rows as CSV here.")
  var csv: String?
  @Option(help: "Write the latency plot (stacked head / transfer / tail, baseline line) as SVG here.")
  var svg: String?
  @Flag(help: "Print one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  func validate() throws {
    guard runs >= 1 else { throw ValidationError("--runs must be ≥ 1, found \(runs)") }
    guard batch >= 1 else { throw ValidationError("--batch must be ≥ 1, found \(batch)") }
    guard linkGbps > 0, linkGbps.isFinite else { throw ValidationError("--link-gbps must be > 0, found \(linkGbps)") }
    if try remoteTailTimer(accelerator, model: model) != nil, all {
      throw ValidationError("--all with --accelerator HOST:PORT: `veil accelerator serve --every-cut` serves the structural cuts only; drop --all")
    }
  }

  func options() throws -> ProfileOptions {
    var o = ProfileOptions()
    o.runs = runs
    o.linkGbps = linkGbps
    o.allCuts = all
    do {
      o.preset = try TEEPreset.named(tee)
      for p in teeParams {
        let kv = p.split(separator: "=", maxSplits: 1).map(String.init)
        guard kv.count == 2 else { throw ValidationError("--tee-param '\(p)': expected KEY=VALUE") }
        try o.preset.set(kv[0], to: kv[1])
      }
    } catch let e as TEECostError { throw ValidationError("\(e)") }
    if let gpu {
      let parts = gpu.split(separator: ":").map(String.init)
      guard parts.count == 3, let t = Double(parts[1]), let b = Double(parts[2]), t > 0, b > 0, t.isFinite, b.isFinite else {
        throw ValidationError("--gpu '\(gpu)': expected NAME:TFLOPS:GB/s with positive numbers, e.g. H100:60:3350")
      }
      o.roofline = Roofline(name: parts[0], peakTFLOPS: t, bandwidthGBps: b)
    }
    return o
  }

  func run() throws {
    try engine.apply()
    var opts = try options()
    opts.tailTimer = try remoteTailTimer(accelerator, model: model)
    try ModelSource.check(model)
    let g = try ModelSource.load(model, batch: batch, seed: seed)
    let report = try Profiler.profile(graph: g, model: model, options: opts) { note($0) }
    if let csv { try report.csv.write(toFile: csv, atomically: true, encoding: .utf8) }
    if let svg { try report.svg.write(toFile: svg, atomically: true, encoding: .utf8) }
    if json {
      if let u = report.unstableLine { note(u) }
      return try printJSON(report)
    }
    print(report.table)
    if let csv { print("CSV written to \(csv)") }
    if let svg { print("SVG written to \(svg)") }
  }
}
