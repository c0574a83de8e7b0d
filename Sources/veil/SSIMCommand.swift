import ArgumentParser
import Foundation
import VeilData
import VeilPrivacy

struct SSIMCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "ssim",
    abstract: "SSIM and PSNR of two images (PNG or JPEG) of the same size.",
    discussion: """
      Samples are scaled to [0, 1] (alpha dropped); SSIM uses an 11×11 Gaussian window
      (σ = 1.5), K1 = 0.01, K2 = 0.03, averaged over valid positions then channels, as
      scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False, data_range=1). PSNR = 10·log10(1 / MSE) in dB.
      """)

  @Argument(help: "The original image.")
  var first: String
  @Argument(help: "The image to compare with it (same width, height and channel count).")
  var second: String
  @Flag(help: "Print one JSON document.")
  var json = false

  struct Report: Encodable {
    var first: String
    var second: String
    var width: Int
    var height: Int
    var channels: Int
    var ssim: Double
    var ssimPerChannel: [Double]
    /// nil for identical images (infinite PSNR, which JSON cannot hold).
    var psnr: Double?
  }

  func run() throws {
    let a = UnitImage(try ImageCodec.readUpright(URL(fileURLWithPath: first)))
    let b = UnitImage(try ImageCodec.readUpright(URL(fileURLWithPath: second)))
    let names = (first, second)
    let channels = try SSIM.perChannel(a, b, names: names)
    let psnr = try PSNR.score(a, b, names: names)
    let report = Report(
      first: first, second: second, width: a.width, height: a.height, channels: a.channels,
      ssim: channels.reduce(0, +) / Double(channels.count), ssimPerChannel: channels,
      psnr: psnr.isFinite ? psnr : nil)
    if json { return try printJSON(report) }
    print(String(format: "SSIM %.6f", report.ssim))
    print(psnr.isFinite ? String(format: "PSNR %.4f dB", psnr) : "PSNR inf (identical images)")
  }
}
