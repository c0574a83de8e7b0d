import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

/// The `veil` tool as a user runs it: exit status, messages, JSON keys, files written.
final class CLITests: XCTestCase {
  /// The tool sits beside the test bundle in the build folder (on Linux the bundle is the test
  /// executable itself, so a build with `--scratch-path` is found through it).
  static let veil: URL = {
    // A build with another --scratch-path names its binary here.
    if let path = ProcessInfo.processInfo.environment["VEIL_BINARY"] { return URL(fileURLWithPath: path) }
    var dir = Bundle(for: CLITests.self).bundleURL.deletingLastPathComponent()
    let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("veil").path),
      FileManager.default.fileExists(atPath: runner.appendingPathComponent("veil").path)
    {
      dir = runner
    }
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

  /// `veil inspect` on an ONNX file Veil cannot import lists all that stands in the way (a
  /// height left symbolic, two unknown ops), exits 1, and says the same in JSON.
  func testInspectListsEverythingThatStandsInTheWay() throws {
    var e = ProtobufEncoder()
    e.int64(1, 8)
    e.message(7) { g in
      for (name, op, input, output) in [("r", "Relu", "x", "a"), ("f", "FooBar", "a", "b"), ("q", "Quux", "b", "y")] {
        g.message(1) { n in
          n.string(1, input); n.string(2, output); n.string(3, name); n.string(4, op)
        }
      }
      g.message(11) { v in
        v.string(1, "x")
        v.message(2) {
          $0.message(1) { t in
            t.int(1, 1)
            t.message(2) { s in
              s.message(1) { $0.int(1, 1) }
              s.message(1) { $0.int(1, 3) }
              s.message(1) { $0.string(2, "height") }
              s.message(1) { $0.int(1, 32) }
            }
          }
        }
      }
      g.message(12) { $0.string(1, "y") }
    }
    e.message(8) { $0.string(1, ""); $0.int(2, 13) }
    let file = temp("survey.onnx")
    try Data(e.bytes).write(to: file)
    defer { try? FileManager.default.removeItem(at: file) }
    let r = try veil(["inspect", file.path])
    XCTAssertEqual(r.status, 1, r.stderr)
    for needle in ["input x: ", "axis 2 ('height')", "node f (FooBar)", "node q (Quux)", "ops not taken: FooBar, Quux"] {
      XCTAssertTrue(r.stdout.contains(needle), "\(needle) in \(r.stdout)")
    }
    let j = try veil(["inspect", file.path, "--json"])
    XCTAssertEqual(j.status, 1)
    let doc = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any], j.stdout)
    XCTAssertEqual((doc["problems"] as? [[String: Any]])?.count, 3)
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

  /// A model whose output is one vector rather than [N, classes] (an export that dropped the
  /// batch dimension) runs as one item: `veil run` read rows by the first dimension and
  /// trapped past the end of the output (found by mutating ONNX files, 2026-12-06).
  func testAnOutputWithoutABatchDimensionIsOneItem() throws {
    var g = Graph(name: "vector")
    let x = g.addInput(name: "x", shape: [1, 3, 4, 4])
    let pooled = g.globalAveragePool(x, name: "gap")
    g.outputs = [g.softmax(g.reshape(pooled, to: [3], name: "squeeze"), name: "probabilities")]
    let model = temp("vector.onnx")
    let input = temp("x.npy")
    defer { for f in [model, input] { try? FileManager.default.removeItem(at: f) } }
    try ONNXWriter.write(g, to: model)
    var rng = SeededGenerator(seed: 6)
    try NPY.write(Tensor.randomNormal(shape: [1, 3, 4, 4], generator: &rng), to: input)
    let r = try veil(["run", "--model", model.path, "--input", input.path, "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(doc["outputShape"] as? [Int], [3])
    let items = try XCTUnwrap(doc["items"] as? [[String: Any]])
    XCTAssertEqual(items.count, 1)
    XCTAssertEqual((items[0]["top"] as? [[String: Any]])?.count, 3)
  }

  /// A state_dict file (here safetensors of the zoo's seed-7 MobileNetV2, by torchvision names)
  /// is recognised as its architecture and gives what the zoo model with those weights gives;
  /// a state_dict of no zoo architecture is refused with the counts that did not match.
  func testStateDictFileRunsAsItsArchitecture() throws {
    let w = temp("w.safetensors")
    let x = temp("x.npy")
    let a = temp("a.npy")
    let b = temp("b.npy")
    let partial = temp("partial.safetensors")
    defer { for f in [w, x, a, b, partial] { try? FileManager.default.removeItem(at: f) } }
    let g = try ModelZoo.build("mobilenet_v2", seed: 7)
    let tensors = g.initializers.keys.sorted().map { (name: g[$0].name, tensor: g.initializers[$0]!) }
    try Safetensors.write(tensors, to: w)
    try Safetensors.write(Array(tensors.prefix(3)), to: partial)
    var rng = SeededGenerator(seed: 8)
    try NPY.write(Tensor.randomNormal(shape: [1, 3, 224, 224], generator: &rng), to: x)
    XCTAssertEqual(try veil(["run", "--model", "mobilenet_v2", "--seed", "7", "--input", x.path, "--output", a.path]).status, 0)
    let r = try veil(["run", "--model", w.path, "--input", x.path, "--output", b.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(try NPY.read(a).scalars, try NPY.read(b).scalars)
    let e = try veil(["run", "--model", partial.path, "--input", x.path])
    XCTAssertNotEqual(e.status, 0)
    XCTAssertTrue(e.stderr.contains("not the state_dict of a zoo architecture") && e.stderr.contains("torch.onnx.export"), e.stderr)
  }

  /// `veil cuts` lists the structural cuts; `veil split` writes head, tail and cut.json, and the
  /// tail run on the head's output gives the whole model's answer; bad cut names list the
  /// valid ones.
  func testCutsAndSplit() throws {
    let c = try veil(["cuts", "--model", "resnet50", "--json"])
    XCTAssertEqual(c.status, 0, c.stderr)
    let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [String: Any])
    let cuts = try XCTUnwrap(doc["cuts"] as? [[String: Any]])
    XCTAssertEqual(cuts.first?["name"] as? String, "stem")
    XCTAssertTrue(cuts.contains { $0["name"] as? String == "layer3" && ($0["shape"] as? [Int]) == [1, 1024, 14, 14] })
    let dir = temp("split")
    let x = temp("x.npy")
    let f = temp("f.npy")
    let y = temp("y.npy")
    let whole = temp("whole.npy")
    defer { for u in [dir, x, f, y, whole] { try? FileManager.default.removeItem(at: u) } }
    var rng = SeededGenerator(seed: 9)
    try NPY.write(Tensor.randomNormal(shape: [1, 3, 224, 224], generator: &rng), to: x)
    let s = try veil(["split", "--model", "mobilenet_v2", "--cut", "features.7", "--out", dir.path])
    XCTAssertEqual(s.status, 0, s.stderr)
    let meta = try XCTUnwrap(
      JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("cut.json"))) as? [String: Any])
    XCTAssertEqual((meta["cut"] as? [String: Any])?["name"] as? String, "features.7")
    XCTAssertEqual(try veil(["run", "--model", dir.appendingPathComponent("head.onnx").path, "--input", x.path, "--output", f.path, "--top", "0"]).status, 0)
    XCTAssertEqual(try veil(["run", "--model", dir.appendingPathComponent("tail.onnx").path, "--input", f.path, "--output", y.path]).status, 0)
    XCTAssertEqual(try veil(["run", "--model", "mobilenet_v2", "--input", x.path, "--output", whole.path]).status, 0)
    let a = try NPY.read(y).scalars
    let b = try NPY.read(whole).scalars
    let peak = b.map(abs).max() ?? 1
    XCTAssertLessThanOrEqual(zip(a, b).map { abs($0 - $1) }.max() ?? 1, 1e-5 * peak)
    let bad = try veil(["split", "--model", "resnet50", "--cut", "layer1.0.conv2", "--out", dir.path])
    XCTAssertNotEqual(bad.status, 0)
    XCTAssertTrue(bad.stderr.contains("more than one tensor crosses") && bad.stderr.contains("layer3"), bad.stderr)
    let unknown = try veil(["split", "--model", "resnet50", "--cut", "layer9", "--out", dir.path])
    XCTAssertTrue(unknown.stderr.contains("layer9") && unknown.stderr.contains("stem"), unknown.stderr)
  }

  /// `veil profile` on a small model: the paper-style table, a CSV row per cut, an SVG, and
  /// clear errors for bad presets, parameters and endpoints.
  func testProfileWritesTableCSVAndSVG() throws {
    let csv = temp("p.csv")
    let svg = temp("p.svg")
    defer { for u in [csv, svg] { try? FileManager.default.removeItem(at: u) } }
    let r = try veil(["profile", "--model", "mobilenet_v2", "--runs", "1", "--tee", "sgx1", "--csv", csv.path, "--svg", svg.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertTrue(r.stdout.contains("full enclave ms") && r.stdout.contains("speed-up %") && r.stdout.contains("modeled"), r.stdout)
    XCTAssertTrue(r.stderr.contains("cut 1/"), "progress goes to stderr: \(r.stderr)")
    let rows = try String(contentsOf: csv, encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(rows.count, 2 + ((try veil(["cuts", "--model", "mobilenet_v2", "--json"]).stdout.components(separatedBy: "\"headNodes\"").count) - 1))
    XCTAssertTrue(try String(contentsOf: svg, encoding: .utf8).hasPrefix("<svg"))
    for (args, needle) in [
      (["--tee", "sgx9"], "sgx1, sgx2, tdx, snp"), (["--tee-param", "epc_mib=-3"], "epc_mib=-3"),
      (["--tee-param", "epc"], "KEY=VALUE"), (["--accelerator", "gpu-box"], "HOST:PORT"),
      (["--gpu", "H100:x:1"], "NAME:TFLOPS"),
    ] {
      let e = try veil(["profile", "--model", "mobilenet_v2", "--runs", "1"] + args)
      XCTAssertNotEqual(e.status, 0, "\(args)")
      XCTAssertTrue(e.stderr.contains(needle), "\(args): \(e.stderr)")
    }
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
    XCTAssertEqual(
      list.compactMap { $0["name"] as? String },
      ["vgg16", "resnet50", "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "mobilenet_v2", "vit_b_16", "vit_ti_16"])
    XCTAssertEqual(list.first { $0["name"] as? String == "resnet50" }?["parameters"] as? Int, 25_557_032)
    XCTAssertEqual(list.first { $0["name"] as? String == "vit_b_16" }?["parameters"] as? Int, 86_567_656)
  }
}
