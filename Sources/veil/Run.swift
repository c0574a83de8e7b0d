import ArgumentParser
import Foundation
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

struct Run: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run one forward pass of a model on an input tensor.",
    discussion: """
      The input is a .npy float32 tensor in the model's input layout (NCHW, [N,3,224,224] for the
      zoo; a [3,224,224] array is taken as a batch of one). The output can be written as .npy to
      compare Veil with other runtimes. Zoo models carry seeded (untrained) weights, so their
      classes are not meaningful; they exercise the architecture.
      """)

  @Option(help: "A zoo model name (see `veil models`) or a model file.")
  var model: String
  @Option(help: "Input tensor (.npy, float32).")
  var input: String
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
    guard url.pathExtension.lowercased() == "npy" else {
      throw ValidationError(
        "input '\(input)': only .npy tensors are read in this build (image decoding is not available yet); convert the image to a float32 NCHW .npy")
    }
    var x = try NPY.read(url)
    let graph = try ModelSource.load(model, batch: x.rank == 3 ? 1 : max(x.shape.first ?? 1, 1), seed: seed)
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
    let classes = y.shape.last ?? 0
    let names = try classNames(count: classes)
    let items = (0..<(y.shape.first ?? 0)).map { i -> Item in
      let row = Array(y.scalars[(i * classes)..<((i + 1) * classes)])
      let best = row.indices.sorted { row[$0] > row[$1] }.prefix(top)
      return Item(index: i, top: best.map { Class(classIndex: $0, name: names?[$0], score: row[$0]) })
    }
    let weights = ModelZoo.names.contains(model) ? "seeded \(seed) (untrained)" : "from file"
    let report = Report(
      model: model, inputShape: x.shape, outputShape: y.shape, compileMs: t1.timeIntervalSince(t0) * 1000,
      runMs: t2.timeIntervalSince(t1) * 1000, threads: Engine.shared.threads, weights: weights, items: items)
    if json { return try printJSON(report) }
    print("model \(model) (\(weights) weights), input \(x.shape) → output \(y.shape)")
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
      let text = try String(contentsOf: URL(fileURLWithPath: labels), encoding: .utf8)
      let names = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
      guard names.count >= count else {
        throw ValidationError("--labels '\(labels)' has \(names.count) lines; the model has \(count) classes")
      }
      return names
    }
    return count == 1000 ? try AssetCache.imageNetClasses() : nil
  }
}

struct Export: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write a model as an ONNX file (opset 17) that ONNX Runtime and others can run.")

  @Option(help: "A zoo model name.")
  var model: String
  @Option(help: "Output .onnx file.")
  var out: String
  @Option(help: "Batch size of the exported input.")
  var batch: Int = 1
  @Option(help: "Seed for the zoo's weight initialisation.")
  var seed: UInt64 = 0

  func validate() throws {
    guard batch >= 1 else { throw ValidationError("--batch must be ≥ 1, found \(batch)") }
  }

  func run() throws {
    let g = try ModelSource.load(model, batch: batch, seed: seed)
    try ONNXWriter.write(g, to: URL(fileURLWithPath: out))
    print("wrote \(out): \(g.nodes.count) nodes, \(g.parameterCount) weight values (BatchNorm statistics included), input \(ModelSource.inputShape(g))")
  }
}
