import Foundation
import VeilData
import VeilFormats
import VeilTensor

/// The images of one attack: square RGB crops of photos, the training crops and the held-out
/// crops cut from disjoint sets of photos (crops of one photo never straddle the split).
public struct AttackImages: Sendable {
  public var imageSize: Int
  public var train: [ByteImage]
  public var test: [ByteImage]
  public var trainNames: [String]
  public var testNames: [String]
  public var trainPhotos: [String]
  public var testPhotos: [String]
  /// Where they came from, for reports.
  public var source: String

  public init(
    imageSize: Int, train: [ByteImage], test: [ByteImage], trainNames: [String], testNames: [String], trainPhotos: [String],
    testPhotos: [String], source: String
  ) {
    self.imageSize = imageSize
    self.train = train
    self.test = test
    self.trainNames = trainNames
    self.testNames = testNames
    self.trainPhotos = trainPhotos
    self.testPhotos = testPhotos
    self.source = source
  }

  /// The fewest photos an attack accepts: one to train on and one held out.
  public static let minimumPhotos = 2

  /// The recipe of `veil attack --data`: every PNG/JPEG under `folder` (any depth) is one
  /// photo; see `photos(_:)`.
  public static func folder(_ folder: URL, config: AttackConfig) throws -> AttackImages {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isDir), isDir.boolValue else {
      throw PrivacyError.data(source: folder.path, detail: "no such folder")
    }
    let files: [URL]
    do { files = try DataSet.imageFiles(under: folder) } catch {
      throw PrivacyError.data(source: folder.path, detail: "\(error)")
    }
    return try photos(files, config: config, source: folder.path)
  }

  /// Crops of `files`. The photos are shuffled with the seed and `testFraction` of them (at
  /// least one) are held out. Photos of any size and colour are accepted: greyscale is
  /// replicated to RGB, and each photo is resized (bilinear) to a small pyramid whose shorter
  /// sides are S·√2^j (j = 0…3, up to the photo's own size; a photo smaller than S is enlarged
  /// to S). A crop is a seeded random S×S window of a random level, mirrored half the time for
  /// training; the first held-out crop of a photo is the centre of its smallest level (the whole
  /// photo), the others seeded random windows. An image no larger than S×S (TON_IoT records
  /// from `veil data ton-iot`) gives one sample, itself resized to S, unmirrored. So the same
  /// files, options and seed always give the same crops.
  public static func photos(_ files: [URL], config: AttackConfig, source: String) throws -> AttackImages {
    try config.validate()
    guard files.count >= minimumPhotos else {
      throw PrivacyError.data(
        source: source,
        detail: "\(files.count) photo(s) found; an attack needs at least \(minimumPhotos) (photos to train on and held-out photos to score), better dozens")
    }
    let s = config.imageSize
    var order = Array(files.indices)
    var rng = SeededGenerator(seed: config.seed ^ 0x5EED_F11E)
    for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
    let nTest = min(files.count - 1, max(1, Int((Double(files.count) * config.testFraction).rounded())))
    let testSet = Set(order.prefix(nTest))
    var out = AttackImages(
      imageSize: s, train: [], test: [], trainNames: [], testNames: [], trainPhotos: [], testPhotos: [], source: source)
    for (p, url) in files.enumerated() {
      let photo: ByteImage
      do { photo = try ImageCodec.readUpright(url).rgb() } catch {
        throw PrivacyError.data(source: url.path, detail: "cannot read it as a photo (\(error))")
      }
      let pyramid = try levels(photo, size: s)
      let held = testSet.contains(p)
      // An image no larger than S (a TON_IoT record as an image, a thumbnail) has one view:
      // itself, never mirrored (a mirrored record is not a record).
      let whole = max(photo.width, photo.height) <= s
      let count = whole ? 1 : held ? config.testCropsPerPhoto : config.trainCropsPerPhoto
      var g = SeededGenerator(seed: config.seed ^ (UInt64(p + 1) &* 0x9E37_79B9_7F4A_7C15))
      for k in 0..<count {
        let crop: ByteImage
        if held && k == 0 {
          crop = try pyramid[0].centreCropped(width: s, height: s)
        } else {
          let level = pyramid[Int(g.next() % UInt64(pyramid.count))]
          crop = try level.randomCropped(width: s, height: s, generator: &g)
        }
        let flip = !held && !whole && g.next() % 2 == 1
        let name = "\(url.lastPathComponent)#\(k)"
        if held {
          out.test.append(crop)
          out.testNames.append(name)
        } else {
          out.train.append(flip ? crop.flippedHorizontally() : crop)
          out.trainNames.append(name)
        }
      }
      if held { out.testPhotos.append(url.path) } else { out.trainPhotos.append(url.path) }
    }
    return out
  }

  /// The photo resized so its shorter side is S·√2^j, j = 0…3, while that fits in the photo
  /// (at least the S level).
  static func levels(_ photo: ByteImage, size s: Int) throws -> [ByteImage] {
    let shorter = min(photo.width, photo.height)
    var out: [ByteImage] = []
    for j in 0..<4 {
      let side = Int((Double(s) * pow(2, Double(j) / 2)).rounded())
      guard j == 0 || side <= shorter else { break }
      let (w, h) = photo.width <= photo.height
        ? (side, max(side, side * photo.height / photo.width)) : (max(side, side * photo.width / photo.height), side)
      out.append(
        w == photo.width && h == photo.height
          ? photo : try photo.resized(width: w, height: h, interpolation: side < shorter ? .area : .bilinear))
    }
    return out
  }

  /// Where `scripts/prepare_photos.py` puts the registry-shipped photos (`--data photos`):
  /// beside the asset cache, `<cache>/photos`.
  public static var registryPhotosFolder: URL {
    AssetCache.directory.deletingLastPathComponent().appendingPathComponent("photos")
  }
}

extension ByteImage {
  /// The image on the generator's scale, [1, C, H, W] in [-1, 1].
  func signedTensor() throws -> Tensor {
    try tensor(layout: .nchw, order: .rgb, normalization: Normalization(mean: [127.5], std: [127.5]))
  }
}
