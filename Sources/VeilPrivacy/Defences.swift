import Foundation
import VeilData
import VeilGraph
import VeilTensor
import VeilTrain

// Defences against the attackers who know them (adaptive attackers): the learning-based ones
// learn from defended maps (their own photos' maps pass through the same defence), the
// white-box optimisation differentiates through the defence: through its expectation for
// additive noise, straight through for quantisation, through the known mask for pruning.
// And the defence's price: the top-1 agreement of the defended model with the undefended one.

extension CutDefence {
  /// The white-box attacker's differentiable view of the defence on `features` ([N, C, h, w]).
  ///
  /// Additive noise n independent of the image: E‖f(x) + n − v‖² = ‖f(x) − v‖² + E‖n‖², so the
  /// expectation over the noise (what sampling it at every step estimates) is optimised exactly
  /// by matching the clean features to the observed noisy ones. Quantisation: the forward pass
  /// quantises (the attacker matches the quantised map), the gradient passes straight through.
  /// Pruning: the known mask, a constant factor.
  public func onTape(_ features: Variable) throws -> Variable {
    switch kind {
    case .gaussian, .laplace:
      return features
    case .quantise:
      var unused = SeededGenerator(seed: 0)
      let q = try apply(to: features.value, channelAxis: 1, using: &unused)
      let offset = try Kernels.zip(q, features.value, -)
      return try add(features, Variable(offset))
    case .prune:
      let c = features.shape[1]
      try checkFit(channels: c)
      var mask = [Float](repeating: 0, count: c)
      for ch in keptChannels! { mask[ch] = 1 }
      return try mul(features, Variable(try Tensor(shape: [1, c, 1, 1], values: mask)))
    }
  }
}

/// The defence of an attack: fitted to the held-out maps (the defender's own photos: only each
/// channel's statistics, which the attacker could estimate from the maps it sees anyway), then
/// applied to every map the attackers see, their own photos' included, with seeded noise.
struct AttackDefence {
  let defence: CutDefence
  let extractor: FeatureExtractor

  init(_ spec: CutDefence, heldOut: Tensor, extractor: FeatureExtractor) throws {
    defence = spec.isFitted ? spec : try extractor.fit(spec, maps: heldOut)
    self.extractor = extractor
  }

  func defend(_ pairs: FeaturePairs?, seed: UInt64, stream: UInt64) throws -> FeaturePairs? {
    guard var p = pairs else { return nil }
    var generator = SeededGenerator(seed: seed &* 0x2545_F491_4F6C_DD1D &+ stream &+ 0xDEFE)
    p.features = try extractor.defend(p.features, with: defence, using: &generator)
    return p
  }

  var note: String {
    var s = "the attackers saw maps defended by \(defence) and knew it"
    switch defence.kind {
    case .gaussian, .laplace: s += " (learning-based: trained on noisy maps; white-box: optimised the noise's expectation)"
    case .quantise: s += " (learning-based: trained on quantised maps; white-box: straight-through gradient)"
    case .prune: s += " (\(defence.keptChannels?.count ?? 0) channels kept; white-box: through the known mask)"
    }
    return s
  }
}

/// What a defence costs in utility and time at a cut.
public struct DefenceUtility: Codable, Sendable, Equatable {
  public var defence: String
  public var cut: String
  /// Images whose top-1 class under the defence is the undefended model's, and how many.
  public var agreement: Double
  public var images: Int
  /// The 95 % lower bound of the agreement (Wilson score interval).
  public var agreementLower: Double
  /// The defence's own time per map on this machine (median of the images), milliseconds.
  public var defenceMs: Double
  /// Bytes of one map as FP32, and as the defence can encode it.
  public var mapBytes: Int
  public var encodedBytes: Int
  /// Side of the images (the model's own input size).
  public var imageSize: Int
  /// Whether the tail was fine-tuned on defended maps (`veil plan --fine-tune-tail`; otherwise
  /// the tail is the model's own).
  public var tailFineTuned: Bool
  /// Where the images have labels (TON_IoT images): accuracy and macro-F1 of the defended
  /// model and of the undefended one on the same images.
  public var accuracy: Double?
  public var macroF1: Double?
  public var undefendedAccuracy: Double?
  public var undefendedMacroF1: Double?

  /// "top-1 agreement 0.972 (35 of 36 photos at 224 px; 95 % lower bound 0.87), tail not fine-tuned".
  public var summary: String {
    String(
      format: "top-1 agreement %.3f (%d of %d photos at %d px; 95%% lower bound %.3f), %@", agreement, Int((agreement * Double(images)).rounded()),
      images, imageSize, agreementLower, tailFineTuned ? "tail fine-tuned on defended maps" : "tail not fine-tuned")
      + (accuracy.map { a in
        String(
          format: "; with labels: accuracy %.3f (undefended %.3f), macro-F1 %.3f (undefended %.3f)", a, undefendedAccuracy ?? .nan,
          macroF1 ?? .nan, undefendedMacroF1 ?? .nan)
      } ?? "")
  }
}

/// Fine-tuning of the tail on defended maps by distillation: the tail (BatchNorm on its running
/// statistics, Dropout off) learns to give, on a crop's defended map, the logits the undefended
/// model gives on its clean map (squared error on the logits, Ba & Caruana 2014), so that no
/// labels are needed and the whole answer, not only its top class, is kept. Each epoch draws
/// fresh noise. Hard labels on a few hundred crops of a 1000-class model overfit: on
/// EfficientNet-Lite0's _blocks.4 with σ = 0.1 they cut the agreement on other photos from 1.0
/// to 0.33.
public struct TailFineTuning: Codable, Sendable, Equatable {
  public var epochs = 3
  public var cropsPerPhoto = 6
  public var batch = 16
  public var learningRate: Float = 1e-4
  public var seed: UInt64 = 0

  public init() {}

  public func validate() throws {
    guard (1...100).contains(epochs), (1...200).contains(cropsPerPhoto), (1...256).contains(batch), learningRate > 0,
      learningRate.isFinite
    else {
      throw PrivacyError.invalidConfig(
        "tail fine-tuning: epochs 1…100, crops per photo 1…200, batch 1…256 and a learning rate > 0, found \(epochs), \(cropsPerPhoto), \(batch), \(learningRate)")
    }
  }

  /// The tail of `model` after `cut`, fine-tuned on `images` (S×S crops of the defender's own
  /// photos, never the ones utility is measured on) defended by `defence` (fitted).
  public func tail(
    model: Graph, cut: CutPoint, defence: CutDefence, images: [ByteImage], imageSize: Int, preprocessing: InputPreprocessing,
    progress: (String) -> Void = { _ in }
  ) throws -> Graph {
    try validate()
    guard !images.isEmpty else { throw PrivacyError.data(source: "fine-tuning photos", detail: "no crops") }
    let extractor = try FeatureExtractor(
      model: model, cut: cut, imageSize: imageSize, batch: min(8, images.count), preprocessing: preprocessing)
    let maps = try extractor.features(images)
    var (_, tail) = try model.split(at: cut)
    try tail.inferShapes(inputShapes: [tail.inputs[0]: extractor.modelShape(batch: 1)])
    let layout = { (t: Tensor) in try extractor.modelTensor(t) }
    // The teacher: the model's own tail on the clean maps.
    let teacher = try Executor(graph: tail)
    let targets = try (0..<images.count).map { try teacher.run([layout(gather(maps, [$0]))])[0] }
    let student = try GraphModel(tail, seed: seed)
    student.training = false
    let adam = try Adam(parameters: student.parameters, learningRate: learningRate, backend: student.backend)
    var generator = SeededGenerator(seed: seed &+ 0x7A11)
    let n = images.count
    progress("fine-tuning the tail on the defended maps of \(n) crops (fresh noise each epoch), \(epochs) epochs")
    try withBlockReuse {
      for epoch in 1...epochs {
        let order = Array(0..<n).shuffled(using: &generator)
        var total = 0.0
        var steps = 0
        for start in stride(from: 0, to: n, by: batch) {
          let rows = Array(order[start..<min(n, start + batch)])
          let defended = try extractor.defend(gather(maps, rows), with: defence, using: &generator)
          let target = try stack(rows.map { targets[$0] })
          adam.zeroGradients()
          let logits = try student(Variable(layout(defended)))
          let loss = try mseLoss(logits, target)
          let value = Double(loss.value.scalars[0])
          guard value.isFinite else {
            throw PrivacyError.nonFiniteLoss(
              step: steps + 1, epoch: epoch, loss: "tail fine-tuning", advice: "Lower the fine-tuning learning rate (now \(learningRate)).")
          }
          try loss.backward()
          try adam.step()
          total += value
          steps += 1
        }
        progress(String(format: "fine-tuning: epoch %d of %d, logit error %.4f", epoch, epochs, total / Double(max(steps, 1))))
      }
    }
    var tuned = student.exportGraph()
    tuned.metadata["veil.fine-tuned"] = "distilled on defended maps (\(defence.spec)), \(epochs) epochs, \(n) crops"
    return tuned
  }
}

extension DefenceUtility {
  /// The top-1 agreement of `model` split at `cut` with `defence` on the maps against the
  /// undefended model (the same split, whose output equals the whole model's), on `images`
  /// (each `imageSize`×`imageSize`, the model's own input size). The defence is fitted to these
  /// images' maps first when it needs statistics; the fitted defence is returned with it.
  public static func measure(
    model: Graph, cut: CutPoint, defence: CutDefence, images: [ByteImage], imageSize: Int, preprocessing: InputPreprocessing,
    seed: UInt64 = 0, tunedTail: Graph? = nil, labels: (classes: Int, ofImage: [Int])? = nil
  ) throws -> (utility: DefenceUtility, fitted: CutDefence, channelAxis: Int) {
    guard !images.isEmpty else { throw PrivacyError.data(source: "utility images", detail: "none") }
    if let labels {
      guard labels.ofImage.count == images.count, labels.classes >= 2, labels.ofImage.allSatisfy({ (0..<labels.classes).contains($0) }) else {
        throw PrivacyError.data(
          source: "utility labels", detail: "\(labels.ofImage.count) labels in 0..<\(labels.classes) for \(images.count) images")
      }
    }
    let batch = min(8, images.count)
    let extractor = try FeatureExtractor(model: model, cut: cut, imageSize: imageSize, batch: batch, preprocessing: preprocessing)
    let maps = try extractor.features(images)
    let fitted = defence.isFitted ? defence : try extractor.fit(defence, maps: maps)
    var (_, tail) = try model.split(at: cut)
    guard let tailInput = tail.inputs.first, tail.inputs.count == 1 else {
      throw PrivacyError.cut(name: cut.name, detail: "the tail does not take the one crossing tensor")
    }
    let layoutShape = extractor.modelShape(batch: 1)
    try tail.inferShapes(inputShapes: [tailInput: layoutShape])
    let executor = try Executor(graph: tail)
    // The defended answer comes from the fine-tuned tail where there is one.
    var tuned = tunedTail
    if var t = tuned, let input = t.inputs.first {
      try t.inferShapes(inputShapes: [input: layoutShape])
      tuned = t
    }
    let defendedExecutor = try tuned.map { try Executor(graph: $0) } ?? executor
    var generator = SeededGenerator(seed: seed &+ 0x0717)
    var agree = 0
    var times: [Double] = []
    var clean: [Int] = []
    var defendedAnswers: [Int] = []
    for i in 0..<images.count {
      let one = gather(maps, [i])
      let started = DispatchTime.now()
      let defended = try extractor.defend(one, with: fitted, using: &generator)
      times.append(Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e6)
      func top1(_ map: Tensor, _ e: Executor) throws -> Int {
        let input = try extractor.modelTensor(map)
        let logits = try e.run([input])[0].scalars
        return logits.indices.max { logits[$0] < logits[$1] } ?? -1
      }
      clean.append(try top1(one, executor))
      defendedAnswers.append(try top1(defended, defendedExecutor))
      if clean.last == defendedAnswers.last { agree += 1 }
    }
    let n = Double(images.count)
    let p = Double(agree) / n
    // Wilson's lower bound at z = 1.645 (one-sided 95 %).
    let z = 1.645
    let lower = (p + z * z / (2 * n) - z * (p * (1 - p) / n + z * z / (4 * n * n)).squareRoot()) / (1 + z * z / n)
    let shape = layoutShape
    var metrics: (ClassificationMetrics, ClassificationMetrics)?
    if let labels {
      // An answer outside the label range counts as wrong (a model of other classes).
      let fit = { (p: [Int]) in p.map { (0..<labels.classes).contains($0) ? $0 : -1 } }
      metrics = (
        ClassificationMetrics(labels: labels.ofImage, predictions: fit(defendedAnswers), classes: labels.classes),
        ClassificationMetrics(labels: labels.ofImage, predictions: fit(clean), classes: labels.classes)
      )
    }
    var utility = DefenceUtility(
      defence: fitted.spec, cut: cut.name, agreement: p, images: images.count, agreementLower: max(0, lower),
      defenceMs: times.median, mapBytes: shape.reduce(1, *) * 4,
      encodedBytes: fitted.encodedBytes(shape: shape, channelAxis: extractor.defenceChannelAxis),
      imageSize: imageSize, tailFineTuned: tunedTail != nil)
    if let (defended, undefended) = metrics {
      (utility.accuracy, utility.macroF1) = (defended.accuracy, defended.macroF1)
      (utility.undefendedAccuracy, utility.undefendedMacroF1) = (undefended.accuracy, undefended.macroF1)
    }
    return (
      utility,
      fitted, extractor.defenceChannelAxis
    )
  }
}

extension FeatureExtractor {
  /// The axis of the model's crossing tensor that a defence treats as its channels, as the
  /// enclave applies it: 1 for [N, C, h, w], 3 for [N, h, w, C], 2 for a transformer's tokens
  /// [N, T, D] (each feature across every token).
  public var defenceChannelAxis: Int {
    switch featureLayout {
    case .channelsFirst: return 1
    case .channelsLast: return 3
    case .tokens: return 2
    }
  }

  /// `defence` fitted to the defender's maps, as the enclave will apply it (per token feature
  /// for tokens, per channel otherwise).
  public func fit(_ defence: CutDefence, maps: Tensor) throws -> CutDefence {
    guard case .tokens = featureLayout else { return try defence.fitted(to: maps) }
    return try defence.fitted(to: try modelTensor(maps), channelAxis: 2)
  }

  /// The maps the attackers see when the enclave defends the model's tensor with `defence`:
  /// for tokens the defence runs on the sequence, then the map is made of it; for maps with
  /// channels first or last it runs per channel of the map, the same thing.
  public func defend<G: RandomNumberGenerator>(_ maps: Tensor, with defence: CutDefence, using generator: inout G) throws -> Tensor {
    guard case .tokens = featureLayout else { return try defence.apply(to: maps, channelAxis: 1, using: &generator) }
    return try self.maps(fromModel: try defence.apply(to: try modelTensor(maps), channelAxis: 2, using: &generator))
  }

  /// The white-box attacker's differentiable view of `defence` on the head's maps (see
  /// `CutDefence.onTape`), for tokens through the sequence: quantisation's offset is the
  /// sequence's quantised and mapped back, pruning masks a feature's patch channel and its
  /// class-token channel.
  public func onTape(_ defence: CutDefence, _ features: Variable) throws -> Variable {
    guard case .tokens(_, let cls) = featureLayout else { return try defence.onTape(features) }
    switch defence.kind {
    case .gaussian, .laplace:
      return features
    case .quantise:
      var unused = SeededGenerator(seed: 0)
      let q = try defend(features.value, with: defence, using: &unused)
      return try add(features, Variable(try Kernels.zip(q, features.value, -)))
    case .prune:
      let c = featureShape[0]
      let d = cls ? c / 2 : c
      try defence.checkFit(channels: d)
      var mask = [Float](repeating: 0, count: c)
      for k in defence.keptChannels! {
        mask[k] = 1
        if cls { mask[d + k] = 1 }
      }
      return try mul(features, Variable(try Tensor(shape: [1, c, 1, 1], values: mask)))
    }
  }
}
