import Foundation
import VeilFormats
import VeilTensor
import VeilTestSupport
import XCTest

import VeilData

/// Decoding and resizing against Pillow: scripts/image_reference.py writes the files and
/// Pillow's answers once per test run.
final class ImageTests: XCTestCase {
  struct Cases: Decodable {
    struct Decode: Decodable {
      var file: String
      var format: String
      var expected: String
    }
    struct Resize: Decodable {
      var input: String
      var filter: String
      var width: Int
      var height: Int
      var expected: String
      var mode: String
    }
    var pillow: String
    var decode: [Decode]
    var resize: [Resize]
  }

  static let references: Result<(URL, Cases), Error> = Result {
    let dir = try PythonScript.temporaryDirectory("image-reference")
    try PythonScript.run("image_reference.py", [dir.path])
    let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: dir.appendingPathComponent("cases.json")))
    return (dir, cases)
  }

  func expected(_ dir: URL, _ name: String) throws -> [Float] {
    try NPY.read(dir.appendingPathComponent(name)).scalars
  }

  /// Decodes every file of `cases` and compares with Pillow's pixels; returns the largest JPEG
  /// difference (PNG must match exactly).
  @discardableResult
  func checkDecoding(_ dir: URL, _ cases: Cases) throws -> Float {
    var worstJPEG: Float = 0
    for c in cases.decode {
      let url = dir.appendingPathComponent(c.file)
      let want = try expected(dir, c.expected)
      let got: [Float]
      switch c.format {
      case "PNG16":
        let d = try ImageCodec.read(url)
        XCTAssertEqual(d.bitDepth, 16, c.file)
        got = d.floatImage().pixels.map { ($0 * 257).rounded() }
      case "JPEG":
        got = try ImageCodec.readUpright(url).floatImage().pixels
      default:
        got = try ImageCodec.read(url).byteImage().floatImage().pixels
      }
      XCTAssertEqual(got.count, want.count, "\(c.file): sample count")
      guard got.count == want.count else { continue }
      let err = zip(got, want).map { abs($0 - $1) }.max() ?? 0
      if c.format == "JPEG" {
        worstJPEG = max(worstJPEG, err)
        XCTAssertLessThanOrEqual(err, 1, "\(c.file) differs from Pillow \(cases.pillow) by \(err)")
      } else {
        XCTAssertEqual(err, 0, "\(c.file) differs from Pillow \(cases.pillow) by \(err)")
      }
    }
    print("decode: \(cases.decode.count) files against Pillow \(cases.pillow); JPEG max |error| \(worstJPEG)")
    return worstJPEG
  }

  /// Luma as Pillow's `convert("L")` computes it (values from Pillow 11 for these pixels).
  func testGreyIsPillowsLuma() throws {
    let rgb: [UInt8] = [10, 20, 30, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 37, 201, 99]
    let img = try ByteImage(width: 6, height: 1, channels: 3, pixels: rgb)
    XCTAssertEqual(img.grey().pixels, [18, 76, 150, 29, 255, 140])
    XCTAssertEqual(img.grey().channels, 1)
    XCTAssertEqual(img.grey().grey(), img.grey())
    XCTAssertEqual(try ByteImage(width: 1, height: 1, channels: 4, pixels: [255, 0, 0, 9]).grey().pixels, [76])
    XCTAssertEqual(Normalization.imagenet.luma.mean.count, 1)
    XCTAssertEqual(Normalization.unit.luma, Normalization.unit)
  }

  func testDecodingMatchesPillow() throws {
    let (dir, cases) = try Self.references.get()
    try checkDecoding(dir, cases)
  }

  /// Real photos (darknet's JPEGs, scikit-image's PNG) decode and resize as Pillow does them.
  func testRealPhotosMatchPillow() throws {
    let photos = try ["eagle.jpg", "dog.jpg", "coffee.png"].map { try TestAssets.url($0).path }
    let dir = try PythonScript.temporaryDirectory("real-photos")
    defer { try? FileManager.default.removeItem(at: dir) }
    try PythonScript.run("image_reference.py", [dir.path] + photos.flatMap { ["--photo", $0] })
    let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: dir.appendingPathComponent("cases.json")))
    XCTAssertEqual(cases.decode.count, 3)
    try checkDecoding(dir, cases)
    try checkResizing(dir, cases, filters: 4)
  }

  func testEXIFOrientationTurnsTheShape() throws {
    let (dir, _) = try Self.references.get()
    let plain = try ImageCodec.read(dir.appendingPathComponent("orient1.jpg"))
    for o in 1...8 {
      let d = try ImageCodec.read(dir.appendingPathComponent("orient\(o).jpg"))
      XCTAssertEqual(d.orientation, o)
      let up = d.byteImage().oriented(exif: d.orientation)
      XCTAssertEqual(
        o >= 5 ? [up.height, up.width] : [up.width, up.height], [plain.width, plain.height], "orientation \(o)")
    }
  }

  /// Resizes every case of `cases` and compares with Pillow: 8-bit within one level (1/255),
  /// float within 0.01 (Pillow sums in double, Veil in float). Prints the worst error per filter.
  func checkResizing(_ dir: URL, _ cases: Cases, filters: Int) throws {
    var worst: [String: Float] = [:]
    var exact: [String: (Int, Int)] = [:]
    var sources: [String: ByteImage] = [:]
    for c in cases.resize {
      let filter = try XCTUnwrap(Interpolation(rawValue: c.filter))
      let source = try sources[c.input] ?? ImageCodec.readUpright(dir.appendingPathComponent(c.input))
      sources[c.input] = source
      let want = try expected(dir, c.expected)
      let got: [Float]
      let key = c.mode == "F" ? "\(c.filter) (float)" : c.filter
      if c.mode == "F" {
        got = try source.floatImage().resized(width: c.width, height: c.height, interpolation: filter).pixels
      } else {
        got = try source.resized(width: c.width, height: c.height, interpolation: filter).floatImage().pixels
      }
      XCTAssertEqual(got.count, want.count, c.expected)
      guard got.count == want.count else { continue }
      let errors = zip(got, want).map { abs($0 - $1) }
      let err = errors.max() ?? 0
      worst[key] = max(worst[key] ?? 0, err)
      exact[key, default: (0, 0)].0 += errors.filter { $0 == 0 }.count
      exact[key, default: (0, 0)].1 += errors.count
      XCTAssertLessThanOrEqual(
        err, c.mode == "F" ? 0.01 : 1, "\(c.expected): max |error| \(err) against Pillow \(cases.pillow)")
    }
    XCTAssertEqual(Set(worst.keys).count, filters)
    for (k, v) in worst.sorted(by: { $0.key < $1.key }) {
      let (same, total) = exact[k]!
      print("resize \(k): max |error| vs Pillow \(cases.pillow) = \(v) (×1/255), \(same)/\(total) samples identical")
    }
  }

  func testResizingMatchesPillowWithinOneLevel() throws {
    let (dir, cases) = try Self.references.get()
    try checkResizing(dir, cases, filters: 8)
  }

  func testCorruptAndTruncatedFilesNameTheFile() throws {
    let (dir, _) = try Self.references.get()
    for name in ["photo_rgb.png", "photo.jpg"] {
      let data = try Data(contentsOf: dir.appendingPathComponent(name))
      for cut in [data.count / 2, data.count - 3, 40] {
        XCTAssertThrowsError(try ImageCodec.decode(data.prefix(cut), name: "cut-\(name)")) { error in
          guard case .decode(let file, _, let offset, _) = error as? DataError else {
            return XCTFail("\(name) cut at \(cut): \(error)")
          }
          XCTAssertEqual(file, "cut-\(name)")
          XCTAssertLessThanOrEqual(offset, cut)
        }
      }
      // A flipped byte inside the first chunk / the Huffman tables.
      var bad = data
      bad[20] ^= 0xFF
      XCTAssertThrowsError(try ImageCodec.decode(bad, name: name))
    }
    XCTAssertThrowsError(try ImageCodec.decode(Data("GIF89a".utf8), name: "x.gif")) { error in
      XCTAssertTrue("\(error)".contains("x.gif") && "\(error)".contains("not a PNG or JPEG"), "\(error)")
    }
    XCTAssertThrowsError(try ImageCodec.read(dir.appendingPathComponent("missing.png"))) { error in
      XCTAssertTrue("\(error)".contains("missing.png"), "\(error)")
    }
  }

  func testPNGRoundTripInEveryChannelCount() throws {
    var rng = SeededGenerator(seed: 3)
    for c in 1...4 {
      let img = try ByteImage(
        width: 13, height: 7, channels: c, pixels: (0..<(13 * 7 * c)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
      )
      let back = try ImageCodec.decode(ImageCodec.encodePNG(img), name: "round-trip").byteImage()
      XCTAssertEqual(back, img, "\(c) channels")
    }
  }

  func testTensorLayoutOrderAndPresets() throws {
    // 2×1 RGB: pixel 0 = (10, 20, 30), pixel 1 = (40, 50, 60).
    let img = try ByteImage(width: 2, height: 1, channels: 3, pixels: [10, 20, 30, 40, 50, 60])
    XCTAssertEqual(try img.tensor(layout: .nchw).shape, [1, 3, 1, 2])
    for (got, want) in zip(try img.tensor(layout: .nchw).scalars, [10, 40, 20, 50, 30, 60]) {
      XCTAssertEqual(got, Float(want) / 255, accuracy: 1e-6)
    }
    XCTAssertEqual(
      try img.tensor(layout: .nhwc, order: .bgr, normalization: Normalization(mean: [0], std: [1])).scalars,
      [30, 20, 10, 60, 50, 40])
    let caffe = try img.tensor(layout: .nhwc, order: .bgr, normalization: .caffe).scalars
    XCTAssertEqual(caffe[0], 30 - 103.939, accuracy: 1e-4)
    XCTAssertEqual(caffe[2], 10 - 123.68, accuracy: 1e-4)
    let imagenet = try img.tensor(normalization: .imagenet).scalars
    XCTAssertEqual(imagenet[0], (10 / 255 - 0.485) / 0.229, accuracy: 1e-5)
    XCTAssertEqual(imagenet[5], (60 / 255 - 0.406) / 0.225, accuracy: 1e-5)
    XCTAssertEqual(try img.tensor(normalization: .tensorflow).scalars[0], (10 - 127.5) / 127.5, accuracy: 1e-6)
    XCTAssertEqual(try img.tensor(normalization: .tensorflowLite).scalars[1], (40 - 127) / 128, accuracy: 1e-6)
    let grey = ByteImage(width: 2, height: 2, channels: 1)
    XCTAssertThrowsError(try grey.tensor(order: .bgr))
    XCTAssertThrowsError(try grey.tensor(normalization: .imagenet))
  }

  func testCropsAndFlip() throws {
    let img = try ByteImage(width: 7, height: 6, channels: 1, pixels: (0..<42).map { UInt8($0) })
    // torchvision: left = round(3 / 2) = 2 (half to even), top = round(2 / 2) = 1.
    let centre = try img.centreCropped(width: 4, height: 4)
    XCTAssertEqual(centre[0, 0, 0], UInt8(1 * 7 + 2))
    let odd = try img.centreCropped(width: 2, height: 1)
    XCTAssertEqual(odd[0, 0, 0], UInt8(2 * 7 + 2), "top = round(2.5) = 2, left = round(2.5) = 2")
    XCTAssertThrowsError(try img.centreCropped(width: 8, height: 2))
    var a = SeededGenerator(seed: 9)
    var b = SeededGenerator(seed: 9)
    var positions = Set<UInt8>()
    for _ in 0..<40 {
      let x = try img.randomCropped(width: 3, height: 3, generator: &a)
      XCTAssertEqual(x, try img.randomCropped(width: 3, height: 3, generator: &b))
      positions.insert(x[0, 0, 0])
    }
    XCTAssertGreaterThan(positions.count, 8, "40 draws over 20 positions should visit many")
    XCTAssertTrue(positions.allSatisfy { Int($0) % 7 <= 4 && Int($0) / 7 <= 3 })
    let flipped = img.flippedHorizontally()
    XCTAssertEqual(flipped[0, 2, 0], img[6, 2, 0])
    XCTAssertEqual(flipped.flippedHorizontally(), img)
  }

  /// torchvision's Resize(256) + CenterCrop(224) geometry on a 301×233 photo, against Pillow.
  func testPreprocessingGeometryIsTorchvisions() throws {
    let (dir, _) = try Self.references.get()
    let photo = try ImageCodec.read(dir.appendingPathComponent("photo_rgb.png")).byteImage()
    let p = Preprocessing(preset: .imagenet)
    XCTAssertEqual(p.resizeShorterSide, 256)
    let g = try p.geometry(photo)
    XCTAssertEqual([g.width, g.height], [224, 224])
    // 233 → 256 and 301 → ⌊256·301/233⌋ = 330; crop left round(106/2) = 53, top 16.
    let full = try photo.resized(width: 330, height: 256, interpolation: .bilinear)
    XCTAssertEqual(g, try full.cropped(x: 53, y: 16, width: 224, height: 224))
    let t = try p.tensor(photo)
    XCTAssertEqual(t.shape, [1, 3, 224, 224])
    let json = try JSONEncoder().encode(Preprocessing(preset: .caffe, width: 240, height: 240, layout: .nhwc))
    let back = try JSONDecoder().decode(Preprocessing.self, from: json)
    XCTAssertEqual(back.channelOrder, .bgr)
    XCTAssertEqual(back.shape, [1, 240, 240, 3])
    XCTAssertEqual(back.resizeShorterSide, 274)
  }
}
