import Foundation
import VeilGraph
import VeilTensor

// The bridge from an inference graph (a zoo model or an imported ONNX file, VeilGraph's IR) to
// a model on the tape, and back: every node becomes the matching differentiable op, the
// graph's weights become parameters (frozen up to a node, or all of them, if asked),
// BatchNormalization nodes become BatchNorm layers that keep running statistics, and
// `exportGraph()` writes the trained values back into the graph, so `veil run` and ONNX export
// take the result as any model. Every op of VeilGraph's set has a backward, so an input
// created with `requiresGrad: true` gets ∂/∂input through any graph Veil imports.

/// A graph whose initializers are trainable parameters.
public final class GraphModel: Layer {
  /// The source graph (weights as they were when the model was made; see `exportGraph()`).
  public let graph: Graph
  /// Every learnable weight (Conv/ConvTranspose/Gemm/MatMul operands, BatchNorm and LayerNorm
  /// scale and bias, constants of more than one element that an Add adds or a Pad places:
  /// biases, position embeddings, a class token), frozen or not, in graph order, named as the
  /// graph names them. Constants named with a '/' are the computation's, never learnable.
  public let allParameters: [Variable]
  /// The BatchNorm layer of each BatchNormalization node, by node index.
  public let batchNorms: [Int: BatchNorm]
  /// What the convolutions and batch normalisations compute with.
  public let backend: any TrainingBackend
  /// Nodes at or before the freeze point: their weights get no gradient, and they keep the
  /// graph's inference semantics (BatchNorm in evaluation mode, Dropout off) even in training.
  public let frozenNodes: Int
  /// Training mode: BatchNorm uses and updates batch statistics, Dropout drops (after the
  /// freeze point). Off: the graph's inference semantics exactly.
  public var training = true {
    didSet { for (i, bn) in batchNorms { bn.training = training && i >= frozenNodes } }
  }
  /// Every node frozen (`init(frozen:)`): no weight wants a gradient, so a backward pass
  /// computes ∂/∂input and nothing else.
  public var isFrozen: Bool { frozenNodes >= graph.nodes.count }
  /// Dropout masks are drawn from this seeded stream.
  public var dropoutGenerator: SeededGenerator

  private let leaves: [ValueID: Variable]

  /// The trainable parameters (what an optimiser updates and a checkpoint saves).
  public var parameters: [Variable] { allParameters.filter(\.requiresGrad) }

  /// The node index of the freeze point: a node name, or the name of a value a node produces
  /// (a cut name such as `layer3`).
  public static func nodeIndex(_ graph: Graph, named name: String) throws -> Int {
    if let i = graph.nodes.firstIndex(where: { $0.name == name }) { return i }
    if let i = graph.nodes.firstIndex(where: { $0.outputs.contains { graph[$0].name == name } }) { return i }
    let cuts = graph.metadata["cuts"].map { " (cut points: \($0))" } ?? ""
    let sample = graph.nodes.prefix(6).map(\.name).joined(separator: ", ")
    throw TrainError.invalidArgument(
      "no node or value named '\(name)' in model '\(graph.name)'\(cuts); node names look like: \(sample), …")
  }

  /// - Parameters:
  ///   - freezeUntil: a node (or value) name: weights of it and every node before it in graph
  ///     order are frozen; nil trains everything.
  ///   - backend: what its convolutions, batch normalisations and matrix products compute with.
  public convenience init(
    _ graph: Graph, freezeUntil: String? = nil, seed: UInt64 = 0, backend: any TrainingBackend = Backends.training
  ) throws {
    try self.init(
      graph, frozenNodes: try freezeUntil.map { try Self.nodeIndex(graph, named: $0) + 1 } ?? 0, seed: seed, backend: backend)
  }

  /// The graph with every weight frozen, in evaluation mode: what a white-box attacker
  /// differentiates to get ∂loss/∂input (the input a variable with `requiresGrad: true`). No
  /// weight wants a gradient, so no backward pass does weight work: convolutions run only
  /// their backward-data pass, BatchNorm is a fixed affine map, Dropout is off, and
  /// `parameters` is empty.
  public convenience init(frozen graph: Graph, backend: any TrainingBackend = Backends.training) throws {
    try self.init(graph, frozenNodes: graph.nodes.count, seed: 0, backend: backend)
    training = false
  }

  init(_ graph: Graph, frozenNodes: Int, seed: UInt64, backend: any TrainingBackend) throws {
    self.graph = graph
    self.backend = backend
    self.frozenNodes = frozenNodes
    dropoutGenerator = SeededGenerator(seed: seed)
    // Which initializers are learnable, in the order nodes first read them.
    var learnable: Set<ValueID> = []
    var order: [(value: ValueID, reader: Int)] = []
    var seen: Set<ValueID> = []
    for (i, node) in graph.nodes.enumerated() {
      for v in node.inputs where graph.initializers[v] != nil && seen.insert(v).inserted { order.append((v, i)) }
      switch node.op {
      case .conv, .convTranspose, .gemm, .matMul, .layerNormalization:
        learnable.formUnion(node.opInputs.filter { graph.initializers[$0] != nil })
      case .binary(.add), .pad:
        // Embeddings a transformer adds (positions) or places (its class token), and biases
        // that exporters add after a MatMul; a one-element constant (x + 1) is arithmetic.
        learnable.formUnion(node.opInputs.filter { (graph.initializers[$0]?.count ?? 0) > 1 && !graph[$0].name.contains("/") })
      case .batchNormalization:
        learnable.formUnion(node.inputs.dropFirst().prefix(2).filter { graph.initializers[$0] != nil })
      default: break
      }
    }
    var leaves: [ValueID: Variable] = [:]
    var parameters: [Variable] = []
    for (v, reader) in order {
      guard let t = graph.initializers[v] else { continue }
      let leaf = Variable(t, requiresGrad: learnable.contains(v) && reader >= frozenNodes, name: graph[v].name)
      leaves[v] = leaf
      if learnable.contains(v) { parameters.append(leaf) }
    }
    self.leaves = leaves
    allParameters = parameters
    var norms: [Int: BatchNorm] = [:]
    for (i, node) in graph.nodes.enumerated() {
      guard case .batchNormalization(let epsilon) = node.op else { continue }
      guard node.inputs.count == 5, let scale = leaves[node.inputs[1]], let shift = leaves[node.inputs[2]],
        let mean = graph.initializers[node.inputs[3]], let variance = graph.initializers[node.inputs[4]]
      else {
        throw TrainError.invalidArgument(
          "node '\(node.name)' (BatchNormalization): scale, bias, mean and variance must be constant initializers to train it")
      }
      let bn = try BatchNorm(
        name: node.name, scale: scale, shift: shift, runningMean: mean, runningVariance: variance, epsilon: epsilon,
        backend: backend)
      bn.training = i >= frozenNodes
      norms[i] = bn
    }
    batchNorms = norms
  }

  /// Runs the graph on the tape: one variable per graph input, the graph's outputs in order.
  public func forward(_ inputs: [Variable]) throws -> [Variable] {
    guard inputs.count == graph.inputs.count else {
      throw TrainError.invalidArgument("model '\(graph.name)' takes \(graph.inputs.count) inputs, given \(inputs.count)")
    }
    var values = leaves
    for (v, x) in zip(graph.inputs, inputs) { values[v] = x }
    for (i, node) in graph.nodes.enumerated() {
      let ins = try node.inputs.map { v -> Variable in
        guard let x = values[v] else {
          throw TrainError.invalidArgument("node '\(node.name)' reads '\(graph[v].name)', which nothing computed")
        }
        return x
      }
      do {
        var y = try apply(node, index: i, Array(ins.prefix(node.opInputs.count)))
        for post in node.postOps {
          switch post {
          case .activation(let a): y = try activation(a, y)
          case .sum: y = try add(y, ins[ins.count - 1])
          }
        }
        values[node.outputs[0]] = y
      } catch let e as TrainError {
        throw TrainError.invalidArgument("node '\(node.name)' (\(node.op.typeName)): \(e)")
      }
    }
    return try graph.outputs.map { v in
      guard let y = values[v] else { throw TrainError.invalidArgument("output '\(graph[v].name)' was never computed") }
      return y
    }
  }

  /// The first output of a one-input graph.
  public func callAsFunction(_ x: Variable) throws -> Variable { try forward([x])[0] }

  private func activation(_ a: Activation, _ x: Variable) throws -> Variable {
    switch a {
    case .relu: return relu(x)
    case .leakyRelu(let alpha): return leakyRelu(x, alpha: alpha)
    case .clip(let lo, let hi): return clip(x, min: lo, max: hi)
    case .sigmoid: return sigmoid(x)
    case .silu: return silu(x)
    case .hardSigmoid(let alpha, let beta): return hardSigmoid(x, alpha: alpha, beta: beta)
    case .hardSwish: return hardSwish(x)
    case .tanh: return VeilTrain.tanh(x)
    case .sqrt: return squareRoot(x)
    case .gelu(let approximate): return gelu(x, tanh: approximate)
    }
  }

  private func apply(_ node: Node, index: Int, _ x: [Variable]) throws -> Variable {
    func unsupported(_ why: String) -> TrainError { .invalidArgument("cannot train this op: \(why)") }
    switch node.op {
    case .conv(let a), .convTranspose(let a):
      let transposed: Bool
      if case .convTranspose = node.op { transposed = true } else { transposed = false }
      guard a.kernel.count == 2 || a.kernel.count == 1 else {
        throw unsupported("\(a.kernel.count)-D convolution (1-D and 2-D only)")
      }
      guard a.outputPadding.allSatisfy({ $0 == 0 }) else { throw unsupported("output_padding \(a.outputPadding)") }
      if a.kernel.count == 1 {
        // A 1-D convolution is the 2-D one over a height of 1.
        let w = try reshape(x[1], Array(x[1].shape.prefix(2)) + [1] + Array(x[1].shape.dropFirst(2)))
        let y = try convolution(
          try liftTo2D(x[0]), w, x.count > 2 ? x[2] : nil,
          ConvolutionSpec(
            strides: [1] + a.strides, dilations: [1] + a.dilations, padsBegin: [0] + a.padsBegin, padsEnd: [0] + a.padsEnd,
            groups: a.groups, transposed: transposed), backend: backend)
        return try dropHeight(y)
      }
      let spec = ConvolutionSpec(
        strides: a.strides, dilations: a.dilations, padsBegin: a.padsBegin, padsEnd: a.padsEnd, groups: a.groups,
        transposed: transposed)
      return try convolution(x[0], x[1], x.count > 2 ? x[2] : nil, spec, backend: backend)
    case .batchNormalization:
      guard let bn = batchNorms[index] else { throw unsupported("BatchNormalization without its layer") }
      return try bn(x[0])
    case .layerNormalization(let axis, let epsilon):
      return try layerNormalization(x[0], scale: x[1], shift: x.count > 2 ? x[2] : nil, axis: axis, epsilon: epsilon)
    case .activation(let a): return try activation(a, x[0])
    case .maxPool(let p), .averagePool(let p):
      let isMax: Bool
      if case .maxPool = node.op { isMax = true } else { isMax = false }
      guard p.kernel.count == 2 || p.kernel.count == 1 else {
        throw unsupported("\(p.kernel.count)-D pooling (1-D and 2-D only)")
      }
      if p.kernel.count == 1 {
        let lifted = PoolAttributes(
          kernel: [1] + p.kernel, strides: [1] + p.strides, padsBegin: [0] + p.padsBegin, padsEnd: [0] + p.padsEnd,
          ceilMode: p.ceilMode, countIncludePad: p.countIncludePad)
        let y = try liftTo2D(x[0])
        return try dropHeight(isMax ? try maxPool(y, lifted) : try averagePool(y, lifted))
      }
      return isMax ? try maxPool(x[0], p) : try averagePool(x[0], p)
    case .globalAveragePool: return try globalAveragePool(x[0])
    case .binary(let kind):
      switch kind {
      case .add: return try add(x[0], x[1])
      case .mul: return try mul(x[0], x[1])
      case .sub: return try sub(x[0], x[1])
      case .div: return try div(x[0], x[1])
      }
    case .concat(let axis):
      return try concat(x, axis: axis < 0 ? axis + x[0].shape.count : axis)
    case .gemm(let g):
      return try gemm(
        x[0], x[1], x.count > 2 ? x[2] : nil, alpha: g.alpha, beta: g.beta, transA: g.transA, transB: g.transB,
        backend: backend)
    case .matMul: return try matMul(x[0], x[1], backend: backend)
    case .flatten(let axis):
      let s = x[0].shape
      let ax = axis < 0 ? axis + s.count : axis
      return try reshape(x[0], [s[..<ax].reduce(1, *), s[ax...].reduce(1, *)])
    case .reshape(let shape):
      // ONNX: 0 copies the input's dimension.
      let target = shape.enumerated().map { i, d in d == 0 && i < x[0].shape.count ? x[0].shape[i] : d }
      return try reshape(x[0], target)
    case .resize(let kind, let scales, let sizes):
      let s = x[0].shape
      guard s.count == 4 else { throw unsupported("Resize of a rank-\(s.count) tensor (NCHW only)") }
      let mode: ResizeMode = kind == .nearest ? .nearest : .bilinear
      if let sizes {
        guard Array(sizes.prefix(2)) == Array(s.prefix(2)) else { throw unsupported("Resize of batch or channels") }
        return try resize(x[0], size: Array(sizes.suffix(2)), mode: mode)
      }
      guard let scales, scales.count == 4, scales[0] == 1, scales[1] == 1 else {
        throw unsupported("Resize with scales \(scales ?? []) (spatial scales of NCHW only)")
      }
      let size = (2..<4).map { Int((Float(s[$0]) * scales[$0]).rounded(.down)) }
      return try resize(x[0], size: size, mode: mode, scales: Array(scales.suffix(2)))
    case .softmax(let axis): return try softmax(x[0], axis: axis)
    case .dropout(let ratio):
      return try dropout(x[0], ratio: ratio, training: training && index >= frozenNodes, generator: &dropoutGenerator)
    case .identity: return x[0]
    case .transpose(let permutation): return try transpose(x[0], permutation)
    case .channelShuffle(let groups):
      // As ONNX spells it: [N, g, C/g, rest...], the two group axes swapped, back to the shape.
      let s = x[0].shape
      let view = try reshape(x[0], [s[0], groups, s[1] / groups] + s.dropFirst(2))
      return try reshape(try transpose(view, [0, 2, 1] + Array(3..<(s.count + 1))), s)
    case .slice(let a): return try slice(x[0], a)
    case .pad(let mode, let pads, let value): return try pad(x[0], pads: pads, mode: mode, value: value)
    case .localResponseNormalization(let size, let alpha, let beta, let bias):
      return try localResponseNormalization(x[0], size: size, alpha: alpha, beta: beta, bias: bias)
    }
  }

  /// [N, C, L] → [N, C, 1, L]: 1-D convolutions and pooling run as 2-D ones over a height of 1.
  private func liftTo2D(_ x: Variable) throws -> Variable {
    guard x.shape.count == 3 else {
      throw TrainError.shapeMismatch(op: "1-D convolution or pooling", detail: "input \(x.shape) (want [N, C, L])")
    }
    return try reshape(x, [x.shape[0], x.shape[1], 1, x.shape[2]])
  }

  private func dropHeight(_ y: Variable) throws -> Variable {
    try reshape(y, [y.shape[0], y.shape[1], y.shape[3]])
  }

  /// The graph with the current parameter values and BatchNorm running statistics in place of
  /// the original initializers (shapes as in the source graph).
  public func exportGraph() -> Graph {
    var g = graph
    for (v, leaf) in leaves { g.initializers[v] = leaf.value }
    for (i, bn) in batchNorms {
      g.initializers[graph.nodes[i].inputs[3]] = bn.runningMean
      g.initializers[graph.nodes[i].inputs[4]] = bn.runningVariance
    }
    return g
  }

  /// Everything a checkpoint holds: the trainable parameters and every BatchNorm's statistics.
  public var batchNormLayers: [BatchNorm] { batchNorms.keys.sorted().compactMap { batchNorms[$0] } }

  /// The graph with its classifier (the Gemm that produces the output, possibly through
  /// Softmax, Flatten, Reshape, Dropout or Identity) re-made for `classes` outputs, initialised
  /// as PyTorch initialises a new Linear layer (Kaiming-uniform weights, zero bias).
  /// Unchanged when it already has that many.
  public static func replacingClassifier(_ graph: Graph, classes: Int, seed: UInt64 = 0) throws -> Graph {
    guard classes >= 2 else { throw TrainError.invalidArgument("a classifier needs at least 2 classes, found \(classes)") }
    guard let output = graph.outputs.first else { throw TrainError.invalidArgument("model '\(graph.name)' has no output") }
    let producers = graph.producers()
    var v = output
    while let i = producers[v] {
      let node = graph.nodes[i]
      switch node.op {
      case .softmax, .flatten, .reshape, .dropout, .identity:
        v = node.inputs[0]
        continue
      case .gemm(let a):
        guard let w = graph.initializers[node.inputs[1]], !a.transA else { break }
        let outputs = a.transB ? w.shape[0] : w.shape[1]
        if outputs == classes { return graph }
        let inputs = a.transB ? w.shape[1] : w.shape[0]
        var g = graph
        var generator = SeededGenerator(seed: seed)
        let weight = Initializer.kaimingUniform(negativeSlope: Float(5).squareRoot()).tensor([classes, inputs], generator: &generator)
        if a.transB {
          g.initializers[node.inputs[1]] = weight
        } else {
          g.initializers[node.inputs[1]] = Tensor(shape: [inputs, classes]) { d in
            weight.withUnsafeBuffer { s in for o in 0..<classes { for k in 0..<inputs { d[k * classes + o] = s[o * inputs + k] } } }
          }
        }
        if node.inputs.count > 2 {
          g.initializers[node.inputs[2]] = Tensor(zeros: [classes])
        }
        // Reshape nodes after the classifier that name the class count are updated too.
        for (j, n) in g.nodes.enumerated() where j > i {
          if case .reshape(let shape) = n.op, shape.contains(outputs) {
            g.nodes[j].op = .reshape(shape: shape.map { $0 == outputs ? classes : $0 })
          }
        }
        try g.inferShapes()
        g.metadata["classes"] = String(classes)
        return g
      default: break
      }
      break
    }
    throw TrainError.invalidArgument(
      "model '\(graph.name)': its output '\(graph[output].name)' does not come from a Gemm/Linear classifier with constant weights, so its head cannot be replaced for \(classes) classes")
  }
}
