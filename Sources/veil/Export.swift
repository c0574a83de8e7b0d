import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

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
