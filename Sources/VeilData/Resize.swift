import Foundation

/// Resampling filters, named as Veil's options; each is Pillow's filter of the same role.
public enum Interpolation: String, Codable, Sendable, CaseIterable {
  /// Pillow `NEAREST`.
  case nearest
  /// Pillow `BILINEAR` (triangle filter, support 1).
  case bilinear
  /// Pillow `BICUBIC` (Keys cubic, a = −0.5, support 2).
  case bicubic
  /// Pillow `BOX`: the mean over each output pixel's footprint when downscaling.
  case area

  var support: Double {
    switch self {
    case .nearest, .area: return 0.5
    case .bilinear: return 1
    case .bicubic: return 2
    }
  }

  func weight(_ x: Double) -> Double {
    switch self {
    case .nearest, .area: return x > -0.5 && x <= 0.5 ? 1 : 0
    case .bilinear:
      let a = abs(x)
      return a < 1 ? 1 - a : 0
    case .bicubic:
      let a = abs(x)
      let k = -0.5
      if a < 1 { return ((k + 2) * a - (k + 3)) * a * a + 1 }
      if a < 2 { return (((a - 5) * a + 8) * a - 4) * k }
      return 0
    }
  }
}

/// The taps of one resampling pass along one axis, as Pillow's `precompute_coeffs` makes them:
/// the filter's support grows with the scale factor when downscaling (antialiasing), and each
/// output's weights are normalised to sum to one.
struct ResampleTaps {
  /// Taps per output (the widest footprint).
  let width: Int
  /// First input index and tap count per output.
  let first: [Int]
  let count: [Int]
  /// `width` weights per output, zero past `count`.
  let weights: [Double]

  /// The taps of outputs `outputs` (all `outSize` of them by default; a window of them when
  /// only a crop of the result is wanted), indexed from the window's start.
  init(inSize: Int, outSize: Int, filter: Interpolation, outputs: Range<Int>? = nil) {
    let outputs = outputs ?? 0..<outSize
    let scale = Double(inSize) / Double(outSize)
    let filterScale = max(scale, 1)
    let support = filter.support * filterScale
    // No output reads more than the whole input, however far its filter reaches.
    let width = min(Int(support.rounded(.up)) * 2 + 1, inSize + 2)
    var first = [Int](repeating: 0, count: outputs.count)
    var count = [Int](repeating: 0, count: outputs.count)
    var weights = [Double](repeating: 0, count: outputs.count * width)
    for (o, output) in outputs.enumerated() {
      let center = (Double(output) + 0.5) * scale
      // C's (int) truncation, as Pillow; the argument is ≥ −0.5 so truncation is towards zero.
      let lo = max(Int(center - support + 0.5), 0)
      let hi = min(Int(center + support + 0.5), inSize)
      var total = 0.0
      for i in lo..<max(hi, lo) {
        let w = filter.weight((Double(i) - center + 0.5) / filterScale)
        weights[o * width + i - lo] = w
        total += w
      }
      if total != 0 {
        for i in 0..<max(hi - lo, 0) { weights[o * width + i] /= total }
      }
      first[o] = lo
      count[o] = max(hi - lo, 0)
    }
    self.width = width
    self.first = first
    self.count = count
    self.weights = weights
  }

  /// The input indices these taps read, at least one.
  var inputs: Range<Int> {
    let lo = first.min() ?? 0
    let hi = zip(first, count).map { $0 + $1 }.max() ?? lo
    return lo..<max(hi, lo + 1)
  }

  /// The same taps reading an input that starts `offset` later (a window of rows).
  func shifted(by offset: Int) -> ResampleTaps {
    ResampleTaps(width: width, first: first.map { $0 - offset }, count: count, weights: weights)
  }

  private init(width: Int, first: [Int], count: [Int], weights: [Double]) {
    self.width = width
    self.first = first
    self.count = count
    self.weights = weights
  }

  /// Pillow's 8-bit fixed point: 22 fractional bits, rounded half away from zero.
  var fixedPoint: [Int32] {
    weights.map { w in
      Int32(
        w < 0 ? -0.5 + w * Double(1 << ResampleTaps.precisionBits) : 0.5 + w * Double(1 << ResampleTaps.precisionBits))
    }
  }

  static let precisionBits: Int32 = 32 - 8 - 2
}

extension Image {
  /// Pillow's `NEAREST` source index per output: an accumulated double coordinate, floored.
  static func nearestIndices(inSize: Int, outSize: Int) -> [Int] {
    let step = Double(inSize) / Double(outSize)
    var coordinate = step * 0.5
    var out = [Int](repeating: 0, count: outSize)
    for o in 0..<outSize {
      out[o] = min(max(Int(coordinate), 0), inSize - 1)
      coordinate += step
    }
    return out
  }

  func resizedNearest(width w: Int, height h: Int) -> Image {
    let xs = Self.nearestIndices(inSize: width, outSize: w)
    let ys = Self.nearestIndices(inSize: height, outSize: h)
    return remapped(width: w, height: h) { x, y in (xs[x], ys[y]) }
  }

  /// The target size must be positive and, counted without overflow, at most `maxPixels`.
  func checkResize(_ w: Int, _ h: Int, maxPixels: Int) throws {
    guard w > 0, h > 0 else {
      throw DataError.invalidArgument("cannot resize a \(width)×\(height) image to \(w)×\(h)")
    }
    let (pixels, overflow) = w.multipliedReportingOverflow(by: h)
    guard !overflow, pixels <= maxPixels else {
      throw DataError.tooLarge(
        file: "resize",
        detail: "resizing a \(width)×\(height) image to \(w)×\(h) would make "
          + "\(overflow ? "more than \(Int.max)" : "\(pixels)") pixels, more than the limit of "
          + "\(ImageCodec.describeLimit(maxPixels)); the image is too large or too thin for this size")
    }
  }
}

/// A sample type Pillow resamples: how the taps' weights are held, what a sum starts from, how a
/// tap adds to it and how a sum becomes a sample again. 8-bit images use Pillow's 22-bit fixed
/// point, float images (Pillow's mode "F") plain single precision with no rounding between the
/// passes; both add the taps in the same order as Pillow.
protocol ResampledSample: PixelSample {
  associatedtype Weight
  associatedtype Sum
  static func weights(of taps: ResampleTaps) -> [Weight]
  static var initialSum: Sum { get }
  static func adding(_ sum: Sum, _ sample: Self, _ weight: Weight) -> Sum
  static func sample(_ sum: Sum) -> Self
  /// What happens around the passes: 8-bit images with alpha are resampled premultiplied.
  static func beforeResampling(_ image: Image<Self>) -> Image<Self>
  static func afterResampling(_ image: Image<Self>) -> Image<Self>
}

extension UInt8: ResampledSample {
  static func weights(of taps: ResampleTaps) -> [Int32] { taps.fixedPoint }
  static var initialSum: Int32 { Int32(1) << (ResampleTaps.precisionBits - 1) }
  @inline(__always)
  static func adding(_ sum: Int32, _ sample: UInt8, _ weight: Int32) -> Int32 { sum &+ Int32(sample) &* weight }
  @inline(__always)
  static func sample(_ sum: Int32) -> UInt8 { UInt8(Swift.min(Swift.max(sum >> ResampleTaps.precisionBits, 0), 255)) }
  static func beforeResampling(_ image: ByteImage) -> ByteImage { image.hasAlpha ? image.premultiplied() : image }
  static func afterResampling(_ image: ByteImage) -> ByteImage { image.hasAlpha ? image.unpremultiplied() : image }
}

extension Float: ResampledSample {
  static func weights(of taps: ResampleTaps) -> [Float] { taps.weights.map { Float($0) } }
  static var initialSum: Float { 0 }
  @inline(__always)
  static func adding(_ sum: Float, _ sample: Float, _ weight: Float) -> Float { sum + sample * weight }
  @inline(__always)
  static func sample(_ sum: Float) -> Float { sum }
  static func beforeResampling(_ image: FloatImage) -> FloatImage { image }
  static func afterResampling(_ image: FloatImage) -> FloatImage { image }
}

extension Image where Pixel: ResampledSample {
  var hasAlpha: Bool { channels == 2 || channels == 4 }

  /// Pillow's resize: the size checked, nearest as an index map, otherwise the horizontal pass
  /// then the vertical one, each only where that side changes.
  func resizedAsPillow(width w: Int, height h: Int, interpolation: Interpolation, maxPixels: Int) throws -> Image {
    try checkResize(w, h, maxPixels: maxPixels)
    if interpolation == .nearest { return resizedNearest(width: w, height: h) }
    var source = Pixel.beforeResampling(self)
    if w != width {
      source = source.resampledHorizontally(
        to: w, taps: ResampleTaps(inSize: width, outSize: w, filter: interpolation))
    }
    if h != height {
      source = source.resampledVertically(
        to: h, taps: ResampleTaps(inSize: height, outSize: h, filter: interpolation))
    }
    return Pixel.afterResampling(source)
  }

  func resampledHorizontally(to w: Int, taps: ResampleTaps) -> Image {
    let c = channels
    let inWidth = width
    let k = Pixel.weights(of: taps)
    return pixels.withUnsafeBufferPointer { src in
      k.withUnsafeBufferPointer { kk in
        Image(width: w, height: height, channels: c) { dst in
          for y in 0..<height {
            let row = src.baseAddress! + y * inWidth * c
            let out = dst.baseAddress! + y * w * c
            for x in 0..<w {
              let first = taps.first[x]
              let n = taps.count[x]
              let weights = kk.baseAddress! + x * taps.width
              for ch in 0..<c {
                var sum = Pixel.initialSum
                for i in 0..<n { sum = Pixel.adding(sum, row[(first + i) * c + ch], weights[i]) }
                out[x * c + ch] = Pixel.sample(sum)
              }
            }
          }
        }
      }
    }
  }

  func resampledVertically(to h: Int, taps: ResampleTaps) -> Image {
    let rowLength = width * channels
    let k = Pixel.weights(of: taps)
    var sums = [Pixel.Sum](repeating: Pixel.initialSum, count: rowLength)
    return pixels.withUnsafeBufferPointer { src in
      k.withUnsafeBufferPointer { kk in
        sums.withUnsafeMutableBufferPointer { acc in
          Image(width: width, height: h, channels: channels) { dst in
            for y in 0..<h {
              acc.update(repeating: Pixel.initialSum)
              let weights = kk.baseAddress! + y * taps.width
              for i in 0..<taps.count[y] {
                let row = src.baseAddress! + (taps.first[y] + i) * rowLength
                let weight = weights[i]
                for j in 0..<rowLength { acc[j] = Pixel.adding(acc[j], row[j], weight) }
              }
              let out = dst.baseAddress! + y * rowLength
              for j in 0..<rowLength { out[j] = Pixel.sample(acc[j]) }
            }
          }
        }
      }
    }
  }
}

extension Image where Pixel == UInt8 {
  /// Resized as Pillow's `Image.resize(size, filter)` resizes an 8-bit image, to the bit: the
  /// same taps in 22-bit fixed point, the horizontal pass first with an 8-bit intermediate, and
  /// RGBA / grey+alpha resampled with premultiplied alpha.
  public func resized(
    width w: Int, height h: Int, interpolation: Interpolation, maxPixels: Int = ImageCodec.defaultMaxPixels
  ) throws -> ByteImage {
    try resizedAsPillow(width: w, height: h, interpolation: interpolation, maxPixels: maxPixels)
  }

  /// `resized(width:height:interpolation:)` then `cropped(x:y:width:height:)`, to the bit,
  /// computing only what the crop keeps: the horizontal pass over the source rows the kept rows
  /// read, the vertical pass for the kept rows. Resizing a thin photo up to a size it is then
  /// cropped from costs the crop, not the resized size.
  public func resizedAndCropped(
    width w: Int, height h: Int, interpolation: Interpolation, crop: (x: Int, y: Int, width: Int, height: Int),
    maxPixels: Int = ImageCodec.defaultMaxPixels
  ) throws -> ByteImage {
    try checkResize(w, h, maxPixels: maxPixels)
    guard crop.x >= 0, crop.y >= 0, crop.width > 0, crop.height > 0, crop.x <= w - crop.width,
      crop.y <= h - crop.height
    else {
      throw DataError.invalidArgument(
        "crop \(crop.width)×\(crop.height) at (\(crop.x), \(crop.y)) does not fit in a \(w)×\(h) image")
    }
    let columns = crop.x..<(crop.x + crop.width)
    let rows = crop.y..<(crop.y + crop.height)
    if interpolation == .nearest {
      let xs = Self.nearestIndices(inSize: width, outSize: w)
      let ys = Self.nearestIndices(inSize: height, outSize: h)
      return remapped(width: crop.width, height: crop.height) { x, y in (xs[crop.x + x], ys[crop.y + y]) }
    }
    let vertical = h != height ? ResampleTaps(inSize: height, outSize: h, filter: interpolation, outputs: rows) : nil
    let sourceRows = vertical?.inputs ?? rows
    var source = try cropped(x: 0, y: sourceRows.lowerBound, width: width, height: sourceRows.count)
    if hasAlpha { source = source.premultiplied() }
    if w != width {
      let taps = ResampleTaps(inSize: width, outSize: w, filter: interpolation, outputs: columns)
      source = source.resampledHorizontally(to: crop.width, taps: taps)
    } else {
      source = try source.cropped(x: crop.x, y: 0, width: crop.width, height: source.height)
    }
    if let vertical {
      source = source.resampledVertically(to: crop.height, taps: vertical.shifted(by: sourceRows.lowerBound))
    }
    return hasAlpha ? source.unpremultiplied() : source
  }

  /// Pillow's RGBA → RGBa (and LA → La): colour × alpha / 255, rounded.
  func premultiplied() -> ByteImage {
    mappingColour { v, alpha in
      let t = v * alpha + 128
      return UInt8(((t >> 8) + t) >> 8)
    }
  }

  /// Pillow's RGBa → RGBA: colour × 255 / alpha, truncated and clipped.
  func unpremultiplied() -> ByteImage {
    mappingColour { v, alpha in alpha == 0 || alpha == 255 ? UInt8(v) : UInt8(min(255 * v / alpha, 255)) }
  }

  /// Every colour sample replaced by `f(sample, alpha)`; the alpha channel (the last) kept.
  func mappingColour(_ f: (Int, Int) -> UInt8) -> ByteImage {
    let c = channels
    return pixels.withUnsafeBufferPointer { src in
      ByteImage(width: width, height: height, channels: c) { dst in
        for p in 0..<(width * height) {
          let alpha = Int(src[p * c + c - 1])
          for k in 0..<(c - 1) { dst[p * c + k] = f(Int(src[p * c + k]), alpha) }
          dst[p * c + c - 1] = UInt8(alpha)
        }
      }
    }
  }
}

extension Image where Pixel == Float {
  /// Resized with Pillow's taps in floating point (as Pillow resizes mode "F" images), with no
  /// rounding between the passes.
  public func resized(
    width w: Int, height h: Int, interpolation: Interpolation, maxPixels: Int = ImageCodec.defaultMaxPixels
  ) throws -> FloatImage {
    try resizedAsPillow(width: w, height: h, interpolation: interpolation, maxPixels: maxPixels)
  }
}
