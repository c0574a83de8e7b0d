import ArgumentParser
import Foundation
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

/// Resolves `--model NAME|PATH` to a graph: a zoo name builds the architecture with seeded
/// weights; a path loads a model file.
enum ModelSource {
  static func load(_ spec: String, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    if ModelZoo.names.contains(spec) {
      return try ModelZoo.build(spec, batch: batch, seed: seed)
    }
    let url = URL(fileURLWithPath: spec)
    if FileManager.default.fileExists(atPath: url.path) {
      switch url.pathExtension.lowercased() {
      case "onnx":
        var g = try ONNXReader.read(url)
        if batch != 1 { g = try g.withBatch(batch) }
        return g
      case "pth", "pt", "bin", "ckpt":
        return try fromStateDict(TorchCheckpoint.read(url), file: spec, batch: batch)
      case "safetensors":
        return try fromStateDict(Safetensors.read(url), file: spec, batch: batch)
      default:
        throw ValidationError(
          "cannot load '\(spec)': unknown model file type '.\(url.pathExtension)' (read: .onnx; PyTorch state_dicts .pth/.pt/.bin/.ckpt; .safetensors)"
        )
      }
    }
    throw ValidationError(
      "unknown model '\(spec)': not a zoo name (\(ModelZoo.names.joined(separator: ", "))) and no file at that path")
  }

  /// A state_dict carries weights but no architecture: it is matched to the zoo builder whose
  /// learnable parameter count it has, then loaded by name; anything missing, unexpected or
  /// mis-shaped is an error that lists it.
  static func fromStateDict(_ weights: [String: Tensor], file: String, batch: Int) throws -> Graph {
    let statistics = ["running_mean", "running_var", "num_batches_tracked"]
    let learnable = weights.filter { key, _ in !statistics.contains { key.hasSuffix($0) } }.values.reduce(0) { $0 + $1.count }
    var tried: [String] = []
    for info in ModelZoo.models where info.parameterCount == learnable {
      var g = try ModelZoo.build(info.name, batch: batch, seed: 0)
      let report = StateDict.load(weights, into: &g)
      if report.isComplete {
        g.metadata["weights"] = file
        g.metadata["architecture"] = info.name
        return g
      }
      tried.append("\(info.name): \(report)")
    }
    let sizes = ModelZoo.models.map { "\($0.name) \($0.parameterCount)" }.joined(separator: ", ")
    throw ValidationError(
      """
      cannot load '\(file)': its \(weights.count) tensors (\(learnable) learnable values) are not the \
      state_dict of a zoo architecture (learnable values: \(sizes)).
      \(tried.joined(separator: "\n"))
      Veil reads PyTorch state_dicts of its zoo architectures (torchvision key names); for any \
      other network, export it with torch.onnx.export and pass the .onnx file.
      """)
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
