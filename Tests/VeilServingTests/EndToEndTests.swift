import Foundation
import VeilFormats
import VeilServing
import VeilTensor
import XCTest

/// `veil enclave serve` and `veil infer` as separate processes on loopback, with simulated
/// evidence: the answers equal `veil run` on the whole model.
final class EndToEndTests: XCTestCase {
  func testEnclaveServeAndInferAcrossProcessesEqualVeilRun() throws {
    let plan = try EnclaveFixture.plan(.client)
    let dir = Spawned.temp("e2e")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let photos = try (0..<2).map { i -> URL in
      let u = dir.appendingPathComponent("photo\(i).png")
      try EnclaveFixture.photo(seed: i + 5).write(to: u)
      return u
    }

    let enclave = try Spawned.start([
      "enclave", "serve", "--plan", plan.directory.path, "--local-tail", "--port", "0", "--allow-simulation",
      "--log-level", "trace",
    ])
    defer { enclave.stop() }
    let port = try enclave.waitForPort()
    let mrenclave = try XCTUnwrap(enclave.value(after: "MRENCLAVE "), enclave.stderr)
    let policy = dir.appendingPathComponent("policy.json")
    try Data(#"{"mrenclave": "\#(mrenclave)", "allow_simulation": true, "allow_debug": true}"#.utf8).write(to: policy)

    // A policy without simulation: refused before any photo is sent.
    let strict = dir.appendingPathComponent("strict.json")
    try Data(#"{"mrenclave": "\#(mrenclave)"}"#.utf8).write(to: strict)
    let refused = try Spawned.run([
      "infer", "--endpoint", "127.0.0.1:\(port)", "--policy", strict.path, photos[0].path,
    ])
    XCTAssertNotEqual(refused.status, 0)
    XCTAssertTrue(refused.stderr.contains("SIMULATED"), refused.stderr)

    let logits = dir.appendingPathComponent("logits")
    let r = try Spawned.run(
      ["infer", "--endpoint", "127.0.0.1:\(port)", "--policy", policy.path, "--json", "--save-logits", logits.path]
        + photos.map(\.path))
    XCTAssertEqual(r.status, 0, r.stderr)
    let report = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    XCTAssertEqual(report?["simulated"] as? Bool, true)
    XCTAssertEqual((report?["items"] as? [Any])?.count, 2)

    for (i, photo) in photos.enumerated() {
      let ref = dir.appendingPathComponent("ref\(i).npy")
      let run = try Spawned.run([
        "run", "--model", EnclaveFixture.model, "--input", photo.path, "--preprocess", "imagenet", "--output", ref.path,
      ])
      XCTAssertEqual(run.status, 0, run.stderr)
      let whole = try NPY.read(ref).scalars
      let split = try NPY.read(logits.appendingPathComponent("photo\(i).npy")).scalars
      XCTAssertLessThan(EnclaveFixture.relativeError(split, whole), 1e-4, "photo \(i)")
    }

    // The enclave's traced log names the sessions by prefix and holds no input bytes.
    enclave.stop()
    let log = enclave.stderr
    XCTAssertTrue(log.contains("session opened"), log)
    let photoBytes = try Data(contentsOf: photos[1])
    let sample = photoBytes[200..<232].map { String(format: "%02x", $0) }.joined()
    XCTAssertFalse(log.contains(sample), "photo bytes in the enclave's log")
  }
}

extension EndToEndTests {
  /// `veil infer` and `veil loadtest` with two enclave replicas (`--enclave` repeated and
  /// comma-separated): sessions land on both, every answer checked against the whole model.
  func testInferAndLoadtestSpreadSessionsAcrossEnclaveReplicas() throws {
    let plan = try EnclaveFixture.plan(.client)
    let dir = Spawned.temp("replicas")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let photo = dir.appendingPathComponent("photo.png")
    try EnclaveFixture.photo(seed: 9).write(to: photo)
    var enclaves: [Spawned] = []
    defer { for e in enclaves { e.stop() } }
    var endpoints: [String] = []
    for _ in 0..<2 {
      let e = try Spawned.start([
        "enclave", "serve", "--plan", plan.directory.path, "--local-tail", "--port", "0", "--allow-simulation", "--threads", "1",
      ])
      enclaves.append(e)
      endpoints.append("127.0.0.1:\(try e.waitForPort())")
    }
    let mrenclave = try XCTUnwrap(enclaves[0].value(after: "MRENCLAVE "), enclaves[0].stderr)
    let policy = dir.appendingPathComponent("policy.json")
    try Data(#"{"mrenclave": "\#(mrenclave)", "allow_simulation": true, "allow_debug": true}"#.utf8).write(to: policy)

    let infer = try Spawned.run([
      "infer", "--enclave", endpoints[0], "--enclave", endpoints[1], "--policy", policy.path, "--json", photo.path,
    ])
    XCTAssertEqual(infer.status, 0, infer.stderr)
    let inferReport = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(infer.stdout.utf8)) as? [String: Any])
    XCTAssertEqual((inferReport["items"] as? [[String: Any]])?.first?["enclave"] as? String, endpoints[0])

    let load = try Spawned.run([
      "loadtest", "--enclave", endpoints.joined(separator: ","), "--policy", policy.path, "--model", EnclaveFixture.model,
      "--clients", "4", "--requests", "12", "--warmup", "0", "--json", photo.path,
    ])
    XCTAssertEqual(load.status, 0, load.stderr)
    let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(load.stdout.utf8)) as? [String: Any], load.stdout)
    XCTAssertEqual(report["ok"] as? Int, 12)
    XCTAssertEqual(report["wrong"] as? Int, 0)
    XCTAssertEqual(report["failed"] as? Int, 0)
    let sessions = try XCTUnwrap((report["replicas"] as? [String: Any])?["sessions"] as? [String: Int])
    XCTAssertEqual(Set(sessions.keys), Set(endpoints), "sessions on both replicas: \(sessions)")
    XCTAssertEqual(sessions.values.reduce(0, +), 5, "one session to read the plan, then one per client")

    let bad = try Spawned.run(["loadtest", "--enclave", "127.0.0.1", "--policy", policy.path, "--model", "m", photo.path])
    XCTAssertNotEqual(bad.status, 0)
    XCTAssertTrue(bad.stderr.contains("--enclave"), bad.stderr)
  }
}

/// A `veil` process: the binary beside the test bundle (or VEIL_BINARY), standard error
/// collected as it comes so a long-running server never blocks on a full pipe.
final class Spawned: @unchecked Sendable {
  static let veil: URL = {
    if let path = ProcessInfo.processInfo.environment["VEIL_BINARY"] { return URL(fileURLWithPath: path) }
    let candidates = [
      Bundle(for: Spawned.self).bundleURL.deletingLastPathComponent(),
      URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent(),
      URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/release"),
    ]
    let dir = candidates.first { FileManager.default.isExecutableFile(atPath: $0.appendingPathComponent("veil").path) }
    return (dir ?? candidates[0]).appendingPathComponent("veil")
  }()

  static func temp(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("veil-serving-\(UUID().uuidString)-\(name)")
  }

  struct Missing: Error, CustomStringConvertible { var description: String }

  let process = Process()
  private let lock = NSLock()
  private var err = Data()
  private var out = Data()

  var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }
  var stdout: String { lock.withLock { String(decoding: out, as: UTF8.self) } }

  static func start(_ args: [String]) throws -> Spawned {
    guard FileManager.default.isExecutableFile(atPath: veil.path) else {
      throw Missing(description: "no veil binary at \(veil.path): build it with `swift build -c release` first (`make test` does), or set VEIL_BINARY")
    }
    let s = Spawned()
    s.process.executableURL = veil
    s.process.arguments = args
    let e = Pipe()
    let o = Pipe()
    s.process.standardError = e
    s.process.standardOutput = o
    e.fileHandleForReading.readabilityHandler = { h in
      let d = h.availableData
      s.lock.withLock { s.err.append(d) }
    }
    o.fileHandleForReading.readabilityHandler = { h in
      let d = h.availableData
      s.lock.withLock { s.out.append(d) }
    }
    try s.process.run()
    return s
  }

  /// Runs to the end; returns the exit status and both outputs, each read to its end (so none
  /// of it is still in flight when the process has exited).
  static func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    guard FileManager.default.isExecutableFile(atPath: veil.path) else {
      throw Missing(description: "no veil binary at \(veil.path): build it with `swift build -c release` first (`make test` does), or set VEIL_BINARY")
    }
    let p = Process()
    p.executableURL = veil
    p.arguments = args
    let e = Pipe()
    let o = Pipe()
    p.standardError = e
    p.standardOutput = o
    try p.run()
    let err = Locked(Data())
    let done = DispatchSemaphore(value: 0)
    let errHandle = e.fileHandleForReading
    Thread {
      let d = errHandle.readDataToEndOfFile()
      err.withLock { $0 = d }
      done.signal()
    }.start()
    let out = o.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err.withLock { $0 }, as: UTF8.self))
  }

  /// The port printed as "listening on HOST:PORT" (or after another marker).
  func waitForPort(after marker: String = "listening on ", timeout: Double = 120) throws -> Int {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
      if let v = value(after: marker), let port = v.split(separator: ":").last.flatMap({ Int($0) }) {
        return port
      }
      guard process.isRunning else { throw Missing(description: "the server exited: \(stderr)") }
      Thread.sleep(forTimeInterval: 0.05)
    }
    throw Missing(description: "the server did not say where it listens within \(Int(timeout)) s: \(stderr)")
  }

  /// The word that follows `marker` in standard error, once it has been written.
  func value(after marker: String) -> String? {
    let text = stderr
    guard let r = text.range(of: marker) else { return nil }
    let rest = text[r.upperBound...]
    let word = rest.prefix { !$0.isWhitespace && $0 != ";" && $0 != "," }
    return rest.contains(where: \.isNewline) || rest.count > word.count ? String(word) : nil
  }

  func stop() {
    if process.isRunning {
      process.interrupt()
      let deadline = Date().addingTimeInterval(5)
      while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
      if process.isRunning { process.terminate() }
      process.waitUntilExit()
    }
  }
}
