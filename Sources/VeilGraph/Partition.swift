import VeilTensor

/// A point where the graph can be cut in two: exactly one tensor crosses from the nodes before
/// it (the head, run in the TEE) to the nodes after it (the tail, run on the accelerator).
public struct CutPoint: Sendable, Equatable, Codable {
  /// Position among the graph's candidate cuts, in graph order, from 0.
  public var index: Int
  /// Stable human name: the builder's structural name (`block2_pool`, `layer3`,
  /// `features.5`), or for imported graphs the name of the node that produces the tensor.
  public var name: String
  /// Name of the crossing tensor.
  public var tensor: String
  /// Number of nodes in the head (the graph's nodes in order, before passes).
  public var headNodes: Int
  /// Shape of the crossing tensor at the graph's batch size.
  public var shape: [Int]
  /// Bytes of the crossing tensor (float32).
  public var bytes: Int
  /// Bytes of the weights the head reads (float32, BatchNorm statistics included).
  public var headParameterBytes: Int
  /// FLOPs of the head and of the tail, per pass at the graph's batch size.
  public var headFlops: Int
  public var tailFlops: Int
}

/// Cuts are found on the graph as built or imported, in its node order, after identities are
/// removed; head and tail are then compiled (and optimized) separately, so a cut never falls
/// inside a fused kernel.
extension Graph {
  /// Every point where exactly one non-constant tensor crosses. For a graph that declares its
  /// structural cuts (`metadata["cuts"]`, the zoo builders) only those are listed unless
  /// `all` is set; otherwise every such point, except one between a tensor and the single
  /// activation or normalization that consumes it (a cut there exposes nothing the next
  /// point would not, and splits a fusable pair).
  public func candidateCuts(all: Bool = false) throws -> [CutPoint] {
    var g = self
    g.removeIdentities()
    try g.sortTopologically()
    try g.inferShapes()
    let n = g.nodes.count
    guard n >= 2 else { return [] }
    let producers = g.producers()
    let consumers = g.consumers()
    // A value crosses position p (p nodes in the head) iff it is defined before p and used at
    // or after p. Inputs are defined at -1; graph outputs are used at n.
    var delta = [Int](repeating: 0, count: n + 2)
    var lastUse: [ValueID: Int] = [:]
    for (v, users) in consumers where !g.isConstant(v) { lastUse[v] = users.max() }
    for v in g.outputs { lastUse[v] = n }
    for (v, last) in lastUse {
      let first = (producers[v] ?? -1) + 1
      guard first <= last else { continue }
      delta[first] += 1
      delta[last + 1] -= 1
    }
    let named = metadata["cuts"].map { Set($0.split(separator: ",").map(String.init)) }
    let structural = named != nil && !all
    var flopsBefore = [Int](repeating: 0, count: n + 1)
    var paramsBefore = [Int](repeating: 0, count: n + 1)
    var seen = Set<ValueID>()
    for (i, node) in g.nodes.enumerated() {
      flopsBefore[i + 1] = Graph.saturatingSum(flopsBefore[i], g.flops(of: node))
      var bytes = 0
      for v in node.inputs where g.isConstant(v) && !seen.contains(v) {
        seen.insert(v)
        bytes += (g.initializers[v]?.count ?? 0) * 4
      }
      paramsBefore[i + 1] = paramsBefore[i] + bytes
    }
    var cuts: [CutPoint] = []
    var crossing = delta[0]
    for p in 1..<n {
      crossing += delta[p]
      guard crossing == 1 else { continue }
      // The one crossing value: an output of node p-1 or an earlier value still alive.
      let v = lastUse.first { v, last in (producers[v] ?? -1) + 1 <= p && last >= p }!.key
      guard !g.outputs.contains(v) else { continue }
      let name = g[v].name
      if structural {
        guard named!.contains(name) else { continue }
      } else if !all, let users = consumers[v], users.count == 1, g.isFusableFollower(g.nodes[users[0]]) {
        continue
      }
      let shape = g.shape(v) ?? []
      cuts.append(
        CutPoint(
          index: cuts.count, name: structural ? name : (producers[v].map { g.nodes[$0].name } ?? name),
          tensor: name, headNodes: p, shape: shape, bytes: shape.reduce(1, *) * 4,
          headParameterBytes: paramsBefore[p], headFlops: flopsBefore[p], tailFlops: flopsBefore[n] - flopsBefore[p]))
    }
    return cuts
  }

  /// An activation, a normalization, or a bias/scale by a constant: work that belongs to the
  /// layer before it.
  private func isFusableFollower(_ node: Node) -> Bool {
    switch node.op {
    case .activation, .batchNormalization: return true
    case .binary: return node.inputs.contains(where: isConstant)
    default: return false
    }
  }

  /// The cut named `name` (its name, tensor name, or index as text).
  public func cut(named name: String, all: Bool = false) throws -> CutPoint {
    let cuts = try candidateCuts(all: all)
    if let c = cuts.first(where: { $0.name == name || $0.tensor == name }) { return c }
    if let i = Int(name), cuts.indices.contains(i) { return cuts[i] }
    // A value that exists but is not a cut: say why.
    if !all, let c = try candidateCuts(all: true).first(where: { $0.name == name || $0.tensor == name }) {
      throw GraphError.invalidGraph(
        "'\(c.name)' of '\(self.name)' is a single-tensor point inside a layer or block, not one of its structural cuts; allow every point (--all) to cut there. Structural cuts: \(cuts.map(\.name).joined(separator: ", "))"
      )
    }
    if value(named: name) != nil || nodes.contains(where: { $0.name == name }) {
      throw GraphError.invalidGraph(
        "'\(name)' is not a cut point of '\(self.name)': more than one tensor crosses there (inside a branch or a residual block). Cut points: \(cuts.map(\.name).joined(separator: ", "))"
      )
    }
    throw GraphError.unknownValue(
      "cut '\(name)' in '\(self.name)'; cut points: \(cuts.map(\.name).joined(separator: ", "))")
  }

  /// The head (graph inputs → the cut tensor) and the tail (the cut tensor → graph outputs),
  /// each a whole graph with the weights it reads. Running the tail on the head's output gives
  /// the graph's outputs.
  public func split(at cut: CutPoint) throws -> (head: Graph, tail: Graph) {
    let parts = try pieces(at: [cut], names: ["head", "tail"])
    return (parts[0], parts[1])
  }

  /// Three parts for a plan that keeps its answer private: the head (inputs → `cut`), the
  /// middle (`cut` → `output`, the accelerator's part) and the output part (`output` → the
  /// graph's outputs, run in the enclave again). Running them in turn gives the graph's outputs.
  public func split(at cut: CutPoint, outputAt output: CutPoint) throws -> (head: Graph, middle: Graph, output: Graph) {
    guard output.headNodes > cut.headNodes else {
      throw GraphError.invalidGraph(
        "the output part must start after the cut: '\(output.name)' is not deeper than '\(cut.name)'; cut earlier or keep a shorter output part")
    }
    let parts = try pieces(at: [cut, output], names: ["head", "tail", "output"])
    return (parts[0], parts[1], parts[2])
  }

  /// The deepest cut before the graph's last layer with weights (its classifier): the point
  /// after which a plan keeps only the last layer in the enclave (`--private-output`).
  public func lastLayerCut() throws -> CutPoint {
    var g = self
    g.removeIdentities()
    try g.sortTopologically()
    guard let last = g.nodes.lastIndex(where: { n in n.inputs.contains { g.initializers[$0] != nil } }) else {
      throw GraphError.invalidGraph("'\(name)' has no layer with weights to keep in the enclave")
    }
    guard let cut = try candidateCuts(all: true).last(where: { $0.headNodes <= last }) else {
      throw GraphError.invalidGraph(
        "no single tensor enters '\(name)''s last layer with weights ('\(g.nodes[last].name)') alone; name the output cut yourself")
    }
    return cut
  }

  /// The graph cut at `cuts` (in depth order) into consecutive parts named `names`.
  func pieces(at cuts: [CutPoint], names: [String]) throws -> [Graph] {
    var g = self
    g.removeIdentities()
    try g.sortTopologically()
    try g.inferShapes()
    var values: [ValueID] = []
    for cut in cuts {
      guard cut.headNodes > 0, cut.headNodes < g.nodes.count, let v = g.value(named: cut.tensor),
        g.producers()[v].map({ $0 < cut.headNodes }) ?? g.inputs.contains(v)
      else {
        throw GraphError.invalidGraph("cut '\(cut.name)' does not match graph '\(name)' (recompute the cuts)")
      }
      values.append(v)
    }
    let bounds = [0] + cuts.map(\.headNodes) + [g.nodes.count]
    let ins = [g.inputs] + values.map { [$0] }
    let outs = values.map { [$0] } + [g.outputs]
    var parts: [Graph] = []
    for k in 0..<(cuts.count + 1) {
      var part = g.subgraph(
        name: "\(name).\(names[k])", nodes: Array(g.nodes[bounds[k]..<bounds[k + 1]]), inputs: ins[k], outputs: outs[k])
      part.metadata["cut.name"] = cuts[min(k, cuts.count - 1)].name
      part.metadata["cut.tensor"] = cuts[min(k, cuts.count - 1)].tensor
      part.metadata["cut.part"] = names[k]
      part.metadata["cuts"] = nil
      try part.inferShapes()
      parts.append(part)
    }
    return parts
  }

  /// A graph of `nodes` (this graph's), reading `inputs` and producing `outputs`, with only
  /// the values and initializers those nodes use. Value names are kept.
  func subgraph(name: String, nodes chosen: [Node], inputs: [ValueID], outputs: [ValueID]) -> Graph {
    var g = Graph(name: name)
    g.metadata = metadata
    var map: [ValueID: ValueID] = [:]
    for v in inputs { map[v] = g.addInput(name: self[v].name, shape: self[v].shape ?? []) }
    func mapped(_ v: ValueID) -> ValueID {
      if let m = map[v] { return m }
      let m: ValueID
      if let t = initializers[v] {
        m = g.addInitializer(name: self[v].name, t)
      } else {
        m = g.addValue(name: self[v].name, shape: self[v].shape)
      }
      map[v] = m
      return m
    }
    for n in chosen {
      g.nodes.append(Node(name: n.name, op: n.op, inputs: n.inputs.map(mapped), outputs: n.outputs.map(mapped), postOps: n.postOps))
    }
    g.outputs = outputs.map(mapped)
    return g
  }
}
