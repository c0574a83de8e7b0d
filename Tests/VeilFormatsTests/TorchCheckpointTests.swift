import Foundation
import VeilGraph
import VeilTensor
import XCTest

import VeilFormats
import VeilTestSupport

final class TorchCheckpointTests: XCTestCase {
  /// The registry-shipped Lite0 checkpoint; a missing file fails the test with what to run
  /// (`make test` fetches it).
  static var lite0URL: URL {
    get throws { try TestAssets.url("efficientnet-lite0-57934424.pth") }
  }

  func lite0Bytes() throws -> [UInt8] {
    [UInt8](try Data(contentsOf: Self.lite0URL))
  }

  func testRealLite0Checkpoint() throws {
    let bytes = try lite0Bytes()
    let ordered = try TorchCheckpoint.decode(bytes)
    XCTAssertEqual(ordered.count, 296)
    XCTAssertEqual(ordered.first?.name, "_conv_stem.weight")
    XCTAssertEqual(ordered.last?.name, "_fc.bias")
    let d = Dictionary(ordered.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
    XCTAssertEqual(d["_conv_stem.weight"]?.shape, [32, 3, 3, 3])
    XCTAssertEqual(d["_fc.weight"]?.shape, [1000, 1280])
    XCTAssertEqual(d["_fc.bias"]?.shape, [1000])
    XCTAssertEqual(d["_bn1.num_batches_tracked"]?.shape, [])
    XCTAssertEqual(d.keys.filter { $0.hasSuffix("num_batches_tracked") }.count, 49)
    // Channels-last strided storage (stride (1, 32, 288, 96)), checked against NumPy's as_strided.
    let stem = d["_conv_stem.weight"]!.scalars
    XCTAssertEqual(Array(stem[0..<3]), [-1.1103360652923584, -1.3087704181671143, -0.010156914591789246])
    // w[1, 2, :, 1] = flat 27 + 18 + 3i + 1
    XCTAssertEqual([stem[27 + 18 + 1], stem[27 + 18 + 4], stem[27 + 18 + 7]], [-0.08920226991176605, -0.4181220531463623, -0.5482979416847229])
    XCTAssertEqual(stem.reduce(0.0) { $0 + Double($1) }, -26.811376610887237, accuracy: 1e-4)
    let fc = d["_fc.weight"]!.scalars
    XCTAssertEqual(Array(fc[0..<3]), [-0.04561043530702591, -0.09470871090888977, -0.05684146657586098])
    XCTAssertEqual(Array(fc[(fc.count - 2)...]), [0.0053468868136405945, 0.04085797071456909])
    XCTAssertEqual(fc.reduce(0.0) { $0 + Double($1) }, -470.63256730128705, accuracy: 1e-3)
    XCTAssertEqual(try TorchCheckpoint.read(try Self.lite0URL).count, 296)
  }

  func testRealLite0TruncatedPrefixesThrow() throws {
    let bytes = try lite0Bytes()
    var lengths = Array(0..<300) + [47_000, 47_176, 47_180, 47_184, bytes.count - 1, bytes.count - 4, bytes.count - 8]
    for i in 1..<40 { lengths.append(bytes.count * i / 40) }
    for n in lengths {
      XCTAssertThrowsError(try TorchCheckpoint.decode(Array(bytes[0..<n])), "prefix \(n)")
    }
  }

  func testLegacyStridedHalfAndLong() throws {
    let storages: [(String, Int, [UInt8])] = [
      ("s0", 6, floatBytes([0, 1, 2, 3, 4, 5])),
      ("h", 3, [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38]),  // 1, -2, 0.5
      ("l", 1, [7, 0, 0, 0, 0, 0, 0, 0]),
    ]
    let file = legacyCheckpoint(
      [
        CheckpointTensor(name: "t", type: "FloatStorage", key: "s0", offset: 0, size: [3, 2], stride: [1, 3]),
        CheckpointTensor(name: "view", type: "FloatStorage", key: "s0", offset: 1, size: [2], stride: [2]),
        CheckpointTensor(name: "c", type: "FloatStorage", key: "s0", offset: 0, size: [2, 3], stride: [3, 1]),
        CheckpointTensor(name: "half", type: "HalfStorage", key: "h", offset: 0, size: [3], stride: [1]),
        CheckpointTensor(name: "bn.num_batches_tracked", type: "LongStorage", key: "l", offset: 0, size: [], stride: []),
      ], storages: storages)
    let out = try TorchCheckpoint.decode(file)
    XCTAssertEqual(out.map(\.name), ["t", "view", "c", "half", "bn.num_batches_tracked"])
    XCTAssertEqual(out[0].tensor.shape, [3, 2])
    // The transposed view of the contiguous [2, 3] tensor.
    XCTAssertEqual(out[0].tensor.scalars, [0, 3, 1, 4, 2, 5])
    let c = out[2].tensor.scalars
    for i in 0..<3 { for j in 0..<2 { XCTAssertEqual(out[0].tensor.scalars[i * 2 + j], c[j * 3 + i]) } }
    XCTAssertEqual(out[1].tensor.scalars, [1, 3])
    XCTAssertEqual(out[3].tensor.scalars, [1, -2, 0.5])
    XCTAssertEqual(out[4].tensor.scalars, [7])
    // Every prefix throws, never crashes.
    for n in 0..<file.count { XCTAssertThrowsError(try TorchCheckpoint.decode(Array(file[0..<n])), "prefix \(n)") }
  }

  func testStrideBeyondStorageThrows() {
    let file = legacyCheckpoint(
      [CheckpointTensor(name: "t", type: "FloatStorage", key: "s", offset: 1, size: [2, 2], stride: [2, 1])],
      storages: [("s", 4, floatBytes([0, 1, 2, 3]))])
    XCTAssertThrowsError(try TorchCheckpoint.decode(file)) { e in
      XCTAssertTrue("\(e)".contains("reaches element 4"), "\(e)")
    }
  }

  func testZipCheckpoint() throws {
    // A malformed pickle: both pairs pushed before two SETITEMs, so the first targets a tensor.
    var p = PickleBuilder()
    p.bytes.append(0x7D)
    p.str("w")
    p.tensor(type: "FloatStorage", key: "0", storageSize: 4, offset: 0, size: [2, 2], stride: [1, 2], legacy: false)
    p.str("b")
    p.tensor(type: "FloatStorage", key: "1", storageSize: 2, offset: 0, size: [2], stride: [1], legacy: false)
    p.bytes += [0x73, 0x73]
    var q = PickleBuilder()
    q.bytes.append(0x7D)
    q.str("w")
    q.tensor(type: "FloatStorage", key: "0", storageSize: 4, offset: 0, size: [2, 2], stride: [1, 2], legacy: false)
    q.bytes.append(0x73)
    q.str("b")
    q.tensor(type: "FloatStorage", key: "1", storageSize: 2, offset: 0, size: [2], stride: [1], legacy: false)
    q.bytes.append(0x73)
    q.stop()
    let zip = storedZip([
      ("archive/data.pkl", q.bytes), ("archive/byteorder", Array("little".utf8)),
      ("archive/data/0", floatBytes([1, 2, 3, 4])), ("archive/data/1", floatBytes([9, 8])),
      ("archive/version", Array("3\n".utf8)),
    ])
    let out = try TorchCheckpoint.decode(zip)
    XCTAssertEqual(out.map(\.name), ["w", "b"])
    XCTAssertEqual(out[0].tensor.scalars, [1, 3, 2, 4])
    XCTAssertEqual(out[1].tensor.scalars, [9, 8])
    for n in 0..<zip.count { XCTAssertThrowsError(try TorchCheckpoint.decode(Array(zip[0..<n])), "prefix \(n)") }
    // The malformed pickle is rejected.
    p.stop()
    let bad = storedZip([("archive/data.pkl", p.bytes), ("archive/data/0", floatBytes([1, 2, 3, 4])), ("archive/data/1", floatBytes([9, 8]))])
    XCTAssertThrowsError(try TorchCheckpoint.decode(bad))
  }

  func testNonWhitelistedGlobalsAreRejectedWithOffset() {
    var p = PickleBuilder()
    p.global("os", "system")
    p.str("echo hi")
    p.bytes += [0x85, 0x52]
    p.stop()
    XCTAssertThrowsError(try Unpickler().load(p.bytes)) { e in
      guard case FormatError.malformed(_, let offset, let detail) = e else { return XCTFail("\(e)") }
      XCTAssertEqual(offset, 2)
      XCTAssertTrue(detail.contains("GLOBAL 'os.system'"), detail)
    }
    // STACK_GLOBAL, after some other data, and torch.storage._load_from_bytes.
    var s = PickleBuilder()
    s.bytes.append(0x4E)
    s.str("torch.storage")
    s.str("_load_from_bytes")
    let at = s.bytes.count
    s.bytes.append(0x93)
    s.stop()
    XCTAssertThrowsError(try Unpickler().load(s.bytes)) { e in
      guard case FormatError.malformed(_, let offset, let detail) = e else { return XCTFail("\(e)") }
      XCTAssertEqual(offset, at)
      XCTAssertTrue(detail.contains("STACK_GLOBAL 'torch.storage._load_from_bytes'"), detail)
    }
    // Unknown opcodes name themselves and their offset.
    XCTAssertThrowsError(try Unpickler().load([0x80, 0x02, 0x69, 0x2E])) { e in
      XCTAssertTrue("\(e)".contains("byte 2") && "\(e)".contains("0x69"), "\(e)")
    }
  }

  func testPickleBasics() throws {
    // {'a': [1, -2, 3.5, 'x', b'yz', None, True], 'big': 2**70, 't': (1, 2)} with memo use.
    var p = PickleBuilder()
    p.bytes += [0x7D, 0x94, 0x28]
    p.bytes += [0x8C, 1] + Array("a".utf8)
    p.bytes += [0x5D, 0x71, 0x05, 0x28, 0x4B, 1, 0x4A] + [0xFE, 0xFF, 0xFF, 0xFF]
    p.bytes += [0x47] + withUnsafeBytes(of: (3.5 as Double).bitPattern.bigEndian) { Array($0) }
    p.bytes += [0x55, 1, 0x78, 0x43, 2, 0x79, 0x7A, 0x4E, 0x88, 0x65]
    p.str("big")
    p.bytes += [0x8A, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40]
    p.str("t")
    p.bytes += [0x4B, 1, 0x4D, 2, 0, 0x86]
    p.str("again")
    p.bytes += [0x68, 0x05]
    p.bytes += [0x75]
    p.stop()
    let doc = try Unpickler().load(p.bytes)
    let e = try XCTUnwrap(doc.entries(doc.root))
    XCTAssertEqual(e.map(\.key), [.string("a"), .string("big"), .string("t"), .string("again")])
    XCTAssertEqual(doc.sequence(e[0].value), [.int(1), .int(-2), .float(3.5), .string("x"), .bytes([0x79, 0x7A]), .none, .bool(true)])
    XCTAssertEqual(e[0].value, e[3].value)
    XCTAssertEqual(e[1].value, .bigInt([0, 0, 0, 0, 0, 0, 0, 0, 0x40]))
    XCTAssertEqual(doc.sequence(e[2].value), [.int(1), .int(2)])
    XCTAssertEqual(doc.endOffset, p.bytes.count)
    // Stack and memo misuse are errors, not crashes.
    for bad: [UInt8] in [[0x2E], [0x80, 2, 0x73, 0x2E], [0x68, 9, 0x2E], [0x28, 0x2E], [0x4E, 0x4E, 0x2E], [0x71, 0], [0x8A, 0xFF]] {
      XCTAssertThrowsError(try Unpickler().load(bad), "\(bad)")
    }
  }

  func testStateDictIntoGraph() throws {
    var g = Graph(name: "tiny")
    let x = g.addInput(name: "x", shape: [1, 2])
    let w = g.addInitializer(name: "_fc.weight", Tensor(zeros: [3, 2]))
    let b = g.addInitializer(name: "_fc.bias", Tensor(zeros: [3]))
    let s = g.addInitializer(name: "_bn.weight", Tensor(zeros: [3]))
    _ = x
    let fcw = try Tensor(shape: [3, 2], values: [1, 2, 3, 4, 5, 6])
    let fcb = try Tensor(shape: [3], values: [7, 8, 9])
    let report = StateDict.load(
      ["_fc.weight": fcw, "_fc.bias": fcb, "_bn.num_batches_tracked": Tensor(zeros: []), "extra": Tensor(zeros: [1])],
      into: &g)
    XCTAssertEqual(report.loaded, ["_fc.bias", "_fc.weight"])
    XCTAssertEqual(report.missing, ["_bn.weight"])
    XCTAssertEqual(report.unexpected, ["extra"])
    XCTAssertTrue(report.shapeMismatches.isEmpty)
    XCTAssertFalse(report.isComplete)
    XCTAssertEqual(g.initializers[w]?.scalars, [1, 2, 3, 4, 5, 6])
    XCTAssertEqual(g.initializers[b]?.scalars, [7, 8, 9])
    XCTAssertEqual(g.initializers[s]?.scalars, [0, 0, 0])
    XCTAssertTrue(report.description.contains("missing '_bn.weight'"), report.description)

    // A shape mismatch leaves the graph untouched.
    let r2 = StateDict.load(["_fc.weight": Tensor(zeros: [2, 3]), "_fc.bias": Tensor(zeros: [3]), "_bn.weight": Tensor(zeros: [3])], into: &g)
    XCTAssertEqual(r2.shapeMismatches, [.init(name: "_fc.weight", expected: [3, 2], found: [2, 3])])
    XCTAssertEqual(g.initializers[b]?.scalars, [7, 8, 9])
    XCTAssertTrue(r2.description.contains("shape mismatch '_fc.weight'"), r2.description)
  }

  func testStateDictFromRealLite0IntoMatchingGraph() throws {
    let weights = try TorchCheckpoint.decode(lite0Bytes())
    var g = Graph(name: "lite0-initializers")
    for (name, t) in weights where !name.hasSuffix("num_batches_tracked") {
      _ = g.addInitializer(name: name, Tensor(zeros: t.shape))
    }
    let report = StateDict.load(Dictionary(weights.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a }), into: &g)
    XCTAssertTrue(report.isComplete, report.description)
    XCTAssertEqual(report.loaded.count, 296 - 49)
    XCTAssertEqual(g.value(named: "_fc.weight").flatMap { g.initializers[$0] }?.shape, [1000, 1280])
  }

  /// Every single-byte corruption of small legacy and zip files throws or decodes; never crashes.
  func testCorruptedBytesNeverCrash() {
    let legacy = legacyCheckpoint(
      [
        CheckpointTensor(name: "t", type: "FloatStorage", key: "s0", offset: 1, size: [2, 2], stride: [1, 2]),
        CheckpointTensor(name: "h", type: "HalfStorage", key: "h", offset: 0, size: [2], stride: [1]),
      ], storages: [("s0", 5, floatBytes([0, 1, 2, 3, 4])), ("h", 2, [0, 0x3C, 0, 0x3C])])
    var q = PickleBuilder()
    q.bytes.append(0x7D)
    q.str("w")
    q.tensor(type: "FloatStorage", key: "0", storageSize: 4, offset: 0, size: [2, 2], stride: [1, 2], legacy: false)
    q.bytes.append(0x73)
    q.stop()
    let zip = storedZip([("archive/data.pkl", q.bytes), ("archive/data/0", floatBytes([1, 2, 3, 4]))])
    var decoded = 0
    for file in [legacy, zip] {
      for i in file.indices {
        for v: UInt8 in [0x00, 0xFF, 0x7F, file[i] ^ 0x01] {
          var f = file
          f[i] = v
          if (try? TorchCheckpoint.decode(f)) != nil { decoded += 1 }
        }
      }
    }
    XCTAssertGreaterThan(decoded, 0)  // corrupted float data still decodes
  }
}
