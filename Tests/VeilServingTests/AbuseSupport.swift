import Foundation
import NIOCore
import NIOPosix
import Synchronization
import VeilServing
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// A clock the test moves by hand: session expiry, rate limits and failover without waiting.
final class ManualClock: ServiceClock {
  private let seconds = Mutex<Double>(1000)
  func now() -> Double { seconds.withLock { $0 } }
  func advance(by s: Double) { seconds.withLock { $0 += s } }
}

/// A value shared between the test and the tasks it starts (a count, a result).
final class Locked<T>: @unchecked Sendable {
  private let lock = NSLock()
  private var value: T
  init(_ value: T) { self.value = value }
  func withLock<R>(_ body: (inout T) throws -> R) rethrows -> R {
    lock.lock()
    defer { lock.unlock() }
    return try body(&value)
  }
}

struct DeadlinePassed: Error, CustomStringConvertible {
  var description: String
}

/// Waits until `condition` holds, checking every few milliseconds, for at most `seconds`; throws
/// (naming `what`) when the deadline passes first.
func waitUntil(
  _ what: String, within seconds: Double = 30, _ condition: @Sendable () async throws -> Bool
) async throws {
  let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
  while try await !condition() {
    guard ContinuousClock.now < deadline else { throw DeadlinePassed(description: "\(what): not within \(seconds) s") }
    try await Task.sleep(for: .milliseconds(5))
  }
}

/// Seconds `body` took, with its result.
func timed<T>(_ body: () async throws -> T) async rethrows -> (T, Double) {
  let start = ContinuousClock.now
  let r = try await body()
  let d = ContinuousClock.now - start
  return (r, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
}

/// A TCP relay on 127.0.0.1 that forwards every connection to `127.0.0.1:target` from another
/// loopback address (`source`, e.g. 127.0.0.2): the server sees the relayed clients as another
/// peer, as it would a client on another host. (Linux routes all of 127.0.0.0/8 to loopback.)
final class LoopbackRelay: Sendable {
  let port: Int
  private let channel: any Channel

  init(to target: Int, from source: String) async throws {
    let sourceAddress = try SocketAddress(ipAddress: source, port: 0)
    channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { inbound in
        // The accepted connection starts reading once this future completes, so nothing is read
        // before its partner is connected and glued.
        ClientBootstrap(group: inbound.eventLoop)
          .bind(to: sourceAddress)
          .connect(host: "127.0.0.1", port: target)
          .flatMap { outbound in
            let (a, b) = Glue.pair()
            return inbound.pipeline.addHandler(a).and(outbound.pipeline.addHandler(b)).map { _ in }
          }
      }
      .bind(host: "127.0.0.1", port: 0).get()
    port = channel.localAddress?.port ?? 0
  }

  func close() async { try? await channel.close() }
}

/// Forwards what one channel reads to its partner channel, and closes the partner with it.
private final class Glue: ChannelDuplexHandler, @unchecked Sendable {
  typealias InboundIn = NIOAny
  typealias OutboundIn = NIOAny
  typealias OutboundOut = NIOAny
  private var partner: Glue?
  private var context: ChannelHandlerContext?

  static func pair() -> (Glue, Glue) {
    let a = Glue()
    let b = Glue()
    a.partner = b
    b.partner = a
    return (a, b)
  }

  func handlerAdded(context: ChannelHandlerContext) { self.context = context }
  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
    partner = nil
  }

  private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
  private func partnerFlush() { context?.flush() }
  private func partnerClose() { context?.close(promise: nil) }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) { partner?.partnerWrite(data) }
  func channelReadComplete(context: ChannelHandlerContext) { partner?.partnerFlush() }
  func channelInactive(context: ChannelHandlerContext) { partner?.partnerClose() }
  func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

/// A raw TCP client from `source` (another loopback address) that sends `bytes` one at a time,
/// one every `interval` seconds, as a slow or hostile client would; it records when the server
/// closed the connection. Runs on a thread of its own.
final class SlowClient: @unchecked Sendable {
  private let lock = NSLock()
  private var _closedAfter: Double?
  private var _connected = false
  private var stopped = false
  private var fd: Int32 = -1

  /// Seconds from connecting to the server's close (nil: still open, or never connected).
  var closedAfter: Double? { lock.withLock { _closedAfter } }
  var connected: Bool { lock.withLock { _connected } }

  init(port: Int, source: String, bytes: [UInt8], interval: Double) {
    let thread = Thread { [self] in run(port: port, source: source, bytes: bytes, interval: interval) }
    thread.start()
  }

  func stop() {
    lock.withLock {
      stopped = true
      if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
    }
  }

  private func run(port: Int, source: String, bytes: [UInt8], interval: Double) {
    let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard s >= 0 else { return }
    defer { close(s) }
    lock.withLock { fd = s }
    var local = sockaddr_in()
    local.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, source, &local.sin_addr)
    var remote = sockaddr_in()
    remote.sin_family = sa_family_t(AF_INET)
    remote.sin_port = UInt16(port).bigEndian
    inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
    let size = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafePointer(to: &local) { l in
      withUnsafePointer(to: &remote) { r in
        l.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, size) } == 0
          && r.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, size) } == 0
      }
    }
    guard ok else { return }
    let start = Date()
    lock.withLock { _connected = true }
    var next = 0
    var scratch = [UInt8](repeating: 0, count: 4096)
    while !lock.withLock({ stopped }) {
      // Wait for the server to close (or write) until the next byte is due.
      var p = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
      let ready = poll(&p, 1, Int32(interval * 1000))
      if ready > 0 {
        let n = recv(s, &scratch, scratch.count, 0)
        if n <= 0 {
          lock.withLock { _closedAfter = Date().timeIntervalSince(start) }
          return
        }
        continue
      }
      if next < bytes.count {
        if send(s, [bytes[next]], 1, Int32(MSG_NOSIGNAL)) != 1 {
          lock.withLock { _closedAfter = Date().timeIntervalSince(start) }
          return
        }
        next += 1
      }
    }
  }
}

/// Waits until the server has closed every one of `slow`, prints when, and checks that none
/// outlived `limit` seconds.
func assertAllClosed(
  _ slow: [SlowClient], within limit: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line
) async throws {
  try await waitUntil("the server closed every \(what)", within: 30) { slow.allSatisfy { $0.closedAfter != nil } }
  let closed = slow.compactMap(\.closedAfter).sorted()
  print(String(format: "%@ closed after %.2f…%.2f s", what, closed.first ?? -1, closed.last ?? -1))
  XCTAssertLessThan(closed.last ?? .infinity, limit, "a \(what) outlived its deadline", file: file, line: line)
}
