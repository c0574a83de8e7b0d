import ArgumentParser
import Foundation
import VeilGraph
import VeilModels
import VeilServing
import VeilTensor
import VeilTrain

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Measure a model's latency, throughput, GFLOP/s and peak memory on this machine.",
    discussion: """
      Builds the model for the batch size, compiles it once, runs --warmup passes, then times
      --runs passes on random input. Latency is per batch; throughput is items per second at the
      median. Peak resident memory is the process's high-water mark (weights, kernels, arena).
      To compare with ONNX Runtime and PyTorch on the same weights, run bench/peers.

      --cut times the head up to a cut point and --image-size sets the input's height and width.
      --input-gradient times what a white-box inversion attack runs instead of inference: the
      forward on the autograd tape with every weight frozen, then the backward pass for the
      gradient with respect to the input only (no weight gradients), each timed on its own.

      Like every Veil process, the benchmark's kernel threads spin between the parallel regions
      of one pass (at most 200 µs a wait) and sleep at once between passes, so that no core
      is burnt between requests; --spin-wait lets them spin between passes too, the best case
      on a quiet machine; VEIL_THREAD_WAIT=passive makes them sleep at once.
      """)

  @Option(help: "A zoo model name (see `veil models`) or a model file.")
  var model: String
  @Option(help: "Items per forward pass.")
  var batch: Int = 1
  @Option(help: "Timed passes.")
  var runs: Int = 20
  @Option(help: "Untimed passes first.")
  var warmup: Int = 3
  @Flag(help: "Print one JSON document.")
  var json = false
  @Flag(help: "Also time every step and print where the time goes, by op and by kernel.")
  var profile = false
  @Option(help: "Time the head up to this cut point (see `veil cuts`) instead of the whole model.")
  var cut: String?
  @Option(help: "Input height and width (default: the model's).")
  var imageSize: Int?
  @Flag(help: "Time forward + backward for ∂/∂input on the autograd tape, weights frozen, instead of inference.")
  var inputGradient = false
  @Flag(help: "Let the kernel threads spin between passes too: the best case on a quiet machine; every Veil process spins only within a pass otherwise.")
  var spinWait = false
  @Option(
    help: ArgumentHelp(
      "Idle milliseconds before each timed pass, as a server sees between requests: the kernel threads asleep, other work in the caches.",
      valueName: "ms"))
  var gapMs: Double = 0
  @OptionGroup var engine: EngineOptions

  struct Latency: Encodable {
    var min: Double
    var median: Double
    var p90: Double

    /// Of times in milliseconds (at least one).
    init(_ times: [Double]) {
      let t = times.sorted()
      min = t[0]
      median = t.median
      p90 = percentile(t, 0.9)
    }
  }
  struct Report: Encodable {
    var model: String
    var batch: Int
    var threads: Int
    var latency_ms: Latency
    var throughput: Double
    var gflops: Double
    var peak_rss_bytes: Int
    var weight_bytes: Int
    var arena_bytes: Int
    var scratchpad_bytes: Int
    var flops_per_pass: Int
    var compile_ms: Double
    var backend: String
  }

  func validate() throws {
    guard batch >= 1 else { throw ValidationError("--batch must be ≥ 1, found \(batch)") }
    guard runs >= 1 else { throw ValidationError("--runs must be ≥ 1, found \(runs)") }
    guard warmup >= 0 else { throw ValidationError("--warmup must be ≥ 0, found \(warmup)") }
    guard gapMs >= 0, gapMs <= 60_000 else { throw ValidationError("--gap-ms must be in 0…60000, found \(gapMs)") }
    if let imageSize, imageSize < 1 { throw ValidationError("--image-size must be ≥ 1, found \(imageSize)") }
    if inputGradient, profile { throw ValidationError("--profile times the inference executor; it does not go with --input-gradient") }
  }

  func run() throws {
    try engine.apply()
    let graph = try benchedGraph()
    if inputGradient { return try runInputGradient(graph) }
    let flops = graph.totalFlops
    let weightBytes = graph.parameterCount * 4
    let shape = ModelSource.inputShape(graph)
    let t0 = Date()
    let exec = try Executor(graph: consume graph)
    let compileMs = Date().timeIntervalSince(t0) * 1000
    // The timed runs are the steady state a server runs in: per-run buffers are reused.
    allocateForSteadyState()
    var rng = SeededGenerator(seed: 1)
    let x = Tensor.randomUniform(shape: shape, low: -1, high: 1, generator: &rng)
    if !json { note("bench \(model): batch \(batch), \(Engine.shared.threads) threads, \(warmup) warm-up + \(runs) timed runs") }
    for _ in 0..<warmup { _ = try exec.run([x]) }
    var times: [Double] = []
    for _ in 0..<runs {
      if gapMs > 0 { Thread.sleep(forTimeInterval: gapMs / 1000) }
      let s = DispatchTime.now().uptimeNanoseconds
      _ = try exec.run([x])
      times.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
    }
    let latency = Latency(times)
    let (median, p90) = (latency.median, latency.p90)
    let report = Report(
      model: model, batch: batch, threads: Engine.shared.threads,
      latency_ms: latency,
      throughput: Double(batch) / (median / 1000), gflops: Double(flops) / (median / 1000) / 1e9,
      peak_rss_bytes: peakResidentBytes(), weight_bytes: weightBytes, arena_bytes: exec.peakActivationBytes,
      scratchpad_bytes: exec.scratchpadBytes,
      flops_per_pass: flops, compile_ms: compileMs, backend: Engine.backendVersion)
    if json { return try printJSON(report) }
    if profile { try printProfile(exec, x) }
    let mib = { (b: Int) in String(format: "%.1f MiB", Double(b) / 1_048_576) }
    print("model        \(model), batch \(batch), \(report.threads) threads, \(report.backend)")
    print(String(format: "latency      min %.2f ms, median %.2f ms, p90 %.2f ms", latency.min, median, p90))
    print(String(format: "throughput   %.1f items/s", report.throughput))
    print(String(format: "compute      %.2f GFLOP per pass, %.1f GFLOP/s", Double(flops) / 1e9, report.gflops))
    print("memory       peak RSS \(mib(report.peak_rss_bytes)) (weights \(mib(weightBytes)), activation arena \(mib(exec.peakActivationBytes)), kernels' working memory \(mib(exec.scratchpadBytes)))")
    print(String(format: "compile      %.0f ms", compileMs))
  }
}

extension Bench {
  /// The model for --batch, cut at --cut and re-shaped for --image-size, shapes inferred.
  func benchedGraph() throws -> Graph {
    var graph = try ModelSource.load(model, batch: batch)
    try graph.inferShapes()
    if let cut {
      let point: CutPoint
      do { point = try graph.cut(named: cut) } catch { throw ValidationError("\(error)") }
      graph = try graph.split(at: point).head
    }
    if let imageSize, let input = graph.inputs.first, var shape = graph.shape(input), shape.count == 4 {
      // Channels first unless the model keeps them last (an NHWC input of 1 or 3 channels).
      let spatial = [1, 3].contains(shape[1]) || ![1, 3].contains(shape[3]) ? 2..<4 : 1..<3
      for axis in spatial { shape[axis] = imageSize }
      try graph.inferShapes(inputShapes: [input: shape])
    } else if imageSize != nil {
      throw ValidationError("--image-size needs a model with one image input [N, C, H, W] or [N, H, W, C]")
    }
    return graph
  }

  struct GradientReport: Encodable {
    var model: String
    var cut: String?
    var input: [Int]
    var output: [Int]
    var threads: Int
    var forward_ms: Latency
    var backward_ms: Latency
    var step_ms: Latency
    var images_per_second: Double
    var peak_rss_bytes: Int
  }

  /// Times what white-box inversion runs per step: the forward on the tape with every weight
  /// frozen, then the backward pass for ∂/∂input alone, seeded with a fixed random gradient.
  func runInputGradient(_ graph: Graph) throws {
    // The same activations and gradients every step, as in an attack: keep freed blocks.
    try withBlockReuse { try timeInputGradient(graph) }
  }

  private func timeInputGradient(_ graph: Graph) throws {
    let head = try GraphModel(frozen: graph)
    let shape = ModelSource.inputShape(graph)
    var rng = SeededGenerator(seed: 1)
    let x = Variable(Tensor.randomUniform(shape: shape, low: -1, high: 1, generator: &rng), requiresGrad: true)
    let seed = Tensor.randomNormal(shape: try head(Variable(x.value)).shape, generator: &rng)
    if !json {
      note("bench \(model)\(cut.map { " head to \($0)" } ?? ""): input \(shape), ∂/∂input, \(Engine.shared.threads) threads, \(warmup) warm-up + \(runs) timed runs")
    }
    var forward: [Double] = []
    var backward: [Double] = []
    let now = { Double(DispatchTime.now().uptimeNanoseconds) / 1e6 }
    for i in 0..<(warmup + runs) {
      let t0 = now()
      let y = try head(x)
      let t1 = now()
      x.grad = nil
      try y.backward(seed: seed)
      let t2 = now()
      if i >= warmup {
        forward.append(t1 - t0)
        backward.append(t2 - t1)
      }
    }
    let step = Latency(zip(forward, backward).map { $0 + $1 })
    let report = GradientReport(
      model: model, cut: cut, input: shape, output: seed.shape, threads: Engine.shared.threads,
      forward_ms: Latency(forward), backward_ms: Latency(backward), step_ms: step,
      images_per_second: Double(shape[0]) / (step.median / 1000), peak_rss_bytes: peakResidentBytes())
    if json { return try printJSON(report) }
    print("model        \(model)\(cut.map { ", head to \($0)" } ?? ""), input \(shape) → \(seed.shape), \(report.threads) threads")
    for (name, l) in [("forward", report.forward_ms), ("backward", report.backward_ms), ("step", step)] {
      let label = name.padding(toLength: 13, withPad: " ", startingAt: 0)
      print(label + String(format: "min %.1f ms, median %.1f ms, p90 %.1f ms", l.min, l.median, l.p90))
    }
    print(String(format: "throughput   %.1f images/s (forward + ∂/∂input)", report.images_per_second))
    print(String(format: "memory       peak RSS %.1f MiB", Double(report.peak_rss_bytes) / 1_048_576))
  }

  /// Median step times over `runs` profiled passes, summed by kernel.
  func printProfile(_ exec: Executor, _ x: Tensor) throws {
    var per: [[Double]] = []
    var names: [StepTiming] = []
    for _ in 0..<max(runs, 3) {
      let steps = try exec.profile([x]).steps
      names = steps
      per.append(steps.map(\.seconds))
    }
    let med = names.indices.map { i in per.map { $0[i] }.median }
    let total = med.reduce(0, +)
    var byKernel: [String: (Double, Int)] = [:]
    for (i, k) in exec.kernelNames.enumerated() {
      byKernel[k, default: (0, 0)].0 += med[i]
      byKernel[k, default: (0, 0)].1 += 1
    }
    print("time by kernel (median of \(max(runs, 3)) profiled passes, sum \(String(format: "%.2f", total * 1000)) ms):")
    for (k, v) in byKernel.sorted(by: { $0.value.0 > $1.value.0 }) {
      print(String(format: "  %-40@ %4d steps %9.3f ms %5.1f %%", k as NSString, v.1, v.0 * 1000, 100 * v.0 / total))
    }
    print("slowest steps:")
    for i in med.indices.sorted(by: { med[$0] > med[$1] }).prefix(10) {
      print(String(format: "  %-40@ %-28@ %8.3f ms", names[i].node as NSString, exec.kernelNames[i] as NSString, med[i] * 1000))
    }
  }
}
