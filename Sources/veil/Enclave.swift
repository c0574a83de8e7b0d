import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import VeilGraph
import VeilPlanning
import VeilServing
import VeilTEE
import X509

/// `veil enclave serve`: the enclave tier (issue 8). The `veil enclave` group itself, and its
/// `manifest` subcommand, live in Attest.swift.
struct EnclaveServe: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve a plan's head behind the attested channel; send the feature maps to an accelerator.",
    discussion: """
      Reads the plan (plan.json or its folder: head, tail, preprocessing, input size), checks the
      head's digest, and serves veil.enclave.v1.EnclaveService over gRPC: a client's first call is
      the attested handshake (evidence over the handshake transcript), then each Infer call
      carries one sealed record. The enclave decrypts, runs the head, sends the feature map to
      the accelerator (KServe v2 / Triton gRPC, --accelerator; several endpoints fail over and
      come back when they recover) or runs the tail here (--local-tail), and seals the answer.

      Evidence: a real TEE (Gramine SGX, configfs-tsm) when present; otherwise SIMULATED
      evidence, only with --allow-simulation (its MRENCLAVE covers this binary and the head and
      is printed on standard error for the client's policy; it proves nothing).

      Logs (standard error, swift-log) carry session id prefixes, sizes, timings and error
      kinds, never an input, a feature map, an answer or key material.
      """)

  @Option(help: "The plan: plan.json or the folder holding it.")
  var plan: String
  @Option(
    help: ArgumentHelp(
      "Accelerator endpoints serving the plan's tail, in order of preference.", valueName: "host:port[,host:port]"))
  var accelerator: String?
  @Flag(help: "Run the tail in this process instead of on an accelerator.")
  var localTail = false
  @Flag(
    help:
      "Send each tail request as a ModelInfer call of its own instead of on open ModelStreamInfer streams (the default where the accelerator has them, as Veil's and Triton's do): to compare the two, or through a proxy that does not pass streams."
  )
  var unaryAcceleratorCalls = false
  @Option(help: "Address to listen on.")
  var host = "127.0.0.1"
  @Option(help: "Port (0: any free port; the chosen one is printed on standard error).")
  var port = 7440
  @Flag(help: "Serve SIMULATED evidence when no TEE is found (development only).")
  var allowSimulation = false
  @Option(
    help: ArgumentHelp(
      "SEV-SNP: a folder of AMD collateral (vcek.der, ask.pem, ark.pem, crl.pem from AMD's KDS) to send after each report, where the host's certificate table lacks them; clients still check every signature.",
      valueName: "dir"))
  var snpCollateral: String?
  @Option(help: "Sessions open at once.")
  var maxSessions = 256
  @Option(help: "Sessions open at once from one address.")
  var maxSessionsPerPeer = 32
  @Option(help: "Sessions that have not carried a request yet, all addresses together.")
  var maxUnusedSessions = 64
  @Option(help: "Seconds a session may wait for its first request after its handshake.")
  var unusedTimeout: Double = 10
  @Option(help: "Seconds a session lives after its handshake.")
  var sessionLifetime: Double = 3600
  @Option(help: "Seconds a session may stay idle.")
  var idleTimeout: Double = 300
  @Option(help: "Requests one session may carry.")
  var maxRequestsPerSession: UInt64 = 1_000_000
  @Option(help: "Largest record accepted, in bytes.")
  var maxRecordBytes = 8 << 20
  @Option(help: "Handshakes one address may start per second (bursts of 4 times as many).")
  var handshakesPerSecondPerPeer: Double = 5
  @Option(help: "Evidence generated per second, all addresses together (bursts of twice as many).")
  var evidencePerSecond: Double = 50
  @Option(help: "Seconds one request may take before it is answered `timeout`.")
  var requestTimeout: Double = 120
  @Option(help: "TCP connections open at once.")
  var maxConnections = 1024
  @Option(help: "TCP connections open at once from one address.")
  var maxConnectionsPerPeer = 64
  @Option(help: "Pixels of a photo as its header declares them (plans that preprocess in the enclave).")
  var maxImagePixels = 40_000_000
  @Option(help: "Pixels of a photo after the plan's resize, before its crop.")
  var maxResizedPixels = 16_000_000
  @Option(help: "Seconds an unreachable accelerator is skipped before it is tried again.")
  var retryAfter: Double = 2
  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  var logLevel = "info"
  @Option(help: "Port of the Prometheus /metrics endpoint (requests, errors by kind, head/tail/request latency, open sessions; default: none).")
  var metricsPort: Int?
  @Option(help: "Most requests one head run takes: requests that wait while the head runs go through it together (1: one at a time).")
  var headBatch = 1
  @Option(help: "With --head-batch above 1, how long the first waiting request may wait for others, in milliseconds (under load: a lone request runs at once unless --head-wait-when-idle).")
  var headQueueDelayMs: Double = 0
  @Flag(help: "With --head-batch above 1, a request that finds the head idle also waits --head-queue-delay-ms for company.")
  var headWaitWhenIdle = false
  @OptionGroup var engine: EngineOptions

  func validate() throws {
    guard headBatch >= 1, headQueueDelayMs >= 0 else {
      throw ValidationError("--head-batch must be ≥ 1 and --head-queue-delay-ms ≥ 0, found \(headBatch) and \(headQueueDelayMs)")
    }
    guard (accelerator != nil) != localTail else {
      throw ValidationError("give either --accelerator HOST:PORT[,HOST:PORT] or --local-tail")
    }
    guard Logger.Level(rawValue: logLevel) != nil else {
      throw ValidationError("--log-level '\(logLevel)': expected trace, debug, info, notice, warning, error or critical")
    }
    guard (0...65535).contains(port) else { throw ValidationError("--port \(port): expected 0...65535") }
    if let m = metricsPort, !(0...65535).contains(m) { throw ValidationError("--metrics-port \(m): expected 0...65535") }
    let positive: [(String, Double)] = [
      ("--max-sessions", Double(maxSessions)), ("--max-sessions-per-peer", Double(maxSessionsPerPeer)),
      ("--max-unused-sessions", Double(maxUnusedSessions)), ("--unused-timeout", unusedTimeout),
      ("--session-lifetime", sessionLifetime), ("--idle-timeout", idleTimeout),
      ("--max-requests-per-session", Double(maxRequestsPerSession)), ("--max-record-bytes", Double(maxRecordBytes)),
      ("--handshakes-per-second-per-peer", handshakesPerSecondPerPeer), ("--evidence-per-second", evidencePerSecond),
      ("--request-timeout", requestTimeout), ("--max-connections", Double(maxConnections)),
      ("--max-connections-per-peer", Double(maxConnectionsPerPeer)), ("--max-image-pixels", Double(maxImagePixels)),
      ("--max-resized-pixels", Double(maxResizedPixels)),
    ]
    for (name, value) in positive where !(value > 0) { throw ValidationError("\(name) must be positive, found \(value)") }
  }

  /// The server's configuration from the options.
  var serverConfig: EnclaveServerConfig {
    var limits = EnclaveConfiguration()
    limits.maxSessions = maxSessions
    limits.maxSessionsPerPeer = maxSessionsPerPeer
    limits.maxUnusedSessions = maxUnusedSessions
    limits.unusedTimeout = unusedTimeout
    limits.sessionLifetime = sessionLifetime
    limits.idleTimeout = idleTimeout
    limits.maxRequestsPerSession = maxRequestsPerSession
    limits.maxRecordBytes = maxRecordBytes
    limits.handshakesPerSecondPerPeer = handshakesPerSecondPerPeer
    limits.handshakeBurstPerPeer = 4 * handshakesPerSecondPerPeer
    limits.evidencePerSecond = evidencePerSecond
    limits.evidenceBurst = 2 * evidencePerSecond
    limits.requestTimeout = requestTimeout
    var connections = ConnectionLimits()
    connections.maxConnections = maxConnections
    connections.maxConnectionsPerPeer = maxConnectionsPerPeer
    return EnclaveServerConfig(host: host, port: port, metricsPort: metricsPort, limits: limits, connections: connections)
  }

  func run() async throws {
    try engine.apply()
    let level = Logger.Level(rawValue: logLevel) ?? .info
    LoggingSystem.bootstrap { label in
      var h = StreamLogHandler.standardError(label: label)
      h.logLevel = level
      return h
    }
    let loaded: LoadedPlan
    do { loaded = try DeploymentPlan.load(plan) } catch { throw ValidationError("--plan: \(error)") }
    let backend = try makeBackend(loaded)
    let eng = try EnclaveEngine(
      plan: loaded, backend: backend, headBatch: headBatch, headQueueDelay: .microseconds(Int64(headQueueDelayMs * 1000)),
      headWaitsWhenIdle: headWaitWhenIdle, imageLimits: ImageLimits(maxPixels: maxImagePixels, maxResizedPixels: maxResizedPixels))
    if headBatch > 1 {
      note(
        eng.headBatchStatistics == nil
          ? "head batching off: the head's graph does not re-batch (its shapes are fixed at batch 1)"
          : "head batching: up to \(headBatch) requests per head run, first one waits at most \(headQueueDelayMs) ms")
    }
    let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    let simulation = try allowSimulation ? SimulatedEnclave(binary: binary, head: loaded.headURL) : nil
    let provider: any EvidenceProvider
    var tsm = ConfigfsTSMProvider()
    if let snpCollateral {
      do {
        tsm.snpCollateral = try SNPCollateral(directory: URL(fileURLWithPath: snpCollateral))
      } catch {
        throw ValidationError("--snp-collateral '\(snpCollateral)': \(error)")
      }
    }
    do { provider = try detectEvidenceProvider(tsm: tsm, simulation: simulation) } catch {
      throw ValidationError("\(error); on a machine without a TEE pass --allow-simulation (development only)")
    }
    if let simulation, provider.mode == .simulated {
      note("evidence: SIMULATED (no TEE protects this process); MRENCLAVE \(simulation.mrEnclave.hex)")
    } else {
      note("evidence: \(provider.mode.rawValue)")
    }
    if provider.mode.rawValue != loaded.plan.tee.evidenceMode {
      note("note: the plan expects \(loaded.plan.tee.evidenceMode) evidence; this enclave presents \(provider.mode.rawValue)")
    }
    let server = try EnclaveServer(config: serverConfig, engine: eng, provider: provider, logger: Logger(label: "veil.enclave"))
    let group = ServiceGroup(
      configuration: .init(
        services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint],
        logger: Logger(label: "veil.enclave.lifecycle")))
    try await withThrowingDiscardingTaskGroup { tasks in
      tasks.addTask { try await group.run() }
      let actual = try await server.port()
      if metricsPort != nil {
        note("metrics at http://\(host):\(try await server.metricsPort())/metrics")
      }
      let p = loaded.plan
      note(
        "enclave of \(p.model.name) cut at \(p.cut.name) \(p.cut.featureShape), tail on \(backend.endpoint); listening on \(host):\(actual)"
      )
    }
  }

  func makeBackend(_ loaded: LoadedPlan) throws -> any TailBackend {
    if localTail {
      return try LocalTailBackend(tail: try loaded.readPart(loaded.plan.tail, field: "tail"))
    }
    let endpoints: [Endpoint]
    do { endpoints = try (accelerator ?? "").split(separator: ",").map { try Endpoint(parsing: String($0)) } } catch {
      throw ValidationError("--accelerator: \(error)")
    }
    guard !endpoints.isEmpty else { throw ValidationError("--accelerator: no endpoint given") }
    do {
      return FailoverBackend(
        try KServeTailBackend.backends(endpoints, plan: loaded, streaming: !unaryAcceleratorCalls), retryAfter: retryAfter)
    } catch {
      throw ValidationError("--plan: \(error)")
    }
  }
}

struct Enclave: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Deploy the head in an SGX enclave under Gramine.", subcommands: [EnclaveManifest.self, EnclaveServe.self])
}

struct EnclaveManifest: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "manifest",
    abstract: "Write a Gramine manifest template for `veil enclave serve` under gramine-sgx.",
    discussion: """
      Then: gramine-manifest DIR/veil.manifest.template veil.manifest; gramine-sgx-sign
      --manifest veil.manifest --output veil.manifest.sgx; gramine-sgx-sigstruct-view veil.sig
      gives the mr_enclave to put in the client's policy. See docs/tee.md.
      """)

  @Option(help: "A plan folder or plan.json (`veil plan`): the head and its measured peak memory come from it.")
  var plan: String?
  @Option(help: "The head model file the enclave serves (ONNX, plain or sealed); not with --plan.")
  var head: String?
  @Option(help: "The head's measured peak memory in bytes (veil bench reports it); not with --plan.")
  var peakMemory: Int?
  @Option(help: "Directory to write veil.manifest.template into.")
  var out: String
  @Option(help: "The enclave binary (default: this veil binary).")
  var binary: String?
  @Option(help: "oneDNN kernel threads inside the enclave (default: every core).")
  var threads: Int?

  func validate() throws {
    guard (plan == nil) != (head == nil && peakMemory == nil) else {
      throw ValidationError("give either --plan, or --head with --peak-memory")
    }
    if plan == nil, head == nil || peakMemory == nil { throw ValidationError("--head needs --peak-memory (and the reverse)") }
  }

  /// The head file, its peak memory and the plan file: from the plan (its chosen cut's profile
  /// row) or given (the plan then is `plan.json` beside the head).
  func headAndPeak() throws -> (head: String, peak: Int, plan: String?) {
    guard let plan else {
      guard let head, let peakMemory else { throw ValidationError("--head needs --peak-memory (and the reverse)") }
      return (head, peakMemory, nil)
    }
    let loaded: LoadedPlan
    do { loaded = try DeploymentPlan.load(plan) } catch { throw ValidationError("--plan: \(error)") }
    let document = try? JSONDecoder().decode(PlanDocument.self, from: Data(contentsOf: loaded.file))
    guard let row = document?.planning.row(loaded.plan.cut.name), let peak = row.headPeakBytes else {
      throw ValidationError(
        "--plan \(loaded.file.path): no measured peak memory for cut \(loaded.plan.cut.name) (a plan from `veil plan` has it); pass --head and --peak-memory instead")
    }
    return (loaded.headURL.path, peak, loaded.file.standardizedFileURL.path)
  }

  func run() throws {
    let (head, peakMemory, planFile) = try headAndPeak()
    let bin = URL(fileURLWithPath: binary ?? CommandLine.arguments[0]).standardizedFileURL.path
    let headPath = URL(fileURLWithPath: head).standardizedFileURL.path
    guard FileManager.default.isReadableFile(atPath: headPath) else {
      throw ValidationError("--head '\(head)': no such readable file")
    }
    let libs = try sharedLibraries(of: bin)
    let size: (String) -> Int = { (try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0 }
    var manifest: GramineManifest
    do {
      manifest = try GramineManifest(
        binary: bin, libraries: libs, head: headPath, peakMemory: peakMemory,
        kernelThreads: threads ?? ProcessInfo.processInfo.activeProcessorCount, fileBytes: 0, plan: planFile)
    } catch { throw ValidationError("\(error)") }
    manifest.fileBytes = ([bin, headPath, manifest.plan] + manifest.planFiles + libs).map(size).reduce(0, +)
    if !FileManager.default.fileExists(atPath: manifest.plan) {
      note("note: no \(manifest.plan): `veil enclave serve` inside the enclave reads the plan there (write the plan folder with `veil plan`)")
    }
    do {
      try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
      let file = URL(fileURLWithPath: out).appendingPathComponent("veil.manifest.template")
      try Data(manifest.template.utf8).write(to: file)
      note(
        "wrote \(file.path): enclave size \(manifest.enclaveSize >> 20) MiB, \(manifest.maxThreads) threads, \(libs.count) libraries"
      )
    } catch {
      throw ValidationError("--out '\(out)': \(error.localizedDescription)")
    }
  }
}
