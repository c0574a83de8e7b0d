import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilServing

struct Cuts: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the points where a model can be cut into a head (TEE) and a tail (accelerator).",
    discussion: """
      A cut point is a place where exactly one tensor crosses from the layers before to the
      layers after (between blocks, never inside a residual branch). Zoo models list their
      structural cuts (stage and block outputs: block2_pool, layer3, features.5); imported
      models list every single-tensor point, named by the node that produces the tensor, except
      between a layer and the activation that alone consumes it. --all lists every point.
      """)

  @Option(help: "A zoo model name (see `veil models`) or a model file.")
  var model: String
  @Flag(help: "Every single-tensor point, not only the structural ones.")
  var all = false
  @Flag(help: "Print one JSON document.")
  var json = false

  struct Report: Encodable {
    var model: String
    var cuts: [CutPoint]
  }

  func run() throws {
    try ModelSource.check(model)
    let g = try ModelSource.load(model)
    let cuts = try g.candidateCuts(all: all)
    if json { return try printJSON(Report(model: model, cuts: cuts)) }
    print("\(cuts.count) cut points of \(model) (batch 1):")
    print(pad("#", 4) + pad("shape", 20) + pad("tensor", 11) + pad("head weights", 14) + pad("head GFLOP", 12) + pad("tail GFLOP", 12) + "name")
    for c in cuts {
      print(
        pad("\(c.index)", 4) + pad("\(c.shape)", 20) + pad(bytesText(c.bytes), 11)
          + pad(bytesText(c.headParameterBytes), 14) + pad(String(format: "%.3f", Double(c.headFlops) / 1e9), 12)
          + pad(String(format: "%.3f", Double(c.tailFlops) / 1e9), 12) + c.name)
    }
  }
}
