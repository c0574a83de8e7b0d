import Foundation
import VeilData
import VeilGraph
import VeilModels
import VeilPlanning
import VeilServing
import VeilTensor
import VeilTestSupport
import XCTest

final class CutSearchTests: XCTestCase {
  /// Runs the search on a curve of upper bounds and returns its outcome.
  func search(_ curve: [Double], threshold: Double = 0.5, budget: PlanBudget) throws -> CutSearch.Outcome {
    try CutSearch(cutCount: curve.count, threshold: threshold, budget: budget).run { curve[$0] }
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
  /// must stay under the threshold at the next cut as well.
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

  func testUpperBoundAndSampleSize() {
    XCTAssertEqual(PrivacyStatistics.upperBound(mean: 0.5, std: 0.1, count: 10), 0.5 + 1.833 * 0.1 / 10.0.squareRoot(), accuracy: 1e-12)
    XCTAssertEqual(PrivacyStatistics.upperBound(mean: 0.5, std: 0.1, count: 1), .infinity)
    XCTAssertGreaterThan(PrivacyStatistics.upperBound(mean: 0.5, std: 0.1, count: 5), PrivacyStatistics.upperBound(mean: 0.5, std: 0.1, count: 50))
    // ±0.05 at s.d. 0.1 needs t·0.1/√n ≤ 0.05: n = 13 (t(12) = 1.782 → 0.0494).
    XCTAssertEqual(PrivacyStatistics.heldOutNeeded(margin: 0.05, std: 0.1), 13)
  }
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
    let photo = try ImageCodec.readUpright(TestAssets.url("eagle.jpg"))
    let grid = try ImageGrid.make([(photo, "original"), (photo, "rebuilt")], tile: 64, columns: 2)
    try ImageCodec.writePNG(grid, to: folder.appendingPathComponent("grid-1.png"))
    let names = profile.cuts.map(\.cut.name)
    let points = [1, 4, 6].map { k in
      PrivacyPoint(
        cutIndex: k, cut: names[k], attacker: "cgan", ssimMean: 0.8 - Double(k) * 0.1, ssimStd: 0.05,
        ssimUpper: PrivacyStatistics.upperBound(mean: 0.8 - Double(k) * 0.1, std: 0.05, count: 12), psnrMean: 20, psnrStd: 2,
        heldOut: 12, trainImages: 200, seconds: 30, gridPNG: k == 4 ? "grid-1.png" : "missing.png")
    }
    return PlanRecord(
      model: "mobilenet_v2", modelDigest: String(repeating: "ab", count: 32),
      data: .init(origin: "imagenet-style photos", path: "photos", images: 212, sourceImages: 20, trainImages: 200, heldOutImages: 12, imageSize: 64),
      threshold: 0.45, attacker: "cgan", budget: .quick, seeds: ["attack": 1, "split": 2], settings: ["epochs": "3"],
      profile: profile, privacy: points, chosenCut: names[4], fastestCut: profile.fastestCut,
      deployment: .init(
        enclave: "head (\(names[4]))", accelerator: "tail", evidenceMode: "simulated", clientPolicy: "{\"allow_simulation\": true}",
        files: ["head": "head.onnx", "tail": "tail.onnx"]),
      versions: MachineInfo.versions)
  }

  func testReportHoldsEverySectionAndRoundTripsAsJSON() throws {
    let folder = try PythonScript.temporaryDirectory("plan-report")
    let record = try makeRecord(folder: folder)
    let html = HTMLReport.render(record, folder: folder)
    for needle in ["Cut at <b>", "Runtime per cut", "Privacy per cut", "threshold <b>0.45</b>", "data:image/png;base64,", "Deployment", "simulated", "modeled", "allow_simulation"] {
      XCTAssertTrue(html.contains(needle), "report lacks \(needle)")
    }
    XCTAssertTrue(html.contains("missing.png"), "a missing grid is said, not dropped")
    XCTAssertEqual(html.components(separatedBy: "class=\"point\"").count - 1, 3)
    XCTAssertEqual(html.components(separatedBy: "<tr class=\"chosen").count - 1, 2, "the chosen cut is highlighted in both tables")
    XCTAssertFalse(html.contains("<script"), "the report has no script")
    XCTAssertFalse(html.contains("http://") && html.contains("src=\"http"), "nothing is fetched from the network")
    let back = try JSONDecoder().decode(PlanRecord.self, from: JSONEncoder().encode(record))
    XCTAssertEqual(back.chosenCut, record.chosenCut)
    XCTAssertEqual(back.privacy, record.privacy)
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
    XCTAssertEqual(svgs.count, 2, "runtime and privacy plots")
    for s in svgs { XCTAssertTrue(s[0] > 500 && s[1] > 300, "a plot is laid out at \(s)") }
    XCTAssertEqual(check?["points"] as? Int, 3)
    XCTAssertEqual(check?["bars"] as? Int, record.profile.cuts.count * 3)
    let images = check?["images"] as? [[Any]] ?? []
    XCTAssertEqual(images.count, 1)
    XCTAssertEqual(images.first?[0] as? Bool, true)
    XCTAssertGreaterThan(images.first?[1] as? Int ?? 0, 100, "the grid PNG decoded")

    // The screenshot: the tail bars' blue and the chosen column's green are on screen.
    let shot = folder.appendingPathComponent("shot.png")
    _ = try run(chromium, common + ["--window-size=1200,2600", "--screenshot=\(shot.path)", folder.appendingPathComponent("probe.html").absoluteString])
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

  func testPlannerResumesRefusesAnotherModelAndChecksItsSettings() throws {
    let folder = try PythonScript.temporaryDirectory("planner")
    var options = PlanOptions()
    options.threshold = 0.5
    options.profile.runs = 1
    options.profile.warmup = 0
    let planner = try Planner(graph: chain(seed: 1), model: "chain", options: options, folder: folder)
    // SSIM falls with depth, as a real attacker's does; the closure counts its calls.
    var calls: [String] = []
    func attack(_ cut: CutPoint, _ k: Int) throws -> PrivacyPoint {
      calls.append(cut.name)
      let mean = 0.95 - 0.1 * Double(k)
      return PrivacyPoint(
        cutIndex: k, cut: cut.name, attacker: "inverse", ssimMean: mean, ssimStd: 0.04,
        ssimUpper: PrivacyStatistics.upperBound(mean: mean, std: 0.04, count: 16), psnrMean: 18, psnrStd: 1, heldOut: 16,
        trainImages: 64, seconds: 1)
    }
    var lines: [String] = []
    let first = try planner.run(attacker: "inverse", attack: attack) { lines.append($0) }
    XCTAssertTrue(first.skipped.isEmpty)
    let cuts = first.profile.cuts.map(\.cut.name)
    XCTAssertGreaterThanOrEqual(cuts.count, 7)
    XCTAssertNotNil(first.chosen)
    let k = try XCTUnwrap(cuts.firstIndex(of: first.chosen!.name))
    XCTAssertLessThan(first.privacy.first { $0.cut == cuts[k] }!.ssimUpper, 0.5)
    if k > 0 { XCTAssertGreaterThanOrEqual(first.privacy.first { $0.cut == cuts[k - 1] }!.ssimUpper, 0.5, "the shallower neighbour was attacked and fails") }
    XCTAssertLessThan(calls.count, cuts.count, "the quick budget does not attack every cut")
    XCTAssertTrue(lines.contains { $0.hasPrefix("profile:") })

    // Interrupted and run again: nothing is profiled or attacked twice.
    let before = calls.count
    lines = []
    let again = try planner.run(attacker: "inverse", attack: attack) { lines.append($0) }
    XCTAssertEqual(calls.count, before)
    XCTAssertEqual(again.chosen?.name, first.chosen?.name)
    XCTAssertTrue(lines.contains { $0.contains("reusing") })

    // Attacks trained under other settings (more epochs) are redone, the profile is kept.
    var longer = options
    longer.attackSettings = "epochs 6"
    let retrained = try Planner(graph: chain(seed: 1), model: "chain", options: longer, folder: folder)
    lines = []
    let third = try retrained.run(attacker: "inverse", attack: attack) { lines.append($0) }
    XCTAssertEqual(calls.count, 2 * before, "every attack ran again")
    XCTAssertEqual(third.privacy.count, first.privacy.count)
    XCTAssertTrue(lines.contains { $0.contains("reusing") })

    // --reprofile measures again and keeps the attacks.
    longer.reprofile = true
    lines = []
    _ = try Planner(graph: chain(seed: 1), model: "chain", options: longer, folder: folder).run(attacker: "inverse", attack: attack) {
      lines.append($0)
    }
    XCTAssertEqual(calls.count, 2 * before, "no attack ran again")
    XCTAssertFalse(lines.contains { $0.contains("reusing") })

    // Another model's folder, a threshold outside (0, 1), too few held-out images.
    let other = try Planner(graph: chain(seed: 2), model: "chain", options: options, folder: folder)
    XCTAssertThrowsError(try other.run(attacker: "inverse", attack: attack) { _ in }) { e in
      XCTAssertTrue("\(e)".contains("another model"), "\(e)")
    }
    options.threshold = 1.2
    XCTAssertThrowsError(try Planner(graph: chain(seed: 1), model: "chain", options: options, folder: folder)) { e in
      XCTAssertEqual(e as? PlanError, .invalidThreshold(1.2))
    }
    XCTAssertThrowsError(try planner.checkHeldOut(4)) { e in XCTAssertTrue("\(e)".contains("needs at least"), "\(e)") }
    XCTAssertNoThrow(try planner.checkHeldOut(40))
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
    let record = PlanRecord(
      model: "chain", modelDigest: try Planner.digest(graph),
      data: .init(origin: "user images", path: "x", images: 10, sourceImages: 5, trainImages: 6, heldOutImages: 4, imageSize: 32),
      threshold: 0.3, attacker: "inverse", budget: .quick, seeds: [:], settings: [:], profile: profile, privacy: [],
      chosenCut: "relu3", fastestCut: profile.fastestCut, deployment: nil, versions: [:])
    try PlanDocument(deployment: loaded.plan, planning: record).write(to: loaded.file)
    XCTAssertEqual(try DeploymentPlan.load(loaded.file.path).plan, loaded.plan)
    XCTAssertEqual(loaded.plan.model.sha256, record.modelDigest, "one digest for both")
    let back = try JSONDecoder().decode(PlanDocument.self, from: Data(contentsOf: loaded.file))
    XCTAssertEqual(back.deployment, loaded.plan)
    XCTAssertEqual(back.planning.chosenCut, "relu3")
    // The folder is now this model's: another model's planner refuses it.
    let other = try Planner(graph: chain(seed: 4), model: "chain", options: PlanOptions(), folder: folder)
    XCTAssertThrowsError(try other.loadState(attacker: "inverse")) { e in XCTAssertTrue("\(e)".contains("another model"), "\(e)") }
  }
}
