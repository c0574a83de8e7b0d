import Foundation
import VeilData
import VeilGraph
import VeilTensor
import VeilTrain

/// Trains an inversion attacker on the feature maps of `model` at `cut` and scores it on the
/// held-out photos: the library form of `veil attack`, and what the planner calls per cut.
///
/// Writes into `outDir`: `checkpoint-g.safetensors` (and `checkpoint-d.safetensors` for the
/// c-GAN) after every epoch, with the Adam state, so a rerun with the same options resumes after
/// the last finished epoch; `grid.png` (held-out originals above their reconstructions);
/// `result.json`. Features are cached in `cacheDirectory` (nil: not cached).
public func runAttack(
  model: Graph, modelName: String, cut: CutPoint, data: AttackImages, preprocessing: InputPreprocessing,
  config: AttackConfig, outDir: URL, cacheDirectory: URL? = FeatureExtractor.defaultCacheDirectory,
  progress: (AttackProgress) -> Void = { _ in }
) throws -> AttackResult {
  try config.validate()
  let t0 = Date()
  guard data.imageSize == config.imageSize else {
    throw PrivacyError.invalidConfig("the images are \(data.imageSize) px, the options say \(config.imageSize)")
  }
  guard data.train.count >= config.batch else {
    throw PrivacyError.data(
      source: data.source,
      detail: "\(data.train.count) training crops for batch \(config.batch): too small a data set; add photos, raise the crops per photo or lower the batch")
  }
  guard !data.test.isEmpty else { throw PrivacyError.data(source: data.source, detail: "no held-out images") }
  try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)

  // Features, once per image (cached across runs and attackers).
  let extractor = try FeatureExtractor(model: model, cut: cut, imageSize: config.imageSize, batch: 8, preprocessing: preprocessing)
  let total = data.train.count + data.test.count
  let (trainFeatures, c1) = try extractor.cachedFeatures(data.train, directory: cacheDirectory) {
    progress(.features(done: $0, total: total, cached: false))
  }
  let (testFeatures, c2) = try extractor.cachedFeatures(data.test, directory: cacheDirectory) {
    progress(.features(done: data.train.count + $0, total: total, cached: false))
  }
  progress(.features(done: total, total: total, cached: c1 && c2))
  let trainImages = try stack(data.train.map { try $0.signedTensor() })
  let testImages = try stack(data.test.map { try $0.signedTensor() })

  let trainer = try AttackTrainer(featureShape: extractor.featureShape, config: config)
  let identity = AttackIdentity(
    model: modelName, cut: cut.name, headDigest: extractor.headDigest, featureShape: extractor.featureShape, config: config)
  let resumedFrom = try trainer.resume(from: outDir, identity: identity)
  if resumedFrom > 0 { progress(.message("resuming after epoch \(resumedFrom) from \(outDir.path)")) }
  let (gLoss, dLoss, trainSeconds) = try trainer.train(
    features: trainFeatures, images: trainImages, fromEpoch: resumedFrom, outDir: outDir, identity: identity, progress: progress)

  // Held-out scores.
  let rebuilt = try trainer.reconstruct(testFeatures)
  var ssim: [Double] = []
  var psnr: [Double] = []
  let mean = meanImage(trainImages)
  var baseline: [Double] = []
  for i in 0..<data.test.count {
    let original = unitImage(testImages, i)
    let guess = unitImage(rebuilt, i)
    ssim.append(try SSIM.score(original, guess, names: (data.testNames[i], "its reconstruction")))
    psnr.append(try PSNR.score(original, guess, names: (data.testNames[i], "its reconstruction")))
    baseline.append(try SSIM.score(original, mean, names: (data.testNames[i], "the mean training image")))
  }
  let grid = outDir.appendingPathComponent("grid.png")
  try writeGrid(originals: testImages, rebuilt: rebuilt, ssim: ssim, count: config.gridImages, to: grid)

  let epochsRun = config.epochs - resumedFrom
  let ssimSummary = ScoreSummary(ssim)
  let result = AttackResult(
    model: modelName, cut: cut.name, featureShape: extractor.featureShape, attacker: config.attacker, config: config,
    ssim: ssimSummary, psnr: ScoreSummary(psnr), ssimUpperBound: ssimSummary.upperConfidenceBound,
    baselineSSIM: baseline.reduce(0, +) / Double(baseline.count), trainCount: data.train.count, heldOutCount: data.test.count,
    trainPhotos: data.trainPhotos.count, heldOutPhotos: data.testPhotos.count,
    imagesPerSecond: trainSeconds > 0 ? Double(epochsRun * trainer.stepsPerEpoch(data.train.count) * config.batch) / trainSeconds : 0,
    seconds: Date().timeIntervalSince(t0), epochsRun: epochsRun, resumedFromEpoch: resumedFrom, generatorLoss: gLoss,
    discriminatorLoss: dLoss, gridPath: grid.path, generatorWeightsPath: trainer.generatorFile(outDir).path,
    discriminatorWeightsPath: config.attacker == .cgan ? trainer.discriminatorFile(outDir).path : nil)
  try writeJSON(result, to: outDir.appendingPathComponent("result.json"))
  return result
}

/// What a checkpoint must match to be resumed.
struct AttackIdentity: Codable, Equatable {
  var model: String
  var cut: String
  var headDigest: String
  var featureShape: [Int]
  var config: AttackConfig

  /// Epochs may grow between runs (train further); every other option must be the same.
  func compatible(with other: AttackIdentity) -> Bool {
    var a = self
    var b = other
    a.config.epochs = 0
    b.config.epochs = 0
    return a == b
  }
}

/// The generator (and for the c-GAN the discriminator) with their optimisers, one training
/// loop for both attackers.
public final class AttackTrainer {
  public let config: AttackConfig
  public let generator: InversionGenerator
  public let discriminator: PatchDiscriminator?
  let generatorOptimizer: Adam
  let discriminatorOptimizer: Adam?

  public init(featureShape: [Int], config: AttackConfig) throws {
    self.config = config
    TrainingMemory.prepare()
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

  func generatorFile(_ dir: URL) -> URL { dir.appendingPathComponent("checkpoint-g.safetensors") }
  func discriminatorFile(_ dir: URL) -> URL { dir.appendingPathComponent("checkpoint-d.safetensors") }

  /// Steps per epoch: whole batches; a last partial batch of at least two images is kept.
  public func stepsPerEpoch(_ n: Int) -> Int {
    n / config.batch + (n % config.batch >= 2 ? 1 : 0)
  }

  /// Loads the last checkpoint in `dir`, if any; returns the epochs it had finished (0: none).
  func resume(from dir: URL, identity: AttackIdentity) throws -> Int {
    let gFile = generatorFile(dir)
    guard FileManager.default.fileExists(atPath: gFile.path) else { return 0 }
    let meta = try Checkpoint.load(
      into: generator.parameters, batchNorms: generator.batchNorms, optimizer: generatorOptimizer, from: gFile)
    guard let text = meta["veil.attack"], let stored = try? JSONDecoder().decode(AttackIdentity.self, from: Data(text.utf8)),
      let epoch = meta["veil.attack.epoch"].flatMap(Int.init)
    else {
      throw PrivacyError.resume(file: gFile.path, detail: "not a checkpoint of `veil attack`; use another --out folder or --fresh")
    }
    guard stored.compatible(with: identity) else {
      throw PrivacyError.resume(
        file: gFile.path,
        detail: "this folder holds an attack with other settings (\(stored.model) at \(stored.cut), \(stored.config.attacker), image size \(stored.config.imageSize), seed \(stored.config.seed), …); use another --out folder, or --fresh to start over")
    }
    if let d = discriminator, let opt = discriminatorOptimizer {
      try Checkpoint.load(into: d.parameters, batchNorms: d.batchNorms, optimizer: opt, from: discriminatorFile(dir))
    }
    return min(epoch, config.epochs)
  }

  func save(to dir: URL, epoch: Int, identity: AttackIdentity) throws {
    let text = String(decoding: try JSONEncoder().encode(identity), as: UTF8.self)
    let meta = ["veil.attack": text, "veil.attack.epoch": String(epoch)]
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

  /// Trains epochs `fromEpoch + 1 … config.epochs`; returns the last epoch's mean losses and the
  /// seconds spent in training steps.
  func train(
    features: Tensor, images: Tensor, fromEpoch: Int, outDir: URL, identity: AttackIdentity,
    progress: (AttackProgress) -> Void
  ) throws -> (Double, Double?, Double) {
    let n = features.shape[0]
    let steps = stepsPerEpoch(n)
    var lastG = Double.nan
    var lastD: Double? = nil
    var trainSeconds = 0.0
    let totalSteps = (config.epochs - fromEpoch) * steps
    var doneSteps = 0
    generator.setTraining(true)
    for epoch in (fromEpoch + 1)...max(config.epochs, fromEpoch + 1) where epoch <= config.epochs {
      let start = Date()
      var order = Array(0..<n)
      var rng = SeededGenerator(seed: config.seed &+ UInt64(epoch) &* 0x2545_F491_4F6C_DD1D)
      for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
      var sumG = 0.0
      var sumD = 0.0
      for step in 0..<steps {
        let rows = Array(order[(step * config.batch)..<min(n, (step + 1) * config.batch)])
        let f = gather(features, rows)
        let x = gather(images, rows)
        let globalStep = (epoch - 1) * steps + step + 1
        let (g, d) = try self.step(features: f, images: x, globalStep: globalStep, epoch: epoch)
        sumG += g
        sumD += d ?? 0
        doneSteps += 1
        let elapsed = trainSeconds + Date().timeIntervalSince(start)
        progress(
          .step(
            epoch: epoch, epochs: config.epochs, step: step + 1, steps: steps, generatorLoss: g, discriminatorLoss: d,
            etaSeconds: elapsed / Double(doneSteps) * Double(totalSteps - doneSteps)))
      }
      trainSeconds += Date().timeIntervalSince(start)
      lastG = sumG / Double(steps)
      lastD = discriminator == nil ? nil : sumD / Double(steps)
      try save(to: outDir, epoch: epoch, identity: identity)
      progress(.epochDone(epoch: epoch, epochs: config.epochs, generatorLoss: lastG, discriminatorLoss: lastD, seconds: Date().timeIntervalSince(start)))
    }
    return (lastG, lastD, trainSeconds)
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
    let n = features.shape[0]
    var parts: [Tensor] = []
    var start = 0
    while start < n {
      let rows = Array(start..<min(n, start + config.batch))
      parts.append(try generator(Variable(gather(features, rows))).value)
      start += rows.count
    }
    return try stack(parts)
  }
}

// MARK: - Helpers

/// Rows `rows` of a batch tensor, as a new batch.
func gather(_ t: Tensor, _ rows: [Int]) -> Tensor {
  let per = t.count / t.shape[0]
  return t.withUnsafeBuffer { src in
    Tensor(shape: [rows.count] + t.shape.dropFirst()) { dst in
      for (k, r) in rows.enumerated() {
        (dst.baseAddress! + k * per).update(from: src.baseAddress! + r * per, count: per)
      }
    }
  }
}

/// Batches joined along the first axis.
func stack(_ parts: [Tensor]) throws -> Tensor {
  guard let first = parts.first else { throw PrivacyError.invalidConfig("nothing to stack") }
  let tail = Array(first.shape.dropFirst())
  guard parts.allSatisfy({ Array($0.shape.dropFirst()) == tail }) else {
    throw PrivacyError.invalidConfig("batches of different shapes")
  }
  let n = parts.reduce(0) { $0 + $1.shape[0] }
  return Tensor(shape: [n] + tail) { dst in
    var offset = 0
    for p in parts {
      p.withUnsafeBuffer { (dst.baseAddress! + offset).update(from: $0.baseAddress!, count: $0.count) }
      offset += p.count
    }
  }
}

/// Image `i` of a [-1, 1] NCHW batch on SSIM's [0, 1] scale (clamped).
func unitImage(_ t: Tensor, _ i: Int) -> UnitImage {
  let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3])
  let per = c * h * w
  return t.withUnsafeBuffer { p in
    UnitImage(width: w, height: h, channels: c, samples: (0..<per).map { min(max((Double(p[i * per + $0]) + 1) / 2, 0), 1) })
  }
}

/// The mean of a [-1, 1] batch, as a [0, 1] image: the trivial attacker's answer.
func meanImage(_ t: Tensor) -> UnitImage {
  let n = t.shape[0]
  let per = t.count / n
  var sum = [Double](repeating: 0, count: per)
  t.withUnsafeBuffer { p in
    for i in 0..<n { for k in 0..<per { sum[k] += Double(p[i * per + k]) } }
  }
  return UnitImage(
    width: t.shape[3], height: t.shape[2], channels: t.shape[1], samples: sum.map { min(max(($0 / Double(n) + 1) / 2, 0), 1) })
}

func byteImage(_ u: UnitImage) throws -> ByteImage {
  let plane = u.width * u.height
  return try ByteImage(
    width: u.width, height: u.height, channels: u.channels,
    pixels: (0..<(plane * u.channels)).map { k in UInt8((u.samples[(k % u.channels) * plane + k / u.channels] * 255).rounded()) })
}

/// Originals in the first row, reconstructions (captioned with their SSIM) in the second, for
/// `count` held-out images spread over the set.
func writeGrid(originals: Tensor, rebuilt: Tensor, ssim: [Double], count: Int, to url: URL) throws {
  let n = originals.shape[0]
  let k = min(count, n)
  let picks = (0..<k).map { $0 * n / k }
  var items: [(image: ByteImage, caption: String)] = []
  for i in picks { items.append((try byteImage(unitImage(originals, i)), "#\(i)")) }
  for i in picks { items.append((try byteImage(unitImage(rebuilt, i)), String(format: "%.2f", ssim[i]))) }
  try ImageCodec.writePNG(try ImageGrid.make(items, tile: max(originals.shape[3], 48), columns: k), to: url)
}

/// Writes through a temporary file and a rename, so an interrupted run never leaves half a file.
func atomically(_ url: URL, _ write: (URL) throws -> Void) throws {
  let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
  try write(tmp)
  _ = try? FileManager.default.removeItem(at: url)
  try FileManager.default.moveItem(at: tmp, to: url)
}

func writeJSON<T: Encodable>(_ value: T, to url: URL) throws {
  let e = JSONEncoder()
  e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
  e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
  try atomically(url) { try e.encode(value).write(to: $0) }
}
