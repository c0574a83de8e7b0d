import Foundation
import GRPCCore
import VeilServing
import VeilTensor
import XCTest

/// Several enclave replicas behind one client (`EnclaveReplicas`), as processes on loopback:
/// three `veil enclave serve` in front of two `veil accelerator serve`; one enclave and one
/// accelerator are killed while the load runs. Every request is answered right; every request
/// lost with the dead enclave is counted and sent again to another; none is dropped.
final class ReplicaFailoverTests: XCTestCase {
  func testLoadSurvivesAKilledEnclaveAndAKilledAccelerator() async throws {
    let plan = try EnclaveFixture.plan(.client)
    let (a, portA) = try startAccelerator(plan)
    defer { a.stop() }
    let (b, portB) = try startAccelerator(plan)
    defer { b.stop() }
    var enclaves: [Spawned] = []
    defer { for e in enclaves { e.stop() } }
    var ports: [Int] = []
    for _ in 0..<3 {
      let e = try Spawned.start([
        "enclave", "serve", "--plan", plan.file.path, "--accelerator", "127.0.0.1:\(portA),127.0.0.1:\(portB)",
        "--port", "0", "--allow-simulation", "--retry-after", "0.5", "--threads", "1",
      ])
      enclaves.append(e)
      ports.append(try e.waitForPort())
    }
    let mrenclave = try XCTUnwrap(enclaves[0].value(after: "MRENCLAVE "))
    let replicas = try EnclaveReplicas(
      endpoints: ports.map { Endpoint(host: "127.0.0.1", port: $0) },
      verifier: try EnclaveFixture.verifier(mrEnclave: try XCTUnwrap(hexBytes(mrenclave))), timeout: .seconds(60),
      retryAfter: 0.5)

    let inputs = try (0..<2).map { try EnclaveFixture.input(try EnclaveFixture.photo(seed: 30 + $0), plan: plan.plan) }
    let references = try inputs.map { try EnclaveFixture.reference($0) }
    let requests = inputs.map { EnclaveSession.request(tensor: $0, top: 1, logits: true) }
    let callers = 6
    let perCaller = 10
    struct Answer: Sendable {
      var caller: Int
      var input: Int
      var logits: [Float]
      var accelerator: String
      var afterAcceleratorKill: Bool
    }
    let answers = Locked<[Answer]>([])
    let acceleratorKilled = Locked(false)

    // The faults, each once enough of the load has been answered (deadlines, not sleeps).
    let doomed = enclaves[0]
    let faults = Task {
      try await waitUntil("15 answers before the enclave is killed", within: 300) {
        answers.withLock { $0.count } >= 15
      }
      kill(doomed.process.processIdentifier, SIGKILL)
      doomed.process.waitUntilExit()
      try await waitUntil("35 answers before the accelerator is killed", within: 300) {
        answers.withLock { $0.count } >= 35
      }
      kill(a.process.processIdentifier, SIGKILL)
      a.process.waitUntilExit()
      acceleratorKilled.withLock { $0 = true }
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
      for c in 0..<callers {
        group.addTask {
          try await replicas.withCaller { caller in
            for k in 0..<perCaller {
              let i = (c + k) % requests.count
              let request = requests[i]
              let afterKill = acceleratorKilled.withLock { $0 }
              let answer = try await caller.infer { _ in request }
              let logits = try XCTUnwrap(answer.logits).scalars
              answers.withLock {
                $0.append(
                  Answer(
                    caller: c, input: i, logits: logits, accelerator: answer.accelerator,
                    afterAcceleratorKill: afterKill))
              }
            }
          }
        }
      }
      try await group.waitForAll()
    }
    try await faults.value

    let all = answers.withLock { $0 }
    let tally = replicas.tally
    XCTAssertEqual(all.count, callers * perCaller, "every request answered")
    for (n, answer) in all.enumerated() {
      XCTAssertLessThan(
        EnclaveFixture.relativeError(answer.logits, references[answer.input]), 1e-4, "answer \(n) is wrong")
    }
    XCTAssertEqual(tally.failed, 0, "\(tally)")
    XCTAssertGreaterThanOrEqual(tally.lost, 1, "the callers on the killed enclave lost a request: \(tally)")
    XCTAssertEqual(tally.retried, tally.lost, "every lost request was sent again: \(tally)")
    let dead = "127.0.0.1:\(ports[0])"
    XCTAssertEqual(Set(tally.lostAt.keys), [dead], "requests were lost only with the killed enclave: \(tally)")
    XCTAssertGreaterThan(tally.answered[dead] ?? 0, 0, "the killed enclave served before it died")
    XCTAssertEqual(tally.answered.values.reduce(0, +), callers * perCaller)
    // The callers that were on the dead enclave opened new sessions on the others.
    XCTAssertEqual(tally.sessions[dead], 2, "\(tally)")
    // and spread over them: each survivor took one (the fewest connections first).
    let survivors = ports.dropFirst().map { tally.sessions["127.0.0.1:\($0)"] ?? 0 }
    XCTAssertEqual(survivors, [3, 3], "\(tally)")
    // The enclaves failed over to B: A served before its kill, B answered everything sent after it.
    XCTAssertTrue(all.contains { $0.accelerator == "127.0.0.1:\(portA)" })
    let late = all.filter(\.afterAcceleratorKill)
    XCTAssertFalse(late.isEmpty, "requests were sent after the accelerator was killed")
    XCTAssertTrue(late.allSatisfy { $0.accelerator == "127.0.0.1:\(portB)" }, "\(late.map(\.accelerator))")
    for e in enclaves.dropFirst() { XCTAssertTrue(e.process.isRunning, "a surviving enclave died: \(e.stderr)") }
    print(
      "replica failover: \(all.count) answered, 0 wrong, \(tally.lost) lost and \(tally.retried) retried, \(tally.failed) failed; sessions \(tally.sessions.sorted { $0.key < $1.key })"
    )
  }

  func testARequestNoReplicaCanTakeFailsAndIsCountedNotDropped() async throws {
    // Two ports bound here and never listened on: connections to them are refused, and no other
    // process can take them while the test runs.
    let held = try (0..<2).map { _ in try KServeInteropTests.boundLoopbackSocket() }
    defer { for h in held { close(h.fd) } }
    let endpoints = held.map { Endpoint(host: "127.0.0.1", port: $0.port) }
    let replicas = try EnclaveReplicas(
      endpoints: endpoints, verifier: try EnclaveFixture.verifier(), timeout: .seconds(5), retryAfter: 30)
    let request = EnclaveSession.request(tensor: Tensor(zeros: [1, 3, 224, 224]), top: 1)
    do {
      _ = try await replicas.withCaller { caller in try await caller.infer { _ in request } }
      XCTFail("answered with no enclave running")
    } catch EnclaveError.enclaveUnavailable(let message) {
      for e in endpoints { XCTAssertTrue(message.contains("\(e.port)"), message) }
    }
    XCTAssertEqual(replicas.tally.failed, 1)
    XCTAssertEqual(replicas.tally.lost, 0, "nothing was sent, so nothing was lost")
    XCTAssertThrowsError(try EnclaveReplicas.parse([]))
    XCTAssertEqual(try EnclaveReplicas.parse(["a:1,b:2", "c:3"]).map(\.description), ["a:1", "b:2", "c:3"])
    XCTAssertThrowsError(try EnclaveReplicas.parse(["a:1,nope"]))
  }
}
