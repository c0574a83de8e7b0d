import Foundation
import VeilData
import XCTest

/// `veil ssim` as a user runs it.
extension CLITests {
  func testSSIMPrintsScoresAndJSON() throws {
    // A smooth gradient and the same with a bright square: known-different, same size.
    let a = ByteImage(width: 32, height: 24, channels: 3) { d in
      for i in 0..<d.count { d[i] = UInt8((i / 3) % 32 * 8) }
    }
    var b = a
    for y in 8..<16 { for x in 8..<16 { for c in 0..<3 { b[x, y, c] = 255 } } }
    let fa = temp("a.png")
    let fb = temp("b.png")
    try ImageCodec.writePNG(a, to: fa)
    try ImageCodec.writePNG(b, to: fb)
    defer { for f in [fa, fb] { try? FileManager.default.removeItem(at: f) } }

    let text = try veil(["ssim", fa.path, fb.path])
    XCTAssertEqual(text.status, 0, text.stderr)
    XCTAssertTrue(text.stdout.contains("SSIM 0.") && text.stdout.contains("PSNR ") && text.stdout.contains(" dB"), text.stdout)

    let json = try veil(["ssim", fa.path, fb.path, "--json"])
    XCTAssertEqual(json.status, 0, json.stderr)
    let doc = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
    let ssim = try XCTUnwrap(doc?["ssim"] as? Double)
    let psnr = try XCTUnwrap(doc?["psnr"] as? Double)
    XCTAssertTrue(ssim > 0 && ssim < 1, "\(ssim)")
    // 64 of 768 pixels changed; PSNR from the same samples by hand.
    var sum = 0.0
    for i in 0..<a.pixels.count {
      let d = (Double(a.pixels[i]) - Double(b.pixels[i])) / 255
      sum += d * d
    }
    XCTAssertEqual(psnr, 10 * log10(Double(a.pixels.count) / sum), accuracy: 1e-9)
    XCTAssertEqual((doc?["ssimPerChannel"] as? [Double])?.count, 3)

    let same = try veil(["ssim", fa.path, fa.path])
    XCTAssertEqual(same.status, 0, same.stderr)
    XCTAssertTrue(same.stdout.contains("SSIM 1.000000") && same.stdout.contains("PSNR inf"), same.stdout)
  }

  func testSSIMRefusesImagesOfDifferentSizes() throws {
    let a = ByteImage(width: 32, height: 24, channels: 3)
    let b = ByteImage(width: 24, height: 32, channels: 3)
    let fa = temp("a.png")
    let fb = temp("b.png")
    try ImageCodec.writePNG(a, to: fa)
    try ImageCodec.writePNG(b, to: fb)
    defer { for f in [fa, fb] { try? FileManager.default.removeItem(at: f) } }
    let r = try veil(["ssim", fa.path, fb.path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("sizes differ (32×24 and 24×32)"), r.stderr)
  }
}
