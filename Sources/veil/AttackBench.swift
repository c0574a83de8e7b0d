import ArgumentParser
import Foundation
import VeilData
import VeilGraph
import VeilModels
import VeilPrivacy
import VeilTensor

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
    guard [.cgan, .inverse].contains(attacker) else { throw ValidationError("--attacker: attack-bench times the learning-based attackers, cgan or inverse") }
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
    // Blocks freed by one step are reused by the next, as in an attack (`withBlockReuse`).
    let seconds = try withBlockReuse {
      for i in 0..<warmup { _ = try trainer.step(features: features, images: images, globalStep: i + 1, epoch: 1) }
      let t0 = Date()
      for i in 0..<steps { _ = try trainer.step(features: features, images: images, globalStep: warmup + i + 1, epoch: 1) }
      return Date().timeIntervalSince(t0) / Double(steps)
    }
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
