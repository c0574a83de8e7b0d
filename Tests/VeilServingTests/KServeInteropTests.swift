import Foundation
import VeilFormats
import VeilGraph
import VeilServing
import VeilTensor
import VeilTestSupport
import XCTest

/// Veil's accelerator and client against real third-party peers of the KServe v2 protocol.
/// A peer that is not installed is a visible skip (scripts/kserve_interop.py probe says why).
final class KServeInteropTests: XCTestCase {
  static let script = "kserve_interop.py"

  /// Skips unless `peer` imports in the project's Python environment.
  func requirePeer(_ peer: String, python: URL = ONNXRuntimeReference.python) throws {
    guard FileManager.default.isExecutableFile(atPath: python.path) else {
      throw XCTSkip("\(python.path) is missing: run scripts/setup-python.sh")
    }
    let p = Process()
    p.executableURL = python
    p.arguments = [ONNXRuntimeReference.repoRoot.appendingPathComponent("scripts/\(Self.script)").path, "probe", peer]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    if p.terminationStatus != 0 {
      throw XCTSkip("peer \(peer) not available (\(out.trimmingCharacters(in: .whitespacesAndNewlines))); see docs/serving.md")
    }
  }

  /// The tiny model written as ONNX and read back, so that Veil serves exactly the file the
  /// peers (ONNX Runtime) run.
  func tailFile() throws -> (URL, Graph) {
    let dir = try PythonScript.temporaryDirectory("kserve-interop")
    let url = dir.appendingPathComponent("tail.onnx")
    try ONNXWriter.write(KServeFixtures.tinyModel(), to: url)
    return (url, try ONNXReader.read(url))
  }

  /// NVIDIA tritonclient (grpc) calls Veil's accelerator: health, metadata, inference equal to
  /// ONNX Runtime on the same file, INVALID_ARGUMENT for a wrong shape; the same on Triton's
  /// ModelStreamInfer.
  func testTritonClientCallsVeilsAccelerator() async throws {
    try requirePeer("tritonclient")
    let (url, graph) = try tailFile()
    let s = try await RunningServer([KServeModelSpec(name: "tail", graph: graph, batching: KServeBatching(maxBatchSize: 4))])
    let arguments = ["tritonclient", "127.0.0.1:\(s.port)", "tail", url.path]
    let out = try await blocking { try PythonScript.run(Self.script, arguments) }
    try await s.stop()
    let line = try XCTUnwrap(out.split(separator: "\n").last.map(String.init))
    let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], out)
    let diff = try XCTUnwrap(report["max_abs_diff"] as? Double, out)
    XCTAssertLessThanOrEqual(diff, 1e-5, out)
    XCTAssertEqual(report["shape"] as? [Int], [1, 4], out)
    XCTAssertEqual(report["declared_input"] as? [String], ["-1", "3", "8", "8"], out)
    XCTAssertEqual(report["bad_shape_status"] as? String, "StatusCode.INVALID_ARGUMENT", out)
    XCTAssertEqual(report["again_equal"] as? Bool, true, out)
    XCTAssertEqual(report["server"] as? String, AcceleratorService.serverName, out)
    // Triton's ModelStreamInfer from Triton's own client: equal answers, in order, and a wrong
    // shape refused on the stream.
    XCTAssertEqual(report["stream_equal"] as? Bool, true, out)
    XCTAssertEqual(report["stream_ids"] as? [String], ["stream-0", "stream-1", "stream-2"], out)
    XCTAssertEqual(report["stream_bad_refused"] as? Bool, true, out)
    XCTAssertTrue((report["stream_bad_error"] as? String ?? "").contains("shape"), out)
  }

  /// Veil's client calls Seldon MLServer (a real KServe v2 server, from .venv-peers) hosting the
  /// same tail file, and gets the same answer as from Veil's own accelerator.
  func testVeilClientCallsMLServerHostingTheSameTail() async throws {
    let python = ONNXRuntimeReference.repoRoot.appendingPathComponent(".venv-peers/bin/python")
    guard FileManager.default.isExecutableFile(atPath: python.path) else {
      throw XCTSkip("MLServer peer not installed: run scripts/setup-python-peers.sh (makes .venv-peers)")
    }
    try requirePeer("mlserver", python: python)
    let (url, graph) = try tailFile()
    let log = url.deletingLastPathComponent().appendingPathComponent("mlserver.log")
    // The port is probed free and then given to MLServer, which binds it seconds later; another
    // process may take it in between. MLServer then exits, and the test starts it again on
    // another port (three tries), instead of skipping.
    var started: (peer: Process, client: KServeClient)?
    for attempt in 1...3 where started == nil {
      let port = try Self.freePort(pairWithNext: true)
      _ = FileManager.default.createFile(atPath: log.path, contents: nil)
      let peer = Process()
      peer.executableURL = python
      peer.arguments = [
        ONNXRuntimeReference.repoRoot.appendingPathComponent("scripts/\(Self.script)").path, "mlserver", "\(port)", "tail", url.path,
      ]
      peer.currentDirectoryURL = url.deletingLastPathComponent()
      let handle = try FileHandle(forWritingTo: log)
      peer.standardOutput = handle
      peer.standardError = handle
      try peer.run()
      let client = try KServeClient(endpoint: KServeEndpoint(host: "127.0.0.1", port: port), defaultTimeout: .seconds(10))
      // MLServer takes a few seconds to start; wait until it says the model is ready.
      var ready = false
      for _ in 0..<240 where !ready && peer.isRunning {
        ready = (try? await client.modelReady(name: "tail")) ?? false
        if !ready { try await Task.sleep(for: .milliseconds(250)) }
      }
      if ready {
        started = (peer, client)
      } else {
        await client.close()
        Self.stop(peer)
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        let portTaken = ["address already in use", "failed to bind"].contains { text.lowercased().contains($0) }
        if attempt == 3 || !portTaken {
          XCTFail("MLServer did not get ready on port \(port) (try \(attempt)): \(text)")
          return
        }
      }
    }
    guard let (peer, mlserver) = started else { return }
    defer { Self.stop(peer) }
    let veil = try await RunningServer([KServeModelSpec(name: "tail", graph: graph)])
    for (seed, encoding) in [(UInt64(31), KServeEncoding.raw), (32, .typed)] {
      let x = [KServeTensor(name: "features", tensor: KServeFixtures.input([1, 3, 8, 8], seed: seed))]
      let theirs = try await mlserver.infer(model: "tail", inputs: x, encoding: encoding)
      let ours = try await veil.client.infer(model: "tail", inputs: x, encoding: encoding)
      XCTAssertEqual(theirs.outputs.map(\.name), ours.outputs.map(\.name))
      XCTAssertEqual(theirs.outputs[0].tensor.shape, [1, 4])
      XCTAssertLessThanOrEqual(KServeFixtures.maxDifference(theirs.outputs[0].tensor, ours.outputs[0].tensor), 1e-5, "\(encoding)")
      XCTAssertNil(theirs.timing?.server, "MLServer gives no account of its time")
      XCTAssertNotNil(ours.timing?.server, "Veil's accelerator does")
    }
    // Its errors come back typed too.
    do {
      _ = try await mlserver.infer(model: "nope", inputs: [KServeTensor(name: "features", tensor: Tensor(zeros: [1, 3, 8, 8]))])
      XCTFail("MLServer has no model 'nope'")
    } catch let e as KServeError {
      XCTAssertNotEqual(e.kind, .malformedResponse, e.description)
    }
    await mlserver.close()
    try await veil.stop()
  }

  /// Stops MLServer: its workers ignore SIGTERM, so ask, give it five seconds, then SIGKILL.
  static func stop(_ peer: Process) {
    guard peer.isRunning else { return }
    peer.terminate()
    let deadline = Date().addingTimeInterval(5)
    while peer.isRunning, Date() < deadline { usleep(100_000) }
    if peer.isRunning { kill(peer.processIdentifier, SIGKILL) }
    peer.waitUntilExit()
  }

  /// A free loopback TCP port (below 65535 with `pairWithNext`: MLServer also takes port + 1 for HTTP).
  static func freePort(pairWithNext: Bool = false) throws -> Int {
    let held = try boundLoopbackSocket(below: pairWithNext ? 65535 : 65536)
    close(held.fd)
    return held.port
  }

  /// A loopback TCP socket bound to a port the kernel chose (below `limit`) and not listening:
  /// while it is open no other process can take the port, and a connection to it is refused.
  /// The caller closes `fd`.
  static func boundLoopbackSocket(below limit: Int = 65536) throws -> (fd: Int32, port: Int) {
    for _ in 0..<20 {
      let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
      guard fd >= 0 else { break }
      var addr = sockaddr_in()
      addr.sin_family = sa_family_t(AF_INET)
      addr.sin_addr.s_addr = inet_addr("127.0.0.1")
      addr.sin_port = 0
      var len = socklen_t(MemoryLayout<sockaddr_in>.size)
      let ok = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
      }
      let port = Int(UInt16(bigEndian: addr.sin_port))
      if ok, port < limit { return (fd, port) }
      close(fd)
    }
    struct NoPort: Error, CustomStringConvertible {
      var description: String { "no free loopback TCP port after 20 tries" }
    }
    throw NoPort()
  }
}
