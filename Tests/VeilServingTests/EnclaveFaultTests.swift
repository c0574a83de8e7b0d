import Foundation
import VeilServing
import VeilTensor
import XCTest

extension XCTestCase {
  /// Starts `veil accelerator serve` for the plan's tail; returns it and its port.
  func startAccelerator(_ plan: LoadedPlan, port: Int = 0) throws -> (Spawned, Int) {
    let p = plan.plan
    let a = try Spawned.start([
      "accelerator", "serve", "--model", "\(p.accelerator.modelName)=\(plan.tailURL.path):\(p.accelerator.modelVersion)",
      "--port", "\(port)",
    ])
    do { return (a, try a.waitForPort(after: "GRPCInferenceService on ")) } catch {
      a.stop()
      throw error
    }
  }
}

/// Faults across processes: `veil enclave serve` in front of two `veil accelerator serve`
/// processes, which are killed and restarted under the enclave's feet.
final class EnclaveFaultTests: XCTestCase {
  func residentKiB(_ pid: Int32) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
  }

  func testAcceleratorKilledFailoverErrorsAndRecovery() async throws {
    let plan = try EnclaveFixture.plan(.client)
    let (a, portA) = try startAccelerator(plan)
    defer { a.stop() }
    let (b, portB) = try startAccelerator(plan)
    defer { b.stop() }
    let enclave = try Spawned.start([
      "enclave", "serve", "--plan", plan.file.path, "--accelerator", "127.0.0.1:\(portA),127.0.0.1:\(portB)",
      "--port", "0", "--allow-simulation", "--retry-after", "0.5", "--metrics-port", "0",
    ])
    defer { enclave.stop() }
    let port = try enclave.waitForPort()
    let mrenclave = try XCTUnwrap(enclave.value(after: "MRENCLAVE "))
    let verifier = try EnclaveFixture.verifier(mrEnclave: try XCTUnwrap(hexBytes(mrenclave)))
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 2), plan: plan.plan)
    let reference = try EnclaveFixture.reference(x)
    let request = EnclaveSession.request(tensor: x, top: 1, logits: true)
    let endpoint = Endpoint(host: "127.0.0.1", port: port)

    try await EnclaveClient.with(endpoint, verifier: verifier) { client in
      let session = try await client.session()
      let first = try await session.infer(request)
      XCTAssertEqual(first.accelerator, "127.0.0.1:\(portA)")
      XCTAssertLessThan(EnclaveFixture.relativeError(try XCTUnwrap(first.logits).scalars, reference), 1e-4)
      let rssBefore = residentKiB(enclave.process.processIdentifier)

      // Kill A while requests run, once A has answered some of them: every request is answered
      // (by B after the failover).
      let answeredSoFar = Locked(0)
      let running = Task {
        var answered: [String] = []
        for _ in 0..<12 {
          answered.append(try await session.infer(request).accelerator)
          answeredSoFar.withLock { $0 += 1 }
        }
        return answered
      }
      try await waitUntil("A answered a request of the run", within: 60) { answeredSoFar.withLock { $0 } >= 2 }
      kill(a.process.processIdentifier, SIGKILL)
      let answered = try await running.value
      XCTAssertEqual(answered.count, 12, "no request lost")
      XCTAssertEqual(answered.first, "127.0.0.1:\(portA)", "A served before it was killed")
      XCTAssertEqual(answered.last, "127.0.0.1:\(portB)", "failed over to B")

      // Kill B too: a clear error per request, naming both endpoints; the session survives.
      kill(b.process.processIdentifier, SIGKILL)
      b.process.waitUntilExit()
      for _ in 0..<3 {
        do {
          _ = try await session.infer(request)
          XCTFail("answered with every accelerator dead")
        } catch EnclaveError.remote(let kind, let message) {
          XCTAssertEqual(kind, .acceleratorUnavailable)
          XCTAssertTrue(message.contains("\(portA)") && message.contains("\(portB)"), message)
        }
      }

      // A comes back on its port: the enclave recovers without a restart.
      let (a2, _) = try startAccelerator(plan, port: portA)
      defer { a2.stop() }
      let recovered = Locked<EnclaveAnswer?>(nil)
      try await waitUntil("the enclave recovered when the accelerator returned", within: 30) {
        let r = try? await session.infer(request)
        recovered.withLock { $0 = r }
        return r != nil
      }
      let back = try XCTUnwrap(recovered.withLock { $0 })
      XCTAssertEqual(back.accelerator, "127.0.0.1:\(portA)")
      XCTAssertLessThan(EnclaveFixture.relativeError(try XCTUnwrap(back.logits).scalars, reference), 1e-4)

      // Memory stays bounded through the faults (and 50 more requests).
      for _ in 0..<50 { _ = try await session.infer(request) }
      let rssAfter = residentKiB(enclave.process.processIdentifier)
      XCTAssertLessThan(rssAfter - rssBefore, 64 << 10, "enclave RSS grew from \(rssBefore) KiB to \(rssAfter) KiB")
      try await session.close()
    }
    XCTAssertTrue(enclave.process.isRunning, "the enclave survived: \(enclave.stderr)")

    // The Prometheus endpoint counted the requests and the unavailable accelerators.
    let address = try XCTUnwrap(enclave.value(after: "metrics at http://"), enclave.stderr)  // HOST:PORT/metrics
    let metricsPort = try XCTUnwrap(address.split(separator: "/").first?.split(separator: ":").last.flatMap { Int($0) }, address)
    let metrics = try KServeServerTests.httpGet(port: metricsPort, path: "/metrics")
    XCTAssertTrue(metrics.hasPrefix("HTTP/1.1 200"), metrics)
    let count = { (name: String) in
      metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
    }
    XCTAssertGreaterThanOrEqual(count("veil_enclave_requests_total"), 12 + 3 + 50 + 1)
    XCTAssertGreaterThanOrEqual(count(#"veil_enclave_errors_total{kind="accelerator-unavailable"}"#), 3)
    XCTAssertGreaterThan(count("veil_enclave_tail_duration_seconds_count"), 0)
  }
}

func hexBytes(_ s: String) -> [UInt8]? {
  guard s.count % 2 == 0 else { return nil }
  var out: [UInt8] = []
  var i = s.startIndex
  while i < s.endIndex {
    let j = s.index(i, offsetBy: 2)
    guard let b = UInt8(s[i..<j], radix: 16) else { return nil }
    out.append(b)
    i = j
  }
  return out
}
