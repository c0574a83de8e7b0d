import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

// What a reconstruction gives away, measured per held-out image. SSIM and PSNR say how close
// the pixels are (the paper's measures); recognition and re-identification say whether the
// content leaks even when the pixels do not match; field recovery says how much of a tabular
// record (TON_IoT) an image gives back. Every measure is "higher leaks more".

/// What a measure sees: originals and reconstructions, [N, 3, S, S] on the [-1, 1] scale.
public struct MeasureInput {
  public var originals: Tensor
  public var reconstructions: Tensor
  /// The trivial attacker's answer, [1, 3, S, S]: the mean training image.
  public var baseline: Tensor
  public var names: [String]

  public init(originals: Tensor, reconstructions: Tensor, baseline: Tensor, names: [String]) {
    self.originals = originals
    self.reconstructions = reconstructions
    self.baseline = baseline
    self.names = names
  }
}

/// A measure of leakage per held-out image.
public protocol LeakageMeasure: Sendable {
  var name: String { get }
  /// Scores are 0 or 1 (a share of images): its bound uses a binomial floor.
  var binary: Bool { get }
  /// One score per image; higher means more leaks.
  func scores(_ input: MeasureInput) throws -> [Double]
}

/// One measure's scores of one attack.
public struct MeasureScores: Codable, Sendable, Equatable {
  public var name: String
  public var binary: Bool
  /// Each held-out image's score with its source photo and the attack's seed.
  public var samples: [ScoredImage]
  public var mean: Double
  /// The mean score of the trivial attacker (the mean training image for every image).
  public var baseline: Double
  /// The mean with its one-sided 95 % bound, clustered by photo.
  public var estimate: LeakageEstimate

  public var perImage: [Double] { samples.map(\.score) }

  public init(name: String, binary: Bool, samples: [ScoredImage], baseline: Double) {
    self.name = name
    self.binary = binary
    self.samples = samples
    mean = samples.isEmpty ? .nan : samples.map(\.score).reduce(0, +) / Double(samples.count)
    self.baseline = baseline
    estimate = LeakageEstimate(samples, binary: binary)
  }
}

/// The measures an attack is scored with.
public struct MeasureSet: Sendable {
  public var measures: [any LeakageMeasure]

  public init(_ measures: [any LeakageMeasure]) { self.measures = measures }

  /// SSIM and PSNR.
  public static let pixels = MeasureSet([SSIMMeasure.make(), PSNRMeasure.make()])

  public var names: [String] { measures.map(\.name) }

  /// Every measure's scores of `reconstructions`, and of the trivial attacker's.
  public func score(
    originals: Tensor, reconstructions: Tensor, baseline: Tensor, names: [String], sources: [String], seed: UInt64
  ) throws -> [MeasureScores] {
    let n = originals.shape[0]
    let repeated = try stack(Array(repeating: baseline, count: n))
    let input = MeasureInput(originals: originals, reconstructions: reconstructions, baseline: baseline, names: names)
    var trivial = input
    trivial.reconstructions = repeated
    return try measures.map { m in
      let s = try m.scores(input)
      let b = try m.scores(trivial)
      return MeasureScores(
        name: m.name, binary: m.binary, samples: zip(s, sources).map { ScoredImage(score: $0, photo: $1, seed: seed) },
        baseline: b.reduce(0, +) / Double(max(b.count, 1)))
    }
  }
}

/// A measure that compares each reconstruction with its original pixel by pixel.
public struct PixelMeasure: LeakageMeasure {
  public let name: String
  public var binary: Bool { false }
  let compare: @Sendable (UnitImage, UnitImage, (String, String)) throws -> Double

  public func scores(_ input: MeasureInput) throws -> [Double] {
    try (0..<input.originals.shape[0]).map { i in
      try compare(unitImage(input.originals, i), unitImage(input.reconstructions, i), (input.names[i], "its reconstruction"))
    }
  }
}

/// SSIM (REFERENCES.md's configuration, `SSIM.score`) of each reconstruction.
public enum SSIMMeasure {
  public static let name = "ssim"
  public static func make() -> PixelMeasure { PixelMeasure(name: name) { try SSIM.score($0, $1, names: $2) } }
}

/// PSNR (dB) of each reconstruction; reported, with no threshold by default (the paper's
/// threshold is on SSIM).
public enum PSNRMeasure {
  public static let name = "psnr"
  public static func make() -> PixelMeasure { PixelMeasure(name: name) { try PSNR.score($0, $1, names: $2) } }
}

/// A reference ImageNet classifier that Veil runs on originals and reconstructions alike:
/// each image (8-bit, as a saved reconstruction would be) is resized to the classifier's
/// input (bilinear) and normalised as the classifier expects. Gives the class scores and the
/// penultimate layer (the pooled features before the classifier), the embedding that
/// re-identification compares.
public final class ReferenceClassifier: @unchecked Sendable {
  public let name: String
  let executor: Executor
  let size: Int
  let batch: Int
  let normalization: Normalization
  let order: ChannelOrder
  /// Its large weight tensors (shape, sum and sum of squares of each), to tell when a model
  /// under evaluation holds this classifier's weights.
  let fingerprints: Set<String>
  private let lock = NSLock()

  /// `graph` is a classifier whose output comes from a Gemm (after pooling and flattening);
  /// its input [1, 3, S, S].
  public init(name: String, graph: Graph, normalization: Normalization, order: ChannelOrder = .rgb, batch: Int = 8) throws {
    var g = try batch == 1 ? graph : graph.withBatch(batch)
    guard let output = g.outputs.first, let input = g.inputs.first, let shape = g.shape(input), shape.count == 4, shape[1] == 3,
      shape[2] == shape[3]
    else {
      throw PrivacyError.measure(name: "recognition", detail: "the reference classifier '\(name)' does not take [N, 3, S, S] images")
    }
    let producers = g.producers()
    var v = output
    var embedding: ValueID?
    while let i = producers[v] {
      let node = g.nodes[i]
      if case .gemm = node.op {
        embedding = node.inputs[0]
        break
      }
      if case .matMul = node.op {
        embedding = node.inputs[0]
        break
      }
      v = node.inputs[0]
    }
    guard let embedding else {
      throw PrivacyError.measure(name: "re-identification", detail: "the reference classifier '\(name)' has no Gemm/MatMul classifier to take the penultimate layer from")
    }
    g.outputs = [output, embedding]
    self.name = name
    fingerprints = Self.weightFingerprints(graph)
    executor = try Executor(graph: g)
    size = shape[2]
    self.batch = batch
    self.normalization = normalization
    self.order = order
  }

  /// Whether `model` holds at least half of this classifier's large weight tensors (the
  /// classifier itself, or a model built on its backbone). This classifier is then no
  /// independent judge of that model's reconstructions: a white-box attacker that matches the
  /// model's features makes this classifier see what the model sees, whether or not a person
  /// would recognise the image, and the class the network computes is what the tail computes
  /// on the accelerator anyway.
  public func isPart(of model: Graph) -> Bool { isPart(ofWeights: Self.weightFingerprints(model)) }

  /// `isPart(of:)` with the model's fingerprints already taken (`weightFingerprints`).
  func isPart(ofWeights model: Set<String>) -> Bool {
    !fingerprints.isEmpty && fingerprints.intersection(model).count * 2 >= fingerprints.count
  }

  /// A fingerprint per weight tensor of 1,000 elements or more.
  static func weightFingerprints(_ graph: Graph) -> Set<String> {
    var out = Set<String>()
    for t in graph.initializers.values where t.count >= 1000 {
      var sum = 0.0
      var squares = 0.0
      t.withUnsafeBuffer { p in
        for v in p {
          sum += Double(v)
          squares += Double(v) * Double(v)
        }
      }
      out.insert("\(t.shape) \(sum) \(squares)")
    }
    return out
  }

  /// EfficientNet-Lite0 with its real ImageNet weights from the asset cache (`make assets`).
  public static func efficientNetLite0(batch: Int = 8) throws -> ReferenceClassifier {
    let file = "efficientnet-lite0-57934424.pth"
    guard let url = AssetCache.file(file) else {
      throw PrivacyError.measure(name: "recognition", detail: AssetCache.missingAdvice(file))
    }
    let graph = try ModelLoader.load(url.path)
    let t = try ModelZoo.info("efficientnet_lite0").transform
    return try ReferenceClassifier(
      name: "EfficientNet-Lite0 (ImageNet weights)", graph: graph, normalization: Normalization(mean: t.pixelMean, std: t.pixelStd),
      batch: batch)
  }

  /// Class scores [N][classes] and embeddings [N][d] of images [N, 3, S, S] in [-1, 1].
  public func run(_ images: Tensor) throws -> (logits: [[Float]], embeddings: [[Float]]) {
    lock.lock()
    defer { lock.unlock() }
    let n = images.shape[0]
    var logits: [[Float]] = []
    var embeddings: [[Float]] = []
    var start = 0
    while start < n {
      let count = min(batch, n - start)
      let plane = 3 * size * size
      let x = try Tensor(shape: [batch, 3, size, size]) { dst in
        for k in 0..<count {
          let t = try byteImage(images, start + k).resized(width: size, height: size, interpolation: .bilinear)
            .tensor(layout: .nchw, order: order, normalization: normalization)
          t.withUnsafeBuffer { (dst.baseAddress! + k * plane).update(from: $0.baseAddress!, count: plane) }
        }
      }
      let out = try executor.run([x])
      for (list, t) in [(0, out[0]), (1, out[1])] {
        let per = t.count / batch
        t.withUnsafeBuffer { p in
          for k in 0..<count {
            let row = Array(p[(k * per)..<((k + 1) * per)])
            if list == 0 { logits.append(row) } else { embeddings.append(row) }
          }
        }
      }
      start += count
    }
    return (logits, embeddings)
  }
}

extension Tensor {
  /// A tensor filled by a throwing closure.
  fileprivate init(shape: [Int], throwing fill: (UnsafeMutableBufferPointer<Float>) throws -> Void) throws {
    var failure: Error?
    self.init(shape: shape) { p in
      do { try fill(p) } catch { failure = error }
    }
    if let failure { throw failure }
  }
}

/// A measure judged by a reference classifier.
public protocol ClassifierMeasure: LeakageMeasure {
  static var name: String { get }
  var classifier: ReferenceClassifier { get }
}

extension ClassifierMeasure {
  public var name: String { Self.name }
  /// A share of images: each reconstruction is recognised (re-identified) or not.
  public var binary: Bool { true }
}

extension MeasureSet {
  /// The measures whose reference classifier is part of `model`, each with why it cannot be
  /// a threshold for that model (see `ReferenceClassifier.isPart(of:)`).
  public func dependent(on model: Graph) -> [String: String] {
    var out: [String: String] = [:]
    let classifierMeasures = measures.compactMap { $0 as? any ClassifierMeasure }
    guard !classifierMeasures.isEmpty else { return out }
    // The model's weights are read once, however many measures share a classifier.
    let weights = ReferenceClassifier.weightFingerprints(model)
    for m in classifierMeasures where m.classifier.isPart(ofWeights: weights) {
      out[m.name] =
        "its reference classifier (\(m.classifier.name)) is the model under evaluation, so it cannot judge that model's reconstructions independently"
    }
    return out
  }
}

/// Recognition: the share of reconstructions whose top-5 classes under the reference
/// classifier contain the original's top-1 class. Content leaks when a classifier still tells
/// what the photo shows, whatever the pixels' SSIM.
public struct RecognitionMeasure: ClassifierMeasure {
  public static let name = "recognition"
  public let classifier: ReferenceClassifier
  public init(classifier: ReferenceClassifier) { self.classifier = classifier }

  public func scores(_ input: MeasureInput) throws -> [Double] {
    let originals = try classifier.run(input.originals).logits
    let rebuilt = try classifier.run(input.reconstructions).logits
    return zip(originals, rebuilt).map { o, r in
      let top1 = o.indices.max { o[$0] < o[$1] } ?? 0
      let top5 = r.indices.sorted { r[$0] > r[$1] }.prefix(5)
      return top5.contains(top1) ? 1 : 0
    }
  }
}

/// Re-identification: the share of reconstructions whose nearest original among the held-out
/// set, by cosine distance of the reference classifier's penultimate features, is their own
/// image (chance: one over the held-out images).
public struct ReidentificationMeasure: ClassifierMeasure {
  public static let name = "reidentification"
  public let classifier: ReferenceClassifier
  public init(classifier: ReferenceClassifier) { self.classifier = classifier }

  public func scores(_ input: MeasureInput) throws -> [Double] {
    func unit(_ v: [Float]) -> [Float] {
      let norm = max(v.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
      return v.map { $0 / norm }
    }
    let gallery = try classifier.run(input.originals).embeddings.map(unit)
    let queries = try classifier.run(input.reconstructions).embeddings.map(unit)
    return queries.enumerated().map { i, q in
      var best = -Float.infinity
      var match = -1
      for (j, g) in gallery.enumerated() {
        var dot: Float = 0
        for k in 0..<min(q.count, g.count) { dot += q[k] * g[k] }
        // Ties go to another image: a reconstruction that matches everything equally (the
        // mean image) re-identifies nobody.
        if dot > best || (dot == best && j != i) {
          best = dot
          match = j
        }
      }
      return match == i ? 1 : 0
    }
  }
}
