import Foundation
import VeilGraph
import VeilTensor

/// Reads an ONNX ModelProto (default-domain opsets 7–21) into a `Graph`.
///
/// The file is untrusted: every length, tensor size and external-data range is checked before
/// anything is allocated, and every error names the byte offset or the node at fault. Constant
/// integer tensors (Reshape's shape, Pad's pads, Resize's sizes) become op attributes rather than
/// initializers, and the Shape → Gather → Unsqueeze → Concat chains exporters leave in front of
/// a Reshape are folded from the known input shapes. Graph inputs that are also initializers are
/// weights, not runtime inputs; a symbolic or absent batch dimension reads as 1.
public enum ONNXReader {
  public static let supportedOpsets: ClosedRange<Int> = 7...21
  static let format = "ONNX"

  public static func read(_ url: URL) throws -> Graph {
    try parse(FileIO.read(url), baseDirectory: url.deletingLastPathComponent())
  }

  public static func parse(_ bytes: [UInt8], baseDirectory: URL? = nil) throws -> Graph {
    let model = try ONNXProto.Model(ProtobufDecoder(bytes, format: format))
    var importer = ONNXImporter(model: model, bytes: bytes, baseDirectory: baseDirectory)
    return try importer.run()
  }
}
