import Foundation
import VeilGraph
import VeilTensor

/// Writes a `Graph` as an ONNX ModelProto (IR version 8, default-domain opset 17) that
/// `onnx.checker` accepts and ONNX Runtime runs.
///
/// Veil's fused nodes are written back as the plain ONNX nodes they came from: a Conv with
/// post-ops `[.sum, .activation(.relu)]` becomes Conv → Add(residual) → Relu, and SiLU becomes
/// Sigmoid → Mul, so any ONNX tool reads the result. Value and node names are made C90
/// identifiers (as the ONNX IR spec asks; `layer1.0.conv1.weight` becomes
/// `layer1_0_conv1_weight`) and unique; intermediate values introduced by unfusing get fresh
/// names derived from their node's.
public enum ONNXWriter {
  public static let irVersion: Int64 = 8
  public static let opsetVersion: Int64 = 17
  public static let producerName = "veil"

  /// `batchDimension`: write the leading dimension of the inputs and outputs (and of every
  /// intermediate value whose leading dimension is the batch) as this symbolic name (ONNX's
  /// `dim_param`) instead of 1, for servers that batch requests (Triton with `max_batch_size` > 0
  /// needs it). The graph must re-batch: run at batch 2 (`Graph.withBatch`), every output's
  /// leading dimension must become 2, or the write is refused with the output that does not.
  /// nil (the default): every dimension as the graph has it.
  public static func serialize(_ graph: Graph, batchDimension: String? = nil) throws -> [UInt8] {
    var lowering = ONNXLowering(graph)
    var model = try lowering.lower()
    if let batchDimension { try model.makeBatchSymbolic(batchDimension, graph: lowering.graph, names: lowering.names) }
    return model.encode()
  }

  public static func write(_ graph: Graph, to url: URL, batchDimension: String? = nil) throws {
    try FileIO.write(serialize(graph, batchDimension: batchDimension), to: url)
  }
}

// MARK: - The ONNX-side model, ready to encode

/// ONNX `TensorProto.DataType` codes used here.
enum ONNXDataType: Int64 {
  case float = 1
  case uint8 = 2
  case uint16 = 4
  case int64 = 7
}

enum ONNXAttribute {
  case int(Int)
  case float(Float)
  case string(String)
  case ints([Int])
}

struct ONNXNode {
  var name: String
  var opType: String
  var inputs: [String]
  var outputs: [String]
  var attributes: [(String, ONNXAttribute)] = []
}

/// An initializer: one of the graph's weights (written straight from its storage), or a
/// constant the lowering creates (Reshape's shape, Clip's bounds, Pad's pads).
enum ONNXConstantData {
  case tensor(Tensor)
  case floats([Float])
  case int64s([Int64])
}

struct ONNXConstant {
  var name: String
  var dims: [Int]
  var data: ONNXConstantData
}

struct ONNXValueInfo {
  var name: String
  var shape: [Int]?
  /// The element type (float unless a graph input is marked as integers, see `WireIntegerType`).
  var elemType: ONNXDataType = .float
  /// When set, the leading dimension is written as this `dim_param` instead of `shape[0]`.
  var batchParam: String? = nil
}

struct ONNXModel {
  var graphName: String
  var nodes: [ONNXNode]
  var initializers: [ONNXConstant]
  var inputs: [ONNXValueInfo]
  var outputs: [ONNXValueInfo]
  var valueInfo: [ONNXValueInfo]
  var metadata: [(String, String)]

  /// Field numbers from onnx.proto (ONNX 1.x; stable since IR version 3).
  enum Field {
    // ModelProto
    static let irVersion = 1, producerName = 2, graph = 7, opsetImport = 8, metadataProps = 14
    // OperatorSetIdProto
    static let opsetDomain = 1, opsetVersion = 2
    // StringStringEntryProto
    static let entryKey = 1, entryValue = 2
    // GraphProto
    static let graphNode = 1, graphName = 2, graphInitializer = 5, graphInput = 11, graphOutput = 12,
      graphValueInfo = 13
    // NodeProto
    static let nodeInput = 1, nodeOutput = 2, nodeName = 3, nodeOpType = 4, nodeAttribute = 5
    // AttributeProto
    static let attrName = 1, attrF = 2, attrI = 3, attrS = 4, attrInts = 8, attrType = 20
    // TensorProto
    static let tensorDims = 1, tensorDataType = 2, tensorName = 8, tensorRawData = 9
    // ValueInfoProto
    static let valueName = 1, valueType = 2
    // TypeProto / TypeProto.Tensor / TensorShapeProto / TensorShapeProto.Dimension
    static let typeTensorType = 1, tensorElemType = 1, tensorShape = 2, shapeDim = 1, dimValue = 1, dimParam = 2
  }

  /// AttributeProto.AttributeType codes.
  enum AttributeType {
    static let float: Int64 = 1, int: Int64 = 2, string: Int64 = 3, ints: Int64 = 7
  }

  func encode() -> [UInt8] {
    let weightBytes = initializers.reduce(0) { total, c in
      if case .tensor(let t) = c.data { return total + 4 * t.count }
      return total
    }
    var e = ProtobufEncoder(reservingCapacity: weightBytes + (1 << 16))
    e.int64(Field.irVersion, ONNXWriter.irVersion)
    e.string(Field.producerName, ONNXWriter.producerName)
    e.message(Field.graph) { encodeGraph(&$0) }
    e.message(Field.opsetImport) { o in
      o.string(Field.opsetDomain, "")
      o.int64(Field.opsetVersion, ONNXWriter.opsetVersion)
    }
    for (k, v) in metadata {
      e.message(Field.metadataProps) { m in
        m.string(Field.entryKey, k)
        m.string(Field.entryValue, v)
      }
    }
    return e.bytes
  }

  private func encodeGraph(_ e: inout ProtobufEncoder) {
    for n in nodes {
      e.message(Field.graphNode) { m in
        for i in n.inputs { m.string(Field.nodeInput, i) }
        for o in n.outputs { m.string(Field.nodeOutput, o) }
        m.string(Field.nodeName, n.name)
        m.string(Field.nodeOpType, n.opType)
        for (name, value) in n.attributes {
          m.message(Field.nodeAttribute) { a in encodeAttribute(&a, name, value) }
        }
      }
    }
    e.string(Field.graphName, graphName)
    for c in initializers {
      e.message(Field.graphInitializer) { t in encodeTensor(&t, c) }
    }
    for v in inputs { e.message(Field.graphInput) { encodeValueInfo(&$0, v) } }
    for v in outputs { e.message(Field.graphOutput) { encodeValueInfo(&$0, v) } }
    for v in valueInfo { e.message(Field.graphValueInfo) { encodeValueInfo(&$0, v) } }
  }

  private func encodeAttribute(_ a: inout ProtobufEncoder, _ name: String, _ value: ONNXAttribute) {
    a.string(Field.attrName, name)
    let type: Int64
    switch value {
    case .int(let i):
      a.int(Field.attrI, i)
      type = AttributeType.int
    case .float(let f):
      a.float(Field.attrF, f)
      type = AttributeType.float
    case .string(let s):
      a.string(Field.attrS, s)
      type = AttributeType.string
    case .ints(let v):
      a.packedInt(Field.attrInts, v)
      type = AttributeType.ints
    }
    a.int64(Field.attrType, type)
  }

  private func encodeTensor(_ t: inout ProtobufEncoder, _ c: ONNXConstant) {
    t.packedInt(Field.tensorDims, c.dims)
    switch c.data {
    case .tensor(let tensor):
      t.int64(Field.tensorDataType, ONNXDataType.float.rawValue)
      t.string(Field.tensorName, c.name)
      t.message(Field.tensorRawData) { raw in tensor.withUnsafeBuffer { raw.appendRawFloats($0) } }
    case .floats(let v):
      t.int64(Field.tensorDataType, ONNXDataType.float.rawValue)
      t.string(Field.tensorName, c.name)
      t.message(Field.tensorRawData) { raw in v.withUnsafeBufferPointer { raw.appendRawFloats($0) } }
    case .int64s(let v):
      t.int64(Field.tensorDataType, ONNXDataType.int64.rawValue)
      t.string(Field.tensorName, c.name)
      t.message(Field.tensorRawData) { raw in
        for x in v { raw.appendFixed64(UInt64(bitPattern: x)) }
      }
    }
  }

  private func encodeValueInfo(_ e: inout ProtobufEncoder, _ v: ONNXValueInfo) {
    e.string(Field.valueName, v.name)
    e.message(Field.valueType) { type in
      type.message(Field.typeTensorType) { tensor in
        tensor.int64(Field.tensorElemType, v.elemType.rawValue)
        if let shape = v.shape {
          // A rank-0 shape is still written (an empty TensorShapeProto), so it reads as a scalar.
          tensor.message(Field.tensorShape) { s in
            for (i, d) in shape.enumerated() {
              s.message(Field.shapeDim) { dim in
                if i == 0, let p = v.batchParam { dim.string(Field.dimParam, p) } else { dim.int(Field.dimValue, d) }
              }
            }
          }
        }
      }
    }
  }
}

extension ONNXModel {
  /// Marks the batch dimension symbolic (see `ONNXWriter.serialize(_:batchDimension:)`). `graph`
  /// is the lowered graph (sorted, shapes inferred at batch 1), `names` its values' ONNX names.
  mutating func makeBatchSymbolic(_ param: String, graph: Graph, names: [ValueID: String]) throws {
    func refuse(_ detail: String) -> FormatError {
      .invalidGraph(format: ONNXLowering.format, detail: "cannot write a symbolic batch dimension '\(param)': \(detail)")
    }
    guard !param.isEmpty, ONNXNameTable.sanitize(param) == param else {
      throw refuse("the name must be an identifier (letters, digits, '_')")
    }
    for v in graph.inputs {
      guard let s = graph.shape(v), s.first == 1 else {
        throw refuse("input '\(graph[v].name)' has shape \(graph.shape(v) ?? []), not a batch of 1")
      }
    }
    let twice: Graph
    do { twice = try graph.withBatch(2) } catch {
      throw refuse("the graph does not run at batch 2 (\(error)); its shapes are fixed at batch 1")
    }
    /// A value whose leading dimension follows the batch: 1 at batch 1, 2 at batch 2, the rest equal.
    func followsBatch(_ v: ValueID) -> Bool {
      guard let one = graph.shape(v), let two = twice.shape(v), one.count == two.count, one.first == 1, two.first == 2
      else { return false }
      return one.dropFirst() == two.dropFirst()
    }
    for v in graph.outputs where !followsBatch(v) {
      throw refuse(
        "output '\(graph[v].name)' is \(graph.shape(v) ?? []) at batch 1 but \(twice.shape(v) ?? []) at batch 2 (a Reshape or Resize fixes the batch)")
    }
    let batched = Set((graph.inputs + graph.outputs + graph.nodes.flatMap(\.outputs)).filter(followsBatch).compactMap { names[$0] })
    for i in inputs.indices { inputs[i].batchParam = param }
    // Outputs routed through an Identity keep their source's name with a suffix: every graph
    // output follows the batch (checked above).
    for i in outputs.indices { outputs[i].batchParam = param }
    // Intermediate values: symbolic where they follow the batch, left without a shape otherwise
    // (a fixed 1 there would contradict the runtime's inference at other batch sizes).
    valueInfo = valueInfo.compactMap { v in
      guard batched.contains(v.name) else { return nil }
      var v = v
      v.batchParam = param
      return v
    }
  }
}

// MARK: - Graph IR → ONNX nodes

/// Unique, C90-identifier names within one namespace.
struct ONNXNameTable {
  private var used: Set<String> = []

  static func sanitize(_ s: String) -> String {
    var out = String(
      String.UnicodeScalarView(
        s.unicodeScalars.map { c in
          (c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "_")) ? c : "_"
        }))
    if out.isEmpty { out = "v" }
    if let first = out.unicodeScalars.first, ("0"..."9").contains(first) { out = "_" + out }
    return out
  }

  /// `proposed` made an identifier, with `_1`, `_2`, ... appended while it is taken.
  mutating func claim(_ proposed: String) -> String {
    let base = Self.sanitize(proposed)
    var name = base
    var k = 1
    while used.contains(name) {
      name = "\(base)_\(k)"
      k += 1
    }
    used.insert(name)
    return name
  }
}

struct ONNXLowering {
  static let format = "ONNX export"

  var graph: Graph
  var valueNames = ONNXNameTable()
  var nodeNames = ONNXNameTable()
  var names: [ValueID: String] = [:]
  var nodes: [ONNXNode] = []
  var constants: [ONNXConstant] = []
  /// Shapes of values that are neither graph inputs, outputs nor initializers.
  var intermediate: [ONNXValueInfo] = []

  init(_ graph: Graph) { self.graph = graph }

  mutating func lower() throws -> ONNXModel {
    do {
      try graph.sortTopologically()
      try graph.inferShapes()
    } catch let e as GraphError {
      throw FormatError.invalidGraph(format: Self.format, detail: e.description)
    }
    try checkSecondaryOutputs()

    // Names: graph inputs first so they keep theirs, then weights, then node outputs.
    var read = Set(graph.outputs)
    for n in graph.nodes { read.formUnion(n.inputs) }
    for v in graph.inputs where names[v] == nil { names[v] = valueNames.claim(graph[v].name) }
    let weights = graph.initializers.keys.filter { read.contains($0) && names[$0] == nil }.sorted()
    for v in weights { names[v] = valueNames.claim(graph[v].name) }
    for n in graph.nodes {
      for o in n.outputs.prefix(1) { names[o] = valueNames.claim(graph[o].name) }
    }

    // An input marked as integers on the wire (a quantised map's codes) is declared so, and a
    // Cast to float feeds the nodes that read it: the engine holds the codes as floats.
    var declared: [ValueID: ONNXValueInfo] = [:]
    for v in graph.inputs {
      let type: WireIntegerType?
      do { type = try WireIntegerType.of(input: graph[v].name, in: graph) } catch {
        throw FormatError.invalidGraph(format: Self.format, detail: "\(error)")
      }
      guard let type, let wire = names[v] else { continue }
      let cast = fresh(wire + "_float", shape: graph.shape(v))
      emit("Cast", name: wire + "_cast", inputs: [wire], outputs: [cast], [("to", .int(Int(ONNXDataType.float.rawValue)))])
      names[v] = cast
      declared[v] = ONNXValueInfo(name: wire, shape: graph.shape(v), elemType: type == .uint8 ? .uint8 : .uint16)
    }

    for n in graph.nodes { try lower(n) }

    // ONNX graph outputs must be produced by nodes and listed once each; an input, a weight or
    // a repeated output is routed through an Identity.
    var outputs: [ONNXValueInfo] = []
    var listed = Set<ValueID>()
    for v in graph.outputs {
      var name = try self.name(v)
      if graph.inputs.contains(v) || graph.isConstant(v) || listed.contains(v) {
        let copy = valueNames.claim(name + "_output")
        emit("Identity", name: name + "_output", inputs: [name], outputs: [copy])
        name = copy
      }
      listed.insert(v)
      outputs.append(ONNXValueInfo(name: name, shape: graph.shape(v)))
    }
    let exposed = Set(graph.inputs).union(graph.outputs).union(graph.initializers.keys)
    for n in graph.nodes {
      for o in n.outputs.prefix(1) where !exposed.contains(o) {
        intermediate.append(ONNXValueInfo(name: names[o] ?? "", shape: graph.shape(o)))
      }
    }

    let weightConstants = weights.compactMap { v in
      graph.initializers[v].map { ONNXConstant(name: names[v] ?? "", dims: $0.shape, data: .tensor($0)) }
    }
    return ONNXModel(
      graphName: ONNXNameTable.sanitize(graph.name),
      nodes: nodes,
      initializers: weightConstants + constants,
      inputs: graph.inputs.map { declared[$0] ?? ONNXValueInfo(name: names[$0] ?? "", shape: graph.shape($0)) },
      outputs: outputs,
      valueInfo: intermediate.filter { $0.shape != nil },
      metadata: graph.metadata.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
  }

  /// Dropout's mask is a bool tensor in ONNX; Veil has no such type, so nothing may read it.
  func checkSecondaryOutputs() throws {
    var read = Set(graph.outputs)
    for n in graph.nodes { read.formUnion(n.inputs) }
    for n in graph.nodes {
      for o in n.outputs.dropFirst() where read.contains(o) {
        throw FormatError.unsupportedNode(
          format: Self.format, node: n.name, op: n.op.typeName,
          detail: "its second output '\(graph[o].name)' is read, but only single-output nodes can be written")
      }
    }
  }

  func name(_ v: ValueID) throws -> String {
    guard let n = names[v] else {
      throw FormatError.invalidGraph(format: Self.format, detail: "value '\(graph[v].name)' is read but never defined")
    }
    return n
  }

  mutating func emit(
    _ opType: String, name: String, inputs: [String], outputs: [String], _ attributes: [(String, ONNXAttribute)] = []
  ) {
    nodes.append(
      ONNXNode(name: nodeNames.claim(name), opType: opType, inputs: inputs, outputs: outputs, attributes: attributes))
  }

  mutating func constant(_ name: String, dims: [Int], _ data: ONNXConstantData) -> String {
    let n = valueNames.claim(name)
    constants.append(ONNXConstant(name: n, dims: dims, data: data))
    return n
  }

  /// A fresh intermediate value of the given shape.
  mutating func fresh(_ name: String, shape: [Int]?) -> String {
    let n = valueNames.claim(name)
    intermediate.append(ONNXValueInfo(name: n, shape: shape))
    return n
  }

  mutating func lower(_ node: Node) throws {
    let inputs = try node.opInputs.map { try name($0) }
    let finalOutput = try name(node.outputs[0])
    let shape = graph.shape(node.outputs[0])
    let base = ONNXNameTable.sanitize(node.name)
    var current = node.postOps.isEmpty ? finalOutput : fresh(base + "_" + node.op.typeName.lowercased(), shape: shape)
    try lowerOp(node, inputs: inputs, output: current)
    for (k, p) in node.postOps.enumerated() {
      let output =
        k == node.postOps.count - 1 ? finalOutput : fresh(base + "_" + p.description.lowercased(), shape: shape)
      switch p {
      case .sum:
        guard let r = node.residual else { continue }
        emit("Add", name: base + "_add", inputs: [current, try name(r)], outputs: [output])
      case .activation(let a):
        lowerActivation(a, name: base + "_" + activationName(a), input: current, output: output, shape: shape)
      }
      current = output
    }
  }

  func activationName(_ a: Activation) -> String {
    Op.activation(a).typeName.lowercased()
  }

  mutating func lowerActivation(_ a: Activation, name: String, input: String, output: String, shape: [Int]?) {
    switch a {
    case .relu: emit("Relu", name: name, inputs: [input], outputs: [output])
    case .leakyRelu(let alpha):
      emit("LeakyRelu", name: name, inputs: [input], outputs: [output], [("alpha", .float(alpha))])
    case .clip(let lo, let hi):
      // Since opset 11 the bounds are inputs (scalars), not attributes.
      let minName = constant(name + "_min", dims: [], .floats([lo]))
      let maxName = constant(name + "_max", dims: [], .floats([hi]))
      emit("Clip", name: name, inputs: [input, minName, maxName], outputs: [output])
    case .sigmoid: emit("Sigmoid", name: name, inputs: [input], outputs: [output])
    case .silu:
      // ONNX has no SiLU before opset 24 (Swish): x · sigmoid(x).
      let s = fresh(name + "_sigmoid", shape: shape)
      emit("Sigmoid", name: name + "_sigmoid", inputs: [input], outputs: [s])
      emit("Mul", name: name, inputs: [input, s], outputs: [output])
    case .hardSigmoid(let alpha, let beta):
      emit(
        "HardSigmoid", name: name, inputs: [input], outputs: [output],
        [("alpha", .float(alpha)), ("beta", .float(beta))])
    case .hardSwish: emit("HardSwish", name: name, inputs: [input], outputs: [output])
    case .tanh: emit("Tanh", name: name, inputs: [input], outputs: [output])
    case .sqrt: emit("Sqrt", name: name, inputs: [input], outputs: [output])
    case .gelu(let approximate):
      // Gelu is an op from opset 20; at 17 it is written out as PyTorch exports it.
      func scalar(_ suffix: String, _ v: Float) -> String { constant(name + suffix, dims: [], .floats([v])) }
      func value(_ suffix: String) -> String { fresh(name + suffix, shape: shape) }
      let inner: String
      if approximate {
        // tanh(√(2/π)·(x + 0.044715·x³))
        let (x2, x3, cubic, sum, scaled) = (value("_x2"), value("_x3"), value("_cubic"), value("_sum"), value("_scaled"))
        emit("Mul", name: name + "_x2", inputs: [input, input], outputs: [x2])
        emit("Mul", name: name + "_x3", inputs: [x2, input], outputs: [x3])
        emit("Mul", name: name + "_cubic", inputs: [x3, scalar("_c", 0.044715)], outputs: [cubic])
        emit("Add", name: name + "_sum", inputs: [input, cubic], outputs: [sum])
        emit("Mul", name: name + "_scaled", inputs: [sum, scalar("_k", 0.797_884_56)], outputs: [scaled])
        inner = value("_tanh")
        emit("Tanh", name: name + "_tanh", inputs: [scaled], outputs: [inner])
      } else {
        let divided = value("_div")
        emit("Div", name: name + "_div", inputs: [input, scalar("_sqrt2", 1.414_213_6)], outputs: [divided])
        inner = value("_erf")
        emit("Erf", name: name + "_erf", inputs: [divided], outputs: [inner])
      }
      let (onePlus, product) = (value("_one_plus"), value("_product"))
      emit("Add", name: name + "_one_plus", inputs: [inner, scalar("_one", 1)], outputs: [onePlus])
      emit("Mul", name: name + "_product", inputs: [input, onePlus], outputs: [product])
      emit("Mul", name: name, inputs: [product, scalar("_half", 0.5)], outputs: [output])
    }
  }

  mutating func lowerOp(_ node: Node, inputs: [String], output: String) throws {
    let name = ONNXNameTable.sanitize(node.name)
    let outs = [output]
    switch node.op {
    case .conv(let a):
      emit("Conv", name: name, inputs: inputs, outputs: outs, convAttributes(a))
    case .convTranspose(let a):
      emit(
        "ConvTranspose", name: name, inputs: inputs, outputs: outs,
        convAttributes(a) + [("output_padding", .ints(a.outputPadding))])
    case .batchNormalization(let epsilon):
      emit("BatchNormalization", name: name, inputs: inputs, outputs: outs, [("epsilon", .float(epsilon))])
    case .layerNormalization(let axis, let epsilon):
      emit(
        "LayerNormalization", name: name, inputs: inputs, outputs: outs, [("axis", .int(axis)), ("epsilon", .float(epsilon))])
    case .activation(let a):
      lowerActivation(a, name: name, input: inputs[0], output: output, shape: graph.shape(node.outputs[0]))
    case .maxPool(let p):
      emit("MaxPool", name: name, inputs: inputs, outputs: outs, poolAttributes(p))
    case .averagePool(let p):
      emit(
        "AveragePool", name: name, inputs: inputs, outputs: outs,
        poolAttributes(p) + [("count_include_pad", .int(p.countIncludePad ? 1 : 0))])
    case .globalAveragePool:
      emit("GlobalAveragePool", name: name, inputs: inputs, outputs: outs)
    case .binary:
      emit(node.op.typeName, name: name, inputs: inputs, outputs: outs)
    case .concat(let axis):
      emit("Concat", name: name, inputs: inputs, outputs: outs, [("axis", .int(axis))])
    case .gemm(let g):
      emit(
        "Gemm", name: name, inputs: inputs, outputs: outs,
        [
          ("alpha", .float(g.alpha)), ("beta", .float(g.beta)), ("transA", .int(g.transA ? 1 : 0)),
          ("transB", .int(g.transB ? 1 : 0)),
        ])
    case .matMul:
      emit("MatMul", name: name, inputs: inputs, outputs: outs)
    case .flatten(let axis):
      emit("Flatten", name: name, inputs: inputs, outputs: outs, [("axis", .int(axis))])
    case .reshape(let shape):
      let s = constant(name + "_shape", dims: [shape.count], .int64s(shape.map { Int64($0) }))
      emit("Reshape", name: name, inputs: [inputs[0], s], outputs: outs)
    case .transpose(let perm):
      emit("Transpose", name: name, inputs: inputs, outputs: outs, [("perm", .ints(perm))])
    case .channelShuffle(let groups):
      // ONNX has no channel shuffle: Reshape to [N, g, C/g, rest], Transpose, Reshape back.
      let s = graph.shape(node.inputs[0]) ?? []
      guard s.count >= 2 else { throw FormatError.invalidGraph(format: "ONNX", detail: "ChannelShuffle '\(name)' of unknown shape") }
      let view = [0, groups, s[1] / groups] + s.dropFirst(2)
      let perm = [0, 2, 1] + Array(3..<(s.count + 1))
      let viewShape = constant(name + "_view", dims: [view.count], .int64s(view.map { Int64($0) }))
      let backShape = constant(name + "_shape", dims: [s.count], .int64s(([0] + s.dropFirst()).map { Int64($0) }))
      let grouped = fresh(name + "_grouped", shape: nil)
      let swapped = fresh(name + "_swapped", shape: nil)
      emit("Reshape", name: name + "_grouped", inputs: [inputs[0], viewShape], outputs: [grouped])
      emit("Transpose", name: name + "_swap", inputs: [grouped], outputs: [swapped], [("perm", .ints(perm))])
      emit("Reshape", name: name, inputs: [swapped, backShape], outputs: outs)
    case .slice(let a):
      // Since opset 10 starts, ends, axes and steps are int64 inputs.
      let lists = [("starts", a.starts), ("ends", a.ends), ("axes", a.axes), ("steps", a.steps)].map { role, v in
        constant(name + "_" + role, dims: [v.count], .int64s(v.map { Int64($0) }))
      }
      emit("Slice", name: name, inputs: [inputs[0]] + lists, outputs: outs)
    case .pad(let mode, let pads, let value):
      let p = constant(name + "_pads", dims: [pads.count], .int64s(pads.map { Int64($0) }))
      switch mode {
      case .constant:
        let v = constant(name + "_value", dims: [], .floats([value]))
        emit("Pad", name: name, inputs: [inputs[0], p, v], outputs: outs, [("mode", .string("constant"))])
      case .reflect:
        emit("Pad", name: name, inputs: [inputs[0], p], outputs: outs, [("mode", .string("reflect"))])
      case .edge:
        emit("Pad", name: name, inputs: [inputs[0], p], outputs: outs, [("mode", .string("edge"))])
      }
    case .resize(let kind, let scales, let sizes):
      // Inputs X, roi, scales, sizes; roi is unused by these modes and left out ("").
      var ins = [inputs[0], ""]
      if let sizes {
        ins += ["", constant(name + "_sizes", dims: [sizes.count], .int64s(sizes.map { Int64($0) }))]
      } else if let scales {
        ins.append(constant(name + "_scales", dims: [scales.count], .floats(scales)))
      } else {
        throw FormatError.unsupportedNode(
          format: Self.format, node: node.name, op: "Resize", detail: "neither scales nor sizes is set")
      }
      let attributes: [(String, ONNXAttribute)]
      switch kind {
      case .nearest:
        attributes = [
          ("mode", .string("nearest")), ("coordinate_transformation_mode", .string("asymmetric")),
          ("nearest_mode", .string("floor")),
        ]
      case .linear:
        attributes = [("mode", .string("linear")), ("coordinate_transformation_mode", .string("half_pixel"))]
      }
      emit("Resize", name: name, inputs: ins, outputs: outs, attributes)
    case .softmax(let axis):
      emit("Softmax", name: name, inputs: inputs, outputs: outs, [("axis", .int(axis))])
    case .localResponseNormalization(let size, let alpha, let beta, let bias):
      emit(
        "LRN", name: name, inputs: inputs, outputs: outs,
        [("size", .int(size)), ("alpha", .float(alpha)), ("beta", .float(beta)), ("bias", .float(bias))])
    case .dropout(let ratio):
      // Inference: ratio is recorded, training_mode is left out (false), so Dropout is identity.
      let r = constant(name + "_ratio", dims: [], .floats([ratio]))
      emit("Dropout", name: name, inputs: [inputs[0], r], outputs: outs)
    case .identity:
      emit("Identity", name: name, inputs: inputs, outputs: outs)
    }
  }

  func convAttributes(_ a: ConvAttributes) -> [(String, ONNXAttribute)] {
    [
      ("kernel_shape", .ints(a.kernel)), ("strides", .ints(a.strides)), ("dilations", .ints(a.dilations)),
      ("pads", .ints(a.padsBegin + a.padsEnd)), ("group", .int(a.groups)),
    ]
  }

  func poolAttributes(_ p: PoolAttributes) -> [(String, ONNXAttribute)] {
    [
      ("kernel_shape", .ints(p.kernel)), ("strides", .ints(p.strides)), ("pads", .ints(p.padsBegin + p.padsEnd)),
      ("ceil_mode", .int(p.ceilMode ? 1 : 0)),
    ]
  }
}
