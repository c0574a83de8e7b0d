/// A minimal protocol-buffers wire-format decoder, the counterpart of `ProtobufEncoder`: formats
/// read their messages field by field with the numbers from their `.proto` files.
///
/// The input is untrusted. Every length is checked against the bytes that remain in the
/// enclosing message before anything is sliced or allocated, varints longer than 64 bits are
/// rejected, and each error names the absolute byte offset in the original buffer (nested
/// decoders share it), so a report points at the exact spot in the file. Nested messages are
/// views, never copies, and at most `maxDepth` deep, so a parser that follows a recursive
/// message (ONNX subgraphs) cannot be driven into unbounded recursion by a file. Repeated and
/// packed fields grow by at most 8 bytes of decoded value per byte of input.
public struct ProtobufDecoder: Sendable {
  /// The deepest nesting of embedded messages a decoder accepts.
  public static let maxDepth = 64

  public typealias WireType = ProtobufEncoder.WireType

  /// The whole buffer; nested messages view a range of it without copying.
  public let bytes: [UInt8]
  /// Absolute offset of the next byte to read.
  public private(set) var position: Int
  /// Absolute offset one past the current message.
  public let end: Int
  /// Named in errors ("ONNX").
  public let format: String
  /// How many embedded messages enclose this one (0 for the outermost).
  public let depth: Int

  public init(_ bytes: [UInt8], format: String = "protobuf") {
    self.init(bytes, range: 0..<bytes.count, format: format)
  }

  public init(_ bytes: [UInt8], range: Range<Int>, format: String = "protobuf", depth: Int = 0) {
    precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count, "range outside the buffer")
    self.bytes = bytes
    self.position = range.lowerBound
    self.end = range.upperBound
    self.format = format
    self.depth = depth
  }

  public var isAtEnd: Bool { position >= end }

  func truncated(_ at: Int, _ detail: String) -> FormatError {
    .truncated(format: format, offset: at, detail: detail)
  }

  func malformed(_ at: Int, _ detail: String) -> FormatError {
    .malformed(format: format, offset: at, detail: detail)
  }

  // MARK: Primitives

  /// Base-128 varint of at most ten bytes whose value fits in 64 bits.
  public mutating func readVarint() throws -> UInt64 {
    let start = position
    var result: UInt64 = 0
    var shift: UInt64 = 0
    while true {
      guard position < end else { throw truncated(start, "varint runs past the end of its message (byte \(end))") }
      let b = bytes[position]
      position += 1
      // The tenth byte may carry only the 64th bit.
      if shift == 63, b > 1 { throw malformed(start, "varint overflows 64 bits") }
      result |= UInt64(b & 0x7f) << shift
      if b < 0x80 { return result }
      shift += 7
    }
  }

  public mutating func readFixed32() throws -> UInt32 { try readLittleEndian() }

  public mutating func readFixed64() throws -> UInt64 { try readLittleEndian() }

  /// A fixed-width field: `T`'s bytes, least significant first.
  private mutating func readLittleEndian<T: FixedWidthInteger & UnsignedInteger>() throws -> T {
    let size = T.bitWidth / 8
    guard end - position >= size else {
      throw truncated(position, "fixed\(T.bitWidth) needs \(size) bytes, \(end - position) remain")
    }
    var v: T = 0
    for i in 0..<size { v |= T(bytes[position + i]) << (8 * i) }
    position += size
    return v
  }

  /// The absolute byte range of a length-delimited payload, checked against the message.
  public mutating func readLengthDelimited() throws -> Range<Int> {
    let start = position
    let length = try readVarint()
    let remaining = end - position
    guard length <= UInt64(remaining) else {
      throw truncated(start, "length \(length) runs past the end of its message (\(remaining) bytes remain)")
    }
    let r = position..<(position + Int(length))
    position = r.upperBound
    return r
  }

  /// The next tag, or nil at the end of the message. Groups (3, 4) and the undefined wire
  /// types (6, 7) are rejected: no format read here uses them.
  public mutating func nextField() throws -> (number: Int, wireType: WireType)? {
    guard position < end else { return nil }
    let start = position
    let tag = try readVarint()
    let number = tag >> 3
    guard number >= 1, number < (1 << 29) else { throw malformed(start, "field number \(number) is out of range") }
    guard let wt = WireType(rawValue: UInt8(tag & 7)) else {
      throw malformed(start, "wire type \(tag & 7) (field \(number)) is not supported")
    }
    return (Int(number), wt)
  }

  /// Steps over a field's value (an unknown field).
  public mutating func skip(_ wireType: WireType) throws {
    switch wireType {
    case .varint: _ = try readVarint()
    case .fixed32: _ = try readFixed32()
    case .fixed64: _ = try readFixed64()
    case .lengthDelimited: _ = try readLengthDelimited()
    }
  }

  func expect(_ wireType: WireType, got: WireType, field: Int, at: Int) throws {
    guard wireType == got else {
      throw malformed(at, "field \(field) has wire type \(got.rawValue), expected \(wireType.rawValue)")
    }
  }

  // MARK: Field values

  /// int32/int64/uint64/enum/bool (a varint reinterpreted as two's complement).
  public mutating func readInt64(field: Int, _ wireType: WireType) throws -> Int64 {
    try expect(.varint, got: wireType, field: field, at: position)
    return Int64(bitPattern: try readVarint())
  }

  public mutating func readFloat(field: Int, _ wireType: WireType) throws -> Float {
    try expect(.fixed32, got: wireType, field: field, at: position)
    return Float(bitPattern: try readFixed32())
  }

  public mutating func readBytes(field: Int, _ wireType: WireType) throws -> Range<Int> {
    try expect(.lengthDelimited, got: wireType, field: field, at: position)
    return try readLengthDelimited()
  }

  public mutating func readString(field: Int, _ wireType: WireType) throws -> String {
    let r = try readBytes(field: field, wireType)
    return String(decoding: bytes[r], as: UTF8.self)
  }

  /// A decoder over an embedded message.
  public mutating func readMessage(field: Int, _ wireType: WireType) throws -> ProtobufDecoder {
    let start = position
    let r = try readBytes(field: field, wireType)
    guard depth < Self.maxDepth else {
      throw malformed(start, "field \(field): messages nested more than \(Self.maxDepth) deep")
    }
    return ProtobufDecoder(bytes, range: r, format: format, depth: depth + 1)
  }

  /// One element of a repeated varint field, or all of a packed run.
  public mutating func readRepeatedInt64(field: Int, _ wireType: WireType, into out: inout [Int64]) throws {
    switch wireType {
    case .varint:
      out.append(Int64(bitPattern: try readVarint()))
    case .lengthDelimited:
      var sub = try readMessage(field: field, wireType)
      while !sub.isAtEnd { out.append(Int64(bitPattern: try sub.readVarint())) }
    default:
      throw malformed(position, "repeated integer field \(field) has wire type \(wireType.rawValue)")
    }
  }

  /// One element of a repeated float field, or all of a packed run.
  public mutating func readRepeatedFloat(field: Int, _ wireType: WireType, into out: inout [Float]) throws {
    try readRepeatedFixed(field: field, wireType, "float", .fixed32, size: 4, into: &out) {
      Float(bitPattern: try $0.readFixed32())
    }
  }

  /// One element of a repeated double field, or all of a packed run.
  public mutating func readRepeatedDouble(field: Int, _ wireType: WireType, into out: inout [Double]) throws {
    try readRepeatedFixed(field: field, wireType, "double", .fixed64, size: 8, into: &out) {
      Double(bitPattern: try $0.readFixed64())
    }
  }

  /// One element of a repeated field of `size`-byte elements (wire type `fixed`), or all of a
  /// packed run, whose length must then be a multiple of `size`.
  private mutating func readRepeatedFixed<Element>(
    field: Int, _ wireType: WireType, _ kind: String, _ fixed: WireType, size: Int, into out: inout [Element],
    _ read: (inout ProtobufDecoder) throws -> Element
  ) throws {
    switch wireType {
    case fixed:
      out.append(try read(&self))
    case .lengthDelimited:
      var sub = try readMessage(field: field, wireType)
      guard (sub.end - sub.position) % size == 0 else {
        throw malformed(
          sub.position, "packed \(kind) field \(field) has \(sub.end - sub.position) bytes, not a multiple of \(size)")
      }
      out.reserveCapacity(out.count + (sub.end - sub.position) / size)
      while !sub.isAtEnd { out.append(try read(&sub)) }
    default:
      throw malformed(position, "repeated \(kind) field \(field) has wire type \(wireType.rawValue)")
    }
  }
}
