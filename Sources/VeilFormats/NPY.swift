import Foundation
import VeilTensor

/// NumPy's `.npy` format (versions 1.0, 2.0 and 3.0), to and from `Tensor`.
///
/// Written files are version 1.0 (2.0 when the header outgrows 64 KiB), dtype `'<f4'`,
/// C order, header padded to a multiple of 64 bytes as NumPy does. Reading takes `'<f4'`, and
/// converts `'<f8'` and `'<i8'` to Float (what reference scripts produce when they forget a
/// cast); any other dtype, Fortran order, or a malformed header is an error that names the
/// byte offset.
public enum NPY {
  static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // "\x93NUMPY"

  public static func read(_ url: URL) throws -> Tensor {
    try decode(FileIO.read(url), source: "npy file '\(url.path)'")
  }

  public static func write(_ t: Tensor, to url: URL) throws {
    try FileIO.write(encode(t), to: url)
  }

  public static func encode(_ t: Tensor) -> [UInt8] {
    let shape: String
    switch t.shape.count {
    case 0: shape = "()"
    case 1: shape = "(\(t.shape[0]),)"
    default: shape = "(" + t.shape.map(String.init).joined(separator: ", ") + ")"
    }
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shape), }"
    // Version 1.0 stores the header length in 2 bytes, 2.0 in 4.
    var version: UInt8 = 1
    var prefix = magic.count + 2 + 2
    var padded = (prefix + dict.utf8.count + 1 + 63) / 64 * 64 - prefix
    if padded > Int(UInt16.max) {
      version = 2
      prefix = magic.count + 2 + 4
      padded = (prefix + dict.utf8.count + 1 + 63) / 64 * 64 - prefix
    }
    var out = [UInt8]()
    out.reserveCapacity(prefix + padded + 4 * t.count)
    out += magic
    out += [version, 0]
    if version == 1 {
      withUnsafeBytes(of: UInt16(padded).littleEndian) { out += $0 }
    } else {
      withUnsafeBytes(of: UInt32(padded).littleEndian) { out += $0 }
    }
    out += Array(dict.utf8)
    out += [UInt8](repeating: 0x20, count: padded - dict.utf8.count - 1)
    out.append(0x0A)
    FileIO.appendLittleEndian(t, to: &out)
    return out
  }

  public static func decode(_ bytes: [UInt8]) throws -> Tensor {
    try decode(bytes, source: "npy")
  }

  static func decode(_ bytes: [UInt8], source: String) throws -> Tensor {
    func truncated(_ offset: Int, _ detail: String) -> FormatError {
      .truncated(format: source, offset: offset, detail: detail)
    }
    func malformed(_ offset: Int, _ detail: String) -> FormatError {
      .malformed(format: source, offset: offset, detail: detail)
    }
    guard bytes.count >= 8 else {
      throw truncated(
        bytes.count, "the 8-byte magic and version need \(8 - bytes.count) more byte(s); the file has \(bytes.count)")
    }
    guard Array(bytes[0..<6]) == magic else {
      throw malformed(0, "missing the magic string \\x93NUMPY (found \(hex(bytes[0..<6]))); not a .npy file")
    }
    let major = bytes[6]
    let minor = bytes[7]
    let lengthBytes: Int
    switch (major, minor) {
    case (1, 0): lengthBytes = 2
    case (2, 0), (3, 0): lengthBytes = 4
    default: throw malformed(6, "format version \(major).\(minor) is not 1.0, 2.0 or 3.0")
    }
    let headerStart = 8 + lengthBytes
    guard bytes.count >= headerStart else {
      throw truncated(bytes.count, "the \(lengthBytes)-byte header length of version \(major).\(minor) is cut off")
    }
    var headerLength = 0
    for i in 0..<lengthBytes { headerLength |= Int(bytes[8 + i]) << (8 * i) }
    let dataStart = headerStart + headerLength
    guard bytes.count >= dataStart else {
      throw truncated(
        bytes.count,
        "the header declares \(headerLength) bytes from byte \(headerStart), "
          + "the file ends \(dataStart - bytes.count) byte(s) short")
    }
    var parser = HeaderParser(bytes: bytes, range: headerStart..<dataStart, source: source)
    let header = try parser.parse()

    let itemSize: Int
    switch header.descr {
    case "<f4": itemSize = 4
    case "<f8", "<i8": itemSize = 8
    default:
      throw FormatError.unsupported(
        format: source,
        detail: "dtype '\(header.descr)': Veil reads '<f4' (little-endian float32) and converts '<f8' and '<i8'; "
          + "save with arr.astype('<f4')")
    }
    if header.fortranOrder {
      throw FormatError.unsupported(
        format: source, detail: "fortran_order True (column-major data); save with np.ascontiguousarray(arr)")
    }
    let count: Int
    do { count = try FormatLimits.elementCount(header.shape) } catch {
      throw malformed(headerStart, "shape \(header.shape.prefix(8))\(header.shape.count > 8 ? "…" : "") \(error.detail)")
    }
    // At most 2^31 elements of at most 8 bytes: no overflow.
    let needed = count * itemSize
    let available = bytes.count - dataStart
    guard available >= needed else {
      throw truncated(
        bytes.count,
        "shape \(header.shape) of '\(header.descr)' needs \(needed) data bytes from byte \(dataStart), "
          + "the file has \(available)")
    }
    guard available == needed else {
      throw malformed(
        dataStart + needed, "\(available - needed) byte(s) after the \(needed) data bytes of shape \(header.shape)")
    }
    return bytes.withUnsafeBytes { raw in
      let data = UnsafeRawBufferPointer(rebasing: raw[dataStart..<(dataStart + needed)])
      return Tensor(shape: header.shape) { out in
        switch header.descr {
        case "<f4":
          #if _endian(little)
            if count > 0 { UnsafeMutableRawBufferPointer(out).copyMemory(from: data) }
          #else
            for i in 0..<count {
              out[i] = Float(
                bitPattern: UInt32(littleEndian: data.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            }
          #endif
        case "<f8":
          for i in 0..<count {
            out[i] = Float(
              Double(bitPattern: UInt64(littleEndian: data.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
          }
        default:  // "<i8"
          for i in 0..<count {
            out[i] = Float(Int64(littleEndian: data.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
          }
        }
      }
    }
  }

  static func hex(_ b: ArraySlice<UInt8>) -> String {
    b.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(
      separator: " ")
  }
}

/// The header dictionary NumPy writes with `repr`, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`. Only the literals that can
/// appear there are understood: quoted strings, True/False and tuples of integers.
struct HeaderParser {
  struct Header {
    var descr: String
    var fortranOrder: Bool
    var shape: [Int]
  }

  enum Value {
    case string(String)
    case bool(Bool)
    case tuple([Int])
  }

  let bytes: [UInt8]
  let end: Int
  let source: String
  var pos: Int

  init(bytes: [UInt8], range: Range<Int>, source: String) {
    self.bytes = bytes
    self.end = range.upperBound
    self.source = source
    self.pos = range.lowerBound
  }

  func malformed(_ detail: String, at offset: Int? = nil) -> FormatError {
    .malformed(format: source, offset: offset ?? pos, detail: "header: " + detail)
  }

  var current: String {
    guard pos < end else { return "the end of the header" }
    let c = bytes[pos]
    return (0x20..<0x7F).contains(c) ? "'\(Character(Unicode.Scalar(c)))'" : "byte 0x\(String(c, radix: 16))"
  }

  mutating func skipSpace() {
    while pos < end, bytes[pos] == 0x20 || bytes[pos] == 0x0A || bytes[pos] == 0x09 || bytes[pos] == 0x0D { pos += 1 }
  }

  mutating func expect(_ c: UInt8, _ what: String) throws {
    skipSpace()
    guard pos < end, bytes[pos] == c else { throw malformed("expected \(what), found \(current)") }
    pos += 1
  }

  mutating func peek(_ c: UInt8) -> Bool {
    skipSpace()
    return pos < end && bytes[pos] == c
  }

  mutating func parse() throws -> Header {
    let dictStart = pos
    try expect(UInt8(ascii: "{"), "'{' opening the header dictionary")
    var entries: [String: (Value, Int)] = [:]
    var keyOffsets: [String: Int] = [:]
    while !peek(UInt8(ascii: "}")) {
      let keyAt = pos
      guard case .string(let key) = try value() else {
        throw malformed("dictionary keys must be quoted strings", at: keyAt)
      }
      guard entries[key] == nil else { throw malformed("key '\(key)' appears twice", at: keyAt) }
      keyOffsets[key] = keyAt
      try expect(UInt8(ascii: ":"), "':' after key '\(key)'")
      skipSpace()
      let valueAt = pos
      entries[key] = (try value(), valueAt)
      if !peek(UInt8(ascii: "}")) { try expect(UInt8(ascii: ","), "',' or '}' after the value of '\(key)'") }
    }
    pos += 1
    skipSpace()
    guard pos == end else { throw malformed("unexpected \(current) after the dictionary") }
    let unknown = keyOffsets.filter { !["descr", "fortran_order", "shape"].contains($0.key) }
    if let (key, at) = unknown.min(by: { $0.value < $1.value }) {
      throw malformed("unknown key '\(key)'", at: at)
    }
    guard let (d, dAt) = entries["descr"] else { throw malformed("missing key 'descr'", at: dictStart) }
    guard case .string(let descr) = d else { throw malformed("'descr' must be a dtype string such as '<f4'", at: dAt) }
    guard let (f, fAt) = entries["fortran_order"] else { throw malformed("missing key 'fortran_order'", at: dictStart) }
    guard case .bool(let fortran) = f else { throw malformed("'fortran_order' must be True or False", at: fAt) }
    guard let (s, sAt) = entries["shape"] else { throw malformed("missing key 'shape'", at: dictStart) }
    guard case .tuple(let shape) = s else { throw malformed("'shape' must be a tuple of integers", at: sAt) }
    return Header(descr: descr, fortranOrder: fortran, shape: shape)
  }

  mutating func value() throws -> Value {
    skipSpace()
    guard pos < end else { throw malformed("expected a value, found the end of the header") }
    let c = bytes[pos]
    if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") {
      let start = pos
      pos += 1
      let from = pos
      while pos < end, bytes[pos] != c {
        guard bytes[pos] != UInt8(ascii: "\\") else { throw malformed("escapes in strings are not supported") }
        pos += 1
      }
      guard pos < end else { throw malformed("unterminated string", at: start) }
      let s = String(decoding: bytes[from..<pos], as: UTF8.self)
      pos += 1
      return .string(s)
    }
    if c == UInt8(ascii: "(") {
      pos += 1
      var dims: [Int] = []
      while !peek(UInt8(ascii: ")")) {
        dims.append(try integer())
        if !peek(UInt8(ascii: ")")) { try expect(UInt8(ascii: ","), "',' or ')' in the shape tuple") }
      }
      pos += 1
      return .tuple(dims)
    }
    if c == UInt8(ascii: "[") {
      throw malformed("structured dtypes (a list of fields) are not supported; Veil reads plain '<f4' arrays")
    }
    for (word, b) in [("True", true), ("False", false)] where matches(word) {
      pos += word.utf8.count
      return .bool(b)
    }
    throw malformed("expected a string, True/False or a tuple, found \(current)")
  }

  func matches(_ word: String) -> Bool {
    let w = Array(word.utf8)
    return pos + w.count <= end && Array(bytes[pos..<(pos + w.count)]) == w
  }

  mutating func integer() throws -> Int {
    skipSpace()
    let start = pos
    var v = 0
    while pos < end, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[pos]) {
      let (m, o1) = v.multipliedReportingOverflow(by: 10)
      let (a, o2) = m.addingReportingOverflow(Int(bytes[pos] - UInt8(ascii: "0")))
      guard !o1, !o2 else { throw malformed("dimension too large", at: start) }
      v = a
      pos += 1
    }
    guard pos > start else { throw malformed("expected a non-negative integer dimension, found \(current)") }
    if pos < end, bytes[pos] == UInt8(ascii: "L") { pos += 1 }  // Python 2's long suffix
    return v
  }
}
