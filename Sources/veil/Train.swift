import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import VeilTrain

struct Train: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train or fine-tune a classifier on an image data set (for example TON_IoT records as images).",
    discussion: """
      --model is a zoo name (seeded weights), a model file (.onnx, or a PyTorch state_dict of a \
      zoo architecture: .pth/.pt/.bin/.ckpt/.safetensors), small-cnn (a small CNN for k×k \
      greyscale images, one input channel) or small-vit (a small vision transformer for the same \
      images: 4×4 patches, 2×2 below 16 pixels, 4 blocks of 4 heads on 64-wide tokens). When the data set's class count differs from the \
      model's outputs, the classifier (the last Gemm/Linear) is replaced by a new one.

      --data is a folder of class sub-folders (DataSet.folder), or a folder holding train/ and \
      test/ (or validation/) made that way, as `veil data ton-iot` writes it. A single folder is \
      split 80/10/10 by source image, stratified, with --seed. Every image is resized to \
      --image-size (default: the first training image's size) and held in memory.

      Reports accuracy, macro-F1 and the confusion matrix on the held-out split. --out gets \
      checkpoint.safetensors (after every epoch; a rerun with the same settings resumes from \
      it), model.safetensors (the trained weights and BatchNorm statistics, by parameter name), \
      model.onnx (the trained graph, for `veil run` and ONNX Runtime) and metrics.json.
      """)

  @Option(help: "Zoo name, model file, small-cnn or small-vit.")
  var model: String
  @Option(help: "Image data set folder (class sub-folders, or train/ and test/ sub-folders of them).")
  var data: String
  @Option(help: "Training epochs.")
  var epochs = 10
  @Option(help: "Batch size.")
  var batch = 32
  @Option(help: "Adam learning rate.")
  var lr: Float = 1e-3
  @Option(help: "Adam weight decay (L2 added to the gradient).")
  var weightDecay: Float = 0
  @Option(help: "Square input size in pixels (default: the first training image's width).")
  var imageSize: Int?
  @Option(help: "Freeze the weights of this node (or cut/value name) and every node before it.")
  var freezeUntil: String?
  @Option(help: "Seed for the split, the shuffling, new classifier weights and dropout.")
  var seed: UInt64 = 0
  @Option(help: "Output folder (checkpoint, weights, ONNX model, metrics).")
  var out = "out/train"
  @Flag(help: "Print the report as one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  struct Report: Codable {
    var model: String
    var data: String
    var classes: [String]
    var imageSize: Int
    var channels: Int
    var epochs: Int
    var batch: Int
    var learningRate: Float
    var trainSamples: Int
    var heldOutSplit: String
    var heldOutSamples: Int
    var trainableParameters: Int
    var frozenUntil: String?
    var resumedAfterEpoch: Int?
    var epochLosses: [Float]
    var heldOut: ClassificationMetrics
    var seconds: Double
    var files: [String: String]
  }

  func validate() throws {
    guard epochs >= 1 else { throw ValidationError("--epochs must be at least 1, found \(epochs)") }
    guard batch >= 1 else { throw ValidationError("--batch must be at least 1, found \(batch)") }
    guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number, found \(lr)") }
    if let s = imageSize, s < 4 { throw ValidationError("--image-size must be at least 4, found \(s)") }
  }

  func run() throws {
    try engine.apply()
    let start = Date()
    let ownArchitecture = model == "small-cnn" || model == "small-vit"
    if !ownArchitecture { try ModelSource.check(model) }
    let (train, heldOut, heldOutName) = try loadSplits()
    let classes = train.classNames
    let first = try train.load(0)
    let size = imageSize ?? first.width
    var graph: Graph
    if model == "small-cnn" {
      graph = try SmallCNN.graph(side: size, channels: 1, classes: classes.count, seed: seed)
    } else if model == "small-vit" {
      graph = try ModelZoo.smallVisionTransformer(side: size, channels: 1, classes: classes.count, seed: seed)
    } else {
      graph = try ModelSource.load(model)
      graph = try GraphModel.replacingClassifier(graph, classes: classes.count, seed: seed)
    }
    guard let inputID = graph.inputs.first, let inputShape = graph.shape(inputID), inputShape.count == 4 else {
      throw ValidationError("model '\(model)' has no NCHW image input")
    }
    let channels = inputShape[1]
    let normalization = Self.normalization(graph, smallCNN: ownArchitecture)
    @Sendable func tensor(_ image: ByteImage) throws -> Tensor {
      var img = image
      if img.width != size || img.height != size { img = try img.resized(width: size, height: size, interpolation: .bilinear) }
      if channels == 3 && img.channels != 3 { img = img.rgb() }
      let t = try img.tensor(layout: .nchw, order: .rgb, normalization: normalization)
      if channels == 1 && t.shape[1] != 1 {
        // Greyscale data written as RGB (TON_IoT images are replicated): keep the first channel.
        return t.withUnsafeBuffer { s in Tensor(shape: [1, 1, size, size]) { d in for i in 0..<d.count { d[i] = s[i] } } }
      }
      guard t.shape[1] == channels else {
        throw ValidationError("the model takes \(channels) input channels; images have \(t.shape[1])")
      }
      return t
    }
    let trainTensors = try Self.loadAll(train, label: "loading \(train.samples.count) training images", tensor)
    let heldOutTensors = try Self.loadAll(heldOut, label: "loading \(heldOut.samples.count) \(heldOutName) images", tensor)

    // Shapes at this input size, so the exported graph is exact.
    try graph.inferShapes(inputShapes: [inputID: [1, channels, size, size]])
    let net = try GraphModel(graph, freezeUntil: freezeUntil, seed: seed)
    let trainer = try ClassifierTrainer(
      model: net,
      options: .init(epochs: epochs, batchSize: batch, learningRate: lr, weightDecay: weightDecay, seed: seed))
    let outURL = URL(fileURLWithPath: out)
    try FileManager.default.createDirectory(at: outURL, withIntermediateDirectories: true)
    let checkpoint = outURL.appendingPathComponent("checkpoint.safetensors")
    let fingerprint = [
      model, data, "\(classes.count) classes", "size \(size)", "batch \(batch)", "lr \(lr)", "wd \(weightDecay)",
      "freeze \(freezeUntil ?? "-")", "seed \(seed)",
    ].joined(separator: "|")
    var resumed: Int?
    if FileManager.default.fileExists(atPath: checkpoint.path) {
      resumed = try trainer.resume(from: checkpoint, fingerprint: fingerprint)
      FileHandle.standardError.write(Data("resuming from \(checkpoint.path) after epoch \(resumed ?? 0)\n".utf8))
    }
    let display = TrainingProgress()
    try trainer.train(trainTensors, checkpoint: checkpoint, fingerprint: fingerprint) { display.show($0) }
    display.finish()
    let metrics = try trainer.evaluate(heldOutTensors, classes: classes.count)

    var trained = net.exportGraph()
    trained.metadata["classes"] = classes.joined(separator: ",")
    trained.metadata["input.size"] = String(size)
    trained.metadata["trained.data"] = data
    let weightsURL = outURL.appendingPathComponent("model.safetensors")
    let onnxURL = outURL.appendingPathComponent("model.onnx")
    let metricsURL = outURL.appendingPathComponent("metrics.json")
    try Safetensors.write(
      trained.initializers.map { (name: trained[$0.key].name, tensor: $0.value) }.sorted { $0.name < $1.name }, to: weightsURL)
    try ONNXWriter.write(trained, to: onnxURL)
    let report = Report(
      model: model, data: data, classes: classes, imageSize: size, channels: channels, epochs: epochs, batch: batch,
      learningRate: lr, trainSamples: trainTensors.labels.count, heldOutSplit: heldOutName,
      heldOutSamples: heldOutTensors.labels.count, trainableParameters: net.parameters.reduce(0) { $0 + $1.value.count },
      frozenUntil: freezeUntil, resumedAfterEpoch: resumed, epochLosses: trainer.epochLosses, heldOut: metrics,
      seconds: Date().timeIntervalSince(start),
      files: [
        "checkpoint": checkpoint.path, "weights": weightsURL.path, "onnx": onnxURL.path, "metrics": metricsURL.path,
      ])
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(report).write(to: metricsURL)
    if json { return try printJSON(report) }
    print(report.text)
  }

  /// The held-out split is `test`, else `validation`; a folder without splits is split here.
  func loadSplits() throws -> (DataSet, DataSet, String) {
    let root = URL(fileURLWithPath: data)
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: root.resolvingSymlinksInPath().path, isDirectory: &isDirectory), isDirectory.boolValue else {
      throw ValidationError("--data '\(data)' is not a folder")
    }
    let trainURL = root.appendingPathComponent("train")
    let train: DataSet
    let heldOut: DataSet
    let name: String
    if FileManager.default.fileExists(atPath: trainURL.path) {
      train = try DataSet.folder(trainURL)
      guard let split = ["test", "validation"].first(where: { FileManager.default.fileExists(atPath: root.appendingPathComponent($0).path) })
      else { throw ValidationError("'\(data)' has train/ but neither test/ nor validation/ to evaluate on") }
      heldOut = try DataSet.folder(root.appendingPathComponent(split))
      name = split
      guard heldOut.classNames == train.classNames else {
        throw ValidationError(
          "'\(data)': train/ has classes \(train.classNames) but \(split)/ has \(heldOut.classNames); both need the same class folders")
      }
    } else {
      let all = try DataSet.folder(root)
      let parts = all.split(try SplitFractions(train: 0.8, validation: 0.1, test: 0.1), seed: seed)
      train = parts[.train] ?? DataSet(classNames: all.classNames, samples: [])
      heldOut = parts[.test] ?? DataSet(classNames: all.classNames, samples: [])
      name = "test"
    }
    guard train.classNames.count >= 2 else {
      throw ValidationError("'\(data)': a classifier needs at least 2 class folders, found \(train.classNames)")
    }
    guard !train.samples.isEmpty, !heldOut.samples.isEmpty else {
      throw ValidationError(
        "'\(data)': \(train.samples.count) training and \(heldOut.samples.count) held-out images; both splits need at least one")
    }
    return (train, heldOut, name)
  }

  /// Decodes every image of `set` through `tensor`, with a progress bar.
  static func loadAll(_ set: DataSet, label: String, _ tensor: @escaping @Sendable (ByteImage) throws -> Tensor) throws
    -> LabelledTensors
  {
    let loader = try set.batches(size: 64, progress: set.samples.count > 256, transform: tensor)
    var inputs: [Tensor] = []
    var labels: [Int] = []
    while let b = try loader.next() {
      for i in 0..<b.labels.count { inputs.append(b.inputs.batchItem(i)) }
      labels += b.labels
    }
    return try LabelledTensors(inputs: inputs, labels: labels)
  }

  /// The model's own input normalisation (its `preprocess.*` metadata) on 0…255 pixels;
  /// small-cnn and models that declare none take pixels / 255.
  static func normalization(_ g: Graph, smallCNN: Bool) -> Normalization {
    guard !smallCNN, let p = Preprocessing(metadata: g.metadata) else { return .unit }
    return Normalization(mean: p.pixelMean, std: p.pixelStd)
  }
}

extension Train.Report {
  var text: String {
    var lines = [
      "model \(model) on \(data): \(classes.count) classes, \(imageSize)×\(imageSize)×\(channels), \(trainSamples) training images",
      "epoch losses: " + epochLosses.map { String(format: "%.4f", $0) }.joined(separator: " "),
      String(
        format: "held-out (%@, %d images): accuracy %.4f, macro-F1 %.4f", heldOutSplit, heldOutSamples, heldOut.accuracy,
        heldOut.macroF1),
      "confusion matrix (rows: true class, columns: predicted):",
    ]
    let width = max(heldOut.confusion.flatMap { $0 }.map { String($0).count }.max() ?? 1, 3)
    for (i, row) in heldOut.confusion.enumerated() {
      lines.append(
        row.map { String(repeating: " ", count: width - String($0).count) + String($0) }.joined(separator: " ") + "  " + classes[i])
    }
    lines.append("wrote " + ["weights", "onnx", "metrics", "checkpoint"].compactMap { files[$0] }.joined(separator: ", "))
    return lines.joined(separator: "\n")
  }
}

/// The training line on stderr: epoch, a bar over the epoch's steps, the loss and the ETA of
/// the whole run; redrawn in place on a terminal, every tenth of an epoch in logs.
final class TrainingProgress {
  private let terminal = isatty(STDERR_FILENO) == 1
  private var lastTenth = -1
  private var firstSeconds: Double?
  private var firstStepIndex = 0

  func show(_ p: ClassifierTrainer.Progress) {
    let index = (p.epoch - 1) * p.steps + p.step
    if firstSeconds == nil {
      firstSeconds = p.seconds
      firstStepIndex = index
    }
    let tenth = p.step * 10 / p.steps
    guard terminal || tenth != lastTenth || p.step == p.steps else { return }
    lastTenth = p.step == p.steps ? -1 : tenth
    let done = index - firstStepIndex
    let perStep = done > 0 ? (p.seconds - (firstSeconds ?? 0)) / Double(done) : 0
    let eta = perStep * Double(p.epochs * p.steps - index)
    let width = 20
    let filled = p.step * width / p.steps
    let line = "epoch \(p.epoch)/\(p.epochs) [" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
      + "] step \(p.step)/\(p.steps) " + String(format: "loss %.4f (epoch mean %.4f) ETA %.0fs", p.loss, p.epochLoss, eta)
    FileHandle.standardError.write(Data((terminal ? "\r" + line : line + "\n").utf8))
  }

  func finish() {
    if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
  }
}
