/// VeilPrivacy: how private a cut is — how well an attacker who sees the feature map at a cut
/// rebuilds the input image.
///
/// Owns SSIM and PSNR exactly as ../shared/REFERENCES.md defines them, the feature extraction at
/// a cut (run with the engine, cached on disk), the six attackers behind one interface (the
/// white-box optimisation `FeatureInversion`, the same through a substitute head trained from
/// queries, He et al.'s inverse network, the two hybrids that refine the inverse network's
/// images by either optimisation, and the pix2pix conditional GAN, the learned ones trained
/// with VeilTrain), the photo data recipe of the attacks, the measures of what an
/// attack recovered (SSIM, recognition, re-identification, TON_IoT field recovery) with bounds
/// clustered by photo across seeds, the verdict at a cut (`PrivacyEvaluation`, `CutVerdict`)
/// and the choice rule, the defences at the cut in their differentiable forms with their
/// utility, and the privacy sweep over cuts (CSV/JSON/SVG). It builds on VeilTensor, VeilGraph,
/// VeilTrain, VeilFormats, VeilModels (a model's own classifier for the recognition measure)
/// and VeilData, and must not import the serving, TEE or planning layers: the planner consumes
/// its results (`PrivacyEvaluation`, `CutVerdict`, `EvaluationSettings`), never the other way
/// round.
import Foundation
import VeilData

/// Planar float64 samples on the [0, 1] scale: channel-major, then rows.
public struct UnitImage: Sendable {
  public let width: Int
  public let height: Int
  public let channels: Int
  public var samples: [Double]

  public init(width: Int, height: Int, channels: Int, samples: [Double]) {
    precondition(samples.count == width * height * channels, "sample count does not match the size")
    self.width = width
    self.height = height
    self.channels = channels
    self.samples = samples
  }

  /// An interleaved image on the 0...255 scale, divided by 255; an alpha channel (2 or 4
  /// channels) is dropped, because SSIM is about what the picture shows.
  public init<P: PixelSample>(_ image: Image<P>) {
    let colour = image.channels == 2 || image.channels == 4 ? image.channels - 1 : image.channels
    let (w, h, c) = (image.width, image.height, image.channels)
    var planar = [Double](repeating: 0, count: w * h * colour)
    image.pixels.withUnsafeBufferPointer { src in
      planar.withUnsafeMutableBufferPointer { dst in
        for y in 0..<h {
          for x in 0..<w {
            for k in 0..<colour { dst[(k * h + y) * w + x] = Double(src[(y * w + x) * c + k].value) / 255 }
          }
        }
      }
    }
    self.init(width: w, height: h, channels: colour, samples: planar)
  }
}

/// The structural similarity index (Wang, Bovik, Sheikh, Simoncelli 2004) in the usual
/// configuration: Gaussian weights σ = 1.5 truncated to 11×11, K1 = 0.01, K2 = 0.03, data range
/// 1, population (not sample) covariances; the SSIM map's mean over the positions where the
/// whole window fits, then the mean over channels. This is what scikit-image's
/// `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
/// data_range=1.0)` computes.
public enum SSIM {
  public static let sigma = 1.5
  public static let windowSize = 11
  public static let k1 = 0.01
  public static let k2 = 0.03
  public static let dataRange = 1.0

  /// The normalised 1-D Gaussian of the window (separable: the 2-D window is its outer product).
  public static let weights: [Double] = {
    let r = windowSize / 2
    let raw = (-r...r).map { exp(-0.5 * Double($0 * $0) / (sigma * sigma)) }
    let total = raw.reduce(0, +)
    return raw.map { $0 / total }
  }()

  /// Mean SSIM over channels of two images of equal size and channel count.
  public static func score(_ a: UnitImage, _ b: UnitImage, names: (String, String) = ("first image", "second image"))
    throws -> Double
  {
    try perChannel(a, b, names: names).reduce(0, +) / Double(a.channels)
  }

  /// Mean SSIM of each channel.
  public static func perChannel(
    _ a: UnitImage, _ b: UnitImage, names: (String, String) = ("first image", "second image")
  ) throws -> [Double] {
    try checkComparable(a, b, names: names)
    for (img, name) in [(a, names.0), (b, names.1)] where img.width < windowSize || img.height < windowSize {
      throw PrivacyError.imageTooSmall(name: name, width: img.width, height: img.height, minimum: windowSize)
    }
    let plane = a.width * a.height
    return a.samples.withUnsafeBufferPointer { x in
      b.samples.withUnsafeBufferPointer { y in
        (0..<a.channels).map { c in
          channelSSIM(
            UnsafeBufferPointer(rebasing: x[c * plane..<(c + 1) * plane]),
            UnsafeBufferPointer(rebasing: y[c * plane..<(c + 1) * plane]), width: a.width, height: a.height)
        }
      }
    }
  }

  /// The windowed statistics only at valid positions: a separable pass over rows, then over
  /// columns, of x, y, x², y², xy at once.
  static func channelSSIM(_ x: UnsafeBufferPointer<Double>, _ y: UnsafeBufferPointer<Double>, width w: Int, height h: Int)
    -> Double
  {
    let k = windowSize
    let ow = w - k + 1
    let oh = h - k + 1
    let c1 = (k1 * dataRange) * (k1 * dataRange)
    let c2 = (k2 * dataRange) * (k2 * dataRange)
    // Horizontal pass: 5 statistics for every row at every valid column.
    var rows = [Double](repeating: 0, count: 5 * h * ow)
    weights.withUnsafeBufferPointer { g in
      rows.withUnsafeMutableBufferPointer { r in
        for yy in 0..<h {
          for xx in 0..<ow {
            var sx = 0.0, sy = 0.0, sxx = 0.0, syy = 0.0, sxy = 0.0
            let base = yy * w + xx
            for t in 0..<k {
              let a = x[base + t]
              let b = y[base + t]
              let gt = g[t]
              sx += gt * a
              sy += gt * b
              sxx += gt * a * a
              syy += gt * b * b
              sxy += gt * a * b
            }
            let o = yy * ow + xx
            r[o] = sx
            r[h * ow + o] = sy
            r[2 * h * ow + o] = sxx
            r[3 * h * ow + o] = syy
            r[4 * h * ow + o] = sxy
          }
        }
      }
    }
    var total = 0.0
    weights.withUnsafeBufferPointer { g in
      rows.withUnsafeBufferPointer { r in
        for yy in 0..<oh {
          for xx in 0..<ow {
            var s = (0.0, 0.0, 0.0, 0.0, 0.0)
            for t in 0..<k {
              let o = (yy + t) * ow + xx
              let gt = g[t]
              s.0 += gt * r[o]
              s.1 += gt * r[h * ow + o]
              s.2 += gt * r[2 * h * ow + o]
              s.3 += gt * r[3 * h * ow + o]
              s.4 += gt * r[4 * h * ow + o]
            }
            let (ux, uy) = (s.0, s.1)
            let vx = s.2 - ux * ux
            let vy = s.3 - uy * uy
            let vxy = s.4 - ux * uy
            total += ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
          }
        }
      }
    }
    return total / Double(ow * oh)
  }
}

/// Peak signal-to-noise ratio in decibels, 10·log10(L² / MSE) with L = 1 over every sample;
/// infinite for identical images.
public enum PSNR {
  public static func score(_ a: UnitImage, _ b: UnitImage, names: (String, String) = ("first image", "second image"))
    throws -> Double
  {
    try checkComparable(a, b, names: names)
    var sum = 0.0
    a.samples.withUnsafeBufferPointer { x in
      b.samples.withUnsafeBufferPointer { y in
        for i in 0..<x.count {
          let d = x[i] - y[i]
          sum += d * d
        }
      }
    }
    let mse = sum / Double(a.samples.count)
    return 10 * log10(SSIM.dataRange * SSIM.dataRange / mse)
  }
}

func checkComparable(_ a: UnitImage, _ b: UnitImage, names: (String, String)) throws {
  guard a.width == b.width, a.height == b.height else {
    throw PrivacyError.mismatchedImages(
      first: names.0, second: names.1,
      detail: "sizes differ (\(a.width)×\(a.height) and \(b.width)×\(b.height)); resize one first")
  }
  guard a.channels == b.channels else {
    throw PrivacyError.mismatchedImages(
      first: names.0, second: names.1,
      detail: "\(a.channels) colour channel(s) against \(b.channels); convert both to grey or to RGB first")
  }
}
