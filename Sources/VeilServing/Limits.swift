// What every Veil server uses to stay up under abuse: a clock that tests can drive, token-bucket
// rate limits keyed by peer address, and admission of TCP connections (a global and a per-peer
// ceiling) before a connection costs more than a file descriptor. See docs/security.md,
// "Servers", for the threat model and every default.
import Dispatch
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import Synchronization

/// Time as the session table, the rate limits and failover see it: seconds on a monotonic
/// clock from an arbitrary origin. Servers use `SystemClock`; tests drive a manual one.
public protocol ServiceClock: Sendable {
  func now() -> Double
}

/// The process's monotonic clock (uptime; unaffected by changes of the wall clock).
public struct SystemClock: ServiceClock {
  public init() {}
  public func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second.
struct TokenBucket: Sendable {
  let rate: Double
  let burst: Double
  private(set) var tokens: Double
  private(set) var updated: Double

  init(rate: Double, burst: Double, now: Double) {
    self.rate = rate
    self.burst = max(1, burst)
    tokens = max(1, burst)
    updated = now
  }

  private mutating func refill(_ now: Double) {
    if now > updated { tokens = min(burst, tokens + (now - updated) * rate) }
    updated = max(updated, now)
  }

  /// Takes one token if there is one.
  mutating func take(at now: Double) -> Bool {
    refill(now)
    guard tokens >= 1 else { return false }
    tokens -= 1
    return true
  }

  /// Seconds until a token is back.
  func wait(at now: Double) -> Double {
    let have = min(burst, tokens + max(0, now - updated) * rate)
    return have >= 1 || rate <= 0 ? 0 : (1 - have) / rate
  }

  /// Whether the bucket is full (and so carries no state worth keeping).
  func isFull(at now: Double) -> Bool { min(burst, tokens + max(0, now - updated) * rate) >= burst }
}

/// Token buckets per peer address, with a bound on how many peers it tracks: full buckets are
/// forgotten first, and when every tracked peer is still limited, a new peer is refused.
struct PeerRateLimiter: Sendable {
  let rate: Double
  let burst: Double
  let maxPeers: Int
  private var buckets: [String: TokenBucket] = [:]

  init(rate: Double, burst: Double, maxPeers: Int = 10_000) {
    self.rate = rate
    self.burst = burst
    self.maxPeers = maxPeers
  }

  /// Nil when `peer` may go ahead (one token taken), else the seconds until it may.
  mutating func take(_ peer: String, at now: Double) -> Double? {
    guard rate > 0 else { return nil }
    if buckets[peer] == nil, buckets.count >= maxPeers {
      buckets = buckets.filter { !$0.value.isFull(at: now) }
      guard buckets.count < maxPeers else { return 1 }
    }
    var b = buckets[peer] ?? TokenBucket(rate: rate, burst: burst, now: now)
    defer { buckets[peer] = b }
    return b.take(at: now) ? nil : b.wait(at: now)
  }
}

/// The address part of a peer description: "ipv4:10.0.0.7:51234" (gRPC's `remotePeer`) →
/// "10.0.0.7", "ipv6:[::1]:51234" → "::1". Connections from one address share its limits.
public func peerAddress(_ remotePeer: String) -> String {
  var s = Substring(remotePeer)
  for prefix in ["ipv4:", "ipv6:"] where s.hasPrefix(prefix) { s = s.dropFirst(prefix.count) }
  if s.hasPrefix("["), let close = s.firstIndex(of: "]") { return String(s[s.index(after: s.startIndex)..<close]) }
  if let colon = s.lastIndex(of: ":"), s.filter({ $0 == ":" }).count == 1 { return String(s[..<colon]) }
  return String(s)
}

/// The address of a NIO socket address, as `peerAddress` writes it.
func peerAddress(_ address: NIOCore.SocketAddress?) -> String {
  address?.ipAddress ?? "unknown"
}

/// Ceilings on the TCP connections a server holds, and how long one may last.
public struct ConnectionLimits: Sendable, Equatable {
  /// Connections open at once, all peers together; more are closed as they are accepted.
  public var maxConnections: Int
  /// Connections open at once from one address.
  public var maxConnectionsPerPeer: Int
  /// A connection is closed (gracefully: calls in flight finish within `maxGraceTime`) this long
  /// after it opened, however busy.
  public var maxConnectionAge: Duration
  /// How long calls in flight may take to finish once a connection is being closed.
  public var maxGraceTime: Duration
  /// A connection with no call in flight is closed after this long (this also ends connections
  /// that never finish the HTTP/2 preface).
  public var maxIdleTime: Duration
  /// Calls in flight on one connection.
  public var maxConcurrentStreams: Int
  /// A new connection must send its first `setupBytes` bytes (the HTTP/2 client preface) within
  /// this long, or it is closed: the idle time above only starts once HTTP/2 is up.
  public var setupTimeout: Duration
  public var setupBytes: Int

  public init(
    maxConnections: Int = 1024, maxConnectionsPerPeer: Int = 64, maxConnectionAge: Duration = .seconds(3600),
    maxGraceTime: Duration = .seconds(60), maxIdleTime: Duration = .seconds(120), maxConcurrentStreams: Int = 64,
    setupTimeout: Duration = .seconds(10), setupBytes: Int = 24
  ) {
    self.maxConnections = maxConnections
    self.maxConnectionsPerPeer = maxConnectionsPerPeer
    self.maxConnectionAge = maxConnectionAge
    self.maxGraceTime = maxGraceTime
    self.maxIdleTime = maxIdleTime
    self.maxConcurrentStreams = maxConcurrentStreams
    self.setupTimeout = setupTimeout
    self.setupBytes = setupBytes
  }

  /// The gRPC transport's configuration with these limits and a request size limit.
  func transportConfig(maxRequestBytes: Int, counter: ConnectionCounter) -> HTTP2ServerTransport.Posix.Config {
    var config = HTTP2ServerTransport.Posix.Config.defaults
    config.rpc.maxRequestPayloadSize = maxRequestBytes
    config.connection.maxAge = maxConnectionAge
    config.connection.maxGraceTime = maxGraceTime
    config.connection.maxIdleTime = maxIdleTime
    config.http2.maxConcurrentStreams = maxConcurrentStreams
    // HTTP/2 flow control: with the transport's default window (64 KiB) a 600 KB input tensor
    // needs ten window updates, each a round trip between the processes, before the message is
    // whole. The window lets a peer send up to a whole message (at most 4 MiB) unasked; a
    // message that large is buffered whole before the handler sees it anyway, so memory stays
    // bounded by the message limit and the connection limits as before.
    config.http2.targetWindowSize = max((1 << 16) - 1, min(maxRequestBytes, 4 << 20))
    // And frames up to 1 MiB instead of 16 KiB: a 600 KB message in one frame, not 37.
    config.http2.maxFrameSize = 1 << 20
    // The transport has no admission hook of its own; this callback runs for every accepted
    // connection before it is served, which is where the ceilings apply.
    config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
      channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(ConnectionAdmission(counter: counter), position: .first)
      }
    }
    return config
  }
}

/// Open connections, all together and per peer address; shared by a server's connections.
public final class ConnectionCounter: Sendable {
  public let limits: ConnectionLimits
  private let state = Mutex<(total: Int, perPeer: [String: Int], refused: Int)>((0, [:], 0))

  public init(limits: ConnectionLimits) { self.limits = limits }

  /// Counts a new connection from `peer`, or says why it is refused.
  func admit(_ peer: String) -> String? {
    state.withLock { s in
      if s.total >= limits.maxConnections {
        s.refused += 1
        return "\(s.total) connections are open, the server's limit"
      }
      if s.perPeer[peer, default: 0] >= limits.maxConnectionsPerPeer {
        s.refused += 1
        return "\(s.perPeer[peer, default: 0]) connections from \(peer) are open, the limit per address"
      }
      s.total += 1
      s.perPeer[peer, default: 0] += 1
      return nil
    }
  }

  func release(_ peer: String) {
    state.withLock { s in
      s.total -= 1
      let n = s.perPeer[peer, default: 1] - 1
      s.perPeer[peer] = n > 0 ? n : nil
    }
  }

  /// Connections open now.
  public var open: Int { state.withLock { $0.total } }
  /// Connections open now from `peer`.
  public func open(from peer: String) -> Int { state.withLock { $0.perPeer[peer, default: 0] } }
  /// Connections closed at accept because a ceiling was reached, so far.
  public var refused: Int { state.withLock { $0.refused } }
}

/// First in a connection's pipeline: counts it against the ceilings when it becomes active and
/// closes it at once when a ceiling is reached; closes it when its first `setupBytes` bytes do
/// not arrive within `setupTimeout` (0 bytes: no such deadline); releases its place when it
/// closes. Touched only on its channel's event loop.
final class ConnectionAdmission: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
  typealias InboundIn = ByteBuffer
  private let counter: ConnectionCounter
  private let setupBytes: Int
  private var peer: String?
  private var received = 0
  private var setupDeadline: Scheduled<Void>?

  init(counter: ConnectionCounter, setupBytes: Int? = nil) {
    self.counter = counter
    self.setupBytes = setupBytes ?? counter.limits.setupBytes
  }

  func handlerAdded(context: ChannelHandlerContext) {
    if context.channel.isActive { admit(context: context) }
  }

  func channelActive(context: ChannelHandlerContext) {
    admit(context: context)
    context.fireChannelActive()
  }

  private func admit(context: ChannelHandlerContext) {
    guard peer == nil else { return }
    let address = peerAddress(context.channel.remoteAddress)
    if counter.admit(address) != nil {
      context.close(promise: nil)
      return
    }
    peer = address
    guard setupBytes > 0 else { return }
    let channel = context.channel
    setupDeadline = context.eventLoop.scheduleTask(in: TimeAmount(counter.limits.setupTimeout)) {
      channel.close(promise: nil)
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if let deadline = setupDeadline {
      received += unwrapInboundIn(data).readableBytes
      if received >= setupBytes {
        deadline.cancel()
        setupDeadline = nil
      }
    }
    context.fireChannelRead(data)
  }

  func channelInactive(context: ChannelHandlerContext) {
    setupDeadline?.cancel()
    setupDeadline = nil
    if let peer {
      counter.release(peer)
      self.peer = nil
    }
    context.fireChannelInactive()
  }
}

extension Duration {
  /// The duration in seconds.
  package var seconds: Double {
    let (s, a) = components
    return Double(s) + Double(a) / 1e18
  }
}

/// Runs `body` with a deadline: past `seconds`, the task running it is cancelled and `timedOut`
/// is thrown. Work that ignores cancellation still runs to its end, but its caller is answered.
func withDeadline<T: Sendable>(
  seconds: Double, timedOut: @autoclosure @escaping @Sendable () -> any Error,
  _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
  try await withThrowingTaskGroup(of: T?.self) { group in
    group.addTask { try await body() }
    group.addTask {
      try await Task.sleep(nanoseconds: UInt64(max(0, min(seconds, 1e9)) * 1e9))
      return nil
    }
    defer { group.cancelAll() }
    guard let first = try await group.next(), let value = first else { throw timedOut() }
    return value
  }
}

/// Set once a server begins its graceful shutdown: from then on the calls in flight are let
/// finish even though gRPC signals them cancelled (it does so to end streaming calls).
public final class DrainFlag: Sendable {
  private let flag = Atomic<Bool>(false)
  private let waiters = Mutex<(next: UInt64, waiting: [UInt64: CheckedContinuation<Void, Never>])>((0, [:]))
  public init() {}

  public func set() {
    flag.store(true, ordering: .releasing)
    let waiting = waiters.withLock { w -> [CheckedContinuation<Void, Never>] in
      defer { w.waiting = [:] }
      return Array(w.waiting.values)
    }
    for c in waiting { c.resume() }
  }

  public var isSet: Bool { flag.load(ordering: .acquiring) }

  /// Returns once the flag is set, or the task is cancelled.
  func wait() async {
    let id = waiters.withLock { w -> UInt64 in
      defer { w.next &+= 1 }
      return w.next
    }
    await withTaskCancellationHandler {
      await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        let now = waiters.withLock { w -> Bool in
          if isSet || Task.isCancelled { return true }
          w.waiting[id] = c
          return false
        }
        if now { c.resume() }
      }
    } onCancel: {
      waiters.withLock { $0.waiting.removeValue(forKey: id) }?.resume()
    }
  }
}

/// Runs a gRPC handler's work so that it stops when the call does: gRPC signals a call the
/// client cancelled, or whose deadline passed, through the server context's cancellation
/// handle, not by cancelling the handler's task, so without this a departed client's request
/// would keep its session, its place in a queue and its compute to the end. While the server
/// drains (`draining`), the work is let finish: graceful shutdown answers the calls in flight.
func cancelledWithTheCall<T: Sendable>(
  unless draining: DrainFlag, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
  let work = Task { try await body() }
  return try await withTaskCancellationHandler {
    try await withRPCCancellationHandler {
      try await work.value
    } onCancelRPC: {
      if !draining.isSet { work.cancel() }
    }
  } onCancel: {
    work.cancel()
  }
}

/// A value published once (a port, once bound) that any number of tasks may wait for.
final class Announcement<T: Sendable>: Sendable {
  private let state = Mutex<(value: Result<T, any Error>?, waiters: [CheckedContinuation<T, any Error>])>((nil, []))

  /// Publishes the value (or the failure); later publications are ignored.
  func publish(_ result: Result<T, any Error>) {
    let waiters = state.withLock { s -> [CheckedContinuation<T, any Error>] in
      guard s.value == nil else { return [] }
      s.value = result
      defer { s.waiters = [] }
      return s.waiters
    }
    for w in waiters { w.resume(with: result) }
  }

  func value() async throws -> T {
    try await withCheckedThrowingContinuation { c in
      let ready = state.withLock { s -> Result<T, any Error>? in
        if let v = s.value { return v }
        s.waiters.append(c)
        return nil
      }
      if let ready { c.resume(with: ready) }
    }
  }
}

extension HTTP2ServerTransport.Posix {
  /// The IPv4 port it listens on, once it does; `notIPv4` words the error for an address of
  /// another kind (it is given the address as text).
  func listeningIPv4Port(notIPv4: (String) -> any Error) async throws -> Int {
    let address = try await listeningAddress
    guard let ipv4 = address.ipv4 else { throw notIPv4("\(address)") }
    return ipv4.port
  }
}
