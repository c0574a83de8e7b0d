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

  /// Most elements one tensor may hold, inferred or declared (8 GiB of float32): the bound a
  /// file's own tensors are held to (`FormatLimits.maxElements`), applied to every shape
  /// that inference derives from attributes, pads, scales and input sizes, before anything is
  /// allocated for it.
  public static let maxTensorElements = Int(Int32.max)

  /// Refuses an inferred output shape with a negative dimension or more elements than one tensor
  /// may hold (a Conv padded by 30,000 on each side, a ConvTranspose striding 60,000, an input
  /// size or batch that blows a later layer up), naming the node, instead of leaving the
  /// allocation to fail, or a product to overflow, when the model runs.
  static func checkBounded(_ shape: [Int], node: String, op: String) throws {
    guard shape.allSatisfy({ $0 >= 0 }) else {
      throw GraphError.shapeError(node: node, op: op, detail: "output shape \(shape) has a negative dimension")
    }
    guard let count = checkedProduct(shape), count <= maxTensorElements else {
      throw GraphError.shapeError(
        node: node, op: op,
        detail: "output shape \(shape) holds more than \(maxTensorElements) elements, the most one tensor may hold; check the node's attributes (pads, strides, scales) and the input size")
    }
  }

  /// The product of `dims`, or nil when it overflows.
  static func checkedProduct(_ dims: some Sequence<Int>) -> Int? {
    var p = 1
    for d in dims {
      let (q, overflow) = p.multipliedReportingOverflow(by: d)
      if overflow { return nil }
      p = q
    }
    return p
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
  /// A count too large for an Int (a file's shapes can multiply past it) is `Int.max`: a figure
  /// to print, never a trap.
  public func flops(of node: Node) -> Int {
    guard let out = self[node.outputs[0]].shape else { return 0 }
    let outCount = Self.saturatingProduct(out)
    switch node.op {
    case .conv(let a):
      guard let w = self[node.inputs[1]].shape, w.count > 1 else { return 0 }
      return Self.saturatingProduct([2, outCount, w[1]] + a.kernel)
    case .convTranspose(let a):
      guard let x = self[node.inputs[0]].shape, let w = self[node.inputs[1]].shape, w.count > 1 else { return 0 }
      return Self.saturatingProduct([2, Self.saturatingProduct(x), w[1]] + a.kernel)
    case .gemm(let g):
      guard let a = self[node.inputs[0]].shape, a.count == 2 else { return 0 }
      return Self.saturatingProduct([2, outCount, g.transA ? a[0] : a[1]])
    case .matMul:
      guard let a = self[node.inputs[0]].shape else { return 0 }
      return Self.saturatingProduct([2, outCount, a.last ?? 1])
    default:
      return outCount
    }
  }

  /// Total FLOPs of the graph (shapes must be inferred); `Int.max` when the sum overflows.
  public var totalFlops: Int { nodes.reduce(0) { Self.saturatingSum($0, flops(of: $1)) } }

  /// The product of non-negative `factors`, or `Int.max` when it overflows.
  package static func saturatingProduct(_ factors: [Int]) -> Int {
    checkedProduct(factors.map { max($0, 0) }) ?? Int.max
  }

  /// `a + b` for non-negative counts, or `Int.max` when it overflows.
  package static func saturatingSum(_ a: Int, _ b: Int) -> Int {
    let (s, overflow) = a.addingReportingOverflow(b)
    return overflow ? Int.max : s
  }
}
