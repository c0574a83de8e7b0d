/// VeilData: the data layer — images, data sets and TON_IoT network records as images.
///
/// Owns image decoding and encoding (PNG and JPEG through Debian's libpng and libjpeg-turbo in
/// the `CImageCodecs` C module), the `Image` type and its transforms (Pillow-exact resizing,
/// crops, flips, channel order, layouts, normalisation presets, `Preprocessing`), data set
/// sources (class folders, flat folders with a labels file, IDX files, random crops of large
/// photos) with deterministic splits and a bounded prefetching loader, and the TON_IoT network
/// CSV reader with its fitted vector-to-image transform. It depends only on VeilTensor and the C
/// codecs, and must not import VeilGraph, VeilFormats, VeilModels or anything above them:
/// models declare their transform (`ModelInfo.transform`, the ONNX file's `preprocess.*`
/// metadata), which callers turn into a `Preprocessing`; models are not known here.
import Foundation

/// Everything that can go wrong in the data layer, with the file, line or byte a user needs.
public enum DataError: Error, CustomStringConvertible, Equatable {
  /// A file could not be read or written.
  case io(file: String, detail: String)
  /// An image file is corrupt, truncated or not the format its contents claim.
  case decode(file: String, format: String, offset: Int, detail: String)
  /// An image that decoded but that this operation cannot take (channel count, size).
  case unsupportedImage(file: String, detail: String)
  /// An image, or the image a resize would make, has more pixels than the caller's limit
  /// (`ImageCodec.defaultMaxPixels` unless given): the file may be fine, it is refused to bound
  /// memory and time. The message says the size, the limit and what to do.
  case tooLarge(file: String, detail: String)
  /// PNG encoding failed.
  case encode(detail: String)
  /// A caller passed a value outside what the operation accepts.
  case invalidArgument(String)
  /// A folder or file that should have held samples held none.
  case empty(path: String, detail: String)
  /// An IDX file (MNIST format) whose header or length is wrong.
  case idx(file: String, offset: Int, detail: String)
  /// A labels file line that does not name a file and a label.
  case labels(file: String, line: Int, detail: String)
  /// A CSV row that does not parse; `line` is the 1-based line where the record starts.
  case csv(file: String, line: Int, detail: String)
  /// A saved TON_IoT transform that cannot be used.
  case transform(file: String, detail: String)

  public var description: String {
    switch self {
    case .io(let file, let detail): return "\(file): \(detail)"
    case .decode(let file, let format, let offset, let detail):
      return "\(file): corrupt or truncated \(format) at byte \(offset): \(detail)"
    case .unsupportedImage(let file, let detail): return "\(file): \(detail)"
    case .tooLarge(let file, let detail): return "\(file): \(detail)"
    case .encode(let detail): return "PNG encoding failed: \(detail)"
    case .invalidArgument(let detail): return detail
    case .empty(let path, let detail): return "\(path): \(detail)"
    case .idx(let file, let offset, let detail): return "\(file): IDX file, byte \(offset): \(detail)"
    case .labels(let file, let line, let detail): return "\(file):\(line): \(detail)"
    case .csv(let file, let line, let detail): return "\(file):\(line): \(detail)"
    case .transform(let file, let detail): return "\(file): TON_IoT transform: \(detail)"
    }
  }
}
