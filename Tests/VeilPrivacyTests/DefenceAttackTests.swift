import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilPrivacy
import VeilTensor
import VeilTestSupport
import VeilTrain
import XCTest

/// Defences against attackers who know them, on the tiny CNN and the cached registry photos.
final class DefenceAttackTests: XCTestCase {
  func map() -> Tensor {
    var g = SeededGenerator(seed: 3)
    return Tensor.randomNormal(shape: [2, 4, 3, 3], generator: &g)
  }

  /// The white-box attacker's view: quantisation forwards the quantised map and passes the
  /// gradient straight through; pruning's gradient is zero on the pruned channels; noise is
  /// optimised through its expectation, the clean map.
  func testTheWhiteBoxViewOfEachDefence() throws {
    let x = map()
    let seed = Tensor(shape: x.shape) { p in for i in 0..<p.count { p[i] = Float(i % 7) - 3 } }
    let quant = CutDefence.quantisation(bits: 2)
    let v = Variable(x, requiresGrad: true)
    let q = try quant.onTape(v)
    var g = SeededGenerator(seed: 0)
    for (a, b) in zip(q.value.scalars, try quant.apply(to: x, using: &g).scalars) {
      XCTAssertEqual(a, b, accuracy: 1e-6, "forward: the map the attacker observes")
    }
    XCTAssertNotEqual(q.value.scalars, x.scalars)
    try q.backward(seed: seed)
    XCTAssertEqual(v.grad?.scalars, seed.scalars, "straight through")

    let prune = try CutDefence.pruning(0.5).fitted(to: x)
    let kept = try XCTUnwrap(prune.keptChannels)
    let w = Variable(x, requiresGrad: true)
    let p = try prune.onTape(w)
    try p.backward(seed: seed)
    let grad = try XCTUnwrap(w.grad).scalars
    for k in 0..<grad.count {
      let c = (k / 9) % 4
      XCTAssertEqual(grad[k], kept.contains(c) ? seed.scalars[k] : 0, "index \(k)")
      XCTAssertEqual(p.value.scalars[k], kept.contains(c) ? x.scalars[k] : 0)
    }

    let noise = try CutDefence.noise(2).fitted(to: x)
    let n = Variable(x, requiresGrad: true)
    XCTAssertTrue(try noise.onTape(n) === n, "E‖f(x) + n − v‖² = ‖f(x) − v‖² + const: the clean map")
  }

  /// The attackers see defended maps and say so; a heavy noise costs the white-box attacker
  /// most of what it rebuilt, and pruning leaves it only the kept channels.
  func testAdaptiveAttacksRecordTheDefenceAndStrongNoiseHurtsThem() throws {
    let g = AttackTests.tinyModel()
    let cut = try g.attackCut(named: "pool1")
    var base = AttackTests.config()
    base.attacker = .optimisation
    base.optimisationSteps = 40
    base.tvWeights = [1]
    base.calibrationImages = 2
    let data = try AttackImages.photos(AttackTests.photoNames.map(TestAssets.url), config: base, source: "asset cache")
    var ssim: [String: Double] = [:]
    for spec in ["none", "gaussian:8", "prune:0.75"] {
      var config = base
      config.defence = spec == "none" ? nil : try CutDefence(parsing: spec)
      let out = FileManager.default.temporaryDirectory.appendingPathComponent("veil-defence-\(UUID().uuidString)")
      defer { try? FileManager.default.removeItem(at: out) }
      let r = try runAttack(
        model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: config, outDir: out, cacheDirectory: nil)
      XCTAssertEqual(r.config.defence, config.defence)
      if spec != "none" {
        XCTAssertTrue(r.notes.first?.contains("defended by") == true, "\(r.notes)")
        XCTAssertTrue(r.notes.first?.contains("knew it") == true)
      }
      let reread = try VeilJSON.decoder().decode(AttackResult.self, from: Data(contentsOf: out.appendingPathComponent("result.json")))
      XCTAssertEqual(reread.config.defence, config.defence, "result.json records the defence")
      ssim[spec] = r.ssim.mean
    }
    XCTAssertLessThan(ssim["gaussian:8"]!, ssim["none"]! - 0.05, "\(ssim)")
    XCTAssertLessThan(ssim["prune:0.75"]!, ssim["none"]!, "\(ssim)")
  }

  /// Both hybrids attack defended maps: their inverse network learns from them, and they
  /// refine through the defence (the white-box one with it on the real head's tape, the
  /// black-box one through a substitute trained on defended queries).
  func testHybridsAttackDefendedMaps() throws {
    let g = AttackTests.tinyModel()
    let cut = try g.attackCut(named: "pool2")
    var config = AttackTests.shortHybrid(epochs: 1, steps: 10, weights: [1])
    config.defence = try CutDefence(parsing: "quant:4")
    let data = try AttackImages.photos(AttackTests.photoNames.map(TestAssets.url), config: config, source: "asset cache")
    for kind in [AttackerKind.hybrid, .substituteHybrid] {
      config.attacker = kind
      let out = FileManager.default.temporaryDirectory.appendingPathComponent("veil-defence-\(UUID().uuidString)")
      defer { try? FileManager.default.removeItem(at: out) }
      let r = try runAttack(
        model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: config, outDir: out, cacheDirectory: nil)
      XCTAssertEqual(r.attacker, kind)
      XCTAssertEqual(r.config.defence, config.defence)
      XCTAssertTrue(r.notes.first?.contains("defended by") == true, "\(kind): \(r.notes)")
      XCTAssertTrue(r.notes.contains { $0.contains("unrefined: ") }, "\(kind): \(r.notes)")
      XCTAssertTrue(r.ssim.mean.isFinite && r.ssim.mean > r.baselineSSIM - 0.2, "\(kind): \(r.ssim.mean)")
    }
  }

  /// Utility: σ = 0 agrees everywhere; a huge noise does not; the fit happens at the given size.
  /// At a transformer's token cut a defence acts per token feature, as the enclave applies it
  /// to [N, T, D]: fitted on the sequences, applied there and mapped for the attackers; the
  /// white-box view quantises the same sequence and prunes a feature's patch and class-token
  /// channels together; the utility runs the tail on the defended sequence and counts its
  /// wire bytes per feature.
  func testDefencesAtTokenCutsActOnTheSequence() throws {
    let g = try ModelZoo.visionTransformer(
      VisionTransformerShape(image: 32, patch: 8, layers: 2, heads: 2, dim: 16, mlp: 32, classes: 10), seed: 3)
    let cut = try g.attackCut(named: "encoder_layer_0")
    let photos = try ["coffee.png", "chelsea.png", "astronaut.png", "dog.jpg"].map {
      try ImageCodec.readUpright(TestAssets.url($0)).rgb().centreCropped(width: 300, height: 300)
        .resized(width: 32, height: 32, interpolation: .area)
    }
    let fx = try FeatureExtractor(model: g, cut: cut, imageSize: 32, batch: 2, preprocessing: AttackTests.unit)
    XCTAssertEqual(fx.defenceChannelAxis, 2)
    let maps = try fx.features(photos)
    let sequences = try fx.modelTensor(maps)
    for spec in [CutDefence.quantisation(bits: 3), .pruning(0.5), .noise(0.5)] {
      let fitted = try fx.fit(spec, maps: maps)
      switch spec.kind {
      case .prune: XCTAssertEqual(fitted.keptChannels?.count, 8, "half of the 16 token features")
      case .gaussian: XCTAssertEqual(fitted.channelScale?.count, 16, "one scale per token feature")
      default: break
      }
      var (g1, g2) = (SeededGenerator(seed: 5), SeededGenerator(seed: 5))
      let seen = try fx.defend(maps, with: fitted, using: &g1)
      let deployed = try fx.maps(fromModel: try fitted.apply(to: sequences, channelAxis: 2, using: &g2))
      XCTAssertEqual(seen.scalars, deployed.scalars, "\(spec): what the attackers see is the enclave's sequence")
      XCTAssertNotEqual(seen.scalars, maps.scalars, "\(spec) changes the map")
      if spec.kind != .gaussian {
        let onTape = try fx.onTape(fitted, Variable(maps)).value
        let err = zip(onTape.scalars, seen.scalars).map { abs($0 - $1) }.max() ?? 1
        XCTAssertLessThan(err, 1e-5, "\(spec): the white-box view forwards the defended map")
      }
    }
    let (utility, _, axis) = try DefenceUtility.measure(
      model: g, cut: cut, defence: .quantisation(bits: 8), images: photos, imageSize: 32, preprocessing: AttackTests.unit)
    XCTAssertEqual(axis, 2)
    XCTAssertEqual(utility.mapBytes, 17 * 16 * 4)
    XCTAssertEqual(utility.encodedBytes, 17 * 16 + 16 * 8, "a byte per value, a minimum and a step per feature")
    XCTAssertEqual(utility.images, 4)
  }

  func testUtilityIsTheTop1AgreementWithTheUndefendedModel() throws {
    let g = AttackTests.tinyModel()
    let cut = try g.attackCut(named: "pool2")
    let images = try AttackTests.photoNames.map { try ImageCodec.readUpright(TestAssets.url($0)).rgb().resized(width: 32, height: 32, interpolation: .bilinear) }
    let none = try DefenceUtility.measure(
      model: g, cut: cut, defence: .noise(0), images: images, imageSize: 32, preprocessing: AttackTests.unit)
    XCTAssertEqual(none.utility.agreement, 1)
    XCTAssertLessThan(none.utility.agreementLower, 1, "five photos bound the agreement loosely")
    XCTAssertEqual(none.utility.images, 5)
    XCTAssertEqual(none.fitted.channelScale?.count, 16, "fitted to pool2's 16 channels")
    XCTAssertEqual(none.channelAxis, 1)
    let loud = try DefenceUtility.measure(
      model: g, cut: cut, defence: .noise(50), images: images, imageSize: 32, preprocessing: AttackTests.unit)
    XCTAssertLessThan(loud.utility.agreement, 1)
    XCTAssertLessThanOrEqual(loud.utility.agreementLower, loud.utility.agreement)
    let quant = try DefenceUtility.measure(
      model: g, cut: cut, defence: .quantisation(bits: 4), images: images, imageSize: 32, preprocessing: AttackTests.unit)
    XCTAssertEqual(quant.utility.encodedBytes, 16 * 8 * 8 + 16 * 8, "a byte a code, a minimum and a step per channel")
    XCTAssertEqual(quant.utility.mapBytes, 16 * 8 * 8 * 4)
    XCTAssertTrue(quant.utility.summary.contains("tail not fine-tuned"))
    XCTAssertNil(quant.utility.accuracy, "no labels, no accuracy")
  }

  /// Where images have labels, accuracy and macro-F1 of both models on them: labelled with the
  /// undefended model's own answers, the undefended accuracy is 1 and the defended one is the
  /// agreement.
  func testUtilityWithLabelsReportsAccuracyAndMacroF1() throws {
    let g = AttackTests.tinyModel()
    let cut = try g.attackCut(named: "pool2")
    let images = try AttackTests.photoNames.map {
      try ImageCodec.readUpright(TestAssets.url($0)).rgb().resized(width: 32, height: 32, interpolation: .bilinear)
    }
    let whole = try Executor(graph: g)
    let answers = try images.map { img -> Int in
      let logits = try whole.run([try img.tensor(layout: .nchw, order: .rgb, normalization: .unit)])[0].scalars
      return logits.indices.max { logits[$0] < logits[$1] }!
    }
    let classes = (answers.max() ?? 0) + 1
    let loud = try DefenceUtility.measure(
      model: g, cut: cut, defence: .noise(50), images: images, imageSize: 32, preprocessing: AttackTests.unit,
      labels: (max(classes, 2), answers))
    XCTAssertEqual(loud.utility.undefendedAccuracy, 1)
    XCTAssertEqual(loud.utility.accuracy ?? -1, loud.utility.agreement, accuracy: 1e-12)
    XCTAssertNotNil(loud.utility.macroF1)
    XCTAssertTrue(loud.utility.summary.contains("macro-F1"))
    XCTAssertThrowsError(
      try DefenceUtility.measure(
        model: g, cut: cut, defence: .noise(0), images: images, imageSize: 32, preprocessing: AttackTests.unit, labels: (2, [0]))
    ) { e in XCTAssertTrue("\(e)".contains("1 labels"), "\(e)") }
  }
}
