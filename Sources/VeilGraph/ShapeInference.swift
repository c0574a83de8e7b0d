import VeilTensor

extension Graph {
  /// Fills in every value's shape from the inputs' shapes and the initializers, in
  /// topological order. `inputShapes` overrides graph inputs (to run at another batch size).
  public mutating func inferShapes(inputShapes: [ValueID: [Int]] = [:]) throws {
    for (v, s) in inputShapes {
      guard inputs.contains(v) else { throw GraphError.unknownValue(self[v].name) }
      self[v].shape = s
    }
    for (v, t) in initializers { self[v].shape = t.shape }
    for n in nodes {
      var ins: [[Int]] = []
      for v in n.opInputs {
        guard let s = self[v].shape else {
          throw GraphError.shapeError(node: n.name, op: n.op.typeName, detail: "shape of input '\(self[v].name)' is unknown")
        }
        ins.append(s)
      }
      let out = try n.op.outputShape(ins, node: n.name)
      if let r = n.residual {
        guard self[r].shape == out else {
          throw GraphError.shapeError(
            node: n.name, op: n.op.typeName, detail: "fused residual '\(self[r].name)' has shape \(self[r].shape ?? []), expected \(out)")
        }
      }
      self[n.outputs[0]].shape = out
      // Secondary outputs (Dropout's mask) share the shape.
      for o in n.outputs.dropFirst() { self[o].shape = out }
    }
  }

  /// A copy whose inputs take batch size `n` (first dimension), with shapes re-inferred.
  public func withBatch(_ n: Int) throws -> Graph {
    guard n >= 1 else { throw GraphError.invalidGraph("batch size must be at least 1, found \(n)") }
    var g = self
    var shapes: [ValueID: [Int]] = [:]
    for v in inputs {
      guard var s = self[v].shape, !s.isEmpty else { throw GraphError.invalidGraph("input '\(self[v].name)' has no shape") }
      s[0] = n
      shapes[v] = s
    }
    try g.inferShapes(inputShapes: shapes)
    return g
  }

  /// Multiply–accumulate count ×2 (FLOPs) of one node, from inferred shapes.
  public func flops(of node: Node) -> Int {
    guard let out = self[node.outputs[0]].shape else { return 0 }
    let outCount = out.reduce(1, *)
    switch node.op {
    case .conv(let a):
      guard let w = self[node.inputs[1]].shape else { return 0 }
      return 2 * outCount * (w[1] * a.kernel.reduce(1, *))
    case .convTranspose(let a):
      guard let x = self[node.inputs[0]].shape, let w = self[node.inputs[1]].shape else { return 0 }
      return 2 * x.reduce(1, *) * w[1] * a.kernel.reduce(1, *)
    case .gemm(let g):
      guard let a = self[node.inputs[0]].shape else { return 0 }
      return 2 * outCount * (g.transA ? a[0] : a[1])
    case .matMul:
      guard let a = self[node.inputs[0]].shape else { return 0 }
      return 2 * outCount * (a.last ?? 1)
    default:
      return outCount
    }
  }

  /// Total FLOPs of the graph (shapes must be inferred).
  public var totalFlops: Int { nodes.reduce(0) { $0 + flops(of: $1) } }
}
