import Foundation
import VeilFormats
import VeilGraph
import VeilTensor
import XCTest

/// `ONNXWriter.serialize(_:batchDimension:)`: a symbolic leading dimension (`dim_param`) that
/// Veil's reader reads back and ONNX Runtime runs at batch 1 and 4 with Veil's answers.
final class ONNXBatchDimensionTests: XCTestCase {
  /// conv → relu → global pool → flatten → linear: a classifier tail that re-batches.
  static func tail(seed: UInt64 = 3) -> Graph {
    var rng = SeededGenerator(seed: seed)
    var g = Graph(name: "tail")
    let x = g.addInput(name: "features", shape: [1, 4, 6, 6])
    var y = g.conv(
      x, weight: .randomNormal(shape: [8, 4, 3, 3], std: 0.3, generator: &rng),
      bias: .randomNormal(shape: [8], std: 0.1, generator: &rng),
      ConvAttributes(kernel: [3, 3], padsBegin: [1, 1], padsEnd: [1, 1]),
      name: "conv")
    y = g.activation(y, .relu, name: "relu")
    y = g.globalAveragePool(y, name: "pool")
    y = g.flatten(y, name: "flatten")
    y = g.linear(
      y, weight: .randomNormal(shape: [5, 8], std: 0.3, generator: &rng),
      bias: .randomNormal(shape: [5], std: 0.1, generator: &rng),
      name: "fc")
    g.outputs = [y]
    return g
  }

  func testSymbolicBatchReadsBackAndRunsAtBatchOneAndFourInONNXRuntime() throws {
    let graph = Self.tail()
    let bytes = try ONNXWriter.serialize(graph, batchDimension: "N")
    XCTAssertNotEqual(bytes, try ONNXWriter.serialize(graph), "the symbolic batch changes the file")

    // Veil's own reader: the symbolic batch reads as 1, and the graph re-batches.
    var back = try ONNXReader.parse(bytes)
    try back.inferShapes()
    XCTAssertEqual(back.shape(back.inputs[0]), [1, 4, 6, 6])
    XCTAssertEqual(back.shape(back.outputs[0]), [1, 5])
    XCTAssertEqual(try back.withBatch(4).shape(back.outputs[0]), [4, 5])

    var rng = SeededGenerator(seed: 11)
    let x1 = Tensor.randomNormal(shape: [1, 4, 6, 6], generator: &rng)
    let x4 = Tensor.randomNormal(shape: [4, 4, 6, 6], generator: &rng)
    let veil1 = try Executor(graph: graph).run([x1])[0]
    let veil4 = try Executor(graph: try graph.withBatch(4)).run([x4])[0]
    let read4 = try Executor(graph: try back.withBatch(4)).run([x4])[0]
    XCTAssertEqual(read4.scalars, veil4.scalars, "the read-back graph computes what the written one did")

    let dir = try ReferenceScript.temporaryDirectory("onnx-batch")
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = dir.appendingPathComponent("model.onnx")
    try Data(bytes).write(to: model)
    try NPY.write(x1, to: dir.appendingPathComponent("x1.npy"))
    try NPY.write(x4, to: dir.appendingPathComponent("x4.npy"))
    let r = try ReferenceScript.python([
      "scripts/check_deploy.py", "onnx", model.path, dir.path, dir.appendingPathComponent("x1.npy").path,
      dir.appendingPathComponent("x4.npy").path,
    ])
    XCTAssertEqual(r.status, 0, r.output)
    let line = try XCTUnwrap(r.output.split(separator: "\n").last.map(String.init))
    let dims = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: [String: String]])
    XCTAssertEqual(dims["inputs"], ["features": "N"])
    XCTAssertEqual(dims["outputs"]?.values.map { $0 }, ["N"])
    let ort1 = try NPY.read(dir.appendingPathComponent("output_0.npy"))
    let ort4 = try NPY.read(dir.appendingPathComponent("output_1.npy"))
    XCTAssertEqual(ort1.shape, [1, 5])
    XCTAssertEqual(ort4.shape, [4, 5])
    for (ort, veil) in [(ort1, veil1), (ort4, veil4)] {
      for (a, b) in zip(ort.scalars, veil.scalars) { XCTAssertEqual(a, b, accuracy: 1e-4 + 1e-4 * abs(b)) }
    }
    // Each row of the batch of 4 is what the batch-1 model answers for that row alone.
    let row0 = try Executor(graph: graph).run([try Tensor(shape: [1, 4, 6, 6], values: Array(x4.scalars[0..<144]))])[0]
    for (a, b) in zip(ort4.scalars[0..<5], row0.scalars) { XCTAssertEqual(a, b, accuracy: 1e-4 + 1e-4 * abs(b)) }
  }

  func testAGraphWhoseShapesFixTheBatchIsRefusedByName() throws {
    var g = Graph(name: "fixed")
    let x = g.addInput(name: "x", shape: [1, 2, 3])
    let y = g.reshape(x, to: [1, 6], name: "fix_batch")
    g.outputs = [y]
    XCTAssertThrowsError(try ONNXWriter.serialize(g, batchDimension: "N")) { e in
      XCTAssertTrue("\(e)".contains("fix_batch"), "\(e)")
      XCTAssertTrue("\(e)".contains("batch 2"), "\(e)")
    }
    // Reshape's 0 copies the batch: the same graph written that way re-batches.
    var h = Graph(name: "copies")
    let hx = h.addInput(name: "x", shape: [1, 2, 3])
    h.outputs = [h.reshape(hx, to: [0, 6], name: "keep_batch")]
    XCTAssertNoThrow(try ONNXWriter.serialize(h, batchDimension: "N"))
    XCTAssertThrowsError(try ONNXWriter.serialize(h, batchDimension: "not a name"))
  }
}
