import Foundation
import VeilTensor

/// A pixel sample type: `UInt8` (what files hold) or `Float` (the same 0...255 scale, with
/// fractions: 16-bit PNGs, network records, intermediate results).
public protocol PixelSample: Sendable, Equatable {
  static var zero: Self { get }
  /// The sample on the 0...255 scale.
  var value: Float { get }
  /// ITU-R 601-2 luma of an RGB triple.
  init(luma r: Self, _ g: Self, _ b: Self)
}

extension UInt8: PixelSample {
  public var value: Float { Float(self) }
  /// Pillow's fixed-point form: (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16.
  public init(luma r: UInt8, _ g: UInt8, _ b: UInt8) {
    let sum: Int = Int(r) * 19595 + Int(g) * 38470 + Int(b) * 7471
    self = UInt8((sum + 0x8000) >> 16)
  }
}

extension Float: PixelSample {
  public var value: Float { self }
  public init(luma r: Float, _ g: Float, _ b: Float) { self = r * 0.299 + g * 0.587 + b * 0.114 }
}

/// An image as interleaved rows: height × width × channels (HWC), 1 (grey), 2 (grey + alpha),
/// 3 (RGB) or 4 (RGBA) channels. Decoders always give RGB order; BGR exists only in tensors.
public struct Image<Pixel: PixelSample>: Sendable, Equatable {
  public let width: Int
  public let height: Int
  public let channels: Int
  public var pixels: [Pixel]

  public init(width: Int, height: Int, channels: Int, pixels: [Pixel]) throws {
    guard width > 0, height > 0, (1...4).contains(channels) else {
      throw DataError.invalidArgument(
        "an image needs a positive size and 1 to 4 channels, found \(width)×\(height)×\(channels)")
    }
    let (plane, o1) = width.multipliedReportingOverflow(by: height)
    let (samples, o2) = plane.multipliedReportingOverflow(by: channels)
    guard !o1, !o2, pixels.count == samples else {
      throw DataError.invalidArgument(
        "\(width)×\(height)×\(channels) image needs \(o1 || o2 ? "more" : "\(samples)") samples, found \(pixels.count)")
    }
    self.width = width
    self.height = height
    self.channels = channels
    self.pixels = pixels
  }

  /// A black image.
  public init(width: Int, height: Int, channels: Int) {
    precondition(width > 0 && height > 0 && (1...4).contains(channels), "bad image size")
    self.width = width
    self.height = height
    self.channels = channels
    pixels = Array(repeating: .zero, count: width * height * channels)
  }

  /// Builds an image by filling its samples (zeroed first) through one buffer pointer; the
  /// size must be valid (positive, 1 to 4 channels).
  public init(width: Int, height: Int, channels: Int, fill: (UnsafeMutableBufferPointer<Pixel>) -> Void) {
    precondition(width > 0 && height > 0 && (1...4).contains(channels), "bad image size")
    self.width = width
    self.height = height
    self.channels = channels
    pixels = Array(unsafeUninitializedCapacity: width * height * channels) { buffer, count in
      buffer.initialize(repeating: .zero)
      fill(buffer)
      count = buffer.count
    }
  }

  public subscript(x: Int, y: Int, channel: Int) -> Pixel {
    get { pixels[(y * width + x) * channels + channel] }
    set { pixels[(y * width + x) * channels + channel] = newValue }
  }

  /// Every output pixel copied from the source pixel `source(x, y)` names.
  func remapped(width w: Int, height h: Int, source: (Int, Int) -> (Int, Int)) -> Image {
    let c = channels
    let srcWidth = width
    return pixels.withUnsafeBufferPointer { src in
      Image(width: w, height: h, channels: c) { dst in
        for y in 0..<h {
          for x in 0..<w {
            let (sx, sy) = source(x, y)
            let s = (sy * srcWidth + sx) * c
            let d = (y * w + x) * c
            for k in 0..<c { dst[d + k] = src[s + k] }
          }
        }
      }
    }
  }

  /// The rectangle at (x, y) of the given size; it must lie inside the image.
  public func cropped(x: Int, y: Int, width w: Int, height h: Int) throws -> Image {
    guard x >= 0, y >= 0, w > 0, h > 0, x <= width - w, y <= height - h else {
      throw DataError.invalidArgument("crop \(w)×\(h) at (\(x), \(y)) does not fit in a \(width)×\(height) image")
    }
    let c = channels
    let srcWidth = width
    return pixels.withUnsafeBufferPointer { src in
      Image(width: w, height: h, channels: c) { dst in
        for row in 0..<h {
          let s = src.baseAddress! + ((y + row) * srcWidth + x) * c
          (dst.baseAddress! + row * w * c).update(from: s, count: w * c)
        }
      }
    }
  }

  /// Mirrored left to right.
  public func flippedHorizontally() -> Image {
    let w = width
    return remapped(width: width, height: height) { x, y in (w - 1 - x, y) }
  }

  /// Turned upright according to an EXIF orientation tag (1-8), as Pillow's
  /// `ImageOps.exif_transpose` does; 1 and unknown values leave the image as it is.
  public func oriented(exif orientation: Int) -> Image {
    let w = width
    let h = height
    switch orientation {
    case 2: return remapped(width: w, height: h) { x, y in (w - 1 - x, y) }
    case 3: return remapped(width: w, height: h) { x, y in (w - 1 - x, h - 1 - y) }
    case 4: return remapped(width: w, height: h) { x, y in (x, h - 1 - y) }
    case 5: return remapped(width: h, height: w) { x, y in (y, x) }
    case 6: return remapped(width: h, height: w) { x, y in (y, h - 1 - x) }
    case 7: return remapped(width: h, height: w) { x, y in (w - 1 - y, h - 1 - x) }
    case 8: return remapped(width: h, height: w) { x, y in (w - 1 - y, x) }
    default: return self
    }
  }

  /// One channel: the luma of colour images (ITU-R 601-2, as Pillow's `convert("L")`: L = R ·
  /// 299/1000 + G · 587/1000 + B · 114/1000), grey kept, alpha dropped.
  public func grey() -> Image {
    if channels == 1 { return self }
    let c = channels
    return eachPixel(to: 1) { src, dst in dst[0] = c <= 2 ? src[0] : Pixel(luma: src[0], src[1], src[2]) }
  }

  /// Three channels: grey is replicated, alpha is dropped (as Pillow's `convert("RGB")`).
  public func rgb() -> Image {
    if channels == 3 { return self }
    let c = channels
    return eachPixel(to: 3) { src, dst in for k in 0..<3 { dst[k] = c <= 2 ? src[0] : src[k] } }
  }

  /// An image of `n` channels, each pixel written by `convert` from this image's pixel (its
  /// `channels` samples at `src`, its `n` at `dst`).
  private func eachPixel(
    to n: Int, _ convert: (_ src: UnsafePointer<Pixel>, _ dst: UnsafeMutablePointer<Pixel>) -> Void
  ) -> Image {
    let c = channels
    return pixels.withUnsafeBufferPointer { src in
      Image(width: width, height: height, channels: n) { dst in
        for i in 0..<(width * height) { convert(src.baseAddress! + i * c, dst.baseAddress! + i * n) }
      }
    }
  }
}

/// An 8-bit image, as most files hold.
public typealias ByteImage = Image<UInt8>
/// A float image on the 0...255 scale.
public typealias FloatImage = Image<Float>

extension Image where Pixel == UInt8 {
  /// The same samples as floats (0...255).
  public func floatImage() -> FloatImage {
    FloatImage(width: width, height: height, channels: channels) { dst in
      for i in 0..<pixels.count { dst[i] = Float(pixels[i]) }
    }
  }
}

extension Image where Pixel == Float {
  /// Clamped to 0...255 and rounded to the nearest integer (halves up).
  public func byteImage() -> ByteImage {
    pixels.withUnsafeBufferPointer { src in
      ByteImage(width: width, height: height, channels: channels) { dst in
        // Adding ½ and truncating rounds a non-negative value without a call into libm.
        for i in 0..<src.count { dst[i] = UInt8(min(max(src[i], 0), 255) + 0.5) }
      }
    }
  }
}

// MARK: - Tensors

/// Where the channel axis sits in a tensor.
public enum TensorLayout: String, Codable, Sendable, CaseIterable {
  case nchw
  case nhwc
}

/// The order of the colour channels in a tensor.
public enum ChannelOrder: String, Codable, Sendable, CaseIterable {
  case rgb
  case bgr
}

extension Image {
  /// The image as a batch of one, [1, C, H, W] or [1, H, W, C], each sample `(x − mean[c]) /
  /// std[c]` on the 0...255 scale with `c` counted in the output channel order.
  public func tensor(
    layout: TensorLayout = .nchw, order: ChannelOrder = .rgb, normalization: Normalization = .unit
  ) throws -> Tensor {
    let c = channels
    guard order == .rgb || c >= 3 else {
      throw DataError.invalidArgument("BGR order needs a colour image, found \(c) channel(s)")
    }
    guard [1, c].contains(normalization.mean.count), [1, c].contains(normalization.std.count) else {
      throw DataError.invalidArgument(
        "normalisation has \(normalization.mean.count) means and \(normalization.std.count) stds for a \(c)-channel image"
      )
    }
    let mean = (0..<c).map { normalization.mean[normalization.mean.count == 1 ? 0 : $0] }
    let scale = (0..<c).map { 1 / normalization.std[normalization.std.count == 1 ? 0 : $0] }
    // Source channel of output channel k: BGR reverses the first three.
    let sourceChannel = (0..<c).map { k in order == .bgr && k < 3 ? 2 - k : k }
    let plane = width * height
    let shape = layout == .nchw ? [1, c, height, width] : [1, height, width, c]
    return pixels.withUnsafeBufferPointer { src in
      Tensor(shape: shape) { dst in
        for k in 0..<c {
          let s = sourceChannel[k]
          let m = mean[k]
          let f = scale[k]
          if layout == .nchw {
            let out = dst.baseAddress! + k * plane
            for i in 0..<plane { out[i] = (src[i * c + s].value - m) * f }
          } else {
            for i in 0..<plane { dst[i * c + k] = (src[i * c + s].value - m) * f }
          }
        }
      }
    }
  }
}
