import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

struct Run: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run one forward pass of a model on an input tensor.",
    discussion: """
      The input is a .npy float32 tensor in the model's input layout (NCHW, [N,3,224,224] for the
      zoo; a [3,224,224] array is taken as a batch of one), or a photo (.png, .jpg, .jpeg), which
      is turned upright by its EXIF orientation and preprocessed at the size and layout (NCHW or
      NHWC) of the model's input: a zoo model's own transform by default, else --preprocess (the
      shorter side resized to size·256/224, the centre crop, then the preset's normalisation and
      channel order; imagenet, the default for model files: torchvision
      mean/std, RGB; caffe: BGR minus the ImageNet means; tensorflow: (x−127.5)/127.5;
      tensorflow-lite: (x−127)/128, bicubic; unit: x/255). The output can be written as .npy to
      compare Veil with other runtimes. Zoo models carry seeded (untrained) weights, so their
      classes are not meaningful; they exercise the architecture.
      """)

  @Option(help: "A zoo model name (see `veil models`) or a model file.")
  var model: String
  @Option(help: "Input tensor (.npy, float32) or photo (.png, .jpg).")
  var input: String
  @Option(
    help: "How a photo becomes the input: imagenet, caffe, tensorflow, tensorflow-lite or unit (default: a zoo model's own transform, else imagenet).")
  var preprocess: VeilData.Preprocessing.Preset?
  @Option(help: "Write the raw output tensor here (.npy).")
  var output: String?
  @Option(help: "How many top classes to print per item.")
  var top: Int = 5
  @Option(help: "Seed for the zoo's weight initialisation.")
  var seed: UInt64 = 0
  @Option(
    help: ArgumentHelp(
      "Class names, one per line (index order); by default the ImageNet names from the asset cache when the model has 1000 classes.",
      valueName: "file"))
  var labels: String?
  @Flag(help: "Print one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  struct Item: Encodable {
    var index: Int
    var top: [Class]
  }
  struct Class: Encodable {
    var classIndex: Int
    var name: String?
    var score: Float
  }
  struct Report: Encodable {
    var model: String
    var inputShape: [Int]
    var preprocessing: String?
    var outputShape: [Int]
    var compileMs: Double
    var runMs: Double
    var threads: Int
    var weights: String
    var items: [Item]
  }

  func validate() throws {
    guard top >= 0 else { throw ValidationError("--top must be ≥ 0, found \(top)") }
  }

  func run() throws {
    try engine.apply()
    try ModelSource.check(model)
    let url = URL(fileURLWithPath: input)
    let ext = url.pathExtension.lowercased()
    let isPhoto = ["png", "jpg", "jpeg"].contains(ext)
    guard ext == "npy" || isPhoto else {
      throw ValidationError("input '\(input)': expected a .npy tensor or a .png / .jpg photo")
    }
    var x: Tensor
    let graph: Graph
    var preprocessing: String?
    if isPhoto {
      let photo = try ImageCodec.readUpright(url)
      graph = try ModelSource.load(model, batch: 1, seed: seed)
      // A state_dict file runs as the zoo architecture it was recognised as, with its transform.
      let (p, name) = try Self.preprocessing(
        preprocess, for: ModelSource.inputShape(graph), model: graph.metadata["architecture"] ?? model)
      x = try p.tensor(photo)
      preprocessing = name
    } else {
      x = try NPY.read(url)
      graph = try ModelSource.load(model, batch: x.rank == 3 ? 1 : max(x.shape.first ?? 1, 1), seed: seed)
    }
    let expected = ModelSource.inputShape(graph)
    if x.rank == 3 { x = try x.reshaped([1] + x.shape) }
    guard x.shape == expected else {
      throw ValidationError("input '\(input)': expected shape \(expected) (N,C,H,W) for model '\(model)', found \(x.shape)")
    }
    let t0 = Date()
    let exec = try Executor(graph: graph)
    let t1 = Date()
    let y = try exec.run([x])[0]
    let t2 = Date()
    if let output { try NPY.write(y, to: URL(fileURLWithPath: output)) }
    // One row of scores per item: the output's first dimension is the batch when it has more
    // than one (a classifier's [N, classes]); a model whose output is a single vector is one item.
    let count = y.shape.count >= 2 ? y.shape[0] : 1
    let classes = count > 0 ? y.count / count : 0
    let names = try classNames(count: classes)
    let items = (0..<count).map { i -> Item in
      let row = Array(y.scalars[(i * classes)..<((i + 1) * classes)])
      let best = row.indices.sorted { row[$0] > row[$1] }.prefix(top)
      return Item(index: i, top: best.map { Class(classIndex: $0, name: names?[$0], score: row[$0]) })
    }
    let weights = ModelZoo.names.contains(model) ? "seeded \(seed) (untrained)" : "from file"
    let report = Report(
      model: model, inputShape: x.shape, preprocessing: preprocessing, outputShape: y.shape, compileMs: t1.timeIntervalSince(t0) * 1000,
      runMs: t2.timeIntervalSince(t1) * 1000, threads: Engine.shared.threads, weights: weights, items: items)
    if json { return try printJSON(report) }
    print("model \(model) (\(weights) weights), input \(x.shape)\(preprocessing.map { " (\(input), \($0) preprocessing)" } ?? "") → output \(y.shape)")
    print(String(format: "compile %.1f ms, run %.1f ms on %d threads", report.compileMs, report.runMs, report.threads))
    for item in items where top > 0 {
      let list = item.top.map { c in
        String(format: "#%d%@ (%.4f)", c.classIndex, c.name.map { " \($0)" } ?? "", c.score)
      }.joined(separator: ", ")
      print("item \(item.index): \(list)")
    }
    if let output { print("output written to \(output)") }
  }

  func classNames(count: Int) throws -> [String]? {
    if let labels {
      let text: String
      do { text = try String(contentsOf: URL(fileURLWithPath: labels), encoding: .utf8) } catch {
        throw ValidationError("--labels '\(labels)': cannot read it as UTF-8 text (\(error.localizedDescription))")
      }
      let names = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
      guard names.count >= count else {
        throw ValidationError("--labels '\(labels)' has \(names.count) lines; the model has \(count) classes")
      }
      return names
    }
    return count == 1000 ? try AssetCache.imageNetClasses() : nil
  }
}
