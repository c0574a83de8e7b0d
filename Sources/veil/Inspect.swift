import ArgumentParser
import Foundation
import VeilFormats
import VeilGraph

struct Inspect: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Describe a model: inputs, outputs, op counts, parameters and FLOPs.",
    discussion: """
      MODEL is a zoo name (see `veil models`) or an ONNX file. An ONNX file Veil cannot import is
      surveyed in one pass: every input with a dimension Veil cannot fix and every node whose op
      or attributes it does not take are listed (with the op counts), not just the first; the
      command then exits with status 1.
      """)

  @Argument(help: "A zoo model name or an .onnx file.")
  var model: String
  @Flag(help: "Print one JSON document.")
  var json = false

  struct Report: Encodable {
    var model: String
    var graph: String
    var inputs: [Port]
    var outputs: [Port]
    var nodes: Int
    var ops: [String: Int]
    var parameters: Int
    var parameterBytes: Int
    var flops: Int
    var metadata: [String: String]
    var cuts: [CutPoint]
  }

  func run() throws {
    try ModelSource.check(model)
    var g: Graph
    do { g = try ModelSource.load(model) } catch {
      guard model.lowercased().hasSuffix(".onnx"), let survey = try? ONNXReader.survey(URL(fileURLWithPath: model)),
        !survey.importable
      else { throw error }
      try report(survey)
      throw ExitCode(1)
    }
    try g.inferShapes()
    var ops: [String: Int] = [:]
    for n in g.nodes { ops[n.op.typeName, default: 0] += 1 }
    let report = Report(
      model: model, graph: g.name,
      inputs: Port.of(g.inputs, in: g), outputs: Port.of(g.outputs, in: g),
      nodes: g.nodes.count, ops: ops, parameters: g.parameterCount, parameterBytes: g.parameterCount * 4,
      flops: g.totalFlops, metadata: g.metadata, cuts: try g.candidateCuts())
    if json { return try printJSON(report) }
    print("model \(model) (graph '\(g.name)'), \(g.nodes.count) nodes")
    for p in report.inputs { print("  input  \(p.name) \(p.shape)") }
    for p in report.outputs { print("  output \(p.name) \(p.shape)") }
    print(String(format: "parameters %d (%.1f MiB, BatchNorm statistics included), %.2f GFLOP per pass",
      report.parameters, Double(report.parameterBytes) / 1_048_576, Double(report.flops) / 1e9))
    print("ops: " + ops.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }
      .map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    for (k, v) in g.metadata.sorted(by: { $0.key < $1.key }) where k != "cuts" { print("  \(k): \(v)") }
    print("candidate cuts (\(report.cuts.count); `veil cuts` for details): " + report.cuts.map(\.name).joined(separator: ", "))
  }

  /// What stands in the way of importing the model, all of it.
  func report(_ s: ONNXSurvey) throws {
    if json { return try printJSON(s) }
    print("model \(model): cannot be imported (\(s.nodes) nodes, opset \(s.opset.map(String.init) ?? "none"))")
    for p in s.problems {
      switch p.kind {
      case .model: print("  model: \(p.detail)")
      case .input: print("  input \(p.name): \(p.detail)")
      case .node: print("  node \(p.name) (\(p.op ?? "?")): \(p.detail)")
      }
    }
    if s.uncheckedNodes > 0 { print("  and \(s.uncheckedNodes) node(s) after those that could not be checked without their outputs") }
    if !s.unsupportedOps.isEmpty { print("ops not taken: " + s.unsupportedOps.joined(separator: ", ")) }
    print("ops: " + s.opCounts.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }
      .map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    print("docs/onnx-support.md lists the ops Veil imports and at which opsets.")
  }
}
