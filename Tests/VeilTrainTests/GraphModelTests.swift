import Foundation
import VeilGraph
import VeilModels
import VeilTensor
import XCTest

import VeilTrain

/// The bridge from inference graphs to the tape: gradients through a graph, the forward in
/// evaluation mode against the executor on zoo models, export of trained weights, freezing,
/// and replacing the classifier head.
final class GraphModelTests: XCTestCase {
  /// A small graph with most trainable ops: Conv, depthwise Conv, BatchNormalization, SiLU,
  /// Sigmoid·Mul (squeeze-excitation), AveragePool, Add (residual), Concat, Resize,
  /// GlobalAveragePool, Flatten, Gemm, Softmax.
  static func smallGraph(seed: UInt64) throws -> Graph {
    var g = Graph(name: "small")
    var r = SeededGenerator(seed: seed)
    func t(_ s: [Int], _ std: Float = 0.5) -> Tensor { .randomNormal(shape: s, std: std, generator: &r) }
    let x = g.addInput(name: "input", shape: [2, 2, 6, 6])
    // No bias before BatchNorm in training mode: the batch mean would cancel it (its gradient is 0).
    var y = g.conv(x, weight: t([4, 2, 3, 3]), bias: nil, .square(3), name: "conv1")
    y = g.batchNorm(y, scale: t([4]), bias: t([4]), mean: t([4], 0.1), variance: Tensor(shape: [4], repeating: 1.5), name: "bn1")
    y = g.activation(y, .silu, name: "act1")
    let dw = g.conv(y, weight: t([4, 1, 3, 3]), bias: nil, .square(3, groups: 4), name: "dw")
    let gate = g.activation(g.globalAveragePool(dw, name: "se.pool"), .sigmoid, name: "se.gate")
    let se = g.mul(dw, gate, name: "se.mul")
    let res = g.add(se, y, name: "add")
    let pooled = g.averagePool(res, PoolAttributes(kernel: [2, 2], strides: [2, 2]), name: "pool")
    let up = g.addNode(.resize(.linear, scales: [1, 1, 2, 2], sizes: nil), name: "up", inputs: [pooled])[0]
    let cat = g.concat([up, res], axis: 1, name: "cat")
    let flat = g.flatten(g.globalAveragePool(cat, name: "gap"), name: "flatten")
    let logits = g.linear(flat, weight: t([3, 8]), bias: t([3]), name: "fc")
    let prob = g.softmax(logits, axis: 1, name: "softmax")
    g.outputs = [prob]
    try g.inferShapes()
    return g
  }

  func testEvaluationForwardMatchesTheExecutorOnZooModels() throws {
    for (name, size) in [("efficientnet_lite0", 64), ("resnet50", 64)] {
      var g = try ModelZoo.build(name, batch: 2, seed: 3)
      try g.inferShapes(inputShapes: [g.inputs[0]: [2, 3, size, size]])
      var r = SeededGenerator(seed: 4)
      let input = Tensor.randomNormal(shape: [2, 3, size, size], generator: &r)
      let expected = try Executor(graph: g).run([input])[0]
      let model = try GraphModel(g)
      model.training = false
      let start = Date()
      let y = try model(Variable(input)).value
      let err = relativeError(y, expected)
      print(String(format: "%@ at %d×%d: bridge vs executor max relative difference %.2e (bridge forward %.2fs)", name, size, size, err, Date().timeIntervalSince(start)))
      XCTAssertEqual(y.shape, expected.shape, name)
      XCTAssertLessThan(err, 1e-4, name)
    }
  }

  func testExportCarriesTrainedWeightsAndStatistics() throws {
    let model = try GraphModel(try Self.smallGraph(seed: 5))
    var r = SeededGenerator(seed: 6)
    let x = Tensor.randomNormal(shape: [2, 2, 6, 6], generator: &r)
    let adam = try Adam(parameters: model.parameters, learningRate: 0.05)
    for _ in 0..<3 {
      adam.zeroGradients()
      let p = try model(Variable(x))
      try mseLoss(p, Tensor(shape: p.shape, repeating: 1.0 / 3)).backward()
      try adam.step()
    }
    let exported = model.exportGraph()
    XCTAssertNotEqual(exported.initializers[exported.value(named: "bn1.running_mean")!]!.scalars,
      model.graph.initializers[model.graph.value(named: "bn1.running_mean")!]!.scalars, "running statistics moved")
    model.training = false
    let ours = try model(Variable(x)).value
    let theirs = try Executor(graph: exported).run([x])[0]
    XCTAssertLessThan(relativeError(ours, theirs), 1e-5)
  }

  func testFreezingAndReplacingTheHead() throws {
    var g = try ModelZoo.build("resnet50", batch: 1, seed: 7)
    try g.inferShapes(inputShapes: [g.inputs[0]: [2, 3, 32, 32]])
    g = try GraphModel.replacingClassifier(g, classes: 4, seed: 1)
    XCTAssertEqual(g.shape(g.outputs[0]), [2, 4])
    let model = try GraphModel(g, freezeUntil: "layer3")
    XCTAssertTrue(model.parameters.allSatisfy { $0.name.hasPrefix("layer4") || $0.name.hasPrefix("fc") }, "only layer4 and fc train")
    XCTAssertFalse(model.parameters.isEmpty)
    var r = SeededGenerator(seed: 8)
    let loss = try softmaxCrossEntropy(try model(Variable(.randomNormal(shape: [2, 3, 32, 32], generator: &r))), labels: [1, 3])
    try loss.backward()
    XCTAssertTrue(model.parameters.allSatisfy { $0.grad != nil })
    XCTAssertTrue(model.allParameters.filter { $0.name.hasPrefix("conv1") }.allSatisfy { $0.grad == nil && !$0.requiresGrad })
    XCTAssertThrowsError(try GraphModel(g, freezeUntil: "layer9")) {
      XCTAssertTrue("\($0)".contains("no node or value named 'layer9'"), "\($0)")
    }
  }

  func testSmallCNNLearnsASeparableTask() throws {
    // Class 1 images are bright in the top half, class 0 in the bottom half, plus noise.
    var r = SeededGenerator(seed: 9)
    func sample(_ label: Int) -> Tensor {
      Tensor(shape: [1, 1, 8, 8]) { d in
        for i in 0..<64 { d[i] = ((i < 32) == (label == 1) ? 0.8 : 0.2) + 0.3 * r.nextNormal() }
      }
    }
    let labels = (0..<64).map { $0 % 2 }
    let train = try LabelledTensors(inputs: labels.map(sample), labels: labels)
    let test = try LabelledTensors(inputs: labels.prefix(20).map(sample), labels: Array(labels.prefix(20)))
    let model = try GraphModel(try SmallCNN.graph(side: 8, classes: 2, seed: 1))
    let trainer = try ClassifierTrainer(model: model, options: .init(epochs: 8, batchSize: 16, learningRate: 1e-2))
    try trainer.train(train)
    let metrics = try trainer.evaluate(test, classes: 2)
    print("small-cnn on a separable task: losses \(trainer.epochLosses), held-out accuracy \(metrics.accuracy), macro-F1 \(metrics.macroF1)")
    XCTAssertGreaterThan(metrics.accuracy, 0.9)
    XCTAssertLessThan(trainer.epochLosses.last!, trainer.epochLosses.first!)
  }

  func testMetricsAgainstHandCounts() {
    // labels 0 0 1 1 2, predictions 0 1 1 1 0: class 0 P=1/2 R=1/2 F1=0.5; class 1 P=2/3 R=1
    // F1=0.8; class 2 F1=0 → macro 0.4333.
    let m = ClassificationMetrics(labels: [0, 0, 1, 1, 2], predictions: [0, 1, 1, 1, 0], classes: 3)
    XCTAssertEqual(m.accuracy, 0.6, accuracy: 1e-12)
    XCTAssertEqual(m.macroF1, (0.5 + 0.8 + 0) / 3, accuracy: 1e-12)
    XCTAssertEqual(m.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
  }

  func testNaNLossStopsNamingTheStep() throws {
    let model = try GraphModel(try SmallCNN.graph(side: 8, classes: 2, seed: 1))
    let bad = Tensor(shape: [1, 1, 8, 8], repeating: .nan)
    let data = try LabelledTensors(inputs: [bad, bad, bad], labels: [0, 1, 0])
    let trainer = try ClassifierTrainer(model: model, options: .init(epochs: 1, batchSize: 2, learningRate: 0.5))
    XCTAssertThrowsError(try trainer.train(data)) {
      XCTAssertTrue("\($0)".contains("at epoch 1, step 1 of 2"), "\($0)")
      XCTAssertTrue("\($0)".contains("lower the learning rate (--lr)"), "\($0)")
    }
  }
}

/// The graph bridge under the same finite-difference check as every op.
extension GradientCheckTests {
  /// The channel shuffle the executor fuses (ShuffleNet) has the executor's values in VeilTrain,
  /// and a gradient (a permutation's: the inverse shuffle).
  func testChannelShuffleMatchesTheExecutorAndHasAGradient() throws {
    var g = Graph(name: "shuffle")
    let x = g.addInput(name: "x", shape: [2, 6, 3, 3])
    g.outputs = [g.addNode(Op.channelShuffle(groups: 2), name: "shuffle", inputs: [x])[0]]
    try g.inferShapes()
    var r = SeededGenerator(seed: 6)
    let input = Tensor.randomNormal(shape: [2, 6, 3, 3], generator: &r)
    let expected = try Executor(graph: g).run([input])[0]
    let model = try GraphModel(g)
    XCTAssertEqual(try model(Variable(input)).value.scalars, expected.scalars)
    // Channel 1 of the output is input channel 3 (groups [0 1 2 | 3 4 5] interleaved).
    XCTAssertEqual(expected.scalars[9..<18], input.scalars[27..<36])
    let v = Variable(input, requiresGrad: true)
    try check("channel shuffle", [v]) { try model(v) }
  }

  func testGradientsThroughAGraph() throws {
    let model = try GraphModel(try GraphModelTests.smallGraph(seed: 1))
    XCTAssertEqual(model.parameters.map(\.name), ["conv1.weight", "bn1.weight", "bn1.bias", "dw.weight", "fc.weight", "fc.bias"])
    var r = SeededGenerator(seed: 2)
    let x = Variable(.randomNormal(shape: [2, 2, 6, 6], generator: &r), requiresGrad: true)
    let params = model.parameters
    try check("graph (training mode)", [x] + params) { try model(x) }
    model.training = false
    try check("graph (evaluation mode)", [x] + params) { try model(x) }
  }
}
