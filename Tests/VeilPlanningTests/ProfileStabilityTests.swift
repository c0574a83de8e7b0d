import Foundation
import VeilPlanning
import VeilTEE
import VeilTensor
import XCTest

/// The profile's stability rule (`ProfileStability`), on synthetic run times, and the report's
/// new fields in JSON, old profiles included.
final class ProfileStabilityTests: XCTestCase {
  func testStableRunsPass() {
    let runs = SegmentRuns(seconds: [0.0100, 0.0102, 0.0099, 0.0104, 0.0101])
    XCTAssertEqual(runs.medianMs, 10.1, accuracy: 1e-9)
    XCTAssertEqual(runs.p90Ms, 10.4, accuracy: 1e-9)  // nearest rank: the slowest of five
    XCTAssertEqual(runs.minMs, 9.9, accuracy: 1e-9)
    XCTAssertEqual(runs.spread, 0.3 / 10.1, accuracy: 1e-9)
    XCTAssertNil(ProfileStability.spreadProblem(runs))
    // A single run has no spread to judge.
    XCTAssertNil(ProfileStability.spreadProblem(SegmentRuns(seconds: [0.5])))
    // head + tail a little above the whole model (a kernel boundary, a cold tail) is normal.
    XCTAssertNil(ProfileStability.splitProblem(headMs: 1.1, tailMs: 1.2, wholeMs: 2.0))
    XCTAssertNil(ProfileStability.splitProblem(headMs: 0.1, tailMs: 1.9, wholeMs: 2.0))
  }

  /// A head and a tail timed while the machine ran at half speed for two of four runs (the
  /// whole model beside them took 20 ms instead of 10): as shares of the whole model's runs
  /// beside them, they are steady, and at a pace of 10 ms they take what they take at full speed.
  func testPacedRunsAreSharesOfTheWholeModelBesideThem() throws {
    var times = PacedTimes(
      whole: [0.010, 0.020, 0.020, 0.010], head: [0.004, 0.008, 0.008, 0.004], tail: [0.007, 0.014, 0.014, 0.007], feature: Tensor(zeros: [1]))
    XCTAssertGreaterThan(SegmentRuns(seconds: times.head).spread, 0.3, "raw, the slow runs spread")
    let (head, tail) = times.runs(at: 10)
    XCTAssertEqual(head.medianMs, 4, accuracy: 1e-9)
    XCTAssertEqual(head.spread, 0, accuracy: 1e-9)
    XCTAssertEqual(try XCTUnwrap(tail).medianMs, 7, accuracy: 1e-9)
    XCTAssertEqual(times.runs(at: 20).head.medianMs, 8, accuracy: 1e-9)
    // A burst inside one run shows as a spread of the shares.
    times.head[1] = 0.020
    XCTAssertGreaterThan(times.runs(at: 10).head.p90Ms, 4.5)
    XCTAssertNil(PacedTimes(whole: [0.01], head: [0.005], tail: nil, feature: Tensor(zeros: [1])).runs(at: 10).tail)
  }

  func testSpreadTooWideIsFlagged() throws {
    // One run of five taken while something else ran: p90 (the slowest) is 3× the median.
    let runs = SegmentRuns(seconds: [0.010, 0.0101, 0.030, 0.0099, 0.0100])
    XCTAssertEqual(runs.spread, 2.0, accuracy: 1e-9)
    let why = try XCTUnwrap(ProfileStability.spreadProblem(runs))
    XCTAssertTrue(why.contains("spread") && why.contains("bound 50 %"), why)
    // Just inside and just outside the bound.
    XCTAssertNil(ProfileStability.spreadProblem(SegmentRuns(seconds: [1, 1, 1, 1, 1.49])))
    XCTAssertNotNil(ProfileStability.spreadProblem(SegmentRuns(seconds: [1, 1, 1, 1, 1.51])))
    // A segment of microseconds: 80 % of 5 µs is timer noise, not a busy machine.
    XCTAssertNil(ProfileStability.spreadProblem(SegmentRuns(seconds: [5e-6, 5e-6, 5e-6, 5e-6, 9e-6])))
  }

  func testHeadPlusTailFarFromTheWholeModelIsFlagged() throws {
    // The case: the whole model timed at 1035.7 ms under load, the cuts at ~2 ms.
    let low = try XCTUnwrap(ProfileStability.splitProblem(headMs: 0.8, tailMs: 1.2, wholeMs: 1035.7))
    XCTAssertTrue(low.contains("whole model") && low.contains("0.00×"), low)
    // And the other way: a head timed during a burst.
    XCTAssertNotNil(ProfileStability.splitProblem(headMs: 30, tailMs: 1.2, wholeMs: 2.0))
    XCTAssertNil(ProfileStability.splitProblem(headMs: 2.0, tailMs: 1.9, wholeMs: 2.0))
    XCTAssertNotNil(ProfileStability.splitProblem(headMs: 2.0, tailMs: 2.1, wholeMs: 2.0))
    // A head longer than the whole model it is part of, though head + tail is inside the bounds.
    let head = try XCTUnwrap(ProfileStability.splitProblem(headMs: 3.0, tailMs: 0.2, wholeMs: 2.0))
    XCTAssertTrue(head.contains("the head 3.00 ms is 1.50×"), head)
    XCTAssertNil(ProfileStability.splitProblem(headMs: 2.4, tailMs: 0.2, wholeMs: 2.0))
    XCTAssertNil(ProfileStability.splitProblem(headMs: 0.06, tailMs: 0.01, wholeMs: 0.04), "microseconds: timer noise")
  }

  /// A profile written before the stability check and the bands, as plan-state.json and
  /// plan.json hold it.
  static let oldProfile = """
    {"model":"tiny","batch":1,"machine":"cpu, 2 cores, 8 GiB","threads":2,"versions":{"veil":"0.3.0"},
     "preset":{"name":"sgx1","kind":"sgx","epcBytes":98041856,"pageSwapCycles":40000,"transitionCycles":12000,"transitionsPerIO":2,
               "memoryEncryptionFactor":1.25,"cpuHz":3000000000,"runtimeBytes":8388608,"sources":[]},
     "teeTime":"modeled","accelerator":"local","link":"10 Gb/s","runs":5,
     "baseline":{"nativeMs":2.0,"totalMs":2.6,
                 "tee":{"nativeSeconds":0.002,"computeSeconds":0.0025,"workingSetPages":100,"pageSwaps":0,"pagingSeconds":0,
                        "transitionSeconds":0.0001,"label":"modeled"}},
     "cuts":[{"cut":{"index":0,"name":"block1","tensor":"t1","headNodes":3,"shape":[1,8,4,4],"bytes":512,"headParameterBytes":64,
                     "headFlops":100,"tailFlops":200},
              "headNativeMs":0.5,"headTEEMs":0.7,
              "headTEE":{"nativeSeconds":0.0005,"computeSeconds":0.000625,"workingSetPages":10,"pageSwaps":0,"pagingSeconds":0,
                         "transitionSeconds":0.0001,"label":"modeled"},
              "transferSealMs":0.01,"transferOpenMs":0.01,"transferWireMs":0.1,"transferMs":0.12,"tailMs":1.6,"totalMs":2.42,
              "speedupPercent":6.9}],
     "measured":["headNativeMs"],"modeled":["headTEEMs"],"fastestCut":"block1"}
    """

  /// A steady busy neighbour slows every segment alike; the share of the CPU it took flags the
  /// profile instead.
  func testABusyMachineIsFlaggedByTheCPUOthersUsed() {
    func conditions(others: Double?, steal: Double?) -> ProfileConditions {
      ProfileConditions(
        loadAverageBefore: 1, loadAverageAfter: 1, cores: 2, wallSeconds: 10, processCPUSeconds: 10, stealPercent: steal,
        othersPercent: others)
    }
    XCTAssertNil(ProfileStability.busyProblem(conditions(others: 5, steal: 0)))
    XCTAssertNil(ProfileStability.busyProblem(conditions(others: nil, steal: nil)), "unknown counters flag nothing")
    let busy = ProfileStability.busyProblem(conditions(others: 48, steal: 0))
    XCTAssertTrue(busy?.contains("other processes used 48 %") ?? false, busy ?? "nil")
    let stolen = ProfileStability.busyProblem(conditions(others: 0, steal: 30))
    XCTAssertTrue(stolen?.contains("stole 30 %") ?? false, stolen ?? "nil")
  }

  func testOldProfileDecodesAndAnUnstableOneRoundTrips() throws {
    var report = try JSONDecoder().decode(ProfileReport.self, from: Data(Self.oldProfile.utf8))
    XCTAssertNil(report.unstable)
    XCTAssertNil(report.conditions)
    XCTAssertNil(report.baseline.nativeRuns)
    XCTAssertNil(report.cuts[0].speedupBand)
    XCTAssertNil(report.unstableLine)
    XCTAssertFalse(report.isPaced, "timed before each cut was timed beside the whole model: the planner times it again")
    XCTAssertFalse(report.table.hasPrefix("PROFILE UNSTABLE"))
    XCTAssertFalse(report.speedupStatement(report.cuts[0]).contains("UNSTABLE"))

    report.unstable = [
      UnstableSegment(
        segment: "block1 head + tail", reason: "head + tail 2.10 ms is 0.00× the whole model's 1035.70 ms")
    ]
    report.conditions = ProfileConditions(
      loadAverageBefore: 2.5, loadAverageAfter: 3.1, cores: 2, wallSeconds: 4, processCPUSeconds: 5, stealPercent: 0,
      othersPercent: 38)
    report.cuts[0].headRuns = SegmentRuns(seconds: [0.0005, 0.0005, 0.002])
    report.cuts[0].speedupBand = ModeledBand(low: -2, preset: 6.9, high: 9)
    report.cuts[0].speedupSignDependsOn = ["runtime_mib"]
    let data = try JSONEncoder().encode(report)
    let back = try JSONDecoder().decode(ProfileReport.self, from: data)
    XCTAssertEqual(back.unstable, report.unstable)
    XCTAssertEqual(back.conditions, report.conditions)
    XCTAssertEqual(back.cuts[0].headRuns, report.cuts[0].headRuns)
    XCTAssertEqual(back.cuts[0].speedupBand, report.cuts[0].speedupBand)
    var paced = back
    for k in paced.cuts.indices { paced.cuts[k].wholeBesideMs = 2.0 }
    XCTAssertTrue(try JSONDecoder().decode(ProfileReport.self, from: try JSONEncoder().encode(paced)).isPaced)
    let line = try XCTUnwrap(back.unstableLine)
    XCTAssertTrue(line.hasPrefix("PROFILE UNSTABLE: block1 head + tail: "), line)
    XCTAssertTrue(line.contains("load average 2.50 before, 3.10 after on 2 cores") && line.contains("38 %"), line)
    XCTAssertTrue(line.contains("--reprofile"), line)
    XCTAssertEqual(back.table.split(separator: "\n").first.map(String.init), line)
    let said = back.speedupStatement(back.cuts[0])
    XCTAssertTrue(said.contains("modeled") && said.contains("UNSTABLE") && said.contains("runtime pages"), said)
  }
}

/// The modeled figures' band over the cost model's uncertain parameters.
final class ModeledBandTests: XCTestCase {
  static let mib = 1 << 20

  /// A VGG-like trace: conv weights swept layer after layer, plus a small activation arena.
  static func trace(weightMiB: [Int], arenaMiB: Int = 1) -> [MemoryStep] {
    weightMiB.map { MemoryStep(weightBytes: $0 * mib, activationRanges: [0..<(arenaMiB * mib)]) }
  }

  func testParameterEndsAreDocumentedValues() throws {
    let p = TEEPreset.sgx1
    let ends = Dictionary(uniqueKeysWithValues: p.uncertainParameters.map { ($0.key, ($0.cheap, $0.costly)) })
    XCTAssertEqual(Set(ends.keys), ["runtime_mib", "epc_mib", "memory_encryption_factor", "transition_cycles"])
    XCTAssertEqual(ends["runtime_mib"]?.0.runtimeBytes, 0)
    XCTAssertEqual(ends["runtime_mib"]?.1.runtimeBytes, 16 * Self.mib)
    XCTAssertEqual(ends["memory_encryption_factor"]?.0.memoryEncryptionFactor ?? 0, 1.125, accuracy: 1e-12)
    XCTAssertEqual(ends["memory_encryption_factor"]?.1.memoryEncryptionFactor ?? 0, 1.5, accuracy: 1e-12)
    XCTAssertEqual(ends["transition_cycles"]?.0.transitionCycles ?? 0, 8_000, accuracy: 1e-9)
    XCTAssertEqual(ends["transition_cycles"]?.1.transitionCycles ?? 0, 17_000, accuracy: 1e-9)
    XCTAssertGreaterThan(ends["epc_mib"]?.0.epcBytes ?? 0, p.epcBytes ?? 0)
    // No EPC (TDX): neither the EPC nor the runtime pages can change anything.
    XCTAssertEqual(TEEPreset.tdx.uncertainParameters.map(\.key), ["memory_encryption_factor", "transition_cycles"])
    XCTAssertEqual(p.bandScenarios.count, 2 + 2 * 4)
    XCTAssertEqual(TEEPreset.parameterTitle("runtime_mib"), "runtime pages")
  }

  /// The VGG-16 case: 90 MiB of weights + 1 MiB of activations fit the 93.5 MiB EPC
  /// alone but not with the preset's 8 MiB of runtime pages; the head is small. At the preset
  /// the whole model thrashes and the cut wins; with no runtime pages nothing pages and the
  /// partitioned request is the slower one: the speed-up's sign changes within the band.
  func testWorkingSetAtTheEPCBoundaryFlipsTheSpeedupsSign() {
    let whole = Self.trace(weightMiB: Array(repeating: 9, count: 10))
    let head = Self.trace(weightMiB: [9])
    let p = TEEPreset.sgx1
    XCTAssertGreaterThan(TEECostModel.simulatePaging(trace: whole, preset: p).swaps, 20_000)
    var noRuntime = p
    noRuntime.runtimeBytes = 0
    XCTAssertEqual(TEECostModel.simulatePaging(trace: whole, preset: noRuntime).swaps, 0)
    let b = Profiler.bands(
      wholeSeconds: 0.100, wholeTrace: whole, headSeconds: 0.010, headTrace: head, transferSeconds: 0.001,
      tailSeconds: 0.120,
      preset: p)
    XCTAssertGreaterThan(b.speedup.preset, 30)
    XCTAssertLessThan(b.speedup.low, 0)
    XCTAssertTrue(b.speedup.straddlesZero)
    XCTAssertTrue(b.signDependsOn.contains("runtime_mib"), "\(b.signDependsOn)")
    XCTAssertTrue(b.signDependsOn.contains("epc_mib"), "\(b.signDependsOn)")  // 10 % more EPC holds it all too
    XCTAssertFalse(b.signDependsOn.contains("transition_cycles"))
    // The totals' bands hold the preset and open upwards and downwards.
    XCTAssertLessThan(b.whole.low, b.whole.preset)
    XCTAssertGreaterThan(b.whole.high, b.whole.preset)
    XCTAssertLessThanOrEqual(b.total.low, b.total.preset)
    XCTAssertGreaterThanOrEqual(b.total.high, b.total.preset)
    XCTAssertLessThan(b.headTEE.low, b.headTEE.preset)
  }

  /// Far from the boundary (300 MiB of weights): the whole model pages at every end of the
  /// band, and the cut's speed-up keeps its sign.
  func testWorkingSetFarAboveTheEPCKeepsTheSign() {
    let whole = Self.trace(weightMiB: Array(repeating: 30, count: 10))
    let head = Self.trace(weightMiB: [9])
    let b = Profiler.bands(
      wholeSeconds: 0.100, wholeTrace: whole, headSeconds: 0.010, headTrace: head, transferSeconds: 0.001,
      tailSeconds: 0.120,
      preset: .sgx1)
    XCTAssertGreaterThan(b.speedup.low, 0)
    XCTAssertFalse(b.speedup.straddlesZero)
    XCTAssertEqual(b.signDependsOn, [])
    XCTAssertLessThan(b.speedup.low, b.speedup.preset)
    XCTAssertGreaterThan(b.speedup.high, b.speedup.preset)
  }
}
