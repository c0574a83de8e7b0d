import Foundation
import VeilGraph
import VeilTensor

// The ONNX wire schema as Veil reads it: ModelProto, GraphProto, NodeProto, TensorProto,
// ValueInfoProto and AttributeProto decoded from protobuf with offset-bearing errors, and the
// constants an import keeps (part of `ONNXReader`).

// MARK: - The ONNX-side model, as decoded

/// The messages of onnx.proto that the reader needs, decoded field by field; everything else is
/// skipped. Byte offsets are kept for error messages.
enum ONNXProto {
  enum DataType {
    static let float: Int64 = 1, int32: Int64 = 6, int64: Int64 = 7, bool: Int64 = 9, float16: Int64 = 10,
      double: Int64 = 11
    /// Element types whose values fold as integers (u8, i8, u16, i16, i32, i64, u32, u64).
    static let integers: Set<Int> = [2, 3, 4, 5, 6, 7, 12, 13]
  }

  struct Tensor {
    var offset: Int
    var name = ""
    var dims: [Int64] = []
    var dataType: Int64 = 0
    var raw: Range<Int>?
    var floatData: [Float] = []
    var int32Data: [Int64] = []
    var int64Data: [Int64] = []
    var doubleData: [Double] = []
    var external: [String: String] = [:]
    var isExternal = false

    init(_ d: ProtobufDecoder) throws {
      var d = d
      offset = d.position
      while let (f, wt) = try d.nextField() {
        switch f {
        case 1: try d.readRepeatedInt64(field: f, wt, into: &dims)
        case 2: dataType = try d.readInt64(field: f, wt)
        case 4: try d.readRepeatedFloat(field: f, wt, into: &floatData)
        case 5: try d.readRepeatedInt64(field: f, wt, into: &int32Data)
        case 7: try d.readRepeatedInt64(field: f, wt, into: &int64Data)
        case 8: name = try d.readString(field: f, wt)
        case 9: raw = try d.readBytes(field: f, wt)
        case 10: try d.readRepeatedDouble(field: f, wt, into: &doubleData)
        case 13:
          let (k, v) = try readEntry(d.readMessage(field: f, wt))
          external[k] = v
        case 14: isExternal = try d.readInt64(field: f, wt) == 1
        default: try d.skip(wt)
        }
      }
    }
  }

  enum AttributeValue {
    case int(Int64)
    case float(Float)
    case string(String)
    case ints([Int64])
    case floats([Float])
    case tensor(Tensor)
    /// Graphs, sparse tensors, lists of strings: nothing Veil's ops take.
    case other
  }

  struct Node {
    var offset: Int
    var name = ""
    var opType = ""
    var domain = ""
    var inputs: [String] = []
    var outputs: [String] = []
    var attributes: [String: AttributeValue] = [:]
    /// The activation this node computes with the nodes fused into it (a Mul that, with the
    /// Sigmoid it reads, is x · sigmoid(x); the last Mul of GELU's erf form); `inputs` is then
    /// just [x].
    var fused: Activation?

    init(_ d: ProtobufDecoder) throws {
      var d = d
      offset = d.position
      while let (f, wt) = try d.nextField() {
        switch f {
        case 1: inputs.append(try d.readString(field: f, wt))
        case 2: outputs.append(try d.readString(field: f, wt))
        case 3: name = try d.readString(field: f, wt)
        case 4: opType = try d.readString(field: f, wt)
        case 5:
          let (k, v) = try readAttribute(d.readMessage(field: f, wt))
          attributes[k] = v
        case 7: domain = try d.readString(field: f, wt)
        default: try d.skip(wt)
        }
      }
    }
  }

  struct ValueInfo {
    var offset: Int
    var name = ""
    var elemType: Int64?
    /// nil: no shape recorded. A dimension is nil when symbolic or absent.
    var dims: [Int64?]?
    /// Each dimension's symbolic name (`dim_param`) where it has one.
    var dimParams: [String?] = []

    init(_ d: ProtobufDecoder) throws {
      var d = d
      offset = d.position
      while let (f, wt) = try d.nextField() {
        switch f {
        case 1: name = try d.readString(field: f, wt)
        case 2:
          var type = try d.readMessage(field: f, wt)
          while let (tf, twt) = try type.nextField() {
            guard tf == 1 else {
              try type.skip(twt)
              continue
            }
            var tensor = try type.readMessage(field: tf, twt)
            while let (ef, ewt) = try tensor.nextField() {
              switch ef {
              case 1: elemType = try tensor.readInt64(field: ef, ewt)
              case 2:
                var shape = try tensor.readMessage(field: ef, ewt)
                var ds: [Int64?] = []
                while let (sf, swt) = try shape.nextField() {
                  guard sf == 1 else {
                    try shape.skip(swt)
                    continue
                  }
                  var dim = try shape.readMessage(field: sf, swt)
                  var value: Int64?
                  var param: String?
                  while let (df, dwt) = try dim.nextField() {
                    switch df {
                    case 1: value = try dim.readInt64(field: df, dwt)
                    case 2: param = try dim.readString(field: df, dwt)
                    default: try dim.skip(dwt)
                    }
                  }
                  ds.append(value)
                  dimParams.append(param)
                }
                dims = ds
              default: try tensor.skip(ewt)
              }
            }
          }
        default: try d.skip(wt)
        }
      }
    }
  }

  struct Graph {
    var name = ""
    var nodes: [Node] = []
    var initializers: [Tensor] = []
    var inputs: [ValueInfo] = []
    var outputs: [ValueInfo] = []

    init(_ d: ProtobufDecoder) throws {
      var d = d
      while let (f, wt) = try d.nextField() {
        switch f {
        case 1: nodes.append(try Node(d.readMessage(field: f, wt)))
        case 2: name = try d.readString(field: f, wt)
        case 5: initializers.append(try Tensor(d.readMessage(field: f, wt)))
        case 11: inputs.append(try ValueInfo(d.readMessage(field: f, wt)))
        case 12: outputs.append(try ValueInfo(d.readMessage(field: f, wt)))
        case 15:
          throw FormatError.unsupported(format: ONNXReader.format, detail: "sparse initializers (byte \(d.position))")
        default: try d.skip(wt)
        }
      }
    }
  }

  struct Model {
    var graph: Graph?
    var opsets: [(domain: String, version: Int64)] = []
    var metadata: [(String, String)] = []

    init(_ d: ProtobufDecoder) throws {
      var d = d
      while let (f, wt) = try d.nextField() {
        switch f {
        case 7: graph = try Graph(d.readMessage(field: f, wt))
        case 8:
          var o = try d.readMessage(field: f, wt)
          var domain = ""
          var version: Int64 = 0
          while let (of, owt) = try o.nextField() {
            switch of {
            case 1: domain = try o.readString(field: of, owt)
            case 2: version = try o.readInt64(field: of, owt)
            default: try o.skip(owt)
            }
          }
          opsets.append((domain, version))
        case 14: metadata.append(try readEntry(d.readMessage(field: f, wt)))
        default: try d.skip(wt)
        }
      }
    }
  }

  /// StringStringEntryProto.
  static func readEntry(_ d: ProtobufDecoder) throws -> (String, String) {
    var d = d
    var k = ""
    var v = ""
    while let (f, wt) = try d.nextField() {
      switch f {
      case 1: k = try d.readString(field: f, wt)
      case 2: v = try d.readString(field: f, wt)
      default: try d.skip(wt)
      }
    }
    return (k, v)
  }

  /// AttributeProto. The value is taken from `type` when present, else from the field seen.
  static func readAttribute(_ d: ProtobufDecoder) throws -> (String, AttributeValue) {
    var d = d
    var name = ""
    var type: Int64?
    var f32: Float?
    var i64: Int64?
    var s: String?
    var t: Tensor?
    var floats: [Float] = []
    var ints: [Int64] = []
    var sawFloats = false
    var sawInts = false
    while let (f, wt) = try d.nextField() {
      switch f {
      case 1: name = try d.readString(field: f, wt)
      case 2: f32 = try d.readFloat(field: f, wt)
      case 3: i64 = try d.readInt64(field: f, wt)
      case 4: s = try d.readString(field: f, wt)
      case 5: t = try Tensor(d.readMessage(field: f, wt))
      case 7:
        sawFloats = true
        try d.readRepeatedFloat(field: f, wt, into: &floats)
      case 8:
        sawInts = true
        try d.readRepeatedInt64(field: f, wt, into: &ints)
      case 20: type = try d.readInt64(field: f, wt)
      default: try d.skip(wt)
      }
    }
    switch type {
    case 1: return (name, .float(f32 ?? 0))
    case 2: return (name, .int(i64 ?? 0))
    case 3: return (name, .string(s ?? ""))
    case 4: return (name, t.map { .tensor($0) } ?? .other)
    case 6: return (name, .floats(floats))
    case 7: return (name, .ints(ints))
    case .some: return (name, .other)
    case nil:
      if sawInts { return (name, .ints(ints)) }
      if sawFloats { return (name, .floats(floats)) }
      if let t { return (name, .tensor(t)) }
      if let s { return (name, .string(s)) }
      if let f32 { return (name, .float(f32)) }
      if let i64 { return (name, .int(i64)) }
      return (name, .other)
    }
  }
}

// MARK: - Constants

/// A constant known while importing: float data (a weight, or an op's float operand), or
/// integers (shapes, pads, sizes, indices).
enum ONNXImportedConstant {
  case floats(Tensor)
  case ints(dims: [Int], values: [Int64])

  var dims: [Int] {
    switch self {
    case .floats(let t): return t.shape
    case .ints(let d, _): return d
    }
  }
}

/// IEEE 754 binary16 bits to Float (subnormals, infinities and NaN included), portable to
/// platforms without `Float16`.
func halfToFloat(_ h: UInt16) -> Float {
  let sign = UInt32(h & 0x8000) << 16
  let exp = Int((h >> 10) & 0x1f)
  let mant = UInt32(h & 0x3ff)
  if exp == 0 {
    let v = Float(mant) * 0x1p-24
    return sign == 0 ? v : -v
  }
  if exp == 31 { return Float(bitPattern: sign | 0x7f80_0000 | (mant << 13)) }
  return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (mant << 13))
}
