import Foundation
import VeilTensor
import XCTest

import VeilFormats

final class SafetensorsTests: XCTestCase {
  /// A file with the given JSON header (unpadded) and data bytes.
  func file(_ header: String, _ data: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out += $0 }
    return out + Array(header.utf8) + data
  }

  func testRoundTrip() throws {
    let a = try Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, -6.5])
    let b = try Tensor(shape: [1], values: [42])
    let s = Tensor(zeros: [])
    let bytes = Safetensors.encode([("conv.weight", a), ("conv.bias", b), ("scalar \"q\"", s)], metadata: ["format": "pt"])
    let headerLen = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    XCTAssertEqual(headerLen % 8, 0)
    let f = try Safetensors.decode(bytes)
    XCTAssertEqual(f.tensors.map(\.name), ["conv.weight", "conv.bias", "scalar \"q\""])
    XCTAssertEqual(f.tensors[0].tensor.shape, [2, 3])
    XCTAssertEqual(f.tensors[0].tensor.scalars, a.scalars)
    XCTAssertEqual(f.tensors[1].tensor.scalars, [42])
    XCTAssertEqual(f.tensors[2].tensor.shape, [])
    XCTAssertEqual(f.metadata, ["format": "pt"])

    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-\(UUID().uuidString).safetensors")
    defer { try? FileManager.default.removeItem(at: url) }
    try Safetensors.write([("x", a)], to: url)
    XCTAssertEqual(try Safetensors.read(url)["x"]?.scalars, a.scalars)

    for n in 0..<bytes.count {
      XCTAssertThrowsError(try Safetensors.decode(Array(bytes[0..<n])), "prefix \(n)")
    }
  }

  func testOtherDtypesConvert() throws {
    var data: [UInt8] = [0x00, 0x3C, 0x00, 0xC0]  // F16 1, -2
    withUnsafeBytes(of: (2.25 as Double).bitPattern.littleEndian) { data += $0 }
    withUnsafeBytes(of: Int64(-3).littleEndian) { data += $0 }
    let h = """
      {"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"d":{"dtype":"F64","shape":[1],"data_offsets":[4,12]},\
      "i":{"dtype":"I64","shape":[1,1],"data_offsets":[12,20]}}
      """
    let f = try Safetensors.decode(file(h, data)).dictionary
    XCTAssertEqual(f["h"]?.scalars, [1, -2])
    XCTAssertEqual(f["d"]?.scalars, [2.25])
    XCTAssertEqual(f["i"]?.scalars, [-3])
    XCTAssertEqual(f["i"]?.shape, [1, 1])
  }

  func testMalformedHeaders() {
    let eight = [UInt8](repeating: 0, count: 8)
    let cases: [(String, [UInt8], String)] = [
      ("not json", eight, "JSON"),
      ("[1,2]", eight, "JSON object"),
      ("{not json", eight, "not valid JSON"),
      (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, eight, "needs 2 × 4 bytes"),
      (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#, eight, "overlaps"),
      (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, eight, "belong to no tensor"),
      (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, eight, "trailing"),
      (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, eight, "data section has 8"),
      (#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, eight, "non-negative"),
      (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, eight, "begin ≤ end"),
      (#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#, eight, "dtype U8"),
      (#"{"a":{"dtype":"F32","shape":[2]}}"#, eight, "data_offsets"),
      (#"{"__metadata__":{"k":1}}"#, [], "not a string"),
      (#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, eight, "more than 2147483647 elements"),
    ]
    for (h, data, expect) in cases {
      XCTAssertThrowsError(try Safetensors.decode(file(h, data)), h) { e in
        XCTAssertTrue("\(e)".contains(expect), "\(h): \(e)")
      }
    }
    // A header length beyond the file or the limit.
    var huge: [UInt8] = []
    withUnsafeBytes(of: UInt64.max.littleEndian) { huge += $0 }
    XCTAssertThrowsError(try Safetensors.decode(huge + Array("{}".utf8)))
    var long: [UInt8] = []
    withUnsafeBytes(of: UInt64(100).littleEndian) { long += $0 }
    XCTAssertThrowsError(try Safetensors.decode(long + Array("{}".utf8))) { e in
      guard case FormatError.truncated = e else { return XCTFail("\(e)") }
    }
    // An empty file with only metadata is fine.
    XCTAssertEqual(try Safetensors.decode(file(#"{"__metadata__":{"k":"v"}}"#, [])).metadata, ["k": "v"])
  }

  /// Every single-byte corruption throws or decodes; never crashes.
  func testCorruptedBytesNeverCrash() throws {
    let bytes = Safetensors.encode(
      [("a", try Tensor(shape: [2, 2], values: [1, 2, 3, 4])), ("b", Tensor(zeros: [3]))], metadata: ["k": "v"])
    for i in bytes.indices {
      for v: UInt8 in [0x00, 0xFF, 0x30, 0x39, 0x2C, bytes[i] ^ 0x01] {
        var f = bytes
        f[i] = v
        _ = try? Safetensors.decode(f)
      }
    }
  }
}
