import ArgumentParser
import Foundation
import VeilFormats
import VeilGraph
import VeilModels

/// Resolves `--model NAME|PATH` to a graph: a zoo name builds the architecture with seeded
/// weights; a path loads a model file.
enum ModelSource {
  static func load(_ spec: String, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    if ModelZoo.names.contains(spec) {
      return try ModelZoo.build(spec, batch: batch, seed: seed)
    }
    let url = URL(fileURLWithPath: spec)
    if FileManager.default.fileExists(atPath: url.path) {
      guard url.pathExtension.lowercased() == "onnx" else {
        throw ValidationError(
          "cannot load '\(spec)': only ONNX files (.onnx) are read in this build; PyTorch checkpoints come later")
      }
      var g = try ONNXReader.read(url)
      if batch != 1 { g = try g.withBatch(batch) }
      return g
    }
    throw ValidationError(
      "unknown model '\(spec)': not a zoo name (\(ModelZoo.names.joined(separator: ", "))) and no file at that path")
  }

  /// Fails early, before any other work, when `spec` is neither a zoo name nor a file.
  static func check(_ spec: String) throws {
    guard ModelZoo.names.contains(spec) || FileManager.default.fileExists(atPath: spec) else {
      throw ValidationError(
        "unknown model '\(spec)': not a zoo name (\(ModelZoo.names.joined(separator: ", "))) and no file at that path")
    }
  }

  /// The graph's input shape with the batch replaced.
  static func inputShape(_ g: Graph) -> [Int] {
    g.inputs.first.flatMap { g.shape($0) } ?? []
  }
}
