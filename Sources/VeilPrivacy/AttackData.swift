import Foundation
import VeilData
import VeilFormats
import VeilTensor

/// The images of one attack: square RGB crops of photos, cut from three disjoint sets of
/// photos (crops of one photo never straddle a split): the training crops the learning-based
/// attackers learn from, the validation crops their stopping rule reads, and the held-out crops
/// every attacker is scored on.
public struct AttackImages: Sendable {
  public var imageSize: Int
  public var train: [ByteImage]
  public var validation: [ByteImage]
  public var test: [ByteImage]
  public var trainNames: [String]
  public var validationNames: [String]
  public var testNames: [String]
  /// The source photo of each held-out image: the cluster its score belongs to.
  public var testSources: [String]
  /// Which crop of its photo each held-out image is (0: the whole photo).
  public var testCropIndices: [Int]
  public var trainPhotos: [String]
  public var validationPhotos: [String]
  public var testPhotos: [String]
  /// Where they came from, for reports.
  public var source: String

  public init(imageSize: Int, source: String) {
    self.imageSize = imageSize
    self.source = source
    (train, validation, test) = ([], [], [])
    (trainNames, validationNames, testNames, testSources, testCropIndices) = ([], [], [], [], [])
    (trainPhotos, validationPhotos, testPhotos) = ([], [], [])
  }

  /// The fewest photos an attack that learns accepts: one to train on and one held out.
  public static let minimumPhotos = 2

  /// The recipe of `veil attack --data`: every PNG/JPEG under `folder` (any depth) is one
  /// photo; see `photos(_:config:source:training:)`. With `trainingFolder`, the attackers learn
  /// from every photo there and `folder` is all held out.
  public static func folder(_ folder: URL, config: AttackConfig, trainingFolder: URL? = nil) throws -> AttackImages {
    func files(_ folder: URL) throws -> [URL] {
      var isDir: ObjCBool = false
      guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isDir), isDir.boolValue else {
        throw PrivacyError.data(source: folder.path, detail: "no such folder")
      }
      do { return try DataSet.imageFiles(under: folder) } catch {
        throw PrivacyError.data(source: folder.path, detail: "\(error)")
      }
    }
    let training = try trainingFolder.map(files)
    let source = folder.path + (trainingFolder.map { " (attackers trained on \($0.path))" } ?? "")
    return try photos(try files(folder), config: config, source: source, training: training)
  }

  /// Crops of `files`. Without `training`, the photos are shuffled with the seed and
  /// `testFraction` of them (at least one) are held out, then `validationFraction` of the rest
  /// (at least one when three or more remain) kept for the stopping rule; with `training`,
  /// every file of `files` is held out and the attackers learn from `training`. Photos of any
  /// size and colour are accepted: greyscale is replicated to RGB, and each photo is resized
  /// (bilinear) to a small pyramid whose shorter sides are S·√2^j (j = 0…3, up to the photo's
  /// own size; a photo smaller than S is enlarged to S). A training crop is a seeded random S×S
  /// window of a random level, mirrored half the time; the first held-out (or validation) crop
  /// of a photo is the centre of its smallest level (the whole photo), the others seeded random
  /// windows. An image no larger than S×S (TON_IoT records from `veil data ton-iot`) gives one
  /// sample, itself resized to S, unmirrored. So the same files, options and seed always give
  /// the same crops.
  public static func photos(_ files: [URL], config: AttackConfig, source: String, training: [URL]? = nil) throws
    -> AttackImages
  {
    try config.validate()
    let learns = config.attacker.needsTrainingData
    let needed = learns && training == nil ? minimumPhotos : 1
    guard files.count >= needed else {
      throw PrivacyError.data(
        source: source,
        detail: "\(files.count) photo(s) found; \(learns ? "an attack that learns needs at least \(minimumPhotos) (photos to train on and held-out photos to score), better dozens" : "the attack needs at least one photo to rebuild")")
    }
    if let training, learns, training.isEmpty {
      throw PrivacyError.data(source: source, detail: "the training folder holds no photos")
    }
    var rng = SeededGenerator(seed: config.seed ^ 0x5EED_F11E)
    func shuffled(_ n: Int) -> [Int] {
      var order = Array(0..<n)
      for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
      return order
    }
    // Every photo gets a role; roles are drawn before any photo is read.
    enum Role { case train, validation, test }
    var all = files
    var roles: [Role]
    if let training {
      all = files + training
      roles = Array(repeating: .test, count: files.count) + Array(repeating: .train, count: training.count)
    } else {
      let order = shuffled(files.count)
      let nTest = config.testFraction >= 1
        ? files.count : min(files.count - 1, max(1, Int((Double(files.count) * config.testFraction).rounded())))
      roles = Array(repeating: .train, count: files.count)
      for i in order.prefix(nTest) { roles[i] = .test }
    }
    let trainIndices = roles.indices.filter { roles[$0] == .train }
    if learns, config.validationFraction > 0, trainIndices.count >= 3 {
      let nValidation = min(trainIndices.count - 1, max(1, Int((Double(trainIndices.count) * config.validationFraction).rounded())))
      for k in shuffled(trainIndices.count).prefix(nValidation) { roles[trainIndices[k]] = .validation }
    }
    if !learns { roles = roles.map { $0 == .test ? .test : .train } }

    let s = config.imageSize
    var out = AttackImages(imageSize: s, source: source)
    for (p, url) in all.enumerated() {
      let role = roles[p]
      let photo: ByteImage
      do { photo = try ImageCodec.readUpright(url).rgb() } catch {
        throw PrivacyError.data(source: url.path, detail: "cannot read it as a photo (\(error))")
      }
      let pyramid = try levels(photo, size: s)
      let held = role != .train
      // An image no larger than S (a TON_IoT record as an image, a thumbnail) has one view:
      // itself, never mirrored (a mirrored record is not a record).
      let whole = max(photo.width, photo.height) <= s
      // The optimisation attack learns nothing; its own photos only calibrate its prior, whole.
      let count = whole || (!learns && role == .train) ? 1 : held ? config.testCropsPerPhoto : config.trainCropsPerPhoto
      var g = SeededGenerator(seed: config.seed ^ (UInt64(p + 1) &* 0x9E37_79B9_7F4A_7C15))
      for k in 0..<count {
        let crop: ByteImage
        if (held || !learns) && k == 0 {
          crop = try pyramid[0].centreCropped(width: s, height: s)
        } else {
          let level = pyramid[Int(g.next() % UInt64(pyramid.count))]
          crop = try level.randomCropped(width: s, height: s, generator: &g)
        }
        let flip = !held && !whole && learns && g.next() % 2 == 1
        let name = "\(url.lastPathComponent)#\(k)"
        switch role {
        case .test:
          out.test.append(crop)
          out.testNames.append(name)
          out.testSources.append(url.path)
          out.testCropIndices.append(k)
        case .validation:
          out.validation.append(crop)
          out.validationNames.append(name)
        case .train:
          out.train.append(flip ? crop.flippedHorizontally() : crop)
          out.trainNames.append(name)
        }
      }
      switch role {
      case .test: out.testPhotos.append(url.path)
      case .validation: out.validationPhotos.append(url.path)
      case .train: out.trainPhotos.append(url.path)
      }
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

  /// The held-out images that are among the first `crops` crops of their photo (1: the whole
  /// photos only).
  public func heldOut(cropsPerPhoto crops: Int) -> AttackImages {
    var out = self
    let keep = testCropIndices.indices.filter { testCropIndices[$0] < crops }
    out.test = keep.map { test[$0] }
    out.testNames = keep.map { testNames[$0] }
    out.testSources = keep.map { testSources[$0] }
    out.testCropIndices = keep.map { testCropIndices[$0] }
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
