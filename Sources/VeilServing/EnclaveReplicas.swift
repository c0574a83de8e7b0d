import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization
import VeilTEE

/// Several enclave replicas serving one plan, seen from the client. A session lives on one
/// connection to one replica, so the client spreads its connections across the endpoints
/// (the fewest open connections first, in turn among equals) and, when a replica drops, moves on: the request that
/// was lost with it is counted, and sent again on a new session with another replica. A request
/// is never dropped silently: it is answered, or it fails with the reasons of every attempt and
/// is counted as failed. Endpoints that could not be reached sit out a back-off
/// (`EndpointBackoff`, as the enclave's accelerators do). Every endpoint's evidence is checked
/// against the same policy; a replica whose evidence is refused is an error, never skipped.
public final class EnclaveReplicas: Sendable {
  public let endpoints: [Endpoint]
  public let verifier: AttestationVerifier
  public let timeout: Duration
  public let maxMessageBytes: Int
  /// Attempts per request, the first one included.
  public let maxAttempts: Int
  /// Whether sessions send their requests on a stream (`EnclaveClient.streaming`).
  public let streaming: Bool
  let backoff: EndpointBackoff
  private let next = Mutex(0)
  private let counts: Mutex<Tally>
  /// Connections open now, by endpoint.
  private let open: Mutex<[Int]>

  /// What happened to the requests, in all and per endpoint.
  public struct Tally: Sendable, Codable, Equatable {
    /// Requests lost with a replica: sent, and no answer (the connection or the replica went
    /// away) or an answer that it cannot serve them now (overloaded, timed out, session gone, no
    /// accelerator reachable).
    public var lost = 0
    /// Of those, sent again on another session (every lost request is, while attempts remain).
    public var retried = 0
    /// Requests that failed after every attempt.
    public var failed = 0
    /// Attested sessions opened, by endpoint.
    public var sessions: [String: Int] = [:]
    /// Requests answered, by endpoint.
    public var answered: [String: Int] = [:]
    /// Requests lost, by endpoint.
    public var lostAt: [String: Int] = [:]
  }

  public init(
    endpoints: [Endpoint], verifier: AttestationVerifier, timeout: Duration = .seconds(60),
    maxMessageBytes: Int = 16 << 20,
    maxAttempts: Int? = nil, retryAfter: Double = 2, streaming: Bool = true, clock: any ServiceClock = SystemClock()
  ) throws {
    guard !endpoints.isEmpty else { throw EnclaveError.invalidArgument("no enclave endpoint given") }
    self.endpoints = endpoints
    self.verifier = verifier
    self.timeout = timeout
    self.maxMessageBytes = maxMessageBytes
    self.streaming = streaming
    self.maxAttempts = max(1, maxAttempts ?? endpoints.count + 1)
    backoff = EndpointBackoff(count: endpoints.count, retryAfter: retryAfter, clock: clock)
    counts = Mutex(Tally())
    open = Mutex([Int](repeating: 0, count: endpoints.count))
  }

  /// Parses endpoints given as repeated options and/or comma-separated lists
  /// (`["a:7440,b:7440", "c:7440"]`).
  public static func parse(_ lists: [String]) throws -> [Endpoint] {
    let items = lists.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
    guard !items.isEmpty else { throw EnclaveError.invalidArgument("no enclave endpoint given (HOST:PORT)") }
    return try items.map { try Endpoint(parsing: $0) }
  }

  public var tally: Tally { counts.withLock { $0 } }

  func count(_ update: (inout Tally) -> Void) { counts.withLock { update(&$0) } }

  /// The replica a new connection starts at: the next in turn, so that connections, first ones
  /// and those moved off a dropped replica alike, spread over the replicas.
  func nextStart() -> Int {
    next.withLock { (n: inout Int) -> Int in
      defer { n += 1 }
      return n % endpoints.count
    }
  }

  /// The replica a new connection goes to, counted as open from here on: of those not yet
  /// `tried`, the ones not in their back-off first, the fewest open connections first and, among
  /// equals, in turn from `start`; then those in back-off. Choosing and counting are one step
  /// under the lock, so that callers moving off a dropped replica at the same moment see each
  /// other's choice and spread out instead of all taking the same least-loaded replica.
  func reserve(startingAt start: Int, excluding tried: Set<Int>) -> Int? {
    let order = backoff.order(startingAt: start).filter { !tried.contains($0) }
    let down = Set(backoff.down)
    return open.withLock { (load: inout [Int]) -> Int? in
      let up = order.filter { !down.contains($0) }.enumerated()
        .min { (load[$0.element], $0.offset) < (load[$1.element], $1.offset) }?.element
      guard let chosen = up ?? order.first(where: { down.contains($0) }) else { return nil }
      load[chosen] += 1
      return chosen
    }
  }

  func closed(_ i: Int) { open.withLock { $0[i] -= 1 } }

  /// Runs `body` with a caller of its own (one connection and session at a time), starting at
  /// the next replica in turn, and closes its connection afterwards.
  public func withCaller<R: Sendable>(_ body: (EnclaveReplicaCaller) async throws -> R) async throws -> R {
    let caller = EnclaveReplicaCaller(replicas: self, start: nextStart())
    do {
      let r = try await body(caller)
      await caller.close()
      return r
    } catch {
      await caller.close()
      throw error
    }
  }

  /// Whether a failure means the replica (or the connection to it) is gone or cannot serve, so
  /// the request is worth sending to another: the transport's statuses, and the enclave's own
  /// answers that another replica may not give (overloaded, timed out, session gone, no
  /// accelerator reachable).
  static func isReplicaFailure(_ error: any Error) -> Bool {
    if let e = error as? RPCError {
      switch e.code {
      case .unavailable, .deadlineExceeded, .resourceExhausted, .notFound, .failedPrecondition, .unknown, .aborted:
        return true
      default: return false
      }
    }
    if case .remote(let kind, _) = error as? EnclaveError {
      // An enclave that reaches no accelerator now (its channels still in their reconnect
      // back-off at start, say) cannot serve the request; another replica may.
      return [.overloaded, .timeout, .session, .acceleratorUnavailable].contains(kind)
    }
    return false
  }

  /// Whether the endpoint itself could not be reached (it sits out its back-off).
  static func isUnreachable(_ error: any Error) -> Bool {
    guard let e = error as? RPCError else { return false }
    return e.code == .unavailable || e.code == .deadlineExceeded
  }
}

/// One caller's connection and session, moved to another replica when the one it uses drops.
/// Requests go one at a time (a session carries one request in flight).
public actor EnclaveReplicaCaller {
  public let replicas: EnclaveReplicas
  private var start: Int
  private var current: Connection?

  struct Connection {
    var index: Int
    var grpc: GRPCClient<HTTP2ClientTransport.Posix>
    var runner: Task<Void, Never>
    var session: EnclaveSession
  }

  /// The replica of the session in use (after `infer`, the one that answered).
  public var endpoint: Endpoint? { current.map { replicas.endpoints[$0.index] } }

  init(replicas: EnclaveReplicas, start: Int) {
    self.replicas = replicas
    self.start = start
  }

  /// The session in use, opening one (connection and attested handshake) when there is none:
  /// on the replica with the fewest connections (in turn from this caller's among equals),
  /// those in their back-off last.
  public func session() async throws -> EnclaveSession {
    if let current { return current.session }
    var failures: [String] = []
    var tried = Set<Int>()
    while let i = replicas.reserve(startingAt: start, excluding: tried) {
      tried.insert(i)
      let endpoint = replicas.endpoints[i]
      let transport: HTTP2ClientTransport.Posix
      do {
        transport = try HTTP2ClientTransport.Posix(
          target: .dns(host: endpoint.host, port: endpoint.port), transportSecurity: .plaintext, config: .veilClient)
      } catch {
        failures.append("\(endpoint): \(error)")
        replicas.closed(i)
        replicas.backoff.markDown(i)
        continue
      }
      let grpc = GRPCClient(transport: transport)
      let runner = Task<Void, Never> { try? await grpc.runConnections() }
      var client = EnclaveClient(grpc: grpc, endpoint: endpoint, verifier: replicas.verifier)
      client.timeout = replicas.timeout
      client.maxMessageBytes = replicas.maxMessageBytes
      client.streaming = replicas.streaming
      do {
        let session = try await client.session()
        current = Connection(index: i, grpc: grpc, runner: runner, session: session)
        start = i
        replicas.backoff.markUp(i)
        replicas.count { $0.sessions[endpoint.description, default: 0] += 1 }
        return session
      } catch {
        replicas.closed(i)
        grpc.beginGracefulShutdown()
        await runner.value
        // A replica that answers but whose evidence the policy refuses is not skipped: that is
        // the one thing the client must never work around.
        guard EnclaveReplicas.isReplicaFailure(error) else { throw error }
        if EnclaveReplicas.isUnreachable(error) { replicas.backoff.markDown(i) }
        failures.append("\(endpoint): \(error)")
      }
    }
    throw EnclaveError.enclaveUnavailable("no replica opened a session: " + failures.joined(separator: "; "))
  }

  /// Sends the request `build` makes for the session in use. A request lost with its replica is
  /// counted and sent again on a new session with another replica (at most
  /// `replicas.maxAttempts` attempts in all); an error the enclave answers for this request
  /// (invalid input, an accelerator error) is thrown as it is.
  public func infer(_ build: @Sendable (EnclaveSession) throws -> EnclaveRequestMessage) async throws -> EnclaveAnswer {
    var failures: [String] = []
    for attempt in 1...replicas.maxAttempts {
      let session: EnclaveSession
      do { session = try await self.session() } catch EnclaveError.enclaveUnavailable(let why) {
        failures.append(why)
        break
      }
      let request = try build(session)
      guard let connection = current else { continue }
      let endpoint = replicas.endpoints[connection.index]
      do {
        let answer = try await session.infer(request)
        replicas.count { $0.answered[endpoint.description, default: 0] += 1 }
        return answer
      } catch {
        guard EnclaveReplicas.isReplicaFailure(error) else { throw error }
        failures.append("\(endpoint): \(error)")
        if EnclaveReplicas.isUnreachable(error) { replicas.backoff.markDown(connection.index) }
        await drop()
        // The next attempt goes to the least loaded other replica (the callers of a dropped
        // replica spread over the rest); one that could not be reached is in its back-off and
        // tried last.
        start = (connection.index + 1) % replicas.endpoints.count
        let retry = attempt < replicas.maxAttempts
        replicas.count {
          $0.lost += 1
          $0.lostAt[endpoint.description, default: 0] += 1
          if retry { $0.retried += 1 }
        }
      }
    }
    replicas.count { $0.failed += 1 }
    throw EnclaveError.enclaveUnavailable(
      "the request failed on every replica tried (\(failures.count) attempts): " + failures.joined(separator: "; "))
  }

  /// Closes the session (authenticated close record) and the connection.
  public func close() async {
    if let c = current { try? await c.session.close() }
    await drop()
  }

  private func drop() async {
    guard let c = current else { return }
    current = nil
    replicas.closed(c.index)
    c.grpc.beginGracefulShutdown()
    await c.runner.value
  }
}
