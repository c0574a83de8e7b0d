/// VeilFormats: model and tensor files in and out of Veil.
///
/// Owns the byte-level formats the rest of Veil exchanges with other tools: a hand-written
/// protobuf encoder and decoder, the ONNX writer (graph IR → ModelProto, unfusing Veil's fused
/// post-ops back into plain ONNX nodes), the ONNX reader (ModelProto → graph IR), and NumPy
/// `.npy` tensors, PyTorch `torch.save` checkpoints (through a whitelisting unpickler that never
/// executes anything), safetensors, and mapping a state_dict onto a graph by name. It may import
/// VeilGraph and VeilTensor only; it must not depend on models, data, privacy, serving or any
/// higher layer, and it never names oneDNN.
import Foundation
import VeilTensor

/// Every error of the formats layer. Each case says which file or node, where in it, and what
/// was wrong, so a user can act without a debugger.
public enum FormatError: Error, CustomStringConvertible, Equatable {
  /// A file could not be read or written.
  case io(path: String, detail: String)
  /// The data ends before a structure is complete: `offset` is where the missing part starts.
  case truncated(format: String, offset: Int, detail: String)
  /// The data holds something the format does not allow, at byte `offset`.
  case malformed(format: String, offset: Int, detail: String)
  /// Valid in the format but not handled here (a dtype, a memory order, a version).
  case unsupported(format: String, detail: String)
  /// A graph node that cannot be written in the target format.
  case unsupportedNode(format: String, node: String, op: String, detail: String)
  /// The graph itself is inconsistent (unknown shapes, cycles), found while exporting.
  case invalidGraph(format: String, detail: String)

  public var description: String {
    switch self {
    case .io(let path, let detail):
      return "\(path): \(detail)"
    case .truncated(let format, let offset, let detail):
      return "\(format): truncated at byte \(offset): \(detail)"
    case .malformed(let format, let offset, let detail):
      return "\(format): malformed at byte \(offset): \(detail)"
    case .unsupported(let format, let detail):
      return "\(format): unsupported: \(detail)"
    case .unsupportedNode(let format, let node, let op, let detail):
      return "\(format): node '\(node)' (\(op)): \(detail)"
    case .invalidGraph(let format, let detail):
      return "\(format): invalid graph: \(detail)"
    }
  }
}

extension FormatError: LocalizedError {
  public var errorDescription: String? { description }
}

/// File I/O shared by the formats, with errors that name the file.
enum FileIO {
  static func read(_ url: URL) throws -> [UInt8] {
    do {
      return [UInt8](try Data(contentsOf: url))
    } catch {
      throw FormatError.io(path: url.path, detail: "cannot read: \(error.localizedDescription)")
    }
  }

  /// Appends a tensor's elements as little-endian IEEE 754 binary32, the element encoding of
  /// every format here (ONNX raw_data, .npy '<f4', safetensors F32).
  static func appendLittleEndian(_ t: Tensor, to out: inout [UInt8]) {
    t.withUnsafeBuffer { buf in
      #if _endian(little)
        out.append(contentsOf: UnsafeRawBufferPointer(buf))
      #else
        for v in buf { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
      #endif
    }
  }

  static func write(_ bytes: [UInt8], to url: URL) throws {
    do {
      // No copy of the (possibly large) buffer: Data borrows it for the write.
      try bytes.withUnsafeBytes { raw in
        guard let base = raw.baseAddress else { return try Data().write(to: url, options: .atomic) }
        let data = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: raw.count, deallocator: .none)
        try data.write(to: url, options: .atomic)
      }
    } catch {
      throw FormatError.io(path: url.path, detail: "cannot write: \(error.localizedDescription)")
    }
  }
}
