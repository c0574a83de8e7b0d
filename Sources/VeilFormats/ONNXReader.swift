import Foundation
import VeilGraph
import VeilTensor

/// Reads an ONNX ModelProto (default-domain opsets 7–21) into a `Graph`.
///
/// The file is untrusted: every length, tensor size and external-data range is checked before
/// anything is allocated, and every error names the byte offset or the node at fault. Constant
/// integer tensors (Reshape's shape, Pad's pads, Resize's sizes) become op attributes rather than
/// initializers, and the Shape → Gather → Unsqueeze → Concat chains exporters leave in front of
/// a Reshape are folded from the known input shapes. Graph inputs that are also initializers are
/// weights, not runtime inputs; a symbolic or absent batch dimension reads as 1.
public enum ONNXReader {
  public static let supportedOpsets: ClosedRange<Int> = 7...21
  static let format = "ONNX"

  public static func read(_ url: URL) throws -> Graph {
    try parse(FileIO.read(url), baseDirectory: url.deletingLastPathComponent())
  }

  public static func parse(_ bytes: [UInt8], baseDirectory: URL? = nil) throws -> Graph {
    let model = try ONNXProto.Model(ProtobufDecoder(bytes, format: format))
    var importer = ONNXImporter(model: model, bytes: bytes, baseDirectory: baseDirectory)
    return try importer.run()
  }
}

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
    /// A Mul that, with the Sigmoid it reads, is x · sigmoid(x); `inputs` is then just [x].
    var isFusedSiLU = false

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
                  while let (df, dwt) = try dim.nextField() {
                    if df == 1 { value = try dim.readInt64(field: df, dwt) } else { try dim.skip(dwt) }
                  }
                  ds.append(value)
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

// MARK: - ONNX → graph IR

struct ONNXImporter {
  static let format = ONNXReader.format

  let model: ONNXProto.Model
  let bytes: [UInt8]
  let baseDirectory: URL?
  var opset = 0
  var graph = Graph(name: "")
  /// Float values of the graph (runtime inputs, node outputs, initializers in use), by ONNX name.
  var values: [String: ValueID] = [:]
  var constants: [String: ONNXImportedConstant] = [:]
  /// Flat positions of integer constants that hold the symbolic batch size (folded at 1), so a
  /// Reshape target built from `Shape(x)[0]` keeps the batch instead of fixing it at 1.
  var batchMarks: [String: Set<Int>] = [:]
  /// Whether some graph input has a symbolic leading dimension.
  var symbolicBatch = false
  var externalFiles: [String: Data] = [:]
  /// Elements of the constants folded so far (`FormatLimits.maxFoldedElements` in all).
  var foldedElements = 0

  init(model: ONNXProto.Model, bytes: [UInt8], baseDirectory: URL?) {
    self.model = model
    self.bytes = bytes
    self.baseDirectory = baseDirectory
  }

  mutating func run() throws -> Graph {
    let defaults = model.opsets.filter { $0.domain == "" || $0.domain == "ai.onnx" }
    guard let version = defaults.map(\.version).max() else {
      throw FormatError.unsupported(format: Self.format, detail: "the model imports no default-domain opset")
    }
    guard ONNXReader.supportedOpsets.contains(Int(clamping: version)) else {
      throw FormatError.unsupported(
        format: Self.format,
        detail:
          "opset \(version) is not supported (supported: \(ONNXReader.supportedOpsets.lowerBound)–\(ONNXReader.supportedOpsets.upperBound))"
      )
    }
    opset = Int(version)
    guard let g = model.graph else {
      throw FormatError.malformed(format: Self.format, offset: 0, detail: "the model has no graph")
    }
    graph = Graph(name: g.name)
    for (k, v) in model.metadata { graph.metadata[k] = v }

    for t in g.initializers {
      guard !t.name.isEmpty else {
        throw FormatError.malformed(format: Self.format, offset: t.offset, detail: "an initializer has no name")
      }
      constants[t.name] = try constant(t)
    }
    for v in g.inputs where constants[v.name] == nil {
      if let first = v.dims?.first, first == nil { symbolicBatch = true }
      values[v.name] = graph.addInput(name: v.name, shape: try inputShape(v))
    }
    for n in try ordered(fusingSiLU(g.nodes, graphOutputs: Set(g.outputs.map(\.name)))) { try importNode(n) }
    for o in g.outputs {
      graph.outputs.append(try value(o.name, node: "graph output", op: "output"))
    }
    do {
      try graph.sortTopologically()
      try graph.inferShapes()
    } catch let e as GraphError {
      throw FormatError.invalidGraph(format: Self.format, detail: e.description)
    }
    return graph
  }

  // MARK: Tensors

  func inputShape(_ v: ONNXProto.ValueInfo) throws -> [Int] {
    if let t = v.elemType, t != ONNXProto.DataType.float {
      throw FormatError.unsupported(
        format: Self.format, detail: "input '\(v.name)' has element type \(t); only float inputs are supported")
    }
    guard let dims = v.dims else {
      throw FormatError.unsupported(format: Self.format, detail: "input '\(v.name)' has no shape")
    }
    let shape = try dims.enumerated().map { i, d in
      if let d {
        guard d >= 1, d <= Int64(Int32.max) else {
          throw FormatError.malformed(
            format: Self.format, offset: v.offset, detail: "input '\(v.name)' has dimension \(d)")
        }
        return Int(d)
      }
      // A symbolic batch is run at 1 (the executor re-plans for other batch sizes).
      guard i == 0 else {
        throw FormatError.unsupported(
          format: Self.format,
          detail: "input '\(v.name)' has a symbolic dimension at axis \(i); only the batch may be symbolic")
      }
      return 1
    }
    // Later shape arithmetic multiplies dimensions; keep every product far from overflow.
    var count = 1
    for d in shape {
      let (p, overflow) = count.multipliedReportingOverflow(by: d)
      guard !overflow, p <= Int(Int32.max) else {
        throw FormatError.malformed(
          format: Self.format, offset: v.offset, detail: "input '\(v.name)' dims \(dims) are too large")
      }
      count = p
    }
    return shape
  }

  /// Element count of `dims`, with each dimension and the product checked.
  func elementCount(_ t: ONNXProto.Tensor) throws -> Int {
    do { return try FormatLimits.elementCount(t.dims) } catch {
      throw FormatError.malformed(
        format: Self.format, offset: t.offset,
        detail: "tensor '\(t.name)' dims \(t.dims.prefix(8))\(t.dims.count > 8 ? "…" : "") \(error.detail)")
    }
  }

  /// The tensor's raw bytes (inline or external), already checked to be `count × size` long.
  mutating func rawBytes(_ t: ONNXProto.Tensor, count: Int, size: Int) throws -> ArraySlice<UInt8>? {
    let need = count * size
    if t.isExternal {
      guard let location = t.external["location"], !location.isEmpty else {
        throw FormatError.malformed(
          format: Self.format, offset: t.offset, detail: "external tensor '\(t.name)' has no location")
      }
      guard let base = baseDirectory else {
        throw FormatError.unsupported(
          format: Self.format, detail: "tensor '\(t.name)' is stored in '\(location)', but no base directory was given")
      }
      guard !location.hasPrefix("/"), !location.split(separator: "/").contains("..") else {
        throw FormatError.malformed(
          format: Self.format, offset: t.offset,
          detail: "external location '\(location)' of '\(t.name)' leaves the model's directory")
      }
      let url = base.appendingPathComponent(location)
      if externalFiles[location] == nil {
        do {
          externalFiles[location] = try Data(contentsOf: url, options: .mappedIfSafe)
        } catch {
          throw FormatError.io(
            path: url.path, detail: "cannot read external data of '\(t.name)': \(error.localizedDescription)")
        }
      }
      let data = externalFiles[location] ?? Data()
      func number(_ key: String) throws -> Int? {
        guard let s = t.external[key] else { return nil }
        guard let v = Int(s), v >= 0 else {
          throw FormatError.malformed(
            format: Self.format, offset: t.offset, detail: "external \(key) '\(s)' of '\(t.name)' is invalid")
        }
        return v
      }
      let offset = try number("offset") ?? 0
      let length = try number("length") ?? need
      guard length == need else {
        throw FormatError.malformed(
          format: Self.format, offset: t.offset,
          detail: "external tensor '\(t.name)' has length \(length), but dims \(t.dims) need \(need) bytes")
      }
      guard offset <= data.count, need <= data.count - offset else {
        throw FormatError.truncated(
          format: Self.format, offset: t.offset,
          detail:
            "external tensor '\(t.name)' wants \(need) bytes from byte \(offset) of '\(location)', which has \(data.count)"
        )
      }
      let start = data.startIndex + offset
      return ArraySlice(data[start..<(start + need)])
    }
    guard let raw = t.raw else { return nil }
    guard raw.count == need else {
      throw FormatError.malformed(
        format: Self.format, offset: raw.lowerBound,
        detail: "tensor '\(t.name)' has \(raw.count) bytes of raw_data, but dims \(t.dims) need \(need)")
    }
    return bytes[raw]
  }

  func checkCount(_ t: ONNXProto.Tensor, _ found: Int, _ count: Int) throws {
    guard found == count else {
      throw FormatError.malformed(
        format: Self.format, offset: t.offset,
        detail: "tensor '\(t.name)' holds \(found) values, but dims \(t.dims) need \(count)")
    }
  }

  mutating func constant(_ t: ONNXProto.Tensor) throws -> ONNXImportedConstant {
    let count = try elementCount(t)
    let dims = t.dims.map { Int($0) }
    switch t.dataType {
    case ONNXProto.DataType.float:
      if let raw = try rawBytes(t, count: count, size: 4) {
        return .floats(
          Tensor(shape: dims) { out in
            var i = raw.startIndex
            for k in 0..<count {
              out[k] = Float(
                bitPattern: UInt32(raw[i]) | UInt32(raw[i + 1]) << 8 | UInt32(raw[i + 2]) << 16 | UInt32(raw[i + 3])
                  << 24)
              i += 4
            }
          })
      }
      try checkCount(t, t.floatData.count, count)
      return .floats(Tensor(shape: dims) { out in for k in 0..<count { out[k] = t.floatData[k] } })
    case ONNXProto.DataType.float16:
      var halves: [UInt16] = []
      if let raw = try rawBytes(t, count: count, size: 2) {
        var i = raw.startIndex
        halves.reserveCapacity(count)
        for _ in 0..<count {
          halves.append(UInt16(raw[i]) | UInt16(raw[i + 1]) << 8)
          i += 2
        }
      } else {
        try checkCount(t, t.int32Data.count, count)
        halves = t.int32Data.map { UInt16(truncatingIfNeeded: $0) }
      }
      return .floats(Tensor(shape: dims) { out in for k in 0..<count { out[k] = halfToFloat(halves[k]) } })
    case ONNXProto.DataType.double:
      var ds: [Double] = []
      if let raw = try rawBytes(t, count: count, size: 8) {
        ds.reserveCapacity(count)
        var i = raw.startIndex
        for _ in 0..<count {
          var b: UInt64 = 0
          for j in 0..<8 { b |= UInt64(raw[i + j]) << (8 * UInt64(j)) }
          ds.append(Double(bitPattern: b))
          i += 8
        }
      } else {
        try checkCount(t, t.doubleData.count, count)
        ds = t.doubleData
      }
      return .floats(Tensor(shape: dims) { out in for k in 0..<count { out[k] = Float(ds[k]) } })
    case ONNXProto.DataType.int64:
      if let raw = try rawBytes(t, count: count, size: 8) {
        var vs: [Int64] = []
        vs.reserveCapacity(count)
        var i = raw.startIndex
        for _ in 0..<count {
          var b: UInt64 = 0
          for j in 0..<8 { b |= UInt64(raw[i + j]) << (8 * UInt64(j)) }
          vs.append(Int64(bitPattern: b))
          i += 8
        }
        return .ints(dims: dims, values: vs)
      }
      try checkCount(t, t.int64Data.count, count)
      return .ints(dims: dims, values: t.int64Data)
    case ONNXProto.DataType.bool:
      if let raw = try rawBytes(t, count: count, size: 1) { return .ints(dims: dims, values: raw.map { Int64($0) }) }
      try checkCount(t, t.int32Data.count, count)
      return .ints(dims: dims, values: t.int32Data)
    case ONNXProto.DataType.int32:
      if let raw = try rawBytes(t, count: count, size: 4) {
        var vs: [Int64] = []
        vs.reserveCapacity(count)
        var i = raw.startIndex
        for _ in 0..<count {
          let b = UInt32(raw[i]) | UInt32(raw[i + 1]) << 8 | UInt32(raw[i + 2]) << 16 | UInt32(raw[i + 3]) << 24
          vs.append(Int64(Int32(bitPattern: b)))
          i += 4
        }
        return .ints(dims: dims, values: vs)
      }
      try checkCount(t, t.int32Data.count, count)
      return .ints(dims: dims, values: t.int32Data)
    default:
      throw FormatError.unsupported(format: Self.format, detail: "tensor '\(t.name)' has data type \(t.dataType)")
    }
  }

  // MARK: Node order

  /// The nodes in dependency order (ONNX requires it, but not every exporter obeys), with
  /// undefined inputs and cycles reported by node name.
  func ordered(_ nodes: [ONNXProto.Node]) throws -> [ONNXProto.Node] {
    var producer: [String: Int] = [:]
    for (i, n) in nodes.enumerated() {
      for o in n.outputs where !o.isEmpty {
        guard producer[o] == nil, constants[o] == nil, values[o] == nil else {
          throw FormatError.invalidGraph(
            format: Self.format, detail: "value '\(o)' is defined twice (node '\(label(n))')")
        }
        producer[o] = i
      }
    }
    var pending = [Int](repeating: 0, count: nodes.count)
    var waiting: [Int: [Int]] = [:]
    for (i, n) in nodes.enumerated() {
      for x in Set(n.inputs) where !x.isEmpty && constants[x] == nil && values[x] == nil {
        guard let p = producer[x] else {
          throw FormatError.invalidGraph(
            format: Self.format, detail: "node '\(label(n))' reads '\(x)', which nothing defines")
        }
        pending[i] += 1
        waiting[p, default: []].append(i)
      }
    }
    var ready = (0..<nodes.count).filter { pending[$0] == 0 }.reversed() as [Int]
    var order: [Int] = []
    while let i = ready.popLast() {
      order.append(i)
      for j in waiting[i] ?? [] {
        pending[j] -= 1
        if pending[j] == 0 { ready.append(j) }
      }
      ready.sort(by: >)
    }
    guard order.count == nodes.count else {
      let stuck = nodes.indices.filter { pending[$0] > 0 }.prefix(5).map { "'\(label(nodes[$0]))'" }
      throw FormatError.invalidGraph(
        format: Self.format, detail: "the graph has a cycle through nodes \(stuck.joined(separator: ", "))")
    }
    return order.map { nodes[$0] }
  }

  /// Sigmoid(x) read only by a Mul(x, ·) is SiLU, one op in Veil (exporters spell it as two).
  func fusingSiLU(_ nodes: [ONNXProto.Node], graphOutputs: Set<String>) -> [ONNXProto.Node] {
    var readers: [String: [Int]] = [:]
    for (i, n) in nodes.enumerated() { for x in Set(n.inputs) { readers[x, default: []].append(i) } }
    var nodes = nodes
    var removed = Set<Int>()
    for (i, s) in nodes.enumerated() where s.opType == "Sigmoid" && s.domain.isEmpty {
      guard s.inputs.count == 1, s.outputs.count == 1, let x = s.inputs.first, let y = s.outputs.first,
        !graphOutputs.contains(y), let r = readers[y], r.count == 1
      else { continue }
      let m = nodes[r[0]]
      guard m.opType == "Mul", m.domain.isEmpty, !m.isFusedSiLU, m.inputs.count == 2, Set(m.inputs) == [x, y] else {
        continue
      }
      nodes[r[0]].inputs = [x]
      nodes[r[0]].isFusedSiLU = true
      removed.insert(i)
    }
    return nodes.indices.filter { !removed.contains($0) }.map { nodes[$0] }
  }

  func label(_ n: ONNXProto.Node) -> String {
    n.name.isEmpty ? "\(n.opType) → \(n.outputs.first ?? "?")" : n.name
  }

  // MARK: Values and operands

  /// The float value `name` as a graph value (an initializer is added on first use).
  mutating func value(_ name: String, node: String, op: String) throws -> ValueID {
    if let v = values[name] { return v }
    switch constants[name] {
    case .floats(let t):
      let v = graph.addInitializer(name: name, t)
      values[name] = v
      return v
    case .ints:
      throw FormatError.unsupportedNode(
        format: Self.format, node: node, op: op, detail: "integer tensor '\(name)' used as float data is not supported")
    case nil:
      throw FormatError.invalidGraph(
        format: Self.format, detail: "node '\(node)' reads '\(name)', which nothing defines")
    }
  }
}

// MARK: - Ops

/// One node being imported: its attributes and constant operands, with errors that name it.
struct ONNXNodeContext {
  let node: ONNXProto.Node
  let label: String
  let opset: Int

  func fail(_ detail: String) -> FormatError {
    .unsupportedNode(format: ONNXReader.format, node: label, op: node.opType, detail: detail)
  }

  func int(_ name: String, _ fallback: Int) throws -> Int {
    switch node.attributes[name] {
    case nil: return fallback
    case .int(let v):
      guard let i = Int(exactly: v), (-Int(Int32.max)...Int(Int32.max)).contains(i) else {
        throw fail("attribute '\(name)' = \(v) is out of range")
      }
      return i
    default: throw fail("attribute '\(name)' is not an integer")
    }
  }

  func float(_ name: String, _ fallback: Float) throws -> Float {
    switch node.attributes[name] {
    case nil: return fallback
    case .float(let v): return v
    default: throw fail("attribute '\(name)' is not a float")
    }
  }

  func string(_ name: String, _ fallback: String) throws -> String {
    switch node.attributes[name] {
    case nil: return fallback
    case .string(let v): return v
    default: throw fail("attribute '\(name)' is not a string")
    }
  }

  func ints(_ name: String) throws -> [Int]? {
    switch node.attributes[name] {
    case nil: return nil
    case .ints(let v):
      return try v.map {
        guard let i = Int(exactly: $0), (-Int(Int32.max)...Int(Int32.max)).contains(i) else {
          throw fail("attribute '\(name)' holds \($0), out of range")
        }
        return i
      }
    default: throw fail("attribute '\(name)' is not a list of integers")
    }
  }

  /// Input `i`, or nil when absent or named "" (an omitted optional input).
  func input(_ i: Int) -> String? {
    i < node.inputs.count && !node.inputs[i].isEmpty ? node.inputs[i] : nil
  }
}

extension ONNXImporter {
  /// A constant integer operand; entries and the product of their magnitudes are bounded so
  /// that shape arithmetic on them cannot overflow.
  func intConstant(_ name: String, _ c: ONNXNodeContext, what: String) throws -> [Int] {
    guard case .ints(_, let vs) = constants[name] else {
      throw c.fail("\(what) '\(name)' must be a constant integer tensor (an initializer or a Constant node)")
    }
    var product = 1
    return try vs.map {
      guard $0 >= -Int64(Int32.max), $0 <= Int64(Int32.max) else { throw c.fail("\(what) '\(name)' holds \($0), out of range") }
      let i = Int($0)
      product = product.multipliedReportingOverflow(by: max(1, abs(i))).partialValue
      guard product <= Int(Int32.max) else { throw c.fail("\(what) '\(name)' \(vs) is too large") }
      return i
    }
  }

  func floatConstant(_ name: String, _ c: ONNXNodeContext, what: String) throws -> [Float] {
    guard case .floats(let t) = constants[name] else {
      throw c.fail("\(what) '\(name)' must be a constant float tensor (an initializer or a Constant node)")
    }
    return t.scalars
  }

  func shapeOf(_ name: String, _ c: ONNXNodeContext) throws -> [Int] {
    if let v = values[name], let s = graph.shape(v) { return s }
    if let k = constants[name] { return k.dims }
    throw c.fail("the shape of '\(name)' is unknown")
  }

  /// Adds `op` reading `inputs` (ONNX names) and records its output shape at once, so later
  /// nodes (auto_pad, Shape) can use it.
  mutating func emit(_ op: Op, _ c: ONNXNodeContext, inputs: [String], outputs: Int = 1) throws {
    let outNames = Array(c.node.outputs.prefix(outputs))
    guard !outNames.isEmpty, !outNames[0].isEmpty else { throw c.fail("has no output") }
    try emit(op, label: c.label, opType: c.node.opType, inputs: inputs, outputs: outNames)
  }

  /// Adds one graph node named `label` for (part of) the ONNX node of type `opType`.
  mutating func emit(_ op: Op, label: String, opType: String, inputs: [String], outputs outNames: [String]) throws {
    let ins = try inputs.map { try value($0, node: label, op: opType) }
    let outs = graph.addNode(
      op, name: label, inputs: ins, outputNames: outNames.map { $0.isEmpty ? label + "_unused" : $0 })
    let shape: [Int]
    do {
      shape = try op.outputShape(ins.map { graph.shape($0) ?? [] }, node: label)
    } catch let e as GraphError {
      throw FormatError.invalidGraph(format: Self.format, detail: e.description)
    }
    for (k, o) in outs.enumerated() {
      graph[o].shape = shape
      if !outNames[k].isEmpty { values[outNames[k]] = o }
    }
  }

  /// Explicit begin/end pads from `auto_pad` and the input's spatial extent.
  func resolvePads(
    _ c: ONNXNodeContext, input: [Int], kernel: [Int], strides: [Int], dilations: [Int], transposed: Bool = false,
    outputPadding: [Int] = []
  ) throws -> (begin: [Int], end: [Int]) {
    let n = kernel.count
    guard input.count == n + 2 else { throw c.fail("input rank \(input.count) does not fit kernel_shape \(kernel)") }
    let autoPad = try c.string("auto_pad", "NOTSET")
    switch autoPad {
    case "NOTSET":
      let pads = try c.ints("pads") ?? Array(repeating: 0, count: 2 * n)
      guard pads.count == 2 * n, pads.allSatisfy({ $0 >= 0 }) else {
        throw c.fail("attribute 'pads' \(pads) does not fit \(n) spatial axes")
      }
      return (Array(pads[..<n]), Array(pads[n...]))
    case "VALID":
      return (Array(repeating: 0, count: n), Array(repeating: 0, count: n))
    case "SAME_UPPER", "SAME_LOWER":
      var begin: [Int] = []
      var end: [Int] = []
      for i in 0..<n {
        let x = input[i + 2]
        let eff = dilations[i] * (kernel[i] - 1) + 1
        let total: Int
        if transposed {
          let op = i < outputPadding.count ? outputPadding[i] : 0
          total = max(0, strides[i] * (x - 1) + op + eff - x * strides[i])
        } else {
          let out = (x + strides[i] - 1) / strides[i]
          total = max(0, (out - 1) * strides[i] + eff - x)
        }
        let small = total / 2
        if autoPad == "SAME_UPPER" {
          begin.append(small)
          end.append(total - small)
        } else {
          begin.append(total - small)
          end.append(small)
        }
      }
      return (begin, end)
    default:
      throw c.fail("attribute 'auto_pad' = '\(autoPad)' is not supported")
    }
  }

  mutating func importNode(_ n: ONNXProto.Node) throws {
    let c = ONNXNodeContext(node: n, label: label(n), opset: opset)
    guard n.domain.isEmpty || n.domain == "ai.onnx" else {
      throw c.fail("unknown op '\(n.opType)' in domain '\(n.domain)' (opset \(opset))")
    }
    if n.isFusedSiLU, let x = c.input(0) { return try emit(.activation(.silu), c, inputs: [x]) }
    if try foldConstant(c) {
      // Folded constants cost memory the file does not hold: all of them share one budget.
      if let out = n.outputs.first, let k = constants[out] {
        foldedElements += k.dims.reduce(1) { $0 * max($1, 1) }
        guard foldedElements <= FormatLimits.maxFoldedElements else {
          throw c.fail(
            "constants folded from attributes and shape arithmetic exceed \(FormatLimits.maxFoldedElements) elements in all")
        }
      }
      return
    }
    func x() throws -> String {
      guard let i = c.input(0) else { throw c.fail("input 0 is missing") }
      return i
    }
    switch n.opType {
    case "Conv", "ConvTranspose":
      let transposed = n.opType == "ConvTranspose"
      guard let w = c.input(1) else { throw c.fail("weights (input 1) are missing") }
      let wShape = try shapeOf(w, c)
      let xShape = try shapeOf(try x(), c)
      guard wShape.count >= 3 else { throw c.fail("weights '\(w)' have shape \(wShape)") }
      let kernel = try c.ints("kernel_shape") ?? Array(wShape.dropFirst(2))
      let nsp = kernel.count
      let strides = try c.ints("strides") ?? Array(repeating: 1, count: nsp)
      let dilations = try c.ints("dilations") ?? Array(repeating: 1, count: nsp)
      let outputPadding = try c.ints("output_padding") ?? Array(repeating: 0, count: nsp)
      guard strides.count == nsp, dilations.count == nsp, strides.allSatisfy({ (1...65536).contains($0) }),
        dilations.allSatisfy({ (1...65536).contains($0) }), outputPadding.count == nsp,
        outputPadding.allSatisfy({ (0...65536).contains($0) })
      else {
        throw c.fail("strides \(strides) / dilations \(dilations) do not fit kernel_shape \(kernel)")
      }
      let groups = try c.int("group", 1)
      guard groups >= 1 else { throw c.fail("attribute 'group' = \(groups) is invalid") }
      if transposed, c.node.attributes["output_shape"] != nil {
        throw c.fail("attribute 'output_shape' is not supported")
      }
      let (pb, pe) = try resolvePads(
        c, input: xShape, kernel: kernel, strides: strides, dilations: dilations, transposed: transposed,
        outputPadding: outputPadding)
      let a = ConvAttributes(
        kernel: kernel, strides: strides, dilations: dilations, padsBegin: pb, padsEnd: pe, groups: groups,
        outputPadding: outputPadding)
      var ins = [try x(), w]
      if let b = c.input(2) { ins.append(b) }
      try emit(transposed ? .convTranspose(a) : .conv(a), c, inputs: ins)
    case "BatchNormalization":
      guard n.outputs.dropFirst().allSatisfy(\.isEmpty) else { throw c.fail("training-mode outputs are not supported") }
      let ins = try (0..<5).map { i in
        guard let s = c.input(i) else { throw c.fail("input \(i) is missing") }
        return s
      }
      try emit(.batchNormalization(epsilon: try c.float("epsilon", 1e-5)), c, inputs: ins)
    case "Relu": try emit(.activation(.relu), c, inputs: [try x()])
    case "LeakyRelu": try emit(.activation(.leakyRelu(alpha: try c.float("alpha", 0.01))), c, inputs: [try x()])
    case "Sigmoid": try emit(.activation(.sigmoid), c, inputs: [try x()])
    case "HardSigmoid":
      try emit(
        .activation(.hardSigmoid(alpha: try c.float("alpha", 0.2), beta: try c.float("beta", 0.5))), c,
        inputs: [try x()])
    case "HardSwish": try emit(.activation(.hardSwish), c, inputs: [try x()])
    case "Tanh": try emit(.activation(.tanh), c, inputs: [try x()])
    case "Clip":
      var lo = -Float.greatestFiniteMagnitude
      var hi = Float.greatestFiniteMagnitude
      if opset < 11 {
        lo = try c.float("min", lo)
        hi = try c.float("max", hi)
      } else {
        for (i, what) in [(1, "min"), (2, "max")] {
          guard let s = c.input(i) else { continue }
          let v = try floatConstant(s, c, what: what)
          guard v.count == 1 else { throw c.fail("\(what) '\(s)' must be a scalar, found \(v.count) values") }
          if i == 1 { lo = v[0] } else { hi = v[0] }
        }
      }
      try emit(.activation(.clip(min: lo, max: hi)), c, inputs: [try x()])
    case "MaxPool", "AveragePool":
      let isMax = n.opType == "MaxPool"
      if isMax {
        guard n.outputs.count < 2 || n.outputs[1].isEmpty else { throw c.fail("the Indices output is not supported") }
        guard try c.int("storage_order", 0) == 0 else { throw c.fail("attribute 'storage_order' = 1 is not supported") }
      }
      guard let kernel = try c.ints("kernel_shape") else { throw c.fail("attribute 'kernel_shape' is missing") }
      let nsp = kernel.count
      let strides = try c.ints("strides") ?? Array(repeating: 1, count: nsp)
      let dilations = try c.ints("dilations") ?? Array(repeating: 1, count: nsp)
      guard dilations.allSatisfy({ $0 == 1 }) else {
        throw c.fail("attribute 'dilations' = \(dilations) is not supported")
      }
      guard strides.count == nsp, strides.allSatisfy({ (1...65536).contains($0) }),
        kernel.allSatisfy({ (1...65536).contains($0) })
      else {
        throw c.fail("strides \(strides) do not fit kernel_shape \(kernel)")
      }
      let (pb, pe) = try resolvePads(
        c, input: try shapeOf(try x(), c), kernel: kernel, strides: strides, dilations: dilations)
      let p = PoolAttributes(
        kernel: kernel, strides: strides, padsBegin: pb, padsEnd: pe, ceilMode: try c.int("ceil_mode", 0) != 0,
        countIncludePad: try c.int("count_include_pad", 0) != 0)
      try emit(isMax ? .maxPool(p) : .averagePool(p), c, inputs: [try x()])
    case "GlobalAveragePool": try emit(.globalAveragePool, c, inputs: [try x()])
    case "Add", "Sub", "Mul", "Div":
      let kind: BinaryKind = ["Add": .add, "Sub": .sub, "Mul": .mul, "Div": .div][n.opType] ?? .add
      guard let b = c.input(1) else { throw c.fail("input 1 is missing") }
      try emit(.binary(kind), c, inputs: [try x(), b])
    case "Concat":
      guard c.node.attributes["axis"] != nil else { throw c.fail("attribute 'axis' is missing") }
      try emit(.concat(axis: try c.int("axis", 0)), c, inputs: n.inputs.filter { !$0.isEmpty })
    case "Gemm":
      let g = GemmAttributes(
        alpha: try c.float("alpha", 1), beta: try c.float("beta", 1), transA: try c.int("transA", 0) != 0,
        transB: try c.int("transB", 0) != 0)
      guard let b = c.input(1) else { throw c.fail("input B is missing") }
      try emit(.gemm(g), c, inputs: [try x(), b] + (c.input(2).map { [$0] } ?? []))
    case "MatMul":
      guard let b = c.input(1) else { throw c.fail("input B is missing") }
      try emit(.matMul, c, inputs: [try x(), b])
    case "Flatten": try emit(.flatten(axis: try c.int("axis", 1)), c, inputs: [try x()])
    case "Reshape":
      guard let s = c.input(1) else { throw c.fail("input 'shape' is missing") }
      let shape = try intConstant(s, c, what: "shape")
      if try c.int("allowzero", 0) != 0, shape.contains(0) {
        throw c.fail("attribute 'allowzero' = 1 with a 0 in the shape is not supported")
      }
      // A leading entry that is the symbolic batch (Shape(x)[0]) copies the input's batch.
      let batchAware = shape.indices.map { $0 == 0 && batchMarks[s]?.contains(0) == true ? 0 : shape[$0] }
      try emit(.reshape(shape: batchAware), c, inputs: [try x()])
    case "Transpose":
      let rank = try shapeOf(try x(), c).count
      let perm = try c.ints("perm") ?? Array((0..<rank).reversed())
      try emit(.transpose(permutation: perm), c, inputs: [try x()])
    case "Pad":
      let modeName = try c.string("mode", "constant")
      let modes: [String: PadMode] = ["constant": .constant, "reflect": .reflect, "edge": .edge]
      guard let mode = modes[modeName] else { throw c.fail("attribute 'mode' = '\(modeName)' is not supported") }
      if opset < 11 {
        // Before opset 11 the pads and the value are attributes.
        guard let pads = try c.ints("pads") else { throw c.fail("attribute 'pads' is missing") }
        try emit(.pad(mode: mode, pads: pads, value: try c.float("value", 0)), c, inputs: [try x()])
        return
      }
      guard let p = c.input(1) else { throw c.fail("input 'pads' is missing") }
      guard c.input(3) == nil else { throw c.fail("input 'axes' is not supported") }
      let pads = try intConstant(p, c, what: "pads")
      var value: Float = 0
      if let v = c.input(2) {
        let vs = try floatConstant(v, c, what: "constant_value")
        guard vs.count == 1 else { throw c.fail("constant_value must be a scalar") }
        value = vs[0]
      }
      try emit(.pad(mode: mode, pads: pads, value: value), c, inputs: [try x()])
    case "Resize":
      try importResize(c, x: try x())
    case "Softmax":
      let shape = try shapeOf(try x(), c)
      let rank = shape.count
      if opset >= 13 {
        try emit(.softmax(axis: try c.int("axis", -1)), c, inputs: [try x()])
      } else {
        // Before opset 13 Softmax flattens to 2-D at `axis`: the per-axis softmax when every
        // later dimension is 1 (classifier outputs of [N, 1000, 1, 1]).
        let axis = try c.int("axis", 1)
        let resolved = axis < 0 ? axis + rank : axis
        guard resolved >= 0, resolved < rank, shape[(resolved + 1)...].allSatisfy({ $0 == 1 }) else {
          throw c.fail(
            "opset \(opset) Softmax with axis \(axis) on shape \(shape) flattens the input; only an axis after which every dimension is 1 is supported"
          )
        }
        try emit(.softmax(axis: resolved), c, inputs: [try x()])
      }
    case "Dropout":
      var ratio: Float = 0.5
      if opset < 12 {
        ratio = try c.float("ratio", 0.5)
      } else {
        if let r = c.input(1) {
          let v = try floatConstant(r, c, what: "ratio")
          guard v.count == 1 else { throw c.fail("ratio must be a scalar") }
          ratio = v[0]
        }
        if let t = c.input(2) {
          guard case .ints(_, let vs) = constants[t], vs.allSatisfy({ $0 == 0 }) else {
            throw c.fail("input 'training_mode' must be a constant false")
          }
        }
      }
      let outs = n.outputs.count >= 2 && !n.outputs[1].isEmpty ? 2 : 1
      try emit(.dropout(ratio: ratio), c, inputs: [try x()], outputs: outs)
    case "LRN":
      try emit(
        .localResponseNormalization(
          size: try c.int("size", 0), alpha: try c.float("alpha", 1e-4), beta: try c.float("beta", 0.75),
          bias: try c.float("bias", 1)), c, inputs: [try x()])
    case "Sum":
      let ins = n.inputs.filter { !$0.isEmpty }
      switch ins.count {
      case 1: try emit(.identity, c, inputs: ins)
      case 2: try emit(.binary(.add), c, inputs: ins)
      default: throw c.fail("Sum of \(ins.count) inputs is not supported (1 or 2)")
      }
    case "Identity":
      try emit(.identity, c, inputs: [try x()])
    case "Cast":
      // Exporters wrap float tensors in Casts to float; anything else would change the data.
      let to = try c.int("to", 0)
      guard to == ONNXProto.DataType.float else {
        throw c.fail("Cast of the float tensor '\(try x())' to element type \(to) is not supported (only to float, 1)")
      }
      try emit(.identity, c, inputs: [try x()])
    case "ReduceMean":
      try importReduceMean(c, x: try x())
    default:
      throw c.fail("unknown op '\(n.opType)' at opset \(opset)")
    }
  }

  mutating func importResize(_ c: ONNXNodeContext, x: String) throws {
    let mode = try c.string("mode", "nearest")
    let ctm = try c.string("coordinate_transformation_mode", "half_pixel")
    let kind: ResizeKind
    switch mode {
    case "nearest":
      let nm = try c.string("nearest_mode", "round_prefer_floor")
      guard ctm == "asymmetric" else {
        throw c.fail(
          "attribute 'coordinate_transformation_mode' = '\(ctm)' with mode 'nearest' is not supported (only 'asymmetric')"
        )
      }
      guard nm == "floor" else { throw c.fail("attribute 'nearest_mode' = '\(nm)' is not supported (only 'floor')") }
      kind = .nearest
    case "linear":
      guard ctm == "half_pixel" || ctm == "pytorch_half_pixel" else {
        throw c.fail(
          "attribute 'coordinate_transformation_mode' = '\(ctm)' with mode 'linear' is not supported (only 'half_pixel')"
        )
      }
      kind = .linear
    default:
      throw c.fail("attribute 'mode' = '\(mode)' is not supported")
    }
    for a in ["antialias", "exclude_outside"] where try c.int(a, 0) != 0 {
      throw c.fail("attribute '\(a)' is not supported")
    }
    if c.node.attributes["axes"] != nil { throw c.fail("attribute 'axes' is not supported") }
    var scales: [Float]?
    var sizes: [Int]?
    if let s = c.input(2), !(constants[s]?.dims.contains(0) ?? false) {
      scales = try floatConstant(s, c, what: "scales")
    }
    if let s = c.input(3), !(constants[s]?.dims.contains(0) ?? false) { sizes = try intConstant(s, c, what: "sizes") }
    guard (scales == nil) != (sizes == nil) else { throw c.fail("exactly one of 'scales' and 'sizes' must be given") }
    if let scales {
      let x = try shapeOf(x, c)
      guard scales.count == x.count, scales.allSatisfy({ $0.isFinite && $0 > 0 }) else {
        throw c.fail("scales \(scales) do not fit input \(x)")
      }
      var count: Float = 1
      for (d, s) in zip(x, scales) { count *= max(1, Float(d) * s) }
      guard count <= Float(Int32.max) else { throw c.fail("scales \(scales) make the output too large") }
    }
    try emit(.resize(kind, scales: scales, sizes: sizes), c, inputs: [x])
  }

  /// Constant nodes, and integer arithmetic on shapes (Shape, Gather, Unsqueeze, Squeeze,
  /// Concat, Cast, Identity over constants), evaluated now. Returns false for anything else.
  mutating func foldConstant(_ c: ONNXNodeContext) throws -> Bool {
    let n = c.node
    guard let out = n.outputs.first, !out.isEmpty else { return false }
    let ins = n.inputs.filter { !$0.isEmpty }
    switch n.opType {
    case "Constant":
      guard n.attributes.count == 1, let (key, attr) = n.attributes.first.map({ ($0.key, $0.value) }) else {
        throw c.fail("needs exactly one value attribute")
      }
      switch attr {
      case .tensor(let t): constants[out] = try constant(t)
      case .float(let f) where key == "value_float": constants[out] = .floats(Tensor(shape: [], repeating: f))
      case .floats(let fs) where key == "value_floats":
        constants[out] = .floats(Tensor(shape: [fs.count]) { o in for i in fs.indices { o[i] = fs[i] } })
      case .int(let i) where key == "value_int": constants[out] = .ints(dims: [], values: [i])
      case .ints(let vs) where key == "value_ints": constants[out] = .ints(dims: [vs.count], values: vs)
      default: throw c.fail("attribute '\(key)' is not supported")
      }
      return true
    case "ConstantOfShape":
      guard let i = ins.first, case .ints(let d, let v) = constants[i] else { return false }
      guard d.count <= 1, v.allSatisfy({ $0 >= 0 && $0 <= Int64(Int32.max) }) else {
        throw c.fail("shape \(v) is not a list of non-negative sizes")
      }
      let shape = v.map { Int($0) }
      let count: Int
      do {
        count = try FormatLimits.elementCount(shape, maxElements: FormatLimits.maxFoldedElements - foldedElements)
      } catch {
        throw c.fail(
          "shape \(shape.prefix(8)) \(error.detail) (what is left of the \(FormatLimits.maxFoldedElements) elements "
            + "all folded constants may hold)")
      }
      var fill: Float = 0
      if case .tensor(let t)? = n.attributes["value"] {
        switch try constant(t) {
        case .floats(let f):
          guard f.count == 1 else { throw c.fail("'value' must hold one element") }
          fill = f.storage.pointer[0]
        case .ints(_, let iv):
          guard iv.count == 1 else { throw c.fail("'value' must hold one element") }
          constants[out] = .ints(dims: shape, values: Array(repeating: iv[0], count: count))
          return true
        }
      }
      constants[out] = .floats(Tensor(shape: shape, repeating: fill))
      return true
    case "Unsqueeze", "Squeeze", "Identity", "Reshape", "Flatten":
      // Float constants reshaped by old exporters (BatchNorm scales as [C, 1, 1]); integer
      // constants take the shape-arithmetic path below.
      guard let first = ins.first, case .floats(let t)? = constants[first] else { break }
      var dims = t.shape
      switch n.opType {
      case "Unsqueeze":
        var axes = try c.ints("axes")
        if opset >= 13, ins.count > 1, case .ints(_, let a)? = constants[ins[1]] { axes = a.map { Int($0) } }
        guard let axes else { throw c.fail("'axes' is missing") }
        let r = dims.count + axes.count
        guard r <= FormatLimits.maxRank else {
          throw c.fail("unsqueezing to rank \(r) exceeds \(FormatLimits.maxRank)")
        }
        for a in axes.map({ $0 < 0 ? $0 + r : $0 }).sorted() {
          guard a >= 0, a <= dims.count else { throw c.fail("axis \(a) is out of range") }
          dims.insert(1, at: a)
        }
      case "Squeeze":
        let axes = try c.ints("axes") ?? dims.indices.filter { dims[$0] == 1 }
        let drop = Set(axes.map { $0 < 0 ? $0 + t.shape.count : $0 })
        dims = dims.indices.filter { !drop.contains($0) }.map { dims[$0] }
      case "Reshape":
        guard ins.count > 1, case .ints(_, let s)? = constants[ins[1]] else { return false }
        do {
          dims = try Op.reshape(shape: s.map { Int($0) }).outputShape([t.shape], node: c.label)
        } catch { throw c.fail("\(error)") }
      case "Flatten":
        let axis = try c.int("axis", 1)
        let ax = axis < 0 ? axis + dims.count : axis
        guard ax >= 0, ax <= dims.count else { throw c.fail("axis \(axis) is out of range") }
        dims = [dims[..<ax].reduce(1, *), dims[ax...].reduce(1, *)]
      default:
        break
      }
      do { constants[out] = .floats(try t.reshaped(dims)) } catch { throw c.fail("\(error)") }
      return true
    case "Shape":
      guard let i = ins.first, values[i] != nil || constants[i] != nil else { return false }
      var s = try shapeOf(i, c).map { Int64($0) }
      // Opset 15 slices the shape with start/end.
      let r = s.count
      func clampIndex(_ v: Int) -> Int { min(max(v < 0 ? v + r : v, 0), r) }
      let start = clampIndex(try c.int("start", 0))
      let end = clampIndex(try c.int("end", r))
      s = start < end ? Array(s[start..<end]) : []
      constants[out] = .ints(dims: [s.count], values: s)
      if symbolicBatch, values[i] != nil, start == 0, !s.isEmpty { batchMarks[out] = [0] }
      return true
    default:
      break
    }
    // The rest fold only when every input is an integer constant.
    var data: [(dims: [Int], values: [Int64])] = []
    for i in ins {
      guard case .ints(let d, let v) = constants[i] else { return false }
      data.append((d, v))
    }
    guard !data.isEmpty else { return false }
    switch n.opType {
    case "Identity", "Cast":
      if n.opType == "Cast", !ONNXProto.DataType.integers.contains(try c.int("to", 0)) {
        guard try c.int("to", 0) == ONNXProto.DataType.float else { return false }
        let v = data[0].values
        constants[out] = .floats(Tensor(shape: data[0].dims) { o in for k in v.indices { o[k] = Float(v[k]) } })
        return true
      }
      constants[out] = constants[ins[0]]
      batchMarks[out] = batchMarks[ins[0]]
    case "Add", "Sub", "Mul", "Div":
      guard data.count == 2 else { throw c.fail("needs two inputs") }
      constants[out] = try integerArithmetic(n.opType, data[0], data[1], c)
    case "Reshape":
      guard data.count == 2 else { throw c.fail("needs data and shape") }
      let dims: [Int]
      do {
        dims = try Op.reshape(shape: data[1].values.map { Int(clamping: $0) }).outputShape([data[0].dims], node: c.label)
      } catch { throw c.fail("\(error)") }
      constants[out] = .ints(dims: dims, values: data[0].values)
      batchMarks[out] = batchMarks[ins[0]]
    case "Transpose":
      let (dims, v) = data[0]
      let perm = try c.ints("perm") ?? Array(dims.indices.reversed())
      guard perm.sorted() == Array(dims.indices) else { throw c.fail("perm \(perm) does not permute \(dims.count) axes") }
      let (outDims, source) = permutedIndices(dims, perm)
      constants[out] = .ints(dims: outDims, values: source.map { v[$0] })
      if let m = batchMarks[ins[0]] { batchMarks[out] = Set(source.indices.filter { m.contains(source[$0]) }) }
    case "Slice":
      let (outDims, source) = try sliceIndices(data[0].dims, c, inputs: ins)
      constants[out] = .ints(dims: outDims, values: source.map { data[0].values[$0] })
      if let m = batchMarks[ins[0]] { batchMarks[out] = Set(source.indices.filter { m.contains(source[$0]) }) }
    case "Gather":
      guard data.count == 2 else { throw c.fail("needs data and indices") }
      let (d, v) = data[0]
      guard d.count == 1, try c.int("axis", 0) == 0 else {
        throw c.fail("only gathers from 1-D integer constants fold")
      }
      let picked = try data[1].values.map { k -> Int64 in
        let idx = k < 0 ? Int(k) + v.count : Int(k)
        guard idx >= 0, idx < v.count else { throw c.fail("index \(k) is out of range for \(v.count) values") }
        return v[idx]
      }
      constants[out] = .ints(dims: data[1].dims, values: picked)
      if let m = batchMarks[ins[0]] {
        batchMarks[out] = Set(data[1].values.indices.filter { k in
          let i = data[1].values[k]
          return m.contains(i < 0 ? Int(i) + v.count : Int(i))
        })
      }
    case "Unsqueeze", "Squeeze":
      var axes = try c.ints("axes")
      if opset >= 13, data.count > 1 { axes = data[1].values.map { Int($0) } }
      var dims = data[0].dims
      if n.opType == "Unsqueeze" {
        guard let axes else { throw c.fail("'axes' is missing") }
        let r = dims.count + axes.count
        guard r <= FormatLimits.maxRank else {
          throw c.fail("unsqueezing to rank \(r) exceeds \(FormatLimits.maxRank)")
        }
        for a in axes.map({ $0 < 0 ? $0 + r : $0 }).sorted() {
          guard a >= 0, a <= dims.count else { throw c.fail("axis \(a) is out of range") }
          dims.insert(1, at: a)
        }
      } else {
        let r = dims.count
        let drop = Set((axes ?? dims.indices.filter { dims[$0] == 1 }).map { $0 < 0 ? $0 + r : $0 })
        dims = dims.indices.filter { !drop.contains($0) }.map { dims[$0] }
      }
      constants[out] = .ints(dims: dims, values: data[0].values)
      batchMarks[out] = batchMarks[ins[0]]
    case "Concat":
      guard data.allSatisfy({ $0.dims.count == 1 }) else { throw c.fail("only 1-D integer constants fold") }
      let vs = data.flatMap(\.values)
      constants[out] = .ints(dims: [vs.count], values: vs)
      var marks = Set<Int>()
      var offset = 0
      for (k, i) in ins.enumerated() {
        marks.formUnion((batchMarks[i] ?? []).map { $0 + offset })
        offset += data[k].values.count
      }
      if !marks.isEmpty { batchMarks[out] = marks }
    default:
      return false
    }
    return true
  }
}

// MARK: - Folding helpers

extension ONNXImporter {
  /// Element-wise integer arithmetic with numpy broadcasting; Div truncates toward zero, as
  /// ONNX Runtime does for integer tensors.
  func integerArithmetic(
    _ op: String, _ a: (dims: [Int], values: [Int64]), _ b: (dims: [Int], values: [Int64]), _ c: ONNXNodeContext
  ) throws -> ONNXImportedConstant {
    guard let dims = broadcastShapes(a.dims, b.dims) else {
      throw c.fail("integer operands of shapes \(a.dims) and \(b.dims) do not broadcast")
    }
    let count: Int
    do { count = try FormatLimits.elementCount(dims, maxElements: 1 << 20) } catch {
      throw c.fail("integer result of shape \(dims.prefix(8)) is too large to fold: it \(error.detail)")
    }
    func index(_ flat: Int, _ d: [Int]) -> Int {
      // Position in an operand broadcast to `dims`.
      var rest = flat
      var k = 0
      var scale = 1
      let pad = dims.count - d.count
      for axis in stride(from: dims.count - 1, through: 0, by: -1) {
        let coordinate = rest % dims[axis]
        rest /= dims[axis]
        if axis >= pad {
          let size = d[axis - pad]
          if size != 1 { k += coordinate * scale }
          scale *= size
        }
      }
      return k
    }
    var out = [Int64](repeating: 0, count: count)
    for i in 0..<count {
      let x = a.values[index(i, a.dims)]
      let y = b.values[index(i, b.dims)]
      let r: (Int64, Bool)
      switch op {
      case "Add": r = x.addingReportingOverflow(y)
      case "Sub": r = x.subtractingReportingOverflow(y)
      case "Mul": r = x.multipliedReportingOverflow(by: y)
      default:
        guard y != 0 else { throw c.fail("integer division by zero") }
        r = x.dividedReportingOverflow(by: y)
      }
      guard !r.1 else { throw c.fail("integer \(op) of \(x) and \(y) overflows") }
      out[i] = r.0
    }
    return .ints(dims: dims, values: out)
  }

  /// The dims of `dims` permuted by `perm`, and for each output position its flat source index.
  func permutedIndices(_ dims: [Int], _ perm: [Int]) -> ([Int], [Int]) {
    let outDims = perm.map { dims[$0] }
    var strides = [Int](repeating: 1, count: dims.count)
    for k in stride(from: dims.count - 2, through: 0, by: -1) { strides[k] = strides[k + 1] * dims[k + 1] }
    let count = dims.reduce(1, *)
    var source = [Int](repeating: 0, count: count)
    for i in 0..<count {
      var rest = i
      var k = 0
      for axis in stride(from: outDims.count - 1, through: 0, by: -1) {
        k += (rest % outDims[axis]) * strides[perm[axis]]
        rest /= outDims[axis]
      }
      source[i] = k
    }
    return (outDims, source)
  }

  /// ONNX Slice (starts, ends, axes, steps as inputs from opset 10, attributes before) over a
  /// tensor of `dims`: the output dims and each output position's flat source index.
  func sliceIndices(_ dims: [Int], _ c: ONNXNodeContext, inputs ins: [String]) throws -> ([Int], [Int]) {
    var starts: [Int], ends: [Int], axes: [Int]?, steps: [Int]?
    if opset < 10 {
      guard let s = try c.ints("starts"), let e = try c.ints("ends") else { throw c.fail("'starts' and 'ends' are required") }
      (starts, ends, axes, steps) = (s, e, try c.ints("axes"), nil)
    } else {
      func operand(_ k: Int, _ what: String) throws -> [Int]? {
        guard let name = c.input(k) else { return nil }
        guard case .ints(_, let v)? = constants[name] else {
          throw c.fail("\(what) '\(name)' must be a constant integer tensor")
        }
        return v.map { Int(clamping: $0) }
      }
      guard let s = try operand(1, "starts"), let e = try operand(2, "ends") else {
        throw c.fail("inputs 'starts' and 'ends' are required")
      }
      (starts, ends, axes, steps) = (s, e, try operand(3, "axes"), try operand(4, "steps"))
    }
    let r = dims.count
    let axisList = try (axes ?? Array(0..<starts.count)).map { a -> Int in
      let v = a < 0 ? a + r : a
      guard v >= 0, v < r else { throw c.fail("axis \(a) is out of range for rank \(r)") }
      return v
    }
    let stepList = steps ?? Array(repeating: 1, count: starts.count)
    guard ends.count == starts.count, axisList.count == starts.count, stepList.count == starts.count else {
      throw c.fail("starts, ends, axes and steps differ in length")
    }
    var first = [Int](repeating: 0, count: r)
    var step = [Int](repeating: 1, count: r)
    var outDims = dims
    for (k, axis) in axisList.enumerated() {
      let d = dims[axis]
      let st = stepList[k]
      guard st != 0 else { throw c.fail("step 0 on axis \(axis)") }
      func clamp(_ v: Int, _ lo: Int, _ hi: Int) -> Int { min(max(v, lo), hi) }
      var b = starts[k] < 0 ? starts[k] + d : starts[k]
      var e = ends[k] < 0 ? ends[k] + d : ends[k]
      // Steps come from the file: counted as ⌈span / |step|⌉ without forming span + step.
      if st > 0 {
        b = clamp(b, 0, d)
        e = clamp(e, 0, d)
        outDims[axis] = e > b ? (e - b - 1) / st + 1 : 0
      } else {
        b = clamp(b, -1, d - 1)
        e = clamp(e, -1, d - 1)
        outDims[axis] = b > e ? (b - e - 1) / -max(st, -Int.max) + 1 : 0
      }
      first[axis] = b
      step[axis] = st
    }
    var strides = [Int](repeating: 1, count: r)
    for k in stride(from: r - 2, through: 0, by: -1) { strides[k] = strides[k + 1] * dims[k + 1] }
    let count = outDims.reduce(1, *)
    var source = [Int](repeating: 0, count: count)
    for i in 0..<count {
      var rest = i
      var k = 0
      for axis in stride(from: r - 1, through: 0, by: -1) {
        k += (first[axis] + (rest % outDims[axis]) * step[axis]) * strides[axis]
        rest /= outDims[axis]
      }
      source[i] = k
    }
    return (outDims, source)
  }

  /// ReduceMean over the spatial axes of a 4-D tensor: global average pooling, with the
  /// transposes an NHWC exporter needs (axes [1, 2]) and the reshape `keepdims = 0` asks for.
  mutating func importReduceMean(_ c: ONNXNodeContext, x: String) throws {
    let shape = try shapeOf(x, c)
    var axes = try c.ints("axes")
    if opset >= 18, let a = c.input(1) { axes = try intConstant(a, c, what: "axes") }
    let rank = shape.count
    let resolved = Set((axes ?? Array(0..<rank)).map { $0 < 0 ? $0 + rank : $0 })
    let keep = try c.int("keepdims", 1) != 0
    guard rank == 4, resolved == [2, 3] || resolved == [1, 2] else {
      throw c.fail(
        "ReduceMean over axes \(axes ?? []) of a rank-\(rank) tensor is not supported (only the spatial axes of a 4-D tensor)")
    }
    let nhwc = resolved == [1, 2]
    let base = c.label
    var current = x
    func step(_ op: Op, _ suffix: String, final: Bool) throws {
      guard let out = c.node.outputs.first, !out.isEmpty else { throw c.fail("has no output") }
      let name = final ? out : "\(out)/\(suffix)"
      try emit(op, label: final ? base : "\(base)/\(suffix)", opType: c.node.opType, inputs: [current], outputs: [name])
      current = name
    }
    if nhwc { try step(.transpose(permutation: [0, 3, 1, 2]), "to_nchw", final: false) }
    let channels = nhwc ? shape[3] : shape[1]
    if keep {
      try step(.globalAveragePool, "pool", final: !nhwc)
      if nhwc { try step(.transpose(permutation: [0, 2, 3, 1]), "to_nhwc", final: true) }
    } else {
      try step(.globalAveragePool, "pool", final: false)
      try step(.reshape(shape: [0, channels]), "flatten", final: true)
    }
  }
}
