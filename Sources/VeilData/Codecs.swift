import CImageCodecs
import Foundation

/// A decoded image file, before any transform: 8-bit samples, or 16-bit ones from a PNG.
public struct DecodedImage: Sendable {
  public enum Format: String, Sendable {
    case png = "PNG"
    case jpeg = "JPEG"
  }

  public let format: Format
  public let width: Int
  public let height: Int
  public let channels: Int
  /// 8 or 16 (16 only for PNG).
  public let bitDepth: Int
  /// The EXIF orientation tag of a JPEG (1 = upright, also when absent).
  public let orientation: Int
  let samples8: [UInt8]
  let samples16: [UInt16]

  /// 8-bit samples; 16-bit ones keep their high byte, as Pillow does when it opens them as RGB.
  public func byteImage() -> ByteImage {
    if bitDepth == 8 {
      return ByteImage(width: width, height: height, channels: channels) { dst in
        _ = dst.initialize(from: samples8)
      }
    }
    return ByteImage(width: width, height: height, channels: channels) { dst in
      for i in 0..<samples16.count { dst[i] = UInt8(samples16[i] >> 8) }
    }
  }

  /// Samples on the 0...255 scale; 16-bit ones keep their precision (v / 257).
  public func floatImage() -> FloatImage {
    if bitDepth == 8 { return byteImage().floatImage() }
    return FloatImage(width: width, height: height, channels: channels) { dst in
      for i in 0..<samples16.count { dst[i] = Float(samples16[i]) / 257 }
    }
  }
}

/// PNG and JPEG files through libpng and libjpeg-turbo. The format is told by the file's first
/// bytes, not its name. Corrupt and truncated files throw `DataError.decode` with the file name
/// and the byte offset the decoder had reached.
///
/// Every decode is bounded inside the decoder, once the header is read and before any pixel
/// is allocated: at most `maxPixels` pixels (`defaultMaxPixels`, 40 MP, unless the caller says
/// otherwise) and `maxSide` on a side; a PNG's ancillary chunks at most `maxChunkBytes` each once
/// inflated and `maxChunks` kept; a progressive JPEG at most `maxScans` scans. An image over a
/// limit throws `DataError.tooLarge`. A file can therefore make a decode cost at most about
/// 8 bytes per allowed pixel (16-bit RGBA), 320 MB at the default, and the time to inflate it.
public enum ImageCodec {
  /// The pixel limit of every decode that names none: 40 megapixels, a large phone photo
  /// (8000 × 5000 is 40 MP). The enclave uses it for the photos clients send.
  public static let defaultMaxPixels = 40_000_000
  /// Longest side, whatever the pixel count (libpng's own default user limit).
  public static let maxSide = 1_000_000
  /// Scans of a progressive JPEG (a normal one has about 10).
  public static let maxScans = 100
  /// Largest PNG ancillary chunk libpng inflates or keeps (iCCP profiles, compressed text).
  public static let maxChunkBytes = 8 << 20
  /// PNG ancillary chunks libpng keeps (text, sPLT, unknown).
  public static let maxChunks = 128
  /// Largest IDX file once inflated (Fashion-MNIST's training images are 47 MB).
  public static let maxIDXBytes = 1 << 31

  /// Decodes PNG or JPEG bytes; `name` is what errors call the file. An image of more than
  /// `maxPixels` pixels throws `DataError.tooLarge` before its pixels are decoded.
  public static func decode(_ data: Data, name: String, maxPixels: Int = defaultMaxPixels) throws -> DecodedImage {
    let bytes = [UInt8](data)
    let format: DecodedImage.Format
    if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) {
      format = .png
    } else if bytes.starts(with: [0xFF, 0xD8]) {
      format = .jpeg
    } else {
      let head = bytes.prefix(8).map { String(format: "%02X", $0) }.joined(separator: " ")
      throw DataError.unsupportedImage(
        file: name, detail: "not a PNG or JPEG file (it starts with \(head.isEmpty ? "nothing" : head))")
    }
    var out = veil_decoded_image()
    var error = veil_codec_error()
    var limits = veil_decode_limits(
      max_pixels: UInt64(max(0, maxPixels)), max_side: UInt32(maxSide), max_scans: UInt32(maxScans),
      max_chunk_bytes: UInt32(maxChunkBytes), max_chunks: UInt32(maxChunks))
    let status = bytes.withUnsafeBufferPointer { buf in
      format == .png
        ? veil_png_decode(buf.baseAddress, buf.count, &limits, &out, &error)
        : veil_jpeg_decode(buf.baseAddress, buf.count, &limits, &out, &error)
    }
    if status == VEIL_CODEC_OVER_LIMIT {
      throw DataError.tooLarge(
        file: name,
        detail: "the \(format.rawValue) is \(out.width)×\(out.height) pixels, "
          + "more than this decoder accepts (\(describeLimit(maxPixels)), at most \(maxSide) on a side); scale it down")
    }
    guard status == 0, let raw = out.pixels else {
      throw DataError.decode(file: name, format: format.rawValue, offset: error.offset, detail: message(error))
    }
    defer { veil_codec_free(raw) }
    // The decoder kept width × height within the limits: these products cannot overflow.
    let w = Int(out.width)
    let h = Int(out.height)
    let c = Int(out.channels)
    let n = w * h * c
    let depth = Int(out.bit_depth)
    let s8 = depth == 8 ? Array(UnsafeBufferPointer(start: raw.assumingMemoryBound(to: UInt8.self), count: n)) : []
    let s16 = depth == 16 ? Array(UnsafeBufferPointer(start: raw.assumingMemoryBound(to: UInt16.self), count: n)) : []
    return DecodedImage(
      format: format, width: w, height: h, channels: c, bitDepth: depth, orientation: Int(out.orientation),
      samples8: s8, samples16: s16)
  }

  /// Reads and decodes a file.
  public static func read(_ url: URL, maxPixels: Int = defaultMaxPixels) throws -> DecodedImage {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw DataError.io(file: url.path, detail: "cannot read: \(error.localizedDescription)")
    }
    return try decode(data, name: url.path, maxPixels: maxPixels)
  }

  /// An 8-bit image turned upright by its EXIF orientation (JPEG), as models expect photos.
  public static func readUpright(_ url: URL, maxPixels: Int = defaultMaxPixels) throws -> ByteImage {
    let d = try read(url, maxPixels: maxPixels)
    return d.byteImage().oriented(exif: d.orientation)
  }

  /// "40000000 pixels (40 MP)".
  static func describeLimit(_ pixels: Int) -> String {
    pixels >= 1_000_000 && pixels % 1_000_000 == 0 ? "\(pixels) pixels (\(pixels / 1_000_000) MP)" : "\(pixels) pixels"
  }

  /// PNG bytes of an 8-bit grey, grey+alpha, RGB or RGBA image.
  public static func encodePNG(_ image: ByteImage) throws -> Data {
    var out: UnsafeMutablePointer<UInt8>?
    var size = 0
    var error = veil_codec_error()
    let status = image.pixels.withUnsafeBufferPointer { buf in
      veil_png_encode(
        buf.baseAddress, UInt32(image.width), UInt32(image.height), UInt32(image.channels), &out, &size, &error)
    }
    guard status == 0, let out else { throw DataError.encode(detail: message(error)) }
    defer { veil_codec_free(out) }
    return Data(bytes: out, count: size)
  }

  public static func writePNG(_ image: ByteImage, to url: URL) throws {
    let data = try encodePNG(image)
    do { try data.write(to: url) } catch {
      throw DataError.io(file: url.path, detail: "cannot write: \(error.localizedDescription)")
    }
  }

  static func message(_ error: veil_codec_error) -> String {
    withUnsafeBytes(of: error.message) { raw in
      String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
  }

  /// A whole file, inflated through zlib when it is gzip-compressed.
  static func readMaybeGzip(_ url: URL, maxBytes: Int = maxIDXBytes) throws -> [UInt8] {
    var bytes: UnsafeMutablePointer<UInt8>?
    var size = 0
    var error = veil_codec_error()
    guard veil_read_maybe_gzip(url.path, max(0, maxBytes), &bytes, &size, &error) == 0, let bytes else {
      throw DataError.io(file: url.path, detail: "\(message(error)) (after \(error.offset) bytes)")
    }
    defer { veil_codec_free(bytes) }
    return Array(UnsafeBufferPointer(start: bytes, count: size))
  }
}
