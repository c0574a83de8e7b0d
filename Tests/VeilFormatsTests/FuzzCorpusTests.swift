import Foundation
import XCTest

import VeilFormats
import VeilTestSupport

/// The fuzzing corpus (Fuzz/corpus) through the decoders of this module: every seed decodes,
/// every regression input is refused or decodes, none traps.
final class FuzzCorpusTests: XCTestCase {
  func replay(_ target: String, _ decode: ([UInt8]) throws -> Void) throws {
    let files = try FuzzCorpus.files(target)
    for (name, bytes) in files {
      if name.hasPrefix("seed-") {
        XCTAssertNoThrow(try decode(bytes), "\(target)/\(name) is a seed: it must decode")
      } else {
        _ = try? decode(bytes)
      }
    }
  }

  func testONNX() throws {
    try replay("onnx") {
      _ = try? ONNXReader.survey($0)
      _ = try ONNXReader.parse($0)
    }
  }
  func testPickle() throws { try replay("pickle") { _ = try Unpickler().load($0) } }
  func testCheckpoint() throws { try replay("checkpoint") { _ = try TorchCheckpoint.decode($0) } }
  func testSafetensors() throws { try replay("safetensors") { _ = try Safetensors.decode($0) } }
  func testNPY() throws { try replay("npy") { _ = try NPY.decode($0) } }

  func testProtobuf() throws {
    try replay("protobuf") { bytes in
      var d = ProtobufDecoder(bytes, format: "corpus")
      while let (_, wt) = try d.nextField() { try d.skip(wt) }
    }
  }
}
