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
  /// What a symbolic leading dimension reads as. Shape arithmetic folds at this batch, so a
  /// graph whose reshapes multiply the batch into another dimension (a transformer's heads)
  /// runs at it, where `Graph.withBatch` could not re-infer it.
  var batchSize = 1
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
    let graphOutputs = Set(g.outputs.map(\.name))
    var fused = fusingSiLU(g.nodes, graphOutputs: graphOutputs)
    fused = fusingGELU(fused, graphOutputs: graphOutputs)
    fused = fusingLayerNorm(fused, graphOutputs: graphOutputs)
    for n in try ordered(fused) {
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
    guard dims.count <= FormatLimits.maxRank else {
      throw FormatError.malformed(
        format: Self.format, offset: v.offset,
        detail: "input '\(v.name)' has rank \(dims.count), more than the \(FormatLimits.maxRank) Veil reads")
    }
    let shape = try dims.enumerated().map { i, d in
      if let d {
        guard d >= 1, d <= Int64(Int32.max) else {
          throw FormatError.malformed(
            format: Self.format, offset: v.offset, detail: "input '\(v.name)' has dimension \(d)")
        }
        return Int(d)
      }
      // A symbolic batch is run at `batchSize` (1 unless asked; the executor re-plans for
      // other batch sizes where the graph allows it).
      guard i == 0 else {
        let params = v.dimParams
        let param = i < params.count ? params[i].map { " ('\($0)')" } ?? "" : ""
        let shown = dims.enumerated().map { k, d in d.map(String.init) ?? (k < params.count ? params[k] : nil) ?? "?" }
        throw FormatError.unsupported(
          format: Self.format,
          detail:
            "input '\(v.name)' has a symbolic dimension at axis \(i)\(param) of [\(shown.joined(separator: ", "))]; only the batch may be symbolic: export the model with that dimension fixed")
      }
      return batchSize
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

  /// Sigmoid(x) read only by a Mul(x, ·) is SiLU, and HardSigmoid(x) with α = 1/6, β = 1/2 read
  /// only by a Mul(x, ·) is HardSwish: one op each in Veil (exporters before opset 14 spell
  /// them as two), which then fuses into the convolution before it.
  func fusingSiLU(_ nodes: [ONNXProto.Node], graphOutputs: Set<String>) -> [ONNXProto.Node] {
    var readers: [String: [Int]] = [:]
    for (i, n) in nodes.enumerated() { for x in Set(n.inputs) { readers[x, default: []].append(i) } }
    func attribute(_ n: ONNXProto.Node, _ name: String, _ fallback: Float) -> Float? {
      switch n.attributes[name] {
      case nil: return fallback
      case .float(let f): return f
      default: return nil
      }
    }
    return Self.rewriting(nodes) { nodes, removed in
      for (i, s) in nodes.enumerated() where (s.opType == "Sigmoid" || s.opType == "HardSigmoid") && s.domain.isEmpty {
        guard s.inputs.count == 1, s.outputs.count == 1, let x = s.inputs.first, let y = s.outputs.first,
          !graphOutputs.contains(y), let r = readers[y], r.count == 1
        else { continue }
        let gate: Activation
        if s.opType == "Sigmoid" {
          gate = .silu
        } else {
          // PyTorch writes α as the float nearest 1/6 (0.16666667).
          guard let a = attribute(s, "alpha", 0.2), let b = attribute(s, "beta", 0.5), abs(a - 1 / 6) < 1e-6, b == 0.5 else {
            continue
          }
          gate = .hardSwish
        }
        let m = nodes[r[0]]
        guard m.opType == "Mul", m.domain.isEmpty, m.fused == nil, m.inputs.count == 2, Set(m.inputs) == [x, y] else {
          continue
        }
        nodes[r[0]].inputs = [x]
        nodes[r[0]].fused = gate
        removed.insert(i)
      }
    }
  }

  /// Runs a fusion pass over a copy of `nodes`: `body` rewrites the nodes that become the fused
  /// op and adds the indices of those the fused op replaces to `removed`; the result is the rest,
  /// in their order.
  static func rewriting(
    _ nodes: [ONNXProto.Node], _ body: (inout [ONNXProto.Node], inout Set<Int>) -> Void
  ) -> [ONNXProto.Node] {
    var nodes = nodes
    var removed = Set<Int>()
    body(&nodes, &removed)
    return nodes.indices.filter { !removed.contains($0) }.map { nodes[$0] }
  }

  /// GELU's erf form as exporters write it before opset 20, 0.5 · x · (1 + erf(x / √2)), is one
  /// op in Veil: Erf reading Div(x, √2) (or Mul(x, 1/√2)), an Add of 1, and two Muls that
  /// multiply x, 0.5 and the sum in any order. Each intermediate value must have no other reader.
  mutating func fusingGELU(_ nodes: [ONNXProto.Node], graphOutputs: Set<String>) -> [ONNXProto.Node] {
    let f = FusionIndex(nodes, graphOutputs: graphOutputs)
    func scalar(_ name: String) -> Float? { f.scalar(name, &self) }
    func near(_ v: Float?, _ target: Float) -> Bool { v.map { abs($0 - target) <= 1e-4 * target } ?? false }
    return Self.rewriting(nodes) { nodes, removed in
      for (e, erf) in nodes.enumerated() where f.isOp(e, "Erf", inputs: 1) {
        // x / √2 or x · (1/√2)
        guard let d = f.producer[erf.inputs[0]], f.soleReader(erf.inputs[0]) == e, nodes[d].inputs.count == 2 else { continue }
        let x = nodes[d].inputs[0]
        guard (f.isOp(d, "Div", inputs: 2) && near(scalar(nodes[d].inputs[1]), 1.414_213_6))
          || (f.isOp(d, "Mul", inputs: 2) && near(scalar(nodes[d].inputs[1]), 0.707_106_78))
        else { continue }
        // 1 + erf
        guard let erfOut = erf.outputs.first, let a = f.soleReader(erfOut), f.isOp(a, "Add", inputs: 2),
          let sum = nodes[a].outputs.first, let one = nodes[a].inputs.first(where: { $0 != erfOut }), near(scalar(one), 1)
        else { continue }
        // Two Muls over {x, 0.5, sum}: the first reads two of them, the second its result and the third.
        let halfOfX = f.readers[x]?.first { f.isOp($0, "Mul", inputs: 2) && nodes[$0].inputs.contains { near(scalar($0), 0.5) } }
        var pair: (Int, Int)? = nil
        for first in [f.soleReader(sum), halfOfX] {
          guard let m1 = first, f.isOp(m1, "Mul", inputs: 2), let m1Out = nodes[m1].outputs.first,
            let m2 = f.soleReader(m1Out), f.isOp(m2, "Mul", inputs: 2)
          else { continue }
          let factors = nodes[m1].inputs + nodes[m2].inputs.filter { $0 != m1Out }
          guard factors.count == 3, factors.filter({ $0 == x }).count == 1, factors.filter({ $0 == sum }).count == 1,
            factors.contains(where: { $0 != x && $0 != sum && near(scalar($0), 0.5) })
          else { continue }
          pair = (m1, m2)
          break
        }
        guard let (m1, m2) = pair, nodes[m2].fused == nil else { continue }
        nodes[m2].inputs = [x]
        nodes[m2].fused = .gelu(tanh: false)
        removed.formUnion([d, e, a, m1])
      }
    }
  }

  /// LayerNormalization as exporters write it before opset 17: m = ReduceMean(x) over trailing
  /// axes, d = x − m, v = ReduceMean(d^2) over the same axes, y = d / √(v + ε), then · γ and
  /// + β (constants). Becomes one LayerNormalization node; each intermediate value must have no
  /// reader outside the pattern.
  mutating func fusingLayerNorm(_ nodes: [ONNXProto.Node], graphOutputs: Set<String>) -> [ONNXProto.Node] {
    let f = FusionIndex(nodes, graphOutputs: graphOutputs)
    func scalar(_ name: String) -> Float? { f.scalar(name, &self) }
    /// The axes a ReduceMean reduces (keepdims on), from its attribute or (opset 18) its input.
    func reducedAxes(_ i: Int) -> [Int64]? {
      guard f.isOp(i, "ReduceMean", inputs: nil), (try? ONNXNodeContext(node: nodes[i], label: "", opset: opset).int("keepdims", 1)) == 1
      else { return nil }
      if case .ints(let a)? = nodes[i].attributes["axes"] { return a }
      if nodes[i].inputs.count > 1 { return f.integers(nodes[i].inputs[1], &self) }
      return nil
    }
    return Self.rewriting(nodes) { nodes, removed in
      for (m, mean) in nodes.enumerated() {
        guard let axes = reducedAxes(m), let x = mean.inputs.first, let mOut = mean.outputs.first,
          let s = f.soleReader(mOut), f.isOp(s, "Sub", inputs: 2), nodes[s].inputs == [x, mOut], let d = nodes[s].outputs.first,
          let dReaders = f.readers[d], dReaders.count == 2, !graphOutputs.contains(d),
          let p = dReaders.first(where: { f.isOp($0, "Pow", inputs: 2) }), scalar(nodes[p].inputs[1]) == 2,
          nodes[p].inputs[0] == d, let pOut = nodes[p].outputs.first,
          let v = f.soleReader(pOut), reducedAxes(v) == axes, let vOut = nodes[v].outputs.first,
          let a = f.soleReader(vOut), f.isOp(a, "Add", inputs: 2), let aOut = nodes[a].outputs.first,
          let eps = nodes[a].inputs.first(where: { $0 != vOut }).flatMap(scalar),
          let q = f.soleReader(aOut), f.isOp(q, "Sqrt", inputs: 1), let qOut = nodes[q].outputs.first,
          let dv = f.soleReader(qOut), f.isOp(dv, "Div", inputs: 2), nodes[dv].inputs == [d, qOut],
          dReaders.contains(dv), let dvOut = nodes[dv].outputs.first,
          let ml = f.soleReader(dvOut), f.isOp(ml, "Mul", inputs: 2), let mlOut = nodes[ml].outputs.first,
          let gamma = nodes[ml].inputs.first(where: { $0 != dvOut }), constants[gamma] != nil
        else { continue }
        // The trailing axes, counted from the end (as exporters write them; a positive axis
        // could not be checked to be trailing before shapes are known).
        let sorted = axes.sorted()
        guard let first = sorted.first, first == -Int64(sorted.count), sorted == Array(first...(-1)) else { continue }
        var last = ml
        var inputs = [x, gamma]
        if let b = f.soleReader(mlOut), f.isOp(b, "Add", inputs: 2),
          let beta = nodes[b].inputs.first(where: { $0 != mlOut }), constants[beta] != nil
        {
          last = b
          inputs.append(beta)
        }
        nodes[last].opType = "LayerNormalization"
        nodes[last].inputs = inputs
        nodes[last].attributes = ["axis": .int(first), "epsilon": .float(eps)]
        removed.formUnion([m, s, p, v, a, q, dv, ml].filter { $0 != last })
      }
    }
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

/// Who produces and who reads each value of a node list, for the import-time fusions.
struct FusionIndex {
  let nodes: [ONNXProto.Node]
  let graphOutputs: Set<String>
  var readers: [String: [Int]] = [:]
  var producer: [String: Int] = [:]

  init(_ nodes: [ONNXProto.Node], graphOutputs: Set<String>) {
    self.nodes = nodes
    self.graphOutputs = graphOutputs
    for (i, n) in nodes.enumerated() {
      for x in Set(n.inputs) { readers[x, default: []].append(i) }
      for o in n.outputs where !o.isEmpty { producer[o] = i }
    }
  }

  /// Node `i` is a default-domain `op` with `inputs` inputs (any number when nil), not fused yet.
  func isOp(_ i: Int, _ op: String, inputs: Int?) -> Bool {
    nodes[i].opType == op && nodes[i].domain.isEmpty && nodes[i].fused == nil && (inputs.map { nodes[i].inputs.count == $0 } ?? true)
  }

  /// The single node that reads `value`, when nothing else (a graph output included) does.
  func soleReader(_ value: String) -> Int? {
    guard !graphOutputs.contains(value), let r = readers[value], r.count == 1 else { return nil }
    return r[0]
  }

  /// The tensor a Constant node holds, decoded by the importer.
  private func constantNode(_ name: String, _ importer: inout ONNXImporter) -> ONNXImportedConstant? {
    guard let p = producer[name], nodes[p].opType == "Constant", nodes[p].attributes.count == 1 else { return nil }
    switch nodes[p].attributes.first?.value {
    case .float(let f): return .floats(Tensor(shape: [], repeating: f))
    case .int(let i): return .ints(dims: [], values: [i])
    case .ints(let v): return .ints(dims: [v.count], values: v)
    case .tensor(let t): return try? importer.constant(t)
    default: return nil
    }
  }

  /// The value of a one-element float constant: an initializer or a Constant node.
  func scalar(_ name: String, _ importer: inout ONNXImporter) -> Float? {
    guard case .floats(let t)? = importer.constants[name] ?? constantNode(name, &importer), t.count == 1 else { return nil }
    return t.storage.pointer[0]
  }

  /// The values of an integer constant: an initializer or a Constant node.
  func integers(_ name: String, _ importer: inout ONNXImporter) -> [Int64]? {
    guard case .ints(_, let v)? = importer.constants[name] ?? constantNode(name, &importer) else { return nil }
    return v
  }
}
