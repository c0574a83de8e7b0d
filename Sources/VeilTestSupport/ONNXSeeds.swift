import Foundation
import VeilFormats
import VeilGraph
import VeilTensor

/// Small ONNX models that reach most of the reader: the fuzz tests and the fuzzing harness's
/// seeds (Fuzz/) start from these.
public enum ONNXSeeds {
  /// A small model that uses most of the op set, as Veil writes it.
  public static func convNet() throws -> [UInt8] {
    var rng = SeededGenerator(seed: 11)
    var g = Graph(name: "fuzz-seed")
    let x = g.addInput(name: "x", shape: [1, 3, 16, 16])
    var y = g.conv(
      x, weight: .randomNormal(shape: [8, 3, 3, 3], generator: &rng), bias: Tensor(zeros: [8]), .square(3), name: "conv"
    )
    y = g.batchNorm(
      y, scale: Tensor(shape: [8], repeating: 1), bias: Tensor(zeros: [8]), mean: Tensor(zeros: [8]),
      variance: Tensor(shape: [8], repeating: 1), name: "bn")
    y = g.activation(y, .relu, name: "relu")
    let z = g.activation(y, .hardSwish, name: "hs")
    y = g.add(y, z, name: "add")
    y = g.maxPool(y, PoolAttributes(kernel: [2, 2], strides: [2, 2]), name: "pool")
    y = g.addNode(.pad(mode: .reflect, pads: [0, 0, 1, 1, 0, 0, 1, 1], value: 0), name: "pad", inputs: [y])[0]
    y = g.addNode(.resize(.nearest, scales: [1, 1, 2, 2], sizes: nil), name: "up", inputs: [y])[0]
    y = g.concat([y, y], axis: 1, name: "cat")
    y = g.globalAveragePool(y, name: "gap")
    y = g.flatten(y, name: "flat")
    y = g.linear(y, weight: .randomNormal(shape: [4, 16], generator: &rng), bias: Tensor(zeros: [4]), name: "fc")
    g.outputs = [g.softmax(y, name: "prob")]
    return try ONNXWriter.serialize(g)
  }

  /// A hand-written opset-13 model of what exporters leave and Veil's writer never writes:
  /// the Shape → Gather → Unsqueeze → Concat → Reshape chain of a symbolic batch, integer
  /// arithmetic, Slice, Transpose, ConstantOfShape and Cast over constants, float16, double and
  /// int32 initializers, and a float constant reshaped at import.
  public static func shapeFolding() -> [UInt8] {
    var m = ONNXModelBuilder()
    // Initializers: weights in raw data, float16, double and int32 forms, and shape operands.
    m.tensor("W", dims: [192, 4], type: 1) { e in e.data(9, (0..<(192 * 4)).flatMap { k in le(Float(k % 7) / 7) }) }
    m.tensor("b16", dims: [4], type: 10) { $0.data(9, [0, 0x3C, 0, 0x40, 0, 0xBC, 0xFF, 0x7B]) }
    m.tensor("bD", dims: [4], type: 11) { e in for v in [0.5, -1, 2, 1e300] { e.double(10, v) } }
    m.tensor("i32", dims: [3, 2], type: 6) { $0.packedInt(5, [1, -2, 3, 4, 5, 6]) }
    m.ints("zero", dims: [], [0])
    m.ints("axes0", dims: [1], [0])
    m.ints("minus1", dims: [1], [-1])
    m.ints("shape23", dims: [2], [2, 3])
    m.ints("seq", dims: [6], [1, 2, 3, 4, 5, 6])
    m.ints("starts", dims: [1], [1])
    m.ints("ends", dims: [1], [5])
    m.ints("steps", dims: [1], [2])
    m.ints("four", dims: [1], [4])
    m.tensor("F22", dims: [2, 2], type: 1) { $0.packedFloat(4, [1, 2, 3, 4]) }
    // The symbolic batch's shape chain, as torch.onnx writes it.
    m.node("Shape", ["x"], ["s"])
    m.node("Gather", ["s", "zero"], ["n"]) { ONNXModelBuilder.int(&$0, "axis", 0) }
    m.node("Unsqueeze", ["n", "axes0"], ["n1"])
    m.node("Concat", ["n1", "minus1"], ["target"]) { ONNXModelBuilder.int(&$0, "axis", 0) }
    m.node("Reshape", ["x", "target"], ["flat"])
    m.node("Gemm", ["flat", "W"], ["y0"])
    m.node("Add", ["y0", "b16"], ["y1"])
    m.node("Add", ["y1", "bD"], ["y"])
    // Integer folding of every kind the reader does.
    m.node("ConstantOfShape", ["shape23"], ["ones"]) { e in
      e.message(5) { a in
        a.string(1, "value")
        a.message(5) { t in ONNXModelBuilder.tensorFields(&t, name: "v", dims: [1], type: 1) { $0.packedFloat(4, [1]) }
        }
        a.int(20, 4)
      }
    }
    m.node("Slice", ["seq", "starts", "ends", "axes0", "steps"], ["sl"])
    m.node("Reshape", ["seq", "shape23"], ["seq23"])
    m.node("Transpose", ["seq23"], ["tr"]) { ONNXModelBuilder.ints(&$0, "perm", [1, 0]) }
    m.node("Add", ["tr", "tr"], ["ad"])
    m.node("Mul", ["ad", "sl"], ["mu"])
    m.node("Sub", ["mu", "i32"], ["su"])
    m.node("Div", ["su", "four"], ["dv"])
    m.node("Cast", ["dv"], ["cf"]) { ONNXModelBuilder.int(&$0, "to", 1) }
    m.node("Squeeze", ["n1", "axes0"], ["sq"])
    m.node("Reshape", ["F22", "four"], ["F4"])
    m.node("Flatten", ["F22"], ["Ff"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.node("Constant", [], ["c"]) { ONNXModelBuilder.ints(&$0, "value_ints", [3, 1, 4]) }
    m.input("x", dims: [nil, 3, 8, 8])
    m.output("y", dims: [nil, 4])
    return m.model()
  }

  /// Hand-written models of the op table's corners, each a seed of its own so that a mutation
  /// of one stays small: attributes that pick a path (auto_pad, group, dilations, ceil_mode,
  /// count_include_pad, output_padding, transB, edge and reflect padding, linear resizing),
  /// the exporters' patterns the importer fuses (SiLU, HardSwish, erf GELU, pre-opset-17
  /// LayerNorm), the transformer ops of later opsets, and integer folding through Range, Where,
  /// ScatterND and GatherND. Each must import; the fuzzer then bends its fields.
  public static func opCorners() -> [(name: String, bytes: [UInt8])] {
    [("vision-ops.onnx", visionOps()), ("fused-patterns.onnx", fusedPatterns()),
     ("transformer-ops.onnx", transformerOps()), ("integer-folding.onnx", integerFolding()),
     ("legacy-opset.onnx", legacyOpset())]
  }

  /// Opset 9, where what later opsets take as inputs are attributes: Pad's pads and value,
  /// Clip's bounds, Slice's starts, ends and axes, Split's sizes, Dropout's ratio, the axes of
  /// Squeeze and Unsqueeze; and Softmax before opset 13 (flattening at its axis).
  static func legacyOpset() -> [UInt8] {
    var m = ONNXModelBuilder()
    m.node("Pad", ["x"], ["p"]) { e in
      ONNXModelBuilder.ints(&e, "pads", [0, 0, 1, 1, 0, 0, 1, 1])
      ONNXModelBuilder.float(&e, "value", 0.5)
    }
    m.node("Clip", ["p"], ["c"]) { e in
      ONNXModelBuilder.float(&e, "min", -1)
      ONNXModelBuilder.float(&e, "max", 1)
    }
    m.node("Slice", ["c"], ["s"]) { e in
      ONNXModelBuilder.ints(&e, "starts", [1])
      ONNXModelBuilder.ints(&e, "ends", [7])
      ONNXModelBuilder.ints(&e, "axes", [2])
    }
    m.node("Split", ["s"], ["a", "b"]) { e in
      ONNXModelBuilder.int(&e, "axis", 1)
      ONNXModelBuilder.ints(&e, "split", [1, 3])
    }
    m.node("Concat", ["b", "a"], ["cc"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.node("Dropout", ["cc"], ["d"]) { ONNXModelBuilder.float(&$0, "ratio", 0.1) }
    m.node("MaxPool", ["d"], ["mp"]) { e in
      ONNXModelBuilder.ints(&e, "kernel_shape", [2, 2])
      ONNXModelBuilder.ints(&e, "strides", [2, 2])
    }
    m.node("GlobalAveragePool", ["mp"], ["g"])
    m.node("Softmax", ["g"], ["sm"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.node("Squeeze", ["sm"], ["sq"]) { ONNXModelBuilder.ints(&$0, "axes", [2, 3]) }
    m.node("Unsqueeze", ["sq"], ["u"]) { ONNXModelBuilder.ints(&$0, "axes", [2]) }
    m.node("Flatten", ["u"], ["y"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.input("x", dims: [1, 4, 6, 6])
    m.output("y", dims: [1, 4])
    return m.model(opset: 9)
  }

  /// Convolutions, pooling, normalisation and activations with the attributes that choose paths.
  static func visionOps() -> [UInt8] {
    var m = ONNXModelBuilder()
    m.floats("Wg", dims: [4, 2, 3, 3], (0..<72).map { Float($0 % 5) / 5 - 0.4 })
    m.floats("bg", dims: [4], [0.1, -0.1, 0.2, 0])
    m.floats("Wt", dims: [4, 2, 2, 2], (0..<32).map { Float($0 % 3) / 3 })
    m.floats("one4", dims: [4], [1, 1, 1, 1])
    m.floats("zero4", dims: [4], [0, 0, 0, 0])
    m.floats("lo", dims: [], [-1])
    m.floats("hi", dims: [], [6])
    m.floats("Wf", dims: [3, 4], (0..<12).map { Float($0) / 12 })
    m.floats("scales", dims: [4], [1, 1, 2, 2])
    m.floats("padValue", dims: [], [0.5])
    m.ints("pads", dims: [8], [0, 0, 1, 2, 0, 0, 2, 1])
    m.ints("halves", dims: [2], [2, 2])
    m.node("Conv", ["x", "Wg", "bg"], ["c1"]) { e in
      ONNXModelBuilder.int(&e, "group", 2)
      ONNXModelBuilder.ints(&e, "dilations", [2, 2])
      ONNXModelBuilder.string(&e, "auto_pad", "SAME_LOWER")
    }
    m.node("BatchNormalization", ["c1", "one4", "zero4", "zero4", "one4"], ["bn"]) {
      ONNXModelBuilder.float(&$0, "epsilon", 1e-3)
    }
    m.node("LeakyRelu", ["bn"], ["lr"]) { ONNXModelBuilder.float(&$0, "alpha", 0.1) }
    m.node("HardSigmoid", ["lr"], ["hsg"]) { e in
      ONNXModelBuilder.float(&e, "alpha", 1.0 / 6)
      ONNXModelBuilder.float(&e, "beta", 0.5)
    }
    m.node("Mul", ["lr", "hsg"], ["hsw"])
    m.node("Clip", ["hsw", "lo", "hi"], ["cl"])
    m.node("MaxPool", ["cl"], ["mp"]) { e in
      ONNXModelBuilder.ints(&e, "kernel_shape", [3, 3])
      ONNXModelBuilder.ints(&e, "strides", [2, 2])
      ONNXModelBuilder.string(&e, "auto_pad", "SAME_UPPER")
    }
    m.node("AveragePool", ["mp"], ["ap"]) { e in
      ONNXModelBuilder.ints(&e, "kernel_shape", [2, 2])
      ONNXModelBuilder.ints(&e, "strides", [2, 2])
      ONNXModelBuilder.ints(&e, "pads", [1, 1, 0, 0])
      ONNXModelBuilder.int(&e, "ceil_mode", 1)
      ONNXModelBuilder.int(&e, "count_include_pad", 1)
    }
    m.node("LRN", ["ap"], ["lrn"]) { ONNXModelBuilder.int(&$0, "size", 3) }
    m.node("ConvTranspose", ["lrn", "Wt"], ["ct"]) { e in
      ONNXModelBuilder.int(&e, "group", 2)
      ONNXModelBuilder.ints(&e, "strides", [2, 2])
      ONNXModelBuilder.ints(&e, "output_padding", [1, 1])
    }
    m.node("Split", ["ct", "halves"], ["s1", "s2"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.node("Sum", ["s1", "s2"], ["sm"])
    m.node("Tanh", ["sm"], ["th"])
    m.node("Sigmoid", ["th"], ["sg"])
    m.node("Relu", ["sg"], ["rl"])
    m.node("Sqrt", ["rl"], ["sq"])
    m.node("Dropout", ["sq"], ["dp"])
    m.node("Pad", ["dp", "pads", "padValue"], ["pc"])
    m.node("Pad", ["pc", "pads"], ["pe"]) { ONNXModelBuilder.string(&$0, "mode", "edge") }
    m.node("Resize", ["pe", "", "scales"], ["rs"]) { ONNXModelBuilder.string(&$0, "mode", "linear") }
    m.node("Concat", ["rs", "rs"], ["cc"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.node("GlobalAveragePool", ["cc"], ["gap"])
    m.node("Flatten", ["gap"], ["fl"])
    m.node("Gemm", ["fl", "Wf"], ["y"]) { ONNXModelBuilder.int(&$0, "transB", 1) }
    m.input("x", dims: [1, 4, 12, 12])
    m.output("y", dims: [1, 3])
    return m.model()
  }

  /// What exporters write for SiLU, HardSwish, the erf GELU and LayerNorm before opset 17.
  static func fusedPatterns() -> [UInt8] {
    var m = ONNXModelBuilder()
    for (name, v) in [("sqrt2", 1.4142135), ("one", 1), ("half", 0.5), ("two", 2), ("eps", 1e-5), ("three", 3), ("six", 6), ("zero", 0)]
      as [(String, Float)]
    {
      m.floats(name, dims: [], [v])
    }
    m.floats("gamma", dims: [16], (0..<16).map { 1 + Float($0) / 16 })
    m.floats("beta", dims: [16], (0..<16).map { Float($0) / 32 })
    m.floats("W", dims: [16, 16], (0..<256).map { Float($0 % 9) / 9 - 0.5 })
    m.node("Sigmoid", ["x"], ["sg"])
    m.node("Mul", ["x", "sg"], ["silu"])
    m.node("Add", ["silu", "three"], ["p3"])
    m.node("Clip", ["p3", "zero", "six"], ["r6"])
    m.node("Mul", ["silu", "r6"], ["m6"])
    m.node("Div", ["m6", "six"], ["hswish"])
    m.node("Div", ["hswish", "sqrt2"], ["d"])
    m.node("Erf", ["d"], ["e"])
    m.node("Add", ["e", "one"], ["a"])
    m.node("Mul", ["hswish", "a"], ["ma"])
    m.node("Mul", ["ma", "half"], ["gelu"])
    m.node("ReduceMean", ["gelu"], ["mu"]) { ONNXModelBuilder.ints(&$0, "axes", [-1]) }
    m.node("Sub", ["gelu", "mu"], ["dd"])
    m.node("Pow", ["dd", "two"], ["sq"])
    m.node("ReduceMean", ["sq"], ["vr"]) { ONNXModelBuilder.ints(&$0, "axes", [-1]) }
    m.node("Add", ["vr", "eps"], ["ve"])
    m.node("Sqrt", ["ve"], ["sd"])
    m.node("Div", ["dd", "sd"], ["nrm"])
    m.node("Mul", ["nrm", "gamma"], ["ng"])
    m.node("Add", ["ng", "beta"], ["ln"])
    m.node("MatMul", ["ln", "W"], ["mm"])
    m.node("Transpose", ["mm"], ["tr"]) { ONNXModelBuilder.ints(&$0, "perm", [0, 2, 1]) }
    m.node("Softmax", ["tr"], ["y"]) { ONNXModelBuilder.int(&$0, "axis", -1) }
    m.input("x", dims: [1, 8, 16])
    m.output("y", dims: [1, 16, 8])
    return m.model()
  }

  /// LayerNormalization (17), Gelu (20), Einsum, a float Gather, Expand, the axes inputs of
  /// opset 18's reductions and Squeeze, a Slice that steps backwards.
  static func transformerOps() -> [UInt8] {
    var m = ONNXModelBuilder()
    m.floats("scale", dims: [8], (0..<8).map { 1 - Float($0) / 16 })
    m.floats("bias", dims: [8], (0..<8).map { Float($0) / 16 })
    m.floats("W", dims: [1, 6, 8], (0..<48).map { Float($0 % 7) / 7 - 0.5 })
    m.ints("index", dims: [], [1])
    m.ints("wide", dims: [3], [1, 3, 6])
    m.ints("axes0", dims: [1], [0])
    m.ints("axesLast", dims: [1], [-1])
    m.ints("starts", dims: [1], [-1])
    m.ints("ends", dims: [1], [-100])
    m.ints("steps", dims: [1], [-2])
    m.node("LayerNormalization", ["x", "scale", "bias"], ["ln"]) { e in
      ONNXModelBuilder.int(&e, "axis", -1)
      ONNXModelBuilder.float(&e, "epsilon", 1e-6)
    }
    m.node("Gelu", ["ln"], ["ge"]) { ONNXModelBuilder.string(&$0, "approximate", "tanh") }
    m.node("Einsum", ["ge", "W"], ["es"]) { ONNXModelBuilder.string(&$0, "equation", "bij,bkj->bik") }
    m.node("Gather", ["es", "index"], ["g"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.node("Unsqueeze", ["g", "axes0"], ["u"])
    m.node("Expand", ["u", "wide"], ["ex"])
    m.node("Slice", ["ex", "starts", "ends", "axesLast", "steps"], ["sl"])
    m.node("ReduceSum", ["sl", "axesLast"], ["rs"])
    m.node("ReduceL2", ["ex", "axesLast"], ["r2"]) { ONNXModelBuilder.int(&$0, "keepdims", 0) }
    m.node("Squeeze", ["rs", "axesLast"], ["sq"])
    m.node("Add", ["sq", "r2"], ["y"])
    m.input("x", dims: [1, 4, 8])
    m.output("y", dims: [1, 3])
    return m.model(opset: 20)
  }

  /// Integers computed from constants the way exporters compute masks and positions: Range,
  /// Equal, Where, Mod, Not, Less, ScatterND, GatherND, ConstantOfShape; then a float.
  static func integerFolding() -> [UInt8] {
    var m = ONNXModelBuilder()
    for (name, v) in [("start", 0), ("limit", 6), ("delta", 1), ("two", 2), ("three", 3)] as [(String, Int64)] {
      m.ints(name, dims: [], [v])
    }
    m.ints("where", dims: [2, 1], [1, 4])
    m.ints("updates", dims: [2], [10, 20])
    m.ints("pick", dims: [1, 1], [2])
    m.ints("shape16", dims: [2], [1, 6])
    m.node("Range", ["start", "limit", "delta"], ["r"])
    m.node("Mod", ["r", "two"], ["odd"])
    m.node("Equal", ["odd", "start"], ["even"])
    m.node("Not", ["even"], ["notEven"])
    m.node("Less", ["r", "three"], ["low"])
    m.node("Where", ["low", "r", "three"], ["capped"])
    m.node("ScatterND", ["capped", "where", "updates"], ["scattered"])
    m.node("GatherND", ["scattered", "pick"], ["picked"])
    m.node("ConstantOfShape", ["shape16"], ["ones"]) { e in
      e.message(5) { a in
        a.string(1, "value")
        a.message(5) { t in ONNXModelBuilder.tensorFields(&t, name: "v", dims: [1], type: 7) { $0.packedInt64(7, [1]) } }
        a.int(20, 4)
      }
    }
    m.node("Reshape", ["scattered", "shape16"], ["row"])
    m.node("Add", ["row", "ones"], ["sum"])
    m.node("Cast", ["sum"], ["f"]) { ONNXModelBuilder.int(&$0, "to", 1) }
    m.node("Cast", ["notEven"], ["mask"]) { ONNXModelBuilder.int(&$0, "to", 1) }
    m.node("Mul", ["x", "f"], ["xf"])
    m.node("Add", ["xf", "mask"], ["y"])
    m.input("x", dims: [1, 6])
    m.output("y", dims: [1, 6])
    return m.model()
  }

  static func le(_ v: Float) -> [UInt8] { withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
}

/// An ONNX ModelProto written field by field (numbers from onnx.proto), for models no exporter
/// writes: hostile dims, folding chains, external data.
public struct ONNXModelBuilder {
  /// The GraphProto's fields so far.
  public private(set) var graph = ProtobufEncoder()

  public init() {}

  /// TensorProto fields: dims, data type, name, then whatever `body` writes (data).
  public static func tensorFields(
    _ e: inout ProtobufEncoder, name: String, dims: [Int], type: Int, body: (inout ProtobufEncoder) -> Void
  ) {
    e.packedInt(1, dims)
    e.int(2, type)
    e.string(8, name)
    body(&e)
  }

  /// An initializer.
  public mutating func tensor(_ name: String, dims: [Int], type: Int, body: (inout ProtobufEncoder) -> Void) {
    graph.message(5) { Self.tensorFields(&$0, name: name, dims: dims, type: type, body: body) }
  }

  /// A float initializer.
  public mutating func floats(_ name: String, dims: [Int], _ values: [Float]) {
    tensor(name, dims: dims, type: 1) { $0.packedFloat(4, values) }
  }

  /// An int64 initializer.
  public mutating func ints(_ name: String, dims: [Int], _ values: [Int64]) {
    tensor(name, dims: dims, type: 7) { $0.packedInt64(7, values) }
  }

  public mutating func node(
    _ op: String, _ ins: [String], _ outs: [String], attributes: (inout ProtobufEncoder) -> Void = { _ in }
  ) {
    graph.message(1) { n in
      for i in ins { n.string(1, i) }
      for o in outs { n.string(2, o) }
      n.string(3, op + "_" + (outs.first ?? ""))
      n.string(4, op)
      attributes(&n)
    }
  }

  /// An INT attribute of the node being written.
  public static func int(_ e: inout ProtobufEncoder, _ name: String, _ value: Int) {
    e.message(5) { a in
      a.string(1, name)
      a.int(3, value)
      a.int(20, 2)
    }
  }

  /// A FLOAT attribute of the node being written.
  public static func float(_ e: inout ProtobufEncoder, _ name: String, _ value: Float) {
    e.message(5) { a in
      a.string(1, name)
      a.float(2, value)
      a.int(20, 1)
    }
  }

  /// An INTS attribute of the node being written.
  public static func ints(_ e: inout ProtobufEncoder, _ name: String, _ values: [Int]) {
    e.message(5) { a in
      a.string(1, name)
      a.packedInt(8, values)
      a.int(20, 7)
    }
  }

  /// A STRING attribute of the node being written.
  public static func string(_ e: inout ProtobufEncoder, _ name: String, _ value: String) {
    e.message(5) { a in
      a.string(1, name)
      a.string(4, value)
      a.int(20, 3)
    }
  }

  /// A float graph input; nil dims are symbolic ("N").
  public mutating func input(_ name: String, dims: [Int?]) { valueInfo(field: 11, name, dims) }
  public mutating func output(_ name: String, dims: [Int?]) { valueInfo(field: 12, name, dims) }

  mutating func valueInfo(field: Int, _ name: String, _ dims: [Int?]) {
    graph.message(field) { v in
      v.string(1, name)
      v.message(2) { type in
        type.message(1) { t in
          t.int(1, 1)
          t.message(2) { shape in
            for d in dims {
              shape.message(1) { dim in
                if let d { dim.int(1, d) } else { dim.string(2, "N") }
              }
            }
          }
        }
      }
    }
  }

  /// The ModelProto: IR version 8, one default-domain opset, this graph.
  public func model(opset: Int = 13) -> [UInt8] {
    var m = ProtobufEncoder()
    m.int(1, 8)
    m.string(2, "veil-test")
    m.message(8) { o in
      o.string(1, "")
      o.int(2, opset)
    }
    m.message(7) { g in
      g.string(2, "hand-written")
      graph.bytes.withUnsafeBytes { g.appendRaw($0) }
    }
    return m.bytes
  }
}
