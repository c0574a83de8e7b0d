import Foundation
import VeilFormats
import VeilGraph
import VeilTensor

/// Why a model could not be loaded.
public enum ModelLoadError: Error, CustomStringConvertible, Equatable {
  /// Neither a zoo name nor an existing file.
  case unknown(spec: String, zoo: [String])
  /// A file of a type Veil does not read.
  case fileType(path: String, ext: String)
  /// A state_dict that is no zoo architecture's.
  case notAZooStateDict(path: String, detail: String)
  /// A file whose inputs fix their batch, and whose graph does not re-infer at the one asked for.
  case fixedBatch(path: String, input: String, shape: [Int], batch: Int, detail: String)

  public var description: String {
    switch self {
    case .unknown(let spec, let zoo):
      return "unknown model '\(spec)': not a zoo name (\(zoo.joined(separator: ", "))) and no file at that path"
    case .fileType(let path, let ext):
      return "cannot load '\(path)': unknown model file type '.\(ext)' (read: .onnx; PyTorch state_dicts .pth/.pt/.bin/.ckpt; .safetensors)"
    case .notAZooStateDict(let path, let detail):
      return "cannot load '\(path)': \(detail)"
    case .fixedBatch(let path, let input, let shape, let batch, let detail):
      return "cannot run '\(path)' at batch \(batch): its input '\(input)' fixes the batch (\(shape)) and the graph "
        + "computes with that batch (\(detail)). Run it at batch \(shape.first ?? 1), or export it with a symbolic "
        + "batch (PyTorch: dynamic_axes={'input': {0: 'batch'}}, or dynamic_shapes with torch.export)"
    }
  }
}

/// Resolves a model the way every command names it: a zoo name builds the architecture with
/// seeded weights; a path loads an ONNX file, or a PyTorch state_dict / safetensors file of a
/// zoo architecture (recognised from its weights). The one model loader of the library: the
/// command-line tool, the planner and the privacy measures' reference classifier use it. (It
/// is the one part of VeilModels that reads files, through VeilFormats.)
public enum ModelLoader {
  public static func load(_ spec: String, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    if ModelZoo.names.contains(spec) {
      return try ModelZoo.build(spec, batch: batch, seed: seed)
    }
    let url = URL(fileURLWithPath: spec)
    guard FileManager.default.fileExists(atPath: url.path) else { throw ModelLoadError.unknown(spec: spec, zoo: ModelZoo.names) }
    switch url.pathExtension.lowercased() {
    case "onnx":
      // A symbolic batch is fixed at import, where every reshape folds at it; a file that
      // fixes its batch is re-inferred at the one asked for.
      var g = try ONNXReader.read(url, batch: batch)
      if let fixed = g.inputs.first(where: { g.shape($0)?.first != batch }) {
        do { g = try g.withBatch(batch) } catch {
          throw ModelLoadError.fixedBatch(
            path: spec, input: g[fixed].name, shape: g.shape(fixed) ?? [], batch: batch, detail: "\(error)")
        }
      }
      return g
    case "pth", "pt", "bin", "ckpt":
      return try fromStateDict(TorchCheckpoint.read(url), file: spec, batch: batch)
    case "safetensors":
      return try fromStateDict(Safetensors.read(url), file: spec, batch: batch)
    default:
      throw ModelLoadError.fileType(path: spec, ext: url.pathExtension)
    }
  }

  /// A state_dict carries weights but no architecture: it is matched to the zoo builder whose
  /// learnable parameter count it has, then loaded by name; anything missing, unexpected or
  /// mis-shaped is an error that lists it.
  public static func fromStateDict(_ weights: [String: Tensor], file: String, batch: Int = 1) throws -> Graph {
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
    throw ModelLoadError.notAZooStateDict(
      path: file,
      detail: """
        its \(weights.count) tensors (\(learnable) learnable values) are not the state_dict of a zoo architecture \
        (learnable values: \(sizes)).
        \(tried.joined(separator: "\n"))
        Veil reads PyTorch state_dicts of its zoo architectures (torchvision key names); for any other network, export \
        it with torch.onnx.export and pass the .onnx file.
        """)
  }

  /// Fails early, before any other work, when `spec` is neither a zoo name nor a file.
  public static func check(_ spec: String) throws {
    guard ModelZoo.names.contains(spec) || FileManager.default.fileExists(atPath: spec) else {
      throw ModelLoadError.unknown(spec: spec, zoo: ModelZoo.names)
    }
  }

  /// The graph's input shape.
  public static func inputShape(_ g: Graph) -> [Int] {
    g.inputs.first.flatMap { g.shape($0) } ?? []
  }
}
