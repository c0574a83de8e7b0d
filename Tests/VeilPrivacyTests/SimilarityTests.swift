import Foundation
import VeilData
import VeilPrivacy
import VeilTensor
import VeilTestSupport
import XCTest

/// SSIM and PSNR against scikit-image on real photos (the asset cache) and distorted copies of
/// them, written as PNG so that both sides read the same 8-bit samples.
final class SimilarityTests: XCTestCase {
  /// REFERENCES.md / issue 5: agreement with scikit-image within 1e-4.
  static let ssimTolerance = 1e-4
  /// PSNR is a closed formula on the same samples; only summation order differs.
  static let psnrTolerance = 1e-6

  func photo(_ name: String, x: Int, y: Int, width: Int, height: Int) throws -> ByteImage {
    try ImageCodec.readUpright(TestAssets.url(name)).rgb().cropped(x: x, y: y, width: width, height: height)
  }

  /// Seeded Gaussian noise of standard deviation `std` (0...255 scale), clamped.
  func noisy(_ image: ByteImage, std: Float, seed: UInt64) -> ByteImage {
    var g = SeededGenerator(seed: seed)
    return FloatImage(width: image.width, height: image.height, channels: image.channels) { dst in
      for i in 0..<dst.count { dst[i] = Float(image.pixels[i]) + std * g.nextNormal() }
    }.byteImage()
  }

  /// A 3×3 box blur (edges clamped): a structural change with little change of mean.
  func blurred(_ image: ByteImage) -> ByteImage {
    let (w, h, c) = (image.width, image.height, image.channels)
    return FloatImage(width: w, height: h, channels: c) { dst in
      for yy in 0..<h {
        for xx in 0..<w {
          for k in 0..<c {
            var s: Float = 0
            for dy in -1...1 {
              for dx in -1...1 {
                s += Float(image[min(max(xx + dx, 0), w - 1), min(max(yy + dy, 0), h - 1), k])
              }
            }
            dst[(yy * w + xx) * c + k] = s / 9
          }
        }
      }
    }.byteImage()
  }

  func grey(_ image: ByteImage) -> ByteImage {
    ByteImage(width: image.width, height: image.height, channels: 1) { dst in
      for i in 0..<dst.count {
        let p = 3 * i
        dst[i] = UInt8((Int(image.pixels[p]) + Int(image.pixels[p + 1]) + Int(image.pixels[p + 2])) / 3)
      }
    }
  }

  func testAgreesWithScikitImageOnRealPhotoPairs() throws {
    let astronaut = try photo("astronaut.png", x: 140, y: 30, width: 160, height: 120)
    let chelsea = try photo("chelsea.png", x: 100, y: 50, width: 160, height: 120)
    let coffee = try photo("coffee.png", x: 200, y: 100, width: 160, height: 120)
    let odd = try photo("chelsea.png", x: 7, y: 3, width: 37, height: 23)
    let pairs: [(String, ByteImage, ByteImage)] = [
      ("astronaut+noise", astronaut, noisy(astronaut, std: 20, seed: 1)),
      ("chelsea+blur", chelsea, blurred(chelsea)),
      ("coffee vs chelsea", coffee, chelsea),
      ("astronaut+light noise", astronaut, noisy(astronaut, std: 3, seed: 2)),
      ("grey coffee+blur+noise", grey(coffee), noisy(blurred(grey(coffee)), std: 10, seed: 3)),
      ("odd 37x23+noise", odd, noisy(odd, std: 30, seed: 4)),
    ]
    let dir = try PythonScript.temporaryDirectory("ssim")
    defer { try? FileManager.default.removeItem(at: dir) }
    var paths: [String] = []
    for (i, (_, a, b)) in pairs.enumerated() {
      for (j, img) in [a, b].enumerated() {
        let url = dir.appendingPathComponent("pair\(i)-\(j).png")
        try ImageCodec.writePNG(img, to: url)
        paths.append(url.path)
      }
    }
    struct Reference: Decodable {
      struct Pair: Decodable {
        var ssim: Double
        var psnr: Double
      }
      var skimage: String
      var pairs: [Pair]
    }
    let output = try PythonScript.run("ssim_reference.py", paths)
    let reference = try JSONDecoder().decode(Reference.self, from: Data(output.utf8))
    XCTAssertEqual(reference.pairs.count, pairs.count)
    var worst = 0.0
    for (i, (label, _, _)) in pairs.enumerated() {
      let a = UnitImage(try ImageCodec.readUpright(URL(fileURLWithPath: paths[2 * i])))
      let b = UnitImage(try ImageCodec.readUpright(URL(fileURLWithPath: paths[2 * i + 1])))
      let ssim = try SSIM.score(a, b)
      let psnr = try PSNR.score(a, b)
      let expected = reference.pairs[i]
      worst = max(worst, abs(ssim - expected.ssim))
      print(String(format: "%@: SSIM %.6f (skimage %.6f, |Δ| %.2e), PSNR %.4f dB (skimage %.4f)",
        label, ssim, expected.ssim, abs(ssim - expected.ssim), psnr, expected.psnr))
      XCTAssertEqual(ssim, expected.ssim, accuracy: Self.ssimTolerance, "\(label), scikit-image \(reference.skimage)")
      XCTAssertEqual(psnr, expected.psnr, accuracy: Self.psnrTolerance, "\(label), scikit-image \(reference.skimage)")
    }
    print(String(format: "SSIM max |Δ| against scikit-image %@: %.3e", reference.skimage, worst))
    // The pairs span the scale, so agreement is not an accident of one regime.
    let scores = try pairs.map { try SSIM.score(UnitImage($0.1), UnitImage($0.2)) }
    XCTAssertGreaterThan(scores.max()!, 0.9)
    XCTAssertLessThan(scores.min()!, 0.3)
  }

  func testIdenticalImagesScoreOneAndInfinitePSNR() throws {
    let a = UnitImage(try photo("coffee.png", x: 0, y: 0, width: 40, height: 30))
    XCTAssertEqual(try SSIM.score(a, a), 1, accuracy: 1e-12)
    XCTAssertEqual(try PSNR.score(a, a), .infinity)
  }

  func testWindowIsTheTruncatedNormalisedGaussian() {
    XCTAssertEqual(SSIM.weights.count, 11)
    XCTAssertEqual(SSIM.weights.reduce(0, +), 1, accuracy: 1e-15)
    XCTAssertEqual(SSIM.weights[5] / SSIM.weights[6], exp(0.5 / 2.25), accuracy: 1e-12)
  }

  func testRefusesMismatchedAndTooSmallImages() throws {
    let a = UnitImage(try photo("coffee.png", x: 0, y: 0, width: 40, height: 30))
    let b = UnitImage(try photo("coffee.png", x: 0, y: 0, width: 30, height: 40))
    XCTAssertThrowsError(try SSIM.score(a, b)) { XCTAssertTrue("\($0)".contains("40×30 and 30×40"), "\($0)") }
    let g = UnitImage(grey(try photo("coffee.png", x: 0, y: 0, width: 40, height: 30)))
    XCTAssertThrowsError(try PSNR.score(a, g)) { XCTAssertTrue("\($0)".contains("3 colour channel(s) against 1"), "\($0)") }
    let tiny = UnitImage(try photo("coffee.png", x: 0, y: 0, width: 10, height: 30))
    XCTAssertThrowsError(try SSIM.score(tiny, tiny)) { XCTAssertTrue("\($0)".contains("at least 11×11"), "\($0)") }
  }
}
