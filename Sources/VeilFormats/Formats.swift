/// VeilFormats: model and tensor files in and out of Veil.
///
/// Owns the byte-level formats the rest of Veil exchanges with other tools: a hand-written
/// protobuf encoder and decoder, the ONNX writer (graph IR → ModelProto, unfusing Veil's fused
/// post-ops back into plain ONNX nodes), the ONNX reader (ModelProto → graph IR: the wire
/// schema, the importer, the op table and constant folding, one file each), and NumPy `.npy`
/// tensors, PyTorch `torch.save` checkpoints (through a whitelisting unpickler that never
/// executes anything), safetensors, mapping a state_dict onto a graph by name, the asset cache
/// (registry files fetched by checksum), Veil's JSON files (`VeilJSON`) and the YAML writer of
/// `veil deploy`'s cluster files. It may import
/// VeilGraph and VeilTensor only; it must not depend on models, data, privacy, serving or any
/// higher layer, and it never names oneDNN.
import Foundation
import VeilGraph
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

/// The bounds every reader here applies to what a file declares, before anything is allocated
/// (docs/security.md lists them with the other limits). Data a file really holds is bounded by
/// the file's size; these bound what a few header bytes can ask for.
public enum FormatLimits {
  /// Largest tensor rank a file may declare.
  public static let maxRank = 32
  /// Most elements in one tensor read from a file (8 GiB of float32). The product of the
  /// dimensions with zeros counted as ones is held to it too, so that a tensor of no elements
  /// cannot carry dimensions whose strides overflow later.
  public static let maxElements = Graph.maxTensorElements
  /// Most elements an ONNX import may create from attributes and shape arithmetic, all folded
  /// constants together (ConstantOfShape, Cast, integer Add/Mul/Slice/Transpose/Gather/Concat):
  /// 1 GiB of float32. Architecture-only test models (the onnx package's `light_*.onnx`) build
  /// their weights with ConstantOfShape, VGG-19's 144 M of them from a few kilobytes of file.
  public static let maxFoldedElements = 1 << 28

  /// Why a shape is refused: `detail` completes "shape [..] ...".
  public struct ShapeError: Error, Sendable {
    public let detail: String
  }

  /// The element count of `dims` once rank, signs and sizes are within the limits above.
  public static func elementCount(_ dims: [Int], maxElements limit: Int = maxElements) throws(ShapeError) -> Int {
    guard dims.count <= maxRank else {
      throw ShapeError(detail: "has rank \(dims.count), more than the \(maxRank) Veil reads")
    }
    var count = 1
    var extent = 1
    for d in dims {
      guard d >= 0 else { throw ShapeError(detail: "has the negative dimension \(d)") }
      let (e, overflow) = extent.multipliedReportingOverflow(by: Swift.max(d, 1))
      guard !overflow, e <= limit else {
        throw ShapeError(detail: "has more than \(limit) elements (the most one tensor may hold here)")
      }
      extent = e
      count = count * d
    }
    return count
  }

  /// `elementCount` for dims stored as 64-bit integers (ONNX, pickles).
  public static func elementCount(_ dims: [Int64], maxElements limit: Int = maxElements) throws(ShapeError) -> Int {
    guard dims.count <= maxRank else {
      throw ShapeError(detail: "has rank \(dims.count), more than the \(maxRank) Veil reads")
    }
    var ints: [Int] = []
    ints.reserveCapacity(dims.count)
    for d in dims {
      guard let i = Int(exactly: d) else { throw ShapeError(detail: "has the dimension \(d), out of range") }
      ints.append(i)
    }
    return try elementCount(ints, maxElements: limit)
  }
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
