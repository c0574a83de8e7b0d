import Foundation
import VeilFormats
import VeilTensor
import VeilTrain

/// The black-box form of the optimisation attack: the attacker cannot differentiate the head,
/// but it can query it (send its own photos, observe their feature maps), so it trains a
/// substitute head on those pairs and optimises images through the substitute. The substitute
/// is a plain convolutional network with the head's geometry: a 3×3 stem, then per halving of
/// the image side a 4×4 stride-2 convolution and a 3×3 one (BatchNorm, LeakyReLU 0.2), widths doubling from
/// `substituteWidth` up to 8×; then a 1×1 convolution to the map's channels. It predicts the
/// map standardised per channel (the training maps' mean and spread), so no channel dominates.
final class SubstituteHead {
  let units: [ConvUnit]
  let output: ConvUnit
  let featureShape: [Int]

  init(featureShape: [Int], imageSize: Int, width: Int, seed: UInt64) throws {
    try InversionGenerator.check(featureShape: featureShape, imageSize: imageSize)
    self.featureShape = featureShape
    var g = SeededGenerator(seed: seed ^ 0x5B57)
    let halvings = (imageSize / featureShape[1]).trailingZeroBitCount
    var units: [ConvUnit] = []
    var channels = 3
    var w = width
    units.append(ConvUnit("s0", channels, w, kernel: 3, stride: 1, padding: 1, norm: true, activation: .leakyRelu, generator: &g))
    channels = w
    for k in 0..<halvings {
      let next = min(w * 2, 8 * width)
      units.append(
        ConvUnit("s\(k + 1)a", channels, next, kernel: 4, stride: 2, padding: 1, norm: true, activation: .leakyRelu, generator: &g))
      units.append(
        ConvUnit("s\(k + 1)b", next, next, kernel: 3, stride: 1, padding: 1, norm: true, activation: .leakyRelu, generator: &g))
      channels = next
      w = next
    }
    self.units = units
    output = ConvUnit("out", channels, featureShape[0], kernel: 1, stride: 1, padding: 0, norm: false, activation: .none, generator: &g)
  }

  func callAsFunction(_ x: Variable) throws -> Variable {
    var y = x
    for u in units { y = try u(y) }
    return try output(y)
  }

  var parameters: [Variable] { units.flatMap(\.parameters) + output.parameters }
  var batchNorms: [BatchNorm] { units.compactMap(\.norm) }
  func setTraining(_ on: Bool) { for n in batchNorms { n.training = on } }
}

/// Per-channel standardisation of feature maps [N, C, h, w] with the training maps' statistics.
struct ChannelStandardiser {
  let mean: [Float]
  let scale: [Float]

  init(_ t: Tensor) {
    let (n, c, plane) = (t.shape[0], t.shape[1], t.shape[2] * t.shape[3])
    var mean = [Float](repeating: 0, count: c)
    var scale = [Float](repeating: 1, count: c)
    t.withUnsafeBuffer { p in
      for ch in 0..<c {
        var s = 0.0
        var s2 = 0.0
        for i in 0..<n {
          for k in 0..<plane {
            let v = Double(p[(i * c + ch) * plane + k])
            s += v
            s2 += v * v
          }
        }
        let count = Double(n * plane)
        let m = s / count
        let sd = max(s2 / count - m * m, 0).squareRoot()
        mean[ch] = Float(m)
        scale[ch] = sd > 1e-6 ? Float(1 / sd) : 1
      }
    }
    self.mean = mean
    self.scale = scale
  }

  func apply(_ t: Tensor) -> Tensor {
    let (c, plane) = (t.shape[1], t.shape[2] * t.shape[3])
    return t.withUnsafeBuffer { p in
      Tensor(shape: t.shape) { d in
        for i in 0..<t.count {
          let ch = (i / plane) % c
          d[i] = (p[i] - mean[ch]) * scale[ch]
        }
      }
    }
  }
}

/// A substitute head trained (or resumed) from the attacker's queries: the head, the
/// standardisation of the maps it predicts, and its training's record.
struct TrainedSubstitute {
  let head: SubstituteHead
  let standardiser: ChannelStandardiser
  let state: StoppingState
  let seconds: Double
  let steps: Int
  let resumedFrom: Int
  let notes: [String]

  /// Its checkpoint and best weights in an attack's folder.
  static func files(in dir: URL) -> (last: URL, best: URL) {
    (dir.appendingPathComponent(AttackerKind.substitute.checkpointName!), dir.appendingPathComponent("best-substitute.safetensors"))
  }

  /// Trains the substitute head on `inputs.train`'s queries in `inputs.outDir` (resuming a
  /// checkpoint there), stopping by the validation rule, with the best epoch's weights loaded.
  init(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws {
    let config = inputs.config
    guard let train = inputs.train else { throw PrivacyError.invalidConfig("the \(config.attacker.rawValue) attacker needs training images to query the head with") }
    let standardiser = ChannelStandardiser(train.features)
    let targets = standardiser.apply(train.features)
    let substitute = try SubstituteHead(
      featureShape: inputs.extractor.featureShape, imageSize: config.imageSize, width: config.substituteWidth, seed: config.seed)
    let optimiser = try Adam(parameters: substitute.parameters, learningRate: 1e-3, beta1: 0.9)
    let (file, best) = Self.files(in: inputs.outDir)
    var state = StoppingState()
    if FileManager.default.fileExists(atPath: file.path) {
      let meta = try Checkpoint.load(into: substitute.parameters, batchNorms: substitute.batchNorms, optimizer: optimiser, from: file)
      guard let text = meta[AttackTrainer.identityKey],
        let stored = try? JSONDecoder().decode(AttackIdentity.self, from: Data(text.utf8)), stored.compatible(with: inputs.identity),
        let stateText = meta[AttackTrainer.stateKey], let s = try? VeilJSON.decoder().decode(StoppingState.self, from: Data(stateText.utf8))
      else {
        throw PrivacyError.resume(file: file.path, detail: "holds a substitute head trained under other settings; use another --out folder, or --fresh")
      }
      state = s
    }
    let resumedFrom = state.curve.last?.at ?? 0
    let validationTargets = inputs.validation.map { standardiser.apply($0.features) }
    substitute.setTraining(true)
    let loop = EpochLoop(config: config)
    let (seconds, steps) = try loop.run(
      count: train.images.shape[0], state: &state,
      step: { rows, globalStep, epoch in
        let loss = try mseLoss(try substitute(Variable(gather(train.images, rows))), gather(targets, rows))
        let value = Double(loss.value.scalars[0])
        guard value.isFinite else {
          throw PrivacyError.nonFiniteLoss(step: globalStep, epoch: epoch, loss: "substitute head (MSE)", advice: "Lower --epochs or use another seed; the substitute trains with Adam at 1e-3.")
        }
        optimiser.zeroGradients()
        try loss.backward()
        try optimiser.step()
        return (value, nil)
      },
      validate: {
        guard let v = inputs.validation, let t = validationTargets else { return nil }
        substitute.setTraining(false)
        defer { substitute.setTraining(true) }
        let predicted = try batched(v.images, batch: config.batch) { try substitute(Variable($0)).value }
        return Double(try mseLoss(Variable(predicted), t).value.scalars[0])
      },
      checkpoint: { _, state, isBest in
        let meta = [
          AttackTrainer.identityKey: String(decoding: try JSONEncoder().encode(inputs.identity), as: UTF8.self),
          AttackTrainer.stateKey: String(decoding: try VeilJSON.encoder().encode(state), as: UTF8.self),
        ]
        if isBest {
          try atomically(best) { try Checkpoint.save(parameters: substitute.parameters, batchNorms: substitute.batchNorms, metadata: meta, to: $0) }
        }
        try atomically(file) {
          try Checkpoint.save(parameters: substitute.parameters, batchNorms: substitute.batchNorms, optimizer: optimiser, metadata: meta, to: $0)
        }
      },
      progress: progress)
    if FileManager.default.fileExists(atPath: best.path) {
      try Checkpoint.load(into: substitute.parameters, batchNorms: substitute.batchNorms, from: best)
    }
    substitute.setTraining(false)
    progress(.message("substitute head trained (\(state.curve.count) epochs); optimising the held-out images through it"))
    var notes = [
      String(format: "substitute head: validation MSE %.4f of the standardised map at epoch %d", state.bestLoss, state.bestEpoch)
    ]
    if inputs.validation != nil, !state.converged { notes.append("the substitute head was still improving at the last epoch: train longer (--epochs)") }
    (head, self.standardiser, self.state, self.seconds, self.steps, self.resumedFrom, self.notes) =
      (substitute, standardiser, state, seconds, steps, resumedFrom, notes)
  }
}

/// The black-box optimisation attacker (see `SubstituteHead`).
struct SubstituteAttacker: InversionAttacker {
  func run(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws -> AttackOutput {
    let config = inputs.config
    let trained = try TrainedSubstitute(inputs, progress: progress)
    let started = Date()
    let outcome = try FeatureInversion(config).run(
      head: { try trained.head($0) }, targets: trained.standardiser.apply(inputs.test.features),
      imageShape: [3, config.imageSize, config.imageSize], progress: progress)
    let state = trained.state
    return AttackOutput(
      reconstructions: outcome.images, curve: state.curve, converged: state.converged,
      bestEpoch: state.bestEpoch > 0 ? state.bestEpoch : nil, epochsRun: (state.curve.last?.at ?? 0) - trained.resumedFrom,
      resumedFrom: trained.resumedFrom, trainSeconds: trained.seconds + Date().timeIntervalSince(started),
      trainedImages: trained.steps * config.batch, finalLoss: state.curve.last?.loss ?? .nan, discriminatorLoss: nil,
      weights: [TrainedSubstitute.files(in: inputs.outDir).last.path], notes: trained.notes)
  }
}
