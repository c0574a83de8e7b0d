import Foundation
import VeilTensor

/// Per-channel `(x − mean) / std` on the 0...255 scale, in the tensor's channel order. One
/// value applies to every channel.
public struct Normalization: Codable, Sendable, Equatable {
  public var mean: [Float]
  public var std: [Float]

  public init(mean: [Float], std: [Float]) {
    self.mean = mean
    self.std = std
  }

  /// The normalisation of a one-channel (luma) input: per-channel statistics combined with
  /// the ITU-R 601-2 luma weights; one-value statistics unchanged.
  public var luma: Normalization {
    func combine(_ v: [Float]) -> [Float] { v.count == 3 ? [Float(luma: v[0], v[1], v[2])] : [v[0]] }
    return Normalization(mean: combine(mean), std: combine(std))
  }

  /// Plain [0, 1]: x / 255.
  public static let unit = Normalization(mean: [0], std: [255])
  /// torchvision's ImageNet statistics: (x/255 − [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225].
  public static let imagenet = Normalization(
    mean: [0.485 * 255, 0.456 * 255, 0.406 * 255], std: [0.229 * 255, 0.224 * 255, 0.225 * 255])
  /// Caffe / Keras "caffe" mode: BGR channels minus [103.939, 116.779, 123.68], no scaling.
  public static let caffe = Normalization(mean: [103.939, 116.779, 123.68], std: [1])
  /// TensorFlow / Keras "tf" mode (Inception, MobileNet): (x − 127.5) / 127.5, in [−1, 1].
  public static let tensorflow = Normalization(mean: [127.5], std: [127.5])
  /// (x − 127) / 128, as the EfficientNet-Lite checkpoints expect.
  public static let tensorflowLite = Normalization(mean: [127], std: [128])
}

/// How a model wants a photo turned into its input tensor: resize the shorter side, crop the
/// centre, normalise, order the channels and lay the tensor out. Codable, so a model can
/// declare its own; the presets are the common conventions.
public struct Preprocessing: Codable, Sendable, Equatable {
  /// The shorter side is resized to this first (the longer keeps the aspect ratio); nil skips.
  public var resizeShorterSide: Int?
  /// Then the centre `cropHeight × cropWidth` is kept.
  public var cropWidth: Int
  public var cropHeight: Int
  public var interpolation: Interpolation
  public var normalization: Normalization
  public var channelOrder: ChannelOrder
  public var layout: TensorLayout

  public init(
    resizeShorterSide: Int?, cropWidth: Int, cropHeight: Int, interpolation: Interpolation,
    normalization: Normalization, channelOrder: ChannelOrder = .rgb, layout: TensorLayout = .nchw
  ) {
    self.resizeShorterSide = resizeShorterSide
    self.cropWidth = cropWidth
    self.cropHeight = cropHeight
    self.interpolation = interpolation
    self.normalization = normalization
    self.channelOrder = channelOrder
    self.layout = layout
  }

  /// The named conventions `veil run --preprocess` takes.
  public enum Preset: String, Codable, Sendable, CaseIterable {
    /// torchvision: resize 256, crop 224, bilinear, ImageNet mean/std, RGB.
    case imagenet
    /// Caffe: resize 256, crop 224, bilinear, BGR minus the ImageNet channel means.
    case caffe
    /// TensorFlow: resize 256, crop 224, bilinear, (x − 127.5) / 127.5.
    case tensorflow
    /// EfficientNet-Lite: resize 256, crop 224, bicubic, (x − 127) / 128.
    case tensorflowLite = "tensorflow-lite"
    /// Plain [0, 1]: resize 256, crop 224, bilinear, x / 255.
    case unit
  }

  /// A preset at the standard ImageNet evaluation geometry: the shorter side resized to
  /// round(crop × 256 / 224), then the centre crop.
  public init(preset: Preset, width: Int = 224, height: Int = 224, layout: TensorLayout = .nchw) {
    let shorter = Int((Double(min(width, height)) * 256 / 224).rounded())
    // The presets differ only in filter, normalisation and channel order: a table.
    let (interpolation, normalization, order): (Interpolation, Normalization, ChannelOrder) =
      switch preset {
      case .imagenet: (.bilinear, .imagenet, .rgb)
      case .caffe: (.bilinear, .caffe, .bgr)
      case .tensorflow: (.bilinear, .tensorflow, .rgb)
      case .tensorflowLite: (.bicubic, .tensorflowLite, .rgb)
      case .unit: (.bilinear, .unit, .rgb)
      }
    self.init(
      resizeShorterSide: shorter, cropWidth: width, cropHeight: height, interpolation: interpolation,
      normalization: normalization, channelOrder: order, layout: layout)
  }

  /// The geometric part: torchvision's `Resize(shorter)` (the longer side truncated to
  /// ⌊shorter × long / short⌋) then `CenterCrop` (offsets rounded half to even, as Python).
  /// The resized image may have at most `maxPixels` pixels: a thin photo (1 × 150 000) resized
  /// on its short side would otherwise ask for tens of gigabytes.
  public func geometry(_ image: ByteImage, maxPixels: Int = ImageCodec.defaultMaxPixels) throws -> ByteImage {
    guard cropWidth > 0, cropHeight > 0 else {
      throw DataError.invalidArgument("the crop must be positive, found \(cropWidth)×\(cropHeight)")
    }
    if let s = resizeShorterSide {
      guard s > 0 else { throw DataError.invalidArgument("resizeShorterSide must be positive, found \(s)") }
      let (short, long) = (min(image.width, image.height), max(image.width, image.height))
      // ⌊s × long / short⌋ without overflow; a size past Int is refused by the limit anyway.
      let (product, overflow) = s.multipliedReportingOverflow(by: long)
      let scaled = overflow ? Int.max : product / short
      let (w, h) = image.width <= image.height ? (s, scaled) : (scaled, s)
      if w != image.width || h != image.height {
        // Checked before the colour conversion so a refused photo costs nothing more; only the
        // centre crop of the resized image is computed.
        try image.checkResize(w, h, maxPixels: maxPixels)
        guard cropWidth <= w, cropHeight <= h else {
          throw DataError.invalidArgument(
            "centre crop \(cropWidth)×\(cropHeight) is larger than the \(w)×\(h) image")
        }
        let crop = (
          x: Self.centreOffset(w, cropWidth), y: Self.centreOffset(h, cropHeight), width: cropWidth, height: cropHeight
        )
        return try image.rgb().resizedAndCropped(
          width: w, height: h, interpolation: interpolation, crop: crop, maxPixels: maxPixels)
      }
    }
    return try image.rgb().centreCropped(width: cropWidth, height: cropHeight)
  }

  /// The model input for one photo, a batch of one.
  public func tensor(_ image: ByteImage, maxPixels: Int = ImageCodec.defaultMaxPixels) throws -> Tensor {
    try tensor(fromCropped: geometry(image, maxPixels: maxPixels))
  }

  /// The model input for a photo that `geometry` has already resized and cropped (RGB, the
  /// crop's size): the step left, to floats in the layout and channel order, normalised. The
  /// two steps may run on different machines (a client and an enclave); the result is the same.
  public func tensor(fromCropped image: ByteImage) throws -> Tensor {
    guard image.width == cropWidth, image.height == cropHeight, image.channels == 3 else {
      throw DataError.invalidArgument(
        "the cropped photo must be \(cropWidth)×\(cropHeight) RGB, found \(image.width)×\(image.height)×\(image.channels)")
    }
    return try image.tensor(layout: layout, order: channelOrder, normalization: normalization)
  }

  /// Where torchvision's `CenterCrop` starts a crop of `crop` in `size`: half the difference,
  /// rounded half to even as Python rounds.
  static func centreOffset(_ size: Int, _ crop: Int) -> Int {
    Int((Double(size - crop) / 2).rounded(.toNearestOrEven))
  }

  /// The tensor shape this produces.
  public var shape: [Int] { layout == .nchw ? [1, 3, cropHeight, cropWidth] : [1, cropHeight, cropWidth, 3] }
}

extension Image {
  /// The centre `width × height`, as torchvision's `CenterCrop` places it.
  public func centreCropped(width w: Int, height h: Int) throws -> Image {
    guard w <= width, h <= height else {
      throw DataError.invalidArgument("centre crop \(w)×\(h) is larger than the \(width)×\(height) image")
    }
    return try cropped(
      x: Preprocessing.centreOffset(width, w), y: Preprocessing.centreOffset(height, h), width: w, height: h)
  }

  /// A `width × height` crop at a position drawn from `generator`, uniform over the positions
  /// that fit.
  public func randomCropped(width w: Int, height h: Int, generator: inout SeededGenerator) throws -> Image {
    guard w <= width, h <= height else {
      throw DataError.invalidArgument("random crop \(w)×\(h) is larger than the \(width)×\(height) image")
    }
    let x = Int(generator.next() % UInt64(width - w + 1))
    let y = Int(generator.next() % UInt64(height - h + 1))
    return try cropped(x: x, y: y, width: w, height: h)
  }
}
