import Foundation
import VeilGraph
import VeilTensor

/// Reads an ONNX ModelProto (default-domain opsets 7–21) into a `Graph`.
///
/// The file is untrusted: every length, tensor size and external-data range is checked before
/// anything is allocated, and every error names the byte offset or the node at fault. Constant
/// integer tensors (Reshape's shape, Pad's pads, Resize's sizes) become op attributes rather than
/// initializers, and the Shape → Gather → Unsqueeze → Concat chains exporters leave in front of
/// a Reshape are folded from the known input shapes. Slice of a runtime tensor is the graph's
/// Slice op, and Split one Slice per output. Graph inputs that are also initializers are
/// weights, not runtime inputs; a symbolic or absent batch dimension reads as `batch` (1 unless
/// asked).
public enum ONNXReader {
  public static let supportedOpsets: ClosedRange<Int> = 7...21
  static let format = "ONNX"

  /// - Parameter batch: what a symbolic batch dimension reads as. Importing at the batch a
  ///   caller runs is exact for every graph; `Graph.withBatch` afterwards re-infers shapes and
  ///   fails where an exporter folded the batch into another dimension (attention heads).
  public static func read(_ url: URL, batch: Int = 1) throws -> Graph {
    try parse(FileIO.read(url), baseDirectory: url.deletingLastPathComponent(), batch: batch)
  }

  public static func parse(_ bytes: [UInt8], baseDirectory: URL? = nil, batch: Int = 1) throws -> Graph {
    guard (1...65536).contains(batch) else {
      throw FormatError.unsupported(format: format, detail: "batch \(batch) is out of range (1 to 65536)")
    }
    let model = try ONNXProto.Model(ProtobufDecoder(bytes, format: format))
    var importer = ONNXImporter(model: model, bytes: bytes, baseDirectory: baseDirectory)
    importer.batchSize = batch
    return try importer.run()
  }

  /// Everything that stands between `url` and a Veil graph, found in one pass: each input with a
  /// dimension Veil cannot fix, each node whose op or attributes it does not take (the import
  /// goes on past them), with the op counts. A file that is not ONNX at all still throws.
  public static func survey(_ url: URL) throws -> ONNXSurvey {
    try survey(FileIO.read(url), baseDirectory: url.deletingLastPathComponent())
  }

  public static func survey(_ bytes: [UInt8], baseDirectory: URL? = nil) throws -> ONNXSurvey {
    let model = try ONNXProto.Model(ProtobufDecoder(bytes, format: format))
    var importer = ONNXImporter(model: model, bytes: bytes, baseDirectory: baseDirectory)
    importer.surveying = true
    _ = try importer.run()
    let nodes = model.graph?.nodes ?? []
    let opset = model.opsets.filter { $0.domain == "" || $0.domain == "ai.onnx" }.map(\.version).max()
    return ONNXSurvey(
      opset: opset.map { Int(clamping: $0) }, nodes: nodes.count,
      opCounts: nodes.reduce(into: [:]) { $0[$1.domain.isEmpty ? $1.opType : "\($1.domain).\($1.opType)", default: 0] += 1 },
      problems: importer.problems, uncheckedNodes: importer.uncheckedNodes)
  }
}

/// What `ONNXReader.survey` found in a model.
public struct ONNXSurvey: Sendable, Codable, Equatable {
  public struct Problem: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable { case model, input, node }
    public var kind: Kind
    /// The input's name, the node's name (or its first output), or "opset".
    public var name: String
    public var op: String?
    public var detail: String
  }
  public var opset: Int?
  public var nodes: Int
  public var opCounts: [String: Int]
  public var problems: [Problem]
  /// Nodes after a failed one that failed for want of its output: not judged.
  public var uncheckedNodes: Int
  /// The distinct ops among the problem nodes, sorted.
  public var unsupportedOps: [String] { Array(Set(problems.compactMap(\.op))).sorted() }
  public var importable: Bool { problems.isEmpty && uncheckedNodes == 0 }
}
