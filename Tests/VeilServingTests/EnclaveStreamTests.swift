import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import VeilServing
import VeilTEE
import VeilTensor
import XCTest

/// A session's requests on one open `InferStream` call: the answers are `Infer`'s, the stream
/// ends when idle or when the server drains, a request's deadline ends the work in the enclave,
/// and a client falls back to `Infer` where the stream is missing or ends without answering.
final class EnclaveStreamTests: XCTestCase {
  func testASessionsRequestsShareOneStreamThatEndsWhenIdle() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 2), plan: plan.plan)
    let request = EnclaveSession.request(tensor: x, top: 3, logits: true)
    var config = EnclaveConfiguration()
    config.idleTimeout = 0.5
    try await withEnclave(plan: plan, configuration: config) { server, endpoint in
      let metrics = server.service.metrics
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        var unaryClient = client
        unaryClient.streaming = false
        let streamed = try await client.session()
        let single = try await unaryClient.session()
        XCTAssertTrue(streamed.streams)
        XCTAssertFalse(single.streams)
        for i in 0..<4 {
          let a = try await streamed.infer(request)
          let b = try await single.infer(request)
          XCTAssertEqual(try XCTUnwrap(a.logits).scalars, try XCTUnwrap(b.logits).scalars, "request \(i)")
          XCTAssertEqual(a.top.map(\.index), b.top.map(\.index))
        }
        XCTAssertEqual(metrics.streams.opened, 1, "four requests of one session on one stream; none for Infer")
        XCTAssertEqual(metrics.streams.open, 1)
        // Nothing sent for longer than the session's idle time: the enclave ends the stream by
        // itself (the session has expired too, and refuses the next request).
        try await waitUntil("the idle stream ended", within: 10) { metrics.streams.open == 0 }
        await expectRPCError([.notFound, .failedPrecondition], "a session idle past its timeout served") {
          _ = try await streamed.infer(request)
        }
        // The refused request went on a new stream, or, when the client had not yet seen the old
        // one end, by Infer after it; either way the new session opens one stream of its own.
        let before = metrics.streams.opened
        let next = try await client.session()
        _ = try await next.infer(request)
        XCTAssertEqual(metrics.streams.opened, before + 1, "the new session's stream")
        try await next.close()
        try await waitUntil("the closed session's stream ended", within: 10) { metrics.streams.open == 0 }
      }
    }
  }

  /// The client's deadline for one request on a stream ends the stream, and with it the work
  /// in the enclave, as a unary call's deadline does. Neither side sealed an answer, so the
  /// session's next request (on a new stream) is answered.
  func testADeadlineOnAStreamEndsTheWorkInTheEnclave() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let request = EnclaveSession.request(tensor: x, top: 1)
    let tail = GatedTail(try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail")))
    try await withEnclave(plan: plan, backend: tail) { server, endpoint in
      let sessions = server.service.sessions
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        var hurried = client
        hurried.timeout = .milliseconds(300)
        let session = try await hurried.session()
        let held = Task { try await session.infer(request) }
        let ended = Locked(false)
        Task {
          _ = await held.result
          ended.withLock { $0 = true }
        }
        do {
          try await waitUntil("the request's deadline ended it", within: 10) { ended.withLock { $0 } }
        } catch {
          held.cancel()
          throw error
        }
        do {
          _ = try await held.value
          XCTFail("a request held in the tail was answered within its deadline")
        } catch {
          XCTAssertEqual(rpcCode(error), .deadlineExceeded, "\(error)")
        }
        XCTAssertEqual(tail.entered, 1)
        try await waitUntil("the timed-out request's work ended in the enclave", within: 10) {
          await sessions.busyCount == 0
        }
        try await waitUntil("its stream ended", within: 10) { server.service.metrics.streams.open == 0 }
        tail.openAll()
        let answer = try await session.infer(request)
        XCTAssertEqual(answer.top.count, 1)
        XCTAssertEqual(server.service.metrics.streams.opened, 2)
        try await session.close()
      }
    }
  }

  /// A server that drains ends its idle streams (an open stream would otherwise hold graceful
  /// shutdown until the client leaves), and stops.
  func testGracefulShutdownEndsOpenStreams() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let engine = try EnclaveEngine(
      plan: plan, backend: try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail")))
    let server = try EnclaveServer(
      config: EnclaveServerConfig(port: 0), engine: engine,
      provider: SimulatedProvider(enclave: EnclaveFixture.simulation), logger: .init(label: "test") { _ in SwiftLogNoOpLogHandler() })
    let stopped = Locked(false)
    let running = Task {
      defer { stopped.withLock { $0 = true } }
      try await server.run()
    }
    let port = try await server.port()
    try await EnclaveClient.with(
      Endpoint(host: "127.0.0.1", port: port), verifier: try EnclaveFixture.verifier()
    ) { client in
      let session = try await client.session()
      _ = try await session.infer(EnclaveSession.request(tensor: x, top: 1))
      XCTAssertEqual(server.service.metrics.streams.open, 1)
      server.beginGracefulShutdown()
      // The session stays open; the server must end its stream to stop.
      try await waitUntil("the draining server stopped", within: 10) { stopped.withLock { $0 } }
      XCTAssertEqual(server.service.metrics.streams.open, 0)
      withExtendedLifetime(session) {}
    }
    try await running.value
  }

  /// An enclave without `InferStream` (an older one): the session sends by `Infer` and stays
  /// there. One whose stream ends without answering (it ended the stream as the request came):
  /// the session sends the same record again by `Infer`, and its records stay in step.
  func testTheClientFallsBackToInferWhereTheStreamFails() async throws {
    let plan = try EnclaveFixture.plan()
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let request = EnclaveSession.request(tensor: x, top: 2)
    try await withEnclave(plan: plan) { server, _ in
      for behaviour in [WithoutStreams.Behaviour.unimplemented, .endsUnanswered] {
        let front = WithoutStreams(server.service, behaviour: behaviour)
        let transport = HTTP2ServerTransport.Posix(
          address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext)
        let grpc = GRPCServer(transport: transport, services: [front])
        let serving = Task { try await grpc.serve() }
        let address = try await grpc.listeningAddress
        let port = try XCTUnwrap(address?.ipv4?.port)
        try await EnclaveClient.with(
          Endpoint(host: "127.0.0.1", port: port), verifier: try EnclaveFixture.verifier()
        ) { client in
          let session = try await client.session()
          for i in 0..<3 {
            let answer = try await session.infer(request)
            XCTAssertEqual(answer.top.count, 2, "\(behaviour), request \(i)")
          }
          XCTAssertEqual(front.streamCalls, behaviour == .unimplemented ? 1 : 3, "\(behaviour)")
          XCTAssertEqual(session.streams, behaviour != .unimplemented, "\(behaviour)")
          try await session.close()
        }
        grpc.beginGracefulShutdown()
        try await serving.value
      }
    }
  }
}

/// The enclave service behind a front that lacks `InferStream`, or whose stream reads one
/// request and ends without opening it.
final class WithoutStreams: Veil_Enclave_V1_EnclaveService.SimpleServiceProtocol {
  enum Behaviour { case unimplemented, endsUnanswered }
  let inner: EnclaveService
  let behaviour: Behaviour
  private let calls = Locked(0)
  var streamCalls: Int { calls.withLock { $0 } }

  init(_ inner: EnclaveService, behaviour: Behaviour) {
    self.inner = inner
    self.behaviour = behaviour
  }

  func handshake(request: Veil_Enclave_V1_HandshakeRequest, context: ServerContext) async throws
    -> Veil_Enclave_V1_HandshakeResponse
  { try await inner.handshake(request: request, context: context) }

  func infer(request: Veil_Enclave_V1_InferRequest, context: ServerContext) async throws -> Veil_Enclave_V1_InferResponse
  { try await inner.infer(request: request, context: context) }

  func inferStream(
    request: RPCAsyncSequence<Veil_Enclave_V1_InferRequest, any Error>,
    response: RPCWriter<Veil_Enclave_V1_InferResponse>, context: ServerContext
  ) async throws {
    calls.withLock { $0 += 1 }
    switch behaviour {
    case .unimplemented: throw RPCError(code: .unimplemented, message: "no InferStream here")
    case .endsUnanswered:
      for try await _ in request { return }
    }
  }

  func close(request: Veil_Enclave_V1_CloseRequest, context: ServerContext) async throws -> Veil_Enclave_V1_CloseResponse
  { try await inner.close(request: request, context: context) }
}
