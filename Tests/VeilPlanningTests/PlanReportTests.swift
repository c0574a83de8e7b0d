import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilPlanning
import VeilPrivacy
import VeilTEE
import VeilServing
import VeilTensor
import VeilTestSupport
import XCTest

final class CutSearchTests: XCTestCase {
  /// Runs the search on a curve of leakage (a cut is private under 0.5) and returns its outcome.
  func search(_ curve: [Double], budget: PlanBudget) throws -> CutSearch.Outcome {
    try CutSearch(cutCount: curve.count, budget: budget).run { curve[$0] < 0.5 }
  }

  func testMonotoneCurveFindsTheEarliestPassingCutWithFewAttacks() throws {
    let curve = [0.95, 0.9, 0.8, 0.7, 0.6, 0.45, 0.4, 0.3, 0.25, 0.2, 0.18, 0.15, 0.1, 0.08, 0.05, 0.04]
    let quick = try search(curve, budget: .quick)
    XCTAssertEqual(quick.chosen, 5)
    XCTAssertLessThanOrEqual(quick.attacked.count, 7, "bisection over 16 cuts plus two neighbours")
    XCTAssertTrue(quick.attacked.contains(4) && quick.attacked.contains(6), "both neighbours of the choice are attacked")
    XCTAssertEqual(Set(quick.attacked).count, quick.attacked.count, "no cut is attacked twice")
    let thorough = try search(curve, budget: .thorough)
    XCTAssertEqual(thorough.chosen, 5)
    XCTAssertEqual(thorough.attacked.count, curve.count)
    XCTAssertEqual(try search(curve, budget: .standard).chosen, 5)
  }

  /// A dip under the threshold followed by a cut that fails again is not chosen: the chosen cut
  /// must stay private at every deeper evaluated cut.
  func testNonMonotoneDipIsVerifiedNotAssumed() throws {
    let curve = [0.9, 0.8, 0.7, 0.4, 0.6, 0.55, 0.45, 0.3, 0.2, 0.1]
    XCTAssertEqual(try search(curve, budget: .thorough).chosen, 6)
    XCTAssertEqual(try search(curve, budget: .quick).chosen, 6)
  }

  func testNoCutPassesAndEveryCutPasses() throws {
    let high = [0.9, 0.8, 0.7, 0.65]
    XCTAssertNil(try search(high, budget: .quick).chosen)
    XCTAssertNil(try search(high, budget: .thorough).chosen)
    XCTAssertEqual(try search([0.3, 0.2, 0.1], budget: .quick).chosen, 0)
    XCTAssertEqual(try search([], budget: .quick), CutSearch.Outcome(chosen: nil, attacked: []))
  }

  func testSampleSize() {
    // ±0.05 at s.d. 0.1 needs t·0.1/√n ≤ 0.05: n = 13 (t(12) = 1.782 → 0.0494).
    XCTAssertEqual(Planner.heldOutNeeded(margin: 0.05, std: 0.1), 13)
  }
}

/// Synthetic verdicts for the report and planner tests: an attack per attacker whose SSIM per
/// held-out image (8 photos × 2 crops) centres on `ssim`, recognition and re-identification
/// shares from `hits`.
func syntheticVerdict(cut: String, index: Int, ssim: Double, hits: Double = 0, settings: EvaluationSettings) -> CutVerdict {
  let attacks = settings.attackers.enumerated().map { a, kind in
    let samples = (0..<16).map { i in ScoredImage(score: ssim - 0.02 * Double(a) + 0.01 * Double(i % 4), photo: "p\(i / 2)", seed: 0) }
    let binary = (0..<16).map { i in ScoredImage(score: Double(i) < hits * 16 ? 1 : 0, photo: "p\(i / 2)", seed: 0) }
    return AttackRecord(
      attacker: kind, seed: 0, folder: "\(cut)/\(kind.rawValue)-seed0", grid: "\(cut)/\(kind.rawValue)-seed0/grid.png", imageSize: 64,
      heldOut: 16, heldOutPhotos: 8, trainImages: 100, seconds: 3, converged: true,
      curve: [CurvePoint(at: 1, loss: 0.5, validation: 0.4), CurvePoint(at: 2, loss: 0.3, validation: 0.35)], notes: [],
      measures: [
        MeasureScores(name: "ssim", binary: false, samples: samples, baseline: 0.2),
        MeasureScores(name: "recognition", binary: true, samples: binary, baseline: 0),
      ])
  }
  return CutVerdict(cut: cut, cutIndex: index, featureShape: [8, 16, 16], settings: settings, attacks: attacks, data: "photos")
}

final class PlanReportTests: XCTestCase {
  /// A plan record with a real profile of a small model and a real image grid.
  /// The profile is made once for the class: it is the slow part.
  nonisolated(unsafe) static var profile: ProfileReport?

  func makeRecord(folder: URL) throws -> PlanRecord {
    if Self.profile == nil {
      var o = ProfileOptions()
      o.runs = 1
      o.warmup = 0
      Self.profile = try Profiler.profile(graph: ModelZoo.build("mobilenet_v2"), model: "mobilenet_v2", options: o)
    }
    let profile = Self.profile!
    let names = profile.cuts.map(\.cut.name)
    let settings = EvaluationSettings(threatModel: .whiteBox, budget: .quick, imageSize: 64)
    let verdicts = [1, 4, 6].map { k in syntheticVerdict(cut: names[k], index: k, ssim: 0.8 - Double(k) * 0.1, settings: settings) }
    let photo = try ImageCodec.readUpright(TestAssets.url("eagle.jpg"))
    let grid = try ImageGrid.make([(photo, "original"), (photo, "rebuilt")], tile: 64, columns: 2)
    let gridFile = folder.appendingPathComponent("attacks").appendingPathComponent(verdicts[1].attacks[0].grid)
    try FileManager.default.createDirectory(at: gridFile.deletingLastPathComponent(), withIntermediateDirectories: true)
    try ImageCodec.writePNG(grid, to: gridFile)
    let outcome = PlanOutcome(
      profile: profile, privacy: verdicts, confirmations: [], chosen: profile.cuts[4].cut, skipped: ["avgpool": "not a feature map"],
      tied: [], firstPassChoice: nil)
    return PlanRecord(
      model: "mobilenet_v2", modelDigest: String(repeating: "ab", count: 32),
      data: .init(
        origin: "imagenet-style photos", path: "photos", trainingPath: nil, sourceImages: 20, trainImages: 200, heldOutImages: 16,
        heldOutPhotos: 8, imageSize: 64, deployedSize: 224),
      evaluation: settings, confirmation: nil, measures: ["ssim", "recognition"], settings: ["epochs": "3"], profile: profile,
      outcome: outcome,
      deployment: .init(
        enclave: "head (\(names[4]))", accelerator: "tail", evidenceMode: "simulated", clientPolicy: "{\"allow_simulation\": true}",
        files: ["head": "head.onnx", "tail": "tail.onnx"]),
      versions: MachineInfo.versions)
  }

  func testReportHoldsEverySectionAndRoundTripsAsJSON() throws {
    let folder = try PythonScript.temporaryDirectory("plan-report")
    let record = try makeRecord(folder: folder)
    let html = HTMLReport.render(record, folder: folder)
    for needle in [
      "Weaker than the default evaluation", "white-box threat model", "Cut at <b>", "Runtime per cut", "Privacy per cut", "won by the",
      "data:image/png;base64,", "Learning curves", "Deployment", "simulated", "modeled", "allow_simulation", "not attacked: avgpool",
    ] {
      XCTAssertTrue(html.contains(needle), "report lacks \(needle)")
    }
    // The warning about weaker settings comes before the verdict.
    XCTAssertLessThan(html.range(of: "Weaker than the default")!.lowerBound, html.range(of: "Cut at <b>")!.lowerBound)
    XCTAssertTrue(html.contains("is missing from"), "a missing grid is said, not dropped")
    // Two plots (SSIM, recognition), each with a point per attacker and evaluated cut (3).
    XCTAssertEqual(record.evaluation.attackers, [.optimisation, .inverse, .hybrid])
    XCTAssertEqual(html.components(separatedBy: "class=\"point\"").count - 1, 2 * 3 * 3)
    XCTAssertEqual(html.components(separatedBy: "<tr class=\"chosen").count - 1, 1 + 2, "the chosen cut is highlighted in both tables")
    XCTAssertFalse(html.contains("<script"), "the report has no script")
    XCTAssertFalse(html.contains("http://") && html.contains("src=\"http"), "nothing is fetched from the network")
    // Unconfirmed at 224 px, the chosen cut's map is 3.5× wider there than the verdict saw.
    XCTAssertTrue(
      record.weaknesses.contains { $0.contains("at 64 px only") && $0.contains("about 56×56 positions instead of 16×16") && $0.contains("--confirm true") },
      "\(record.weaknesses)")
    let back = try VeilJSON.decoder().decode(PlanRecord.self, from: VeilJSON.encoder().encode(record))
    XCTAssertEqual(back.chosenCut, record.chosenCut)
    XCTAssertEqual(back.privacy, record.privacy)
    // A measure whose threshold the colour guess reaches says it decides nothing there.
    XCTAssertFalse(html.contains("decides nothing"))
    var raised = record
    let k = try XCTUnwrap(raised.privacy[0].measures.firstIndex { $0.measure == SSIMMeasure.name })
    raised.privacy[0].measures[k].thresholdAsSet = 0.3
    raised.privacy[0].measures[k].status = nil
    XCTAssertTrue(HTMLReport.render(raised, folder: folder).contains("decides nothing: the colour guess reaches the threshold 0.30"))
  }

  /// The confirmation at the deployed resolution keeps its attacks in `attacks-<size>px`; the
  /// report embeds their grids from there.
  func testReportEmbedsTheConfirmationsGridsFromTheirOwnFolder() throws {
    let folder = try PythonScript.temporaryDirectory("plan-report-confirmation")
    var record = try makeRecord(folder: folder)
    var confirmation = try XCTUnwrap(record.privacy.first { $0.cut == record.chosenCut })
    for i in confirmation.attacks.indices { confirmation.attacks[i].imageSize = 224 }
    record.confirmations = [confirmation]
    let grid = try ImageGrid.make([(try ImageCodec.readUpright(TestAssets.url("eagle.jpg")), "original")], tile: 32, columns: 1)
    let gridFile = folder.appendingPathComponent(record.attacksFolder + "-224px").appendingPathComponent(confirmation.attacks[0].grid)
    try FileManager.default.createDirectory(at: gridFile.deletingLastPathComponent(), withIntermediateDirectories: true)
    try ImageCodec.writePNG(grid, to: gridFile)
    let html = HTMLReport.render(record, folder: folder)
    let embedded = html.components(separatedBy: "data:image/png;base64,").count - 1
    XCTAssertEqual(embedded, 2, "the first pass's grid and the confirmation's")
    let confirmationPNG = try Data(contentsOf: gridFile).base64EncodedString()
    XCTAssertTrue(html.contains(confirmationPNG), "the confirmation's grid comes from its own folder, not the first pass's")
    XCTAssertTrue(html.contains("\(record.chosenCut ?? ""), \(confirmation.attacks[0].attacker.title), seed 0, 224 px"))
  }

  /// A profile that stayed unstable leads the report and the plan record, and the choice's
  /// speed-up says its figures are not to be decided on; modeled figures carry their band.
  func testUnstableProfileLeadsTheReportAndThePlanRecord() throws {
    let folder = try PythonScript.temporaryDirectory("plan-report-unstable")
    _ = try makeRecord(folder: folder)  // profiles the model once for the class
    let saved = try XCTUnwrap(Self.profile)
    defer { Self.profile = saved }
    // The class's profile was taken on whatever this machine was doing: set its verdict here.
    var p = saved
    p.unstable = []
    Self.profile = p
    let stable = try makeRecord(folder: folder)
    XCTAssertNil(stable.profileUnstable)
    XCTAssertFalse(HTMLReport.render(stable, folder: folder).contains("Profile unstable"))
    p.unstable = [UnstableSegment(segment: "whole model", reason: "runs spread 120 % (p90 4.40 ms against median 2.00 ms; bound 50 %)")]
    Self.profile = p
    let record = try makeRecord(folder: folder)
    let line = try XCTUnwrap(record.profileUnstable)
    XCTAssertTrue(line.hasPrefix("PROFILE UNSTABLE: whole model: runs spread 120 %"), line)
    let html = HTMLReport.render(record, folder: folder)
    let warning = try XCTUnwrap(html.range(of: "<b>Profile unstable:</b>"))
    XCTAssertLessThan(warning.lowerBound, try XCTUnwrap(html.range(of: "Weaker than the default")).lowerBound)
    XCTAssertLessThan(warning.lowerBound, try XCTUnwrap(html.range(of: "Cut at <b>")).lowerBound)
    XCTAssertTrue(html.contains("runtime figures UNSTABLE"))
    XCTAssertTrue(html.contains("speed-up band % (modeled)") && html.contains(" band "), "modeled figures carry their band")
    let back = try VeilJSON.decoder().decode(PlanRecord.self, from: VeilJSON.encoder().encode(record))
    XCTAssertEqual(back.profileUnstable, line)
    XCTAssertEqual(back.profile.unstable, p.unstable)
  }

  /// Renders the report in a real headless browser (Debian's Chromium) and checks that the two
  /// plots and the image grid are laid out with a size and decoded, and that the screenshot
  /// shows the plots' colours: drawn, not merely present in the HTML.
  func testReportDrawsInHeadlessChromium() throws {
    guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].first(where: FileManager.default.isExecutableFile) else {
      throw XCTSkip("Chromium is not installed (Debian package 'chromium'; scripts/install-deps.sh installs it): the browser rendering check did not run")
    }
    let folder = try PythonScript.temporaryDirectory("plan-report-browser")
    let record = try makeRecord(folder: folder)
    let html = HTMLReport.render(record, folder: folder)
    // The check runs in a copy of the page, so the report itself stays script-free.
    let probe = """
      <pre id="veil-check"></pre><script>
      const out = {svgs: [...document.querySelectorAll('svg.plot')].map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
        points: [...document.querySelectorAll('circle.point')].filter(c => c.getBBox().width > 0).length,
        bars: [...document.querySelectorAll('rect.bar')].filter(c => c.getBBox().width > 0).length,
        images: [...document.querySelectorAll('img.grid')].map(i => [i.complete, i.naturalWidth, i.naturalHeight])};
      document.getElementById('veil-check').textContent = 'VEILCHECK' + JSON.stringify(out) + 'END';
      </script></body>
      """
    let page = folder.appendingPathComponent("probe.html")
    try html.replacingOccurrences(of: "</body>", with: probe).write(to: page, atomically: true, encoding: .utf8)
    let common = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--user-data-dir=\(folder.appendingPathComponent("profile").path)"]
    let dom = try run(chromium, common + ["--virtual-time-budget=5000", "--dump-dom", page.absoluteString])
    guard let start = dom.range(of: "VEILCHECK"), let end = dom.range(of: "END", range: start.upperBound..<dom.endIndex) else {
      return XCTFail("Chromium's DOM has no check result:\n\(dom.suffix(2000))")
    }
    let check = try JSONSerialization.jsonObject(with: Data(dom[start.upperBound..<end.lowerBound].utf8)) as? [String: Any]
    let svgs = check?["svgs"] as? [[Double]] ?? []
    XCTAssertEqual(svgs.count, 3, "runtime, SSIM and recognition plots")
    for s in svgs { XCTAssertTrue(s[0] > 500 && s[1] > 300, "a plot is laid out at \(s)") }
    XCTAssertEqual(check?["points"] as? Int, 2 * 3 * record.evaluation.attackers.count)
    XCTAssertEqual(check?["bars"] as? Int, record.profile.cuts.count * 3)
    let images = check?["images"] as? [[Any]] ?? []
    XCTAssertEqual(images.count, 1)
    XCTAssertEqual(images.first?[0] as? Bool, true)
    XCTAssertGreaterThan(images.first?[1] as? Int ?? 0, 100, "the grid PNG decoded")

    // The screenshot: the tail bars' blue and the chosen column's green are on screen.
    let shot = folder.appendingPathComponent("shot.png")
    _ = try run(chromium, common + ["--window-size=1200,3200", "--screenshot=\(shot.path)", folder.appendingPathComponent("probe.html").absoluteString])
    let image = try ImageCodec.read(shot).byteImage().rgb()
    var blue = 0, green = 0
    for y in 0..<image.height {
      for x in 0..<image.width {
        let (r, g, b) = (Int(image[x, y, 0]), Int(image[x, y, 1]), Int(image[x, y, 2]))
        if abs(r - 0x1f) < 12 && abs(g - 0x77) < 12 && abs(b - 0xb4) < 12 { blue += 1 }
        if g > r + 20 && g > b + 20 && r > 180 { green += 1 }  // #2ca02c at 18 % over white
      }
    }
    XCTAssertGreaterThan(blue, 500, "tail bars and SSIM points are painted")
    XCTAssertGreaterThan(green, 2000, "the chosen cut's column is painted")
  }

  func run(_ tool: String, _ arguments: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = arguments
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "\(tool) exited \(p.terminationStatus)"]) }
    return String(decoding: data, as: UTF8.self)
  }
}

final class PlannerTests: XCTestCase {
  /// A small chain of convolutions: eight structural points, quick to profile.
  func chain(seed: UInt64) -> Graph {
    var rng = SeededGenerator(seed: seed)
    var g = Graph(name: "chain")
    var v = g.addInput(name: "x", shape: [1, 3, 32, 32])
    var c = 3
    for i in 0..<8 {
      v = g.conv(v, weight: .randomNormal(shape: [8, c, 3, 3], std: 0.2, generator: &rng), .square(3), name: "conv\(i)")
      v = g.activation(v, .relu, name: "relu\(i)")
      c = 8
    }
    g.outputs = [v]
    return g
  }

  /// A judge whose SSIM falls with depth, as a real attacker's does; it counts its calls.
  final class FallingJudge: CutJudge {
    var settings: EvaluationSettings
    var calls: [String] = []
    init(settings: EvaluationSettings) { self.settings = settings }
    func unattackable(_ cut: CutPoint) -> String? { nil }
    func evaluate(cut: CutPoint, index: Int, progress: (AttackerKind, UInt64, AttackProgress) -> Void) throws -> CutVerdict {
      calls.append(cut.name)
      return syntheticVerdict(cut: cut.name, index: index, ssim: 0.95 - 0.15 * Double(index), settings: settings)
    }
  }

  func testPlannerResumesRefusesAnotherModelAndChecksItsSettings() throws {
    let folder = try PythonScript.temporaryDirectory("planner")
    var options = PlanOptions()
    options.budget = .quick
    options.profile.runs = 1
    options.profile.warmup = 0
    let planner = try Planner(graph: chain(seed: 1), model: "chain", options: options, folder: folder)
    let settings = EvaluationSettings(threatModel: .blackBox, budget: .quick, imageSize: 32)
    let judge = FallingJudge(settings: settings)
    var lines: [String] = []
    let first = try planner.run(evaluation: judge) { lines.append($0) }
    XCTAssertTrue(first.skipped.isEmpty)
    let cuts = first.profile.cuts.map(\.cut.name)
    XCTAssertGreaterThanOrEqual(cuts.count, 7)
    let chosen = try XCTUnwrap(first.chosen)
    let k = try XCTUnwrap(cuts.firstIndex(of: chosen.name))
    XCTAssertTrue(first.privacy.first { $0.cut == cuts[k] }!.isPrivate)
    if k > 0 { XCTAssertFalse(first.privacy.first { $0.cut == cuts[k - 1] }!.isPrivate, "the shallower neighbour was evaluated and leaks") }
    XCTAssertLessThan(judge.calls.count, cuts.count, "the quick budget does not evaluate every cut")
    XCTAssertTrue(lines.contains { $0.hasPrefix("profile:") })
    XCTAssertTrue(lines.contains { $0.contains("black-box threat model") }, "each verdict is logged with its threat model")

    // Interrupted and run again: nothing is profiled or evaluated twice.
    let before = judge.calls.count
    lines = []
    let again = try planner.run(evaluation: judge) { lines.append($0) }
    XCTAssertEqual(judge.calls.count, before)
    XCTAssertEqual(again.chosen?.name, first.chosen?.name)
    XCTAssertTrue(lines.contains { $0.contains("reusing") })

    // Verdicts reached under other settings (another threat model) are redone, the profile kept.
    judge.settings = EvaluationSettings(threatModel: .whiteBox, budget: .quick, imageSize: 32)
    lines = []
    let third = try planner.run(evaluation: judge) { lines.append($0) }
    XCTAssertEqual(judge.calls.count, 2 * before, "every cut was evaluated again")
    XCTAssertEqual(third.privacy.count, first.privacy.count)
    XCTAssertTrue(lines.contains { $0.contains("reusing") })

    // --reprofile measures again and keeps the verdicts.
    var again2 = options
    again2.reprofile = true
    lines = []
    _ = try Planner(graph: chain(seed: 1), model: "chain", options: again2, folder: folder).run(evaluation: judge) { lines.append($0) }
    XCTAssertEqual(judge.calls.count, 2 * before, "no cut was evaluated again")
    XCTAssertFalse(lines.contains { $0.contains("reusing") })

    // A deployed-resolution pass that finds the first choice leaking moves the choice deeper.
    final class Strict: CutJudge {
      var settings = EvaluationSettings(threatModel: .whiteBox, budget: .standard, imageSize: 64)
      let refuse: String
      init(refuse: String) { self.refuse = refuse }
      func unattackable(_ cut: CutPoint) -> String? { nil }
      func evaluate(cut: CutPoint, index: Int, progress: (AttackerKind, UInt64, AttackProgress) -> Void) throws -> CutVerdict {
        syntheticVerdict(cut: cut.name, index: index, ssim: cut.name == refuse ? 0.9 : 0.1, settings: settings)
      }
    }
    let confirmed = try planner.run(evaluation: judge, confirmation: Strict(refuse: chosen.name)) { _ in }
    XCTAssertEqual(confirmed.firstPassChoice, chosen.name)
    XCTAssertEqual(confirmed.chosen.map { cuts.firstIndex(of: $0.name)! }, k + 1)
    XCTAssertEqual(confirmed.confirmations.map(\.cut), [chosen.name, cuts[k + 1]])

    // Another model's folder and too few held-out images are refused.
    let other = try Planner(graph: chain(seed: 2), model: "chain", options: options, folder: folder)
    XCTAssertThrowsError(try other.run(evaluation: judge) { _ in }) { e in
      XCTAssertTrue("\(e)".contains("another model"), "\(e)")
    }
    XCTAssertThrowsError(try planner.checkHeldOut(4)) { e in XCTAssertTrue("\(e)".contains("needs at least"), "\(e)") }
    XCTAssertNoThrow(try planner.checkHeldOut(40))
  }

  /// The whole plan through the library, on a small model and the registry photos: real
  /// attackers (the inverse network and the white-box optimisation, briefly), the choice, the
  /// deployment folder and its files, plan.json for both readers, the report.
  /// Run twice: under a lenient SSIM threshold, which some cut of a random-weight chain meets
  /// against these brief attackers, so the deployment folder is always written and checked; then
  /// under a threshold no cut meets, which writes no deployment and says so.
  func testPlanJobWritesTheDeploymentFolder() throws {
    let folder = try PythonScript.temporaryDirectory("plan-job")
    let photos = try PythonScript.temporaryDirectory("plan-job-photos")
    for name in ["coffee.png", "chelsea.png", "astronaut.png", "eagle.jpg", "dog.jpg", "coffee.png"].enumerated() {
      try FileManager.default.copyItem(at: TestAssets.url(name.element), to: photos.appendingPathComponent("\(name.offset)-\(name.element)"))
    }
    let graph = chain(seed: 5)
    var job = PlanJob(
      graph: graph, name: "chain", data: photos, dataOrigin: "user images", folder: folder,
      preprocessing: InputPreprocessing(name: "imagenet", normalization: .imagenet, channelOrder: .rgb))
    job.options.budget = .quick
    job.options.profile.runs = 1
    job.options.profile.warmup = 0
    job.options.margin = 0.5
    job.imageSize = 32
    job.semanticMeasures = false
    job.cacheDirectory = nil
    job.overrides = { c in
      c.epochs = 1
      c.batch = 8
      c.generatorWidth = 8
      c.trainCropsPerPhoto = 8
      c.optimisationSteps = 10
      c.tvWeights = [1]
      c.testFraction = 0.4
    }
    job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.99])
    var lines: [String] = []
    let result = try job.run(log: { lines.append($0) })
    let record = result.document.planning
    XCTAssertEqual(record.evaluation.attackers, [.optimisation, .inverse, .hybrid])
    XCTAssertFalse(record.privacy.isEmpty)
    XCTAssertTrue(record.weaknesses.contains { $0.contains("not run") }, "\(record.weaknesses)")
    XCTAssertTrue(lines.contains { $0.contains("weaker than the standard budget") })
    let reread = try PlanDocument.read(result.planFile)
    XCTAssertEqual(reread.planning.chosenCut, record.chosenCut)
    XCTAssertEqual(reread.planning.privacy, record.privacy)
    let html = try String(contentsOf: result.report, encoding: .utf8)
    XCTAssertTrue(html.contains("white-box threat model"))
    let chosen = try XCTUnwrap(record.chosenCut, "SSIM under 0.99 at some cut: \(record.privacy.map(\.cut))")
    for file in ["head.onnx", "tail.onnx", "head.onnx.sealed", "head.key", "veil.manifest.template", "client-policy.json"] {
      XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent(file).path), file)
    }
    let mode = try FileManager.default.attributesOfItem(atPath: folder.appendingPathComponent("head.key").path)[.posixPermissions] as? Int
    XCTAssertEqual(mode, 0o600, "the key is the owner's alone")
    let policy = try Policy(json: Data(contentsOf: folder.appendingPathComponent("client-policy.json")))
    XCTAssertNotNil(policy.mrEnclave)
    XCTAssertTrue(policy.allowSimulation)
    let recorded = try XCTUnwrap(record.deployment?.clientPolicy, "the plan records the client's policy")
    XCTAssertEqual(try Policy(json: Data(recorded.utf8)), policy, "the policy recorded is the one written")
    let deployment = try DeploymentPlan.load(folder.path)
    XCTAssertEqual(deployment.plan.cut.name, chosen)
    XCTAssertEqual(deployment.plan.sealedHead, "head.onnx.sealed")
    XCTAssertNotNil(reread.deployment)

    // A threshold no cut meets: no deployment, and the report says so.
    job.folder = try PythonScript.temporaryDirectory("plan-job-none")
    job.thresholds = LeakageThresholds([SSIMMeasure.name: 0.0001])
    let none = try job.run(log: { _ in })
    XCTAssertNil(none.document.planning.chosenCut)
    XCTAssertNil(try PlanDocument.read(none.planFile).deployment)
    XCTAssertFalse(FileManager.default.fileExists(atPath: job.folder.appendingPathComponent("head.onnx.sealed").path))
    XCTAssertTrue(try String(contentsOf: none.report, encoding: .utf8).contains("Nothing to deploy"))
  }

  /// The confirmation at the deployed size: the white-box optimisation holds out every photo
  /// but the 4 that calibrate its prior, each whole; the black-box inverse network keeps the
  /// first pass's split and crops; separate attack data holds out every photo already.
  func testConfirmationHoldsOutEveryPhotoTheOptimisationDoesNotCalibrateOn() throws {
    var job = PlanJob(
      graph: chain(seed: 5), name: "chain", data: AttackImages.registryPhotosFolder, dataOrigin: "registry photos",
      folder: FileManager.default.temporaryDirectory, preprocessing: InputPreprocessing(name: "imagenet", normalization: .imagenet, channelOrder: .rgb))
    job.options.budget = .quick
    job.overrides = { $0.testFraction = 0.4 }
    let first = EvaluationSettings(threatModel: .whiteBox, budget: .quick, imageSize: 64)
    let c = job.confirmationSettings(size: 224, first: first, photos: 36)
    XCTAssertEqual(c.attackers, [.optimisation])
    XCTAssertEqual(c.seeds, [0])
    XCTAssertEqual(c.config.imageSize, 224)
    XCTAssertEqual(c.config.calibrationImages, 4)
    XCTAssertEqual(c.config.optimisationCropsPerPhoto, 1)
    var config = c.config
    config.attacker = .optimisation
    let files = try PrivacyEvaluation.photoFiles(AttackImages.registryPhotosFolder)
    XCTAssertEqual(files.count, 36, "the registry photos (make assets)")
    let images = try AttackImages.photos(files, config: config, source: "registry photos")
    XCTAssertEqual(images.testPhotos.count, 32)
    XCTAssertEqual(images.test.count, 32, "each held-out photo whole")
    XCTAssertEqual(images.trainPhotos.count, 4, "the photos that calibrate the prior")
    XCTAssertTrue(Set(images.trainPhotos).isDisjoint(with: images.testPhotos))

    job.threatModel = .blackBox
    let blackBox = job.confirmationSettings(size: 224, first: EvaluationSettings(threatModel: .blackBox, budget: .quick, imageSize: 64), photos: 36)
    XCTAssertEqual(blackBox.attackers, [.inverse])
    XCTAssertEqual(blackBox.config.testFraction, 0.4, "the first pass's split")
    XCTAssertEqual(blackBox.config.testCropsPerPhoto, AttackConfig().testCropsPerPhoto)

    job.threatModel = .whiteBox
    job.attackData = AttackImages.registryPhotosFolder
    XCTAssertEqual(job.confirmationSettings(size: 224, first: first, photos: 36).config.testFraction, 0.4, "attack data of its own: every photo is held out anyway")
  }

  /// plan.json is one file for both readers: the enclave reads the deployment at the top level,
  /// the planner its evidence under "planning".
  func testPlanDocumentIsADeploymentPlanWithItsEvidence() throws {
    let folder = try PythonScript.temporaryDirectory("plan-document")
    let graph = chain(seed: 3)
    let loaded = try DeploymentPlan.write(
      model: graph, name: "chain", cut: "relu3", preprocessing: .init(preset: "imagenet", appliedIn: .client), to: folder)
    var options = ProfileOptions()
    options.runs = 1
    let profile = try Profiler.profile(graph: graph, model: "chain", options: options)
    let settings = EvaluationSettings()
    let cut = profile.cuts.first { $0.cut.name == "relu3" }!.cut
    let record = PlanRecord(
      model: "chain", modelDigest: try Planner.digest(graph),
      data: .init(
        origin: "user images", path: "x", trainingPath: nil, sourceImages: 5, trainImages: 6, heldOutImages: 4, heldOutPhotos: 2,
        imageSize: 32, deployedSize: nil),
      evaluation: settings, confirmation: nil, measures: ["ssim"], settings: [:], profile: profile,
      outcome: PlanOutcome(profile: profile, privacy: [], confirmations: [], chosen: cut, skipped: [:], tied: [], firstPassChoice: nil),
      deployment: nil, versions: [:])
    try PlanDocument(deployment: loaded.plan, planning: record).write(to: loaded.file)
    XCTAssertEqual(try DeploymentPlan.load(loaded.file.path).plan, loaded.plan)
    XCTAssertEqual(loaded.plan.model.sha256, record.modelDigest, "one digest for both")
    let back = try PlanDocument.read(loaded.file)
    XCTAssertEqual(back.deployment, loaded.plan)
    XCTAssertEqual(back.planning.chosenCut, "relu3")
    // The folder is now this model's: another model's planner refuses it.
    let other = try Planner(graph: chain(seed: 4), model: "chain", options: PlanOptions(), folder: folder)
    XCTAssertThrowsError(try other.loadState(settings: settings, confirmation: nil)) { e in XCTAssertTrue("\(e)".contains("another model"), "\(e)") }
  }
}
