import Foundation
import VeilData
import VeilFormats
import VeilTensor
import XCTest

/// `veil data ton-iot`, `veil data show` and `veil run` on photos, as a user runs them.
extension CLITests {
  static let tonIoTHeader = TonIoT.columns.joined(separator: ",")
  static let tonIoTRealRow =
    "1556485532,192.168.1.193,57139,192.168.1.33,8080,tcp,-,0.000082,0,0,REJ,0,1,48,1,40,-,0,0,0,-,-,-,-,-,-,-,-,-,-,-,-,-,-,-,0,0,0,-,-,-,-,-,-,1,backdoor"

  /// 40 rows: the real row's shape with four types and varying numbers, plus one bad row.
  func tonIoTCSV() throws -> URL {
    var lines = [Self.tonIoTHeader]
    let types = ["normal", "backdoor", "ddos", "scanning"]
    for i in 0..<40 {
      var f = Self.tonIoTRealRow.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
      f[7] = String(Double(i) * 0.5)
      f[8] = String(i * 100)
      f[5] = i % 3 == 0 ? "udp" : "tcp"
      f[44] = i % 4 == 0 ? "0" : "1"
      f[45] = types[i % 4]
      lines.append(f.joined(separator: ","))
      if i == 10 { lines.append(Self.tonIoTRealRow.replacingOccurrences(of: "0.000082", with: "fast")) }
    }
    let url = temp("net.csv")
    try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
    return url
  }

  func testTonIoTCSVBecomesAnImageDataSetAndAGrid() throws {
    let csv = try tonIoTCSV()
    let out = temp("ton")
    let grid = temp("grid.png")
    defer { for f in [csv, out, grid] { try? FileManager.default.removeItem(at: f) } }
    let refused = try veil(["data", "ton-iot", "--csv", csv.path, "--out", out.path, "--size", "20"])
    XCTAssertNotEqual(refused.status, 0)
    XCTAssertTrue(refused.stderr.contains("net.csv:13: column 'duration' = 'fast' is not a number"), refused.stderr)
    let r = try veil([
      "data", "ton-iot", "--csv", csv.path, "--out", out.path, "--size", "20", "--skip-bad-rows", "--json",
    ])
    XCTAssertEqual(r.status, 0, r.stderr)
    let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(doc["rows"] as? Int, 40)
    XCTAssertEqual(doc["skippedRows"] as? Int, 1)
    let counts = try XCTUnwrap(doc["counts"] as? [String: [String: Int]])
    XCTAssertEqual(counts["train"]?["1-backdoor"], 8)
    XCTAssertEqual(counts["test"]?["2-ddos"], 1)
    XCTAssertEqual(counts.values.flatMap(\.values).reduce(0, +), 40)
    // The images on disk agree with the manifest and with the saved transform.
    let train = try DataSet.folder(out.appendingPathComponent("train"))
    XCTAssertEqual(train.samples.count, 32)
    XCTAssertEqual(train.classNames.count, 10)
    let transform = try TonIoTTransform.load(from: out.appendingPathComponent("transform.json"))
    XCTAssertEqual(transform.fittedRows, 32)
    let img = try train.load(0)
    XCTAssertEqual([img.width, img.height, img.channels], [20, 20, 3])
    let reader = try TonIoTReader(url: csv, policy: .skip)
    let line = Int(URL(fileURLWithPath: train.samples[0].name).deletingPathExtension().lastPathComponent)!
    while let rec = try reader.next(), rec.line <= line {
      if rec.line == line { XCTAssertEqual(try transform.image(rec), img) }
    }
    let s = try veil([
      "data", "show", "--data", out.path, "--out", grid.path, "--count", "6", "--columns", "3", "--tile", "24",
    ])
    XCTAssertEqual(s.status, 0, s.stderr)
    let g = try ImageCodec.read(grid).byteImage()
    XCTAssertEqual([g.width, g.height], [3 * 28 + 4, 2 * (28 + 10) + 4])
    XCTAssertTrue(s.stdout.contains("6 samples of 32 in 10 classes"), s.stdout)
    let help = try veil(["data", "ton-iot", "--help"])
    XCTAssertTrue(help.stdout.contains("--skip-bad-rows") && help.stdout.contains("transform.json"), help.stdout)
  }

  /// A photo through `veil run` gives what its preprocessed tensor gives, and bad photos fail
  /// with their file name.
  func testRunTakesAPhotoWithItsPreprocessing() throws {
    let png = temp("photo.png")
    let npy = temp("photo.npy")
    let a = temp("a.npy")
    let b = temp("b.npy")
    defer { for f in [png, npy, a, b] { try? FileManager.default.removeItem(at: f) } }
    var rng = SeededGenerator(seed: 4)
    let photo = try ByteImage(
      width: 300, height: 250, channels: 3,
      pixels: (0..<(300 * 250 * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
    try ImageCodec.writePNG(photo, to: png)
    try NPY.write(try Preprocessing(preset: .caffe).tensor(photo), to: npy)
    let r = try veil([
      "run", "--model", "mobilenet_v2", "--input", png.path, "--preprocess", "caffe", "--output", a.path, "--json",
    ])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertTrue(r.stdout.contains("\"preprocessing\" : \"caffe\""), r.stdout)
    XCTAssertEqual(try veil(["run", "--model", "mobilenet_v2", "--input", npy.path, "--output", b.path]).status, 0)
    XCTAssertEqual(try NPY.read(a).scalars, try NPY.read(b).scalars)
    // By default a zoo model uses its own transform: MobileNetV2 declares torchvision's, the
    // imagenet preset; caffe's input, and so its output, differ.
    XCTAssertEqual(try veil(["run", "--model", "mobilenet_v2", "--input", png.path, "--output", b.path]).status, 0)
    XCTAssertNotEqual(try NPY.read(a).scalars, try NPY.read(b).scalars)
    XCTAssertEqual(
      try veil(["run", "--model", "mobilenet_v2", "--input", png.path, "--preprocess", "imagenet", "--output", a.path])
        .status, 0)
    XCTAssertEqual(try NPY.read(a).scalars, try NPY.read(b).scalars)
    let truncated = temp("cut.png")
    defer { try? FileManager.default.removeItem(at: truncated) }
    try Data(try Data(contentsOf: png).prefix(500)).write(to: truncated)
    let e = try veil(["run", "--model", "mobilenet_v2", "--input", truncated.path])
    XCTAssertNotEqual(e.status, 0)
    XCTAssertTrue(e.stderr.contains("cut.png") && e.stderr.contains("truncated"), e.stderr)
    let gif = try veil(["run", "--model", "mobilenet_v2", "--input", "x.gif"])
    XCTAssertTrue(gif.stderr.contains("expected a .npy tensor or a .png / .jpg photo"), gif.stderr)
  }
}
