/// VeilGraph: the model as a graph, and everything that runs it.
///
/// Owns the op set, the graph IR (values, nodes, initializers, topological order), shape
/// inference (which holds every shape it derives to the bound of a file's tensor,
/// `Graph.maxTensorElements`, so that no importer or batch size reaches the executor with an
/// unallocatable tensor), the rewrite passes (BatchNorm folding, identity removal, conv post-op fusion,
/// ShuffleNet's Reshape/Transpose/Reshape as one channel shuffle that keeps its producer's layout),
/// the executor with its liveness-based memory planner, cut points and the split of a
/// graph into head and tail (and an output part kept in the enclave), and the defences applied
/// to the map at the cut, which the enclave, the attackers and the planner share (autograd
/// lives in VeilTrain and the defences' differentiable forms in VeilPrivacy, above it). The
/// executor binds one working buffer to all its kernels, and executors that take turns (a
/// served model's batch sizes) share one through `SharedWorkingMemory`
/// (`ExecutorOptions.workingMemory`); multi-head attention found in imported graphs runs as
/// one fused op (`Graph.attentionMatches`, AttentionPattern.swift), and an inverted residual block's 1×1 expansion with the
/// 3×3 depthwise convolution after it as one kernel where the backend has one
/// (`ComputeBackend.pointwiseDepthwise`; the next convolution then reads that kernel's layout
/// as it is). It computes only through VeilTensor's `ComputeBackend`
/// seam, on the backend its caller passes to the executor (or `Backends.compute`), reads
/// layouts only through `Layout`'s neutral queries (dimensions, byte size, equality, whether
/// plain, the same arrangement for other dimensions), and never names oneDNN; it must not import formats, models, data or any higher layer. Every model, whether built by
/// the zoo or imported, meets here: the graph IR is the one source of truth for a model.
import VeilTensor

/// A tensor-valued edge of the graph.
public struct ValueID: Hashable, Sendable, Comparable, CustomStringConvertible {
  public let index: Int
  public init(_ index: Int) { self.index = index }
  public static func < (a: ValueID, b: ValueID) -> Bool { a.index < b.index }
  public var description: String { "%\(index)" }
}

public struct ValueInfo: Sendable {
  public var name: String
  /// Known after shape inference (or set for graph inputs and initializers).
  public var shape: [Int]?
}

/// One operation. `inputs` follow ONNX's order for the op (Conv: x, W, [B]). A fused residual
/// sum (`postOps` containing `.sum`) appends the residual as the last input.
public struct Node: Sendable {
  public var name: String
  public var op: Op
  public var inputs: [ValueID]
  public var outputs: [ValueID]
  /// Work fused after the op (activations, a residual sum), in order.
  public var postOps: [PostOp]

  public init(name: String, op: Op, inputs: [ValueID], outputs: [ValueID], postOps: [PostOp] = []) {
    self.name = name
    self.op = op
    self.inputs = inputs
    self.outputs = outputs
    self.postOps = postOps
  }

  /// The residual input of a fused sum, if any.
  public var residual: ValueID? { postOps.contains(.sum) ? inputs.last : nil }

  /// Inputs the op itself reads (without a fused residual).
  public var opInputs: ArraySlice<ValueID> { postOps.contains(.sum) ? inputs.dropLast() : inputs[...] }
}

public enum GraphError: Error, CustomStringConvertible, Equatable {
  case invalidGraph(String)
  case shapeError(node: String, op: String, detail: String)
  case unsupported(node: String, op: String, detail: String)
  case inputMismatch(input: String, expected: String, found: String)
  case unknownValue(String)

  public var description: String {
    switch self {
    case .invalidGraph(let s): return "invalid graph: \(s)"
    case .shapeError(let n, let op, let d): return "node '\(n)' (\(op)): \(d)"
    case .unsupported(let n, let op, let d): return "node '\(n)' (\(op)): unsupported: \(d)"
    case .inputMismatch(let i, let e, let f): return "input '\(i)': expected \(e), found \(f)"
    case .unknownValue(let s): return "unknown value '\(s)'"
    }
  }
}

/// A model: named values, nodes in topological order, inputs, outputs and constant weights.
public struct Graph: Sendable {
  public var name: String
  public private(set) var values: [ValueInfo] = []
  public var nodes: [Node] = []
  public var inputs: [ValueID] = []
  public var outputs: [ValueID] = []
  public var initializers: [ValueID: Tensor] = [:]
  /// Free-form facts about the model (preprocessing, labels, source), kept through passes.
  public var metadata: [String: String] = [:]

  public init(name: String) { self.name = name }

  public subscript(_ v: ValueID) -> ValueInfo {
    get { values[v.index] }
    set { values[v.index] = newValue }
  }

  public func shape(_ v: ValueID) -> [Int]? { values[v.index].shape }

  public mutating func addValue(name: String, shape: [Int]? = nil) -> ValueID {
    values.append(ValueInfo(name: name, shape: shape))
    return ValueID(values.count - 1)
  }

  public mutating func addInput(name: String, shape: [Int]) -> ValueID {
    let v = addValue(name: name, shape: shape)
    inputs.append(v)
    return v
  }

  public mutating func addInitializer(name: String, _ tensor: Tensor) -> ValueID {
    let v = addValue(name: name, shape: tensor.shape)
    initializers[v] = tensor
    return v
  }

  /// Appends a node with fresh output values named after it.
  @discardableResult
  public mutating func addNode(
    _ op: Op, name: String, inputs: [ValueID], outputNames: [String]? = nil, postOps: [PostOp] = []
  ) -> [ValueID] {
    let names = outputNames ?? [name]
    let outs = names.map { addValue(name: $0) }
    nodes.append(Node(name: name, op: op, inputs: inputs, outputs: outs, postOps: postOps))
    return outs
  }

  public func value(named name: String) -> ValueID? {
    values.indices.last { values[$0].name == name }.map(ValueID.init)
  }

  public func isConstant(_ v: ValueID) -> Bool { initializers[v] != nil }

  /// The node producing each value.
  public func producers() -> [ValueID: Int] {
    var p: [ValueID: Int] = [:]
    for (i, n) in nodes.enumerated() { for o in n.outputs { p[o] = i } }
    return p
  }

  /// The nodes reading each value.
  public func consumers() -> [ValueID: [Int]] {
    var c: [ValueID: [Int]] = [:]
    for (i, n) in nodes.enumerated() { for v in n.inputs { c[v, default: []].append(i) } }
    return c
  }

  /// Number of parameters (elements of all initializers).
  public var parameterCount: Int { initializers.values.reduce(0) { $0 + $1.count } }

  /// Sorts nodes topologically (Kahn), checking that every input is defined and there is no
  /// cycle. Stable: already ordered graphs keep their order.
  public mutating func sortTopologically() throws {
    var defined = Set(inputs).union(initializers.keys)
    var producer: [ValueID: Int] = [:]
    for (i, n) in nodes.enumerated() {
      for o in n.outputs {
        if producer[o] != nil || defined.contains(o) {
          throw GraphError.invalidGraph("value '\(self[o].name)' is produced twice (node '\(n.name)')")
        }
        producer[o] = i
      }
    }
    var pending = [Int](repeating: 0, count: nodes.count)
    var waiting: [ValueID: [Int]] = [:]
    for (i, n) in nodes.enumerated() {
      for v in Set(n.inputs) where !defined.contains(v) {
        guard producer[v] != nil else {
          throw GraphError.invalidGraph("node '\(n.name)' reads '\(self[v].name)', which nothing defines")
        }
        pending[i] += 1
        waiting[v, default: []].append(i)
      }
    }
    var ready = (0..<nodes.count).filter { pending[$0] == 0 }.reversed() as [Int]
    var order: [Int] = []
    order.reserveCapacity(nodes.count)
    while let i = ready.popLast() {
      order.append(i)
      var newly: [Int] = []
      for o in nodes[i].outputs {
        defined.insert(o)
        for j in waiting[o] ?? [] {
          pending[j] -= 1
          if pending[j] == 0 { newly.append(j) }
        }
      }
      ready.append(contentsOf: newly.sorted(by: >))
      ready.sort(by: >)
    }
    guard order.count == nodes.count else {
      let stuck = (0..<nodes.count).filter { pending[$0] > 0 }.prefix(5).map { "'\(nodes[$0].name)'" }
      throw GraphError.invalidGraph("the graph has a cycle through nodes \(stuck.joined(separator: ", "))")
    }
    nodes = order.map { nodes[$0] }
    for o in outputs where !defined.contains(o) {
      throw GraphError.invalidGraph("graph output '\(self[o].name)' is never produced")
    }
  }

  /// Removes nodes whose outputs nothing uses and initializers no node reads.
  public mutating func removeDeadCode() {
    var live = Set(outputs)
    var keep = [Bool](repeating: false, count: nodes.count)
    for i in stride(from: nodes.count - 1, through: 0, by: -1) where nodes[i].outputs.contains(where: live.contains) {
      keep[i] = true
      live.formUnion(nodes[i].inputs)
    }
    nodes = nodes.indices.filter { keep[$0] }.map { nodes[$0] }
    for k in initializers.keys where !live.contains(k) { initializers[k] = nil }
  }
}
