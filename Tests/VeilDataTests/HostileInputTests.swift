import Foundation
import XCTest

import VeilData
import VeilTensor
import VeilTestSupport

/// Images, CSVs, IDX files and transforms that ask for more than they hold: refused inside the
/// decoders, before pixels or rows are allocated, with the file, the size and the limit.
final class HostileInputTests: XCTestCase {
  func assertTooLarge(
    _ body: @autoclosure () throws -> some Any, _ fragments: [String], file: StaticString = #filePath,
    line: UInt = #line
  ) {
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
      guard case .tooLarge = error as? DataError else {
        return XCTFail("expected DataError.tooLarge, got \(error)", file: file, line: line)
      }
      for f in fragments {
        XCTAssertTrue("\(error)".contains(f), "'\(f)' missing from: \(error)", file: file, line: line)
      }
    }
  }

  /// The PNG header of the issue: IHDR says 0xFFFFFFFF × 0xFFFFFFFF (its product trapped in
  /// the enclave's size check). libpng refuses it while reading IHDR (PNG sides are 31-bit),
  /// and 2^31 − 1 on a side is refused by the side limit.
  func testPNGHeaderOfFourBillionSquared() throws {
    let png = PNGFile.assemble([PNGFile.ihdr(width: 0xFFFF_FFFF, height: 0xFFFF_FFFF, depth: 8, color: 2)])
    XCTAssertEqual(png.count, 33)
    XCTAssertThrowsError(try ImageCodec.decode(Data(png), name: "huge.png")) { error in
      guard case .decode(let file, "PNG", 33, let detail) = error as? DataError else { return XCTFail("\(error)") }
      XCTAssertEqual(file, "huge.png")
      XCTAssertTrue(detail.contains("out of range"), detail)
    }
    let wide = PNGFile.assemble([PNGFile.ihdr(width: 0x7FFF_FFFF, height: 1, depth: 8, color: 2)])
    XCTAssertThrowsError(try ImageCodec.decode(Data(wide), name: "wide.png")) { error in
      XCTAssertTrue("\(error)".contains("exceeds user limit"), "\(error)")
    }
  }

  /// Inside libpng's side limit, over the pixel limit: refused after IHDR, before any row.
  func testPNGOverThePixelLimitAndTheCallersLimit() throws {
    let png = PNGFile.make(width: 8000, height: 5001, depth: 8, color: 0, rows: [])
    assertTooLarge(
      try ImageCodec.decode(Data(png), name: "big.png"), ["big.png", "8000×5001", "40000000 pixels (40 MP)"])
    let small = PNGFile.make(width: 4, height: 4, depth: 8, color: 0, rows: Array(repeating: [1, 2, 3, 4], count: 4))
    XCTAssertNoThrow(try ImageCodec.decode(Data(small), name: "small.png"))
    assertTooLarge(try ImageCodec.decode(Data(small), name: "small.png", maxPixels: 15), ["4×4", "15 pixels"])
  }

  /// Found by the png fuzz target: an eXIf chunk that declares 1 GiB in a 60-byte file.
  /// libpng 1.6.39 allocated the declared length before reading the chunk; every chunk length
  /// is now checked against the file first, and the chunks Veil never uses are skipped.
  func testPNGChunkLongerThanTheFile() throws {
    let ihdr = PNGFile.assemble([PNGFile.ihdr(width: 1, height: 64, depth: 8, color: 0)])
    let png = ihdr + be32(0x4000_0022) + Array("eXIf".utf8) + Array(repeating: 0, count: 20)
    XCTAssertThrowsError(try ImageCodec.decode(Data(png), name: "exif.png")) { error in
      guard case .decode(_, "PNG", let offset, let detail) = error as? DataError else { return XCTFail("\(error)") }
      XCTAssertEqual(offset, ihdr.count, "the offset of the chunk")
      XCTAssertTrue(detail.contains("'eXIf' declares 1073741858 bytes"), detail)
    }
    // Well-formed ancillary chunks, used or not, still decode.
    let exif = PNGFile.Chunk(type: Array("eXIf".utf8), data: Array("MM\0*".utf8) + [0, 0, 0, 8, 0, 0])
    let text = PNGFile.Chunk(type: Array("zTXt".utf8), data: Array("Comment\0\0".utf8) + Checksum.zlibStored([65, 66]))
    let good = PNGFile.make(width: 2, height: 1, depth: 8, color: 0, rows: [[7, 9]], extra: [exif, text])
    XCTAssertEqual(try ImageCodec.decode(Data(good), name: "good.png").byteImage().pixels, [7, 9])
  }

  /// A 1 × 150 000 PNG (0.15 MP, well within the limit) resized on its short side would be
  /// 256 × 38 400 000 (29 GB as RGB): the preprocessing refuses the target size first.
  func testThinPhotoIsRefusedBeforeTheResize() throws {
    let rows = (0..<150_000).map { [UInt8(truncatingIfNeeded: $0)] }
    let png = PNGFile.make(width: 1, height: 150_000, depth: 8, color: 0, rows: rows)
    let decoded = try ImageCodec.decode(Data(png), name: "thin.png")
    XCTAssertEqual(decoded.height, 150_000)
    let p = Preprocessing(preset: .imagenet)
    assertTooLarge(try p.tensor(decoded.byteImage()), ["256×38400000", "40000000 pixels"])
  }

  /// The frame header after a 65 533-byte application segment: the old enclave check scanned
  /// 64 KiB for it and let a 65 000 × 65 000 JPEG through to the decoder. The decoder checks
  /// after reading every header segment.
  func testJPEGFrameAfterALargeApplicationSegment() throws {
    let app = JPEGFile.Segment(marker: 0xE1, payload: [UInt8](repeating: 0, count: 65_533))
    // An 8×8 file whose frame header is then made to say 65 000 × 65 000 (its scan is short:
    // the decoder must refuse before it looks at the scan).
    var segments = try XCTUnwrap(JPEGFile.segments(JPEGFile.minimal(width: 8, height: 8, before: [app, app])))
    let frame = try XCTUnwrap(segments.firstIndex { $0.marker == 0xC0 })
    segments[frame].payload.replaceSubrange(1..<5, with: be16(65_000) + be16(65_000))
    let jpeg = JPEGFile.assemble(segments)
    XCTAssertGreaterThan(jpeg.count, 1 << 17)
    assertTooLarge(try ImageCodec.decode(Data(jpeg), name: "hidden.jpg"), ["hidden.jpg", "65000×65000"])
    let fine = JPEGFile.minimal(width: 16, height: 8, before: [app])
    let image = try ImageCodec.decode(Data(fine), name: "fine.jpg")
    XCTAssertEqual([image.width, image.height, image.channels], [16, 8, 1])
    assertTooLarge(try ImageCodec.decode(Data(fine), name: "fine.jpg", maxPixels: 127), ["16×8"])
  }

  /// A progressive JPEG of more scans than the limit: refused, not decoded pass after pass.
  func testJPEGScanLimit() throws {
    var segments = try XCTUnwrap(JPEGFile.segments(JPEGFile.minimal(width: 8, height: 8, progressive: true)))
    let ac = try XCTUnwrap(segments.last)
    segments += Array(repeating: ac, count: ImageCodec.maxScans + 5)
    XCTAssertThrowsError(try ImageCodec.decode(Data(JPEGFile.assemble(segments)), name: "scans.jpg")) { error in
      XCTAssertTrue("\(error)".contains("progressive scans"), "\(error)")
    }
  }

  /// Found by the jpeg fuzz target: a 5 KB JPEG of 58 711 × 110 took seconds per request
  /// because preprocessing resized it to 136 636 × 256 (35 MP, within the limit) to keep a
  /// 224 × 224 crop. Only the crop is computed now, with the same bits as resize-then-crop.
  func testResizedAndCroppedIsResizeThenCrop() throws {
    var rng = SeededGenerator(seed: 19)
    for c in 1...4 {
      for filter in Interpolation.allCases {
        for (w, h, tw, th) in [(37, 23, 64, 40), (40, 90, 17, 33), (1, 30, 9, 270), (50, 3, 20, 20), (12, 12, 12, 5)] {
          let image = try ByteImage(
            width: w, height: h, channels: c,
            pixels: (0..<(w * h * c)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
          let cw = 1 + Int(rng.next() % UInt64(tw))
          let ch = 1 + Int(rng.next() % UInt64(th))
          let x = Int(rng.next() % UInt64(tw - cw + 1))
          let y = Int(rng.next() % UInt64(th - ch + 1))
          let whole = try image.resized(width: tw, height: th, interpolation: filter).cropped(
            x: x, y: y, width: cw, height: ch)
          let window = try image.resizedAndCropped(
            width: tw, height: th, interpolation: filter, crop: (x: x, y: y, width: cw, height: ch))
          XCTAssertEqual(window, whole, "\(w)×\(h)×\(c) → \(tw)×\(th), crop \(cw)×\(ch) at (\(x), \(y)), \(filter)")
        }
      }
    }
    let thin = ByteImage(width: 58_711, height: 110, channels: 3)
    let start = Date()
    let x = try Preprocessing(preset: .imagenet).tensor(thin)
    XCTAssertEqual(x.shape, [1, 3, 224, 224])
    XCTAssertLessThan(Date().timeIntervalSince(start), 5, "the crop of a 35 MP resize, not the resize")
  }

  func testResizeTargetIsCheckedWithoutOverflow() throws {
    let image = ByteImage(width: 2, height: 2, channels: 3)
    assertTooLarge(try image.resized(width: 100_000, height: 100_000, interpolation: .bilinear), ["100000×100000"])
    assertTooLarge(try image.resized(width: Int.max, height: 3, interpolation: .nearest), ["more than"])
    assertTooLarge(try image.floatImage().resized(width: 7, height: 7, interpolation: .bicubic, maxPixels: 48), ["7×7"])
    var p = Preprocessing(preset: .imagenet)
    p.resizeShorterSide = Int.max
    assertTooLarge(try p.tensor(image), ["40000000 pixels"])
    XCTAssertThrowsError(try ByteImage(width: Int.max, height: 2, channels: 3, pixels: [])) { error in
      XCTAssertTrue("\(error)".contains("needs more samples"), "\(error)")
    }
  }

  // MARK: CSV, IDX, transforms

  func temporaryFile(_ name: String, _ bytes: [UInt8]) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-hostile-\(UUID().uuidString)-\(name)")
    try Data(bytes).write(to: url)
    addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
  }

  /// A 2 MiB line, and a quote never closed: refused at the record limit, naming the line,
  /// instead of reading the rest of the file into one field.
  func testCSVRecordLimit() throws {
    let header = TonIoT.columns.joined(separator: ",") + "\n"
    let long = try temporaryFile("long.csv", Array((header + String(repeating: "x", count: 2 << 20) + "\n").utf8))
    let reader = try TonIoTReader(url: long)
    XCTAssertThrowsError(try reader.next()) { error in
      guard case .csv(_, let line, let detail) = error as? DataError else { return XCTFail("\(error)") }
      XCTAssertEqual(line, 2, "the line the long record starts on")
      XCTAssertTrue(detail.contains("longer than 1048576 bytes"), detail)
    }
    let open = try temporaryFile(
      "open.csv", Array((header + "\"" + String(repeating: "y,", count: 1 << 20)).utf8))
    XCTAssertThrowsError(try TonIoTReader(url: open).next()) { error in
      XCTAssertTrue("\(error)".contains("missing its closing quote"), "\(error)")
    }
  }

  /// A class index of 10^15 in a labels file made a class list of 10^15 names.
  func testLabelsFileClassIndexIsBounded() throws {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
      "veil-labels-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
    let png = try ImageCodec.encodePNG(ByteImage(width: 2, height: 2, channels: 1))
    for name in ["a.png", "b.png"] { try png.write(to: folder.appendingPathComponent(name)) }
    let labels = try temporaryFile("labels.txt", Array("a.png 0\nb.png 1000000000000000\n".utf8))
    XCTAssertThrowsError(try DataSet.flatFolder(folder, labels: labels)) { error in
      guard case .labels(_, 2, let detail) = error as? DataError else { return XCTFail("\(error)") }
      XCTAssertTrue(detail.contains("larger than 65535"), detail)
    }
    let names = try temporaryFile("names.txt", Array("b.png cat\na.png ant\n".utf8))
    let set = try DataSet.flatFolder(folder, labels: names)
    XCTAssertEqual(set.classNames, ["ant", "cat"])
    XCTAssertEqual(set.samples.map(\.label), [1, 0], "in the file's order: b is a cat, a an ant")
  }

  func testIDXSizesOverflowAndInflatedLimit() throws {
    let overflow = try temporaryFile(
      "overflow.idx", [0, 0, 8, 3] + [0xFF, 0xFF, 0xFF, 0xFF] + [0xFF, 0xFF, 0xFF, 0xFF] + [0x7F, 0xFF, 0xFF, 0xFF])
    XCTAssertThrowsError(try IDXImages(url: overflow)) { error in
      XCTAssertTrue("\(error)".contains("overflow"), "\(error)")
    }
    let images: [UInt8] = [0, 0, 8, 3] + be32(100) + be32(10) + be32(10) + [UInt8](repeating: 7, count: 10_000)
    let gz = try temporaryFile("images.idx.gz", Checksum.gzipStored(images))
    XCTAssertEqual(try IDXImages(url: gz).count, 100)
    XCTAssertThrowsError(try IDXImages(url: gz, maxBytes: 4096)) { error in
      XCTAssertTrue("\(error)".contains("more than 4096 bytes once inflated"), "\(error)")
    }
  }

  func testTransformWithHugeImageSizeIsRefused() throws {
    var options = TonIoTTransform.Options()
    options.imageSize = 1_000_000
    XCTAssertThrowsError(try TonIoTTransform.Fitter(options: options))
    let json =
      #"{"format":"veil-ton-iot-transform-1","fittedRows":1,"columns":[],"options":{"dropped":[],"encoding":"one-hot","maxCategories":16,"imageSize":1000000,"interpolation":"nearest","labels":"type"}}"#
    XCTAssertThrowsError(try TonIoTTransform.decode(Data(json.utf8), file: "t.json")) { error in
      XCTAssertTrue("\(error)".contains("t.json") && "\(error)".contains("imageSize must be 1...4096"), "\(error)")
    }
  }
}
