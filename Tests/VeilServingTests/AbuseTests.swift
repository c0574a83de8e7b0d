import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import VeilData
import VeilServing
import VeilTEE
import VeilTensor
import XCTest

/// The attacks of issue 19 on the servers, and their neighbours, on loopback: each keeps a
/// legitimate client served within a stated latency while the attack runs, and each fails if
/// the protection it exercises is taken away. Attackers come from other loopback addresses
/// (127.0.0.2…) through a relay or a bound socket, as clients on other hosts would; the
/// legitimate client is 127.0.0.1. Latencies are printed for docs/security.md.
///
/// The stated latency, 2 s for a whole handshake and request (or key fetch), holds on the
/// 2-core development machine with other builds running; a quiet machine does it in tens of ms.
final class AbuseTests: XCTestCase {
  static let legitimateLatency = 2.0

  /// A legitimate session: handshake, one request, close; the seconds it took.
  static func legitimateRequest(_ endpoint: KServeEndpoint, _ request: EnclaveRequestMessage) async throws -> Double {
    let (_, seconds) = try await timed {
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let s = try await client.session()
        let a = try await s.infer(request)
        try await s.close()
        return a.top.count
      }
    }
    return seconds
  }

  static func assertServedInTime(
    _ latencies: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line
  ) {
    let worst = latencies.max() ?? .infinity
    print(
      String(
        format: "%@: %d legitimate requests, worst %.3f s, median %.3f s", what, latencies.count, worst,
        latencies.sorted()[latencies.count / 2]))
    XCTAssertLessThan(worst, Self.legitimateLatency, "\(what): \(latencies)", file: file, line: line)
  }

  // MARK: The enclave

  /// Handshakes without requests from six other addresses, as fast as they go: each address
  /// holds at most its ceiling of sessions, is rate-limited, and a legitimate client still gets
  /// a session and an answer (an unused attacker session makes room for it).
  func testSessionFloodLeavesLegitimateClientsServed() async throws {
    let plan = try EnclaveFixture.plan()
    let request = EnclaveSession.request(
      tensor: try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan), top: 1)
    var config = EnclaveConfiguration()
    config.maxSessions = 48
    config.maxSessionsPerPeer = 8
    config.maxUnusedSessions = 24
    // Six addresses' bursts together stay under the evidence burst (100), so what limits them
    // here is their own rate; `testHandshakeRatesOnAnInjectedClock` covers the global one.
    config.handshakeBurstPerPeer = 10
    let attackers = (2...7).map { "127.0.0.\($0)" }
    let ceiling = config.maxSessionsPerPeer
    try await withEnclave(plan: plan, configuration: config) { server, endpoint in
      let sessions = server.service.sessions
      var started: [LoopbackRelay] = []
      for a in attackers { started.append(try await LoopbackRelay(to: endpoint.port, from: a)) }
      let relays = started
      let opened = Locked(0)
      let refused = Locked(0)
      let lastRefusal = Locked("")
      let flood = Task {
        await withTaskGroup(of: Void.self) { group in
          for relay in relays {
            group.addTask {
              let target = KServeEndpoint(host: "127.0.0.1", port: relay.port)
              do {
                try await EnclaveClient.with(target, verifier: try EnclaveFixture.verifier()) { client in
                  while !Task.isCancelled {
                    do {
                      _ = try await client.session()
                      opened.withLock { $0 += 1 }
                    } catch {
                      refused.withLock { $0 += 1 }
                      lastRefusal.withLock { $0 = "\(error)" }
                    }
                  }
                }
              } catch {
                lastRefusal.withLock { $0 = "the attacker's connection failed: \(error)" }
              }
            }
          }
        }
      }
      // The flood is on once every address has used its burst and been refused.
      do {
        try await waitUntil("the flood opened its sessions and met the limits", within: 60) {
          opened.withLock { $0 } >= 40 && refused.withLock { $0 } >= 20
        }
      } catch {
        flood.cancel()
        throw DeadlinePassed(
          description:
            "\(error) (opened \(opened.withLock { $0 }), refused \(refused.withLock { $0 }), last: \(lastRefusal.withLock { $0 }))"
        )
      }
      var latencies: [Double] = []
      for _ in 0..<5 { latencies.append(try await Self.legitimateRequest(endpoint, request)) }
      var held: [Int] = []
      for a in attackers { held.append(await sessions.count(from: a)) }
      flood.cancel()
      await flood.value
      for r in relays { await r.close() }
      Self.assertServedInTime(latencies, "session flood from 6 addresses")
      XCTAssertTrue(held.allSatisfy { $0 <= ceiling }, "sessions held per attacking address: \(held)")
      let dropped = await sessions.droppedForRoom
      XCTAssertGreaterThan(dropped, 0, "unused sessions were dropped to make room, not new handshakes refused")
      print(
        "session flood: \(opened.withLock { $0 }) attacker sessions opened, \(refused.withLock { $0 }) refused, held \(held)"
      )
    }
  }

  /// The handshake limits on a clock the test moves: an address's burst and rate, then the
  /// enclave's evidence rate for all addresses together.
  func testHandshakeRatesOnAnInjectedClock() async throws {
    let clock = ManualClock()
    var config = EnclaveConfiguration()
    config.handshakesPerSecondPerPeer = 2
    config.handshakeBurstPerPeer = 3
    config.evidencePerSecond = 5
    config.evidenceBurst = 5
    let sessions = EnclaveSessions(configuration: config, clock: clock)
    for _ in 0..<3 { _ = try await sessions.reserve(peer: "10.0.0.1") }
    do {
      _ = try await sessions.reserve(peer: "10.0.0.1")
      XCTFail("a fourth handshake within the burst of 3")
    } catch let r as SessionRefusal {
      XCTAssertEqual(r.kind, .rateLimited)
      guard case .rateLimited(let wait) = r else { return XCTFail("\(r)") }
      XCTAssertEqual(wait, 0.5, accuracy: 1e-9)
    }
    for _ in 0..<2 { _ = try await sessions.reserve(peer: "10.0.0.2") }
    do {
      _ = try await sessions.reserve(peer: "10.0.0.3")
      XCTFail("a sixth quote within the evidence burst of 5")
    } catch let r as SessionRefusal {
      guard case .evidenceRate = r else { return XCTFail("\(r)") }
    }
    clock.advance(by: 0.5)
    _ = try await sessions.reserve(peer: "10.0.0.1")
    let count = await sessions.count
    XCTAssertEqual(count, 6)
  }

  /// Many connections from one address that trickle the HTTP/2 preface a byte at a time: those
  /// over the address's ceiling are closed at once, the others when their setup time is up, and
  /// a legitimate client is served all the while.
  func testSlowConnectionsAreCutAndOthersServed() async throws {
    let plan = try EnclaveFixture.plan()
    let request = EnclaveSession.request(
      tensor: try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan), top: 1)
    var limits = ConnectionLimits()
    limits.maxConnectionsPerPeer = 8
    limits.setupTimeout = .seconds(2)
    try await withEnclave(plan: plan, connections: limits) { server, endpoint in
      let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
      let slow = (0..<20).map { _ in SlowClient(port: endpoint.port, source: "127.0.0.2", bytes: preface, interval: 0.5)
      }
      defer { for s in slow { s.stop() } }
      try await waitUntil("the connections over the ceiling were refused", within: 30) {
        server.connections.refused >= 12
      }
      XCTAssertLessThanOrEqual(server.connections.open(from: "127.0.0.2"), 8)
      var latencies: [Double] = []
      for _ in 0..<3 { latencies.append(try await Self.legitimateRequest(endpoint, request)) }
      Self.assertServedInTime(latencies, "20 slow connections from one address")
      try await assertAllClosed(slow, within: 2 + 10, "slow connection")
    }
  }

  /// The Prometheus endpoint shares the server's process and file descriptors: connections from
  /// one address over its ceiling are closed at once, one that never begins its request is
  /// closed when its setup time is up, a kept-alive one that goes quiet after a scrape is closed
  /// when its idle time is up, and a scraper is served all the while.
  func testMetricsEndpointBoundsSlowAndIdleConnections() async throws {
    var limits = MetricsHTTPServer.defaultLimits
    limits.maxConnectionsPerPeer = 3
    limits.setupTimeout = .seconds(1)
    limits.maxIdleTime = .seconds(1)
    let server = try await MetricsHTTPServer(port: 0, limits: limits) { "veil_test_metric 1\n" }
    let silent = (0..<8).map { _ in SlowClient(port: server.port, source: "127.0.0.2", bytes: [], interval: 0.1) }
    let scrape = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.3\r\n\r\n".utf8)
    let kept = SlowClient(port: server.port, source: "127.0.0.3", bytes: scrape, interval: 0.001)
    defer {
      for c in silent + [kept] { c.stop() }
    }
    try await waitUntil("the silent connections over the ceiling were refused", within: 30) {
      server.connections.refused >= 5
    }
    XCTAssertLessThanOrEqual(server.connections.open(from: "127.0.0.2"), 3)
    let answer = try KServeServerTests.httpGet(port: server.port, path: "/metrics")
    XCTAssertTrue(answer.hasPrefix("HTTP/1.1 200") && answer.contains("veil_test_metric 1"), answer)
    try await assertAllClosed(silent, within: 1 + 5, "silent metrics connection")
    try await assertAllClosed([kept], within: 1 + 5, "kept-alive metrics connection")
    XCTAssertGreaterThanOrEqual(kept.closedAfter ?? 0, 0.9, "the kept-alive connection was closed for its idleness, not at once")
    try await waitUntil("every connection's place was given back", within: 10) { server.connections.open == 0 }
    await server.close()
  }

  /// Photo headers that would make the enclave overflow or allocate gigabytes are refused
  /// before decoding, quickly; corrupt and foreign bytes get the decoder's error; the enclave
  /// serves the next photo.
  func testHostilePhotoHeadersAreRefusedBeforeDecoding() async throws {
    let plan = try EnclaveFixture.plan(.enclave)
    let thin = try ImageCodec.encodePNG(
      ByteImage(width: 1, height: 150_000, channels: 3, pixels: [UInt8](repeating: 90, count: 150_000 * 3)))
    var bomb = try EnclaveFixture.photo()
    bomb.replaceSubrange(16..<24, with: [0, 0, 0x4E, 0x20, 0, 0, 0x4E, 0x20])
    let cases: [(String, Data, String)] = [
      (
        "PNG claiming 4294967295×4294967295", Self.png(width: 0xFFFF_FFFF, height: 0xFFFF_FFFF), "4294967295×4294967295"
      ),
      ("1×150000 PNG (\(thin.count) bytes)", thin, "resized"),
      (
        "JPEG with its frame header after 128 KiB", Self.jpegWithLateFrameHeader(width: 20_000, height: 20_000),
        "20000×20000"
      ),
      ("PNG without IHDR first", Self.png(width: 10, height: 10, chunk: "tEXt"), "IHDR"),
      ("PNG claiming 20000×20000", bomb, "20000×20000"),
      ("truncated PNG", Data(try EnclaveFixture.photo().prefix(300)), "photo"),
      ("GIF", Data("GIF89a".utf8), "not a PNG or JPEG"),
    ]
    try await withEnclave(plan: plan) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        for (name, bytes, fragment) in cases {
          var r = EnclaveRequestMessage()
          r.image = bytes
          r.topK = 1
          let start = ContinuousClock.now
          try await EnclaveFixture.expectRefusal(session, r, name, naming: fragment)
          let took = ContinuousClock.now - start
          XCTAssertLessThan(took, .seconds(2), "\(name) took \(took)")
        }
        var good = EnclaveRequestMessage()
        good.image = try EnclaveFixture.photo()
        good.topK = 2
        let answer = try await session.infer(good)
        XCTAssertEqual(answer.top.count, 2)
      }
    }
  }

  /// A request that outlives the enclave's deadline is answered `timeout`, and its session
  /// serves the next request.
  func testRequestDeadlineAnswersTimeout() async throws {
    let plan = try EnclaveFixture.plan()
    let request = EnclaveSession.request(
      tensor: try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan), top: 1)
    let tail = GatedTail(try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail")))
    var config = EnclaveConfiguration()
    config.requestTimeout = 0.5
    try await withEnclave(plan: plan, backend: tail, configuration: config) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        let (_, took) = await timed {
          do {
            _ = try await session.infer(request)
            XCTFail("a request stuck at the accelerator was answered")
          } catch EnclaveError.remote(let kind, _) {
            XCTAssertEqual(kind, .timeout)
          } catch {
            XCTFail("\(error)")
          }
        }
        XCTAssertLessThan(took, 5, "the deadline is 0.5 s")
        tail.openAll()
        let answer = try await session.infer(request)
        XCTAssertEqual(answer.top.count, 1)
      }
    }
  }

  /// An accelerator that answers shapes whose size overflows, wrong datatypes, wrong shapes,
  /// extra outputs and oversized messages: each request gets an accelerator error, the enclave
  /// stays up, and the next honest answer is served; by unary calls and on streams alike. On a
  /// stream, an answer nobody asked for ends that stream (the next request opens another), and
  /// an error the accelerator reports in the stream's `error_message` is an accelerator error.
  func testHostileAcceleratorAnswersAreRefused() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let request = EnclaveSession.request(tensor: x, top: 1)
    let honest = try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail"))
    for streaming in [true, false] {
      let fake = HostileAccelerator(honest: honest)
      let grpc = GRPCServer(
        transport: .http2NIOPosix(address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext),
        services: [fake])
      try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await grpc.serve() }
        defer { grpc.beginGracefulShutdown() }
        guard let port = try await grpc.listeningAddress?.ipv4?.port else { return XCTFail("no port") }
        let backend = try XCTUnwrap(
          try KServeTailBackend.backends(
            [KServeEndpoint(host: "127.0.0.1", port: port)], plan: plan, streaming: streaming
          ).first)
        try await withEnclave(plan: plan, backend: backend) { _, endpoint in
          try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
            let session = try await client.session()
            for answer in HostileAccelerator.Answer.allCases {
              fake.mode.withLock { $0 = answer }
              do {
                _ = try await session.infer(request)
                XCTFail("the enclave passed on \(answer), streaming \(streaming)")
              } catch EnclaveError.remote(let kind, let message) {
                XCTAssertTrue(
                  [.acceleratorError, .acceleratorUnavailable].contains(kind), "\(answer): \(kind) \(message)")
              }
            }
            fake.mode.withLock { $0 = nil }
            let served = try await session.infer(request)
            XCTAssertEqual(served.top.count, 1)
            if streaming {
              fake.extra.withLock { $0 = .unasked }
              let asked = try await session.infer(request)
              XCTAssertEqual(asked.top.count, 1, "the asked-for answer")
              fake.extra.withLock { $0 = nil }
              let next = try await session.infer(request)
              XCTAssertEqual(next.top.count, 1, "served on a new stream")
              fake.extra.withLock { $0 = .errorMessage }
              do {
                _ = try await session.infer(request)
                XCTFail("an error on the stream was served")
              } catch EnclaveError.remote(let kind, let message) {
                XCTAssertEqual(kind, .acceleratorError, message)
                XCTAssertTrue(message.contains("refused on the stream"), message)
              }
            }
          }
        }
        XCTAssertEqual(fake.streams.withLock { $0 } > 0, streaming, "streams opened: \(fake.streams.withLock { $0 })")
        group.cancelAll()
      }
    }
  }

  // MARK: The accelerator

  /// A `grpc-timeout` of 9999999 hours, batches beyond the configured maximum, and a run of
  /// distinct batch sizes: answered, refused, and kept within the executor cache.
  func testAcceleratorSurvivesHostileRequests() async throws {
    let graph = KServeFixtures.tinyModel()
    let s = try await RunningServer([
      KServeModelSpec(name: "one", graph: graph),
      KServeModelSpec(
        name: "many", graph: graph,
        batching: KServeBatching(maxBatchSize: 64, maxQueueDelay: .zero, executorCacheCapacity: 4)),
    ])
    let x = KServeFixtures.input([1, 3, 8, 8], seed: 4)
    let good = KServeClient.makeRequest(model: "one", inputs: [KServeTensor(name: "features", tensor: x)])
    // The header that trapped parseTimeout, straight into the service.
    let response = try await withServerContextRPCCancellationHandle { handle in
      try await s.server.service.modelInfer(
        request: ServerRequest(metadata: ["grpc-timeout": "9999999H"], message: good),
        context: ServerContext(
          descriptor: Inference_GRPCInferenceService.Method.ModelInfer.descriptor, remotePeer: "ipv4:127.0.0.2:1",
          localPeer: "ipv4:127.0.0.1:2", cancellation: handle))
    }
    XCTAssertEqual(try response.message.outputs.count, 1)

    // A batch beyond --max-batch is refused, with the reason.
    let two = try Tensor(shape: [2, 3, 8, 8], values: x.scalars + x.scalars)
    do {
      _ = try await s.client.infer(model: "one", inputs: [KServeTensor(name: "features", tensor: two)])
      XCTFail("a batch of 2 was served with --max-batch 1")
    } catch let e as KServeError {
      XCTAssertEqual(e.kind, .invalidArgument, e.description)
      XCTAssertTrue(e.message.contains("at most 1 rows"), e.message)
    }
    // Twelve batch sizes: every answer right, and four executors kept at most.
    for rows in [3, 5, 7, 9, 11, 13, 17, 19, 23, 29, 31, 37] {
      let xs = try Tensor(shape: [rows, 3, 8, 8], values: Array(repeating: x.scalars, count: rows).flatMap { $0 })
      let y = try await s.client.infer(model: "many", inputs: [KServeTensor(name: "features", tensor: xs)]).outputs[0]
        .tensor
      XCTAssertEqual(y.shape, [rows, 4])
    }
    let cache = s.models[1].executorCache
    XCTAssertLessThanOrEqual(cache.sizes.count, 4, "\(cache.sizes)")
    XCTAssertGreaterThanOrEqual(cache.compiled, 12)
    let ok = try await s.client.modelInfer(good)
    XCTAssertEqual(ok.outputs.count, 1)
    try await s.stop()
  }

  /// Shapes from the wire whose element count overflows or is unbounded never reach an
  /// allocation.
  func testKServeShapesAreOverflowChecked() {
    XCTAssertNil(KServeCodec.elementCount([Int(Int32.max), Int(Int32.max), Int(Int32.max)]))
    XCTAssertNil(KServeCodec.elementCount([-1, 4]))
    XCTAssertNil(KServeCodec.elementCount([1 << 20, 1 << 20]))
    XCTAssertEqual(KServeCodec.elementCount([1, 1000]), 1000)
    XCTAssertNil(KServeCodec.tensor(shape: [Int(Int32.max), Int(Int32.max), 4], rawBytes: Data(count: 16)))
    var r = Inference_ModelInferResponse()
    var o = Inference_ModelInferResponse.InferOutputTensor()
    o.name = "y"
    o.datatype = "FP32"
    o.shape = [Int64(Int32.max), Int64(Int32.max), 4]
    r.outputs = [o]
    r.rawOutputContents = [Data(count: 16)]
    XCTAssertThrowsError(try KServeClient.decode(r)) { XCTAssertEqual(($0 as? KServeError)?.kind, .malformedResponse) }
    o.shape = [1, 4]
    r.outputs = [o]
    XCTAssertThrowsError(
      try KServeClient.decode(r, expecting: [KServeTensorMetadata(name: "y", datatype: "FP32", shape: [1, 1000])])
    ) { XCTAssertTrue("\($0)".contains("declares"), "\($0)") }
    XCTAssertEqual(try KServeClient.decode(r).outputs.first?.tensor.shape, [1, 4])
  }

  // MARK: The key server

  /// A key server for the fixture's simulated enclave (pinned MRENCLAVE, simulation allowed).
  func withKeyServer<R: Sendable>(
    config: KeyReleaseConfig = KeyReleaseConfig(port: 0), policy: Policy? = nil, logs: CapturedLogs? = nil,
    _ body: @Sendable (KeyReleaseServer, KServeEndpoint, SymmetricKey) async throws -> R
  ) async throws -> R {
    var config = config
    config.port = 0
    var pinned = Policy()
    pinned.allowSimulation = true
    pinned.allowDebug = true
    pinned.mrEnclave = EnclaveFixture.simulation.mrEnclave
    let key = SealedHead.newKey()
    let server = try KeyReleaseServer(
      config: config, headKey: key, policy: policy ?? pinned, collateral: nil,
      logger: logs?.logger ?? Logger(label: "veil.keys.test") { _ in SwiftLogNoOpLogHandler() })
    return try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.run() }
      defer { server.beginGracefulShutdown() }
      let port = try await server.port()
      return try await body(server, KServeEndpoint(host: "127.0.0.1", port: port), key)
    }
  }

  static func fetch(_ endpoint: KServeEndpoint) async throws -> ([UInt8], Double) {
    let provider = SimulatedProvider(enclave: EnclaveFixture.simulation)
    let (key, seconds) = try await timed {
      try await KeyReleaseClient.fetchKey(from: endpoint, provider: provider, timeout: 10)
    }
    return (key.withUnsafeBytes { Array($0) }, seconds)
  }

  /// Clients that open connections and send a byte a second never finishing their request: the
  /// server serves connections concurrently, closes those over the address's ceiling at once and
  /// the rest at the exchange deadline, and legitimate fetches are answered all the while.
  func testKeyServerServesOthersWhileSlowClientsHang() async throws {
    let config = KeyReleaseConfig(port: 0, maxConnectionsPerPeer: 4, exchangeTimeout: 3)
    try await withKeyServer(config: config) { server, endpoint, key in
      // Each announces a 1000-byte request, then sends it one byte per second.
      let slow = (0..<12).map { _ in
        SlowClient(
          port: endpoint.port, source: "127.0.0.2", bytes: [0, 0, 3, 232] + [UInt8](repeating: 1, count: 1000),
          interval: 1)
      }
      defer { for s in slow { s.stop() } }
      try await waitUntil("the connections over the ceiling were refused", within: 30) {
        server.connections.refused >= 8
      }
      var latencies: [Double] = []
      for _ in 0..<5 {
        let (got, seconds) = try await Self.fetch(endpoint)
        XCTAssertEqual(got, key.withUnsafeBytes { Array($0) })
        latencies.append(seconds)
      }
      Self.assertServedInTime(latencies, "key fetch beside 12 slow clients")
      try await assertAllClosed(slow, within: 3 + 5, "slow key client")
    }
  }

  /// A length of 4 GiB is refused before anything is read; a refused enclave learns only a
  /// reference, never the measurement the owner expects; the owner's log has the reasons.
  func testKeyServerRefusalsSayLittleAndLogWhy() async throws {
    var policy = Policy()
    policy.allowSimulation = true
    policy.allowDebug = true
    policy.mrEnclave = [UInt8](repeating: 0xAB, count: 32)
    let other = policy
    let logs = CapturedLogs()
    try await withKeyServer(policy: other, logs: logs) { _, endpoint, _ in
      let reply = try await blocking { try rawKeyExchange(port: endpoint.port, send: [0xFF, 0xFF, 0xFF, 0xFF]) }
      guard case .refused(let why) = try KeyReleaseReply(reply) else { return XCTFail("released to a 4 GiB request") }
      XCTAssertTrue(why.contains("reference"), why)
      do {
        _ = try await Self.fetch(endpoint)
        XCTFail("released to the wrong enclave")
      } catch KeyReleaseError.refused(let why) {
        XCTAssertFalse(why.contains(other.mrEnclave?.hex ?? "-"), why)
        XCTAssertFalse(why.contains("MRENCLAVE"), why)
        XCTAssertTrue(why.contains("reference R"), why)
      }
      try await waitUntil("the refusal was logged") { logs.text.contains("MRENCLAVE") }
      XCTAssertTrue(logs.text.contains(other.mrEnclave?.hex ?? "-"), logs.text)
      XCTAssertTrue(logs.text.contains("4294967295"), logs.text)
    }
  }

  /// A policy that pins no measurement is refused unless allowed; allowed, every release says so
  /// first.
  func testKeyServerRefusesAnUnpinnedPolicyUnlessAllowed() async throws {
    var unpinned = Policy()
    unpinned.allowSimulation = true
    unpinned.allowDebug = true
    XCTAssertThrowsError(
      try KeyReleaseServer(
        config: KeyReleaseConfig(port: 0), headKey: SealedHead.newKey(), policy: unpinned, collateral: nil,
        logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })
    ) { XCTAssertTrue("\($0)".contains("pins no measurement"), "\($0)") }
    let logs = CapturedLogs()
    try await withKeyServer(config: KeyReleaseConfig(port: 0, allowUnpinnedPolicy: true), policy: unpinned, logs: logs)
    {
      _, endpoint, key in
      let (got, _) = try await Self.fetch(endpoint)
      XCTAssertEqual(got, key.withUnsafeBytes { Array($0) })
      try await waitUntil("the release was logged") { logs.text.contains("key released") }
      XCTAssertTrue(logs.text.contains("key released under an UNPINNED policy"), logs.text)
    }
  }
}

/// One raw exchange with a key server: read the challenge, send `bytes`, read until it closes.
func rawKeyExchange(port: Int, send bytes: [UInt8]) throws -> [UInt8] {
  let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard s >= 0 else { throw POSIXError(.EIO) }
  defer { close(s) }
  var tv = timeval(tv_sec: 10, tv_usec: 0)
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_port = UInt16(port).bigEndian
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
  let connected = withUnsafePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
    }
  }
  guard connected else { throw POSIXError(.ECONNREFUSED) }
  var all: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 4096)
  while all.count < 32 {
    let n = recv(s, &buffer, buffer.count, 0)
    guard n > 0 else { throw POSIXError(.EIO) }
    all += buffer[0..<n]
  }
  guard send(s, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { throw POSIXError(.EIO) }
  var reply = Array(all.dropFirst(32))
  while true {
    let n = recv(s, &buffer, buffer.count, 0)
    if n <= 0 { break }
    reply += buffer[0..<n]
  }
  return reply
}

extension AbuseTests {
  /// A PNG of its signature and one chunk (IHDR by default) declaring `width × height`, and IEND.
  static func png(width: UInt32, height: UInt32, chunk: String = "IHDR") -> Data {
    func be32(_ v: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    func chunkBytes(_ type: String, _ body: [UInt8]) -> [UInt8] {
      let typed = Array(type.utf8) + body
      return be32(UInt32(body.count)) + typed + be32(crc32(typed))
    }
    let ihdr = be32(width) + be32(height) + [8, 2, 0, 0, 0]
    return Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunkBytes(chunk, ihdr) + chunkBytes("IEND", []))
  }

  static func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
      c ^= UInt32(b)
      for _ in 0..<8 { c = c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }
    return c ^ 0xFFFF_FFFF
  }

  /// A JPEG whose two 64 KiB application segments put its frame header (SOF0, `width ×
  /// height`) past the first 128 KiB.
  static func jpegWithLateFrameHeader(width: Int, height: Int) -> Data {
    var bytes: [UInt8] = [0xFF, 0xD8]
    for _ in 0..<2 { bytes += [0xFF, 0xE1, 0xFF, 0xFF] + [UInt8](repeating: 0x20, count: 0xFFFF - 2) }
    bytes += [
      0xFF, 0xC0, 0x00, 0x11, 8, UInt8(height >> 8), UInt8(height & 0xFF), UInt8(width >> 8), UInt8(width & 0xFF), 3,
    ]
    bytes += [1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]
    bytes += [0xFF, 0xD9]
    return Data(bytes)
  }
}

/// A KServe v2 server that answers ModelInfer with whatever `mode` says: each hostile answer of
/// the issue, or (nil) the honest tail's.
final class HostileAccelerator: Inference_GRPCInferenceService.SimpleServiceProtocol {
  enum Answer: CaseIterable, Sendable {
    case overflowingShape, negativeShape, wrongDatatype, wrongShape, twoOutputs, oversized, bytesShort
  }
  /// What a stream adds: an answer nobody asked for after each honest one, or a request's error
  /// in `error_message` (Triton's way).
  enum Extra: Sendable { case unasked, errorMessage }
  let honest: LocalTailBackend
  let mode = Locked<Answer?>(nil)
  let extra = Locked<Extra?>(nil)
  /// ModelStreamInfer calls opened.
  let streams = Locked(0)

  init(honest: LocalTailBackend) { self.honest = honest }

  func modelStreamInfer(
    request: RPCAsyncSequence<Inference_ModelInferRequest, any Error>,
    response: RPCWriter<Inference_ModelStreamInferResponse>, context: ServerContext
  ) async throws {
    streams.withLock { $0 += 1 }
    for try await q in request {
      var m = Inference_ModelStreamInferResponse()
      switch extra.withLock({ $0 }) {
      case .errorMessage: m.errorMessage = "refused on the stream"
      case .unasked, nil: m.inferResponse = try await modelInfer(request: q, context: context)
      }
      try await response.write(m)
      if extra.withLock({ $0 }) == .unasked { try await response.write(m) }
    }
  }

  func modelInfer(request: Inference_ModelInferRequest, context: ServerContext) async throws
    -> Inference_ModelInferResponse
  {
    var r = Inference_ModelInferResponse()
    var o = Inference_ModelInferResponse.InferOutputTensor()
    o.name = "logits"
    o.datatype = "FP32"
    o.shape = [1, 1000]
    var raw = Data(count: 4000)
    switch mode.withLock({ $0 }) {
    case nil:
      let shape = request.inputs[0].shape.map { Int($0) }
      guard let x = KServeCodec.tensor(shape: shape, rawBytes: request.rawInputContents[0]) else {
        throw RPCError(code: .invalidArgument, message: "bad input")
      }
      raw = KServeCodec.rawBytes(try await honest.infer([x]).output)
    case .overflowingShape:
      o.shape = [Int64(Int32.max), Int64(Int32.max), Int64(Int32.max), 4]
      raw = Data(count: 16)
    case .negativeShape: o.shape = [-1, 1000]
    case .wrongDatatype: o.datatype = "FP64"
    case .wrongShape:
      o.shape = [1, 999]
      raw = Data(count: 3996)
    case .twoOutputs:
      r.outputs.append(o)
      r.rawOutputContents.append(raw)
    case .oversized: raw = Data(count: 8 << 20)
    case .bytesShort: raw = Data(count: 16)
    }
    r.outputs.append(o)
    r.rawOutputContents.append(raw)
    return r
  }

  func serverLive(request: Inference_ServerLiveRequest, context: ServerContext) async throws
    -> Inference_ServerLiveResponse
  {
    .with { $0.live = true }
  }
  func serverReady(request: Inference_ServerReadyRequest, context: ServerContext) async throws
    -> Inference_ServerReadyResponse
  {
    .with { $0.ready = true }
  }
  func modelReady(request: Inference_ModelReadyRequest, context: ServerContext) async throws
    -> Inference_ModelReadyResponse
  {
    .with { $0.ready = true }
  }
  /// It passes for a Triton, whose stream Veil's client uses.
  func serverMetadata(request: Inference_ServerMetadataRequest, context: ServerContext) async throws
    -> Inference_ServerMetadataResponse
  { .with { $0.name = "triton" } }
  func modelMetadata(request: Inference_ModelMetadataRequest, context: ServerContext) async throws
    -> Inference_ModelMetadataResponse
  { .init() }
}
