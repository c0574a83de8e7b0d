import Foundation
import XCTest

import VeilGraph
import VeilModels
import VeilPlanning
import VeilTEE
import VeilTensor

final class CostModelTests: XCTestCase {
  /// A working set that fits the EPC never swaps after warm-up; one a page larger than the EPC
  /// swept cyclically misses every page under LRU.
  func testLRUPagingFitsAndThrashes() {
    var p = TEEPreset.sgx1
    p.runtimeBytes = 0
    p.epcBytes = 100 * 4096
    let fits = [MemoryStep(weightBytes: 99 * 4096, activationRanges: [0..<4096])]
    XCTAssertEqual(TEECostModel.simulatePaging(trace: fits, preset: p).swaps, 0)
    XCTAssertEqual(TEECostModel.simulatePaging(trace: fits, preset: p).workingSetPages, 100)
    let thrash = [MemoryStep(weightBytes: 100 * 4096, activationRanges: [0..<4096])]
    XCTAssertEqual(TEECostModel.simulatePaging(trace: thrash, preset: p).swaps, 101)
    // No EPC (TDX, SNP): no paging at all.
    XCTAssertEqual(TEECostModel.simulatePaging(trace: thrash, preset: .tdx).swaps, 0)
    let c = TEECostModel.cost(nativeSeconds: 0.01, trace: thrash, preset: p, ioOperations: 4)
    XCTAssertEqual(c.pagingSeconds, 101 * 40_000 / 3e9, accuracy: 1e-12)
    XCTAssertEqual(c.transitionSeconds, 8 * 12_000 / 3e9, accuracy: 1e-12)
    XCTAssertEqual(c.computeSeconds, 0.0125, accuracy: 1e-12)
    XCTAssertEqual(c.label, "modeled")
  }

  func testPresetParametersAreCheckedAndNamed() throws {
    var p = try TEEPreset.named("sgx1")
    try p.set("epc_mib", to: "128")
    XCTAssertEqual(p.epcBytes, 128 << 20)
    XCTAssertThrowsError(try p.set("epc_mib", to: "0")) { XCTAssertTrue("\($0)".contains("epc_mib=0")) }
    XCTAssertThrowsError(try p.set("memory_encryption_factor", to: "0.5"))
    XCTAssertThrowsError(try p.set("page_swap_cycles", to: "abc")) { XCTAssertTrue("\($0)".contains("not a number")) }
    XCTAssertThrowsError(try p.set("epc", to: "1")) { XCTAssertTrue("\($0)".contains("epc_mib"), "\($0)") }
    XCTAssertThrowsError(try TEEPreset.named("sgx3")) { XCTAssertTrue("\($0)".contains("sgx1, sgx2, tdx, snp")) }
  }

  /// VGG-16 in an SGX1 enclave: its 528 MB of weights cannot stay in 93.5 MiB of EPC, so every
  /// weight page swaps on every request and paging dominates the modeled time; cut after
  /// block3_pool (6.6 MiB of weights) the head fits and does not page.
  func testVGG16PagingDominatesTheFullEnclaveUnderSGX1() throws {
    let g = try ModelZoo.build("vgg16")
    let whole = try Executor(graph: g)
    let trace = whole.memoryTrace.teeTrace
    let weights = trace.reduce(0) { $0 + $1.weightBytes }
    XCTAssertGreaterThan(weights, 520_000_000)
    let full = TEECostModel.cost(nativeSeconds: 0.25, trace: trace, preset: .sgx1, ioOperations: 2)
    XCTAssertGreaterThan(full.pageSwaps, weights / 4096)
    XCTAssertGreaterThan(full.pagingSeconds, full.computeSeconds, "paging should dominate: \(full)")
    let (head, _) = try g.split(at: try g.cut(named: "block3_pool"))
    let h = try Executor(graph: head)
    let headTrace = h.memoryTrace.teeTrace
    XCTAssertEqual(TEECostModel.cost(nativeSeconds: 0.1, trace: headTrace, preset: .sgx1, ioOperations: 4).pageSwaps, 0)
  }

  /// The profiler on a small model: one row per cut, parts that add up, labels that say what
  /// was modeled, and CSV/SVG with a row / a bar group per cut.
  func testProfileRowsAddUpAndAreLabelled() throws {
    let g = try ModelZoo.build("mobilenet_v2")
    var o = ProfileOptions()
    o.runs = 1
    o.roofline = Roofline(name: "H100", peakTFLOPS: 60, bandwidthGBps: 3350)
    var lines: [String] = []
    let r = try Profiler.profile(graph: g, model: "mobilenet_v2", options: o) { lines.append($0) }
    let cuts = try g.candidateCuts()
    XCTAssertEqual(r.cuts.map(\.cut.name), cuts.map(\.name))
    // One line per cut and two for the whole model, besides the retries of unstable segments
    // and the machine's pace when it changed.
    XCTAssertEqual(lines.filter { !$0.hasPrefix("unstable:") && !$0.hasPrefix("pace:") }.count, cuts.count + 3)
    XCTAssertTrue(r.cuts.allSatisfy { ($0.wholeBesideMs ?? 0) > 0 }, "the whole model timed beside every cut")
    for c in r.cuts {
      XCTAssertEqual(c.totalMs, c.headTEEMs + c.transferMs + c.tailMs, accuracy: 1e-9)
      XCTAssertEqual(c.transferMs, c.transferSealMs + c.transferOpenMs + c.transferWireMs, accuracy: 1e-9)
      XCTAssertGreaterThan(c.headNativeMs, 0)
      XCTAssertGreaterThan(c.tailMs, 0)
      XCTAssertGreaterThanOrEqual(c.headTEEMs, c.headNativeMs * 1.25)
      XCTAssertEqual(c.speedupPercent, (r.baseline.totalMs - c.totalMs) / r.baseline.totalMs * 100, accuracy: 1e-9)
      XCTAssertNotNil(c.tailRooflineMs)
      // Every segment keeps its runs, and the modeled figures their band around the preset.
      XCTAssertEqual(c.headRuns?.medianMs ?? 0, c.headNativeMs, accuracy: 1e-9)
      XCTAssertEqual(c.tailRuns?.medianMs ?? 0, c.tailMs, accuracy: 1e-9)
      let total = try XCTUnwrap(c.totalBand)
      XCTAssertEqual(total.preset, c.totalMs, accuracy: 1e-9)
      XCTAssertLessThan(total.low, total.preset)
      XCTAssertGreaterThan(total.high, total.preset)
      XCTAssertEqual(try XCTUnwrap(c.speedupBand).preset, c.speedupPercent, accuracy: 1e-9)
    }
    XCTAssertNotNil(r.unstable)
    XCTAssertNotNil(r.baseline.totalBand)
    XCTAssertNotNil(r.conditions?.loadAverageBefore)
    XCTAssertEqual(r.table.hasPrefix("PROFILE UNSTABLE"), !(r.unstable ?? []).isEmpty)
    XCTAssertTrue(r.table.contains(" band "))
    XCTAssertEqual(r.teeTime, "modeled")
    XCTAssertTrue(r.modeled.contains("headTEEMs") && r.modeled.contains("transferWireMs") && r.modeled.contains("tailRooflineMs"))
    XCTAssertTrue(r.table.contains("TEE, modeled") && r.csv.contains("speedup_percent_low_modeled"))
    XCTAssertEqual(r.csv.split(separator: "\n").count, cuts.count + 2)
    XCTAssertTrue(r.csv.hasPrefix("index,cut,") && r.csv.contains("head_tee_ms_modeled"))
    let csvRows = r.csv.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).count }
    XCTAssertEqual(Set(csvRows).count, 1, "every row has the header's columns: \(csvRows)")
    XCTAssertTrue(r.csv.split(separator: "\n")[0].hasSuffix(",whole_beside_ms"))
    XCTAssertEqual(r.svg.components(separatedBy: "class=\"bar\"").count - 1, cuts.count * 3)
    XCTAssertTrue(r.svg.contains("(modeled)") && r.svg.contains("stroke-dasharray"))
    XCTAssertEqual(r.svg.components(separatedBy: "class=\"band\"").count - 1, cuts.count, "a whisker per cut: the modeled total's band")
    let doc = try JSONSerialization.jsonObject(with: JSONEncoder().encode(r)) as? [String: Any]
    XCTAssertNotNil(doc?["baseline"])
    XCTAssertEqual((doc?["cuts"] as? [Any])?.count, cuts.count)
  }

  /// The transfer code round-trips a feature map and refuses a tampered record.
  func testFeatureTransferRoundTripsAndDetectsTampering() throws {
    let t = Tensor(shape: [1, 3, 100, 100]) { o in for i in 0..<o.count { o[i] = Float(i % 977) * 0.5 } }
    let f = FeatureTransfer()
    var records = try f.seal(t)
    XCTAssertEqual(records.count, (30_000 * 4 + FeatureTransfer.recordBytes - 1) / FeatureTransfer.recordBytes)
    XCTAssertEqual(try f.open(records, shape: t.shape).scalars, t.scalars)
    let i = records[1].startIndex + 7
    records[1][i] ^= 1
    XCTAssertThrowsError(try f.open(records, shape: t.shape))
    records[1][i] ^= 1
    XCTAssertEqual(try f.open(records, shape: t.shape).scalars, t.scalars)
    XCTAssertThrowsError(try f.open(Array(records.dropLast()), shape: t.shape))
  }
}
