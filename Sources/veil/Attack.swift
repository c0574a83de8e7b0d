import ArgumentParser
import Foundation
import VeilData
import VeilGraph
import VeilPrivacy
import VeilTensor

/// Options `veil attack` and `veil privacy` share: the data, the attacker and its training.
struct AttackOptions: ParsableArguments {
  @Option(
    help: ArgumentHelp(
      "A folder of photos (PNG/JPEG, any depth), or 'photos': the registry-shipped photos that scripts/prepare_photos.py gathers.",
      valueName: "folder|photos"))
  var data: String
  @Option(help: "cgan (pix2pix conditional GAN) or inverse (the same generator on the reconstruction loss alone).")
  var attacker: AttackerKind = .cgan
  @Option(help: "Side of the square images; a power of two so every cut's map divides it.")
  var imageSize: Int = 64
  @Option(help: "Training epochs (a rerun with more resumes and trains further).")
  var epochs: Int = AttackConfig().epochs
  @Option(help: "Images per training step.")
  var batch: Int = AttackConfig().batch
  @Option(help: "Seed of the split, crops, weights and shuffling.")
  var seed: UInt64 = 0
  @Option(help: "Adam's learning rate (β1 0.5, β2 0.999).")
  var lr: Float = AttackConfig().learningRate
  @Option(help: "Weight λ of the reconstruction loss against the adversarial loss (c-GAN).")
  var lambda: Float = AttackConfig().lambda
  @Option(help: "Reconstruction loss: l1 or mse.")
  var loss: ReconstructionLoss = .l1
  @Option(help: "Generator width (pix2pix's ngf).")
  var width: Int = AttackConfig().generatorWidth
  @Option(help: "Discriminator width (pix2pix's ndf).")
  var discriminatorWidth: Int = AttackConfig().discriminatorWidth
  @Option(help: "Random crops per training photo.")
  var crops: Int = AttackConfig().trainCropsPerPhoto
  @Option(help: "Crops per held-out photo (the first is the whole photo).")
  var testCrops: Int = AttackConfig().testCropsPerPhoto
  @Option(help: "Share of the photos held out for scoring.")
  var testFraction: Double = AttackConfig().testFraction
  @Option(
    help: "How an image becomes the model's input: imagenet, caffe, tensorflow, tensorflow-lite or unit (default: a zoo architecture's own, else imagenet).")
  var preprocess: VeilData.Preprocessing.Preset?
  @Option(help: ArgumentHelp("Feature cache folder (default: <cache>/features beside the asset cache).", valueName: "dir"))
  var cache: String?
  @Flag(help: "Do not read or write the feature cache.")
  var noCache = false
  @Flag(help: "Delete what an earlier run left in --out and start over.")
  var fresh = false

  var config: AttackConfig {
    var c = AttackConfig()
    c.attacker = attacker
    c.imageSize = imageSize
    c.epochs = epochs
    c.batch = batch
    c.seed = seed
    c.learningRate = lr
    c.lambda = lambda
    c.loss = loss
    c.generatorWidth = width
    c.discriminatorWidth = discriminatorWidth
    c.trainCropsPerPhoto = crops
    c.testCropsPerPhoto = testCrops
    c.testFraction = testFraction
    return c
  }

  var cacheDirectory: URL? {
    noCache ? nil : cache.map { URL(fileURLWithPath: $0) } ?? FeatureExtractor.defaultCacheDirectory
  }

  func validate() throws {
    do { try config.validate() } catch { throw ValidationError("\(error)") }
  }

  /// The photos and their crops.
  func images() throws -> AttackImages {
    if data == "photos" {
      let folder = AttackImages.registryPhotosFolder
      guard FileManager.default.fileExists(atPath: folder.path) else {
        throw ValidationError(
          "--data photos: \(folder.path) is missing; gather the registry-shipped photos with `.venv/bin/python scripts/prepare_photos.py` (see docs/privacy.md)")
      }
      return try AttackImages.folder(folder, config: config)
    }
    return try AttackImages.folder(URL(fileURLWithPath: data), config: config)
  }

  func clear(_ out: URL) throws {
    guard fresh, FileManager.default.fileExists(atPath: out.path) else { return }
    try FileManager.default.removeItem(at: out)
  }
}

/// Draws an attack's progress on stderr: the feature pass, then epoch, step, losses and ETA.
final class AttackProgressPrinter {
  let prefix: String
  let terminal = isatty(STDERR_FILENO) == 1
  var last = Date.distantPast

  init(prefix: String = "") { self.prefix = prefix }

  func callAsFunction(_ event: AttackProgress) {
    let now = Date()
    switch event {
    case .features(let done, let total, let cached):
      if done == total {
        note("\(terminal ? "\r" : "")\(prefix)features: \(total) images\(cached ? " (from the cache)" : "")")
      } else if terminal, now.timeIntervalSince(last) > 0.2 {
        last = now
        FileHandle.standardError.write(Data("\r\(prefix)features: \(done)/\(total)".utf8))
      }
    case .step(let epoch, let epochs, let step, let steps, let g, let d, let eta):
      // A terminal gets a redrawn line; a log one line per ~10 % of an epoch.
      let due = terminal ? now.timeIntervalSince(last) > 0.2 : step % max(steps / 10, 1) == 0
      guard due || step == steps else { return }
      last = now
      let losses = String(format: "G %.4f", g) + (d.map { String(format: " D %.4f", $0) } ?? "")
      let line = "\(prefix)epoch \(epoch)/\(epochs) step \(step)/\(steps) \(losses) ETA \(duration(eta))"
      if terminal {
        FileHandle.standardError.write(Data(("\r" + line + "   ").utf8))
      } else {
        note(line)
      }
    case .epochDone(let epoch, let epochs, let g, let d, let seconds):
      let losses = String(format: "G %.4f", g) + (d.map { String(format: " D %.4f", $0) } ?? "")
      note("\(terminal ? "\r" : "")\(prefix)epoch \(epoch)/\(epochs) done in \(duration(seconds)): mean \(losses); checkpoint saved")
    case .message(let s):
      note(prefix + s)
    }
  }
}

func duration(_ s: Double) -> String {
  guard s.isFinite else { return "?" }
  let t = Int(s.rounded())
  return t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
}

/// Loads a model and finds a cut for the attack commands, with errors a user can act on.
func attackModel(_ spec: String, preset: VeilData.Preprocessing.Preset?) throws -> (Graph, InputPreprocessing) {
  try ModelSource.check(spec)
  let g = try ModelSource.load(spec)
  return (g, try InputPreprocessing.forModel(spec, graph: g, preset: preset))
}

struct Attack: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Train an inversion attacker on a model's feature map at a cut and score it on held-out photos.",
    discussion: """
      The attacker sees the feature map that crosses the cut and learns to rebuild the image: cgan
      is pix2pix's conditional GAN (U-Net generator from the feature map, PatchGAN discriminator on
      image + upsampled feature pairs, adversarial + λ·L1, Adam 2e-4 β1 0.5); inverse is the same
      generator on the reconstruction loss alone (He et al.'s black-box inverse network). Photos
      are split into training and held-out photos (crops of one photo never straddle the split);
      the held-out reconstructions are scored with SSIM and PSNR. Writes DIR/grid.png (held-out
      originals above their reconstructions), DIR/checkpoint-g.safetensors (and -d for the c-GAN)
      after every epoch, and DIR/result.json. A rerun with the same options resumes after the last
      finished epoch; more --epochs trains further. See docs/privacy.md.
      """)

  @Option(help: "A zoo model name, an ONNX file, or a state_dict of a zoo architecture.")
  var model: String
  @Option(help: "The cut: its name, a unique part of its name (block1_pool), or its index (see `veil cuts`).")
  var cut: String
  @OptionGroup var options: AttackOptions
  @Option(help: ArgumentHelp("Output folder.", valueName: "dir"))
  var out: String = "out/attack"
  @Flag(help: "Print the result as one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  func run() throws {
    try engine.apply()
    let (graph, preprocessing) = try attackModel(model, preset: options.preprocess)
    let point: CutPoint
    do { point = try graph.attackCut(named: cut) } catch { throw ValidationError("\(error)") }
    let data = try options.images()
    note(
      "attack \(options.attacker.rawValue) on \(model) at \(point.name): \(data.train.count) training crops of \(data.trainPhotos.count) photos, \(data.test.count) held-out crops of \(data.testPhotos.count) photos, \(options.imageSize)×\(options.imageSize), \(preprocessing.name) preprocessing"
    )
    let outDir = URL(fileURLWithPath: out)
    try options.clear(outDir)
    let r = try runAttack(
      model: graph, modelName: model, cut: point, data: data, preprocessing: preprocessing, config: options.config,
      outDir: outDir, cacheDirectory: options.cacheDirectory, progress: AttackProgressPrinter().callAsFunction)
    if json { return try printJSON(r) }
    print(
      "\(r.attacker.rawValue) attacker at \(r.cut) (feature map \(r.featureShape.map(String.init).joined(separator: "×"))), \(r.heldOutCount) held-out images of \(r.heldOutPhotos) photos:"
    )
    print(String(format: "SSIM %.4f ± %.4f (95%% upper bound %.4f; mean-image baseline %.4f)", r.ssim.mean, r.ssim.std, r.ssimUpperBound, r.baselineSSIM))
    print(String(format: "PSNR %.2f ± %.2f dB", r.psnr.mean, r.psnr.std))
    print(String(format: "trained %d epoch(s) on %d images at %.1f images/s; %@ in all", r.epochsRun, r.trainCount, r.imagesPerSecond, duration(r.seconds)))
    print("grid \(r.gridPath), weights \(r.generatorWeightsPath), result \(outDir.appendingPathComponent("result.json").path)")
  }
}

extension AttackerKind: ExpressibleByArgument {}
extension ReconstructionLoss: ExpressibleByArgument {}

struct AttackBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "attack-bench",
    abstract: "Time the attacker's training steps on random data (images per second).",
    discussion: """
      Builds the attacker for a feature map of --feature-shape and times --steps training steps
      after --warmup untimed ones, on seeded random features and images: the figure
      scripts/bench_attack_torch.py compares with the same networks in PyTorch (see
      docs/benchmarks.md).
      """)

  @Option(help: ArgumentHelp("The feature map per image, C×h×w (VGG-16's block1_pool at 64 px: 64x32x32).", valueName: "CxHxW"))
  var featureShape: String = "64x32x32"
  @Option(help: "Side of the square images.")
  var imageSize: Int = 64
  @Option(help: "Images per step.")
  var batch: Int = 16
  @Option(help: "Timed steps.")
  var steps: Int = 20
  @Option(help: "Untimed steps first.")
  var warmup: Int = 3
  @Option(help: "cgan or inverse.")
  var attacker: AttackerKind = .cgan
  @Option(help: "Generator width (pix2pix's ngf).")
  var width: Int = AttackConfig().generatorWidth
  @Option(help: "Discriminator width (pix2pix's ndf).")
  var discriminatorWidth: Int = AttackConfig().discriminatorWidth
  @Flag(help: "Print one JSON document.")
  var json = false
  @OptionGroup var engine: EngineOptions

  struct Report: Encodable {
    var attacker: AttackerKind
    var featureShape: [Int]
    var imageSize: Int
    var batch: Int
    var steps: Int
    var threads: Int
    var generatorParameters: Int
    var secondsPerStep: Double
    var imagesPerSecond: Double
  }

  func run() throws {
    try engine.apply()
    let shape = featureShape.split(separator: "x").compactMap { Int($0) }
    guard shape.count == 3, shape.allSatisfy({ $0 >= 1 }) else {
      throw ValidationError("--feature-shape '\(featureShape)': expected C×h×w such as 64x32x32")
    }
    guard steps >= 1, warmup >= 0 else { throw ValidationError("--steps must be ≥ 1 and --warmup ≥ 0") }
    var config = AttackConfig()
    config.attacker = attacker
    config.imageSize = imageSize
    config.batch = batch
    config.generatorWidth = width
    config.discriminatorWidth = discriminatorWidth
    do { try config.validate() } catch { throw ValidationError("\(error)") }
    let trainer = try AttackTrainer(featureShape: shape, config: config)
    var g = SeededGenerator(seed: 1)
    let features = Tensor.randomNormal(shape: [batch] + shape, generator: &g)
    let images = Tensor.randomUniform(shape: [batch, 3, imageSize, imageSize], low: -1, high: 1, generator: &g)
    for i in 0..<warmup { _ = try trainer.step(features: features, images: images, globalStep: i + 1, epoch: 1) }
    let t0 = Date()
    for i in 0..<steps { _ = try trainer.step(features: features, images: images, globalStep: warmup + i + 1, epoch: 1) }
    let seconds = Date().timeIntervalSince(t0) / Double(steps)
    let r = Report(
      attacker: attacker, featureShape: shape, imageSize: imageSize, batch: batch, steps: steps, threads: Engine.shared.threads,
      generatorParameters: trainer.generator.parameterCount, secondsPerStep: seconds, imagesPerSecond: Double(batch) / seconds)
    if json { return try printJSON(r) }
    print(
      String(
        format: "%@ attacker, feature map %@ → %d², batch %d, %d threads: %.1f ms per step, %.1f images/s", attacker.rawValue,
        featureShape, imageSize, batch, r.threads, seconds * 1000, r.imagesPerSecond))
  }
}
