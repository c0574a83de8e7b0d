import Dispatch
import Foundation
import GRPCCore
import Logging
import SwiftProtobuf
import VeilTEE

/// The gRPC enclave service: the attested handshake, then sealed inference records. Domain
/// refusals (`SessionRefusal`, `EnclaveError`) become gRPC statuses here and nowhere else.
///
/// Logs carry session id prefixes, peer addresses, sizes, timings and error kinds, never an
/// input, a feature map, an answer or key material.
public final class EnclaveService: Veil_Enclave_V1_EnclaveService.SimpleServiceProtocol {
  public let engine: EnclaveEngine
  public let provider: any EvidenceProvider
  public let configuration: EnclaveConfiguration
  public let sessions: EnclaveSessions
  public let metrics: EnclaveMetrics
  /// Set by the server when it begins its graceful shutdown.
  public let draining = DrainFlag()
  private let deployment: Veil_Enclave_V1_DeploymentInfo
  private let logger: Logger
  private let clock: any ServiceClock
  /// Evidence is generated here, one quote at a time, off the cooperative pool: a quote blocks
  /// for as long as the TEE takes.
  private let evidenceQueue = DispatchQueue(label: "veil.enclave.evidence")

  public init(
    engine: EnclaveEngine, provider: any EvidenceProvider, configuration: EnclaveConfiguration = .init(),
    logger: Logger = Logger(label: "veil.enclave"), metrics: EnclaveMetrics = EnclaveMetrics(),
    clock: any ServiceClock = SystemClock()
  ) throws {
    self.engine = engine
    self.provider = provider
    self.configuration = configuration
    sessions = EnclaveSessions(configuration: configuration, clock: clock)
    self.clock = clock
    var info = Veil_Enclave_V1_DeploymentInfo()
    info.planJson = try engine.plan.plan.encoded()
    deployment = info
    self.logger = logger
    self.metrics = metrics
  }

  /// The gRPC status of a session refusal.
  static func rpcError(_ r: SessionRefusal) -> RPCError {
    let code: RPCError.Code
    switch r {
    case .unknown: code = .notFound
    case .expired, .busy: code = .failedPrecondition
    case .requestLimit, .full, .peerFull, .rateLimited, .evidenceRate: code = .resourceExhausted
    }
    return RPCError(code: code, message: r.description)
  }

  /// Sweeps expired sessions until cancelled; run it next to the server.
  public func runSweeper() async {
    while !Task.isCancelled {
      try? await Task.sleep(nanoseconds: UInt64(max(0.01, configuration.sweepInterval) * 1e9))
      let n = await sessions.sweep()
      metrics.sessions(open: await sessions.count)
      if n > 0 { logger.debug("swept expired sessions", metadata: ["count": "\(n)"]) }
    }
  }

  public func handshake(
    request: Veil_Enclave_V1_HandshakeRequest, context: ServerContext
  ) async throws -> Veil_Enclave_V1_HandshakeResponse {
    let peer = peerAddress(context.remotePeer)
    let id: String
    do { id = try await sessions.reserve(peer: peer) } catch let r as SessionRefusal {
      metrics.error(r.kind)
      logger.notice("handshake refused", metadata: ["peer": "\(peer)", "reason": "\(r)"])
      throw Self.rpcError(r)
    }
    do {
      let provider = self.provider
      let hello = Array(request.clientHello)
      let r: (serverHello: [UInt8], session: SecureSession)
      do {
        r = try await runBlocking(on: evidenceQueue) {
          let r = try EnclaveHandshake.respond(to: hello, provider: provider)
          return UncheckedSession(serverHello: r.serverHello, session: r.session)
        }.pair
      } catch let e as TEEError {
        metrics.error(.record)
        logger.notice("handshake refused", metadata: ["peer": "\(peer)", "error": "\(e)"])
        throw RPCError(code: .invalidArgument, message: "handshake refused: \(e)")
      }
      let channel = SealedChannel(r.session)
      let sealed = try channel.seal(deployment)
      guard await sessions.activate(id, channel: channel) else {
        metrics.error(.session)
        throw RPCError(code: .unavailable, message: "the handshake took longer than the enclave waits; retry")
      }
      metrics.handshake()
      metrics.sessions(open: await sessions.count)
      logger.info(
        "session opened",
        metadata: ["session": "\(id.prefix(8))", "peer": "\(peer)", "evidence": "\(provider.mode.rawValue)"])
      var response = Veil_Enclave_V1_HandshakeResponse()
      response.sessionID = id
      response.serverHello = Data(r.serverHello)
      response.sealedDeployment = Data(sealed)
      response.maxRequests = configuration.maxRequestsPerSession
      response.lifetimeSeconds = configuration.sessionLifetime
      response.idleSeconds = configuration.idleTimeout
      return response
    } catch {
      await sessions.cancel(id)
      throw error
    }
  }

  public func infer(
    request: Veil_Enclave_V1_InferRequest, context: ServerContext
  ) async throws -> Veil_Enclave_V1_InferResponse {
    let id = request.sessionID
    let tag = String(id.prefix(8))
    guard request.record.count <= configuration.maxRecordBytes else {
      metrics.error(.oversized)
      logger.notice("oversized record refused", metadata: ["session": "\(tag)", "bytes": "\(request.record.count)"])
      throw RPCError(
        code: .resourceExhausted,
        message:
          "record of \(request.record.count) bytes exceeds the enclave's limit of \(configuration.maxRecordBytes) bytes (the session is unchanged)"
      )
    }
    let channel: SealedChannel
    do { channel = try await sessions.begin(id) } catch let r as SessionRefusal {
      metrics.error(r.kind)
      logger.notice("request refused", metadata: ["session": "\(tag)", "reason": "\(r)"])
      throw Self.rpcError(r)
    }
    let start = DispatchTime.now()
    // The answer is sealed only when it will be sent: a cancelled request leaves both sides'
    // sequence numbers where they were.
    let response: Veil_Enclave_V1_InferResponse
    let record = Array(request.record)
    do {
      response = try await cancelledWithTheCall(unless: draining) {
        try await self.serve(channel: channel, record: record, tag: tag)
      }
    } catch {
      await sessions.end(id)
      throw error
    }
    await sessions.end(id)
    metrics.request(nanoseconds: DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds)
    return response
  }

  /// `Infer` on an open stream: each request is answered as `infer` answers it, in order, one at
  /// a time (a session carries one request in flight). The first request `infer` refuses ends
  /// the stream with that refusal's status. The stream ends cleanly only between requests: when
  /// the client ends it, when it has been idle for the session's idle time
  /// (`configuration.idleTimeout`: an open stream keeps its connection from idling out, so it
  /// must end on its own), or when the server drains. A request that arrives as the stream ends
  /// is not opened, so the client may send it again (by `Infer`) with the session unchanged.
  public func inferStream(
    request: RPCAsyncSequence<Veil_Enclave_V1_InferRequest, any Error>,
    response: RPCWriter<Veil_Enclave_V1_InferResponse>, context: ServerContext
  ) async throws {
    metrics.stream(opened: true)
    defer { metrics.stream(opened: false) }
    try await serveInOrder(request, idleFor: configuration.idleTimeout, draining: draining, clock: clock) { message in
      try await response.write(try await self.infer(request: message, context: context))
    }
  }

  private func serve(channel: SealedChannel, record: [UInt8], tag: String) async throws -> Veil_Enclave_V1_InferResponse
  {
    let plaintext: [UInt8]
    let opening = DispatchTime.now()
    do {
      switch try channel.open(record) {
      case .data(let bytes): plaintext = bytes
      case .closed:
        throw RPCError(
          code: .invalidArgument, message: "a close record was sent to Infer; the session is closed (use Close)")
      }
    } catch let e as TEEError {
      metrics.error(.record)
      logger.notice("record refused, session closed", metadata: ["session": "\(tag)", "error": "\(e)"])
      throw RPCError(
        code: .permissionDenied, message: "record refused, the session is closed: \(e); start a new handshake")
    }
    let openMs = ms(opening, DispatchTime.now())
    var answer: EnclaveResponseMessage
    do {
      answer = await engine.answer(
        try EnclaveRequestMessage(serializedBytes: plaintext), timeout: configuration.requestTimeout)
    } catch {
      answer = EnclaveResponseMessage()
      answer.error = EnclaveEngine.errorMessage(
        EnclaveError.invalidInput("the record's plaintext is not an EnclaveRequest message: \(error)"))
    }
    if case .error(let e) = answer.outcome {
      metrics.error(EnclaveErrorKind(wire: e.kind))
      logger.notice("request failed", metadata: ["session": "\(tag)", "kind": "\(e.kind)"])
    } else if case .result(var r) = answer.outcome {
      r.stages.openMs = openMs
      answer.result = r
      metrics.stages(r)
      logger.debug(
        "request served",
        metadata: [
          "session": "\(tag)", "head_ms": "\(r.headMs)", "tail_ms": "\(r.tailMs)", "accelerator": "\(r.accelerator)",
        ])
    }
    try Task.checkCancellation()
    var response = Veil_Enclave_V1_InferResponse()
    let sealing = DispatchTime.now()
    response.record = Data(try channel.seal(answer))
    metrics.seal(ms: ms(sealing, DispatchTime.now()))
    return response
  }

  public func close(
    request: Veil_Enclave_V1_CloseRequest, context: ServerContext
  ) async throws -> Veil_Enclave_V1_CloseResponse {
    guard let channel = await sessions.remove(request.sessionID) else {
      throw Self.rpcError(.unknown(id: request.sessionID))
    }
    if !request.record.isEmpty {
      let authenticated = (try? channel.open(Array(request.record))) == .closed
      logger.info(
        "session closed", metadata: ["session": "\(request.sessionID.prefix(8))", "authenticated": "\(authenticated)"])
    } else {
      logger.info("session dropped", metadata: ["session": "\(request.sessionID.prefix(8))"])
    }
    metrics.sessions(open: await sessions.count)
    return Veil_Enclave_V1_CloseResponse()
  }
}

/// A fresh `SecureSession` (not Sendable: one party at a time) handed from the evidence queue,
/// where it was made, to the handler that wraps it in a `SealedChannel`; nothing else touches it
/// in between.
private struct UncheckedSession: @unchecked Sendable {
  let serverHello: [UInt8]
  let session: SecureSession
  var pair: (serverHello: [UInt8], session: SecureSession) { (serverHello, session) }
}
