import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import VeilFormats
import VeilGraph
import VeilServing
import VeilTensor

struct Accelerator: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "The accelerator tier: a KServe v2 / Triton gRPC server for model tails, and its benchmark.",
    subcommands: [AcceleratorServe.self, AcceleratorBench.self])
}

/// Options shared by the serving commands: batching and queueing.
struct BatchingOptions: ParsableArguments {
  @Option(help: "Most rows one run takes (dynamic batching); 1 turns batching off.")
  var maxBatch: Int = 1
  @Option(help: "Milliseconds the first request of a batch waits for others (under load: a lone request runs at once unless --wait-when-idle).")
  var maxQueueDelayMs: Double = 2
  @Flag(help: "A request that finds the model idle also waits --max-queue-delay-ms for company (Triton's behaviour).")
  var waitWhenIdle = false
  @Option(help: "Requests that may wait per model version; beyond it calls get RESOURCE_EXHAUSTED.")
  var queueCapacity: Int = 64
  @Option(help: "Compiled executors kept per model version (one per batch size, least recently used dropped).")
  var executorCache: Int = 8

  func validate() throws {
    guard maxBatch >= 1 else { throw ValidationError("--max-batch must be ≥ 1, found \(maxBatch)") }
    guard maxQueueDelayMs >= 0 else { throw ValidationError("--max-queue-delay-ms must be ≥ 0, found \(maxQueueDelayMs)") }
    guard queueCapacity >= 1 else { throw ValidationError("--queue-capacity must be ≥ 1, found \(queueCapacity)") }
    guard executorCache >= 1 else { throw ValidationError("--executor-cache must be ≥ 1, found \(executorCache)") }
  }

  func batching(maxBatch override: Int? = nil) -> KServeBatching {
    KServeBatching(
      maxBatchSize: override ?? maxBatch, maxQueueDelay: .microseconds(Int64(maxQueueDelayMs * 1000)),
      queueCapacity: queueCapacity, executorCacheCapacity: executorCache, waitsWhenIdle: waitWhenIdle)
  }
}

/// One --model argument: PATH, NAME=PATH or NAME=PATH:VERSION.
struct ModelArgument {
  var name: String
  var path: String
  var version: String

  init(parsing text: String) throws {
    var name: String?
    var rest = text
    if let eq = text.firstIndex(of: "="), !FileManager.default.fileExists(atPath: text) {
      name = String(text[..<eq])
      rest = String(text[text.index(after: eq)...])
    }
    var version = "1"
    if let colon = rest.lastIndex(of: ":"), !FileManager.default.fileExists(atPath: rest) {
      let v = String(rest[rest.index(after: colon)...])
      guard !v.isEmpty, !v.contains("/") else {
        throw ValidationError("--model \(text): the version after ':' must be a non-empty name such as 1 or 2")
      }
      version = v
      rest = String(rest[..<colon])
    }
    guard !rest.isEmpty else { throw ValidationError("--model \(text): no model path; give PATH, NAME=PATH or NAME=PATH:VERSION") }
    let stem = URL(fileURLWithPath: rest).deletingPathExtension().lastPathComponent
    self.name = name ?? stem
    guard !self.name.isEmpty, self.name.allSatisfy({ $0.isLetter || $0.isNumber || "_-.".contains($0) }) else {
      throw ValidationError("--model \(text): model name '\(self.name)' may hold letters, digits, '_', '-' and '.' only")
    }
    self.path = rest
    self.version = version
  }
}

struct AcceleratorServe: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve model tails over the KServe v2 / Triton gRPC protocol (inference.GRPCInferenceService).",
    discussion: """
      Each --model is a tail ONNX file from `veil split`, a whole model file or a zoo name, as PATH \
      (name: the file's stem, version 1), NAME=PATH or NAME=PATH:VERSION; give several to serve \
      several models or versions. Clients: Veil's enclave (`veil enclave serve --accelerator`), \
      NVIDIA tritonclient, or any KServe v2 client. Requests are checked against the shapes the \
      model declares (batch -1 where the model batches). With --max-batch N > 1, requests that \
      arrive within --max-queue-delay-ms are run as one batch of up to N rows. SIGINT/SIGTERM \
      finish the calls in flight, then exit. Logs go to standard error; with --metrics-port, \
      Prometheus metrics are served at http://HOST:PORT/metrics.
      """)

  @Option(help: "PATH, NAME=PATH or NAME=PATH:VERSION (repeatable).")
  var model: [String] = []
  @Option(
    help: ArgumentHelp(
      "A model file or zoo name whose every cut's tail is served, as STEM.CUT (what `veil profile|plan --accelerator HOST:PORT` times; repeatable).",
      valueName: "model"))
  var everyCut: [String] = []
  @Option(help: "Address to listen on.")
  var host: String = "127.0.0.1"
  @Option(help: "gRPC port (0: any free port, printed at start).")
  var port: Int = 8001
  @Option(help: "Port of the Prometheus /metrics endpoint (default: none).")
  var metricsPort: Int?
  @Flag(help: "Compile the executors of batch sizes 1 up to --max-batch (as many as --executor-cache keeps) at start, not at first use.")
  var precompile = false
  @Option(help: "TCP connections open at once.")
  var maxConnections = 1024
  @Option(help: "TCP connections open at once from one address.")
  var maxConnectionsPerPeer = 256
  @OptionGroup var batching: BatchingOptions
  @OptionGroup var engine: EngineOptions

  func validate() throws {
    guard !model.isEmpty || !everyCut.isEmpty else {
      throw ValidationError("give at least one --model (a tail ONNX file from `veil split`) or --every-cut MODEL")
    }
    guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0…65535, found \(port)") }
    if let m = metricsPort, !(0...65535).contains(m) { throw ValidationError("--metrics-port must be in 0…65535, found \(m)") }
    guard maxConnections >= 1, maxConnectionsPerPeer >= 1 else {
      throw ValidationError("--max-connections and --max-connections-per-peer must be ≥ 1")
    }
  }

  func run() async throws {
    try engine.apply()
    var logger = Logger(label: "veil.accelerator") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = .info
    let metrics = AcceleratorMetrics(maxBatchSize: batching.maxBatch)
    var repository = KServeModelRepository()
    for text in model {
      let arg = try ModelArgument(parsing: text)
      let graph: Graph
      do { graph = try ModelSource.load(arg.path) } catch let e as ValidationError { throw e } catch {
        throw ValidationError("--model \(text): \(error)")
      }
      let m: KServeModel
      do {
        m = try KServeModel(
          KServeModelSpec(name: arg.name, version: arg.version, graph: graph, batching: batching.batching()), metrics: metrics)
      } catch { throw ValidationError("--model \(text): \(error)") }
      if precompile { try m.precompile() }
      do { try repository.add(m) } catch { throw ValidationError("\(error)") }
      let shapes = m.inputs.map { "\($0.name) \($0.shape)" }.joined(separator: ", ")
      note(
        "model \(m.name) version \(m.version): inputs \(shapes); "
          + (m.batches ? "max batch \(m.batching.maxBatchSize)" : "fixed batch (the graph does not re-batch)"))
    }
    for source in everyCut {
      // The tails of every structural cut, for profiling from the enclave's side.
      let graph: Graph
      let cuts: [CutPoint]
      do {
        try ModelSource.check(source)
        graph = try ModelSource.load(source)
        cuts = try graph.candidateCuts()
      } catch let e as ValidationError { throw e } catch { throw ValidationError("--every-cut \(source): \(error)") }
      for cut in cuts {
        let name = DeploymentPlan.profilingTailName(model: source, cut: cut.name)
        do {
          let tail = try graph.split(at: cut).tail
          try repository.add(
            try KServeModel(KServeModelSpec(name: name, version: "1", graph: tail, batching: batching.batching()), metrics: metrics))
        } catch { throw ValidationError("--every-cut \(source), cut \(cut.name): \(error)") }
      }
      note("every cut of \(source): \(cuts.count) tails, \(cuts.map { DeploymentPlan.profilingTailName(model: source, cut: $0.name) }.joined(separator: ", "))")
    }
    var connections = AcceleratorServerConfig().connections
    connections.maxConnections = maxConnections
    connections.maxConnectionsPerPeer = maxConnectionsPerPeer
    let server = AcceleratorServer(
      config: AcceleratorServerConfig(host: host, port: port, metricsPort: metricsPort, connections: connections),
      repository: repository, metrics: metrics, logger: logger)
    let group = ServiceGroup(
      configuration: .init(services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    async let serving: Void = group.run()
    note("serving inference.GRPCInferenceService on \(host):\(try await server.port())")
    try await serving
  }
}

struct AcceleratorBench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Throughput and latency of the accelerator service with dynamic batching off and on, in one run.",
    discussion: """
      Cuts --model at --cut, serves the tail on a loopback port of this process, and runs \
      --clients concurrent KServe v2 clients (each its own HTTP/2 connection) that send \
      --requests feature maps in all, first with batching off (--max-batch 1), then on \
      (--max-batch N). Every answer is checked against the tail run directly at batch 1 (max \
      |difference| ≤ 1e-3 × the largest |value|); wrong or lost answers are counted and make the \
      command fail. Executors are compiled before timing. Prints throughput (requests/s) and \
      p50/p90/p99 latency per mode and the speed-up; --json writes one document.
      """)

  @Option(help: "A zoo model name or a model file.")
  var model: String = "resnet50"
  @Option(help: "Cut name (see `veil cuts`); the tail after it is served.")
  var cut: String = "layer3"
  @Option(help: "Concurrent clients.")
  var clients: Int = 8
  @Option(help: "Timed requests per mode, across all clients.")
  var requests: Int = 96
  @Option(help: "Max batch of the batching-on mode.")
  var maxBatch: Int = 8
  @Option(help: "Milliseconds the first request of a batch waits for others (batching on).")
  var maxQueueDelayMs: Double = 5
  @Flag(help: "Send each request as a ModelInfer call of its own instead of on open ModelStreamInfer streams (the default).")
  var unary = false
  @Flag(help: "Print one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  struct Mode: Encodable {
    var mode: String
    var max_batch: Int
    var max_queue_delay_ms: Double
    var requests: Int
    var wrong: Int
    var lost: Int
    var seconds: Double
    var throughput_rps: Double
    var latency_ms: [String: Double]
    var batches_run: Int
    var mean_batch_rows: Double
  }
  struct Report: Encodable {
    var model: String
    var cut: String
    var tail_input: [Int]
    var clients: Int
    var threads: Int
    var modes: [Mode]
    var speedup: Double
  }

  func validate() throws {
    guard clients >= 1 else { throw ValidationError("--clients must be ≥ 1, found \(clients)") }
    guard requests >= clients else { throw ValidationError("--requests (\(requests)) must be ≥ --clients (\(clients))") }
    guard maxBatch >= 2 else { throw ValidationError("--max-batch must be ≥ 2 (the batching-on mode), found \(maxBatch)") }
  }

  func run() async throws {
    try engine.apply()
    let whole = try ModelSource.load(model)
    let point: CutPoint
    do { point = try whole.cut(named: cut) } catch { throw ValidationError("\(error)") }
    let tail = try whole.split(at: point).tail
    guard tail.inputs.count == 1, let inShape = tail.shape(tail.inputs[0]) else {
      throw ValidationError("the tail after '\(cut)' must have one input of known shape")
    }
    let inputName = tail[tail.inputs[0]].name
    // Distinct non-negative feature maps (what a ReLU leaves) and their direct answers.
    var rng = SeededGenerator(seed: 7)
    let samples = (0..<8).map { _ in Tensor(shape: inShape) { b in for i in b.indices { b[i] = max(0, rng.nextNormal()) } } }
    let direct = try Executor(graph: tail)
    let expected = try samples.map { try direct.run([$0])[0] }
    note("bench serving: \(model) tail after \(cut), input \(inShape), \(clients) clients, \(requests) requests per mode")

    var modes: [Mode] = []
    for (name, mb, delay) in [("batching off", 1, 0.0), ("batching on", maxBatch, maxQueueDelayMs)] {
      let batching = KServeBatching(
        maxBatchSize: mb, maxQueueDelay: .microseconds(Int64(delay * 1000)), queueCapacity: max(64, clients * 2),
        executorCacheCapacity: mb)
      let m = try KServeModel(KServeModelSpec(name: "tail", version: "1", graph: tail, batching: batching))
      note("\(name): compiling executors for batch 1…\(mb)")
      try m.precompile()
      var repository = KServeModelRepository()
      try repository.add(m)
      var logger = Logger(label: "veil.accelerator.bench") { StreamLogHandler.standardError(label: $0) }
      logger.logLevel = .warning
      let server = AcceleratorServer(
        config: AcceleratorServerConfig(host: "127.0.0.1", port: 0), repository: repository, metrics: AcceleratorMetrics(),
        logger: logger)
      let serving = Task { try await server.run() }
      let port = try await server.port()
      let endpoint = KServeEndpoint(host: "127.0.0.1", port: port)
      let conns = try (0..<clients).map { _ in
        try KServeClient(endpoint: endpoint, defaultTimeout: .seconds(120), streaming: !unary)
      }
      // Warm-up: one request per client, so connections are open before timing.
      try await withThrowingTaskGroup(of: Void.self) { g in
        for c in conns {
          g.addTask { _ = try await c.infer(model: "tail", inputs: [KServeTensor(name: inputName, tensor: samples[0])]) }
        }
        try await g.waitForAll()
      }
      let before = m.statistics
      let perClient = (0..<clients).map { requests / clients + ($0 < requests % clients ? 1 : 0) }
      let t0 = DispatchTime.now().uptimeNanoseconds
      let results = await withTaskGroup(of: (latencies: [Double], wrong: Int, lost: Int).self) { g in
        for (ci, c) in conns.enumerated() {
          g.addTask {
            var lat: [Double] = []
            var wrong = 0
            var lost = 0
            for r in 0..<perClient[ci] {
              let k = (ci + r * clients) % samples.count
              let s = DispatchTime.now().uptimeNanoseconds
              do {
                let out = try await c.infer(model: "tail", inputs: [KServeTensor(name: inputName, tensor: samples[k])])
                lat.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
                if let y = out.outputs.first?.tensor, !Self.close(y, expected[k]) { wrong += 1 }
              } catch {
                lost += 1
                note("request failed: \(error)")
              }
            }
            return (lat, wrong, lost)
          }
        }
        var all: [(latencies: [Double], wrong: Int, lost: Int)] = []
        for await r in g { all.append(r) }
        return all
      }
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
      let after = m.statistics
      for c in conns { await c.close() }
      server.beginGracefulShutdown()
      try await serving.value
      let lat = results.flatMap(\.latencies).sorted()
      func pct(_ p: Double) -> Double { percentile(lat, p / 100) }
      let batches = after.batches - before.batches
      modes.append(
        Mode(
          mode: name, max_batch: mb, max_queue_delay_ms: delay, requests: requests, wrong: results.reduce(0) { $0 + $1.wrong },
          lost: results.reduce(0) { $0 + $1.lost }, seconds: seconds, throughput_rps: Double(lat.count) / seconds,
          latency_ms: ["p50": pct(50), "p90": pct(90), "p99": pct(99)], batches_run: batches,
          mean_batch_rows: batches == 0 ? 0 : Double(after.rows - before.rows) / Double(batches)))
    }
    let report = Report(
      model: model, cut: cut, tail_input: inShape, clients: clients, threads: Engine.shared.threads, modes: modes,
      speedup: modes[1].throughput_rps / max(modes[0].throughput_rps, 1e-9))
    if json {
      try printJSON(report)
    } else {
      print("accelerator serving: \(model) tail after \(cut) (input \(inShape)), \(clients) clients, \(report.threads) threads, loopback gRPC")
      print("mode            max batch   req/s     p50 ms    p90 ms    p99 ms   mean rows  wrong  lost")
      for m in modes {
        print(
          pad(m.mode, 16) + pad("\(m.max_batch)", 12) + pad(String(format: "%.1f", m.throughput_rps), 10)
            + pad(String(format: "%.1f", m.latency_ms["p50"] ?? 0), 10) + pad(String(format: "%.1f", m.latency_ms["p90"] ?? 0), 10)
            + pad(String(format: "%.1f", m.latency_ms["p99"] ?? 0), 9) + pad(String(format: "%.2f", m.mean_batch_rows), 11)
            + pad("\(m.wrong)", 7) + "\(m.lost)")
      }
      print(String(format: "speed-up with batching: %.2f×", report.speedup))
    }
    let bad = modes.reduce(0) { $0 + $1.wrong + $1.lost }
    if bad > 0 { throw ValidationError("\(bad) answers were wrong or lost") }
  }

  /// Max |a − b| ≤ 1e-3 × max |b| (batched and single runs may block the sums differently).
  static func close(_ a: Tensor, _ b: Tensor) -> Bool {
    guard a.shape == b.shape else { return false }
    let x = a.scalars
    let y = b.scalars
    let scale = max(y.map(abs).max() ?? 0, 1e-6)
    return zip(x, y).allSatisfy { abs($0 - $1) <= 1e-3 * scale }
  }
}
