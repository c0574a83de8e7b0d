import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import VeilTrain

/// How an image becomes the model's input: the normalisation (on the 0…255 scale) and colour
/// order of the model's own preprocessing. The geometry is the attack's: S×S crops.
public struct InputPreprocessing: Codable, Sendable, Equatable {
  public var name: String
  public var normalization: Normalization
  public var channelOrder: ChannelOrder

  public init(name: String, normalization: Normalization, channelOrder: ChannelOrder) {
    self.name = name
    self.normalization = normalization
    self.channelOrder = channelOrder
  }
}

extension InputPreprocessing {
  /// The preprocessing of a model: `preset` when given; else a zoo architecture's own transform
  /// (the model's name or `metadata["architecture"]`, set for state_dict files); else ImageNet's.
  public static func forModel(_ name: String, graph: Graph, preset: VeilData.Preprocessing.Preset?) throws -> InputPreprocessing {
    let architecture = graph.metadata["architecture"] ?? name
    if preset == nil, ModelZoo.names.contains(architecture) {
      let t = try ModelZoo.info(architecture).transform
      return InputPreprocessing(
        name: "\(architecture)'s own", normalization: Normalization(mean: t.pixelMean, std: t.pixelStd), channelOrder: .rgb)
    }
    let chosen = preset ?? .imagenet
    let p = VeilData.Preprocessing(preset: chosen)
    return InputPreprocessing(name: chosen.rawValue, normalization: p.normalization, channelOrder: p.channelOrder)
  }
}

/// How the tensor crossing a cut is laid out in the model, and so how it becomes the
/// channels-first map [C, h, w] the attackers see.
public enum CutTensorLayout: Sendable, Equatable {
  /// [N, C, h, w].
  case channelsFirst
  /// [N, h, w, C] (a Keras export).
  case channelsLast
  /// A vision transformer's tokens [N, T, D]: the patch tokens of a grid × grid image in row
  /// order, after the class token when there is one (T = grid² + 1).
  ///
  /// The attackers see [D, grid, grid] of the patch tokens, and with a class token D more
  /// channels holding it at every position divided by the grid side, so that the map's
  /// squared distances are exactly the sequence's: ‖map(f) − map(v)‖² = ‖f − v‖² (the class
  /// token's grid² copies of (f₀ − v₀)/grid add up to (f₀ − v₀)²). The white-box optimisation's
  /// objective on the map is therefore its objective on the sequence itself, and the learning
  /// attackers get the class token everywhere.
  case tokens(grid: Int, classToken: Bool)

  /// The tensor's shape in the model for a map of `shape` [C, h, w] and `n` images.
  func modelShape(map shape: [Int], batch n: Int) -> [Int] {
    let (c, h, w) = (shape[0], shape[1], shape[2])
    switch self {
    case .channelsFirst: return [n, c, h, w]
    case .channelsLast: return [n, h, w, c]
    case .tokens(let g, let cls): return [n, g * g + (cls ? 1 : 0), cls ? c / 2 : c]
    }
  }
}

/// The head of a model up to a cut, rebuilt for S×S images and a batch, and the feature maps it
/// produces, as [N, C, h, w] whatever layout the model keeps them in (`CutTensorLayout`).
public final class FeatureExtractor {
  public let cut: CutPoint
  public let imageSize: Int
  public let batch: Int
  public let inputLayout: TensorLayout
  /// 3 (RGB) or 1 (the images' luma).
  public let inputChannels: Int
  /// Per image, channels first: [C, h, w] (for tokens, the map `CutTensorLayout.tokens` says).
  public let featureShape: [Int]
  /// How the crossing tensor is laid out in the model.
  public let featureLayout: CutTensorLayout
  public let preprocessing: InputPreprocessing
  /// A 128-bit digest of the head's weights and structure: the cache key's model part.
  public let headDigest: String
  /// The head, its shapes inferred for [batch, C, S, S] (or NHWC).
  public let head: Graph
  let executor: Executor

  /// Splits `model` at `cut` and re-infers the head's shapes for [batch, C, S, S] (or NHWC,
  /// following where the model's input keeps its channels; C is 3, or 1 for greyscale models
  /// such as small-cnn on TON_IoT images, which are fed the images' luma). The feature map's
  /// channel axis is the one that does not grow with the image: shapes are inferred at S and
  /// at 2S. A rank-3 tensor is a transformer's tokens [N, T, D] (a head with a position
  /// embedding takes its own image size only).
  public init(model: Graph, cut: CutPoint, imageSize: Int, batch: Int, preprocessing: InputPreprocessing) throws {
    let (head, _) = try model.split(at: cut)
    guard let input = head.inputs.first, head.inputs.count == 1, let original = head.shape(input), original.count == 4,
      [1, 3].contains(original[1]) || [1, 3].contains(original[3])
    else {
      throw PrivacyError.cut(
        name: cut.name,
        detail: "the model's input is not one image batch of 3 (or 1) channels ([N,C,H,W] or [N,H,W,C])")
    }
    let layout: TensorLayout = [1, 3].contains(original[1]) ? .nchw : .nhwc
    let channels = layout == .nchw ? original[1] : original[3]
    func shapes(_ s: Int, _ n: Int) throws -> (Graph, [Int]) {
      var g = head
      let shape = layout == .nchw ? [n, channels, s, s] : [n, s, s, channels]
      do { try g.inferShapes(inputShapes: [input: shape]) } catch {
        let native = layout == .nchw ? original[2] : original[1]
        let hint = s != native ? " (the model's own input is \(native)×\(native): try --image-size \(native))" : ""
        throw PrivacyError.cut(
          name: cut.name,
          detail: "the head does not take \(s)×\(s) images (\(error))\(hint); try another --image-size or an earlier cut")
      }
      guard let out = g.shape(g.outputs[0]) else {
        throw PrivacyError.cut(name: cut.name, detail: "no shape for the cut tensor at \(s)×\(s)")
      }
      return (g, out)
    }
    let (sized, small) = try shapes(imageSize, batch)
    let featureShape: [Int]
    let featureLayout: CutTensorLayout
    if small.count == 3 {
      // Tokens [N, T, D]: T = g² patches, after a class token when T − 1 is the square.
      let (t, d) = (small[1], small[2])
      func root(_ v: Int) -> Int? {
        let r = Int(Double(v).squareRoot().rounded())
        return r >= 1 && r * r == v ? r : nil
      }
      if let g = root(t - 1) {
        (featureShape, featureLayout) = ([2 * d, g, g], .tokens(grid: g, classToken: true))
      } else if let g = root(t) {
        (featureShape, featureLayout) = ([d, g, g], .tokens(grid: g, classToken: false))
      } else {
        throw PrivacyError.cut(
          name: cut.name,
          detail: "its tensor is \(small): \(t) tokens are neither a square grid of patches nor one with a class token in front")
      }
    } else {
      guard small.count == 4 else {
        throw PrivacyError.cut(
          name: cut.name,
          detail: "its tensor is \(small) at \(imageSize)×\(imageSize): not a feature map [N, C, h, w] or tokens [N, T, D]; the attackers rebuild images from spatial feature maps (cut before the flatten/pooling head)")
      }
      let (_, large) = try shapes(imageSize * 2, batch)
      let grows = (1..<4).filter { small[$0] != large[$0] }
      if grows == [2, 3] {
        (featureShape, featureLayout) = (Array(small[1...]), .channelsFirst)
      } else if grows == [1, 2] {
        (featureShape, featureLayout) = ([small[3], small[1], small[2]], .channelsLast)
      } else {
        throw PrivacyError.cut(
          name: cut.name, detail: "cannot tell the channel axis of its tensor (\(small) at \(imageSize) px, \(large) at \(2 * imageSize) px)")
      }
    }
    self.cut = cut
    self.imageSize = imageSize
    self.batch = batch
    inputLayout = layout
    inputChannels = channels
    self.featureShape = featureShape
    self.featureLayout = featureLayout
    self.preprocessing = preprocessing
    headDigest = Self.digest(sized)
    self.head = sized
    executor = try Executor(graph: sized)
  }

  /// The crossing tensor's shape in the model for `n` images.
  public func modelShape(batch n: Int) -> [Int] { featureLayout.modelShape(map: featureShape, batch: n) }

  /// Maps [N, C, h, w] as the model holds the crossing tensor (the tail's input).
  public func modelTensor(_ maps: Tensor) throws -> Tensor {
    let n = maps.shape[0]
    switch featureLayout {
    case .channelsFirst: return maps
    case .channelsLast: return try transpose(Variable(maps), [0, 2, 3, 1]).value
    case .tokens(let g, let cls):
      let d = cls ? featureShape[0] / 2 : featureShape[0]
      let t = g * g + (cls ? 1 : 0)
      return maps.withUnsafeBuffer { m in
        Tensor(shape: [n, t, d]) { out in
          for i in 0..<n {
            let map = m.baseAddress! + i * featureShape.reduce(1, *)
            let seq = out.baseAddress! + i * t * d
            let first = cls ? 1 : 0
            for k in 0..<d {
              for p in 0..<(g * g) { seq[(first + p) * d + k] = map[k * g * g + p] }
              // The class token, back from any position of its channels (there: token / g).
              if cls { seq[k] = map[(d + k) * g * g] * Float(g) }
            }
          }
        }
      }
    }
  }

  /// The model's crossing tensor [n, ...] (`modelShape`) as maps [n, C, h, w].
  public func maps(fromModel t: Tensor) throws -> Tensor {
    let n = t.shape[0]
    guard t.shape == modelShape(batch: n) else {
      throw PrivacyError.cut(name: cut.name, detail: "a tensor \(t.shape) is not the cut's \(modelShape(batch: n))")
    }
    var out = Tensor(uninitialized: [n] + featureShape)
    t.withUnsafeBuffer { src in out.withUnsafeMutableBuffer { dst in maps(src, count: n, into: dst.baseAddress!) } }
    return out
  }

  /// The model's crossing tensor [n, ...] as maps [n, C, h, w] (`CutTensorLayout`).
  func maps(_ y: UnsafeBufferPointer<Float>, count n: Int, into dst: UnsafeMutablePointer<Float>) {
    let per = featureShape.reduce(1, *)
    let (c, h, w) = (featureShape[0], featureShape[1], featureShape[2])
    for i in 0..<n {
      let o = dst + i * per
      switch featureLayout {
      case .channelsFirst:
        o.update(from: y.baseAddress! + i * per, count: per)
      case .channelsLast:
        let f = y.baseAddress! + i * per
        for ch in 0..<c { for p in 0..<(h * w) { o[ch * h * w + p] = f[p * c + ch] } }
      case .tokens(let g, let cls):
        let d = cls ? c / 2 : c
        let t = g * g + (cls ? 1 : 0)
        let seq = y.baseAddress! + i * t * d
        let first = cls ? 1 : 0
        for k in 0..<d {
          for p in 0..<(g * g) { o[k * g * g + p] = seq[(first + p) * d + k] }
          if cls { for p in 0..<(g * g) { o[(d + k) * g * g + p] = seq[k] / Float(g) } }
        }
      }
    }
  }

  static func digest(_ g: Graph) -> String {
    var h = ContentDigest()
    for n in g.nodes { h.update("\(n.name)|\(n.op)|\(n.inputs)|\(n.outputs)\n") }
    for v in g.initializers.keys.sorted() {
      h.update(g[v].name)
      g.initializers[v]!.withUnsafeBuffer { h.update(UnsafeRawBufferPointer($0)) }
    }
    return h.hex
  }

  /// The features of `images` (each S×S), computed in batches of `batch` (the last one padded),
  /// [N, C, h, w].
  public func features(_ images: [ByteImage], progress: (Int) -> Void = { _ in }) throws -> Tensor {
    let per = featureShape.reduce(1, *)
    let s = imageSize
    var out = Tensor(zeros: [images.count] + featureShape)
    let plane = s * s * inputChannels
    var start = 0
    while start < images.count {
      let n = min(batch, images.count - start)
      let inputShape = inputLayout == .nchw ? [batch, inputChannels, s, s] : [batch, s, s, inputChannels]
      var x = Tensor(zeros: inputShape)
      try x.withUnsafeMutableBuffer { dst in
        for i in 0..<n {
          let img = images[start + i]
          guard img.width == s, img.height == s else {
            throw PrivacyError.data(source: "image \(start + i)", detail: "is \(img.width)×\(img.height), not \(s)×\(s)")
          }
          let t = try (inputChannels == 1 ? img.grey() : img.rgb()).tensor(
            layout: inputLayout, order: inputChannels == 1 ? .rgb : preprocessing.channelOrder,
            normalization: inputChannels == 1 ? preprocessing.normalization.luma : preprocessing.normalization)
          t.withUnsafeBuffer { src in (dst.baseAddress! + i * plane).update(from: src.baseAddress!, count: plane) }
        }
      }
      let y = try executor.run([x])[0]
      y.withUnsafeBuffer { src in
        out.withUnsafeMutableBuffer { dst in maps(src, count: n, into: dst.baseAddress! + start * per) }
      }
      start += n
      progress(start)
    }
    return out
  }

  /// The features of `images`, read from `directory` when an earlier run stored them under the
  /// same key (head digest, cut, preprocessing, image size, and the images' own pixels), else
  /// computed and stored there. Returns whether the cache answered.
  public func cachedFeatures(_ images: [ByteImage], directory: URL?, progress: (Int) -> Void = { _ in }) throws
    -> (features: Tensor, cached: Bool)
  {
    guard let directory else { return (try features(images, progress: progress), false) }
    var h = ContentDigest()
    h.update("\(headDigest)|\(cut.tensor)|\(imageSize)|\(preprocessing)|\(images.count)")
    for img in images { img.pixels.withUnsafeBytes { h.update($0) } }
    let key = h.hex
    let file = directory.appendingPathComponent("\(key).npy")
    if FileManager.default.fileExists(atPath: file.path), let t = try? NPY.read(file),
      t.shape == [images.count] + featureShape
    {
      progress(images.count)
      return (t, true)
    }
    let t = try features(images, progress: progress)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let tmp = directory.appendingPathComponent("\(key).npy.tmp-\(getpid())")
    try NPY.write(t, to: tmp)
    _ = try? FileManager.default.removeItem(at: file)
    try FileManager.default.moveItem(at: tmp, to: file)
    return (t, false)
  }

  /// The default feature cache: `<cache>/features`, beside the asset cache.
  public static var defaultCacheDirectory: URL {
    AssetCache.directory.deletingLastPathComponent().appendingPathComponent("features")
  }
}

extension Graph {
  /// The cut named `name`: as `cut(named:)` finds it, or else the one cut whose name contains
  /// `name` (so `block1_pool` finds `functional_1/block1_pool_1/MaxPool2d` in an imported graph).
  public func attackCut(named name: String) throws -> CutPoint {
    do { return try cut(named: name) } catch {
      let all = try candidateCuts(all: true)
      let structural = try candidateCuts()
      for list in [structural, all] {
        let matches = list.filter { $0.name.contains(name) }
        if matches.count == 1 { return matches[0] }
        if matches.count > 1 {
          throw PrivacyError.cut(
            name: name, detail: "matches \(matches.count) cuts (\(matches.map(\.name).joined(separator: ", "))); give one of them whole")
        }
      }
      throw PrivacyError.cut(
        name: name, detail: "not a cut point of '\(self.name)'. Cut points: \(structural.map(\.name).joined(separator: ", "))")
    }
  }
}

/// A 128-bit content digest for cache keys (two FNV-1a-64 lanes with different offsets over
/// 8-byte words): it tells inputs apart, it is not a cryptographic hash and guards against no
/// adversary (the cache is the user's own).
struct ContentDigest {
  private var a: UInt64 = 0xcbf2_9ce4_8422_2325
  private var b: UInt64 = 0x84222325_cbf29ce4
  private static let prime: UInt64 = 0x0000_0100_0000_01b3

  mutating func update(_ bytes: UnsafeRawBufferPointer) {
    var i = 0
    while i + 8 <= bytes.count {
      let w = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
      a = (a ^ w) &* Self.prime
      b = (b ^ (w &+ 0x9E37_79B9_7F4A_7C15)) &* Self.prime
      b ^= b >> 29
      i += 8
    }
    while i < bytes.count {
      a = (a ^ UInt64(bytes[i])) &* Self.prime
      b = (b ^ UInt64(bytes[i])) &* Self.prime
      i += 1
    }
    // The length, so that inputs differing only in trailing zeros differ.
    a = (a ^ UInt64(bytes.count)) &* Self.prime
  }

  mutating func update(_ s: String) {
    var s = s
    s.withUTF8 { update(UnsafeRawBufferPointer($0)) }
  }

  var hex: String { String(format: "%016llx%016llx", a, b) }
}
