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
public enum ImageCodec {
  /// Decodes PNG or JPEG bytes; `name` is what errors call the file.
  public static func decode(_ data: Data, name: String) throws -> DecodedImage {
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
    let status = bytes.withUnsafeBufferPointer { buf in
      format == .png
        ? veil_png_decode(buf.baseAddress, buf.count, &out, &error)
        : veil_jpeg_decode(buf.baseAddress, buf.count, &out, &error)
    }
    guard status == 0, let raw = out.pixels else {
      throw DataError.decode(file: name, format: format.rawValue, offset: error.offset, detail: message(error))
    }
    defer { veil_codec_free(raw) }
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
  public static func read(_ url: URL) throws -> DecodedImage {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw DataError.io(file: url.path, detail: "cannot read: \(error.localizedDescription)")
    }
    return try decode(data, name: url.path)
  }

  /// An 8-bit image turned upright by its EXIF orientation (JPEG), as models expect photos.
  public static func readUpright(_ url: URL) throws -> ByteImage {
    let d = try read(url)
    return d.byteImage().oriented(exif: d.orientation)
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
  static func readMaybeGzip(_ url: URL) throws -> [UInt8] {
    var bytes: UnsafeMutablePointer<UInt8>?
    var size = 0
    var error = veil_codec_error()
    guard veil_read_maybe_gzip(url.path, &bytes, &size, &error) == 0, let bytes else {
      throw DataError.io(file: url.path, detail: "\(message(error)) (after \(error.offset) bytes)")
    }
    defer { veil_codec_free(bytes) }
    return Array(UnsafeBufferPointer(start: bytes, count: size))
  }
}
