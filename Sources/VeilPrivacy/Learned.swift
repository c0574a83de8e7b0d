import Foundation
import VeilFormats
import VeilData
import VeilTensor
import VeilTrain

/// What a checkpoint must match to be resumed.
struct AttackIdentity: Codable, Equatable {
  var model: String
  var cut: String
  var headDigest: String
  var featureShape: [Int]
  var config: AttackConfig

  /// The attack a checkpoint was saved for (nil: no such file, or not a checkpoint of an
  /// attack).
  static func stored(in checkpoint: URL) -> AttackIdentity? {
    guard let text = (try? Safetensors.readFile(checkpoint))?.metadata[AttackTrainer.identityKey] else { return nil }
    return try? JSONDecoder().decode(AttackIdentity.self, from: Data(text.utf8))
  }

  /// Epochs may grow between runs (train further); every other option that decides this
  /// attacker must be the same.
  func compatible(with other: AttackIdentity) -> Bool {
    var a = self
    var b = other
    a.config = a.config.relevant
    b.config = b.config.relevant
    a.config.epochs = 0
    b.config.epochs = 0
    return a == b
  }
}

/// The generator (and for the c-GAN the discriminator) with their optimisers: the
/// learning-based attackers of pix2pix and He et al., one training loop for both.
public final class AttackTrainer {
  public let config: AttackConfig
  public let generator: InversionGenerator
  public let discriminator: PatchDiscriminator?
  let generatorOptimizer: Adam
  let discriminatorOptimizer: Adam?

  public init(featureShape: [Int], config: AttackConfig) throws {
    self.config = config
    generator = try InversionGenerator(
      featureShape: featureShape, imageSize: config.imageSize, width: config.generatorWidth, depth: config.generatorDepth,
      seed: config.seed)
    generatorOptimizer = try Adam(parameters: generator.parameters, learningRate: config.learningRate, beta1: config.beta1)
    if config.attacker == .cgan {
      let d = PatchDiscriminator(
        inputChannels: 3 + min(featureShape[0], config.discriminatorFeatureChannels), imageSize: config.imageSize,
        width: config.discriminatorWidth, seed: config.seed)
      discriminator = d
      discriminatorOptimizer = try Adam(parameters: d.parameters, learningRate: config.learningRate, beta1: config.beta1)
    } else {
      discriminator = nil
      discriminatorOptimizer = nil
    }
  }

  func generatorFile(_ dir: URL) -> URL { dir.appendingPathComponent(Self.generatorName) }
  static let generatorName = "checkpoint-g.safetensors"
  func discriminatorFile(_ dir: URL) -> URL { dir.appendingPathComponent("checkpoint-d.safetensors") }
  /// The generator of the epoch with the lowest validation loss.
  func bestFile(_ dir: URL) -> URL { dir.appendingPathComponent(Self.bestName) }
  static let bestName = "best-g.safetensors"

  static let identityKey = "veil.attack"
  static let stateKey = "veil.attack.stopping"

  /// Loads the last checkpoint in `dir`, if any; returns the stopping rule's state (empty: none).
  func resume(from dir: URL, identity: AttackIdentity) throws -> StoppingState {
    let gFile = generatorFile(dir)
    guard FileManager.default.fileExists(atPath: gFile.path) else { return StoppingState() }
    let meta = try Checkpoint.load(
      into: generator.parameters, batchNorms: generator.batchNorms, optimizer: generatorOptimizer, from: gFile)
    guard let text = meta[Self.identityKey], let stored = try? JSONDecoder().decode(AttackIdentity.self, from: Data(text.utf8)),
      let stateText = meta[Self.stateKey], let state = try? VeilJSON.decoder().decode(StoppingState.self, from: Data(stateText.utf8))
    else {
      throw PrivacyError.resume(file: gFile.path, detail: "not a checkpoint of this version of `veil attack`; use another --out folder or --fresh")
    }
    guard stored.compatible(with: identity) else {
      throw PrivacyError.resume(
        file: gFile.path,
        detail: "this folder holds an attack with other settings (\(stored.model) at \(stored.cut), \(stored.config.attacker), image size \(stored.config.imageSize), seed \(stored.config.seed), …); use another --out folder, or --fresh to start over")
    }
    if let d = discriminator, let opt = discriminatorOptimizer {
      try Checkpoint.load(into: d.parameters, batchNorms: d.batchNorms, optimizer: opt, from: discriminatorFile(dir))
    }
    return state
  }

  func save(to dir: URL, state: StoppingState, best: Bool, identity: AttackIdentity) throws {
    let meta = [
      Self.identityKey: String(decoding: try JSONEncoder().encode(identity), as: UTF8.self),
      Self.stateKey: String(decoding: try VeilJSON.encoder().encode(state), as: UTF8.self),
    ]
    if best {
      try atomically(bestFile(dir)) {
        try Checkpoint.save(parameters: generator.parameters, batchNorms: generator.batchNorms, metadata: meta, to: $0)
      }
    }
    // Discriminator first: the generator's file is what marks the epoch as finished.
    if let d = discriminator, let opt = discriminatorOptimizer {
      try atomically(discriminatorFile(dir)) {
        try Checkpoint.save(parameters: d.parameters, batchNorms: d.batchNorms, optimizer: opt, metadata: meta, to: $0)
      }
    }
    try atomically(generatorFile(dir)) {
      try Checkpoint.save(
        parameters: generator.parameters, batchNorms: generator.batchNorms, optimizer: generatorOptimizer, metadata: meta, to: $0)
    }
  }

  /// The generator with the best epoch's weights (when validation chose one).
  func loadBest(from dir: URL) throws {
    let file = bestFile(dir)
    guard FileManager.default.fileExists(atPath: file.path) else { return }
    try Checkpoint.load(into: generator.parameters, batchNorms: generator.batchNorms, from: file)
  }

  /// One optimisation step on a batch; returns the generator's total loss and the
  /// discriminator's loss (c-GAN).
  public func step(features: Tensor, images: Tensor, globalStep: Int, epoch: Int) throws -> (Double, Double?) {
    let fake = try generator(Variable(features))
    let reconstruction = config.loss == .l1 ? try l1Loss(fake, images) : try mseLoss(fake, images)
    try checkFinite(reconstruction, "reconstruction (\(config.loss.rawValue))", globalStep, epoch)
    guard let d = discriminator, let dOpt = discriminatorOptimizer else {
      generatorOptimizer.zeroGradients()
      try reconstruction.backward()
      try generatorOptimizer.step()
      return (Double(reconstruction.value.scalars[0]), nil)
    }
    let condition = discriminatorCondition(features, channels: config.discriminatorFeatureChannels, imageSize: config.imageSize)
    let conditionVar = Variable(condition)
    let realLabels = { (shape: [Int]) in Tensor(shape: shape, repeating: 1) }

    // Discriminator: real pairs → 1, generated pairs (detached) → 0, half each.
    dOpt.zeroGradients()
    let realLogits = try d(try concat([conditionVar, Variable(images)]))
    let fakeLogits = try d(try concat([conditionVar, Variable(fake.value)]))
    let dReal = try binaryCrossEntropyWithLogits(realLogits, realLabels(realLogits.shape))
    let dFake = try binaryCrossEntropyWithLogits(fakeLogits, Tensor(zeros: fakeLogits.shape))
    let dLoss = Double(dReal.value.scalars[0] + dFake.value.scalars[0]) / 2
    guard dLoss.isFinite else { throw nonFinite("discriminator", globalStep, epoch) }
    let half = Tensor(shape: [1], repeating: 0.5)
    try dReal.backward(seed: half)
    try dFake.backward(seed: half)
    try dOpt.step()

    // Generator: fool the (frozen) discriminator + λ·reconstruction.
    generatorOptimizer.zeroGradients()
    let judged = try d(try concat([conditionVar, fake]), frozen: true)
    let adversarial = try binaryCrossEntropyWithLogits(judged, realLabels(judged.shape))
    let total = try add(adversarial, try mul(reconstruction, Variable(Tensor(shape: [1], repeating: config.lambda))))
    try checkFinite(total, "generator", globalStep, epoch)
    try total.backward()
    try generatorOptimizer.step()
    return (Double(total.value.scalars[0]), dLoss)
  }

  func checkFinite(_ loss: Variable, _ what: String, _ step: Int, _ epoch: Int) throws {
    guard loss.value.scalars[0].isFinite else { throw nonFinite(what, step, epoch) }
  }

  func nonFinite(_ what: String, _ step: Int, _ epoch: Int) -> PrivacyError {
    .nonFiniteLoss(
      step: step, epoch: epoch, loss: what,
      advice: "Lower the learning rate (--lr, now \(config.learningRate))\(config.attacker == .cgan ? " or λ (--lambda, now \(config.lambda))" : ""); a rerun with the same --out resumes after the last finished epoch (\(epoch - 1)).")
  }

  /// The generator's images for `features` in evaluation mode (BatchNorm's running
  /// statistics), in batches.
  public func reconstruct(_ features: Tensor) throws -> Tensor {
    generator.setTraining(false)
    defer { generator.setTraining(true) }
    return try batched(features, batch: config.batch) { try generator(Variable($0)).value }
  }

  /// The mean L1 distance of the reconstructions of `features` to `images`.
  func validationLoss(features: Tensor, images: Tensor) throws -> Double {
    Double(try l1Loss(Variable(try reconstruct(features)), images).value.scalars[0])
  }
}

/// The c-GAN and the inverse network: trained on the training photos' (feature map, image)
/// pairs until the validation loss stops improving, then the best epoch's generator rebuilds
/// the held-out images.
struct LearnedAttacker: InversionAttacker {
  func run(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws -> AttackOutput {
    try train(inputs, progress: progress).output
  }

  /// Trains (or resumes) the generator in `inputs.outDir`; returns it, with the best epoch's
  /// weights loaded, and what it rebuilt of the held-out maps.
  func train(_ inputs: AttackInputs, progress: (AttackProgress) -> Void) throws -> (trainer: AttackTrainer, output: AttackOutput) {
    guard let train = inputs.train else { throw PrivacyError.invalidConfig("the \(inputs.config.attacker.rawValue) attacker needs training images") }
    let trainer = try AttackTrainer(featureShape: inputs.extractor.featureShape, config: inputs.config)
    var state = try trainer.resume(from: inputs.outDir, identity: inputs.identity)
    let resumedFrom = state.curve.last?.at ?? 0
    if resumedFrom > 0 { progress(.message("resuming after epoch \(resumedFrom) from \(inputs.outDir.path)")) }
    trainer.generator.setTraining(true)
    var lastD: Double?
    let loop = EpochLoop(config: inputs.config)
    let (seconds, steps) = try loop.run(
      count: train.features.shape[0], state: &state,
      step: { rows, globalStep, epoch in
        let r = try trainer.step(
          features: gather(train.features, rows), images: gather(train.images, rows), globalStep: globalStep, epoch: epoch)
        lastD = r.1 ?? lastD
        return r
      },
      validate: {
        guard let v = inputs.validation else { return nil }
        return try trainer.validationLoss(features: v.features, images: v.images)
      },
      checkpoint: { _, state, best in try trainer.save(to: inputs.outDir, state: state, best: best, identity: inputs.identity) },
      progress: progress)
    try trainer.loadBest(from: inputs.outDir)
    let rebuilt = try trainer.reconstruct(inputs.test.features)
    var notes: [String] = []
    if inputs.validation != nil, !state.converged {
      notes.append("the validation loss was still improving at the last epoch (\(state.curve.last?.at ?? 0)): train longer (--epochs) for a stronger attacker")
    }
    let output = AttackOutput(
      reconstructions: rebuilt, curve: state.curve, converged: state.converged, bestEpoch: state.bestEpoch > 0 ? state.bestEpoch : nil,
      epochsRun: (state.curve.last?.at ?? 0) - resumedFrom, resumedFrom: resumedFrom, trainSeconds: seconds,
      trainedImages: steps * inputs.config.batch, finalLoss: state.curve.last?.loss ?? .nan, discriminatorLoss: lastD,
      weights: [trainer.generatorFile(inputs.outDir).path] + (trainer.discriminator == nil ? [] : [trainer.discriminatorFile(inputs.outDir).path]),
      notes: notes)
    return (trainer, output)
  }
}
