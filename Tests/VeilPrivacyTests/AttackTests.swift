import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilPrivacy
import VeilTensor
import VeilTestSupport
import XCTest

/// The inversion attackers end to end on a small seeded CNN and the cached registry photos.
final class AttackTests: XCTestCase {
  /// A seeded CNN on 32×32 images with two structural cuts: pool1 [8, 16, 16] and pool2 [16, 8, 8].
  static func tinyModel() -> Graph {
    var g = Graph(name: "tiny")
    var rng = SeededGenerator(seed: 7)
    let x = g.addInput(name: "image", shape: [1, 3, 32, 32])
    func conv(_ v: ValueID, _ i: Int, _ o: Int, _ name: String) -> ValueID {
      let w = Tensor.randomNormal(shape: [o, i, 3, 3], std: (2 / Float(9 * i)).squareRoot(), generator: &rng)
      return g.conv(v, weight: w, bias: Tensor(zeros: [o]), .square(3), name: name)
    }
    let pool = PoolAttributes(kernel: [2, 2], strides: [2, 2])
    var v = g.activation(conv(x, 3, 8, "conv1"), .relu, name: "relu1")
    v = g.maxPool(v, pool, name: "pool1")
    v = g.activation(conv(v, 8, 16, "conv2"), .relu, name: "relu2")
    v = g.maxPool(v, pool, name: "pool2")
    v = g.activation(conv(v, 16, 16, "conv3"), .relu, name: "out")
    g.outputs = [v]
    g.metadata["cuts"] = "pool1,pool2"
    return g
  }

  static let photoNames = ["coffee.png", "chelsea.png", "astronaut.png", "eagle.jpg", "dog.jpg"]

  static func config(epochs: Int = 3) -> AttackConfig {
    var c = AttackConfig()
    c.imageSize = 32
    c.epochs = epochs
    c.batch = 8
    c.generatorWidth = 8
    c.discriminatorWidth = 8
    c.trainCropsPerPhoto = 24
    c.testCropsPerPhoto = 4
    c.testFraction = 0.4
    return c
  }

  /// A hybrid attack kept short: a few crops per photo, `epochs` of the inverse network,
  /// `steps` of refinement, the prior calibrated on two validation images over `weights`.
  static func shortHybrid(epochs: Int, steps: Int, weights: [Float]) -> AttackConfig {
    var c = config(epochs: epochs)
    c.trainCropsPerPhoto = 8
    c.optimisationSteps = steps
    c.tvWeights = weights
    c.calibrationImages = 2
    return c
  }

  static let unit = InputPreprocessing(name: "unit", normalization: .unit, channelOrder: .rgb)

  func photos(_ config: AttackConfig) throws -> AttackImages {
    try AttackImages.photos(Self.photoNames.map(TestAssets.url), config: config, source: "asset cache")
  }

  func temp(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("veil-attack-\(UUID().uuidString)-\(name)")
  }

  /// Issue 5: the attack must beat the trivial attacker (the mean training image) on held-out
  /// photos, for both learning-based attackers; the result and its files are complete.
  func testTinyAttackBeatsTheMeanImageOnHeldOutPhotos() throws {
    let g = Self.tinyModel()
    let cut = try g.attackCut(named: "pool1")
    for kind in [AttackerKind.cgan, .inverse] {
      var config = Self.config()
      config.attacker = kind
      let data = try photos(config)
      // Held-out photos are never trained on.
      XCTAssertTrue(Set(data.trainPhotos).isDisjoint(with: data.testPhotos))
      XCTAssertEqual(data.testPhotos.count, 2)
      XCTAssertEqual(data.validationPhotos.count, 1, "three training photos keep one apart for the stopping rule")
      XCTAssertTrue(Set(data.validationPhotos).isDisjoint(with: data.trainPhotos + data.testPhotos))
      let out = temp(kind.rawValue)
      defer { try? FileManager.default.removeItem(at: out) }
      let r = try runAttack(
        model: g, modelName: "tiny", cut: cut, data: data, preprocessing: Self.unit, config: config, outDir: out,
        cacheDirectory: nil)
      XCTAssertEqual(r.featureShape, [8, 16, 16])
      XCTAssertEqual(r.heldOutCount, 8)
      XCTAssertEqual(r.ssim.perImage.count, 8)
      XCTAssertGreaterThan(r.ssim.mean, r.baselineSSIM + 0.02, "\(kind): SSIM \(r.ssim.mean) vs baseline \(r.baselineSSIM)")
      XCTAssertGreaterThan(r.psnr.mean, 10)
      XCTAssertGreaterThan(r.ssimUpperBound, r.ssim.mean)
      // Two held-out photos of four crops each: the bound has one degree of freedom.
      XCTAssertEqual(r.measure("ssim")?.estimate.clusters, 2)
      for path in [r.gridPath, out.appendingPathComponent("result.json").path] + r.weightsPaths {
        XCTAssertTrue(FileManager.default.fileExists(atPath: path), path)
      }
      XCTAssertEqual(r.weightsPaths.count, kind == .cgan ? 2 : 1)
      let grid = try ImageCodec.readUpright(URL(fileURLWithPath: r.gridPath))
      XCTAssertGreaterThan(grid.height, 2 * 32)
    }
  }

  /// A rerun with more epochs resumes after the last checkpoint; other options are refused.
  func testResumesFromTheLastEpochAndRefusesOtherSettings() throws {
    let g = Self.tinyModel()
    let cut = try g.attackCut(named: "pool2")
    var config = Self.config(epochs: 1)
    config.trainCropsPerPhoto = 8
    let data = try photos(config)
    let out = temp("resume")
    defer { try? FileManager.default.removeItem(at: out) }
    let cache = temp("cache")
    defer { try? FileManager.default.removeItem(at: cache) }
    let first = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: Self.unit, config: config, outDir: out, cacheDirectory: cache)
    XCTAssertEqual(first.resumedFromEpoch, 0)
    XCTAssertEqual(first.epochsRun, 1)
    XCTAssertEqual(first.curve.count, 1)
    config.epochs = 2
    var events: [String] = []
    let second = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: Self.unit, config: config, outDir: out, cacheDirectory: cache
    ) { e in
      if case .features(_, _, let cached) = e, cached { events.append("cached") }
      if case .epochDone(let epoch, _, _, _, _) = e { events.append("epoch \(epoch)") }
    }
    XCTAssertEqual(second.resumedFromEpoch, 1)
    XCTAssertEqual(second.epochsRun, 1)
    XCTAssertEqual(events, ["cached", "epoch 2"])

    config.seed = 99
    let other = try photos(config)
    XCTAssertThrowsError(
      try runAttack(
        model: g, modelName: "tiny", cut: cut, data: other, preprocessing: Self.unit, config: config, outDir: out,
        cacheDirectory: cache)
    ) { e in
      XCTAssertTrue("\(e)".contains("other settings") && "\(e)".contains("--fresh"), "\(e)")
    }
  }

  /// A NaN loss stops training with the step and what to lower.
  func testNonFiniteLossStopsWithTheStepAndAdvice() throws {
    var config = Self.config()
    config.learningRate = 1e-3
    let trainer = try AttackTrainer(featureShape: [8, 16, 16], config: config)
    var rng = SeededGenerator(seed: 3)
    var features = Tensor.randomNormal(shape: [8, 8, 16, 16], generator: &rng)
    let images = Tensor.randomUniform(shape: [8, 3, 32, 32], low: -1, high: 1, generator: &rng)
    _ = try trainer.step(features: features, images: images, globalStep: 1, epoch: 1)
    features.withUnsafeMutableBuffer { $0[5] = .nan }
    XCTAssertThrowsError(try trainer.step(features: features, images: images, globalStep: 2, epoch: 1)) { e in
      guard case .nonFiniteLoss(let step, let epoch, _, let advice) = e as? PrivacyError else { return XCTFail("\(e)") }
      XCTAssertEqual(step, 2)
      XCTAssertEqual(epoch, 1)
      XCTAssertTrue(advice.contains("--lr, now 0.001") && advice.contains("--lambda"), advice)
    }
  }

  func testBadInputIsRefusedWithWhatToDo() throws {
    let config = Self.config()
    XCTAssertThrowsError(try AttackImages.photos([try TestAssets.url("coffee.png")], config: config, source: "one")) { e in
      XCTAssertTrue("\(e)".contains("1 photo(s) found") && "\(e)".contains("at least 2"), "\(e)")
    }
    XCTAssertThrowsError(try AttackImages.folder(temp("missing"), config: config)) { e in
      XCTAssertTrue("\(e)".contains("no such folder"), "\(e)")
    }
    let g = Self.tinyModel()
    XCTAssertThrowsError(try g.attackCut(named: "pool9")) { e in
      XCTAssertTrue("\(e)".contains("pool1, pool2"), "\(e)")
    }
    // A 12×12 map does not divide 40 px by a power of two.
    var odd = config
    odd.imageSize = 40
    XCTAssertThrowsError(try AttackTrainer(featureShape: [16, 12, 12], config: odd)) { e in
      XCTAssertTrue("\(e)".contains("power of two"), "\(e)")
    }
    var big = config
    big.batch = 200
    let data = try photos(config)
    XCTAssertThrowsError(
      try runAttack(
        model: g, modelName: "tiny", cut: try g.attackCut(named: "pool1"), data: data, preprocessing: Self.unit, config: big,
        outDir: temp("big"), cacheDirectory: nil)
    ) { e in
      XCTAssertTrue("\(e)".contains("too small a data set"), "\(e)")
    }
    var zero = config
    zero.epochs = 0
    XCTAssertThrowsError(try zero.validate()) { e in XCTAssertTrue("\(e)".contains("epochs must be ≥ 1"), "\(e)") }
  }

  /// Student's t quantiles: the table, and the expansion above 30 degrees of freedom.
  func testStudentT() {
    XCTAssertEqual(StudentT.quantile95(degreesOfFreedom: 2), 2.920, accuracy: 1e-9)
    XCTAssertEqual(StudentT.quantile95(degreesOfFreedom: 1000), 1.6464, accuracy: 1e-3)
    let s = ScoreSummary([0.2, 0.4, 0.6])
    XCTAssertEqual(s.mean, 0.4, accuracy: 1e-12)
    XCTAssertEqual(s.std, 0.2, accuracy: 1e-12)
  }

  /// The sweep writes JSON, CSV and an SVG per measure after each cut, skips finished cuts on a
  /// rerun, and refuses a folder of other settings.
  func testSweepWritesItsFilesAndResumes() throws {
    let g = Self.tinyModel()
    var settings = EvaluationSettings(threatModel: .blackBox, budget: .quick, imageSize: 32)
    settings.attackers = [.inverse]
    settings.config = Self.config(epochs: 1)
    settings.config.trainCropsPerPhoto = 8
    let out = temp("sweep")
    defer { try? FileManager.default.removeItem(at: out) }
    let evaluation = PrivacyEvaluation(
      model: g, modelName: "tiny", preprocessing: Self.unit, files: try Self.photoNames.map(TestAssets.url), source: "asset cache",
      settings: settings, measures: .pixels, outDir: out, cacheDirectory: nil)
    let sweep = PrivacySweep(evaluation: evaluation, cuts: try g.candidateCuts())
    let report = try sweep.run()
    XCTAssertEqual(report.results.map(\.cut), ["pool1", "pool2"])
    let csv = try String(contentsOf: sweep.csvFile, encoding: .utf8).split(separator: "\n")
    // A header, then one row per cut, measure and attacker.
    XCTAssertEqual(csv.count, 1 + 2 * 2)
    XCTAssertTrue(csv[1].hasPrefix("pool1,8x16x16,black-box,ssim,inverse,"), String(csv[1]))
    let svg = try String(contentsOf: sweep.svgFile("ssim"), encoding: .utf8)
    XCTAssertTrue(svg.contains("<svg") && svg.contains("threshold 0.30") && svg.contains(">pool2<"), svg)
    let decoded = try VeilJSON.decoder().decode(SweepReport.self, from: Data(contentsOf: sweep.jsonFile))
    XCTAssertEqual(decoded, report)

    // Finished cuts are not attacked again: their folders stay gone.
    for r in report.results { try FileManager.default.removeItem(at: out.appendingPathComponent(r.attacks[0].folder)) }
    let again = try sweep.run()
    XCTAssertEqual(again, report)
    XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent(report.results[0].attacks[0].folder).path))

    var other = evaluation
    other.settings.seeds = [5]
    XCTAssertThrowsError(try PrivacySweep(evaluation: other, cuts: try g.candidateCuts()).run()) { e in
      XCTAssertTrue("\(e)".contains("other settings"), "\(e)")
    }
  }
}
