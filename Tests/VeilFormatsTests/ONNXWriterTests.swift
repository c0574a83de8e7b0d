import Foundation
import VeilFormats
import VeilGraph
import VeilTensor
import XCTest

/// The ONNX writer checked by the real thing: onnx.checker (full check) and ONNX Runtime, via
/// scripts/reference.py, plus a structural dump of the written model read back by `onnx`.
final class ONNXWriterTests: XCTestCase {
  /// y = x ⊛ W + b in plain loops (stride 1, symmetric padding), the hand reference.
  func naiveConv(_ x: Tensor, _ w: Tensor, _ b: Tensor, pad: Int) -> Tensor {
    let (c, h, wd) = (x.shape[1], x.shape[2], x.shape[3])
    let (o, k) = (w.shape[0], w.shape[2])
    let (oh, ow) = (h + 2 * pad - k + 1, wd + 2 * pad - k + 1)
    let xs = x.scalars
    let ws = w.scalars
    let bs = b.scalars
    return Tensor(shape: [1, o, oh, ow]) { out in
      for oi in 0..<o {
        for y in 0..<oh {
          for xx in 0..<ow {
            var s = bs[oi]
            for ci in 0..<c {
              for ky in 0..<k {
                for kx in 0..<k {
                  let (iy, ix) = (y + ky - pad, xx + kx - pad)
                  guard iy >= 0, iy < h, ix >= 0, ix < wd else { continue }
                  s += xs[(ci * h + iy) * wd + ix] * ws[((oi * c + ci) * k + ky) * k + kx]
                }
              }
            }
            out[(oi * oh + y) * ow + xx] = s
          }
        }
      }
    }
  }

  /// Writes `graph` and its inputs as a case folder, runs reference.py and returns ORT's outputs.
  func runReference(_ graph: Graph, _ inputs: [Tensor], in dir: URL) throws -> [Tensor] {
    let caseDir = dir.appendingPathComponent("case")
    try FileManager.default.createDirectory(at: caseDir, withIntermediateDirectories: true)
    try ONNXWriter.write(graph, to: caseDir.appendingPathComponent("model.onnx"))
    for (i, t) in inputs.enumerated() { try NPY.write(t, to: caseDir.appendingPathComponent("input_\(i).npy")) }
    try ReferenceScript.run(dir)
    return try graph.outputs.indices.map { try NPY.read(caseDir.appendingPathComponent("expected_\($0).npy")) }
  }

  struct Dump: Decodable {
    struct Node: Decodable {
      var name: String
      var op: String
      var inputs: [String]
      var outputs: [String]
      var attributes: [String: String]
    }
    var irVersion: Int
    var opsets: [String: Int]
    var producer: String
    var nodes: [Node]
    var initializers: [String: [Int]]
    var inputs: [String: [Int]]
    var outputs: [String: [Int]]
    var metadata: [String: String]
  }

  /// The written model as `onnx` parses it.
  func dump(_ model: URL) throws -> Dump {
    let code = """
      import json, sys, onnx
      from onnx import helper, numpy_helper
      m = onnx.load(sys.argv[1])
      g = m.graph
      shape = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]
      print(json.dumps({
        "irVersion": m.ir_version, "producer": m.producer_name,
        "opsets": {o.domain: o.version for o in m.opset_import},
        "nodes": [{"name": n.name, "op": n.op_type, "inputs": list(n.input), "outputs": list(n.output),
                   "attributes": {a.name: str(helper.get_attribute_value(a)) for a in n.attribute}} for n in g.node],
        "initializers": {t.name: list(t.dims) for t in g.initializer},
        "inputs": {v.name: shape(v) for v in g.input}, "outputs": {v.name: shape(v) for v in g.output},
        "metadata": {p.key: p.value for p in m.metadata_props}}))
      """
    let (status, output) = try ReferenceScript.python(["-c", code, model.path])
    guard status == 0 else { throw ReferenceScript.Failure(description: "dumping \(model.path) failed:\n\(output)") }
    return try JSONDecoder().decode(Dump.self, from: Data(output.utf8))
  }

  /// A Conv with a fused residual sum and ReLU is written as Conv → Add → Relu, and ONNX
  /// Runtime computes relu(conv(x) + r) from it, matching a hand-written convolution.
  func testFusedConvolutionIsUnfused() throws {
    var rng = SeededGenerator(seed: 11)
    let x = Tensor.randomNormal(shape: [1, 2, 5, 5], generator: &rng)
    let r = Tensor.randomNormal(shape: [1, 3, 5, 5], generator: &rng)
    let w = Tensor.randomNormal(shape: [3, 2, 3, 3], std: 0.3, generator: &rng)
    let b = Tensor.randomNormal(shape: [3], std: 0.1, generator: &rng)

    var g = Graph(name: "fused conv")
    g.metadata["source"] = "ONNXWriterTests"
    let xv = g.addInput(name: "x", shape: x.shape)
    let rv = g.addInput(name: "residual.in", shape: r.shape)
    let wv = g.addInitializer(name: "conv1.weight", w)
    let bv = g.addInitializer(name: "conv1.bias", b)
    let y = g.addNode(
      .conv(.square(3)), name: "conv1", inputs: [xv, wv, bv, rv], postOps: [.sum, .activation(.relu)])[0]
    g.outputs = [y]

    let dir = try ReferenceScript.temporaryDirectory("onnx-writer")
    defer { try? FileManager.default.removeItem(at: dir) }
    let expected = try runReference(g, [x, r], in: dir)

    let conv = naiveConv(x, w, b, pad: 1).scalars
    let rs = r.scalars
    let want = conv.indices.map { max(conv[$0] + rs[$0], 0) }
    XCTAssertEqual(expected[0].shape, [1, 3, 5, 5])
    let got = expected[0].scalars
    for i in want.indices {
      XCTAssertEqual(got[i], want[i], accuracy: 1e-5 + 1e-5 * abs(want[i]), "element \(i)")
    }

    let d = try dump(dir.appendingPathComponent("case/model.onnx"))
    XCTAssertEqual(d.irVersion, 8)
    XCTAssertEqual(d.opsets, ["": 17])
    XCTAssertEqual(d.producer, "veil")
    XCTAssertEqual(d.metadata, ["source": "ONNXWriterTests"])
    XCTAssertEqual(d.nodes.map(\.op), ["Conv", "Add", "Relu"])
    XCTAssertEqual(d.nodes.map(\.name), ["conv1", "conv1_add", "conv1_relu"])
    XCTAssertEqual(d.nodes[0].inputs, ["x", "conv1_weight", "conv1_bias"])
    XCTAssertEqual(d.nodes[0].attributes["pads"], "[1, 1, 1, 1]")
    XCTAssertEqual(d.nodes[0].attributes["group"], "1")
    XCTAssertEqual(d.nodes[1].inputs, [d.nodes[0].outputs[0], "residual_in"])
    XCTAssertEqual(d.nodes[2].inputs, d.nodes[1].outputs)
    XCTAssertEqual(d.nodes[2].outputs, ["conv1"])
    XCTAssertEqual(Set(d.nodes.flatMap(\.outputs)).count, 3, "intermediate names must be fresh")
    XCTAssertEqual(d.initializers, ["conv1_weight": [3, 2, 3, 3], "conv1_bias": [3]])
    XCTAssertEqual(d.inputs, ["x": [1, 2, 5, 5], "residual_in": [1, 3, 5, 5]])
    XCTAssertEqual(d.outputs, ["conv1": [1, 3, 5, 5]])
  }

  /// Clashing and non-identifier names, a fused SiLU and Clip, and a graph output that is a
  /// graph input: names come out unique identifiers, and ORT agrees with the scalar functions.
  func testNamesActivationsAndOutputRouting() throws {
    var rng = SeededGenerator(seed: 12)
    let x = Tensor.randomNormal(shape: [2, 3], std: 3, generator: &rng)
    var g = Graph(name: "names")
    let xv = g.addInput(name: "in put", shape: x.shape)
    let a = g.activation(xv, .silu, name: "act")
    let b = g.activation(a, .clip(min: -0.5, max: 1.5), name: "act")
    let c = g.activation(b, .hardSigmoid(alpha: 0.3, beta: 0.4), name: "1.act")
    g.outputs = [c, xv]

    let dir = try ReferenceScript.temporaryDirectory("onnx-names")
    defer { try? FileManager.default.removeItem(at: dir) }
    let expected = try runReference(g, [x], in: dir)
    let want = x.scalars.map {
      Activation.hardSigmoid(alpha: 0.3, beta: 0.4).apply(
        Activation.clip(min: -0.5, max: 1.5).apply(Activation.silu.apply($0)))
    }
    for (i, v) in expected[0].scalars.enumerated() {
      XCTAssertEqual(v, want[i], accuracy: 1e-5 + 1e-5 * abs(want[i]), "element \(i)")
    }
    XCTAssertEqual(expected[1].scalars, x.scalars)

    let d = try dump(dir.appendingPathComponent("case/model.onnx"))
    XCTAssertEqual(d.nodes.map(\.op), ["Sigmoid", "Mul", "Clip", "HardSigmoid", "Identity"])
    XCTAssertEqual(Array(d.inputs.keys), ["in_put"])
    let names = d.nodes.flatMap(\.outputs) + Array(d.inputs.keys) + Array(d.initializers.keys)
    XCTAssertEqual(Set(names).count, names.count, "value names must be unique: \(names)")
    let identifier = /^[A-Za-z_][A-Za-z0-9_]*$/
    for n in names + d.nodes.map(\.name) {
      XCTAssertNotNil(n.wholeMatch(of: identifier), "'\(n)' is not a C identifier")
    }
    XCTAssertEqual(Set(d.nodes.map(\.name)).count, d.nodes.count, "node names must be unique")
    XCTAssertEqual(d.nodes[2].inputs.count, 3, "Clip takes min and max as inputs")
    XCTAssertEqual(d.initializers[d.nodes[2].inputs[1]], [], "Clip's min is a scalar")
  }

  /// A quantised map's tail: the codes input is written UINT8 with a Cast to float, ONNX
  /// Runtime runs it on the integer codes as Veil does on their floats, and it reads back with
  /// the input marked.
  func testEncodedMapInputIsWrittenAsIntegersWithACast() throws {
    var rng = SeededGenerator(seed: 5)
    var g = Graph(name: "tail")
    let x = g.addInput(name: "cut", shape: [1, 3, 4, 4])
    let y = g.conv(x, weight: .randomNormal(shape: [2, 3, 1, 1], generator: &rng), bias: Tensor(zeros: [2]), .square(1), name: "conv")
    g.outputs = [g.globalAveragePool(y, name: "pool")]
    try g.inferShapes()
    let q = CutDefence.quantisation(bits: 6)
    let tail = try q.decodingTail(g)
    let map = Tensor.randomNormal(shape: [1, 3, 4, 4], generator: &rng)
    let encoded = try q.encode(map)
    let veil = try Executor(graph: tail).run(encoded.tensors)[0]
    let dir = try ReferenceScript.temporaryDirectory("encoded-map")
    defer { try? FileManager.default.removeItem(at: dir) }
    let ort = try runReference(tail, encoded.tensors, in: dir)[0]
    for (a, b) in zip(veil.scalars, ort.scalars) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    let back = try ONNXReader.parse(try ONNXWriter.serialize(tail))
    XCTAssertEqual(back.inputs.map { back[$0].name }, ["cut_codes", "cut_low", "cut_step"])
    XCTAssertEqual(try WireIntegerType.of(input: "cut_codes", in: back), .uint8)
    XCTAssertEqual(try Executor(graph: back).run(encoded.tensors)[0].scalars, veil.scalars)

  }

  func testUnreadableGraphIsAnError() {
    var g = Graph(name: "broken")
    let x = g.addInput(name: "x", shape: [1, 2])
    let dangling = g.addValue(name: "nowhere")
    g.outputs = [g.add(x, dangling, name: "sum")]
    XCTAssertThrowsError(try ONNXWriter.serialize(g)) { error in
      guard case .invalidGraph(_, let detail) = error as? FormatError else { return XCTFail("\(error)") }
      XCTAssertTrue(detail.contains("nowhere"), detail)
    }
  }
}
