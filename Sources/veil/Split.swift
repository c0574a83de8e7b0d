import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilServing

struct SplitModel: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "split",
    abstract: "Cut a model in two and write the head and tail as ONNX, with a JSON description of the cut.",
    discussion: """
      Writes DIR/head.onnx (model input → cut tensor), DIR/tail.onnx (cut tensor → model
      output) and DIR/cut.json (the cut, its tensor's shape and size, each part's inputs,
      outputs, parameters and FLOPs). Running the tail on the head's output gives the whole
      model's output; ONNX Runtime or Triton can serve either part. With --plan it also writes
      DIR/plan.json, the deployment `veil enclave serve --plan DIR` reads, for a cut chosen by
      hand (no privacy evidence: `veil plan` chooses with it).
      """)

  @Option(help: "A zoo model name (see `veil models`) or a model file.")
  var model: String
  @Option(help: "Cut name or index (see `veil cuts`).")
  var cut: String
  @Option(help: "Output directory (created if missing).")
  var out: String
  @Option(help: "Seed for the zoo's weight initialisation.")
  var seed: UInt64 = 0
  @Flag(help: "Allow every single-tensor point, not only the structural ones.")
  var all = false
  @Flag(help: "Also write plan.json (the deployment for `veil enclave serve --plan DIR`).")
  var plan = false
  @Option(help: "With --plan: the preprocessing preset the client applies (imagenet, caffe, tensorflow, tensorflow-lite, unit).")
  var preprocess: VeilData.Preprocessing.Preset = .imagenet
  @Flag(
    help: "With --plan: keep the answer in the enclave: the layers from the last layer with weights on (output.onnx) run in the enclave on what the accelerator returns, so the logits never leave it.")
  var privateOutput = false

  struct Part: Encodable {
    var file: String
    var inputs: [Port]
    var outputs: [Port]
    var parameters: Int
    var flops: Int
  }
  struct Description: Encodable {
    var model: String
    var cut: CutPoint
    var head: Part
    var tail: Part
  }

  func validate() throws {
    if privateOutput && !plan { throw ValidationError("--private-output shapes the deployment: give --plan too") }
  }

  func run() throws {
    try ModelSource.check(model)
    let g = try ModelSource.load(model, seed: seed)
    let point: CutPoint
    do { point = try g.cut(named: cut, all: all) } catch { throw ValidationError("\(error)") }
    let (head, tail) = try g.split(at: point)
    let dir = URL(fileURLWithPath: out)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    func part(_ p: Graph, _ file: String) throws -> Part {
      try ONNXWriter.write(p, to: dir.appendingPathComponent(file))
      return Part(
        file: file, inputs: Port.of(p.inputs, in: p), outputs: Port.of(p.outputs, in: p),
        parameters: p.parameterCount, flops: p.totalFlops)
    }
    let d = Description(model: model, cut: point, head: try part(head, "head.onnx"), tail: try part(tail, "tail.onnx"))
    try VeilJSON.encoder().encode(d).write(to: dir.appendingPathComponent("cut.json"))
    print(
      "cut \(point.name) (#\(point.index)): tensor \(point.tensor) \(point.shape), \(bytesText(point.bytes)); "
        + "head \(head.nodes.count) nodes, \(bytesText(head.parameterCount * 4)) of weights; tail \(tail.nodes.count) nodes")
    if plan {
      try DeploymentPlan.write(
        model: g, name: URL(fileURLWithPath: model).lastPathComponent, cut: point.name,
        preprocessing: .init(preset: preprocess.rawValue, appliedIn: .client), allCuts: all, outputCut: privateOutput ? "auto" : nil,
        to: dir)
    }
    print(
      "wrote \(dir.appendingPathComponent("head.onnx").path), tail.onnx, cut.json\(plan ? ", plan.json" : "")\(plan && privateOutput ? ", output.onnx (the enclave's last layer; plan.json's tail.onnx now stops before it)" : "")")
  }
}
