import Foundation
import VeilFormats
import VeilTensor
import XCTest

final class NPYTests: XCTestCase {
  /// A .npy file with the given header text (padded as NumPy pads) and payload.
  func npyFile(_ header: String, version: UInt8 = 1, payload: [UInt8] = []) -> [UInt8] {
    let prefix = version == 1 ? 10 : 12
    let total = (prefix + header.utf8.count + 1 + 63) / 64 * 64
    let padded = header + String(repeating: " ", count: total - prefix - header.utf8.count - 1) + "\n"
    var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version, 0]
    let n = padded.utf8.count
    out += version == 1 ? [UInt8(n & 0xFF), UInt8(n >> 8)] : [UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), 0, 0]
    return out + Array(padded.utf8) + payload
  }

  func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

  /// Asserts that decoding throws exactly `expected`.
  func assertError(_ bytes: [UInt8], _ expected: FormatError, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try NPY.decode(bytes), file: file, line: line) { error in
      XCTAssertEqual(error as? FormatError, expected, "\(error)", file: file, line: line)
    }
  }

  func testRoundTrip() throws {
    var g = SeededGenerator(seed: 7)
    for shape in [[], [1], [5], [2, 3], [2, 3, 4, 5], [0, 3]] as [[Int]] {
      let t = Tensor.randomNormal(shape: shape, generator: &g)
      let bytes = NPY.encode(t)
      let back = try NPY.decode(bytes)
      XCTAssertEqual(back.shape, shape)
      XCTAssertEqual(back.scalars, t.scalars)
    }
  }

  func testFileRoundTrip() throws {
    let dir = try ReferenceScript.temporaryDirectory("npy")
    defer { try? FileManager.default.removeItem(at: dir) }
    let t = try Tensor(shape: [2, 2], values: [1, -2, 3.5, .infinity])
    let url = dir.appendingPathComponent("t.npy")
    try NPY.write(t, to: url)
    let back = try NPY.read(url)
    XCTAssertEqual(back.shape, [2, 2])
    XCTAssertEqual(back.scalars, t.scalars)
    XCTAssertThrowsError(try NPY.read(dir.appendingPathComponent("missing.npy"))) { error in
      guard case .io(let path, _) = error as? FormatError else { return XCTFail("\(error)") }
      XCTAssertTrue(path.hasSuffix("missing.npy"))
    }
  }

  /// The header is exactly what NumPy writes, so files diff cleanly against NumPy's own.
  func testEncodedHeaderMatchesNumPy() throws {
    let bytes = NPY.encode(try Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]))
    XCTAssertEqual(Array(bytes[0..<8]), [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0])
    let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
    XCTAssertEqual((10 + headerLength) % 64, 0)
    let header = String(decoding: bytes[10..<(10 + headerLength)], as: UTF8.self)
    XCTAssertTrue(header.hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), header)
    XCTAssertTrue(header.hasSuffix(" \n"))
    XCTAssertEqual(bytes.count, 10 + headerLength + 24)
    XCTAssertEqual(Array(bytes[(10 + headerLength)...].prefix(4)), [0x00, 0x00, 0x80, 0x3F])
    let scalar = NPY.encode(Tensor(shape: [], repeating: 2))
    XCTAssertTrue(String(decoding: scalar[10..<74], as: UTF8.self).contains("'shape': (), }"))
    let vector = NPY.encode(Tensor(zeros: [4]))
    XCTAssertTrue(String(decoding: vector[10..<74], as: UTF8.self).contains("'shape': (4,), }"))
  }

  func testReadsVersion2AndConvertsFloat64AndInt64() throws {
    let f8 = npyFile(
      "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", version: 2,
      payload: le((1.5 as Double).bitPattern) + le((-0.25 as Double).bitPattern))
    XCTAssertEqual(try NPY.decode(f8).scalars, [1.5, -0.25])
    XCTAssertEqual(try NPY.decode(f8).shape, [2])
    let i8 = npyFile(
      "{'shape': (1, 3), 'fortran_order': False, 'descr': '<i8'}",
      payload: le(Int64(-3)) + le(Int64(0)) + le(Int64(70000)))
    XCTAssertEqual(try NPY.decode(i8).scalars, [-3, 0, 70000])
    XCTAssertEqual(try NPY.decode(i8).shape, [1, 3])
  }

  func testTruncatedFiles() {
    assertError(
      [],
      .truncated(format: "npy", offset: 0, detail: "the 8-byte magic and version need 8 more byte(s); the file has 0"))
    assertError(
      [0x93, 0x4E, 0x55, 0x4D, 0x50],
      .truncated(format: "npy", offset: 5, detail: "the 8-byte magic and version need 3 more byte(s); the file has 5"))
    assertError(
      [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 0x76],
      .truncated(format: "npy", offset: 9, detail: "the 2-byte header length of version 1.0 is cut off"))
    let full = NPY.encode(try! Tensor(shape: [3], values: [1, 2, 3]))
    assertError(
      Array(full.prefix(40)),
      .truncated(
        format: "npy", offset: 40, detail: "the header declares 118 bytes from byte 10, the file ends 88 byte(s) short")
    )
    assertError(
      Array(full.prefix(full.count - 2)),
      .truncated(
        format: "npy", offset: 138, detail: "shape [3] of '<f4' needs 12 data bytes from byte 128, the file has 10"))
  }

  func testMalformedHeaders() {
    var bad = NPY.encode(Tensor(zeros: [1]))
    bad[1] = 0x4F
    assertError(
      bad,
      .malformed(
        format: "npy", offset: 0,
        detail: "missing the magic string \\x93NUMPY (found 93 4f 55 4d 50 59); not a .npy file"))
    var version = NPY.encode(Tensor(zeros: [1]))
    version[6] = 4
    assertError(version, .malformed(format: "npy", offset: 6, detail: "format version 4.0 is not 1.0, 2.0 or 3.0"))
    // Offsets point into the header: it starts at byte 10 in version 1.0.
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }"),
      .malformed(format: "npy", offset: 10 + 54, detail: "header: expected a non-negative integer dimension, found 'x'")
    )
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': False}"),
      .malformed(format: "npy", offset: 10, detail: "header: missing key 'shape'"))
    assertError(
      npyFile("{'descr': '<f4' 'fortran_order': False, 'shape': ()}"),
      .malformed(
        format: "npy", offset: 10 + 16, detail: "header: expected ',' or '}' after the value of 'descr', found '''"))
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': Nope, 'shape': ()}"),
      .malformed(format: "npy", offset: 10 + 34, detail: "header: expected a string, True/False or a tuple, found 'N'"))
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}"),
      .malformed(format: "npy", offset: 10 + 65, detail: "header: expected a string, True/False or a tuple, found '1'"))
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': ()}"),
      .malformed(format: "npy", offset: 10 + 56, detail: "header: unknown key 'extra'"))
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2,)}"),
      .malformed(format: "npy", offset: 10 + 34, detail: "header: 'fortran_order' must be True or False"))
    assertError(
      npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", payload: [0, 0, 0x80, 0x3F, 0xAA]),
      .malformed(format: "npy", offset: 132, detail: "1 byte(s) after the 4 data bytes of shape [1]"))
  }

  func testUnsupportedDtypeAndOrder() {
    let f4be = npyFile("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", payload: [0x3F, 0x80, 0, 0])
    XCTAssertThrowsError(try NPY.decode(f4be)) { error in
      guard case .unsupported(_, let detail) = error as? FormatError else { return XCTFail("\(error)") }
      XCTAssertTrue(detail.contains("dtype '>f4'") && detail.contains("'<f4'"), detail)
    }
    let fortran = npyFile("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", payload: [0, 0, 0x80, 0x3F])
    XCTAssertThrowsError(try NPY.decode(fortran)) { error in
      guard case .unsupported(_, let detail) = error as? FormatError else { return XCTFail("\(error)") }
      XCTAssertTrue(detail.contains("fortran_order True"), detail)
    }
    let structured = npyFile("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }")
    XCTAssertThrowsError(try NPY.decode(structured)) { error in
      guard case .malformed(_, let offset, let detail) = error as? FormatError else { return XCTFail("\(error)") }
      XCTAssertEqual(offset, 10 + 10)
      XCTAssertTrue(detail.contains("structured"), detail)
    }
  }
}
