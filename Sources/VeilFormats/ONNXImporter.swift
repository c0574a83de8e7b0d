import Foundation
import VeilGraph
import VeilTensor

// The importer's core (part of `ONNXReader`): tensors and external data, the node order, and
// the values and operands of the graph being built.

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
  /// Survey mode (`ONNXReader.survey`): every input and node that cannot be imported is
  /// recorded in `problems` and the import goes on past it, instead of stopping at the first.
  var surveying = false
  var problems: [ONNXSurvey.Problem] = []
  /// Survey mode: values that a failed node should have made (unknown to later nodes).
  var failedValues: Set<String> = []
  var uncheckedNodes = 0

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
    if surveying, !ONNXReader.supportedOpsets.contains(Int(clamping: version)) {
      let range = ONNXReader.supportedOpsets
      problems.append(
        .init(kind: .model, name: "opset", op: nil, detail: "opset \(version) is not supported (supported: \(range.lowerBound)–\(range.upperBound))"))
    } else if !ONNXReader.supportedOpsets.contains(Int(clamping: version)) {
      throw FormatError.unsupported(
        format: Self.format,
        detail:
          "opset \(version) is not supported (supported: \(ONNXReader.supportedOpsets.lowerBound)–\(ONNXReader.supportedOpsets.upperBound))"
      )
    }
    opset = min(max(Int(clamping: version), ONNXReader.supportedOpsets.lowerBound), ONNXReader.supportedOpsets.upperBound)
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
      let shape: [Int]
      do { shape = try inputShape(v, nodes: g.nodes) } catch where surveying {
        problems.append(.init(kind: .input, name: v.name, op: nil, detail: Self.detail(error)))
        // Go on with the symbolic (and any out-of-range) dimensions at 1, so the nodes after it
        // are checked too; a shape still too large to count goes on as all ones.
        let fixed = (v.dims ?? []).map { d in d.flatMap { (1...Int64(Int32.max)).contains($0) ? Int($0) : nil } ?? 1 }
        let fits = fixed.reduce((1, true)) { acc, d in
          let (p, overflow) = acc.0.multipliedReportingOverflow(by: d)
          return (p, acc.1 && !overflow && p <= Int(Int32.max))
        }.1
        shape = fits ? fixed : fixed.map { _ in 1 }
      }
      values[v.name] = graph.addInput(name: v.name, shape: shape)
      if let t = v.elemType, let type = Self.wireTypes[t] { graph.metadata[WireIntegerType.metadataKey(input: v.name)] = type.rawValue }
    }
    for n in try ordered(fusingSiLU(g.nodes, graphOutputs: Set(g.outputs.map(\.name)))) {
      guard surveying else {
        try importNode(n)
        continue
      }
      let after = n.inputs.contains(where: failedValues.contains)
      do { try importNode(n) } catch {
        let detail = Self.detail(error)
        // After a failure only an op that is unknown whatever its inputs is a finding; the
        // rest may fail for want of what the failed node should have made.
        if !after || detail.contains("unknown op") {
          problems.append(.init(kind: .node, name: label(n), op: n.opType, detail: detail))
        } else {
          uncheckedNodes += 1
        }
        for o in n.outputs where !o.isEmpty && values[o] == nil && constants[o] == nil {
          failedValues.insert(o)
          values[o] = graph.addValue(name: o)
        }
      }
    }
    if surveying { return graph }
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

  /// The words of an import error without the format's prefix.
  static func detail(_ error: any Error) -> String {
    if let e = error as? FormatError {
      switch e {
      case .unsupportedNode(_, _, _, let detail): return detail
      case .unsupported(_, let detail), .invalidGraph(_, let detail): return detail
      default: return "\(e)"
      }
    }
    return "\(error)"
  }

  // MARK: Tensors

  /// The integer inputs Veil takes: codes of a quantised map (`WireIntegerType`), by their
  /// ONNX element type.
  static let wireTypes: [Int64: WireIntegerType] = [2: .uint8, 4: .uint16]

  func inputShape(_ v: ONNXProto.ValueInfo, nodes: [ONNXProto.Node]) throws -> [Int] {
    if let t = v.elemType, t != ONNXProto.DataType.float {
      // UINT8 / UINT16 codes that only a Cast to float reads hold the same numbers as floats.
      let readers = nodes.filter { $0.inputs.contains(v.name) }
      let castsToFloat = readers.allSatisfy { n in
        if n.opType == "Cast", case .int(ONNXProto.DataType.float)? = n.attributes["to"] { return true }
        return false
      }
      guard Self.wireTypes[t] != nil, !readers.isEmpty, castsToFloat else {
        throw FormatError.unsupported(
          format: Self.format,
          detail: "input '\(v.name)' has element type \(t); only float inputs are supported, and UINT8 / UINT16 ones that only a Cast to float reads")
      }
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
        let params = v.dimParams
        let param = i < params.count ? params[i].map { " ('\($0)')" } ?? "" : ""
        let shown = dims.enumerated().map { k, d in d.map(String.init) ?? (k < params.count ? params[k] : nil) ?? "?" }
        throw FormatError.unsupported(
          format: Self.format,
          detail:
            "input '\(v.name)' has a symbolic dimension at axis \(i)\(param) of [\(shown.joined(separator: ", "))]; only the batch may be symbolic: export the model with that dimension fixed")
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

  /// `count` little-endian words of `size` bytes from `raw` (whose length `rawBytes` checked),
  /// each made into a value by `make`. (Float weights are written straight into their tensor
  /// instead: VGG-16's would need 1.1 GB of words on the way.)
  func littleEndian<T>(_ raw: ArraySlice<UInt8>, size: Int, count: Int, _ make: (UInt64) -> T) -> [T] {
    var out: [T] = []
    out.reserveCapacity(count)
    var i = raw.startIndex
    for _ in 0..<count {
      var word: UInt64 = 0
      for j in 0..<size { word |= UInt64(raw[i + j]) << (8 * UInt64(j)) }
      out.append(make(word))
      i += size
    }
    return out
  }

  func checkCount(_ t: ONNXProto.Tensor, _ found: Int, _ count: Int) throws {
    guard found == count else {
      throw FormatError.malformed(
        format: Self.format, offset: t.offset,
        detail: "tensor '\(t.name)' holds \(found) values, but dims \(t.dims) need \(count)")
    }
  }

  /// The `count` values of `t`: from its raw data (`size` little-endian bytes each) where it has
  /// some, else from its typed field `typed`.
  mutating func values<Typed, Value>(
    _ t: ONNXProto.Tensor, count: Int, size: Int, typed: [Typed], fromRaw: (UInt64) -> Value,
    fromTyped: (Typed) -> Value
  ) throws -> [Value] {
    if let raw = try rawBytes(t, count: count, size: size) { return littleEndian(raw, size: size, count: count, fromRaw) }
    try checkCount(t, typed.count, count)
    return typed.map(fromTyped)
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
      let halves = try values(
        t, count: count, size: 2, typed: t.int32Data, fromRaw: { UInt16(truncatingIfNeeded: $0) },
        fromTyped: { UInt16(truncatingIfNeeded: $0) })
      return .floats(Tensor(shape: dims) { out in for k in 0..<count { out[k] = halfToFloat(halves[k]) } })
    case ONNXProto.DataType.double:
      let ds = try values(t, count: count, size: 8, typed: t.doubleData, fromRaw: { Double(bitPattern: $0) }, fromTyped: { $0 })
      return .floats(Tensor(shape: dims) { out in for k in 0..<count { out[k] = Float(ds[k]) } })
    case ONNXProto.DataType.int64:
      return .ints(
        dims: dims,
        values: try values(t, count: count, size: 8, typed: t.int64Data, fromRaw: { Int64(bitPattern: $0) }, fromTyped: { $0 }))
    case ONNXProto.DataType.bool:
      return .ints(
        dims: dims, values: try values(t, count: count, size: 1, typed: t.int32Data, fromRaw: { Int64($0) }, fromTyped: { $0 }))
    case ONNXProto.DataType.int32:
      return .ints(
        dims: dims,
        values: try values(
          t, count: count, size: 4, typed: t.int32Data,
          fromRaw: { Int64(Int32(bitPattern: UInt32(truncatingIfNeeded: $0))) }, fromTyped: { $0 }))
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
