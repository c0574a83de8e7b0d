import Foundation
import VeilGraph
import VeilPlanning
import VeilPrivacy
import VeilServing
import VeilTensor
import VeilTestSupport
import XCTest

final class DefencePlanTests: XCTestCase {
  /// A colour classifier on 32×32 images: three identity convolutions (each colour its own
  /// channel, rectified), then the mean of each channel is its class's logit. Cuts with spatial
  /// maps, and a top-1 class that differs between photos, for the defences to disturb.
  func classifier() -> Graph {
    var g = Graph(name: "colours")
    var v = g.addInput(name: "x", shape: [1, 3, 32, 32])
    for i in 0..<3 {
      let k = i == 0 ? 1 : 3
      let w = Tensor(shape: [3, 3, k, k]) { p in
        for c in 0..<3 { p[((c * 3 + c) * k + k / 2) * k + k / 2] = 1 }
      }
      v = g.conv(v, weight: w, bias: Tensor(zeros: [3]), .square(k), name: "conv\(i)")
      v = g.activation(v, .relu, name: "relu\(i)")
    }
    v = g.globalAveragePool(v, name: "pool")
    v = g.flatten(v, name: "flatten")
    v = g.linear(v, weight: Tensor(shape: [3, 3]) { p in for c in 0..<3 { p[c * 4] = 1 } }, bias: Tensor(zeros: [3]), name: "fc")
    g.outputs = [v]
    return g
  }

  /// `classFolders`: the photos in `test/<i>-<class>/` folders (a labelled image set, classes
  /// in turn), else all in one flat folder.
  func job(_ name: String, classFolders: Bool = false, configure: (inout PlanJob) -> Void) throws -> (PlanJob.Result, [String], URL) {
    let folder = try PythonScript.temporaryDirectory("defence-plan-\(name)")
    let photos = try PythonScript.temporaryDirectory("defence-plan-photos-\(name)")
    for (i, file) in ["coffee.png", "chelsea.png", "astronaut.png", "eagle.jpg", "dog.jpg", "coffee.png"].enumerated() {
      var into = photos
      if classFolders {
        into = photos.appendingPathComponent("test/\(i % 3)-\(["red", "green", "blue"][i % 3])")
        try FileManager.default.createDirectory(at: into, withIntermediateDirectories: true)
      }
      try FileManager.default.copyItem(at: TestAssets.url(file), to: into.appendingPathComponent("\(i)-\(file)"))
    }
    var job = PlanJob(
      graph: classifier(), name: "small", data: photos, dataOrigin: "user images", folder: folder,
      preprocessing: InputPreprocessing(name: "imagenet", normalization: .imagenet, channelOrder: .rgb))
    job.options.budget = .quick
    job.options.profile.runs = 1
    job.options.profile.warmup = 0
    job.options.margin = 0.5
    job.imageSize = 32
    job.semanticMeasures = false
    job.cacheDirectory = nil
    configure(&job)
    var lines: [String] = []
    return (try job.run(log: { lines.append($0) }), lines, folder)
  }

  static func tiny(_ c: inout AttackConfig) {
    c.epochs = 1
    c.batch = 8
    c.generatorWidth = 8
    c.trainCropsPerPhoto = 8
    c.optimisationSteps = 10
    c.tvWeights = [1]
    c.testFraction = 0.4
  }

  /// A plan under one defence: attacked with it, its utility measured, plan.json carries it
  /// fitted, and the enclave's reader accepts it.
  func testAPlanUnderADefenceDeploysItFitted() throws {
    let (result, lines, folder) = try job("quant") { job in
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
      job.utilityFloor = 0
      job.overrides = { c in
        Self.tiny(&c)
        c.defence = .quantisation(bits: 6)
      }
    }
    let record = result.document.planning
    let chosen = try XCTUnwrap(record.chosenCut, "SSIM under 0.99 everywhere: a cut is chosen")
    let defence = try XCTUnwrap(record.defence)
    XCTAssertEqual(defence.defence.spec, "quant:6")
    XCTAssertEqual(defence.utility.cut, chosen)
    XCTAssertGreaterThan(defence.utility.images, 0)
    XCTAssertNil(defence.utility.accuracy, "a flat folder of photos has no labels")
    XCTAssertTrue(record.privacy.allSatisfy { $0.settings.config.defence?.spec == "quant:6" }, "every verdict is under the defence")
    XCTAssertTrue(lines.contains { $0.hasPrefix("defence: ") })
    XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("attacks-defended/quant_6").path))
    let deployed = try DeploymentPlan.load(folder.path)
    XCTAssertEqual(deployed.plan.defence?.defence.spec, "quant:6")
    XCTAssertEqual(deployed.plan.schemaVersion, 2)
    XCTAssertEqual(try PlanDocument.read(result.planFile).planning.defence, defence)
  }

  /// Photos in numbered class folders are labelled: the utility has accuracy and macro-F1
  /// beside the agreement, with and without the defence, from the folders' classes.
  func testClassFoldersGiveAccuracyAndMacroF1() throws {
    let (result, _, _) = try job("labels", classFolders: true) { job in
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
      job.utilityFloor = 0
      job.overrides = { c in
        Self.tiny(&c)
        c.defence = .quantisation(bits: 6)
      }
    }
    let utility = try XCTUnwrap(result.document.planning.defence).utility
    let accuracy = try XCTUnwrap(utility.accuracy, "labelled folders give an accuracy")
    let undefended = try XCTUnwrap(utility.undefendedAccuracy)
    XCTAssertNotNil(utility.macroF1)
    XCTAssertTrue((0...1).contains(accuracy) && (0...1).contains(undefended), "\(accuracy), \(undefended)")
  }

  /// The confirmation at the deployed size calibrates the white-box prior on 4 of the
  /// attacker's photos (every step), the first pass on the configured 8, and holds out the
  /// other photos, each whole.
  func testTheConfirmationCalibratesOnFourPhotos() throws {
    let (result, _, _) = try job("confirm") { job in
      job.imageSize = 16
      job.confirmAtDeployedSize = true
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
      job.overrides = { c in Self.tiny(&c) }
    }
    let planning = result.document.planning
    XCTAssertEqual(planning.evaluation.config.calibrationImages, 8)
    let confirmation = try XCTUnwrap(planning.confirmation, "a confirmation at 32 px")
    XCTAssertEqual(confirmation.config.imageSize, 32)
    XCTAssertEqual(confirmation.config.calibrationImages, 4)
    XCTAssertEqual(confirmation.config.calibrationAtFullSteps, true)
    let attack = try XCTUnwrap(planning.confirmations.first?.attacks.first, "the choice was confirmed")
    XCTAssertEqual(attack.heldOutPhotos, 2, "6 photos, 4 of them the attacker's own")
    XCTAssertEqual(attack.heldOut, 2, "each held-out photo whole")
  }

  /// --private-output: the deployment keeps the classifier in the enclave and the plan says
  /// what it costs.
  func testAPrivateOutputPlanKeepsTheLastLayer() throws {
    let (result, lines, folder) = try job("private-output") { job in
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
      job.privateOutput = true
      job.overrides = { c in Self.tiny(&c) }
    }
    let record = result.document.planning
    let p = try XCTUnwrap(record.privateOutput)
    XCTAssertEqual(p.cut, "flatten")
    XCTAssertEqual(p.acceleratorAnswer, [1, 3])
    XCTAssertGreaterThan(p.nativeMs, 0)
    XCTAssertGreaterThanOrEqual(p.teeMs, p.nativeMs, "the TEE costs at least the native time")
    XCTAssertEqual(p.parameterBytes, (3 * 3 + 3) * 4)
    XCTAssertTrue(lines.contains { $0.hasPrefix("private output: ") })
    let deployed = try DeploymentPlan.load(folder.path)
    XCTAssertEqual(deployed.plan.privateOutput?.cut.name, "flatten")
    XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("output.onnx").path))
    XCTAssertTrue(try String(contentsOf: result.report, encoding: .utf8).contains("Private output"))
  }

  /// With fine-tuning, the tail learns the defended maps on half the photos, the agreement is
  /// measured on the other half, and the deployed tail is the fine-tuned one.
  func testAFineTunedTailIsMeasuredOnOtherPhotosAndDeployed() throws {
    let (result, lines, folder) = try job("tuned") { job in
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
      job.utilityFloor = 0
      var t = TailFineTuning()
      t.epochs = 2
      t.cropsPerPhoto = 4
      t.batch = 4
      t.learningRate = 1e-2
      job.fineTuning = t
      job.overrides = { c in
        Self.tiny(&c)
        c.defence = .pruning(0.34)
      }
    }
    let record = result.document.planning
    let defence = try XCTUnwrap(record.defence)
    XCTAssertTrue(defence.utility.tailFineTuned)
    XCTAssertEqual(defence.utility.images, 3, "half of the six photos, whole")
    XCTAssertTrue(defence.utility.summary.contains("tail fine-tuned"))
    XCTAssertTrue(lines.contains { $0.contains("fine-tuning the tail on") }, "\(lines)")
    let deployed = try DeploymentPlan.load(folder.path)
    let tail = try deployed.readPart(deployed.plan.tail, field: "tail")
    let original = try classifier().split(at: try classifier().cut(named: deployed.plan.cut.name)).tail
    let differs = tail.initializers.values.map(\.scalars).sorted { $0.count < $1.count } != original.initializers.values.map(\.scalars).sorted { $0.count < $1.count }
    XCTAssertTrue(differs, "the deployed tail carries the fine-tuned weights")
  }

  /// A defence under the utility floor is reported and never deployed.
  func testADefenceUnderTheFloorIsNotDeployed() throws {
    let (result, lines, folder) = try job("loud") { job in
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
      job.utilityFloor = 1
      job.overrides = { c in
        Self.tiny(&c)
        c.defence = .noise(100)
      }
    }
    let record = result.document.planning
    XCTAssertNotNil(record.chosenCut)
    let defence = try XCTUnwrap(record.defence)
    XCTAssertLessThan(defence.utility.agreement, 1, "σ = 100 channel scales changes some answers: \(defence.utility.summary)")
    XCTAssertTrue(record.notDeployed?.contains("utility floor") == true, "\(record.notDeployed ?? "nil")")
    XCTAssertNil(result.document.deployment)
    XCTAssertFalse(FileManager.default.fileExists(atPath: folder.appendingPathComponent("head.onnx.sealed").path))
    XCTAssertTrue(lines.contains { $0.contains("not deployed") })
  }

  /// The search: defended points at the cuts before the undefended choice, each attacked or
  /// refused for utility, and the frontier marked.
  func testTheSearchReportsDefendedPointsBeforeTheChoice() throws {
    let (result, lines, _) = try job("search") { job in
      // A threshold no cut meets: the deepest cuts are searched.
      job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.01])
      job.defenceKinds = [.quantise, .prune]
      job.utilityFloor = 0.5
      job.overrides = { c in Self.tiny(&c) }
    }
    let record = result.document.planning
    let frontier = try XCTUnwrap(record.frontier)
    XCTAssertEqual(frontier.kinds, [.quantise, .prune])
    XCTAssertEqual(frontier.grid["quantise"], ["quant:4", "quant:2"])
    XCTAssertEqual(frontier.undefendedChoice, record.chosenCut)
    let defended = frontier.points.filter { $0.defence != nil }
    let rows = record.profile.cuts.map(\.cut.name)
    let chosenIndex = record.chosenCut.flatMap { rows.firstIndex(of: $0) } ?? rows.count
    for p in defended {
      XCTAssertLessThan(p.cutIndex, chosenIndex, "only cuts before the choice are defended")
      XCTAssertTrue(p.belowFloor || p.status != nil, "attacked unless under the floor: \(p)")
    }
    XCTAssertNil(record.chosenCut)
    XCTAssertEqual(Set(defended.map(\.cut)).count, 2, "the quick budget defends the two deepest attackable cuts")
    XCTAssertTrue(defended.contains { $0.defence == "quant:4" } && defended.contains { $0.defence == "prune:0.5" })
    XCTAssertNil(frontier.earliestDefended, "nothing is private under 0.01")
    XCTAssertTrue(frontier.points.contains { $0.onFrontier }, "some attacked point is undominated")
    XCTAssertTrue(lines.contains { $0.hasPrefix("defences: ") })
    XCTAssertNil(record.defence, "the search chooses nothing by itself")
  }

  func testTheFrontierKeepsOnlyUndominatedPoints() {
    func point(_ latency: Double, _ ssim: Double, _ agreement: Double, below: Bool = false) -> FrontierPoint {
      FrontierPoint(
        cut: "c", cutIndex: 0, defence: "d", latencyMs: latency, status: .private, ssimBound: ssim, statement: nil, agreement: agreement,
        agreementLower: agreement, encodedBytes: 1, mapBytes: 1, belowFloor: below)
    }
    var points = [point(10, 0.2, 1), point(5, 0.4, 0.9), point(12, 0.3, 0.9), point(4, 0.1, 0.5, below: true), point(10, 0.2, 1)]
    DefenceFrontier.markFrontier(&points)
    XCTAssertEqual(points.map(\.onFrontier), [true, true, false, false, true])
  }
}
