import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import VeilServing
import VeilTEE
import VeilTensor
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
    // The first request waits up to 2 s for company, holding the queue's one place.
    let engine = try EnclaveEngine(
      plan: plan, backend: tail, headBatch: 4, headQueueDelay: .seconds(2), headQueueCapacity: 1)
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 2), plan: plan.plan)
    let first = Task { try await engine.run(x).logits.scalars }
    try await Task.sleep(nanoseconds: 300_000_000)
    do {
      _ = try await engine.run(x)
      XCTFail("a second request fit in a queue of one")
    } catch let e as EnclaveError {
      XCTAssertEqual(e.kind, "overloaded", "\(e)")
      XCTAssertTrue(e.description.contains("retry later"), e.description)
    }
    let logits = try await first.value
    XCTAssertLessThan(EnclaveFixture.relativeError(logits, try EnclaveFixture.reference(x)), 1e-4)
  }

  func testSimulatedEvidenceIsRefusedUnlessThePolicyAllowsIt() async throws {
    let plan = try EnclaveFixture.plan()
    try await withEnclave(plan: plan) { service, endpoint in
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
    try await withEnclave(plan: plan, configuration: config) { service, endpoint in
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
        XCTAssertEqual(decoded.error.kind, "invalid-input")

        // A tensor of the wrong shape: a sealed error naming both shapes.
        do {
          _ = try await victim.infer(EnclaveSession.request(tensor: Tensor(zeros: [1, 3, 32, 32]), top: 1))
          XCTFail("wrong shape accepted")
        } catch EnclaveError.remote(let kind, let message) {
          XCTAssertEqual(kind, "invalid-input")
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

  /// Photo bytes (plans that preprocess in the enclave): a PNG header claiming 20000×20000
  /// pixels is refused before decoding, corrupt bytes get the decoder's error; both sealed.
  func testHostilePhotosAreRefused() async throws {
    let plan = try EnclaveFixture.plan(.enclave)
    try await withEnclave(plan: plan) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        var bomb = try EnclaveFixture.photo()
        bomb.replaceSubrange(16..<24, with: [0, 0, 0x4E, 0x20, 0, 0, 0x4E, 0x20])
        let corrupt = try EnclaveFixture.photo().prefix(300)
        for (bytes, text) in [(bomb, "20000×20000"), (Data(corrupt), "photo"), (Data("GIF89a".utf8), "not a PNG or JPEG")] {
          var r = EnclaveRequestMessage()
          r.image = bytes
          r.topK = 1
          do {
            _ = try await session.infer(r)
            XCTFail("accepted \(text)")
          } catch EnclaveError.remote(let kind, let message) {
            XCTAssertEqual(kind, "invalid-input")
            XCTAssertTrue(message.contains(text), message)
          }
        }
        var good = EnclaveRequestMessage()
        good.image = try EnclaveFixture.photo()
        good.topK = 2
        let answer = try await session.infer(good)
        XCTAssertEqual(answer.top.count, 2)
      }
    }
  }

  func testSessionsExpireAndAreBounded() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    var config = EnclaveConfiguration()
    config.idleTimeout = 0.4
    config.maxSessions = 4
    config.maxRequestsPerSession = 2
    config.sweepInterval = 0.2
    try await withEnclave(plan: plan, configuration: config) { service, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let request = EnclaveSession.request(tensor: x, top: 1)
        // Idle expiry.
        let idle = try await client.session()
        _ = try await idle.infer(request)
        try await Task.sleep(for: .milliseconds(900))
        do {
          _ = try await idle.infer(request)
          XCTFail("an expired session served a request")
        } catch {
          XCTAssertTrue([.notFound, .failedPrecondition].contains(rpcCode(error)), "\(error)")
        }
        let swept = await service.sessions.count
        XCTAssertEqual(swept, 0, "the sweeper dropped the idle session")

        // Request limit.
        let limited = try await client.session()
        _ = try await limited.infer(request)
        _ = try await limited.infer(request)
        do {
          _ = try await limited.infer(request)
          XCTFail("the request limit was not enforced")
        } catch {
          XCTAssertEqual(rpcCode(error), .resourceExhausted, "\(error)")
        }

        // Session limit: the fifth open session is refused until one closes.
        var open: [EnclaveSession] = []
        for _ in 0..<4 { open.append(try await client.session()) }
        do {
          _ = try await client.session()
          XCTFail("more sessions than the limit")
        } catch {
          XCTAssertEqual(rpcCode(error), .resourceExhausted, "\(error)")
        }
        try await open[0].close()
        let again = try await client.session()
        let answer = try await again.infer(request)
        XCTAssertFalse(answer.top.isEmpty)
      }
    }
  }

  /// A client that goes away mid-request: the service drops the work, keeps the session table
  /// bounded, and serves the others.
  func testClientDisconnectingMidRequest() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let tail = try DelayedTail(
      LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail")), seconds: 0.5)
    try await withEnclave(plan: plan, backend: tail) { service, endpoint in
      let request = EnclaveSession.request(tensor: x, top: 1)
      for _ in 0..<3 {
        let leaving = Task {
          try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
            let s = try await client.session()
            _ = try await s.infer(request)
          }
        }
        try await Task.sleep(for: .milliseconds(150))
        leaving.cancel()
        _ = await leaving.result
      }
      let answer = try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        // Two records at once on one session: the second is refused, the first answered.
        let stub = Veil_Enclave_V1_EnclaveService.Client(wrapping: client.grpc)
        let first = Task { try await session.infer(request) }
        try await Task.sleep(for: .milliseconds(150))
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
        _ = try await first.value
        return try await session.infer(request)
      }
      XCTAssertEqual(answer.top.count, 1)
      try await Task.sleep(for: .milliseconds(700))
      let open = await service.sessions.count
      XCTAssertLessThanOrEqual(open, 4, "sessions of departed clients stay bounded (idle expiry removes them)")
    }
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

/// The in-process tail with a fixed delay before it, as a slow accelerator would add: used to
/// hold a request in flight while its client goes away.
struct DelayedTail: TailBackend {
  let inner: any TailBackend
  let seconds: Double
  var endpoint: String { inner.endpoint }

  init(_ inner: any TailBackend, seconds: Double) throws {
    self.inner = inner
    self.seconds = seconds
  }

  func infer(_ features: Tensor) async throws -> Tensor {
    try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
    return try await inner.infer(features)
  }
}
