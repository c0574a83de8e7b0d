import Dispatch
import Foundation
import GRPCCore
import Logging
import Metrics
import SwiftProtobuf
import VeilData
import VeilGraph
import VeilTEE
import VeilTensor

/// Limits of the enclave service. Every one bounds memory or time a client can take.
public struct EnclaveConfiguration: Sendable {
  /// Sessions open at once; a handshake beyond it is refused (RESOURCE_EXHAUSTED).
  public var maxSessions = 256
  /// A session ends this long after its handshake, however busy.
  public var sessionLifetime: Double = 3600
  /// A session ends after this long without a request.
  public var idleTimeout: Double = 300
  /// Requests one session may carry.
  public var maxRequestsPerSession: UInt64 = 1_000_000
  /// The largest record accepted (a 224×224 RGB float tensor is 602 kB; a PNG of it less).
  public var maxRecordBytes = 8 << 20
  /// How often expired sessions are swept.
  public var sweepInterval: Double = 5

  public init() {}
}

/// The model part the enclave runs: preprocessing (when the plan puts it here), the head on
/// Veil's engine, the tail through a `TailBackend`, and the answer (logits, top-k with labels).
/// Never logs an input, a feature map or an answer.
public final class EnclaveEngine: Sendable {
  public let plan: LoadedPlan
  public let backend: any TailBackend
  public let labels: [String]?
  /// How the head runs: its executor, one request at a time, or (head batching) behind the
  /// accelerator's scheduler (one worker thread, an executor per batch size), so requests that
  /// wait for the head run as one batch. Either way the enclave holds one copy of the weights.
  private enum HeadRunner: Sendable {
    case direct(Executor)
    case batched(KServeModel)
  }
  private let head: HeadRunner
  private let preprocessing: VeilData.Preprocessing
  private let maxTopK: Int
  /// Head runs happen here, off the cooperative pool; the executor's lock serialises them.
  private let queue = DispatchQueue(label: "veil.enclave.head", attributes: .concurrent)

  /// `headBatch` > 1 turns on batching of the head: requests that arrive while the head runs
  /// wait (no longer than `headQueueDelay` for the first of them) and then run together, up to
  /// `headBatch` rows. Their feature maps leave together too, so an accelerator that batches
  /// sees them at once rather than spaced by the head's time. A head whose graph does not
  /// re-batch runs one request at a time.
  public init(
    plan: LoadedPlan, backend: any TailBackend, maxTopK: Int = 100, headBatch: Int = 1,
    headQueueDelay: Duration = .zero, headQueueCapacity: Int = 256
  ) throws {
    self.plan = plan
    self.backend = backend
    let head = try plan.readPart(plan.plan.head, field: "head")
    let out = head.outputs.first.flatMap { head.shape($0) }
    guard head.inputs.count == 1, head.outputs.count == 1, out == plan.plan.cut.featureShape else {
      throw EnclaveError.plan(
        file: plan.file.path, field: "cut.featureShape",
        detail: "the head's output is \(out.map { "\($0)" } ?? "unknown"), the plan says \(plan.plan.cut.featureShape)")
    }
    var runner: HeadRunner?
    if headBatch > 1 {
      let model = try KServeModel(
        KServeModelSpec(
          name: "head", graph: head,
          batching: KServeBatching(maxBatchSize: headBatch, maxQueueDelay: headQueueDelay, queueCapacity: headQueueCapacity)))
      if model.batches { runner = .batched(model) } else { model.shutdown() }
    }
    self.head = try runner ?? .direct(Executor(graph: head))
    labels = try plan.labelNames()
    preprocessing = try plan.plan.imagePreprocessing
    self.maxTopK = maxTopK
  }

  /// Photos larger than this are refused before decoding (a small PNG can inflate to gigabytes).
  public static let maxImagePixels = 40_000_000

  /// The model input of a request, checked against the plan.
  func input(_ request: EnclaveRequestMessage) throws -> Tensor {
    let p = plan.plan
    let x: Tensor
    switch request.input {
    case .tensor(let t):
      guard p.preprocessing.appliedIn == .client else {
        throw EnclaveError.invalidInput("this plan preprocesses in the enclave: send the encoded photo (PNG/JPEG), not a tensor")
      }
      x = try t.tensor(maxElements: p.input.shape.reduce(1, *))
    case .image(let bytes):
      guard p.preprocessing.appliedIn == .enclave else {
        throw EnclaveError.invalidInput(
          "this plan preprocesses on the client: send the \(p.input.shape) input tensor (\(p.preprocessing.preset) preprocessing), not a photo")
      }
      if let (w, h) = encodedImageSize(Array(bytes.prefix(1 << 16))), w * h > Self.maxImagePixels {
        throw EnclaveError.invalidInput(
          "the photo is \(w)×\(h) pixels, more than the enclave decodes (\(Self.maxImagePixels / 1_000_000) megapixels); scale it down")
      }
      do {
        let decoded = try ImageCodec.decode(bytes, name: "the request's photo")
        x = try preprocessing.tensor(decoded.byteImage().oriented(exif: decoded.orientation))
      } catch {
        throw EnclaveError.invalidInput("\(error)")
      }
    case nil:
      throw EnclaveError.invalidInput("the request carries neither a tensor nor a photo")
    }
    guard x.shape == p.input.shape else {
      throw EnclaveError.invalidInput("the model takes \(p.input.shape) (\(p.input.layout)), the request's tensor is \(x.shape)")
    }
    return x
  }

  /// Runs head then tail. The answer's `accelerator` names the endpoint that ran the tail.
  public func run(_ x: Tensor) async throws -> (logits: Tensor, headMs: Double, tailMs: Double, endpoint: String) {
    let t0 = DispatchTime.now()
    let features: Tensor
    switch head {
    case .batched(let model):
      do {
        features = try await model.infer([x])[0]
      } catch let e as RPCError where e.code == .resourceExhausted {
        throw EnclaveError.overloaded("\(model.batching.queueCapacity) requests already wait for the head; retry later")
      }
    case .direct(let executor):
      features = try await runBlocking(on: queue) { try executor.run([x])[0] }
    }
    let t1 = DispatchTime.now()
    let logits: Tensor
    let endpoint: String
    if let failover = backend as? FailoverBackend {
      (logits, endpoint) = try await failover.inferReporting(features)
    } else {
      logits = try await backend.infer(features)
      endpoint = backend.endpoint
    }
    let t2 = DispatchTime.now()
    return (logits, ms(t0, t1), ms(t1, t2), endpoint)
  }

  /// With head batching: head runs so far and the rows they took (mean batch = rows / runs).
  public var headBatchStatistics: (runs: Int, rows: Int)? {
    guard case .batched(let model) = head else { return nil }
    return (runs: model.statistics.batches, rows: model.statistics.rows)
  }

  deinit { if case .batched(let model) = head { model.shutdown() } }

  /// The whole request: never throws; every failure becomes an error answer.
  public func answer(_ request: EnclaveRequestMessage) async -> EnclaveResponseMessage {
    var response = EnclaveResponseMessage()
    do {
      guard request.topK <= maxTopK else {
        throw EnclaveError.invalidInput("top_k \(request.topK) exceeds the enclave's limit of \(maxTopK)")
      }
      let t0 = DispatchTime.now()
      let x = try input(request)
      let r = try await run(x)
      var result = EnclaveResultMessage()
      if request.wantLogits { result.logits = TensorMessage(r.logits) }
      let row = r.logits.scalars
      result.top = topK(row, Int(request.topK)).map { c in
        var s = Veil_Enclave_V1_ClassScore()
        s.index = UInt32(c.index)
        s.score = c.score
        if let labels, c.index < labels.count { s.label = labels[c.index] }
        return s
      }
      result.headMs = r.headMs
      result.tailMs = r.tailMs
      result.totalMs = ms(t0, DispatchTime.now())
      result.accelerator = r.endpoint
      response.result = result
    } catch {
      var e = Veil_Enclave_V1_EnclaveError()
      if let ee = error as? EnclaveError {
        e.kind = ee.kind
        e.message = ee.description
      } else if error is CancellationError {
        e.kind = "cancelled"
        e.message = "the request was cancelled"
      } else {
        e.kind = "internal"
        e.message = "\(error)"
      }
      response.error = e
    }
    return response
  }
}

/// Width and height from a PNG's IHDR or a JPEG's SOF marker, without decoding; nil when the
/// header is not found in `bytes` (the decoder then reports what is wrong).
func encodedImageSize(_ bytes: [UInt8]) -> (Int, Int)? {
  func be(_ i: Int, _ n: Int) -> Int { bytes[i..<(i + n)].reduce(0) { $0 << 8 | Int($1) } }
  if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]), bytes.count >= 24 { return (be(16, 4), be(20, 4)) }
  guard bytes.starts(with: [0xFF, 0xD8]) else { return nil }
  var i = 2
  while i + 9 < bytes.count {
    guard bytes[i] == 0xFF else { return nil }
    let marker = bytes[i + 1]
    if marker == 0xFF {
      i += 1
      continue
    }
    let sof: ClosedRange<UInt8> = 0xC0...0xCF
    if sof.contains(marker), ![0xC4, 0xC8, 0xCC].contains(marker) { return (be(i + 7, 2), be(i + 5, 2)) }
    i += 2 + be(i + 2, 2)
  }
  return nil
}

func ms(_ a: DispatchTime, _ b: DispatchTime) -> Double {
  Double(b.uptimeNanoseconds - a.uptimeNanoseconds) / 1e6
}

/// Open sessions: the channel state, its limits and its one-request-at-a-time flag.
public actor EnclaveSessions {
  struct Entry {
    var channel: SealedChannel
    var created: Double
    var lastUsed: Double
    var requests: UInt64 = 0
    var busy = false
  }

  private var entries: [String: Entry] = [:]
  let configuration: EnclaveConfiguration

  init(configuration: EnclaveConfiguration) {
    self.configuration = configuration
  }

  public var count: Int { entries.count }

  private func now() -> Double { Date().timeIntervalSinceReferenceDate }

  func hasRoom() -> Bool {
    sweep()
    return entries.count < configuration.maxSessions
  }

  func add(_ channel: SealedChannel) -> String? {
    guard hasRoom() else { return nil }
    var id = ""
    repeat {
      id = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    } while entries[id] != nil
    let t = now()
    entries[id] = Entry(channel: channel, created: t, lastUsed: t)
    return id
  }

  /// Why a session cannot carry a request, or nil.
  private func expiry(_ e: Entry, at t: Double) -> String? {
    if t - e.created > configuration.sessionLifetime {
      return "expired: its lifetime of \(Int(configuration.sessionLifetime)) s is over"
    }
    if !e.busy, t - e.lastUsed > configuration.idleTimeout {
      return "expired: idle for more than \(Int(configuration.idleTimeout)) s"
    }
    if e.channel.isClosed { return "closed (\(e.channel.closedReason ?? "by the channel"))" }
    return nil
  }

  /// Takes the session for one request.
  func begin(_ id: String) throws -> SealedChannel {
    guard var e = entries[id] else {
      throw RPCError(code: .notFound, message: "session \(id.prefix(8)): unknown, expired or closed; start a new handshake")
    }
    if let why = expiry(e, at: now()) {
      entries[id] = nil
      throw RPCError(code: .failedPrecondition, message: "session \(id.prefix(8)) \(why); start a new handshake")
    }
    guard !e.busy else {
      throw RPCError(
        code: .failedPrecondition,
        message: "session \(id.prefix(8)) already has a request in flight; a session carries one request at a time (open more sessions to send in parallel)")
    }
    guard e.requests < configuration.maxRequestsPerSession else {
      entries[id] = nil
      throw RPCError(
        code: .resourceExhausted,
        message: "session \(id.prefix(8)) reached its limit of \(configuration.maxRequestsPerSession) requests; start a new handshake")
    }
    e.busy = true
    e.requests += 1
    entries[id] = e
    return e.channel
  }

  /// Releases the session after a request; a closed channel ends it.
  func end(_ id: String) {
    guard var e = entries[id] else { return }
    if e.channel.isClosed {
      entries[id] = nil
      return
    }
    e.busy = false
    e.lastUsed = now()
    entries[id] = e
  }

  func remove(_ id: String) -> SealedChannel? {
    entries.removeValue(forKey: id)?.channel
  }

  /// Drops expired and closed sessions; returns how many.
  @discardableResult
  func sweep() -> Int {
    let t = now()
    let dead = entries.filter { expiry($0.value, at: t) != nil }.map(\.key)
    for id in dead { entries[id] = nil }
    return dead.count
  }
}

/// The gRPC enclave service: the attested handshake, then sealed inference records.
///
/// Logs carry session id prefixes, sizes, timings and error kinds, never an input, a feature
/// map, an answer or key material.
public final class EnclaveService: Veil_Enclave_V1_EnclaveService.SimpleServiceProtocol {
  public let engine: EnclaveEngine
  public let provider: any EvidenceProvider
  public let configuration: EnclaveConfiguration
  public let sessions: EnclaveSessions
  private let deployment: Veil_Enclave_V1_DeploymentInfo
  private let logger: Logger
  private let requestCounter: Counter
  private let errorCounters: [String: Counter]
  private let latency: Metrics.Timer
  private let handshakes: Counter
  private let headLatency: Metrics.Timer
  private let tailLatency: Metrics.Timer
  private let openSessions: Gauge

  /// `metrics`: where requests, errors by kind, latencies and open sessions are recorded (a
  /// Prometheus factory for `--metrics-port`); nil records into swift-metrics' global system.
  public init(
    engine: EnclaveEngine, provider: any EvidenceProvider, configuration: EnclaveConfiguration = .init(),
    logger: Logger = Logger(label: "veil.enclave"), metrics: (any MetricsFactory)? = nil
  ) throws {
    self.engine = engine
    self.provider = provider
    self.configuration = configuration
    sessions = EnclaveSessions(configuration: configuration)
    var info = Veil_Enclave_V1_DeploymentInfo()
    info.planJson = try engine.plan.plan.encoded()
    deployment = info
    self.logger = logger
    let factory = metrics ?? MetricsSystem.factory
    requestCounter = Counter(label: "veil_enclave_requests_total", factory: factory)
    handshakes = Counter(label: "veil_enclave_handshakes_total", factory: factory)
    errorCounters = Dictionary(
      uniqueKeysWithValues: [
        "invalid-input", "accelerator-unavailable", "accelerator-error", "internal", "cancelled", "record", "session",
        "oversized",
      ].map { ($0, Counter(label: "veil_enclave_errors_total", dimensions: [("kind", $0)], factory: factory)) })
    latency = Metrics.Timer(label: "veil_enclave_request_duration_seconds", factory: factory)
    headLatency = Metrics.Timer(label: "veil_enclave_head_duration_seconds", factory: factory)
    tailLatency = Metrics.Timer(label: "veil_enclave_tail_duration_seconds", factory: factory)
    openSessions = Gauge(label: "veil_enclave_sessions_open", factory: factory)
  }

  private func countError(_ kind: String) {
    (errorCounters[kind] ?? errorCounters["internal"])?.increment()
  }

  /// Sweeps expired sessions until cancelled; run it next to the server.
  public func runSweeper() async {
    while !Task.isCancelled {
      try? await Task.sleep(nanoseconds: UInt64(configuration.sweepInterval * 1e9))
      let n = await sessions.sweep()
      openSessions.record(await sessions.count)
      if n > 0 { logger.debug("swept expired sessions", metadata: ["count": "\(n)"]) }
    }
  }

  public func handshake(
    request: Veil_Enclave_V1_HandshakeRequest, context: ServerContext
  ) async throws -> Veil_Enclave_V1_HandshakeResponse {
    guard await sessions.hasRoom() else {
      countError("session")
      throw RPCError(
        code: .resourceExhausted,
        message: "\(configuration.maxSessions) sessions are open, the enclave's limit; retry later or close idle sessions")
    }
    let hello: [UInt8]
    let channel: SealedChannel
    do {
      let r = try EnclaveHandshake.respond(to: Array(request.clientHello), provider: provider)
      hello = r.serverHello
      channel = SealedChannel(r.session)
    } catch let e as TEEError {
      countError("record")
      logger.notice("handshake refused", metadata: ["error": "\(e)"])
      throw RPCError(code: .invalidArgument, message: "handshake refused: \(e)")
    }
    let sealed = try channel.seal(deployment)
    guard let id = await sessions.add(channel) else {
      throw RPCError(code: .resourceExhausted, message: "\(configuration.maxSessions) sessions are open; retry later")
    }
    handshakes.increment()
    openSessions.record(await sessions.count)
    logger.info("session opened", metadata: ["session": "\(id.prefix(8))", "evidence": "\(provider.mode.rawValue)"])
    var response = Veil_Enclave_V1_HandshakeResponse()
    response.sessionID = id
    response.serverHello = Data(hello)
    response.sealedDeployment = Data(sealed)
    response.maxRequests = configuration.maxRequestsPerSession
    response.lifetimeSeconds = configuration.sessionLifetime
    response.idleSeconds = configuration.idleTimeout
    return response
  }

  public func infer(
    request: Veil_Enclave_V1_InferRequest, context: ServerContext
  ) async throws -> Veil_Enclave_V1_InferResponse {
    let id = request.sessionID
    let tag = String(id.prefix(8))
    guard request.record.count <= configuration.maxRecordBytes else {
      countError("oversized")
      logger.notice("oversized record refused", metadata: ["session": "\(tag)", "bytes": "\(request.record.count)"])
      throw RPCError(
        code: .resourceExhausted,
        message: "record of \(request.record.count) bytes exceeds the enclave's limit of \(configuration.maxRecordBytes) bytes (the session is unchanged)")
    }
    let channel: SealedChannel
    do { channel = try await sessions.begin(id) } catch {
      countError("session")
      logger.notice("request refused", metadata: ["session": "\(tag)", "reason": "\(error)"])
      throw error
    }
    let start = DispatchTime.now()
    // The answer is sealed only when it will be sent: a cancelled request leaves both sides'
    // sequence numbers where they were.
    let response: Veil_Enclave_V1_InferResponse
    do {
      response = try await serve(channel: channel, record: Array(request.record), tag: tag)
    } catch {
      await sessions.end(id)
      throw error
    }
    await sessions.end(id)
    requestCounter.increment()
    latency.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds))
    return response
  }

  private func serve(channel: SealedChannel, record: [UInt8], tag: String) async throws -> Veil_Enclave_V1_InferResponse {
    let plaintext: [UInt8]
    do {
      switch try channel.open(record) {
      case .data(let bytes): plaintext = bytes
      case .closed:
        throw RPCError(code: .invalidArgument, message: "a close record was sent to Infer; the session is closed (use Close)")
      }
    } catch let e as TEEError {
      countError("record")
      logger.notice("record refused, session closed", metadata: ["session": "\(tag)", "error": "\(e)"])
      throw RPCError(code: .permissionDenied, message: "record refused, the session is closed: \(e); start a new handshake")
    }
    var answer: EnclaveResponseMessage
    do {
      answer = await engine.answer(try EnclaveRequestMessage(serializedBytes: plaintext))
    } catch {
      var e = Veil_Enclave_V1_EnclaveError()
      e.kind = "invalid-input"
      e.message = "the record's plaintext is not an EnclaveRequest message: \(error)"
      answer = EnclaveResponseMessage()
      answer.error = e
    }
    if case .error(let e) = answer.outcome {
      countError(e.kind)
      logger.notice("request failed", metadata: ["session": "\(tag)", "kind": "\(e.kind)"])
    } else if case .result(let r) = answer.outcome {
      headLatency.recordNanoseconds(Int64(r.headMs * 1e6))
      tailLatency.recordNanoseconds(Int64(r.tailMs * 1e6))
      logger.debug(
        "request served",
        metadata: ["session": "\(tag)", "head_ms": "\(r.headMs)", "tail_ms": "\(r.tailMs)", "accelerator": "\(r.accelerator)"])
    }
    try Task.checkCancellation()
    var response = Veil_Enclave_V1_InferResponse()
    response.record = Data(try channel.seal(answer))
    return response
  }

  public func close(
    request: Veil_Enclave_V1_CloseRequest, context: ServerContext
  ) async throws -> Veil_Enclave_V1_CloseResponse {
    guard let channel = await sessions.remove(request.sessionID) else {
      throw RPCError(code: .notFound, message: "session \(request.sessionID.prefix(8)): unknown, expired or closed")
    }
    if !request.record.isEmpty {
      let authenticated = (try? channel.open(Array(request.record))) == .closed
      logger.info(
        "session closed", metadata: ["session": "\(request.sessionID.prefix(8))", "authenticated": "\(authenticated)"])
    } else {
      logger.info("session dropped", metadata: ["session": "\(request.sessionID.prefix(8))"])
    }
    return Veil_Enclave_V1_CloseResponse()
  }
}
