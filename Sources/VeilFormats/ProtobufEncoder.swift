/// A minimal protocol-buffers wire-format encoder, written by hand so that the formats layer
/// needs no code generator: ONNX (and later other protobuf formats) are written field by field
/// with the numbers from their `.proto` files.
///
/// Nested messages are written in place: `message(_:_:)` leaves room for nothing, lets the body
/// append the content, then inserts the length prefix before it. That costs one move of the
/// content per nesting level but never a second copy of a large payload (weights), which
/// matters for models of hundreds of megabytes.
public struct ProtobufEncoder: Sendable {
  /// How a field's value is laid out on the wire (the low three bits of a tag).
  public enum WireType: UInt8, Sendable {
    case varint = 0
    case fixed64 = 1
    case lengthDelimited = 2
    case fixed32 = 5
  }

  public private(set) var bytes: [UInt8] = []

  public init(reservingCapacity capacity: Int = 0) {
    bytes.reserveCapacity(capacity)
  }

  // MARK: Primitives

  /// Base-128 varint, least significant group first.
  public mutating func appendVarint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  public static func varintBytes(_ value: UInt64) -> [UInt8] {
    var e = ProtobufEncoder()
    e.appendVarint(value)
    return e.bytes
  }

  public mutating func appendTag(_ field: Int, _ wireType: WireType) {
    precondition(field >= 1 && field < (1 << 29), "protobuf field number \(field) out of range")
    appendVarint(UInt64(field) << 3 | UInt64(wireType.rawValue))
  }

  public mutating func appendFixed32(_ value: UInt32) {
    let le = value.littleEndian
    withUnsafeBytes(of: le) { bytes.append(contentsOf: $0) }
  }

  public mutating func appendFixed64(_ value: UInt64) {
    let le = value.littleEndian
    withUnsafeBytes(of: le) { bytes.append(contentsOf: $0) }
  }

  /// Appends raw bytes with no tag or length (the payload of a length-delimited field).
  public mutating func appendRaw(_ raw: UnsafeRawBufferPointer) {
    bytes.append(contentsOf: raw)
  }

  /// Appends floats as little-endian IEEE 754 binary32 with no tag or length.
  public mutating func appendRawFloats(_ values: UnsafeBufferPointer<Float>) {
    #if _endian(little)
      bytes.append(contentsOf: UnsafeRawBufferPointer(values))
    #else
      for v in values { appendFixed32(v.bitPattern) }
    #endif
  }

  // MARK: Fields

  /// int32, int64, uint32, uint64, bool and enum fields. Negative numbers take ten bytes, as
  /// protobuf sign-extends int32 to 64 bits.
  public mutating func int64(_ field: Int, _ value: Int64) {
    appendTag(field, .varint)
    appendVarint(UInt64(bitPattern: value))
  }

  public mutating func int(_ field: Int, _ value: Int) { int64(field, Int64(value)) }

  public mutating func bool(_ field: Int, _ value: Bool) { int64(field, value ? 1 : 0) }

  public mutating func uint64(_ field: Int, _ value: UInt64) {
    appendTag(field, .varint)
    appendVarint(value)
  }

  /// sint32/sint64 (zigzag) fields.
  public mutating func sint64(_ field: Int, _ value: Int64) {
    appendTag(field, .varint)
    appendVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
  }

  public mutating func float(_ field: Int, _ value: Float) {
    appendTag(field, .fixed32)
    appendFixed32(value.bitPattern)
  }

  public mutating func double(_ field: Int, _ value: Double) {
    appendTag(field, .fixed64)
    appendFixed64(value.bitPattern)
  }

  public mutating func fixed32(_ field: Int, _ value: UInt32) {
    appendTag(field, .fixed32)
    appendFixed32(value)
  }

  public mutating func string(_ field: Int, _ value: String) {
    data(field, Array(value.utf8))
  }

  /// A `bytes` field.
  public mutating func data(_ field: Int, _ value: [UInt8]) {
    appendTag(field, .lengthDelimited)
    appendVarint(UInt64(value.count))
    bytes.append(contentsOf: value)
  }

  /// A length-delimited field whose content `body` appends (an embedded message, or raw data
  /// written without an intermediate array).
  public mutating func message(_ field: Int, _ body: (inout ProtobufEncoder) throws -> Void) rethrows {
    appendTag(field, .lengthDelimited)
    let start = bytes.count
    try body(&self)
    let length = ProtobufEncoder.varintBytes(UInt64(bytes.count - start))
    bytes.insert(contentsOf: length, at: start)
  }

  /// A packed repeated varint field (int32/int64/uint64/bool/enum). Nothing is written for an
  /// empty list, as protobuf does.
  public mutating func packedInt64(_ field: Int, _ values: [Int64]) {
    guard !values.isEmpty else { return }
    message(field) { e in
      for v in values { e.appendVarint(UInt64(bitPattern: v)) }
    }
  }

  public mutating func packedInt(_ field: Int, _ values: [Int]) {
    packedInt64(field, values.map { Int64($0) })
  }

  /// A packed repeated float field (fixed32 each).
  public mutating func packedFloat(_ field: Int, _ values: [Float]) {
    guard !values.isEmpty else { return }
    appendTag(field, .lengthDelimited)
    appendVarint(UInt64(values.count * 4))
    values.withUnsafeBufferPointer { appendRawFloats($0) }
  }
}
