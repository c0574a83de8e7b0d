import Foundation
import XCTest

import VeilData
import VeilTestSupport

/// The fuzzing corpus (Fuzz/corpus) through this module's decoders: every seed decodes, every
/// regression input is refused or decodes, none traps.
final class DataFuzzCorpusTests: XCTestCase {
  func replay(_ target: String, _ decode: (String, [UInt8]) throws -> Void) throws {
    for (name, bytes) in try FuzzCorpus.files(target) {
      if name.hasPrefix("seed-") {
        XCTAssertNoThrow(try decode(name, bytes), "\(target)/\(name) is a seed: it must decode")
      } else {
        _ = try? decode(name, bytes)
      }
    }
  }

  func decodeImage(_ name: String, _ bytes: [UInt8]) throws {
    let d = try ImageCodec.decode(Data(bytes), name: "corpus")
    _ = try Preprocessing(preset: .imagenet, width: 8, height: 8).tensor(d.byteImage().oriented(exif: d.orientation))
  }

  func testPNG() throws { try replay("png", decodeImage) }
  func testJPEG() throws { try replay("jpeg", decodeImage) }

  func testCSV() throws {
    try replay("csv") { _, bytes in
      let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-corpus-\(UUID().uuidString).csv")
      try Data(bytes).write(to: url)
      defer { try? FileManager.default.removeItem(at: url) }
      let reader = try TonIoTReader(url: url)
      while try reader.next() != nil {}
    }
  }

  func testTransform() throws {
    try replay("toniot-transform") { name, bytes in _ = try TonIoTTransform.decode(Data(bytes), file: name) }
  }

  /// Labels files for the harness's flat folder of `a.png`, `b.png` and `c.png`.
  func testLabels() throws {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
      "veil-corpus-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: folder) }
    let png = try ImageCodec.encodePNG(ByteImage(width: 2, height: 2, channels: 1))
    for name in ["a.png", "b.png", "c.png"] { try png.write(to: folder.appendingPathComponent(name)) }
    try replay("labels") { _, bytes in
      let url = folder.appendingPathComponent("labels.txt")
      try Data(bytes).write(to: url)
      _ = try DataSet.flatFolder(folder, labels: url)
    }
  }

  func testIDX() throws {
    try replay("idx") { name, bytes in
      let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-corpus-\(UUID().uuidString).idx")
      try Data(bytes).write(to: url)
      defer { try? FileManager.default.removeItem(at: url) }
      // Label files are read with their images (a seed's images file of two images).
      if name.contains("labels") { return }
      _ = try IDXImages(url: url)
    }
  }
}
