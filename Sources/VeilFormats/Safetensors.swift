import Foundation
import VeilTensor

/// The safetensors format: an 8-byte little-endian header length, a JSON header mapping each
/// tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the
/// data section) plus an optional `"__metadata__"` string map, then the raw little-endian data.
///
/// Reading takes F32, and converts F16, BF16, F64, I64 and I32 to Float. Offsets are validated:
/// each range must match its dtype and shape, lie in the data section, and together the ranges
/// must cover the data section exactly with no overlap. Writing produces F32, header padded with
/// spaces to a multiple of 8 bytes.
public enum Safetensors {
  public struct File: Sendable {
    /// Tensors in data-offset order.
    public var tensors: [(name: String, tensor: Tensor)]
    public var metadata: [String: String]

    public var dictionary: [String: Tensor] {
      Dictionary(tensors.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
    }
  }

  /// Largest header accepted (the reference implementation's limit).
  public static let maxHeader = 100_000_000

  public static func read(_ url: URL) throws -> [String: Tensor] {
    try readFile(url).dictionary
  }

  public static func readFile(_ url: URL) throws -> File {
    try decode(FileIO.read(url), source: "safetensors file '\(url.path)'")
  }

  public static func write(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:], to url: URL)
    throws
  {
    try FileIO.write(encode(tensors, metadata: metadata), to: url)
  }

  static func jsonString(_ s: String) -> String {
    doubleQuotedLiteral(s, named: ["\n": "n", "\r": "r", "\t": "t"]) {
      $0.value < 0x20 ? String(format: "\\u%04x", $0.value) : nil
    }
  }

  /// F32 file bytes for `tensors`, in the given order.
  public static func encode(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:]) -> [UInt8] {
    var parts: [String] = []
    if !metadata.isEmpty {
      let m = metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }
      parts.append("\"__metadata__\":{" + m.joined(separator: ",") + "}")
    }
    var offset = 0
    for (name, t) in tensors {
      let n = 4 * t.count
      parts.append(
        "\(jsonString(name)):{\"dtype\":\"F32\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + n)]}"
      )
      offset += n
    }
    var header = Array(("{" + parts.joined(separator: ",") + "}").utf8)
    while header.count % 8 != 0 { header.append(0x20) }
    var out = [UInt8]()
    out.reserveCapacity(8 + header.count + offset)
    withUnsafeBytes(of: UInt64(header.count).littleEndian) { out += $0 }
    out += header
    for (_, t) in tensors { FileIO.appendLittleEndian(t, to: &out) }
    return out
  }

  public static func decode(_ bytes: [UInt8]) throws -> File {
    try decode(bytes, source: "safetensors")
  }

  static func decode(_ bytes: [UInt8], source: String) throws -> File {
    func malformed(_ at: Int, _ d: String) -> FormatError { .malformed(format: source, offset: at, detail: d) }
    guard bytes.count >= 8 else {
      throw FormatError.truncated(format: source, offset: bytes.count, detail: "the 8-byte header length")
    }
    var n: UInt64 = 0
    for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
    guard n <= UInt64(maxHeader) else { throw malformed(0, "header length \(n) exceeds \(maxHeader)") }
    guard n <= UInt64(bytes.count - 8) else {
      throw FormatError.truncated(
        format: source, offset: bytes.count, detail: "header of \(n) byte(s), \(bytes.count - 8) left")
    }
    let headerEnd = 8 + Int(n)
    guard n >= 2, bytes[8] == UInt8(ascii: "{") else { throw malformed(8, "header is not a JSON object") }
    let json: Any
    do {
      json = try JSONSerialization.jsonObject(with: Data(bytes[8..<headerEnd]), options: [])
    } catch {
      throw malformed(8, "header is not valid JSON: \(error.localizedDescription)")
    }
    guard let object = json as? [String: Any] else { throw malformed(8, "header is not a JSON object") }
    let dataStart = headerEnd
    let dataSize = bytes.count - dataStart
    var metadata: [String: String] = [:]
    struct Entry {
      var name: String
      var dtype: String
      var shape: [Int]
      var begin: Int
      var end: Int
    }
    var entries: [Entry] = []
    func int(_ v: Any) -> Int? {
      // swift-corelibs bridges JSON numbers loosely: accept an Int, or an integral Double.
      if let i = v as? Int { return i >= 0 ? i : nil }
      if let d = v as? Double, d >= 0, d <= 9.0e15, d == d.rounded() { return Int(d) }
      return nil
    }
    for (name, value) in object {
      if name == "__metadata__" {
        guard let m = value as? [String: Any] else { throw malformed(8, "__metadata__ is not an object") }
        for (k, v) in m {
          guard let s = v as? String else { throw malformed(8, "__metadata__ value for '\(k)' is not a string") }
          metadata[k] = s
        }
        continue
      }
      guard let e = value as? [String: Any], let dtype = e["dtype"] as? String, let shapeA = e["shape"] as? [Any],
        let offs = e["data_offsets"] as? [Any], offs.count == 2
      else { throw malformed(8, "tensor '\(name)' lacks dtype, shape or a [begin, end] data_offsets") }
      var shape: [Int] = []
      guard shapeA.count <= FormatLimits.maxRank else {
        throw malformed(8, "tensor '\(name)' has rank \(shapeA.count), more than the \(FormatLimits.maxRank) Veil reads")
      }
      for s in shapeA {
        guard let d = int(s) else { throw malformed(8, "tensor '\(name)' shape \(shapeA) is not non-negative integers") }
        shape.append(d)
      }
      guard let b = int(offs[0]), let en = int(offs[1]), b <= en else {
        throw malformed(8, "tensor '\(name)' data_offsets are not 0 ≤ begin ≤ end")
      }
      guard en <= dataSize else {
        throw FormatError.truncated(
          format: source, offset: bytes.count,
          detail: "tensor '\(name)' ends at data byte \(en), the data section has \(dataSize)")
      }
      let size: Int
      switch dtype {
      case "F32", "I32": size = 4
      case "F16", "BF16": size = 2
      case "F64", "I64": size = 8
      default: throw FormatError.unsupported(format: source, detail: "tensor '\(name)' dtype \(dtype)")
      }
      let count: Int
      do { count = try FormatLimits.elementCount(shape) } catch {
        throw malformed(8, "tensor '\(name)' shape \(shape.prefix(8))\(shape.count > 8 ? "…" : "") \(error.detail)")
      }
      // At most 2^31 elements of at most 8 bytes: no overflow.
      let bytesNeeded = count * size
      guard bytesNeeded == en - b else {
        throw malformed(8, "tensor '\(name)' \(dtype) \(shape) needs \(count) × \(size) bytes, data_offsets span \(en - b)")
      }
      entries.append(Entry(name: name, dtype: dtype, shape: shape, begin: b, end: en))
    }
    entries.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
    var cursor = 0
    for e in entries {
      guard e.begin >= cursor else {
        throw malformed(dataStart + e.begin, "tensor '\(e.name)' overlaps the previous tensor (starts at \(e.begin), previous ends at \(cursor))")
      }
      guard e.begin == cursor else {
        throw malformed(dataStart + cursor, "data bytes \(cursor)..<\(e.begin) belong to no tensor")
      }
      cursor = e.end
    }
    guard cursor == dataSize else {
      throw malformed(dataStart + cursor, "\(dataSize - cursor) trailing data byte(s) belong to no tensor")
    }
    var out: [(name: String, tensor: Tensor)] = []
    bytes.withUnsafeBytes { raw in
      for e in entries {
        let base = dataStart + e.begin
        let t = Tensor(shape: e.shape) { buf in
          for i in 0..<buf.count {
            switch e.dtype {
            case "F32": buf[i] = Float(bitPattern: raw.loadUnaligned(fromByteOffset: base + 4 * i, as: UInt32.self).littleEndian)
            case "F16": buf[i] = TorchCheckpoint.halfToFloat(raw.loadUnaligned(fromByteOffset: base + 2 * i, as: UInt16.self).littleEndian)
            case "BF16":
              buf[i] = Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: base + 2 * i, as: UInt16.self).littleEndian) << 16)
            case "F64": buf[i] = Float(Double(bitPattern: raw.loadUnaligned(fromByteOffset: base + 8 * i, as: UInt64.self).littleEndian))
            case "I64": buf[i] = Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: base + 8 * i, as: Int64.self)))
            default: buf[i] = Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: base + 4 * i, as: Int32.self)))
            }
          }
        }
        out.append((e.name, t))
      }
    }
    return File(tensors: out, metadata: metadata)
  }
}
