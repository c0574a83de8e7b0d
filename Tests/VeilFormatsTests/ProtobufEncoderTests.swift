import VeilFormats
import XCTest

/// Byte sequences from the protocol-buffers encoding guide and hand-worked cases.
final class ProtobufEncoderTests: XCTestCase {
  func encoded(_ body: (inout ProtobufEncoder) -> Void) -> [UInt8] {
    var e = ProtobufEncoder()
    body(&e)
    return e.bytes
  }

  func testVarints() {
    XCTAssertEqual(ProtobufEncoder.varintBytes(0), [0x00])
    XCTAssertEqual(ProtobufEncoder.varintBytes(1), [0x01])
    XCTAssertEqual(ProtobufEncoder.varintBytes(127), [0x7F])
    XCTAssertEqual(ProtobufEncoder.varintBytes(128), [0x80, 0x01])
    XCTAssertEqual(ProtobufEncoder.varintBytes(150), [0x96, 0x01])
    XCTAssertEqual(ProtobufEncoder.varintBytes(300), [0xAC, 0x02])
    XCTAssertEqual(
      ProtobufEncoder.varintBytes(UInt64.max), [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
  }

  func testVarintFields() {
    // The guide's first example: message Test1 { int32 a = 1; } with a = 150.
    XCTAssertEqual(encoded { $0.int64(1, 150) }, [0x08, 0x96, 0x01])
    // Negative int64 (and int32, which protobuf sign-extends) take ten bytes.
    XCTAssertEqual(encoded { $0.int64(1, -1) }, [0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    XCTAssertEqual(encoded { $0.int64(1, -2) }, [0x08, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    XCTAssertEqual(encoded { $0.bool(3, true) }, [0x18, 0x01])
    // Field numbers past 15 need a two-byte tag: field 20 varint = (20 << 3) | 0 = 160.
    XCTAssertEqual(encoded { $0.int64(20, 2) }, [0xA0, 0x01, 0x02])
    // Zigzag: 0 → 0, −1 → 1, 1 → 2, −2 → 3.
    XCTAssertEqual(encoded { $0.sint64(1, -1) }, [0x08, 0x01])
    XCTAssertEqual(encoded { $0.sint64(1, 1) }, [0x08, 0x02])
    XCTAssertEqual(encoded { $0.sint64(1, -2) }, [0x08, 0x03])
  }

  func testLengthDelimited() {
    // message Test2 { string b = 2; } with b = "testing".
    XCTAssertEqual(encoded { $0.string(2, "testing") }, [0x12, 0x07, 0x74, 0x65, 0x73, 0x74, 0x69, 0x6E, 0x67])
    XCTAssertEqual(encoded { $0.string(1, "") }, [0x0A, 0x00])
    XCTAssertEqual(encoded { $0.data(4, [0xDE, 0xAD]) }, [0x22, 0x02, 0xDE, 0xAD])
    // message Test3 { Test1 c = 3; } with c.a = 150.
    XCTAssertEqual(encoded { $0.message(3) { $0.int64(1, 150) } }, [0x1A, 0x03, 0x08, 0x96, 0x01])
    XCTAssertEqual(encoded { $0.message(3) { _ in } }, [0x1A, 0x00])
  }

  func testNestedMessageLengthsPastOneByte() {
    // 200 bytes of content need a two-byte length (0xC8 0x01); the outer message then holds
    // 3 + 200 bytes (0xCB 0x01).
    let payload = [UInt8](repeating: 0x55, count: 200)
    let bytes = encoded { e in
      e.message(1) { inner in inner.message(2) { m in payload.withUnsafeBytes { m.appendRaw($0) } } }
    }
    XCTAssertEqual(Array(bytes.prefix(6)), [0x0A, 0xCB, 0x01, 0x12, 0xC8, 0x01])
    XCTAssertEqual(bytes.count, 6 + 200)
    XCTAssertEqual(Array(bytes.suffix(200)), payload)
  }

  func testFixed32AndFloats() {
    XCTAssertEqual(encoded { $0.float(2, 1.0) }, [0x15, 0x00, 0x00, 0x80, 0x3F])
    XCTAssertEqual(encoded { $0.float(2, -2.5) }, [0x15, 0x00, 0x00, 0x20, 0xC0])
    XCTAssertEqual(encoded { $0.fixed32(1, 0x0102_0304) }, [0x0D, 0x04, 0x03, 0x02, 0x01])
    XCTAssertEqual(encoded { $0.double(1, 1.0) }, [0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F])
  }

  func testPackedRepeated() {
    // The guide's packed example: repeated int32 d = 4 [packed = true] with 3, 270, 86942.
    XCTAssertEqual(encoded { $0.packedInt64(4, [3, 270, 86942]) }, [0x22, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05])
    XCTAssertEqual(
      encoded { $0.packedInt(8, [1, -1]) }, [0x42, 0x0B, 0x01] + [UInt8](repeating: 0xFF, count: 9) + [0x01])
    XCTAssertEqual(
      encoded { $0.packedFloat(7, [1, -2]) }, [0x3A, 0x08, 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0])
    // Empty repeated fields are absent.
    XCTAssertEqual(encoded { $0.packedInt64(4, []) }, [])
    XCTAssertEqual(encoded { $0.packedFloat(4, []) }, [])
  }
}
