import Foundation
import VeilFormats
import VeilGraph
import VeilTensor
import XCTest

/// The ONNX reader: graphs written by ONNXWriter read back and run to the same outputs, and
/// hand-encoded files that exercise what the writer never produces (folding, auto_pad, external
/// data, malformed bytes).
final class ONNXReaderTests: XCTestCase {
  // MARK: Helpers

  func assertSameOutputs(_ a: Graph, _ b: Graph, _ inputs: [Tensor], file: StaticString = #filePath, line: UInt = #line)
    throws
  {
    let ya = try Executor(graph: a).run(inputs)
    let yb = try Executor(graph: b).run(inputs)
    XCTAssertEqual(ya.count, yb.count, file: file, line: line)
    for (p, q) in zip(ya, yb) {
      XCTAssertEqual(p.shape, q.shape, file: file, line: line)
      let worst = zip(p.scalars, q.scalars).map { abs($0 - $1) / max(1, abs($0)) }.max() ?? 0
      XCTAssertLessThanOrEqual(worst, 1e-6, file: file, line: line)
    }
  }

  func roundTrip(_ g: Graph, _ inputs: [Tensor], file: StaticString = #filePath, line: UInt = #line) throws -> Graph {
    let bytes = try ONNXWriter.serialize(g)
    let back = try ONNXReader.parse(bytes)
    XCTAssertEqual(
      back.inputs.count, g.inputs.count, "initializers must not become runtime inputs", file: file, line: line)
    XCTAssertEqual(back.outputs.count, g.outputs.count, file: file, line: line)
    XCTAssertEqual(back.parameterCount, g.parameterCount, file: file, line: line)
    try assertSameOutputs(g, back, inputs, file: file, line: line)
    return back
  }

  // MARK: Round trips through ONNXWriter

  func testConvBatchNormPoolGemmRoundTrip() throws {
    var rng = SeededGenerator(seed: 11)
    var g = Graph(name: "cnn")
    let x = g.addInput(name: "x", shape: [2, 3, 8, 8])
    var h = g.conv(
      x, weight: .randomNormal(shape: [4, 3, 3, 3], std: 0.3, generator: &rng),
      bias: .randomNormal(shape: [4], std: 0.1, generator: &rng), .square(3), name: "conv1")
    h = g.batchNorm(
      h, scale: .randomUniform(shape: [4], low: 0.5, high: 1.5, generator: &rng),
      bias: .randomNormal(shape: [4], std: 0.1, generator: &rng),
      mean: .randomNormal(shape: [4], std: 0.1, generator: &rng),
      variance: .randomUniform(shape: [4], low: 0.5, high: 1.5, generator: &rng), name: "bn1")
    h = g.activation(h, .relu, name: "relu1")
    h = g.maxPool(
      h, PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], ceilMode: true), name: "pool1")
    h = g.averagePool(
      h,
      PoolAttributes(kernel: [2, 2], strides: [1, 1], padsBegin: [0, 0], padsEnd: [1, 1], countIncludePad: false),
      name: "pool2")
    h = g.globalAveragePool(h, name: "gap")
    h = g.flatten(h, name: "flat")
    h = g.linear(
      h, weight: .randomNormal(shape: [5, 4], generator: &rng), bias: .randomNormal(shape: [5], generator: &rng),
      name: "fc")
    g.outputs = [g.softmax(h, axis: -1, name: "prob")]
    let back = try roundTrip(g, [.randomNormal(shape: [2, 3, 8, 8], generator: &rng)])
    XCTAssertEqual(back.nodes.map(\.op.typeName), g.nodes.map(\.op.typeName))
  }

  func testResidualAndActivationsRoundTrip() throws {
    var rng = SeededGenerator(seed: 12)
    var g = Graph(name: "residual")
    let x = g.addInput(name: "x", shape: [1, 4, 6, 6])
    var h = g.conv(x, weight: .randomNormal(shape: [4, 4, 3, 3], std: 0.3, generator: &rng), .square(3), name: "c1")
    h = g.activation(h, .leakyRelu(alpha: 0.1), name: "lrelu")
    h = g.add(h, x, name: "residual")
    h = g.activation(h, .clip(min: -0.5, max: 2), name: "clip")
    h = g.activation(h, .hardSigmoid(alpha: 0.3, beta: 0.4), name: "hsig")
    h = g.activation(h, .hardSwish, name: "hswish")
    h = g.activation(h, .tanh, name: "tanh")
    h = g.activation(h, .silu, name: "silu")
    h = g.binary(.sub, h, g.activation(x, .sigmoid, name: "sig"), name: "sub")
    h = g.binary(.div, h, g.addInitializer(name: "two", Tensor(shape: [1], repeating: 2)), name: "div")
    h = g.convTranspose(
      h, weight: .randomNormal(shape: [4, 2, 3, 3], std: 0.3, generator: &rng),
      bias: .randomNormal(shape: [2], generator: &rng),
      ConvAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], outputPadding: [1, 1]), name: "up")
    g.outputs = [h]
    let back = try roundTrip(g, [.randomNormal(shape: [1, 4, 6, 6], generator: &rng)])
    XCTAssertTrue(back.nodes.contains { $0.op == .activation(.silu) }, "Sigmoid·Mul reads back as SiLU")
    XCTAssertTrue(back.nodes.contains { $0.op == .activation(.sigmoid) }, "a Sigmoid that is not part of SiLU stays")
  }

  func testConcatReshapeTransposeMatMulRoundTrip() throws {
    var rng = SeededGenerator(seed: 13)
    var g = Graph(name: "concat")
    let x = g.addInput(name: "x", shape: [1, 2, 4, 4])
    let a = g.conv(x, weight: .randomNormal(shape: [3, 2, 1, 1], generator: &rng), .square(1), name: "a")
    let b = g.conv(x, weight: .randomNormal(shape: [5, 2, 3, 3], generator: &rng), .square(3, groups: 1), name: "b")
    var h = g.concat([a, b, x], axis: 1, name: "cat")
    h = g.reshape(h, to: [0, 10, -1], name: "reshape")
    h = g.addNode(.transpose(permutation: [0, 2, 1]), name: "t", inputs: [h])[0]
    let w = g.addInitializer(name: "w", .randomNormal(shape: [10, 3], generator: &rng))
    h = g.addNode(.matMul, name: "mm", inputs: [h, w])[0]
    h = g.dropout(h, ratio: 0.2, name: "drop")
    g.outputs = [h, a]
    _ = try roundTrip(g, [.randomNormal(shape: [1, 2, 4, 4], generator: &rng)])
  }

  func testPadResizeSoftmaxRoundTrip() throws {
    var rng = SeededGenerator(seed: 14)
    var g = Graph(name: "padresize")
    let x = g.addInput(name: "x", shape: [1, 2, 4, 5])
    var h = g.addNode(.pad(mode: .constant, pads: [0, 0, 1, 2, 0, 0, 2, 1], value: 0.5), name: "pad_c", inputs: [x])[0]
    h = g.addNode(.pad(mode: .reflect, pads: [0, 0, 1, 1, 0, 0, 1, 1], value: 0), name: "pad_r", inputs: [h])[0]
    h = g.addNode(.pad(mode: .edge, pads: [0, 0, 0, 1, 0, 0, 2, 0], value: 0), name: "pad_e", inputs: [h])[0]
    h = g.addNode(.resize(.nearest, scales: [1, 1, 2, 2], sizes: nil), name: "up_nearest", inputs: [h])[0]
    h = g.addNode(.resize(.linear, scales: nil, sizes: [1, 2, 9, 7]), name: "down_linear", inputs: [h])[0]
    h = g.softmax(h, axis: 1, name: "softmax")
    h = g.addNode(.identity, name: "id", inputs: [h])[0]
    g.outputs = [h]
    let back = try roundTrip(g, [.randomNormal(shape: [1, 2, 4, 5], generator: &rng)])
    let ops = back.nodes.map(\.op)
    XCTAssertTrue(ops.contains(.resize(.nearest, scales: [1, 1, 2, 2], sizes: nil)))
    XCTAssertTrue(ops.contains(.pad(mode: .constant, pads: [0, 0, 1, 2, 0, 0, 2, 1], value: 0.5)))
  }

  // MARK: Hand-encoded models

  enum Attr {
    case int(Int)
    case ints([Int])
    case float(Float)
    case string(String)
  }

  /// A small ONNX model written field by field, for what ONNXWriter never produces.
  struct HandModel {
    var opset = 13
    typealias Node = (name: String, op: String, inputs: [String], outputs: [String], attrs: [(String, Attr)])
    var nodes: [Node] = []
    /// name, dims, raw little-endian data, data type, external (location, offset, length).
    var initializers: [(name: String, dims: [Int], raw: [UInt8], type: Int, external: [(String, String)])] = []
    /// A nil dimension is symbolic ("N").
    var inputs: [(name: String, dims: [Int?])] = []
    var outputs: [String] = []

    mutating func floats(_ name: String, dims: [Int], _ v: [Float]) {
      initializers.append(
        (name, dims, v.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }, 1, []))
    }

    mutating func int64s(_ name: String, dims: [Int], _ v: [Int64]) {
      initializers.append((name, dims, v.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }, 7, []))
    }

    func bytes() -> [UInt8] {
      var e = ProtobufEncoder()
      e.int64(1, 8)
      e.message(7) { g in
        for n in nodes {
          g.message(1) { m in
            for i in n.inputs { m.string(1, i) }
            for o in n.outputs { m.string(2, o) }
            m.string(3, n.name)
            m.string(4, n.op)
            for (k, v) in n.attrs {
              m.message(5) { a in
                a.string(1, k)
                switch v {
                case .int(let i): a.int(3, i); a.int(20, 2)
                case .ints(let vs): a.packedInt(8, vs); a.int(20, 7)
                case .float(let f): a.float(2, f); a.int(20, 1)
                case .string(let s): a.string(4, s); a.int(20, 3)
                }
              }
            }
          }
        }
        g.string(2, "hand")
        for t in initializers {
          g.message(5) { m in
            m.packedInt(1, t.dims)
            m.int(2, t.type)
            m.string(8, t.name)
            if t.external.isEmpty {
              m.data(9, t.raw)
            } else {
              for (k, v) in t.external {
                m.message(13) {
                  $0.string(1, k); $0.string(2, v)
                }
              }
              m.int(14, 1)
            }
          }
        }
        for (name, dims) in inputs {
          g.message(11) { v in
            v.string(1, name)
            v.message(2) {
              $0.message(1) { t in
                t.int(1, 1)
                t.message(2) { s in
                  for d in dims { s.message(1) { if let d { $0.int(1, d) } else { $0.string(2, "N") } } }
                }
              }
            }
          }
        }
        for o in outputs { g.message(12) { $0.string(1, o) } }
      }
      e.message(8) {
        $0.string(1, ""); $0.int(2, opset)
      }
      return e.bytes
    }
  }

  func testUnknownOpNamesNodeOpAndOpset() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.nodes = [("weird_1", "FooBar", ["x"], ["y"], [])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("weird_1") && text.contains("FooBar") && text.contains("opset 13"), text)
  }

  /// The survey lists every obstacle at once: the input dimension that cannot be fixed (with its
  /// name), an unknown op, a node with a missing operand, and an unknown op after a failure;
  /// a node that only lacks a failed node's output is counted, not blamed.
  func testSurveyListsEverythingThatStandsInTheWay() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 3, nil, 8])]
    m.nodes = [
      ("r1", "Relu", ["x"], ["a"], []), ("f1", "FooBar", ["a"], ["b"], []), ("c1", "Conv", ["a"], ["c"], []),
      ("t1", "Transpose", ["b"], ["d"], [("perm", .ints([0, 2, 3, 1]))]), ("g1", "GridSample", ["d"], ["e"], []),
      ("p1", "Flatten", ["b"], ["f"], []), ("s1", "Sum", ["e", "f", "c"], ["y"], []),
    ]
    m.outputs = ["y"]
    XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("axis 2 ('N')"))
    let s = try ONNXReader.survey(m.bytes())
    XCTAssertEqual(s.problems.map(\.kind), [.input, .node, .node, .node], "\(s.problems)")
    XCTAssertEqual(s.problems.map(\.name), ["x", "f1", "c1", "g1"])
    XCTAssertTrue(s.problems[0].detail.contains("axis 2 ('N')"), s.problems[0].detail)
    XCTAssertTrue(s.problems[2].detail.contains("weights"), s.problems[2].detail)
    XCTAssertEqual(s.unsupportedOps, ["Conv", "FooBar", "GridSample"])
    XCTAssertEqual(s.opCounts["Relu"], 1)
    XCTAssertEqual(s.nodes, 7)
    XCTAssertFalse(s.importable)
    var fine = HandModel()
    fine.inputs = [("x", [1, 4])]
    fine.nodes = [("r", "Relu", ["x"], ["y"], [])]
    fine.outputs = ["y"]
    XCTAssertTrue(try ONNXReader.survey(fine.bytes()).importable)
    // A hostile input shape (too large to count, and symbolic) is reported, and the survey goes
    // on with ones instead of multiplying it.
    var huge = HandModel()
    huge.inputs = [("x", [1, 1 << 40, nil, 1 << 20])]
    huge.nodes = [("r", "Relu", ["x"], ["a"], []), ("f", "Flatten", ["a"], ["y"], [])]
    huge.outputs = ["y"]
    let h = try ONNXReader.survey(huge.bytes())
    XCTAssertEqual(h.problems.map(\.name), ["x"])
    XCTAssertEqual(h.uncheckedNodes, 0)
  }

  /// Slice and Split on a runtime tensor (ShuffleNet V2's channel split) become Slice nodes,
  /// at every opset's spelling: Slice's attributes (opset 9) and inputs (10+, INT64_MAX for "to
  /// the end", steps); Split's attribute `split` (11), input `split` (13), equal parts without
  /// either (13), and `num_outputs` with a smaller last part (18). The input counts up from 0,
  /// so every output says which elements it took.
  func testSliceAndSplitOnDataTensors() throws {
    func model(_ opset: Int, channels: Int, _ nodes: [HandModel.Node], outputs: [String], ints: [(String, [Int64])] = [])
      -> HandModel
    {
      var m = HandModel()
      m.opset = opset
      m.inputs = [("x", [1, channels, 2, 2])]
      for (name, v) in ints { m.int64s(name, dims: [v.count], v) }
      m.nodes = nodes
      m.outputs = outputs
      return m
    }
    /// The input's elements of these channels, in order.
    func channels(_ cs: [Int]) -> [Float] { cs.flatMap { c in (0..<4).map { Float(4 * c + $0) } } }
    func run(_ m: HandModel, channels n: Int) throws -> (Graph, [[Float]]) {
      let g = try ONNXReader.parse(m.bytes())
      let x = Tensor(shape: [1, n, 2, 2]) { for i in 0..<$0.count { $0[i] = Float(i) } }
      return (g, try Executor(graph: g).run([x]).map(\.scalars))
    }
    func sliceCount(_ g: Graph) -> Int { g.nodes.filter { if case .slice = $0.op { true } else { false } }.count }

    // Opset 13: Slice with a step and an end of INT64_MAX; Split by an input.
    var (g, ys) = try run(
      model(
        13, channels: 6,
        [
          ("slice", "Slice", ["x", "starts", "ends", "axes", "steps"], ["s"], []),
          ("split", "Split", ["x", "sizes"], ["p0", "p1", "p2"], [("axis", .int(1))]),
        ], outputs: ["s", "p0", "p1", "p2"],
        ints: [("starts", [1]), ("ends", [Int64.max]), ("axes", [1]), ("steps", [2]), ("sizes", [1, 2, 3])]),
      channels: 6)
    XCTAssertEqual(sliceCount(g), 4)
    XCTAssertEqual(g.nodes.map(\.name), ["slice", "split/0", "split/1", "split/2"])
    XCTAssertEqual(ys, [channels([1, 3, 5]), channels([0]), channels([1, 2]), channels([3, 4, 5])])
    // Opset 13, no sizes: equal parts.
    (g, ys) = try run(
      model(13, channels: 6, [("split", "Split", ["x"], ["a", "b"], [("axis", .int(-3))])], outputs: ["a", "b"]),
      channels: 6)
    XCTAssertEqual(ys, [channels([0, 1, 2]), channels([3, 4, 5])])
    // Opset 11: Split's sizes as an attribute.
    (g, ys) = try run(
      model(
        11, channels: 6, [("split", "Split", ["x"], ["a", "b"], [("axis", .int(1)), ("split", .ints([4, 2]))])],
        outputs: ["a", "b"]), channels: 6)
    XCTAssertEqual(ys, [channels([0, 1, 2, 3]), channels([4, 5])])
    // Opset 18: num_outputs; 5 channels in 3 parts of ⌈5/3⌉ = 2, the last one smaller.
    (g, ys) = try run(
      model(
        18, channels: 5,
        [("split", "Split", ["x"], ["a", "b", "c"], [("axis", .int(1)), ("num_outputs", .int(3))])],
        outputs: ["a", "b", "c"]), channels: 5)
    XCTAssertEqual(ys, [channels([0, 1]), channels([2, 3]), channels([4])])
    // Opset 9: Slice's bounds as attributes, negative ones counting from the end.
    (g, ys) = try run(
      model(
        9, channels: 6,
        [("slice", "Slice", ["x"], ["s"], [("starts", .ints([-2])), ("ends", .ints([100])), ("axes", .ints([1]))])],
        outputs: ["s"]), channels: 6)
    XCTAssertEqual(ys, [channels([4, 5])])

    // What does not fit is refused with the node's name.
    let badSizes = model(
      13, channels: 6, [("split_bad", "Split", ["x", "sizes"], ["a", "b"], [("axis", .int(1))])], outputs: ["a", "b"],
      ints: [("sizes", [2, 3])])
    var text = message { try ONNXReader.parse(badSizes.bytes()) }
    XCTAssertTrue(text.contains("split_bad") && text.contains("[2, 3]"), text)
    let zeroStep = model(
      13, channels: 6, [("slice_bad", "Slice", ["x", "starts", "ends", "axes", "steps"], ["s"], [])], outputs: ["s"],
      ints: [("starts", [0]), ("ends", [2]), ("axes", [1]), ("steps", [0])])
    text = message { try ONNXReader.parse(zeroStep.bytes()) }
    XCTAssertTrue(text.contains("slice_bad") && text.contains("step 0"), text)
    let empty = model(
      13, channels: 6, [("slice_empty", "Slice", ["x", "starts", "ends", "axes"], ["s"], [])], outputs: ["s"],
      ints: [("starts", [4]), ("ends", [2]), ("axes", [1])])
    text = message { try ONNXReader.parse(empty.bytes()) }
    XCTAssertTrue(text.contains("slice_empty") && text.contains("takes nothing"), text)
  }

  func testOpsetOutOfRange() throws {
    var m = HandModel()
    m.opset = 6
    m.inputs = [("x", [1, 4])]
    m.nodes = [("r", "Relu", ["x"], ["y"], [])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("opset 6"), text)
  }

  func testShapeChainFoldsIntoReshapeAndSymbolicBatch() throws {
    var m = HandModel()
    m.inputs = [("x", [nil, 2, 3, 4])]
    m.int64s("zero", dims: [], [0])
    m.int64s("axes", dims: [1], [0])
    m.int64s("minus1", dims: [1], [-1])
    m.nodes = [
      ("shape", "Shape", ["x"], ["s"], []),
      ("gather", "Gather", ["s", "zero"], ["b"], [("axis", .int(0))]),
      ("unsq", "Unsqueeze", ["b", "axes"], ["bu"], []),
      ("cat", "Concat", ["bu", "minus1"], ["target"], [("axis", .int(0))]),
      ("reshape", "Reshape", ["x", "target"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.shape(g.inputs[0]), [1, 2, 3, 4])
    // The batch taken from Shape(x)[0] stays symbolic: 0 copies the input's batch.
    XCTAssertEqual(g.nodes.map(\.op), [.reshape(shape: [0, -1])])
    XCTAssertEqual(g.shape(g.outputs[0]), [1, 24])
    XCTAssertEqual(try g.withBatch(3).shape(g.outputs[0]), [3, 24])
    XCTAssertTrue(g.initializers.isEmpty, "integer constants are attributes, not weights")
  }

  /// PyTorch's F.pad export: pads reshaped to pairs, reversed with a negative-step Slice,
  /// transposed and flattened, with integer arithmetic on a Shape on the way.
  func testPadIdiomSliceTransposeAndIntegerArithmeticFold() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 1, 2, 3])]
    m.int64s("pairs", dims: [4], [1, 2, 3, 4])  // (w_begin, w_end), (h_begin, h_end) as torch writes them
    m.int64s("zeros", dims: [4], [0, 0, 0, 0])
    m.int64s("shape2", dims: [2], [-1, 2])
    m.int64s("start", dims: [1], [-1])
    m.int64s("end", dims: [1], [Int64(-Int32.max)])
    m.int64s("axis0", dims: [1], [0])
    m.int64s("step", dims: [1], [-1])
    m.int64s("flat", dims: [1], [-1])
    m.int64s("two", dims: [], [2])
    m.int64s("idx3", dims: [], [3])
    m.nodes = [
      ("cat", "Concat", ["pairs", "zeros"], ["p8"], [("axis", .int(0))]),
      ("pairs2", "Reshape", ["p8", "shape2"], ["p42"], []),
      ("flip", "Slice", ["p42", "start", "end", "axis0", "step"], ["rev"], []),
      ("tr", "Transpose", ["rev"], ["t"], [("perm", .ints([1, 0]))]),
      ("flatten", "Reshape", ["t", "flat"], ["pads"], []),
      ("shape", "Shape", ["x"], ["s"], []),
      ("w", "Gather", ["s", "idx3"], ["width"], [("axis", .int(0))]),
      ("mul", "Mul", ["width", "two"], ["w2"], []),
      ("div", "Div", ["w2", "two"], ["w3"], []),
      ("sub", "Sub", ["w3", "two"], ["w1"], []),
      ("cast", "Cast", ["pads"], ["pads64"], [("to", .int(7))]),
      ("pad", "Pad", ["x", "pads64"], ["y"], []),
      ("castf", "Cast", ["y"], ["yf"], [("to", .int(1))]),
    ]
    m.outputs = ["yf"]
    let g = try ONNXReader.parse(m.bytes())
    // [[1,2],[3,4],[0,0],[0,0]] reversed → [[0,0],[0,0],[3,4],[1,2]], transposed, flattened:
    // begins (0, 0, 3, 1), ends (0, 0, 4, 2).
    XCTAssertEqual(g.nodes.first?.op, .pad(mode: .constant, pads: [0, 0, 3, 1, 0, 0, 4, 2], value: 0))
    XCTAssertEqual(g.shape(g.outputs[0]), [1, 1, 9, 6])
  }

  func testReduceMeanOverSpatialAxesIsGlobalPooling() throws {
    for (axes, keep, shape, want) in [
      ([1, 2], 0, [1, 2, 2, 3], [1, 3]), ([1, 2], 1, [1, 2, 2, 3], [1, 1, 1, 3]), ([2, 3], 0, [1, 3, 2, 2], [1, 3]),
      ([-1, -2], 1, [1, 3, 2, 2], [1, 3, 1, 1]),
    ] {
      var m = HandModel()
      m.inputs = [("x", shape)]
      m.nodes = [("mean", "ReduceMean", ["x"], ["y"], [("axes", .ints(axes)), ("keepdims", .int(keep))])]
      m.outputs = ["y"]
      let g = try ONNXReader.parse(m.bytes())
      XCTAssertEqual(g.shape(g.outputs[0]), want, "axes \(axes) keepdims \(keep)")
      let x = Tensor(shape: shape) { o in for i in 0..<12 { o[i] = Float(i * i) } }
      let y = try Executor(graph: g).run([x])[0]
      // Channel c's mean: NHWC channels are every third element, NCHW channels are runs of 4.
      let nhwc = axes == [1, 2]
      for c in 0..<3 {
        let members = (0..<12).filter { nhwc ? $0 % 3 == c : $0 / 4 == c }
        let mean = members.map { Float($0 * $0) }.reduce(0, +) / 4
        XCTAssertEqual(y.scalars[c], mean, accuracy: 1e-4, "axes \(axes) channel \(c)")
      }
    }
  }

  /// ReduceMean and ReduceSum over any axes (a transformer's mean over tokens, ResNeSt's sum
  /// over its radix), with and without keepdims, against sums written out; axes out of range
  /// are refused with the node's name.
  func testReduceMeanAndSumOverAnyAxes() throws {
    let shape = [2, 3, 4, 5]
    let x = Tensor(shape: shape) { o in for i in 0..<120 { o[i] = Float((i * 37) % 23) - 11 } }
    func index(_ c: [Int]) -> Int { ((c[0] * 3 + c[1]) * 4 + c[2]) * 5 + c[3] }
    for (op, axes, keep) in [
      ("ReduceMean", [1], 0), ("ReduceMean", [1], 1), ("ReduceSum", [2], 1), ("ReduceMean", [0, 3], 0),
      ("ReduceSum", [-1, 1], 0), ("ReduceMean", [3], 1),
    ] {
      var m = HandModel()
      m.inputs = [("x", shape)]
      if op == "ReduceSum" {
        m.int64s("axes", dims: [axes.count], axes.map(Int64.init))
        m.nodes = [("reduce", op, ["x", "axes"], ["y"], [("keepdims", .int(keep))])]
      } else {
        m.nodes = [("reduce", op, ["x"], ["y"], [("axes", .ints(axes)), ("keepdims", .int(keep))])]
      }
      m.outputs = ["y"]
      let label = "\(op) axes \(axes) keepdims \(keep)"
      let g = try ONNXReader.parse(m.bytes())
      let reduced = Set(axes.map { $0 < 0 ? $0 + 4 : $0 })
      let want = (0..<4).compactMap { reduced.contains($0) ? (keep == 1 ? 1 : nil) : shape[$0] }
      XCTAssertEqual(g.shape(g.outputs[0]), want, label)
      let y = try Executor(graph: g).run([x])[0]
      // Every output element: the sum (or mean) over the reduced axes at its kept coordinates.
      var expected: [[Int]: Float] = [:]
      var counts: [[Int]: Int] = [:]
      for a in 0..<2 { for b in 0..<3 { for c in 0..<4 { for d in 0..<5 {
        let coords = [a, b, c, d]
        let key = (0..<4).filter { !reduced.contains($0) }.map { coords[$0] }
        expected[key, default: 0] += x.scalars[index(coords)]
        counts[key, default: 0] += 1
      } } } }
      let keys = expected.keys.sorted { $0.lexicographicallyPrecedes($1) }
      XCTAssertEqual(y.count, keys.count, label)
      for (k, key) in keys.enumerated() {
        let v = op == "ReduceSum" ? expected[key]! : expected[key]! / Float(counts[key]!)
        XCTAssertEqual(y.scalars[k], v, accuracy: 1e-4, "\(label) at \(key)")
      }
    }
    var m = HandModel()
    m.inputs = [("x", [1, 2, 2, 3])]
    m.nodes = [("mean", "ReduceMean", ["x"], ["y"], [("axes", .ints([4])), ("keepdims", .int(0))])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("mean") && text.contains("ReduceMean") && text.contains("out of range"), text)
  }

  func testCastOfFloatDataToAnotherTypeIsRefused() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.nodes = [("to_int", "Cast", ["x"], ["y"], [("to", .int(6))])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("to_int") && text.contains("element type 6"), text)
  }

  func testAutoPadResolvesToExplicitPads() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 1, 5, 4])]
    m.floats("w", dims: [1, 1, 3, 2], [Float](repeating: 1, count: 6))
    m.nodes = [
      ("conv", "Conv", ["x", "w"], ["y"], [("auto_pad", .string("SAME_UPPER")), ("strides", .ints([2, 1]))]),
      ("pool", "MaxPool", ["y"], ["z"], [("auto_pad", .string("SAME_LOWER")), ("kernel_shape", .ints([2, 2]))]),
    ]
    m.outputs = ["z"]
    let g = try ONNXReader.parse(m.bytes())
    guard case .conv(let a) = g.nodes[0].op, case .maxPool(let p) = g.nodes[1].op else { return XCTFail("\(g.nodes)") }
    // H: 5 at stride 2 → 3, total pad 2 → 1/1. W: 4 at stride 1, kernel 2 → total 1 → 0/1 (upper).
    XCTAssertEqual(a.padsBegin, [1, 0])
    XCTAssertEqual(a.padsEnd, [1, 1])
    XCTAssertEqual(p.padsBegin, [1, 1])
    XCTAssertEqual(p.padsEnd, [0, 0])
    XCTAssertEqual(g.shape(g.outputs[0]), [1, 1, 3, 4])
  }

  func testConstantNodesAndExternalData() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-onnx-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let w: [Float] = [1, -2, 3.5, 0.25]
    try Data(
      [UInt8](repeating: 0xee, count: 8) + w.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
    )
    .write(to: dir.appendingPathComponent("weights.bin"))
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.initializers.append(("w", [4], [], 1, [("location", "weights.bin"), ("offset", "8"), ("length", "16")]))
    m.nodes = [
      ("c", "Constant", [], ["scale"], [("value_float", .float(3))]),
      ("add", "Add", ["x", "w"], ["y"], []),
      ("mul", "Mul", ["y", "scale"], ["z"], []),
    ]
    m.outputs = ["z"]
    try m.bytes().withUnsafeBufferPointer { try Data(buffer: $0).write(to: dir.appendingPathComponent("m.onnx")) }
    let g = try ONNXReader.read(dir.appendingPathComponent("m.onnx"))
    let y = try Executor(graph: g).run([try Tensor(shape: [1, 4], values: [1, 1, 1, 1])])
    XCTAssertEqual(y[0].scalars, w.map { ($0 + 1) * 3 })

    var bad = m
    bad.initializers[0].external = [("location", "weights.bin"), ("offset", "16"), ("length", "16")]
    let text = message { try ONNXReader.parse(bad.bytes(), baseDirectory: dir) }
    XCTAssertTrue(text.contains("truncated") && text.contains("'w'"), text)
    var escape = m
    escape.initializers[0].external = [("location", "../weights.bin")]
    XCTAssertTrue(message { try ONNXReader.parse(escape.bytes(), baseDirectory: dir) }.contains("leaves"))
  }

  func testFloat16DoubleAndInt32ConstantsConvert() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    let halves: [UInt16] = [0x3C00, 0xC000, 0x3800, 0x7BFF]  // 1, -2, 0.5, 65504
    m.initializers.append(("h", [4], halves.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }, 10, []))
    let doubles: [Double] = [0.125, -1, 3, 1e-3]
    m.initializers.append(
      ("d", [1, 4], doubles.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }, 11, []))
    let shape: [Int32] = [2, 2]
    m.initializers.append(("s", [2], shape.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }, 6, []))
    m.nodes = [
      ("add", "Add", ["x", "h"], ["y"], []), ("mul", "Mul", ["y", "d"], ["z"], []),
      ("r", "Reshape", ["z", "s"], ["out"], []),
    ]
    m.outputs = ["out"]
    let g = try ONNXReader.parse(m.bytes())
    let out = try Executor(graph: g).run([Tensor(shape: [1, 4], repeating: 0)])[0]
    XCTAssertEqual(out.shape, [2, 2])
    XCTAssertEqual(out.scalars, [0.125, 2, 1.5, 65504 * Float(1e-3)])
  }

  func testAbsurdAndMismatchedDimsAreRejected() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.nodes = [("add", "Add", ["x", "w"], ["y"], [])]
    m.outputs = ["y"]
    m.initializers = [("w", [1 << 30, 1 << 30], [0, 0, 0, 0], 1, [])]
    XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("more than 2147483647 elements"))
    m.initializers = [("w", [-1], [0, 0, 0, 0], 1, [])]
    XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("dimension -1"))
    m.initializers = [("w", [4], [0, 0, 0, 0], 1, [])]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("4 bytes of raw_data") && text.contains("need 16"), text)
    // Shape operands whose products would overflow later shape arithmetic.
    var r = HandModel()
    r.inputs = [("x", [1, 4])]
    r.int64s("s", dims: [3], [65536, 65536, 65536])
    r.floats("scales", dims: [2], [1, .infinity])
    r.nodes = [("reshape", "Reshape", ["x", "s"], ["y"], [])]
    r.outputs = ["y"]
    XCTAssertTrue(message { try ONNXReader.parse(r.bytes()) }.contains("too large"))
    r.nodes = [("rs", "Resize", ["x", "", "scales"], ["y"], [("mode", .string("linear"))])]
    XCTAssertTrue(message { try ONNXReader.parse(r.bytes()) }.contains("do not fit"))
  }

  func testSoftmaxBeforeOpset13() throws {
    var m = HandModel()
    m.opset = 11
    m.inputs = [("x", [1, 2, 3])]
    m.nodes = [("sm", "Softmax", ["x"], ["y"], [])]
    m.outputs = ["y"]
    XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("flattens"))
    m.inputs = [("x", [2, 3])]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.nodes.map(\.op), [.softmax(axis: 1)])
  }

  func testUnsupportedResizeModeNamesAttribute() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 1, 2, 2])]
    m.floats("scales", dims: [4], [1, 1, 2, 2])
    m.nodes = [("rs", "Resize", ["x", "", "scales"], ["y"], [("mode", .string("cubic"))])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("'mode'") && text.contains("cubic") && text.contains("rs"), text)
  }

  func testCycleAndDanglingInputAreReported() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.nodes = [("a", "Add", ["x", "b_out"], ["a_out"], []), ("b", "Relu", ["a_out"], ["b_out"], [])]
    m.outputs = ["b_out"]
    XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("cycle"))
    m.nodes = [("a", "Add", ["x", "ghost"], ["a_out"], [])]
    m.outputs = ["a_out"]
    XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("ghost"))
  }

  // MARK: Malformed bytes

  func testEveryTruncationThrows() throws {
    var rng = SeededGenerator(seed: 15)
    var g = Graph(name: "small")
    let x = g.addInput(name: "x", shape: [1, 2, 4, 4])
    var h = g.conv(
      x, weight: .randomNormal(shape: [2, 2, 3, 3], generator: &rng), bias: Tensor(zeros: [2]), .square(3), name: "conv"
    )
    h = g.activation(h, .relu, name: "relu")
    h = g.reshape(h, to: [1, -1], name: "flat")
    g.outputs = [h]
    let bytes = try ONNXWriter.serialize(g)
    XCTAssertNoThrow(try ONNXReader.parse(bytes))
    for n in 0..<bytes.count {
      XCTAssertThrowsError(try ONNXReader.parse(Array(bytes[..<n])), "prefix of \(n) bytes")
    }
  }

  func testMalformedWireDataNamesOffset() {
    // Field 1 (varint) whose varint has 11 bytes: overflows 64 bits.
    let overflow: [UInt8] = [0x08] + [UInt8](repeating: 0xff, count: 10) + [0x01]
    XCTAssertEqual(message { try ONNXReader.parse(overflow) }, "ONNX: malformed at byte 1: varint overflows 64 bits")
    // A varint cut short.
    XCTAssertTrue(message { try ONNXReader.parse([0x08, 0x80]) }.hasPrefix("ONNX: truncated at byte 1"))
    // Wire types 3 (start group) and 7 (undefined).
    XCTAssertTrue(message { try ONNXReader.parse([0x0b]) }.hasPrefix("ONNX: malformed at byte 0: wire type 3"))
    XCTAssertTrue(
      message { try ONNXReader.parse([0x08, 0x08, 0x0f]) }.hasPrefix("ONNX: malformed at byte 2: wire type 7"))
    // A length past the end of the file, and one past the end of its enclosing message.
    XCTAssertTrue(message { try ONNXReader.parse([0x3a, 0x05, 0x01]) }.hasPrefix("ONNX: truncated at byte 1"))
    XCTAssertTrue(
      message { try ONNXReader.parse([0x3a, 0x03, 0x0a, 0x05, 0x00, 0, 0, 0, 0, 0]) }.hasPrefix(
        "ONNX: truncated at byte 3"))
    // Field number 0.
    XCTAssertTrue(message { try ONNXReader.parse([0x00]) }.hasPrefix("ONNX: malformed at byte 0: field number 0"))
  }

  func testDecoderReadsWhatTheEncoderWrites() throws {
    var e = ProtobufEncoder()
    e.int64(1, -5)
    e.packedInt(2, [1, 300, -1])
    e.int(2, 7)
    e.packedFloat(3, [1.5, -2])
    e.float(3, 0.25)
    e.fixed32(9, 123)  // unknown fields of each wire type are skipped
    e.double(10, 1)
    e.uint64(11, .max)
    e.string(12, "skip me")
    e.string(4, "name")
    var d = ProtobufDecoder(e.bytes)
    var ints: [Int64] = []
    var floats: [Float] = []
    var first: Int64 = 0
    var name = ""
    while let (f, wt) = try d.nextField() {
      switch f {
      case 1: first = try d.readInt64(field: f, wt)
      case 2: try d.readRepeatedInt64(field: f, wt, into: &ints)
      case 3: try d.readRepeatedFloat(field: f, wt, into: &floats)
      case 4: name = try d.readString(field: f, wt)
      default: try d.skip(wt)
      }
    }
    XCTAssertEqual(first, -5)
    XCTAssertEqual(ints, [1, 300, -1, 7])
    XCTAssertEqual(floats, [1.5, -2, 0.25])
    XCTAssertEqual(name, "name")
  }
}
