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
