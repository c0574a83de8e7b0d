// Key release over TCP: the model owner's server (`veil keys serve`) that hands a sealed head's
// key only to an enclave whose evidence satisfies the owner's policy, and the enclave's client
// (`veil keys fetch`). The exchange is VeilTEE's (`KeyReleaser`, `KeyRequester`,
// `KeyReleaseReply`); this file is its transport: SwiftNIO, every connection concurrent, with
// ceilings on connections (all and per address), on the request's size, on verifications at
// once and per address, and one deadline for the whole exchange, so that no client, however
// slow or numerous from one address, holds up another.
import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import VeilTEE

/// How the key server listens, and every limit it applies.
public struct KeyReleaseConfig: Sendable {
  public var host: String
  /// 0: any free port (read it back with `KeyReleaseServer.port()`).
  public var port: Int
  /// Connections open at once, all addresses together, and from one address; more are closed
  /// as they are accepted.
  public var maxConnections: Int
  public var maxConnectionsPerPeer: Int
  /// The whole exchange (challenge out, request in, verification, reply out) must end within
  /// this many seconds, however the client paces its bytes.
  public var exchangeTimeout: Double
  /// The largest key request read (its evidence included); a larger announced length is
  /// refused before anything is read or allocated for it.
  public var maxRequestBytes: Int
  /// Verifications at once (each checks a quote's signatures and certificate chain).
  public var maxConcurrentVerifications: Int
  /// Key requests one address may have verified per second, and at once after a quiet spell.
  public var requestsPerSecondPerPeer: Double
  public var requestBurstPerPeer: Double
  /// Serve under a policy that pins no measurement (any enclave with genuine evidence gets the
  /// key); off unless asked for, and then every release says so first.
  public var allowUnpinnedPolicy: Bool
  /// Stop after this many answered requests (nil: serve until stopped).
  public var maxRequests: Int?
  /// The verification time (nil: the time of each request).
  public var verificationTime: Date?

  public init(
    host: String = "127.0.0.1", port: Int = 7430, maxConnections: Int = 64, maxConnectionsPerPeer: Int = 4,
    exchangeTimeout: Double = 10, maxRequestBytes: Int = 69 + maxEvidenceBytes, maxConcurrentVerifications: Int = 2,
    requestsPerSecondPerPeer: Double = 2, requestBurstPerPeer: Double = 10, allowUnpinnedPolicy: Bool = false,
    maxRequests: Int? = nil, verificationTime: Date? = nil
  ) {
    self.host = host
    self.port = port
    self.maxConnections = maxConnections
    self.maxConnectionsPerPeer = maxConnectionsPerPeer
    self.exchangeTimeout = exchangeTimeout
    self.maxRequestBytes = maxRequestBytes
    self.maxConcurrentVerifications = maxConcurrentVerifications
    self.requestsPerSecondPerPeer = requestsPerSecondPerPeer
    self.requestBurstPerPeer = requestBurstPerPeer
    self.allowUnpinnedPolicy = allowUnpinnedPolicy
    self.maxRequests = maxRequests
    self.verificationTime = verificationTime
  }
}

/// Why key release failed, on either side.
public enum KeyReleaseError: Error, CustomStringConvertible, Sendable, Equatable {
  /// The server cannot serve (its policy, its address).
  case configuration(String)
  /// The client could not reach the server, or the connection ended early.
  case connection(endpoint: String, detail: String)
  /// The exchange did not end in time.
  case timeout(endpoint: String, seconds: Double)
  /// The server refused (its generic reason; its log has the details).
  case refused(String)
  /// The server's bytes do not follow the protocol.
  case malformed(String)

  public var description: String {
    switch self {
    case .configuration(let s): s
    case .connection(let e, let d): "key server \(e): \(d)"
    case .timeout(let e, let s): "key server \(e): no answer within \(s) s"
    case .refused(let why): "the key server refused: \(why)"
    case .malformed(let s): "the key server's answer is malformed: \(s)"
    }
  }
}

/// The model owner's key server. A swift-service-lifecycle `Service`: graceful shutdown stops
/// accepting; exchanges in flight end within their deadline.
public final class KeyReleaseServer: Service, Sendable {
  public let config: KeyReleaseConfig
  /// The connections open now, and those refused at accept.
  public let connections: ConnectionCounter
  private let releaser: KeyReleaser
  private let headKey: SymmetricKey
  private let logger: Logger
  private let address = Announcement<Int>()
  private let listener = Mutex<(any Channel)?>(nil)
  private let state: Mutex<(answered: Int, references: Int, limiter: PeerRateLimiter)>
  private let pool: NIOThreadPool
  private let clock: any ServiceClock

  /// Refuses a policy that pins no measurement unless `config.allowUnpinnedPolicy`. `snp` holds
  /// the SEV-SNP collateral and settings (default: what each enclave's evidence carries).
  public init(
    config: KeyReleaseConfig, headKey: SymmetricKey, policy: Policy, collateral: Collateral?, snp: SNPVerifier? = nil,
    logger: Logger, clock: any ServiceClock = SystemClock()
  ) throws {
    self.config = config
    self.headKey = headKey
    self.logger = logger
    self.clock = clock
    // Each request is judged by this verifier at its own time.
    releaser = KeyReleaser(
      verifier: AttestationVerifier(dcap: try DCAPVerifier(collateral: collateral, time: Date()), snp: snp, policy: policy),
      allowUnpinnedPolicy: config.allowUnpinnedPolicy)
    do { try releaser.checkPolicy() } catch { throw KeyReleaseError.configuration("\(error)") }
    connections = ConnectionCounter(
      limits: ConnectionLimits(
        maxConnections: config.maxConnections, maxConnectionsPerPeer: config.maxConnectionsPerPeer))
    state = Mutex(
      (0, 0, PeerRateLimiter(rate: config.requestsPerSecondPerPeer, burst: config.requestBurstPerPeer)))
    pool = NIOThreadPool(numberOfThreads: max(1, config.maxConcurrentVerifications))
  }

  /// The port it listens on, once it does.
  public func port() async throws -> Int { try await address.value() }

  /// Requests answered so far (released or refused).
  public var answered: Int { state.withLock { $0.answered } }

  /// Stops accepting connections; `run()` returns.
  public func beginGracefulShutdown() {
    listener.withLock { $0 }?.close(promise: nil)
  }

  public func run() async throws {
    pool.start()
    defer { pool.shutdownGracefully { _ in } }
    let counter = connections
    let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.backlog, value: 256)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          // The exchange's own deadline covers the whole exchange; no setup deadline here.
          try channel.pipeline.syncOperations.addHandler(ConnectionAdmission(counter: counter, setupBytes: 0))
          try channel.pipeline.syncOperations.addHandler(KeyExchangeHandler(server: self))
        }
      }
    let channel: any Channel
    do {
      channel = try await bootstrap.bind(host: config.host, port: config.port).get()
    } catch {
      let failure = KeyReleaseError.configuration("cannot listen on \(config.host):\(config.port): \(error)")
      address.publish(.failure(failure))
      throw failure
    }
    listener.withLock { $0 = channel }
    address.publish(.success(channel.localAddress?.port ?? config.port))
    try await withGracefulShutdownHandler {
      try await channel.closeFuture.get()
    } onGracefulShutdown: {
      channel.close(promise: nil)
    }
    // No new connections now; the open ones end within their exchange deadline.
    let drained = ContinuousClock.now + .milliseconds(Int64(config.exchangeTimeout * 1000) + 500)
    while connections.open > 0, ContinuousClock.now < drained { try? await Task.sleep(for: .milliseconds(10)) }
  }

  // MARK: One exchange, called by its handler on its event loop

  /// A reference a refusal carries, to find its reasons in the log.
  fileprivate func nextReference() -> String {
    let n = state.withLock { s -> Int in
      s.references += 1
      return s.references
    }
    return String(format: "R%06d", n)
  }

  /// Nil when `peer` may have a request verified now, else the seconds to wait.
  fileprivate func admitRequest(from peer: String) -> Double? {
    let now = clock.now()
    return state.withLock { $0.limiter.take(peer, at: now) }
  }

  /// Verifies a request on the verification threads; the answer comes back on `eventLoop`.
  fileprivate func verify(_ request: [UInt8], challenge: [UInt8], reference: String, on eventLoop: any EventLoop)
    -> EventLoopFuture<KeyReleaseOutcome>
  {
    let releaser = self.releaser
    let headKey = self.headKey
    let time = config.verificationTime
    return pool.runIfActive(eventLoop: eventLoop) {
      var r = releaser
      r.verifier = releaser.verifier.at(time ?? Date())
      return r.answer(request, headKey: headKey, challenge: challenge, reference: reference)
    }
  }

  /// Logs one decision.
  fileprivate func record(peer: String, reference: String, outcome: KeyReleaseOutcome?, refusal: String?) {
    if let outcome, case .released = outcome.reply, let v = outcome.verdict {
      var lines = v.checks.map { "\($0.passed ? "ok" : "FAIL") \($0.name): \($0.detail)" }
      let first =
        v.checks.first?.name.contains("UNPINNED") == true ? "key released under an UNPINNED policy" : "key released"
      lines.insert("\(first) to \(peer) (\(v.evidenceKind), TCB \(v.tcbStatus ?? "?"))", at: 0)
      logger.notice("\(lines.joined(separator: "\n  "))", metadata: ["peer": "\(peer)", "reference": "\(reference)"])
    } else {
      logger.notice(
        "key not released to \(peer) (\(reference)): \(refusal ?? outcome?.refusal ?? "unknown")",
        metadata: ["peer": "\(peer)", "reference": "\(reference)"])
    }
  }

  /// Counts an answered request once its reply has been sent, and stops accepting after
  /// `maxRequests`.
  fileprivate func answeredOne() {
    let answered = state.withLock { s -> Int in
      s.answered += 1
      return s.answered
    }
    if let max = config.maxRequests, answered >= max { beginGracefulShutdown() }
  }

  fileprivate func logTimeout(peer: String, received: Int) {
    logger.notice(
      "exchange with \(peer) closed: not finished within \(config.exchangeTimeout) s (\(received) bytes received)",
      metadata: ["peer": "\(peer)"])
  }
}

/// One connection's exchange: the challenge out, the length-prefixed request in (its length
/// checked before anything is kept), the verification, the reply out, close. Touched only on its
/// channel's event loop.
private final class KeyExchangeHandler: ChannelInboundHandler, @unchecked Sendable {
  typealias InboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  private enum Phase {
    case reading
    case verifying
    case done
  }

  private let server: KeyReleaseServer
  private var phase = Phase.reading
  private var challenge: [UInt8] = []
  private var buffer = ByteBuffer()
  private var expected: Int?
  private var received = 0
  private var deadline: Scheduled<Void>?
  private var peer = "unknown"

  init(server: KeyReleaseServer) { self.server = server }

  func channelActive(context: ChannelHandlerContext) {
    // A connection over the ceilings was closed by the admission handler before this one.
    guard context.channel.isActive else { return }
    peer = peerAddress(context.channel.remoteAddress)
    challenge = KeyReleaser.challenge()
    let channel = context.channel
    let server = self.server
    let peer = self.peer
    let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
    deadline = context.eventLoop.scheduleTask(in: .milliseconds(Int64(server.config.exchangeTimeout * 1000))) {
      let handler = loopBound.value
      guard handler.phase != .done else { return }
      handler.phase = .done
      server.logTimeout(peer: peer, received: handler.received)
      channel.close(promise: nil)
    }
    context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: challenge)), promise: nil)
    context.fireChannelActive()
  }

  func channelInactive(context: ChannelHandlerContext) {
    deadline?.cancel()
    phase = .done
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var bytes = unwrapInboundIn(data)
    guard phase == .reading else { return }  // nothing more is read once the request is complete
    received += bytes.readableBytes
    buffer.writeBuffer(&bytes)
    if expected == nil, buffer.readableBytes >= 4, let n = buffer.readInteger(as: UInt32.self) {
      guard n > 0, Int(n) <= server.config.maxRequestBytes else {
        refuse(
          context: context, reason: "announced a request of \(n) bytes; the limit is \(server.config.maxRequestBytes)")
        return
      }
      expected = Int(n)
    }
    guard let n = expected, buffer.readableBytes >= n else { return }
    guard buffer.readableBytes == n else {
      refuse(context: context, reason: "sent \(buffer.readableBytes - n) bytes after its request")
      return
    }
    let request = buffer.readBytes(length: n) ?? []
    buffer = ByteBuffer()
    phase = .verifying
    if let wait = server.admitRequest(from: peer) {
      refuse(
        context: context, reason: String(format: "too many requests from this address; retry in %.1f s", wait),
        tellPeer: true)
      return
    }
    let reference = server.nextReference()
    let channel = context.channel
    let server = self.server
    let peer = self.peer
    let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
    server.verify(request, challenge: challenge, reference: reference, on: context.eventLoop).whenComplete { result in
      let handler = loopBound.value
      guard handler.phase == .verifying else { return }  // the deadline passed meanwhile
      handler.phase = .done
      handler.deadline?.cancel()
      switch result {
      case .success(let outcome):
        server.record(peer: peer, reference: reference, outcome: outcome, refusal: nil)
        channel.writeAndFlush(ByteBuffer(bytes: outcome.reply.bytes)).whenComplete { _ in
          channel.close(promise: nil)
          server.answeredOne()
        }
      case .failure(let error):
        server.record(peer: peer, reference: reference, outcome: nil, refusal: "verification failed: \(error)")
        let reply = KeyReleaseReply.refused(KeyReleaser.genericRefusal(reference: reference))
        channel.writeAndFlush(ByteBuffer(bytes: reply.bytes)).whenComplete { _ in
          channel.close(promise: nil)
          server.answeredOne()
        }
      }
    }
  }

  /// Answers a refusal and closes. The requester learns `reason` only when `tellPeer` (a rate
  /// limit it can act on); otherwise the generic refusal, with the reason in the log.
  private func refuse(context: ChannelHandlerContext, reason: String, tellPeer: Bool = false) {
    phase = .done
    deadline?.cancel()
    let reference = server.nextReference()
    server.record(peer: peer, reference: reference, outcome: nil, refusal: reason)
    let text = tellPeer ? "key not released: \(reason)" : KeyReleaser.genericRefusal(reference: reference)
    let channel = context.channel
    let server = self.server
    context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: KeyReleaseReply.refused(text).bytes))).whenComplete { _ in
      channel.close(promise: nil)
      server.answeredOne()
    }
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    context.close(promise: nil)
  }
}

/// The enclave's side: fetches a head key from a key server with this TEE's evidence.
public enum KeyReleaseClient {
  /// Connects to `endpoint`, answers its challenge with evidence from `provider` bound to a fresh
  /// key, and opens the wrapped head key; the whole exchange within `timeout` seconds.
  public static func fetchKey(from endpoint: KServeEndpoint, provider: any EvidenceProvider, timeout: Double = 30)
    async throws -> SymmetricKey
  {
    let name = endpoint.description
    return try await withDeadline(seconds: timeout, timedOut: KeyReleaseError.timeout(endpoint: name, seconds: timeout))
    {
      let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
      do {
        channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
          .connectTimeout(.milliseconds(Int64(timeout * 1000)))
          .connect(host: endpoint.host, port: endpoint.port) { ch in
            ch.eventLoop.makeCompletedFuture {
              try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: ch)
            }
          }
      } catch {
        throw KeyReleaseError.connection(endpoint: name, detail: "cannot connect: \(error)")
      }
      return try await channel.executeThenClose { inbound, outbound in
        var reader = ByteReader(inbound.makeAsyncIterator(), endpoint: name)
        let challenge = try await reader.read(32)
        let requester = KeyRequester()
        let request = try requester.request(challenge: challenge, provider: provider)
        let frame = request.bytes
        try await outbound.write(ByteBuffer(bytes: be32Bytes(frame.count) + frame))
        let head = try await reader.read(5)
        let length = head[1...4].reduce(0) { $0 << 8 | Int($1) }
        guard length <= KeyReleaseReply.maxPayload else {
          throw KeyReleaseError.malformed(
            "it announced a \(length)-byte reply (the limit is \(KeyReleaseReply.maxPayload))")
        }
        let reply: KeyReleaseReply
        do { reply = try KeyReleaseReply(head + (try await reader.read(length))) } catch let e as KeyReleaseError {
          throw e
        } catch {
          throw KeyReleaseError.malformed("\(error)")
        }
        switch reply {
        case .refused(let why): throw KeyReleaseError.refused(why)
        case .released(let wrapped): return try requester.unwrap(wrapped, for: request)
        }
      }
    }
  }

  /// Reads exact byte counts from a channel's inbound stream.
  private struct ByteReader {
    var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    var buffer = ByteBuffer()
    let endpoint: String

    init(_ iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator, endpoint: String) {
      self.iterator = iterator
      self.endpoint = endpoint
    }

    mutating func read(_ count: Int) async throws -> [UInt8] {
      while buffer.readableBytes < count {
        guard var next = try await iterator.next() else {
          throw KeyReleaseError.connection(
            endpoint: endpoint,
            detail:
              "the server closed the connection after \(buffer.readableBytes) of \(count) bytes (busy, or the request was refused)"
          )
        }
        buffer.writeBuffer(&next)
      }
      return buffer.readBytes(length: count) ?? []
    }
  }
}

func be32Bytes(_ n: Int) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: n >> (8 * $0)) } }
