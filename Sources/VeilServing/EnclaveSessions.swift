import Foundation
import VeilTEE

/// Limits of the enclave service. Every one bounds memory or time a client can take; see
/// docs/security.md, "Servers", for what each defends against.
public struct EnclaveConfiguration: Sendable {
  /// Sessions open at once; a handshake beyond it is refused (RESOURCE_EXHAUSTED) unless an
  /// unused session can make room.
  public var maxSessions = 256
  /// Sessions open at once from one address. At this ceiling a new handshake from that address
  /// replaces its oldest unused session, or is refused when all of them are in use.
  public var maxSessionsPerPeer = 32
  /// Sessions that have not carried a request yet, all addresses together: when full, the
  /// oldest unused session of the address holding the most is dropped to make room.
  public var maxUnusedSessions = 64
  /// A session that has not carried a request this long after its handshake is dropped.
  public var unusedTimeout: Double = 10
  /// A session ends this long after its handshake, however busy.
  public var sessionLifetime: Double = 3600
  /// A session ends after this long without a request.
  public var idleTimeout: Double = 300
  /// Requests one session may carry.
  public var maxRequestsPerSession: UInt64 = 1_000_000
  /// The largest record accepted (a 224×224 RGB float tensor is 602 kB; a PNG of it less).
  public var maxRecordBytes = 8 << 20
  /// Handshakes per second one address may start (each costs the enclave a quote), and how
  /// many it may start at once after a quiet spell.
  public var handshakesPerSecondPerPeer: Double = 5
  public var handshakeBurstPerPeer: Double = 20
  /// Evidence (quotes) generated per second, all addresses together, and its burst.
  public var evidencePerSecond: Double = 50
  public var evidenceBurst: Double = 100
  /// One request may take this long (head, accelerator, answer) before it is answered `timeout`.
  public var requestTimeout: Double = 120
  /// How often expired sessions are swept.
  public var sweepInterval: Double = 5

  public init() {}
}

/// Why the session table refused a handshake or a request. Mapped to a gRPC status at the
/// service's edge.
public enum SessionRefusal: Error, CustomStringConvertible, Sendable, Equatable {
  /// No such session (never opened, expired and swept, closed, or replaced).
  case unknown(id: String)
  case expired(id: String, reason: String)
  case busy(id: String)
  case requestLimit(id: String, limit: UInt64)
  /// Every session is in use and none can make room.
  case full(limit: Int)
  /// The address holds its ceiling of sessions, all in use.
  case peerFull(limit: Int)
  /// The address starts handshakes faster than its rate.
  case rateLimited(retryAfter: Double)
  /// The enclave generates evidence as fast as it may, for all addresses together.
  case evidenceRate(retryAfter: Double)

  public var description: String {
    switch self {
    case .unknown(let id): "session \(id.prefix(8)): unknown, expired or closed; start a new handshake"
    case .expired(let id, let why): "session \(id.prefix(8)) \(why); start a new handshake"
    case .busy(let id):
      "session \(id.prefix(8)) already has a request in flight; a session carries one request at a time (open more sessions to send in parallel)"
    case .requestLimit(let id, let n):
      "session \(id.prefix(8)) reached its limit of \(n) requests; start a new handshake"
    case .full(let n): "\(n) sessions are open and in use, the enclave's limit; retry later or close idle sessions"
    case .peerFull(let n):
      "your address holds \(n) sessions in use, the enclave's limit per address; close idle sessions"
    case .rateLimited(let s): String(format: "too many handshakes from your address; retry in %.1f s", s)
    case .evidenceRate(let s):
      String(format: "the enclave is generating evidence as fast as it may; retry in %.1f s", s)
    }
  }

  /// The error kind it is counted under.
  public var kind: EnclaveErrorKind {
    switch self {
    case .unknown, .expired, .busy, .requestLimit: .session
    case .full, .peerFull: .overloaded
    case .rateLimited, .evidenceRate: .rateLimited
    }
  }
}

/// Open sessions: the channel state, its peer, its limits and its one-request-at-a-time flag.
///
/// A handshake first reserves a place (rate limits, the address's ceiling, room in the table,
/// making room by dropping unused sessions), then the evidence is generated, then the place is
/// filled with the channel. Unused sessions (no request yet) are cheap for a client to make and
/// expensive to hold, so they live `unusedTimeout` only and are the first to go when room is
/// needed; a session that has carried a request is never dropped for another client.
public actor EnclaveSessions {
  struct Entry {
    /// nil while the handshake that reserved it is still generating evidence.
    var channel: SealedChannel?
    var peer: String
    var created: Double
    var lastUsed: Double
    var requests: UInt64 = 0
    var busy = false
    var unused: Bool { requests == 0 }
  }

  private var entries: [String: Entry] = [:]
  private var perPeer: [String: Int] = [:]
  private var handshakeLimiter: PeerRateLimiter
  private var evidenceBucket: TokenBucket
  private var dropped = 0
  let configuration: EnclaveConfiguration
  let clock: any ServiceClock

  public init(configuration: EnclaveConfiguration, clock: any ServiceClock = SystemClock()) {
    self.configuration = configuration
    self.clock = clock
    handshakeLimiter = PeerRateLimiter(
      rate: configuration.handshakesPerSecondPerPeer, burst: configuration.handshakeBurstPerPeer)
    evidenceBucket = TokenBucket(
      rate: configuration.evidencePerSecond, burst: configuration.evidenceBurst, now: clock.now())
  }

  /// Sessions open now (reserved ones included).
  public var count: Int { entries.count }
  /// Sessions open now that have not carried a request.
  public var unusedCount: Int { entries.values.filter(\.unused).count }
  /// Sessions with a request in flight now.
  public var busyCount: Int { entries.values.filter(\.busy).count }
  /// Sessions open now from `peer`.
  public func count(from peer: String) -> Int { perPeer[peer, default: 0] }
  /// Unused sessions dropped so far to make room for others.
  public var droppedForRoom: Int { dropped }

  private func insert(_ id: String, _ e: Entry) {
    entries[id] = e
    perPeer[e.peer, default: 0] += 1
  }

  @discardableResult
  private func delete(_ id: String) -> Entry? {
    guard let e = entries.removeValue(forKey: id) else { return nil }
    let n = perPeer[e.peer, default: 1] - 1
    perPeer[e.peer] = n > 0 ? n : nil
    return e
  }

  /// The oldest unused session with a channel (not one still in its handshake) among `ids`.
  private func oldestUnused(_ candidates: some Sequence<(key: String, value: Entry)>) -> String? {
    candidates.filter { $0.value.unused && $0.value.channel != nil && !$0.value.busy }
      .min { $0.value.created < $1.value.created }?.key
  }

  /// Reserves a session for a handshake from `peer` and returns its id, or says why not.
  public func reserve(peer: String) throws -> String {
    let now = clock.now()
    sweep(at: now)
    if let wait = handshakeLimiter.take(peer, at: now) { throw SessionRefusal.rateLimited(retryAfter: wait) }
    // What has to go to make room, decided before anything is dropped.
    var victims: [String] = []
    if perPeer[peer, default: 0] >= configuration.maxSessionsPerPeer {
      guard let own = oldestUnused(entries.lazy.filter { $0.value.peer == peer }) else {
        throw SessionRefusal.peerFull(limit: configuration.maxSessionsPerPeer)
      }
      victims.append(own)
    }
    let unused = entries.values.filter(\.unused).count - victims.count
    if victims.isEmpty, entries.count >= configuration.maxSessions || unused >= configuration.maxUnusedSessions {
      // The address holding the most unused sessions gives up its oldest one.
      var byPeer: [String: Int] = [:]
      for e in entries.values where e.unused && e.channel != nil && !e.busy { byPeer[e.peer, default: 0] += 1 }
      guard let heaviest = byPeer.max(by: { $0.value < $1.value })?.key,
        let victim = oldestUnused(entries.lazy.filter { $0.value.peer == heaviest })
      else {
        throw SessionRefusal.full(limit: configuration.maxSessions)
      }
      victims.append(victim)
    }
    guard evidenceBucket.take(at: now) else {
      throw SessionRefusal.evidenceRate(retryAfter: evidenceBucket.wait(at: now))
    }
    for v in victims { delete(v) }
    dropped += victims.count
    var id = ""
    repeat {
      id = (0..<16).map { _ in UInt8.random(in: 0...255) }.hex
    } while entries[id] != nil
    insert(id, Entry(channel: nil, peer: peer, created: now, lastUsed: now))
    return id
  }

  /// Fills a reservation with its channel; false when the reservation is gone (expired).
  func activate(_ id: String, channel: SealedChannel) -> Bool {
    guard var e = entries[id], e.channel == nil else { return false }
    e.channel = channel
    entries[id] = e
    return true
  }

  /// Gives up a reservation whose handshake failed.
  func cancel(_ id: String) {
    if entries[id]?.channel == nil { delete(id) }
  }

  /// Why a session cannot carry a request, or nil.
  private func expiry(_ e: Entry, at t: Double) -> String? {
    if e.unused, !e.busy, t - e.created > configuration.unusedTimeout {
      return "expired: no request within \(Int(configuration.unusedTimeout)) s of its handshake"
    }
    if t - e.created > configuration.sessionLifetime {
      return "expired: its lifetime of \(Int(configuration.sessionLifetime)) s is over"
    }
    if !e.busy, t - e.lastUsed > configuration.idleTimeout {
      return "expired: idle for more than \(Int(configuration.idleTimeout)) s"
    }
    if let c = e.channel, c.isClosed { return "closed (\(c.closedReason ?? "by the channel"))" }
    return nil
  }

  /// Takes the session for one request.
  func begin(_ id: String) throws -> SealedChannel {
    guard var e = entries[id], let channel = e.channel else { throw SessionRefusal.unknown(id: id) }
    if let why = expiry(e, at: clock.now()) {
      delete(id)
      throw SessionRefusal.expired(id: id, reason: why)
    }
    guard !e.busy else { throw SessionRefusal.busy(id: id) }
    guard e.requests < configuration.maxRequestsPerSession else {
      delete(id)
      throw SessionRefusal.requestLimit(id: id, limit: configuration.maxRequestsPerSession)
    }
    e.busy = true
    e.requests += 1
    entries[id] = e
    return channel
  }

  /// Releases the session after a request; a closed channel ends it.
  func end(_ id: String) {
    guard var e = entries[id] else { return }
    if e.channel?.isClosed ?? true {
      delete(id)
      return
    }
    e.busy = false
    e.lastUsed = clock.now()
    entries[id] = e
  }

  func remove(_ id: String) -> SealedChannel? {
    guard entries[id]?.channel != nil else { return nil }
    return delete(id)?.channel
  }

  /// Drops expired and closed sessions; returns how many.
  @discardableResult
  public func sweep() -> Int { sweep(at: clock.now()) }

  @discardableResult
  private func sweep(at t: Double) -> Int {
    let dead = entries.filter { expiry($0.value, at: t) != nil }.map(\.key)
    for id in dead { delete(id) }
    return dead.count
  }
}
