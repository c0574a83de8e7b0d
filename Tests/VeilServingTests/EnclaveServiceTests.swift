import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import VeilData
import VeilServing
import VeilTEE
import VeilTensor
import Synchronization
import XCTest

/// The enclave service over real gRPC on loopback, with simulated evidence and the tail run by
/// Veil's engine in process: answers against the whole model, and every fault of issue 8 that
/// concerns the enclave (bad, oversized and replayed records, expired and busy sessions, a
/// client that goes away mid-request), each leaving the service serving everyone else.
final class EnclaveServiceTests: XCTestCase {
  func testAnswersEqualTheWholeModel() async throws {
    for site in DeploymentPlan.PreprocessingSite.allCases {
      let plan = try EnclaveFixture.plan(site)
      let png = try EnclaveFixture.photo(seed: 1)
      let reference = try EnclaveFixture.reference(try EnclaveFixture.input(png, plan: plan.plan))
      let answer = try await withEnclave(plan: plan) { _, endpoint in
        try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
          let session = try await client.session()
          XCTAssertTrue(session.verdict.simulated)
          XCTAssertEqual(session.plan, plan.plan, "the plan the enclave sends inside the channel")
          let file = FileManager.default.temporaryDirectory.appendingPathComponent("veil-enclave-\(UUID()).png")
          try png.write(to: file)
          defer { try? FileManager.default.removeItem(at: file) }
          let a = try await session.infer(try session.request(photo: file, top: 3, logits: true))
          try await session.close()
          return a
        }
      }
      let logits = try XCTUnwrap(answer.logits).scalars
      XCTAssertLessThan(EnclaveFixture.relativeError(logits, reference), 1e-4, "preprocessing on the \(site)")
      let best = topK(reference, 3)
      XCTAssertEqual(answer.top.map(\.index), best.map(\.index))
      XCTAssertEqual(answer.top.first?.label, "class \(best[0].index)")
      XCTAssertEqual(answer.accelerator, "in-process")
    }
  }

  /// A client-preprocessed photo sent as its pixels (3 bytes each) and as the input tensor (12)
  /// gets the same logits, to the bit. Pixels of another size or length, or sent to a plan that
  /// preprocesses in the enclave, are refused as invalid input, and the session serves on.
  func testPixelsAndTheTensorGetTheSameAnswerAndBadPixelsAreRefused() async throws {
    let plan = try EnclaveFixture.plan(.client)
    let decoded = try ImageCodec.decode(try EnclaveFixture.photo(seed: 3), name: "test photo")
    let preprocessing = try plan.plan.imagePreprocessing
    let cropped = try preprocessing.geometry(decoded.byteImage().oriented(exif: decoded.orientation))
    let tensor = try preprocessing.tensor(fromCropped: cropped)
    try await withEnclave(plan: plan) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        let byPixels = try await session.infer(EnclaveSession.request(pixels: cropped, top: 3, logits: true))
        let byTensor = try await session.infer(EnclaveSession.request(tensor: tensor, top: 3, logits: true))
        XCTAssertEqual(try XCTUnwrap(byPixels.logits).scalars, try XCTUnwrap(byTensor.logits).scalars)
        XCTAssertEqual(byPixels.top.map(\.index), byTensor.top.map(\.index))

        var wider = EnclaveSession.request(pixels: cropped, top: 1)
        wider.pixels.width += 1
        try await EnclaveFixture.expectRefusal(session, wider, "pixels one column wider", naming: "\(cropped.width + 1)×\(cropped.height)")
        var huge = EnclaveSession.request(pixels: cropped, top: 1)
        huge.pixels.height = UInt32.max
        try await EnclaveFixture.expectRefusal(session, huge, "a height of 2^32 - 1", naming: "\(UInt32.max)")
        var short = EnclaveSession.request(pixels: cropped, top: 1)
        short.pixels.rgb.removeLast()
        try await EnclaveFixture.expectRefusal(session, short, "a byte short", naming: "\(cropped.width * cropped.height * 3 - 1)")

        let again = try await session.infer(EnclaveSession.request(pixels: cropped, top: 3, logits: true))
        XCTAssertEqual(try XCTUnwrap(again.logits).scalars, try XCTUnwrap(byPixels.logits).scalars, "the session serves on")
        try await session.close()
      }
    }
    try await withEnclave(plan: try EnclaveFixture.plan(.enclave)) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        try await EnclaveFixture.expectRefusal(
          session, EnclaveSession.request(pixels: cropped, top: 1), "pixels to a plan that preprocesses in the enclave",
          naming: "send the encoded photo")
        try await session.close()
      }
    }
  }

  /// Each answer says where its time went, stage by stage, and the stages add up within the
  /// client's round trip; the enclave's Prometheus histograms count every stage.
  func testAnswersCarryTheirStagesAndMetricsCountThem() async throws {
    let plan = try EnclaveFixture.plan(.enclave)
    let png = try EnclaveFixture.photo(seed: 2)
    let (answers, text) = try await withEnclave(plan: plan) { server, endpoint in
      let answers = try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("veil-stages-\(UUID()).png")
        try png.write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        var out: [EnclaveAnswer] = []
        for _ in 0..<3 { out.append(try await session.infer(try session.request(photo: file, top: 1))) }
        try await session.close()
        return out
      }
      return (answers, server.metrics.render())
    }
    for a in answers {
      let s = try XCTUnwrap(a.stages, "the enclave reports its stages")
      let parts = [s.openMs, s.decodeMs, s.headMs, s.defenceMs, s.tailEncodeMs, s.tailCallMs, s.tailDecodeMs, s.answerMs]
      XCTAssertEqual(s.defenceMs, 0, "no defence in this plan")
      XCTAssertTrue(parts.allSatisfy { $0 >= 0 }, "\(parts)")
      XCTAssertGreaterThan(s.decodeMs, 0, "the photo is decoded in the enclave")
      XCTAssertGreaterThan(s.headMs, 0)
      XCTAssertGreaterThan(s.tailCallMs, 0, "the in-process tail's run is its call")
      XCTAssertTrue(s.hasTailQueueMs && s.hasTailComputeMs, "an in-process tail accounts for its call")
      XCTAssertEqual(s.tailComputeMs, s.tailCallMs)
      XCTAssertEqual(s.tailQueueMs, 0)
      XCTAssertEqual(s.headMs, a.headMs)
      // The enclave's stages after the open are within its total, and all within the round trip.
      XCTAssertLessThanOrEqual(parts.dropFirst().reduce(0, +), a.enclaveMs + 1e-6)
      XCTAssertLessThanOrEqual(s.openMs + a.enclaveMs, a.roundTripMs)
      XCTAssertGreaterThan(a.clientSealMs, 0)
      XCTAssertGreaterThan(a.clientOpenMs, 0)
    }
    for stage in EnclaveMetrics.stageNames {
      XCTAssertTrue(
        text.contains("veil_enclave_stage_duration_seconds_count{stage=\"\(stage)\"} 3"), "stage \(stage) in\n\(text)")
    }
  }

  /// With head batching, concurrent requests share head runs and each still gets its own
  /// answer: the whole model's logits for its own input.
  func testHeadBatchingGivesEachRequestItsOwnAnswer() async throws {
    let plan = try EnclaveFixture.plan(.client)
    let tail = try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail"))
    let engine = try EnclaveEngine(plan: plan, backend: tail, headBatch: 4, headQueueDelay: .milliseconds(200))
    let inputs = try (0..<6).map { try EnclaveFixture.input(try EnclaveFixture.photo(seed: $0), plan: plan.plan) }
    let references = try inputs.map { try EnclaveFixture.reference($0) }
    let answers = try await withThrowingTaskGroup(of: (Int, [Float]).self) { group in
      for (i, x) in inputs.enumerated() { group.addTask { (i, try await engine.run(x).logits.scalars) } }
      var out = [[Float]](repeating: [], count: inputs.count)
      for try await (i, logits) in group { out[i] = logits }
      return out
    }
    for (i, (a, ref)) in zip(answers, references).enumerated() {
      XCTAssertLessThan(EnclaveFixture.relativeError(a, ref), 1e-4, "request \(i)")
    }
    let stats = try XCTUnwrap(engine.headBatchStatistics, "mobilenet_v2's head re-batches")
    XCTAssertEqual(stats.rows, 6)
    XCTAssertLessThan(stats.runs, 6, "requests waiting together shared head runs")
    XCTAssertNil(try EnclaveEngine(plan: plan, backend: tail).headBatchStatistics, "off by default")
  }

  /// A full head queue answers `overloaded` at once, and the request already queued is still
  /// served.
  func testAFullHeadQueueAnswersOverloaded() async throws {
    let plan = try EnclaveFixture.plan(.client)
    let tail = try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail"))
    // The first request waits up to 2 s for company (even on an idle head), holding the queue's
    // one place.
    let engine = try EnclaveEngine(
      plan: plan, backend: tail, headBatch: 4, headQueueDelay: .seconds(2), headQueueCapacity: 1,
      headWaitsWhenIdle: true)
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 2), plan: plan.plan)
    let first = Task { try await engine.run(x).logits.scalars }
    try await waitUntil("the first request waits in the head's queue") { engine.headQueueDepth == 1 }
    do {
      _ = try await engine.run(x)
      XCTFail("a second request fit in a queue of one")
    } catch let e as EnclaveError {
      XCTAssertEqual(e.kind, .overloaded, "\(e)")
      XCTAssertTrue(e.description.contains("retry later"), e.description)
    }
    let logits = try await first.value
    XCTAssertLessThan(EnclaveFixture.relativeError(logits, try EnclaveFixture.reference(x)), 1e-4)
  }

  func testSimulatedEvidenceIsRefusedUnlessThePolicyAllowsIt() async throws {
    let plan = try EnclaveFixture.plan()
    try await withEnclave(plan: plan) { _, endpoint in
      do {
        _ = try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier(allowSimulation: false)) {
          try await $0.session()
        }
        XCTFail("simulated evidence accepted by a policy that does not allow simulation")
      } catch {
        XCTAssertTrue("\(error)".contains("SIMULATED"), "\(error)")
      }
      do {
        _ = try await EnclaveClient.with(
          endpoint, verifier: try EnclaveFixture.verifier(mrEnclave: [UInt8](repeating: 7, count: 32))
        ) { try await $0.session() }
        XCTFail("evidence accepted with the wrong MRENCLAVE")
      } catch {
        XCTAssertTrue("\(error)".contains("MRENCLAVE"), "\(error)")
      }
    }
  }

  /// Raw calls with hand-made records: what a hostile or broken client can send.
  func testBadRecordsAreRefusedAndOthersKeepBeingServed() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    var config = EnclaveConfiguration()
    config.maxRecordBytes = 1 << 20
    try await withEnclave(plan: plan, configuration: config) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let bystander = try await client.session()
        let request = EnclaveSession.request(tensor: x, top: 1)
        let expected = try await bystander.infer(request).top

        let stub = Veil_Enclave_V1_EnclaveService.Client(wrapping: client.grpc)
        func send(_ id: String, _ record: Data) async throws -> Data {
          var m = Veil_Enclave_V1_InferRequest()
          m.sessionID = id
          m.record = record
          return try await stub.infer(m).record
        }

        // Garbage: refused, and the session is closed.
        let victim = try await client.session()
        for garbage in [Data(), Data([1, 0x17, 0, 0]), Data((0..<600).map { UInt8($0 % 251) })] {
          let s = try await client.session()
          do {
            _ = try await send(s.id, garbage)
            XCTFail("garbage accepted")
          } catch {
            XCTAssertEqual(rpcCode(error), .permissionDenied, "\(error)")
            XCTAssertTrue("\(error)".contains("session is closed"), "\(error)")
          }
          do {
            _ = try await s.infer(request)
            XCTFail("a closed session served a request")
          } catch {
            XCTAssertEqual(rpcCode(error), .notFound, "\(error)")
          }
        }

        // Oversized: refused before it is opened; the session is unchanged and still works.
        do {
          _ = try await send(victim.id, Data(count: (1 << 20) + 1))
          XCTFail("oversized record accepted")
        } catch {
          XCTAssertEqual(rpcCode(error), .resourceExhausted, "\(error)")
          XCTAssertTrue("\(error)".contains("exceeds the enclave's limit"), "\(error)")
        }
        let afterOversized = try await victim.infer(request).top
        XCTAssertEqual(afterOversized, expected)

        // Replayed: a valid record sent twice closes the session.
        let replay = try await client.session()
        let handshake = ClientHandshake(verifier: try EnclaveFixture.verifier())
        var h = Veil_Enclave_V1_HandshakeRequest()
        h.clientHello = Data(try handshake.start())
        let hr = try await stub.handshake(h)
        let secure = try handshake.finish(serverHello: Array(hr.serverHello)).session
        _ = try secure.open(Array(hr.sealedDeployment))
        let record = Data(try secure.seal(Array(try request.serializedData())))
        let first = try await send(hr.sessionID, record)
        guard case .data = try secure.open(Array(first)) else { return XCTFail("no answer to the first record") }
        do {
          _ = try await send(hr.sessionID, record)
          XCTFail("replayed record accepted")
        } catch {
          XCTAssertEqual(rpcCode(error), .permissionDenied, "\(error)")
          XCTAssertTrue("\(error)".contains("replayed"), "\(error)")
        }
        _ = replay

        // A well-formed record whose plaintext is not a request: a sealed error, session alive.
        let h2 = ClientHandshake(verifier: try EnclaveFixture.verifier())
        h.clientHello = Data(try h2.start())
        let hr2 = try await stub.handshake(h)
        let s2 = try h2.finish(serverHello: Array(hr2.serverHello)).session
        _ = try s2.open(Array(hr2.sealedDeployment))
        let answer = try await send(hr2.sessionID, Data(try s2.seal([0xFF, 0xFF, 0xFF])))
        guard case .data(let bytes) = try s2.open(Array(answer)) else { return XCTFail("no sealed answer") }
        let decoded = try Veil_Enclave_V1_EnclaveResponse(serializedBytes: bytes)
        XCTAssertEqual(decoded.error.kind, EnclaveErrorKind.invalidInput.rawValue)

        // A tensor of the wrong shape: a sealed error naming both shapes.
        do {
          _ = try await victim.infer(EnclaveSession.request(tensor: Tensor(zeros: [1, 3, 32, 32]), top: 1))
          XCTFail("wrong shape accepted")
        } catch EnclaveError.remote(let kind, let message) {
          XCTAssertEqual(kind, .invalidInput)
          XCTAssertTrue(message.contains("[1, 3, 224, 224]") && message.contains("[1, 3, 32, 32]"), message)
        }

        // Through all of it, the first session kept its answers.
        let bystanderAfter = try await bystander.infer(request).top
        let victimAfter = try await victim.infer(request).top
        XCTAssertEqual(bystanderAfter, expected)
        XCTAssertEqual(victimAfter, expected)
      }
    }
  }

  /// Expiry on an injected clock: idle sessions, unused sessions, the request limit, and the
  /// session ceiling (an unused session makes room; sessions in use never do).
  func testSessionsExpireAndAreBounded() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let clock = ManualClock()
    var config = EnclaveConfiguration()
    config.idleTimeout = 60
    config.unusedTimeout = 10
    config.maxSessions = 4
    config.maxUnusedSessions = 4
    config.maxRequestsPerSession = 2
    config.sweepInterval = 0.05
    try await withEnclave(plan: plan, configuration: config, clock: clock) { server, endpoint in
      let sessions = server.service.sessions
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let request = EnclaveSession.request(tensor: x, top: 1)
        // Idle expiry: refused once the clock passes the idle timeout, then swept.
        let idle = try await client.session()
        _ = try await idle.infer(request)
        clock.advance(by: 61)
        await expectRPCError([.notFound, .failedPrecondition], "an expired session served a request") {
          _ = try await idle.infer(request)
        }
        try await waitUntil("the sweeper dropped the idle session") { await sessions.count == 0 }

        // A session that carries no request within its first 10 s is gone.
        let unused = try await client.session()
        clock.advance(by: 11)
        await expectRPCError([.notFound, .failedPrecondition], "a session unused past its timeout served a request") {
          _ = try await unused.infer(request)
        }

        // Request limit.
        let limited = try await client.session()
        _ = try await limited.infer(request)
        _ = try await limited.infer(request)
        await expectRPCError([.resourceExhausted], "the request limit was not enforced") {
          _ = try await limited.infer(request)
        }

        // Four sessions in use fill the table: the fifth handshake is refused until one closes.
        var open: [EnclaveSession] = []
        for _ in 0..<4 {
          let s = try await client.session()
          _ = try await s.infer(request)
          open.append(s)
        }
        await expectRPCError([.resourceExhausted], "more sessions than the limit") { _ = try await client.session() }
        try await open[0].close()
        // The free place goes to an unused session, which the next handshake may replace.
        let waiting = try await client.session()
        let replacing = try await client.session()
        await expectRPCError([.notFound], "a replaced unused session served a request") {
          _ = try await waiting.infer(request)
        }
        let answer = try await replacing.infer(request)
        XCTAssertFalse(answer.top.isEmpty)
        let dropped = await sessions.droppedForRoom
        XCTAssertEqual(dropped, 1)
      }
    }
  }

  /// A client that goes away mid-request: the service drops the work, releases the session,
  /// and serves the others; the departed clients' sessions end at their idle timeout.
  func testClientDisconnectingMidRequest() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let tail = GatedTail(try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail")))
    let clock = ManualClock()
    try await withEnclave(plan: plan, backend: tail, clock: clock) { server, endpoint in
      let sessions = server.service.sessions
      let request = EnclaveSession.request(tensor: x, top: 1)
      for i in 1...3 {
        let leaving = Task {
          try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
            let s = try await client.session()
            _ = try await s.infer(request)
          }
        }
        try await waitUntil("request \(i) reached the tail") { tail.entered == i }
        leaving.cancel()
        _ = await leaving.result
      }
      try await waitUntil("the departed requests ended in the enclave") { await sessions.busyCount == 0 }
      let departed = await sessions.count
      XCTAssertEqual(departed, 3, "each departed client's session stays until it expires")

      let answer = try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        // Two records at once on one session: the second is refused, the first answered.
        let stub = Veil_Enclave_V1_EnclaveService.Client(wrapping: client.grpc)
        let first = Task { try await session.infer(request) }
        try await waitUntil("the first request reached the tail") { tail.entered == 4 }
        do {
          _ = try await stub.infer(.with {
            $0.sessionID = session.id
            $0.record = Data([1, 0x17] + [UInt8](repeating: 0, count: 40))
          })
          XCTFail("a second request in flight on one session was accepted")
        } catch {
          XCTAssertEqual(rpcCode(error), .failedPrecondition, "\(error)")
          XCTAssertTrue("\(error)".contains("one request at a time"), "\(error)")
        }
        tail.openAll()
        _ = try await first.value
        return try await session.infer(request)
      }
      XCTAssertEqual(answer.top.count, 1)
      let open = await sessions.count
      XCTAssertEqual(open, 4, "three departed sessions and the one that stayed")
      clock.advance(by: EnclaveConfiguration().idleTimeout + 1)
      let swept = await sessions.sweep()
      XCTAssertEqual(swept, 4, "idle expiry removes every one")
    }
  }

  /// Every error kind the service can answer is counted in Prometheus under its own name.
  func testEveryErrorKindIsCountedUnderItsOwnName() {
    let metrics = EnclaveMetrics()
    for (i, kind) in EnclaveErrorKind.allCases.enumerated() {
      for _ in 0...i { metrics.error(kind) }
    }
    let text = metrics.render()
    for (i, kind) in EnclaveErrorKind.allCases.enumerated() {
      XCTAssertTrue(text.contains("veil_enclave_errors_total{kind=\"\(kind.rawValue)\"} \(i + 1)\n"), "\(kind.rawValue) in\n\(text)")
    }
    // The wire's kinds and the counters' are one list: what a client reads names a counter.
    for kind in EnclaveErrorKind.allCases { XCTAssertEqual(EnclaveErrorKind(wire: kind.rawValue), kind) }
    XCTAssertEqual(EnclaveErrorKind(wire: "from-a-newer-enclave"), .internal)
  }

  /// The enclave's logs, at trace level, never carry the input, the answer or the session keys'
  /// material: the input's bytes (hex, base64, decimal floats) and the full session id are absent.
  func testLogsNeverCarryInputsOrSecrets() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 3), plan: plan.plan)
    let logs = CapturedLogs()
    let ids = try await withEnclave(plan: plan, logs: logs) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let s = try await client.session()
        _ = try await s.infer(EnclaveSession.request(tensor: x, top: 5, logits: true))
        _ = try? await Veil_Enclave_V1_EnclaveService.Client(wrapping: client.grpc).infer(
          .with {
            $0.sessionID = s.id
            $0.record = Data([1, 2, 3])
          })
        return [s.id]
      }
    }
    let text = logs.text
    XCTAssertTrue(text.contains("session opened"), "the service logged nothing: \(text)")
    let bytes = TensorMessage(x).data
    let window = bytes[4096..<4160]
    XCTAssertFalse(text.contains(window.map { String(format: "%02x", $0) }.joined()), "input bytes as hex in the logs")
    XCTAssertFalse(text.contains(Data(window).base64EncodedString().prefix(40)), "input bytes as base64 in the logs")
    let values = x.scalars[1000..<1004].map { "\($0)" }
    XCTAssertFalse(values.allSatisfy { text.contains($0) }, "input values in the logs")
    for id in ids { XCTAssertFalse(text.contains(id), "a full session id (a bearer capability) in the logs") }
  }
}

/// The in-process tail behind a gate the test opens: request n (counting from 1) waits until
/// the gate lets n through, and gives up when its task is cancelled. `entered` counts the
/// requests that reached it, so a test waits for that event instead of sleeping.
/// A gated request that the test never let through within a minute.
struct GateClosed: Error, CustomStringConvertible {
  var ticket: Int
  var description: String { "request \(ticket) waited a minute at a gate the test never opened" }
}

final class GatedTail: TailBackend {
  let inner: any TailBackend
  private let state = Mutex<(entered: Int, allowed: Int)>((0, 0))
  var endpoint: String { inner.endpoint }
  var entered: Int { state.withLock { $0.entered } }

  init(_ inner: any TailBackend) { self.inner = inner }

  func openAll() { state.withLock { $0.allowed = Int.max } }

  func infer(_ inputs: [Tensor]) async throws -> TailAnswer {
    let ticket = state.withLock { s -> Int in
      s.entered += 1
      return s.entered
    }
    // A test that fails before it opens the gate must not hang the suite: the request fails.
    let deadline = ContinuousClock.now + .seconds(60)
    while state.withLock({ $0.allowed < ticket }) {
      guard ContinuousClock.now < deadline else { throw GateClosed(ticket: ticket) }
      try await Task.sleep(for: .milliseconds(2))
    }
    return try await inner.infer(inputs)
  }
}
