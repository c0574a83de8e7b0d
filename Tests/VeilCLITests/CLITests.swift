import Foundation
import XCTest

import VeilFormats
import VeilTensor

/// The `veil` tool as a user runs it: exit status, messages, JSON keys, files written.
final class CLITests: XCTestCase {
  /// The tool sits beside the test bundle in the build folder.
  static let veil: URL = {
    // A build with another --scratch-path names its binary here.
    if let path = ProcessInfo.processInfo.environment["VEIL_BINARY"] { return URL(fileURLWithPath: path) }
    var dir = Bundle(for: CLITests.self).bundleURL.deletingLastPathComponent()
    if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("veil").path) {
      dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/release")
    }
    return dir.appendingPathComponent("veil")
  }()

  struct Result {
    var status: Int32
    var stdout: String
    var stderr: String
  }

  func veil(_ args: [String]) throws -> Result {
    guard FileManager.default.isExecutableFile(atPath: Self.veil.path) else {
      struct Missing: Error, CustomStringConvertible {
        var description: String
      }
      throw Missing(description: "no veil binary at \(Self.veil.path): build it with `swift build -c release` first (`make test` does)")
    }
    let p = Process()
    p.executableURL = Self.veil
    p.arguments = args
    let out = Pipe()
    let err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
  }

  func temp(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("veil-cli-\(UUID().uuidString)-\(name)")
  }

  func testUnknownModelListsTheValidNames() throws {
    let r = try veil(["run", "--model", "resnet5O", "--input", "x.npy"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("unknown model 'resnet5O'") && r.stderr.contains("resnet50"), r.stderr)
  }

  func testInvalidThreadCount() throws {
    let r = try veil(["bench", "--model", "mobilenet_v2", "--threads", "0"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("thread count") && r.stderr.contains("found 0"), r.stderr)
  }

  func testFileThatIsNotANpyTensor() throws {
    let f = temp("bad.npy")
    try Data("not a tensor".utf8).write(to: f)
    defer { try? FileManager.default.removeItem(at: f) }
    let r = try veil(["run", "--model", "mobilenet_v2", "--input", f.path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("byte 0") && r.stderr.contains("not a .npy file"), r.stderr)
  }

  func testWrongInputShapeNamesBothShapes() throws {
    let f = temp("small.npy")
    try NPY.write(Tensor(zeros: [1, 3, 32, 32]), to: f)
    defer { try? FileManager.default.removeItem(at: f) }
    let r = try veil(["run", "--model", "mobilenet_v2", "--input", f.path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("[1, 3, 224, 224]") && r.stderr.contains("[1, 3, 32, 32]"), r.stderr)
  }

  /// `veil run` writes the output tensor, and its JSON agrees with the file.
  func testRunWritesTheOutputAndJSON() throws {
    let x = temp("x.npy")
    let y = temp("y.npy")
    var rng = SeededGenerator(seed: 5)
    try NPY.write(Tensor.randomNormal(shape: [2, 3, 224, 224], generator: &rng), to: x)
    defer { for f in [x, y] { try? FileManager.default.removeItem(at: f) } }
    let r = try veil(["run", "--model", "mobilenet_v2", "--input", x.path, "--output", y.path, "--top", "2", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let out = try NPY.read(y)
    XCTAssertEqual(out.shape, [2, 1000])
    let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    let items = try XCTUnwrap(doc["items"] as? [[String: Any]])
    XCTAssertEqual(items.count, 2)
    let best = try XCTUnwrap((items[1]["top"] as? [[String: Any]])?.first?["classIndex"] as? Int)
    let row = Array(out.scalars[1000..<2000])
    XCTAssertEqual(best, row.indices.max { row[$0] < row[$1] })
  }

  /// A model exported to ONNX and read back computes what the zoo builder computes.
  func testExportedONNXRunsWithTheSameAnswer() throws {
    let m = temp("m.onnx")
    let x = temp("x.npy")
    let a = temp("a.npy")
    let b = temp("b.npy")
    defer { for f in [m, x, a, b] { try? FileManager.default.removeItem(at: f) } }
    var rng = SeededGenerator(seed: 6)
    try NPY.write(Tensor.randomNormal(shape: [1, 3, 224, 224], generator: &rng), to: x)
    XCTAssertEqual(try veil(["export", "--model", "efficientnet_b0", "--out", m.path]).status, 0)
    XCTAssertEqual(try veil(["run", "--model", "efficientnet_b0", "--input", x.path, "--output", a.path]).status, 0)
    let r = try veil(["run", "--model", m.path, "--input", x.path, "--output", b.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    let ya = try NPY.read(a).scalars
    let yb = try NPY.read(b).scalars
    let peak = ya.map(abs).max() ?? 1
    XCTAssertLessThanOrEqual(zip(ya, yb).map { abs($0 - $1) }.max() ?? 1, 1e-5 * peak)
    let bad = temp("bad.onnx")
    try Data([0x08, 0x80]).write(to: bad)
    defer { try? FileManager.default.removeItem(at: bad) }
    let e = try veil(["run", "--model", bad.path, "--input", x.path])
    XCTAssertNotEqual(e.status, 0)
    XCTAssertTrue(e.stderr.contains("byte"), e.stderr)
  }

  func testBenchJSONHasTheDocumentedKeys() throws {
    let r = try veil(["bench", "--model", "mobilenet_v2", "--runs", "2", "--warmup", "1", "--threads", "1", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    for key in ["model", "batch", "threads", "latency_ms", "throughput", "gflops", "peak_rss_bytes"] {
      XCTAssertNotNil(doc[key], "missing \(key)")
    }
    let lat = try XCTUnwrap(doc["latency_ms"] as? [String: Double])
    XCTAssertEqual(Set(lat.keys), ["min", "median", "p90"])
    XCTAssertLessThanOrEqual(lat["min"]!, lat["median"]!)
    XCTAssertLessThanOrEqual(lat["median"]!, lat["p90"]!)
    XCTAssertEqual(doc["threads"] as? Int, 1)
    XCTAssertGreaterThan(doc["gflops"] as? Double ?? 0, 0)
  }

  func testModelsListsEveryBuilder() throws {
    let r = try veil(["models", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let list = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
    XCTAssertEqual(list.compactMap { $0["name"] as? String }, ["vgg16", "resnet50", "efficientnet_b0", "efficientnet_lite0", "mobilenet_v2"])
    XCTAssertEqual(list.first { $0["name"] as? String == "resnet50" }?["parameters"] as? Int, 25_557_032)
  }
}
