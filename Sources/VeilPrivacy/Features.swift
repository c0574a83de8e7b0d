import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

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

/// The head of a model up to a cut, rebuilt for S×S images and a batch, and the feature maps it
/// produces, as [N, C, h, w] whatever layout the model keeps them in.
public final class FeatureExtractor {
  public let cut: CutPoint
  public let imageSize: Int
  public let batch: Int
  public let inputLayout: TensorLayout
  /// 3 (RGB) or 1 (the images' luma).
  public let inputChannels: Int
  /// Per image, channels first: [C, h, w].
  public let featureShape: [Int]
  /// Whether the crossing tensor is channels-last ([N, h, w, C]) in the model.
  public let featureChannelsLast: Bool
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
  /// at 2S.
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
        throw PrivacyError.cut(
          name: cut.name, detail: "the head does not take \(s)×\(s) images (\(error)); try another --image-size or an earlier cut")
      }
      guard let out = g.shape(g.outputs[0]) else {
        throw PrivacyError.cut(name: cut.name, detail: "no shape for the cut tensor at \(s)×\(s)")
      }
      return (g, out)
    }
    let (sized, small) = try shapes(imageSize, batch)
    let (_, large) = try shapes(imageSize * 2, batch)
    guard small.count == 4 else {
      throw PrivacyError.cut(
        name: cut.name,
        detail: "its tensor is \(small) at \(imageSize)×\(imageSize): not a feature map [N, C, h, w]; the attackers rebuild images from spatial feature maps (cut before the flatten/pooling head)")
    }
    let grows = (1..<4).filter { small[$0] != large[$0] }
    let channelAxis: Int
    if grows == [2, 3] {
      channelAxis = 1
    } else if grows == [1, 2] {
      channelAxis = 3
    } else {
      throw PrivacyError.cut(
        name: cut.name, detail: "cannot tell the channel axis of its tensor (\(small) at \(imageSize) px, \(large) at \(2 * imageSize) px)")
    }
    self.cut = cut
    self.imageSize = imageSize
    self.batch = batch
    inputLayout = layout
    inputChannels = channels
    featureChannelsLast = channelAxis == 3
    featureShape = channelAxis == 1 ? Array(small[1...]) : [small[3], small[1], small[2]]
    self.preprocessing = preprocessing
    headDigest = Self.digest(sized)
    self.head = sized
    executor = try Executor(graph: sized)
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
      let (c, h, w) = (featureShape[0], featureShape[1], featureShape[2])
      y.withUnsafeBuffer { src in
        out.withUnsafeMutableBuffer { dst in
          for i in 0..<n {
            let o = dst.baseAddress! + (start + i) * per
            let f = src.baseAddress! + i * per
            if featureChannelsLast {
              for ch in 0..<c { for p in 0..<(h * w) { o[ch * h * w + p] = f[p * c + ch] } }
            } else {
              o.update(from: f, count: per)
            }
          }
        }
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
