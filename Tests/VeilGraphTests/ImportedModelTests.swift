import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport

/// The architecture-only ONNX graphs shipped in the onnx wheel (opset 9, weights produced by
/// ConstantOfShape) import, run, and match ONNX Runtime on the original files.
final class ImportedModelTests: XCTestCase {
  static let models = [
    "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet", "vgg19",
    "zfnet512",
  ]

  func lightDirectory() throws -> URL {
    let lib = ONNXRuntimeReference.repoRoot.appendingPathComponent(".venv/lib")
    guard let py = try? FileManager.default.contentsOfDirectory(atPath: lib.path).first(where: { $0.hasPrefix("python") })
    else {
      throw ReferenceError.pythonMissing(python: ONNXRuntimeReference.python.path, repoRoot: ONNXRuntimeReference.repoRoot.path)
    }
    return lib.appendingPathComponent("\(py)/site-packages/onnx/backend/test/data/light")
  }

  func testShippedArchitectureGraphsMatchONNXRuntime() throws {
    let fm = FileManager.default
    let src = try lightDirectory()
    let dir = fm.temporaryDirectory.appendingPathComponent("veil-light-\(UUID().uuidString)")
    defer { try? fm.removeItem(at: dir) }
    var inputs: [String: Tensor] = [:]
    for (i, m) in Self.models.enumerated() {
      let caseDir = dir.appendingPathComponent(ONNXRuntimeReference.folderName(i, m))
      try fm.createDirectory(at: caseDir, withIntermediateDirectories: true)
      try fm.copyItem(at: src.appendingPathComponent("light_\(m).onnx"), to: caseDir.appendingPathComponent("model.onnx"))
      let g = try ONNXReader.read(src.appendingPathComponent("light_\(m).onnx"))
      var rng = SeededGenerator(label: m)
      let x = Tensor.randomNormal(shape: g.shape(g.inputs[0]) ?? [], generator: &rng)
      try NPY.write(x, to: caseDir.appendingPathComponent("input_0.npy"))
      inputs[m] = x
    }
    let p = Process()
    p.executableURL = ONNXRuntimeReference.python
    p.arguments = [ONNXRuntimeReference.script.path, "run", dir.path]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let log = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    XCTAssertEqual(p.terminationStatus, 0, log)
    for (i, m) in Self.models.enumerated() {
      let want = try NPY.read(
        dir.appendingPathComponent(ONNXRuntimeReference.folderName(i, m)).appendingPathComponent("expected_0.npy"))
      let got = try Executor(graph: ONNXReader.read(src.appendingPathComponent("light_\(m).onnx"))).run([inputs[m]!])[0]
      let c = Comparison(got: got, want: want, tolerance: .relativeToPeak(1e-4, of: want))
      XCTAssertTrue(c.passed, "\(m): \(c)")
      print("light_\(m): max|veil−ort|/max|ort| = \(c.relativeToPeakError)")
    }
  }
}
