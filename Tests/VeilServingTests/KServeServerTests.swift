import Foundation
import GRPCCore
import VeilGraph
import VeilServing
import VeilTensor
import XCTest

/// The accelerator service and the KServe client against each other, over loopback gRPC.
final class KServeServerTests: XCTestCase {
  func testRoundTripRawAndTypedMatchesExecutor() async throws {
    let graph = KServeFixtures.tinyModel()
    let s = try await RunningServer([
      KServeModelSpec(name: "tiny", graph: graph, batching: KServeBatching(maxBatchSize: 4, maxQueueDelay: .zero))
    ])
    let direct = try Executor(graph: graph)
    for (seed, encoding) in [(UInt64(10), KServeEncoding.raw), (11, .typed)] {
      let x = KServeFixtures.input([1, 3, 8, 8], seed: seed)
      let expected = try direct.run([x])[0]
      let r = try await s.client.infer(
        model: "tiny", inputs: [KServeTensor(name: "features", tensor: x)], id: "req-\(seed)", encoding: encoding)
      XCTAssertEqual(r.modelName, "tiny")
      XCTAssertEqual(r.modelVersion, "1")
      XCTAssertEqual(r.id, "req-\(seed)")
      XCTAssertEqual(r.outputs.count, 1)
      let y = try XCTUnwrap(r.outputs.first?.tensor)
      XCTAssertEqual(y.shape, [1, 4])
      XCTAssertLessThanOrEqual(KServeFixtures.maxDifference(y, expected), 1e-6, "\(encoding)")
    }
    // A request with its own batch of 3 gets the three answers of the graph run at batch 3.
    let xs = try Tensor(shape: [3, 3, 8, 8], values: (0..<3).flatMap { KServeFixtures.input([1, 3, 8, 8], seed: 20 + UInt64($0)).scalars })
    let y3 = try await s.client.infer(model: "tiny", inputs: [KServeTensor(name: "features", tensor: xs)]).outputs[0].tensor
    let e3 = try Executor(graph: graph.withBatch(3)).run([xs])[0]
    XCTAssertLessThanOrEqual(KServeFixtures.maxDifference(y3, e3), 1e-5)
    try await s.stop()
  }

  func testHealthAndMetadata() async throws {
    let s = try await RunningServer([
      KServeModelSpec(name: "tiny", version: "1", graph: KServeFixtures.tinyModel(seed: 1)),
      KServeModelSpec(name: "tiny", version: "2", graph: KServeFixtures.tinyModel(seed: 2)),
    ])
    let live = try await s.client.serverLive()
    let ready = try await s.client.serverReady()
    XCTAssertTrue(live)
    XCTAssertTrue(ready)
    let modelReady = try await s.client.modelReady(name: "tiny", version: "2")
    let unknownReady = try await s.client.modelReady(name: "nope")
    XCTAssertTrue(modelReady)
    XCTAssertFalse(unknownReady)
    let server = try await s.client.serverMetadata()
    XCTAssertEqual(server.name, AcceleratorService.serverName)
    let m = try await s.client.modelMetadata(name: "tiny")
    XCTAssertEqual(m.versions, ["1", "2"])
    XCTAssertEqual(m.inputs, [KServeTensorMetadata(name: "features", datatype: "FP32", shape: [-1, 3, 8, 8])])
    XCTAssertEqual(m.outputs.map(\.shape), [[-1, 4]])
    do {
      _ = try await s.client.modelMetadata(name: "tiny", version: "7")
      XCTFail("version 7 does not exist")
    } catch let e as KServeError {
      XCTAssertEqual(e.kind, .notFound)
      XCTAssertTrue(e.message.contains("1, 2"), e.message)
    }
    try await s.stop()
  }

  /// Each version runs its own weights; no version means the latest.
  func testVersionsRunTheirOwnGraphs() async throws {
    let g1 = KServeFixtures.tinyModel(seed: 1)
    let g2 = KServeFixtures.tinyModel(seed: 2)
    let s = try await RunningServer([KServeModelSpec(name: "m", version: "1", graph: g1), KServeModelSpec(name: "m", version: "2", graph: g2)])
    let x = KServeFixtures.input([1, 3, 8, 8], seed: 5)
    let input = [KServeTensor(name: "features", tensor: x)]
    let y1 = try await s.client.infer(model: "m", version: "1", inputs: input)
    let y2 = try await s.client.infer(model: "m", version: "2", inputs: input)
    let latest = try await s.client.infer(model: "m", inputs: input)
    XCTAssertLessThanOrEqual(KServeFixtures.maxDifference(y1.outputs[0].tensor, try Executor(graph: g1).run([x])[0]), 1e-6)
    XCTAssertLessThanOrEqual(KServeFixtures.maxDifference(y2.outputs[0].tensor, try Executor(graph: g2).run([x])[0]), 1e-6)
    XCTAssertEqual(latest.modelVersion, "2")
    XCTAssertGreaterThan(KServeFixtures.maxDifference(y1.outputs[0].tensor, y2.outputs[0].tensor), 1e-3)
    try await s.stop()
  }

  /// Bad requests get the right status and a message that names the problem; the server keeps
  /// serving.
  func testBadRequestsGetClearErrorsAndTheServerKeepsServing() async throws {
    let s = try await RunningServer([KServeModelSpec(name: "tiny", graph: KServeFixtures.tinyModel())])
    let good = KServeClient.makeRequest(
      model: "tiny", inputs: [KServeTensor(name: "features", tensor: KServeFixtures.input([1, 3, 8, 8], seed: 1))])
    func expect(_ kind: KServeError.Kind, _ fragment: String, _ edit: (inout Inference_ModelInferRequest) -> Void) async {
      var r = good
      edit(&r)
      do {
        _ = try await s.client.modelInfer(r)
        XCTFail("expected \(kind) (\(fragment))")
      } catch let e as KServeError {
        XCTAssertEqual(e.kind, kind, e.description)
        XCTAssertTrue(e.message.contains(fragment), "'\(e.message)' lacks '\(fragment)'")
      } catch {
        XCTFail("\(error)")
      }
    }
    await expect(.notFound, "unknown model 'other'") { $0.modelName = "other" }
    await expect(.notFound, "no version '3'") { $0.modelVersion = "3" }
    await expect(.invalidArgument, "datatype 'INT64'") { $0.inputs[0].datatype = "INT64" }
    await expect(.invalidArgument, "shape [1, 3, 8, 9]") { $0.inputs[0].shape = [1, 3, 8, 9] }
    await expect(.invalidArgument, "shape [3, 8, 8]") { $0.inputs[0].shape = [3, 8, 8] }
    await expect(.invalidArgument, "found 767") { $0.rawInputContents[0] = $0.rawInputContents[0].dropLast() }
    await expect(.invalidArgument, "unknown input 'image'") { $0.inputs[0].name = "image" }
    await expect(.invalidArgument, "expected 1 input(s)") { $0.inputs = [] }
    await expect(.invalidArgument, "unknown output 'logits'") {
      var o = Inference_ModelInferRequest.InferRequestedOutputTensor()
      o.name = "logits"
      $0.outputs = [o]
    }
    await expect(.invalidArgument, "carries int64_contents") {
      $0.rawInputContents = []
      $0.inputs[0].contents.int64Contents = Array(repeating: 1, count: 192)
    }
    await expect(.invalidArgument, "needs 192 values") {
      $0.rawInputContents = []
      $0.inputs[0].contents.fp32Contents = [1, 2, 3]
    }
    // Still serving, and the errors were counted by kind.
    let ok = try await s.client.modelInfer(good)
    XCTAssertEqual(ok.outputs.count, 1)
    let text = s.metrics.render()
    // Veil's client sends them on ModelStreamInfer streams, each refusal ending its stream.
    XCTAssertTrue(text.contains("veil_accelerator_errors_total{method=\"ModelStreamInfer\",code=\"INVALID_ARGUMENT\"} 9"), text)
    XCTAssertTrue(text.contains("veil_accelerator_errors_total{method=\"ModelStreamInfer\",code=\"NOT_FOUND\"} 2"), text)
    try await s.stop()
  }

  /// Dynamic batching: concurrent requests run as batches and each caller gets its own rows.
  func testBatchingReturnsEachClientItsOwnAnswer() async throws {
    let graph = KServeFixtures.tinyModel()
    let spec = KServeModelSpec(
      name: "tiny", graph: graph,
      batching: KServeBatching(maxBatchSize: 8, maxQueueDelay: .milliseconds(200), queueCapacity: 64, waitsWhenIdle: true))
    let s = try await RunningServer([spec])
    let direct = try Executor(graph: graph)
    let inputs = (0..<8).map { KServeFixtures.input([1, 3, 8, 8], seed: 100 + UInt64($0)) }
    let expected = try inputs.map { try direct.run([$0])[0] }
    let clients = try (0..<8).map { _ in try KServeClient(endpoint: KServeEndpoint(host: "127.0.0.1", port: s.port)) }
    let answers = try await withThrowingTaskGroup(of: (Int, Tensor).self) { g in
      for i in 0..<8 {
        g.addTask {
          let r = try await clients[i].infer(model: "tiny", inputs: [KServeTensor(name: "features", tensor: inputs[i])])
          return (i, r.outputs[0].tensor)
        }
      }
      var out: [Int: Tensor] = [:]
      for try await (i, t) in g { out[i] = t }
      return out
    }
    for i in 0..<8 {
      XCTAssertLessThanOrEqual(KServeFixtures.maxDifference(try XCTUnwrap(answers[i]), expected[i]), 1e-5, "client \(i)")
    }
    let stats = s.models[0].statistics
    XCTAssertEqual(stats.rows, 8)
    XCTAssertLessThan(stats.batches, 8, "8 requests within 200 ms should share batches")
    for c in clients { await c.close() }
    try await s.stop()
  }

  /// A full queue refuses with RESOURCE_EXHAUSTED instead of growing; the rest are answered.
  func testFullQueueAnswersResourceExhausted() async throws {
    let spec = KServeModelSpec(name: "slow", graph: KServeFixtures.slowModel(), batching: KServeBatching(maxBatchSize: 1, queueCapacity: 1))
    let s = try await RunningServer([spec])
    let x = KServeFixtures.input([1, 32, 64, 64], seed: 1)
    let outcomes = await withTaskGroup(of: KServeError.Kind?.self) { g in
      for _ in 0..<12 {
        g.addTask {
          do {
            _ = try await s.client.infer(model: "slow", inputs: [KServeTensor(name: "x", tensor: x)])
            return nil
          } catch let e as KServeError {
            return e.kind
          } catch {
            return .other
          }
        }
      }
      var all: [KServeError.Kind?] = []
      for await o in g { all.append(o) }
      return all
    }
    let exhausted = outcomes.filter { $0 == .resourceExhausted }.count
    let ok = outcomes.filter { $0 == nil }.count
    XCTAssertGreaterThan(exhausted, 0, "\(outcomes)")
    XCTAssertGreaterThan(ok, 0, "\(outcomes)")
    XCTAssertEqual(exhausted + ok, 12, "\(outcomes)")
    XCTAssertEqual(s.models[0].statistics.batches, ok, "refused requests never run")
    try await s.stop()
  }

  /// A lone request on an idle model runs at once, however long a batch may wait for company;
  /// requests that arrive while a batch runs do wait for each other and share a run.
  func testALoneRequestDoesNotWaitForABatch() async throws {
    let spec = KServeModelSpec(
      name: "slow", graph: KServeFixtures.slowModel(),
      batching: KServeBatching(maxBatchSize: 8, maxQueueDelay: .seconds(30), queueCapacity: 16))
    let s = try await RunningServer([spec])
    let x = [KServeTensor(name: "x", tensor: KServeFixtures.input([1, 32, 64, 64], seed: 1))]
    for i in 0..<3 {
      let start = ContinuousClock.now
      _ = try await s.client.infer(model: "slow", inputs: x)
      // Waiting for company would take 30 s; the model itself takes milliseconds.
      XCTAssertLessThan(ContinuousClock.now - start, .seconds(15), "lone request \(i) waited for a batch")
    }
    XCTAssertEqual(s.models[0].statistics.batches, 3)
    XCTAssertEqual(s.models[0].statistics.rows, 3)
    try await s.stop()
  }

  /// Each answer says where its time went in the server (its parameters `veil_queue_ms` and
  /// `veil_compute_ms`), and the client reads the account into the call's timing.
  func testAnswersSayWhereTheirTimeWentInTheServer() async throws {
    // A model that waits for company even when idle holds a lone request for its whole delay.
    let spec = KServeModelSpec(
      name: "tiny", graph: KServeFixtures.tinyModel(),
      batching: KServeBatching(maxBatchSize: 8, maxQueueDelay: .milliseconds(300), queueCapacity: 8, waitsWhenIdle: true))
    let s = try await RunningServer([spec])
    let x = [KServeTensor(name: "features", tensor: KServeFixtures.input([1, 3, 8, 8], seed: 1))]
    let r = try await s.client.infer(model: "tiny", inputs: x)
    let timing = try XCTUnwrap(r.timing)
    let server = try XCTUnwrap(timing.server, "Veil's accelerator gives its account")
    XCTAssertGreaterThanOrEqual(server.queueMs, 299, "the request waited out the 300 ms delay in the queue")
    XCTAssertGreaterThan(server.computeMs, 0)
    XCTAssertLessThanOrEqual(server.queueMs + server.computeMs, timing.callMs)
    let raw = try await s.client.modelInfer(KServeClient.makeRequest(model: "tiny", inputs: x))
    for key in [KServeServerTiming.queueParameter, KServeServerTiming.computeParameter] {
      guard case .doubleParam(let v)? = raw.parameters[key]?.parameterChoice else {
        return XCTFail("\(key) is not a double parameter of the answer: \(raw.parameters)")
      }
      XCTAssertTrue(v.isFinite && v >= 0, "\(key) = \(v)")
    }
    try await s.stop()
  }

  /// A server's account of its time is the untrusted server's word: the client keeps it only
  /// when both values are finite, non-negative doubles that fit inside the call it measured.
  func testTheClientKeepsAServerTimingOnlyWhenItCouldBeTrue() {
    func number(_ v: Double) -> Inference_InferParameter {
      var p = Inference_InferParameter()
      p.doubleParam = v
      return p
    }
    var text = Inference_InferParameter()
    text.stringParam = "1"
    func parameters(_ q: Inference_InferParameter?, _ c: Inference_InferParameter?) -> [String: Inference_InferParameter] {
      var p: [String: Inference_InferParameter] = [:]
      p[KServeServerTiming.queueParameter] = q
      p[KServeServerTiming.computeParameter] = c
      return p
    }
    XCTAssertEqual(
      KServeServerTiming(parameters: parameters(number(1), number(2)), withinMs: 3), KServeServerTiming(queueMs: 1, computeMs: 2))
    let untrue: [(String, Inference_InferParameter?, Inference_InferParameter?)] = [
      ("NaN", number(.nan), number(1)), ("infinite", number(1), number(.infinity)), ("negative", number(-1), number(2)),
      ("longer than the call", number(2), number(1.5)), ("a string", text, number(1)), ("missing", nil, number(1)),
      ("huge", number(1), number(.greatestFiniteMagnitude)),
    ]
    for (what, q, c) in untrue {
      XCTAssertNil(KServeServerTiming(parameters: parameters(q, c), withinMs: 3), what)
    }
  }

  /// A request whose deadline passes while it waits is answered DEADLINE_EXCEEDED and not run.
  /// The first request of a batch waits up to 1 s for company, so later ones wait behind it
  /// for as long, whatever the machine's speed.
  func testExpiredRequestsAreNotRun() async throws {
    let spec = KServeModelSpec(
      name: "slow", graph: KServeFixtures.slowModel(),
      batching: KServeBatching(maxBatchSize: 8, maxQueueDelay: .seconds(1), queueCapacity: 16, waitsWhenIdle: true))
    let s = try await RunningServer([spec])
    let x = [KServeTensor(name: "x", tensor: KServeFixtures.input([1, 32, 64, 64], seed: 1))]
    let first = Task { try await s.client.infer(model: "slow", inputs: x) }
    try await waitUntil("the first request waits for company") { s.models[0].queueDepth == 1 }
    do {
      _ = try await s.client.infer(model: "slow", inputs: x, timeout: .milliseconds(1))
      XCTFail("a 1 ms deadline behind a batch that waits 1 s cannot be met")
    } catch let e as KServeError {
      XCTAssertEqual(e.kind, .deadlineExceeded, e.description)
    }
    // The same behind the gRPC layer.
    do {
      _ = try await s.models[0].infer([x[0].tensor], deadline: DispatchTime.now().uptimeNanoseconds + 1_000_000)
      XCTFail("a 1 ms deadline behind a batch that waits 1 s cannot be met")
    } catch let e as SchedulerError {
      XCTAssertEqual(e, .deadlineExceeded(model: "slow", version: "1"), e.description)
    }
    _ = try await first.value
    XCTAssertEqual(s.models[0].statistics.batches, 1, "the expired requests must not run")
    XCTAssertEqual(s.models[0].statistics.rows, 1, "the expired requests must not run")
    XCTAssertEqual(s.models[0].queueDepth, 0)
    try await s.stop()
  }

  /// Graceful shutdown answers every call in flight, then stops; later calls find no server.
  func testGracefulShutdownFinishesCallsInFlight() async throws {
    let spec = KServeModelSpec(name: "slow", graph: KServeFixtures.slowModel(), batching: KServeBatching(maxBatchSize: 1, queueCapacity: 16))
    let s = try await RunningServer([spec])
    let x = [KServeTensor(name: "x", tensor: KServeFixtures.input([1, 32, 64, 64], seed: 1))]
    let inFlight = Task {
      try await withThrowingTaskGroup(of: Int.self) { g in
        for _ in 0..<5 { g.addTask { try await s.client.infer(model: "slow", inputs: x).outputs.count } }
        var n = 0
        for try await c in g { n += c }
        return n
      }
    }
    // Let all five calls reach the server (waiting, running or done), then shut down while
    // the rest run or wait. A call whose stream is not open yet when the shutdown begins is
    // refused (RST_STREAM), as it should be, so waiting for only some of them was a race
    // (it failed once in a fresh-clone run). Counting only the waiting ones could miss its
    // moment when runs are quick and then wait for ever.
    let deadline = ContinuousClock.now + .seconds(60)
    while s.models[0].acceptedRequests < 5 {
      guard ContinuousClock.now < deadline else { return XCTFail("the calls did not reach the server within 60 s") }
      try await Task.sleep(for: .milliseconds(2))
    }
    s.server.beginGracefulShutdown()
    let answered = try await inFlight.value
    XCTAssertEqual(answered, 5)
    try await s.serving.value
    XCTAssertEqual(s.models[0].statistics.batches, 5)
    let late = try KServeClient(endpoint: KServeEndpoint(host: "127.0.0.1", port: s.port), defaultTimeout: .seconds(5))
    do {
      _ = try await late.serverLive()
      XCTFail("the server has stopped")
    } catch let e as KServeError {
      XCTAssertEqual(e.kind, .unavailable, e.description)
    }
    await late.close()
    await s.client.close()
  }

  func testMetricsEndpointServesPrometheusText() async throws {
    // Port 0 and read back: no other process can take the port between a probe and the bind.
    let s = try await RunningServer([KServeModelSpec(name: "tiny", graph: KServeFixtures.tinyModel())], metricsPort: 0)
    let port = try await s.server.metricsPort()
    XCTAssertGreaterThan(port, 0)
    _ = try await s.client.infer(model: "tiny", inputs: [KServeTensor(name: "features", tensor: KServeFixtures.input([1, 3, 8, 8], seed: 1))])
    let text = try await blocking { try Self.httpGet(port: port, path: "/metrics") }
    XCTAssertTrue(text.hasPrefix("HTTP/1.1 200 OK"), text)
    XCTAssertTrue(text.contains("veil_accelerator_requests_total{method=\"ModelStreamInfer\",model=\"tiny\"} 1"), text)
    XCTAssertTrue(text.contains("veil_accelerator_request_duration_seconds_bucket"), text)
    XCTAssertTrue(text.contains("veil_accelerator_batch_rows_count{model=\"tiny\"} 1"), text)
    XCTAssertTrue(text.contains("veil_accelerator_queue_depth{model=\"tiny\"}"), text)
    try await s.stop()
  }

  /// A plain HTTP/1.1 GET over a blocking socket; the whole answer, head and body.
  static func httpGet(port: Int, path: String) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &addr) { p in
      p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { throw POSIXError(.ECONNREFUSED) }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, request, request.count, 0) == request.count else { throw POSIXError(.EIO) }
    var answer: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = recv(fd, &buffer, buffer.count, 0)
      if n <= 0 { break }
      answer += buffer[0..<n]
    }
    return String(decoding: answer, as: UTF8.self)
  }

  func testEndpointParsingAndTimeoutHeader() throws {
    XCTAssertEqual(try KServeEndpoint(parsing: "127.0.0.1:8001"), KServeEndpoint(host: "127.0.0.1", port: 8001))
    XCTAssertEqual(try KServeEndpoint(parsing: "[::1]:9"), KServeEndpoint(host: "::1", port: 9))
    for bad in ["localhost", ":80", "host:0", "host:http"] {
      XCTAssertThrowsError(try KServeEndpoint(parsing: bad), bad) { e in
        XCTAssertEqual((e as? KServeError)?.kind, .invalidEndpoint)
      }
    }
    XCTAssertEqual(AcceleratorService.parseTimeout("100m"), 100_000_000)
    XCTAssertEqual(AcceleratorService.parseTimeout("5S"), 5_000_000_000)
    XCTAssertNil(AcceleratorService.parseTimeout("5x"))
    XCTAssertNil(AcceleratorService.parseTimeout("S"))
    XCTAssertNil(AcceleratorService.parseTimeout("123456789S"), "at most 8 digits")
    XCTAssertNil(AcceleratorService.parseTimeout("+5S"))
    XCTAssertNil(AcceleratorService.parseTimeout("-5S"))
    // Hours beyond 64 bits of nanoseconds: no deadline, not a trap.
    XCTAssertEqual(AcceleratorService.parseTimeout("9999999H"), UInt64.max)
    XCTAssertEqual(AcceleratorService.parseTimeout("99999999H"), UInt64.max)
    XCTAssertEqual(AcceleratorService.parseTimeout("5124095H"), 5_124_095 * 3_600_000_000_000)
  }

  /// A graph whose shapes do not re-infer at another batch declares a fixed batch.
  func testFixedBatchModelDeclaresItsShape() async throws {
    var g = Graph(name: "fixed")
    let x = g.addInput(name: "x", shape: [1, 2, 3])
    g.outputs = [g.reshape(x, to: [1, 6], name: "r")]
    let m = try KServeModel(KServeModelSpec(name: "fixed", graph: g, batching: KServeBatching(maxBatchSize: 8)))
    XCTAssertFalse(m.batches)
    XCTAssertEqual(m.inputs[0].shape, [1, 2, 3])
    XCTAssertEqual(m.batching.maxBatchSize, 1)
    m.shutdown()
  }
}
