import Foundation
import VeilGraph
import VeilTensor

// Training a classifier graph on labelled tensors: the small CNN for k×k TON_IoT images, the
// seeded epoch loop (shuffle, batches, Adam, softmax cross-entropy), evaluation metrics, and
// per-epoch checkpoints that a later run resumes from. `veil train` is a thin shell over it.

/// A small CNN for k×k greyscale images (TON_IoT records laid out as images), written into the
/// graph IR so that it trains, exports to ONNX and runs under `veil run` as any model:
/// conv3×3(16)–BN–ReLU–maxpool2 → conv3×3(32)–BN–ReLU → global average pool → Linear(classes).
/// It lives here rather than in the zoo because it is a training-time architecture with no
/// reference paper or published weights.
public enum SmallCNN {
  public static func graph(side: Int, channels: Int = 1, classes: Int, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    guard side >= 4, channels >= 1, classes >= 2, batch >= 1 else {
      throw TrainError.invalidArgument(
        "small-cnn: image side \(side) must be ≥ 4, channels \(channels) ≥ 1, classes \(classes) ≥ 2")
    }
    var g = Graph(name: "small-cnn")
    var generator = SeededGenerator(seed: seed)
    let kaiming = Initializer.kaimingUniform(negativeSlope: Float(5).squareRoot())
    func bn(_ x: ValueID, _ c: Int, _ name: String) -> ValueID {
      g.batchNorm(
        x, scale: Tensor(shape: [c], repeating: 1), bias: Tensor(zeros: [c]), mean: Tensor(zeros: [c]),
        variance: Tensor(shape: [c], repeating: 1), name: name)
    }
    var x = g.addInput(name: "input", shape: [batch, channels, side, side])
    x = g.conv(x, weight: kaiming.tensor([16, channels, 3, 3], generator: &generator), bias: Tensor(zeros: [16]), .square(3), name: "conv1")
    x = g.activation(bn(x, 16, "bn1"), .relu, name: "relu1")
    x = g.maxPool(x, PoolAttributes(kernel: [2, 2], strides: [2, 2], ceilMode: true), name: "pool1")
    x = g.conv(x, weight: kaiming.tensor([32, 16, 3, 3], generator: &generator), bias: Tensor(zeros: [32]), .square(3), name: "conv2")
    x = g.activation(bn(x, 32, "bn2"), .relu, name: "relu2")
    x = g.flatten(g.globalAveragePool(x, name: "pool2"), name: "flatten")
    let logits = g.linear(x, weight: kaiming.tensor([classes, 32], generator: &generator), bias: Tensor(zeros: [classes]), name: "fc")
    g.outputs = [logits]
    g[logits].name = "logits"
    g.metadata["model.name"] = "small-cnn"
    g.metadata["input.size"] = String(side)
    g.metadata["cuts"] = "relu1,pool1,relu2"
    try g.inferShapes()
    return g
  }
}

/// Accuracy, macro-averaged F1 and the confusion matrix of predictions against labels.
public struct ClassificationMetrics: Codable, Sendable, Equatable {
  public var count: Int
  public var accuracy: Double
  /// The mean over classes that occur in the labels or the predictions of 2PR/(P + R)
  /// (0 for a class with no true positive), as scikit-learn's f1_score(average="macro").
  public var macroF1: Double
  /// confusion[true][predicted].
  public var confusion: [[Int]]

  public init(labels: [Int], predictions: [Int], classes: Int) {
    var m = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
    for (t, p) in zip(labels, predictions) where (0..<classes).contains(t) && (0..<classes).contains(p) { m[t][p] += 1 }
    count = labels.count
    let correct = (0..<classes).reduce(0) { $0 + m[$1][$1] }
    accuracy = count > 0 ? Double(correct) / Double(count) : 0
    var f1s: [Double] = []
    for c in 0..<classes {
      let predicted = (0..<classes).reduce(0) { $0 + m[$1][c] }
      let actual = m[c].reduce(0, +)
      guard predicted + actual > 0 else { continue }
      f1s.append(Double(2 * m[c][c]) / Double(predicted + actual))
    }
    macroF1 = f1s.isEmpty ? 0 : f1s.reduce(0, +) / Double(f1s.count)
    confusion = m
  }
}

/// Labelled inputs held in memory: one tensor per sample, each a batch of one ([1, C, H, W],
/// as an image's `tensor()` gives it), all the same shape.
public struct LabelledTensors: Sendable {
  public var inputs: [Tensor]
  public var labels: [Int]

  public init(inputs: [Tensor], labels: [Int]) throws {
    guard inputs.count == labels.count else {
      throw TrainError.invalidArgument("\(inputs.count) inputs for \(labels.count) labels")
    }
    if let first = inputs.first, first.shape.first != 1 {
      throw TrainError.shapeMismatch(op: "data", detail: "sample 0 has shape \(first.shape); want a batch of one, [1, ...]")
    }
    if let first = inputs.first, let bad = inputs.firstIndex(where: { $0.shape != first.shape }) {
      throw TrainError.shapeMismatch(op: "data", detail: "sample \(bad) has shape \(inputs[bad].shape), sample 0 has \(first.shape)")
    }
    self.inputs = inputs
    self.labels = labels
  }

  /// Samples `indices` stacked into one batch [B, ...].
  public func batch(_ indices: ArraySlice<Int>) throws -> Tensor {
    guard let first = inputs.first else { throw TrainError.invalidArgument("an empty data set has no batch") }
    let per = first.count
    return Tensor(shape: [indices.count] + Array(first.shape.dropFirst())) { d in
      for (k, i) in indices.enumerated() {
        inputs[i].withUnsafeBuffer { s in (d.baseAddress! + k * per).update(from: s.baseAddress!, count: per) }
      }
    }
  }
}

/// The epoch loop for a classifier graph: softmax cross-entropy, Adam, seeded shuffling, a
/// checkpoint after every epoch (parameters, BatchNorm statistics, Adam's moments) that a new
/// run with the same settings resumes from.
public final class ClassifierTrainer {
  public struct Options: Sendable {
    public var epochs: Int
    public var batchSize: Int
    public var learningRate: Float
    public var weightDecay: Float
    public var seed: UInt64
    public init(epochs: Int = 10, batchSize: Int = 32, learningRate: Float = 1e-3, weightDecay: Float = 0, seed: UInt64 = 0) {
      self.epochs = epochs
      self.batchSize = batchSize
      self.learningRate = learningRate
      self.weightDecay = weightDecay
      self.seed = seed
    }
  }

  /// What one step reports to a progress display.
  public struct Progress: Sendable {
    public var epoch: Int
    public var epochs: Int
    public var step: Int
    public var steps: Int
    public var loss: Float
    /// Mean loss over the epoch so far.
    public var epochLoss: Float
    public var seconds: Double
  }

  public let model: GraphModel
  public let options: Options
  public let optimizer: Adam
  /// Mean training loss of each finished epoch.
  public private(set) var epochLosses: [Float] = []
  /// The first epoch this run trains (after a resume, the one after the checkpoint's).
  public private(set) var startEpoch = 1

  public init(model: GraphModel, options: Options) throws {
    guard options.epochs >= 1, options.batchSize >= 1 else {
      throw TrainError.invalidArgument("epochs \(options.epochs) and batch size \(options.batchSize) must be ≥ 1")
    }
    guard !model.parameters.isEmpty else {
      throw TrainError.invalidArgument("model '\(model.graph.name)' has no trainable parameter (is everything frozen?)")
    }
    self.model = model
    self.options = options
    optimizer = try Adam(
      parameters: model.parameters, learningRate: options.learningRate, weightDecay: options.weightDecay,
      backend: model.backend)
  }

  /// Loads a checkpoint `train` wrote; returns the epoch it was saved after. The checkpoint's
  /// `fingerprint` must equal `fingerprint` (the model and data it was made for).
  @discardableResult
  public func resume(from url: URL, fingerprint: String) throws -> Int {
    let meta = try Checkpoint.load(into: model.parameters, batchNorms: model.batchNormLayers, optimizer: optimizer, from: url)
    guard meta["veil.train.fingerprint"] == fingerprint else {
      throw TrainError.checkpoint(
        file: url.path,
        detail: "it was made for another model, data set or settings (\(meta["veil.train.fingerprint"] ?? "none")); delete it or choose another --out")
    }
    guard let s = meta["veil.train.epoch"], let epoch = Int(s) else {
      throw TrainError.checkpoint(file: url.path, detail: "no epoch recorded")
    }
    epochLosses = (meta["veil.train.losses"] ?? "").split(separator: ",").compactMap { Float(String($0)) }
    startEpoch = epoch + 1
    return epoch
  }

  /// Trains from `startEpoch` to `options.epochs`, saving `checkpoint` (if given) after each
  /// epoch. A non-finite loss stops with the epoch and step and the advice to lower the rate.
  public func train(
    _ data: LabelledTensors, checkpoint: URL? = nil, fingerprint: String = "", progress: ((Progress) -> Void)? = nil
  ) throws {
    let n = data.labels.count
    guard n >= 1 else { throw TrainError.invalidArgument("the training split is empty") }
    let steps = (n + options.batchSize - 1) / options.batchSize
    let start = Date()
    guard startEpoch <= options.epochs else { return }
    // Every step allocates the same activations and gradients: keep freed blocks for reuse.
    try withBlockReuse { try trainEpochs(data, steps: steps, start: start, checkpoint: checkpoint, fingerprint: fingerprint, progress: progress) }
  }

  private func trainEpochs(
    _ data: LabelledTensors, steps: Int, start: Date, checkpoint: URL?, fingerprint: String, progress: ((Progress) -> Void)?
  ) throws {
    let n = data.labels.count
    for epoch in startEpoch...options.epochs {
      model.training = true
      var generator = SeededGenerator(seed: options.seed &+ UInt64(epoch))
      let order = Array(0..<n).shuffled(using: &generator)
      var total: Float = 0
      var taken = 0
      for step in 0..<steps {
        let indices = order[(step * options.batchSize)..<min((step + 1) * options.batchSize, n)]
        // BatchNorm cannot train on one sample: a last batch of one joins the previous step's.
        if indices.count == 1, n > 1, model.batchNorms.values.contains(where: \.training) { continue }
        optimizer.zeroGradients()
        let logits = try model(Variable(try data.batch(indices)))
        let loss = try softmaxCrossEntropy(logits, labels: indices.map { data.labels[$0] })
        let value = loss.value.scalars[0]
        guard value.isFinite else {
          throw TrainError.invalidArgument(
            "the loss became \(value) at epoch \(epoch), step \(step + 1) of \(steps) (learning rate \(options.learningRate)); lower the learning rate (--lr), e.g. to \(options.learningRate / 10)")
        }
        try loss.backward()
        try optimizer.step()
        total += value
        taken += 1
        progress?(
          Progress(
            epoch: epoch, epochs: options.epochs, step: step + 1, steps: steps, loss: value, epochLoss: total / Float(taken),
            seconds: Date().timeIntervalSince(start)))
      }
      epochLosses.append(total / Float(max(taken, 1)))
      if epoch == options.epochs { try recalibrateBatchNorm(data) }
      if let checkpoint {
        try FileManager.default.createDirectory(at: checkpoint.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Checkpoint.save(
          parameters: model.parameters, batchNorms: model.batchNormLayers, optimizer: optimizer,
          metadata: [
            "veil.train.epoch": String(epoch), "veil.train.fingerprint": fingerprint,
            "veil.train.losses": epochLosses.map { String($0) }.joined(separator: ","),
          ], to: checkpoint)
      }
    }
  }

  /// Re-estimates the running statistics of every BatchNorm that trains as the equal-weight
  /// mean of its batch statistics over one pass of the training data (forward only). The
  /// exponential averages kept during training lag the weights: at a learning rate of 1e-2
  /// small-cnn scored 0.49 on its own training images in evaluation mode before this, 1.00 after.
  public func recalibrateBatchNorm(_ data: LabelledTensors) throws {
    let norms = model.batchNormLayers.filter(\.training)
    guard !norms.isEmpty else { return }
    for bn in norms {
      bn.resetRunningStatistics()
      bn.accumulating = true
    }
    defer { for bn in norms { bn.accumulating = false } }
    let n = data.labels.count
    var s = 0
    while s < n {
      let indices = Array(s..<min(s + options.batchSize, n))
      s += options.batchSize
      if indices.count == 1, n > 1 { continue }
      _ = try model(Variable(try data.batch(indices[...])))
    }
  }

  /// Predicted classes in evaluation mode, `batchSize` samples at a time.
  public func predict(_ data: LabelledTensors) throws -> [Int] {
    model.training = false
    defer { model.training = true }
    var predictions: [Int] = []
    let n = data.inputs.count
    var s = 0
    while s < n {
      let logits = try model(Variable(try data.batch(Array(s..<min(s + options.batchSize, n))[...]))).value
      let k = logits.shape[1]
      logits.withUnsafeBuffer { p in
        for i in 0..<logits.shape[0] {
          var best = 0
          for j in 1..<k where p[i * k + j] > p[i * k + best] { best = j }
          predictions.append(best)
        }
      }
      s += options.batchSize
    }
    return predictions
  }

  public func evaluate(_ data: LabelledTensors, classes: Int) throws -> ClassificationMetrics {
    ClassificationMetrics(labels: data.labels, predictions: try predict(data), classes: classes)
  }
}
