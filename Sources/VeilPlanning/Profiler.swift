/// VeilPlanning: the runtime profile of every cut (head in the TEE + transfer + tail on the
/// accelerator, against the whole model in the TEE) and its reports (JSON, CSV, SVG); the
/// planner that joins it with the privacy layer's verdicts into a choice (`Planner`, the cut
/// search), the plan's deployment folder (`PlanDeployment`), the whole plan as a library call
/// (`PlanJob`: what `veil plan` and `veil demo` run), plan.json's record and report.html; the
/// cut × defence search with its Pareto frontier (Defences.swift), tails timed on a remote
/// KServe server (`KServeTailTimer`, RemoteTail.swift), and the cluster files of `veil deploy`
/// (ClusterDeployment.swift).
///
/// Owns measurement and presentation; it must not implement kernels, formats, TEE evidence
/// or network protocols itself: it drives VeilGraph's executor, VeilTEE's cost model and the
/// real encryption code, and labels every figure it did not measure as modeled. It is the top
/// of the library: it may import every module below it (VeilServing, VeilPrivacy, VeilTEE and
/// the engine's), and nothing but the command-line tool imports it.
import Crypto
import Foundation
import VeilGraph
import VeilServing
import VeilTEE
import VeilTensor

#if canImport(Glibc)
  import Glibc
#endif

/// A GPU described by its peak throughput and memory bandwidth, for an optional roofline
/// estimate of the tail's time. Always reported as modeled.
public struct Roofline: Sendable, Codable, Equatable {
  public var name: String
  public var peakTFLOPS: Double
  public var bandwidthGBps: Double

  public init(name: String, peakTFLOPS: Double, bandwidthGBps: Double) {
    self.name = name
    self.peakTFLOPS = peakTFLOPS
    self.bandwidthGBps = bandwidthGBps
  }

  /// max(compute time, memory time): FLOPs at peak, or weights + input + output over bandwidth.
  public func seconds(flops: Int, bytes: Int) -> Double {
    max(Double(flops) / (peakTFLOPS * 1e12), Double(bytes) / (bandwidthGBps * 1e9))
  }
}

public struct ProfileOptions: Sendable {
  /// Timed runs per segment (the median is reported) after `warmup` untimed runs.
  public var runs = 5
  public var warmup = 1
  public var preset = TEEPreset.sgx1
  /// The enclave → accelerator link, for the modeled wire time of the feature map.
  public var linkGbps = 10.0
  public var linkLatencyMs = 0.1
  public var roofline: Roofline?
  /// Every single-tensor point rather than the structural cuts.
  public var allCuts = false
  public var seed: UInt64 = 1
  /// Where the tail runs: nil times it with Veil's engine on this machine; otherwise the
  /// timer's accelerator (a KServe v2 server: `KServeTailTimer`) answers, wire included.
  public var tailTimer: (any TailTimer)?

  public init() {}
}

/// Times the tail of a cut somewhere other than this machine's engine.
public protocol TailTimer: Sendable {
  /// What the profile names as its accelerator.
  var label: String { get }
  /// Median seconds of one tail request for `cut`, fed `feature`: from sending the feature map
  /// to holding the answer, so the wire and the accelerator's own (de)serialisation are in it.
  func seconds(cut: CutPoint, feature: Tensor, runs: Int, warmup: Int) throws -> Double
}

/// Transfer of one feature map from the enclave to the accelerator, measured with the real
/// code: KServe v2 serialisation (raw little-endian float32, as `raw_input_contents`), then
/// AES-256-GCM in 16 KiB records (TLS 1.3's record size, as on the TLS link to the
/// accelerator), and the reverse on the accelerator's side.
public struct FeatureTransfer {
  public static let recordBytes = 16 << 10
  let key = SymmetricKey(size: .bits256)

  public init() {}

  /// Serialises and seals `t`; returns the records (ciphertext ‖ tag).
  public func seal(_ t: Tensor) throws -> [Data] {
    // Serialisation: float32 little-endian on every platform Veil builds for, so the bytes of
    // the tensor are the wire bytes; one copy into the message buffer as gRPC would make.
    let bytes = Data(bytes: t.storage.pointer, count: t.count * 4)
    var records: [Data] = []
    records.reserveCapacity(bytes.count / Self.recordBytes + 1)
    var sequence: UInt64 = 0
    var offset = 0
    repeat {
      let end = min(offset + Self.recordBytes, bytes.count)
      let box = try AES.GCM.seal(bytes[offset..<end], using: key, nonce: Self.nonce(sequence))
      var record = Data(capacity: end - offset + 16)  // zero-based, whatever the box's slices are
      record.append(box.ciphertext)
      record.append(box.tag)
      records.append(record)
      sequence += 1
      offset = end
    } while offset < bytes.count
    return records
  }

  /// Opens the records and deserialises a tensor of `shape`.
  public func open(_ records: [Data], shape: [Int]) throws -> Tensor {
    let bytes = shape.reduce(1, *) * 4
    // `seal` writes full records and one last partial (or empty) record, always at least one.
    let expected = max(1, (bytes + Self.recordBytes - 1) / Self.recordBytes)
    guard records.count == expected else {
      throw GraphError.inputMismatch(input: "feature map", expected: "\(expected) records", found: "\(records.count)")
    }
    let out = Tensor(shape: shape, repeating: 0)
    let base = UnsafeMutableRawPointer(out.storage.pointer)
    for (k, r) in records.enumerated() {
      let offset = k * Self.recordBytes
      let size = min(Self.recordBytes, bytes - offset)
      guard r.count == size + 16 else {
        throw GraphError.inputMismatch(input: "feature map record \(k)", expected: "\(size + 16) bytes", found: "\(r.count)")
      }
      let box = try AES.GCM.SealedBox(nonce: Self.nonce(UInt64(k)), ciphertext: r.prefix(size), tag: r.suffix(16))
      try AES.GCM.open(box, using: key).copyBytes(to: (base + offset).assumingMemoryBound(to: UInt8.self), count: size)
    }
    return out
  }

  static func nonce(_ sequence: UInt64) throws -> AES.GCM.Nonce {
    try AES.GCM.Nonce(data: [0, 0, 0, 0] + withUnsafeBytes(of: sequence.bigEndian, Array.init))
  }
}

/// One row of the profile: the model cut at `cut`.
public struct CutProfile: Sendable, Codable {
  public var cut: CutPoint
  /// Head on this machine, natively (measured), and in the TEE (modeled unless in a real TEE).
  public var headNativeMs: Double
  public var headTEE: TEECost
  public var headTEEMs: Double
  /// Serialisation + sealing on the enclave's side, opening + deserialisation on the
  /// accelerator's (measured), and the wire time at the link's rate (modeled).
  public var transferSealMs: Double
  public var transferOpenMs: Double
  public var transferWireMs: Double
  public var transferMs: Double
  /// Tail on the accelerator used (measured), and a roofline estimate (modeled) if asked.
  public var tailMs: Double
  public var tailRooflineMs: Double?
  public var totalMs: Double
  /// (full − partitioned) / full × 100, as the paper reports it.
  public var speedupPercent: Double
  /// The head's peak memory while it runs: its weights and its activation arena (measured by
  /// the executor's plan), what an enclave must hold.
  public var headPeakBytes: Int?
  /// The timed runs of the head and of the tail (nil in profiles of Veil before 0.3.1; the
  /// tail's spread is unknown when a remote accelerator timed it).
  public var headRuns: SegmentRuns?
  public var tailRuns: SegmentRuns?
  /// The median of the whole model's runs timed between this cut's (raw, ms); the head's and
  /// the tail's figures above are their runs' shares of those at the profile's pace
  /// (`PacedTimes`). nil in profiles of Veil before 2026-12-07.
  public var wholeBesideMs: Double?
  /// Modeled figures over the cost model's uncertain parameters (low / preset / high; nil when
  /// the TEE time is measured, or in older profiles): the head in the TEE, the partitioned
  /// total (ms) and the speed-up (%).
  public var headTEEBand: ModeledBand?
  public var totalBand: ModeledBand?
  public var speedupBand: ModeledBand?
  /// The uncertain parameters that alone change the speed-up's sign within the band
  /// (`TEEPreset.uncertainParameters` keys), or ["together"] when only the corners do; nil or
  /// empty when its sign holds over the band.
  public var speedupSignDependsOn: [String]?
}

/// The timed runs of one segment: their median (the figure the profile reports) and their spread.
public struct SegmentRuns: Sendable, Codable, Equatable {
  public var medianMs: Double
  public var p90Ms: Double
  public var minMs: Double
  public var maxMs: Double
  public var runs: Int
  /// Times the segment was measured: 1, plus one per retry after an unstable measurement.
  public var attempts: Int
  /// (p90 − median) / median of the kept measurement's runs.
  public var spread: Double

  /// The statistics of `seconds` (one per timed run; at least one).
  public init(seconds: [Double], attempts: Int = 1) {
    let v = seconds.sorted()
    medianMs = v.median * 1e3
    p90Ms = percentile(v, 0.9) * 1e3
    minMs = v[0] * 1e3
    maxMs = v[v.count - 1] * 1e3
    runs = v.count
    self.attempts = attempts
    spread = medianMs > 0 ? (p90Ms - medianMs) / medianMs : 0
  }

  /// `again`, a new measurement of a segment measured before as `earlier`, counting both's attempts.
  static func retried(_ again: SegmentRuns, after earlier: SegmentRuns) -> SegmentRuns {
    var r = again
    r.attempts += earlier.attempts
    return r
  }

  /// A segment timed elsewhere that reports only its median (a remote accelerator).
  public init(medianSeconds: Double, runs: Int) {
    self.init(seconds: [medianSeconds])
    self.runs = runs
  }
}

/// A cut's head and tail timed run by run beside the whole model: each timed run is the whole
/// model, then the head, then the tail (when timed here). A host shared with other machines
/// runs for a second or more at a time up to 2× slower than at others, with no steal or load
/// to show for it (Lite0's `veil bench` median on one thread, quiet: 7.1 to 9.9 ms from one
/// process to the next; the whole model beside 19 cuts: 3.9 to 11.8 ms in one profile), so a
/// head timed in one phase and the whole model in another gave heads slower than the model
/// they are part of and speed-ups from −94 % to +26 % for one cut. A run's head and tail are
/// taken as shares of the whole model's run beside them, and every share at one pace: the
/// median of all the whole model's runs.
public struct PacedTimes {
  /// Seconds of each timed run.
  public var whole: [Double]
  public var head: [Double]
  /// nil when the tail is timed elsewhere (a remote accelerator).
  public var tail: [Double]?
  /// The head's output (the feature map).
  public var feature: Tensor
  public var attempts = 1

  public init(whole: [Double], head: [Double], tail: [Double]?, feature: Tensor) {
    self.whole = whole
    self.head = head
    self.tail = tail
    self.feature = feature
  }

  /// `options.runs` paced runs after `options.warmup` untimed runs of each part.
  static func measure(whole: Executor, head: Executor, tail: Executor?, input: Tensor, options: ProfileOptions) throws -> PacedTimes {
    var feature = try head.run([input])[0]
    for _ in 0..<max(0, options.warmup - 1) { feature = try head.run([input])[0] }
    for _ in 0..<options.warmup {
      _ = try whole.run([input])
      if let tail { _ = try tail.run([feature]) }
    }
    func seconds(_ body: () throws -> Void) rethrows -> Double {
      let t0 = DispatchTime.now().uptimeNanoseconds
      try body()
      return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }
    var times = PacedTimes(whole: [], head: [], tail: tail == nil ? nil : [], feature: feature)
    for _ in 0..<options.runs {
      times.whole.append(try seconds { _ = try whole.run([input]) })
      times.head.append(try seconds { feature = try head.run([input])[0] })
      if let tail { times.tail?.append(try seconds { _ = try tail.run([feature]) }) }
    }
    times.feature = feature
    return times
  }

  /// The median of the whole model's runs (ms).
  public var wholeMedianMs: Double { whole.sorted().median * 1e3 }

  /// The head's and the tail's runs as shares of the whole model's beside them, at a pace where
  /// the whole model takes `referenceMs`.
  public func runs(at referenceMs: Double) -> (head: SegmentRuns, tail: SegmentRuns?) {
    func scaled(_ v: [Double]) -> SegmentRuns {
      var r = SegmentRuns(seconds: zip(v, whole).map { $1 > 0 ? $0 / $1 * referenceMs / 1e3 : $0 })
      r.attempts = attempts
      return r
    }
    return (scaled(head), tail.map(scaled))
  }

  /// Why the runs at that pace spread too far (`ProfileStability.spreadProblem`), or nil.
  func spreadProblem(at referenceMs: Double) -> String? {
    let (h, t) = runs(at: referenceMs)
    if let why = ProfileStability.spreadProblem(h) { return "head \(why)" }
    return t.flatMap(ProfileStability.spreadProblem).map { "tail \($0)" }
  }

  /// The larger spread of the head's and the tail's runs at that pace.
  func spread(at referenceMs: Double) -> Double {
    let (h, t) = runs(at: referenceMs)
    return max(h.spread, t?.spread ?? 0)
  }
}

/// A segment whose runs stayed unstable after the retries, and why.
public struct UnstableSegment: Sendable, Codable, Equatable {
  /// "whole model", "<cut> head", "<cut> tail", or "<cut> head + tail".
  public var segment: String
  public var reason: String

  public init(segment: String, reason: String) {
    self.segment = segment
    self.reason = reason
  }
}

/// When a segment's timing cannot be trusted (docs/tee-cost-model.md, "Stable profiles").
public enum ProfileStability {
  /// Largest (p90 − median) / median of a segment's runs: a burst of other work in one run of
  /// five makes it 0.5 or more, while a quiet machine stays within about 0.2.
  public static let maxSpread = 0.5
  /// Spreads smaller than this (p90 − median, ms) are timer noise whatever their ratio: a tail
  /// of a few microseconds (VGG-16's last dense layer) spreads 60 % and decides nothing.
  public static let minSpreadMs = 0.1
  /// The range of (head + tail) / whole model, natively, both measured here: a cut adds a
  /// kernel boundary, a cold start of the tail and a layout change, so head + tail legitimately
  /// costs a little more than the whole (transfer is timed apart and left out); outside ×0.5 …
  /// ×2 one of the three was measured under other load.
  public static let splitRatio = 0.5...2.0
  /// The most a cut's head may take against the whole model it is a part of: the same layers
  /// and fewer, plus a copy of the feature map out; more was timed at another speed of the
  /// machine (the unpaced demo profile's `_blocks.11` head: 1.06× the whole model, yet head +
  /// tail inside `splitRatio`).
  public static let maxHeadRatio = 1.25
  /// How often an unstable segment is measured again.
  public static let retries = 2
  /// The share of the machine's CPU time (every core) that other processes may use, or the
  /// hypervisor steal, while a profile runs: one busy loop on 2 cores is 50 %. Above it, every
  /// segment was timed on a shared machine, even when each looks steady (a steady busy loop
  /// slows them all alike, so neither rule above fires).
  public static let maxOthersPercent = 20.0
  public static let maxStealPercent = 10.0

  /// Why the machine was too busy for the profile's timings to stand, or nil.
  public static func busyProblem(_ c: ProfileConditions) -> String? {
    var why: [String] = []
    if let o = c.othersPercent, o > maxOthersPercent {
      why.append(String(format: "other processes used %.0f %% of the CPU (bound %.0f %%)", o, maxOthersPercent))
    }
    if let st = c.stealPercent, st > maxStealPercent {
      why.append(String(format: "the hypervisor stole %.0f %% of the CPU (bound %.0f %%)", st, maxStealPercent))
    }
    guard !why.isEmpty else { return nil }
    return why.joined(separator: "; ") + " while profiling: the timings are a shared machine's; profile again on a quiet one"
  }

  /// Why `runs` are too spread to trust, or nil.
  public static func spreadProblem(_ runs: SegmentRuns) -> String? {
    guard runs.spread > maxSpread, runs.p90Ms - runs.medianMs >= minSpreadMs else { return nil }
    return String(
      format: "runs spread %.0f %% (p90 %.2f ms against median %.2f ms; bound %.0f %%)", runs.spread * 100, runs.p90Ms, runs.medianMs,
      maxSpread * 100)
  }

  /// Why head + tail (native, ms) disagrees with the whole model, or nil.
  public static func splitProblem(headMs: Double, tailMs: Double, wholeMs: Double) -> String? {
    guard wholeMs > 0 else { return "the whole model timed at 0 ms" }
    if headMs > wholeMs * maxHeadRatio, headMs - wholeMs > minSpreadMs {
      return String(
        format: "the head %.2f ms is %.2f× the whole model's %.2f ms that it is part of (expected at most ×%.2f)", headMs, headMs / wholeMs,
        wholeMs, maxHeadRatio)
    }
    let ratio = (headMs + tailMs) / wholeMs
    guard !splitRatio.contains(ratio) else { return nil }
    return String(
      format: "head + tail %.2f ms is %.2f× the whole model's %.2f ms (expected ×%.1f … ×%.1f)", headMs + tailMs, ratio, wholeMs,
      splitRatio.lowerBound, splitRatio.upperBound)
  }
}

/// What else the machine was doing while a profile ran.
public struct ProfileConditions: Sendable, Codable, Equatable {
  /// The 1-minute load average (/proc/loadavg) before and after profiling.
  public var loadAverageBefore: Double?
  public var loadAverageAfter: Double?
  public var cores: Int
  public var wallSeconds: Double
  /// CPU time of this process while profiling (all its threads).
  public var processCPUSeconds: Double?
  /// Of all the machine's CPU time while profiling (every core), % stolen by the hypervisor
  /// (/proc/stat steal) and % used by other processes.
  public var stealPercent: Double?
  public var othersPercent: Double?

  public init(
    loadAverageBefore: Double?, loadAverageAfter: Double?, cores: Int, wallSeconds: Double, processCPUSeconds: Double?,
    stealPercent: Double?, othersPercent: Double?
  ) {
    self.loadAverageBefore = loadAverageBefore
    self.loadAverageAfter = loadAverageAfter
    self.cores = cores
    self.wallSeconds = wallSeconds
    self.processCPUSeconds = processCPUSeconds
    self.stealPercent = stealPercent
    self.othersPercent = othersPercent
  }

  /// "load average 2.10 before, 3.40 after on 2 cores; 35 % of the CPU used by other processes, 0 % stolen".
  public var summary: String {
    var parts: [String] = []
    if let b = loadAverageBefore, let a = loadAverageAfter {
      parts.append(String(format: "load average %.2f before, %.2f after on %d cores", b, a, cores))
    }
    var cpu: [String] = []
    if let o = othersPercent { cpu.append(String(format: "%.0f %% of the CPU used by other processes", o)) }
    if let st = stealPercent { cpu.append(String(format: "%.0f %% stolen by the hypervisor", st)) }
    if !cpu.isEmpty { parts.append(cpu.joined(separator: ", ")) }
    return parts.joined(separator: "; ")
  }

  /// A reading of the machine's counters.
  struct Sample {
    var load: Double?
    /// /proc/stat's first line: user nice system idle iowait irq softirq steal.
    var cpu: [Double]?
    var processCPU: Double?
    var wall: UInt64

    static func now() -> Sample {
      let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.flatMap { Double($0) }
      let cpu = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8))?.split(separator: "\n").first
        .map { $0.split(separator: " ").dropFirst().prefix(8).compactMap { Double($0) } }
        .flatMap { $0.count == 8 ? $0 : nil }
      var usage = rusage()
      let process =
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0
        ? Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6 : nil
      return Sample(load: load, cpu: cpu, processCPU: process, wall: DispatchTime.now().uptimeNanoseconds)
    }
  }

  init(from a: Sample, to b: Sample) {
    let wall = Double(b.wall - a.wall) / 1e9
    var steal: Double?
    var others: Double?
    let process = a.processCPU.flatMap { x in b.processCPU.map { $0 - x } }
    if let x = a.cpu, let y = b.cpu {
      let d = zip(x, y).map { $1 - $0 }
      let total = d.reduce(0, +)
      if total > 0 {
        steal = d[7] / total * 100
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        let busy = total - d[3] - d[4] - d[7]
        if let process, hz > 0 { others = max(0, (busy - process * hz) / total * 100) }
      }
    }
    self.init(
      loadAverageBefore: a.load, loadAverageAfter: b.load, cores: ProcessInfo.processInfo.activeProcessorCount, wallSeconds: wall,
      processCPUSeconds: process, stealPercent: steal, othersPercent: others)
  }
}

public struct ProfileReport: Sendable, Codable {
  public struct Baseline: Sendable, Codable {
    public var nativeMs: Double
    public var tee: TEECost
    public var totalMs: Double
    /// The whole model's timed runs, and its modeled TEE time over the cost model's uncertain
    /// parameters (nil in older profiles, and when the TEE time is measured).
    public var nativeRuns: SegmentRuns?
    public var totalBand: ModeledBand?
  }

  public var model: String
  public var batch: Int
  public var machine: String
  public var threads: Int
  public var versions: [String: String]
  public var preset: TEEPreset
  /// "modeled" when no TEE was detected; otherwise what was detected ("measured in …").
  public var teeTime: String
  public var accelerator: String
  public var link: String
  public var roofline: Roofline?
  public var runs: Int
  public var baseline: Baseline
  public var cuts: [CutProfile]
  /// Which fields are measured on this machine and which are modeled.
  public var measured: [String]
  public var modeled: [String]
  public var fastestCut: String?
  /// Segments whose runs stayed unstable after the retries (`ProfileStability`); nil in
  /// profiles of Veil before 0.3.1, empty when every segment was stable.
  public var unstable: [UnstableSegment]?
  /// What else the machine was doing while the profile ran (nil in older profiles).
  public var conditions: ProfileConditions?
}

public enum Profiler {
  /// The profile's accelerator when the tail runs on this machine.
  public static let localAccelerator = "local: Veil's engine on this machine's CPU (measured)"

  /// Profiles the whole model and every cut. `progress` gets one line per step of the work.
  public static func profile(
    graph: Graph, model: String, options: ProfileOptions, progress: (String) -> Void = { _ in }
  ) throws -> ProfileReport {
    guard options.runs >= 1, options.warmup >= 0 else {
      throw GraphError.invalidGraph("runs must be ≥ 1 and warmup ≥ 0 (found \(options.runs), \(options.warmup))")
    }
    let inTEE = TEEEnvironment.detect()
    let cuts = try graph.candidateCuts(all: options.allCuts)
    guard !cuts.isEmpty else { throw GraphError.invalidGraph("'\(model)' has no cut point (no single tensor crosses between two parts)") }
    var rng = SeededGenerator(seed: options.seed)
    let input = Tensor.randomNormal(shape: graph.shape(graph.inputs[0]) ?? [], generator: &rng)
    let transfer = FeatureTransfer()

    func teeCost(_ seconds: Double, _ trace: [MemoryStep], io: Int) -> TEECost {
      if inTEE != nil {
        // Measured inside a real TEE: the native time already is the TEE time.
        return .measured(seconds)
      }
      return TEECostModel.cost(nativeSeconds: seconds, trace: trace, preset: options.preset, ioOperations: io)
    }

    let before = ProfileConditions.Sample.now()
    progress("whole model: compiling")
    let whole = try Executor(graph: graph)
    // Time as the servers run: per-run buffers (the feature map, its sealed records) reused,
    // not mapped afresh on every run (`allocateForSteadyState`, which both servers call).
    allocateForSteadyState()
    let wholeTrace = whole.memoryTrace.teeTrace
    let alone = try timeStable(whole, input, options, "whole model", progress).0
    progress(String(format: "whole model: %.1f ms native", alone.medianMs))

    // Every cut's measurements; the TEE figures are derived once the timings have settled.
    struct Measured {
      var cut: CutPoint
      /// The head and (timed here) the tail run by run beside the whole model (`PacedTimes`).
      var times: PacedTimes
      /// A remote accelerator's median for the tail.
      var remoteTail: SegmentRuns?
      var sealSeconds: Double
      var openSeconds: Double
      var wireSeconds: Double
      var headTrace: [MemoryStep]
      var headPeakBytes: Int
      var tailBytes: Int
    }
    var measured: [Measured] = []
    // Times a cut's head and tail beside the whole model, again while the runs spread too far
    // at the pace `reference` (at most `retries` more times; the least spread is kept).
    func timeCut(_ cut: CutPoint, reference: Double) throws -> (PacedTimes, head: Executor, tailGraph: Graph) {
      let (headGraph, tailGraph) = try graph.split(at: cut)
      let head = try Executor(graph: headGraph)
      let tail = options.tailTimer == nil ? try Executor(graph: tailGraph) : nil
      var best = try PacedTimes.measure(whole: whole, head: head, tail: tail, input: input, options: options)
      var attempts = 1
      while attempts <= ProfileStability.retries, let why = best.spreadProblem(at: reference) {
        progress("unstable: \(cut.name) \(why); measuring again (\(attempts) of \(ProfileStability.retries))")
        let again = try PacedTimes.measure(whole: whole, head: head, tail: tail, input: input, options: options)
        attempts += 1
        if again.spread(at: reference) < best.spread(at: reference) { best = again }
      }
      best.attempts += attempts - 1
      return (best, head, tailGraph)
    }
    for (k, cut) in cuts.enumerated() {
      let (times, head, tailGraph) = try timeCut(cut, reference: alone.medianMs)
      let feature = times.feature
      let sealSeconds = try median(options) { _ = try transfer.seal(feature) }
      let records = try transfer.seal(feature)
      let openSeconds = try median(options) { _ = try transfer.open(records, shape: feature.shape) }
      let wireSeconds: Double
      var remoteTail: SegmentRuns?
      if let remote = options.tailTimer {
        // The round trip to the accelerator holds the wire: nothing of it is modeled.
        wireSeconds = 0
        let seconds = try remote.seconds(cut: cut, feature: feature, runs: options.runs, warmup: options.warmup)
        remoteTail = SegmentRuns(medianSeconds: seconds, runs: options.runs)
      } else {
        let wireBytes = records.reduce(0) { $0 + $1.count + 5 }  // + TLS record header
        wireSeconds = options.linkLatencyMs / 1e3 + Double(wireBytes) * 8 / (options.linkGbps * 1e9)
      }
      let tailBytes = tailGraph.parameterCount * 4 + cut.bytes + (tailGraph.outputs.first.flatMap { tailGraph.shape($0) }?.reduce(4, *) ?? 0)
      measured.append(
        Measured(
          cut: cut, times: times, remoteTail: remoteTail, sealSeconds: sealSeconds, openSeconds: openSeconds, wireSeconds: wireSeconds,
          headTrace: head.memoryTrace.teeTrace, headPeakBytes: cut.headParameterBytes + head.peakActivationBytes + head.scratchpadBytes,
          tailBytes: tailBytes))
      let (h, t) = times.runs(at: alone.medianMs)
      progress(
        String(
          format: "cut %d/%d %@: head %.1f ms native, transfer %.2f ms, tail %.1f ms", k + 1, cuts.count, cut.name, h.medianMs,
          (sealSeconds + openSeconds + wireSeconds) * 1e3, (remoteTail ?? t)?.medianMs ?? 0))
    }

    // The machine's pace: the median of every timing of the whole model, alone and beside the
    // cuts; each cut's head and tail are its runs' shares of the whole model beside them at that pace.
    func pace() -> Double { ([alone.medianMs / 1e3] + measured.flatMap(\.times.whole)).sorted().median * 1e3 }
    func segments(_ m: Measured, at reference: Double) -> (head: SegmentRuns, tail: SegmentRuns) {
      let (h, t) = m.times.runs(at: reference)
      return (h, m.remoteTail ?? t ?? SegmentRuns(medianSeconds: 0, runs: 0))
    }

    // Head + tail against the whole model, when both are timed here: a cut far off was timed
    // under a burst of other work within a run; measure those cuts again.
    var unstable: [UnstableSegment] = []
    if options.tailTimer == nil {
      func off() -> [Int] {
        let reference = pace()
        return measured.indices.filter {
          let (h, t) = segments(measured[$0], at: reference)
          return ProfileStability.splitProblem(headMs: h.medianMs, tailMs: t.medianMs, wholeMs: reference) != nil
        }
      }
      for round in 1...ProfileStability.retries {
        let bad = off()
        guard !bad.isEmpty else { break }
        progress(
          "unstable: head + tail of \(bad.map { measured[$0].cut.name }.joined(separator: ", ")) against the whole model; measuring them again (\(round) of \(ProfileStability.retries))"
        )
        for k in bad {
          var again = try timeCut(measured[k].cut, reference: pace()).0
          again.attempts += measured[k].times.attempts
          measured[k].times = again
        }
      }
    }
    let reference = pace()
    let besides = measured.map(\.times.wholeMedianMs)
    if let low = besides.min(), let high = besides.max(), high > low * 1.1 {
      progress(
        String(
          format: "pace: the whole model took %.1f … %.1f ms beside the cuts (%.1f ms alone); each cut's head and tail are taken at %.1f ms, the median",
          low, high, alone.medianMs, reference))
    }
    var wholeRuns = SegmentRuns(seconds: [alone.medianMs / 1e3] + measured.flatMap(\.times.whole))
    wholeRuns.attempts = alone.attempts
    var segmentRuns = [("whole model", alone)]
    for m in measured {
      let (h, t) = segments(m, at: reference)
      segmentRuns += [("\(m.cut.name) head", h)] + (m.remoteTail == nil ? [("\(m.cut.name) tail", t)] : [])
      if options.tailTimer == nil, let why = ProfileStability.splitProblem(headMs: h.medianMs, tailMs: t.medianMs, wholeMs: reference) {
        unstable.append(UnstableSegment(segment: "\(m.cut.name) head + tail", reason: why))
      }
    }
    unstable =
      segmentRuns.compactMap { name, runs in
        ProfileStability.spreadProblem(runs).map { UnstableSegment(segment: name, reason: "\($0) after \(runs.attempts) measurements") }
      } + unstable
    let conditions = ProfileConditions(from: before, to: .now())
    if let why = ProfileStability.busyProblem(conditions) {
      unstable.insert(UnstableSegment(segment: "the machine", reason: why), at: 0)
    }

    // The whole model in the TEE: the request comes in and the answer goes out.
    let wholeSeconds = wholeRuns.medianMs / 1e3
    let wholeCost = teeCost(wholeSeconds, wholeTrace, io: 2)
    let wholeScenarios =
      inTEE == nil ? TEECostModel.scenarioCosts(nativeSeconds: wholeSeconds, trace: wholeTrace, preset: options.preset, ioOperations: 2) : []
    progress(
      String(
        format: "whole model: %.1f ms native, %.1f ms in the TEE (%@)", wholeRuns.medianMs, wholeCost.totalSeconds * 1e3,
        inTEE == nil ? "modeled" : "measured"))
    var rows: [CutProfile] = []
    for m in measured {
      let (headRuns, tailRuns) = segments(m, at: reference)
      let headSeconds = headRuns.medianMs / 1e3
      let tailSeconds = tailRuns.medianMs / 1e3
      // The partitioned request in the TEE: request in, feature map out, logits in, answer out.
      let cost = teeCost(headSeconds, m.headTrace, io: 4)
      let transferSeconds = m.sealSeconds + m.openSeconds + m.wireSeconds
      let total = cost.totalSeconds + transferSeconds + tailSeconds
      var row = CutProfile(
        cut: m.cut, headNativeMs: headSeconds * 1e3, headTEE: cost, headTEEMs: cost.totalSeconds * 1e3,
        transferSealMs: m.sealSeconds * 1e3, transferOpenMs: m.openSeconds * 1e3, transferWireMs: m.wireSeconds * 1e3,
        transferMs: transferSeconds * 1e3, tailMs: tailSeconds * 1e3,
        tailRooflineMs: options.roofline.map { $0.seconds(flops: m.cut.tailFlops, bytes: m.tailBytes) * 1e3 },
        totalMs: total * 1e3, speedupPercent: (wholeCost.totalSeconds - total) / wholeCost.totalSeconds * 100,
        headPeakBytes: m.headPeakBytes, headRuns: headRuns, tailRuns: tailRuns, wholeBesideMs: m.times.wholeMedianMs)
      if inTEE == nil {
        let b = bands(
          whole: wholeCost, wholeScenarios: wholeScenarios, head: cost,
          headScenarios: TEECostModel.scenarioCosts(nativeSeconds: headSeconds, trace: m.headTrace, preset: options.preset, ioOperations: 4),
          transferSeconds: transferSeconds, tailSeconds: tailSeconds, scenarios: options.preset.bandScenarios)
        row.headTEEBand = b.headTEE
        row.totalBand = b.total
        row.speedupBand = b.speedup
        row.speedupSignDependsOn = b.signDependsOn.isEmpty ? nil : b.signDependsOn
      }
      rows.append(row)
    }
    let teeLabel = inTEE.map { "measured in \($0)" } ?? "modeled"
    var modeled = options.tailTimer == nil ? ["transferWireMs"] : []
    var measuredFields = ["headNativeMs", "transferSealMs", "transferOpenMs", "tailMs", "baseline.nativeMs"]
    if inTEE == nil {
      modeled += [
        "headTEE", "headTEEMs", "baseline.tee", "baseline.totalMs", "totalMs", "speedupPercent", "headTEEBand", "totalBand", "speedupBand",
        "baseline.totalBand",
      ]
    } else {
      measuredFields += ["headTEEMs", "baseline.totalMs", "totalMs", "speedupPercent"]
    }
    if options.roofline != nil { modeled.append("tailRooflineMs") }
    let wholeBand = wholeScenarios.isEmpty ? nil : ModeledBand(preset: wholeCost.totalSeconds * 1e3, over: wholeScenarios.map { $0.totalSeconds * 1e3 })
    return ProfileReport(
      model: model, batch: graph.shape(graph.inputs[0])?.first ?? 1, machine: MachineInfo.description,
      threads: Engine.shared.threads, versions: MachineInfo.versions, preset: options.preset, teeTime: teeLabel,
      accelerator: options.tailTimer?.label ?? localAccelerator,
      link: options.tailTimer == nil
        ? String(format: "%.1f Gb/s, %.2f ms latency (modeled)", options.linkGbps, options.linkLatencyMs)
        : "the real network to the accelerator (measured inside tailMs)",
      roofline: options.roofline, runs: options.runs,
      baseline: .init(
        nativeMs: wholeSeconds * 1e3, tee: wholeCost, totalMs: wholeCost.totalSeconds * 1e3, nativeRuns: wholeRuns, totalBand: wholeBand),
      cuts: rows, measured: measuredFields, modeled: modeled, fastestCut: rows.min { $0.totalMs < $1.totalMs }?.cut.name,
      unstable: unstable, conditions: conditions)
  }

  /// A cut's modeled figures over the cost model's uncertain parameters.
  public struct CutBands: Sendable, Equatable {
    public var whole: ModeledBand
    public var headTEE: ModeledBand
    public var total: ModeledBand
    public var speedup: ModeledBand
    /// See `CutProfile.speedupSignDependsOn`.
    public var signDependsOn: [String]
  }

  /// The bands of a cut whose head runs `headSeconds` natively and touches `headTrace`, against
  /// the whole model's `wholeSeconds` and `wholeTrace`, under `preset`'s uncertain parameters:
  /// the whole model and the head in the TEE and the partitioned total in ms, the speed-up in %.
  public static func bands(
    wholeSeconds: Double, wholeTrace: [MemoryStep], headSeconds: Double, headTrace: [MemoryStep], transferSeconds: Double,
    tailSeconds: Double, preset: TEEPreset
  ) -> CutBands {
    bands(
      whole: TEECostModel.cost(nativeSeconds: wholeSeconds, trace: wholeTrace, preset: preset, ioOperations: 2),
      wholeScenarios: TEECostModel.scenarioCosts(nativeSeconds: wholeSeconds, trace: wholeTrace, preset: preset, ioOperations: 2),
      head: TEECostModel.cost(nativeSeconds: headSeconds, trace: headTrace, preset: preset, ioOperations: 4),
      headScenarios: TEECostModel.scenarioCosts(nativeSeconds: headSeconds, trace: headTrace, preset: preset, ioOperations: 4),
      transferSeconds: transferSeconds, tailSeconds: tailSeconds, scenarios: preset.bandScenarios)
  }

  static func bands(
    whole: TEECost, wholeScenarios: [TEECost], head: TEECost, headScenarios: [TEECost], transferSeconds: Double, tailSeconds: Double,
    scenarios: [TEEScenario]
  ) -> CutBands {
    func speedup(_ w: Double, _ p: Double) -> Double { (w - p) / w * 100 }
    let total = head.totalSeconds + transferSeconds + tailSeconds
    let totals = headScenarios.map { $0.totalSeconds + transferSeconds + tailSeconds }
    // Each scenario applies to the whole model and to the head alike: a speed-up is taken
    // within one setting of the parameters, never across two.
    let s0 = speedup(whole.totalSeconds, total)
    let speedups = zip(wholeScenarios, totals).map { speedup($0.totalSeconds, $1) }
    var flips: [String] = []
    for (scenario, s) in zip(scenarios, speedups) where (s < 0) != (s0 < 0) {
      if let p = scenario.parameter, !flips.contains(p) { flips.append(p) }
    }
    let band = ModeledBand(preset: s0, over: speedups)
    if flips.isEmpty, (band.low < 0) != (s0 < 0) || (band.high < 0) != (s0 < 0) { flips = ["together"] }
    return CutBands(
      whole: ModeledBand(preset: whole.totalSeconds * 1e3, over: wholeScenarios.map { $0.totalSeconds * 1e3 }),
      headTEE: ModeledBand(preset: head.totalSeconds * 1e3, over: headScenarios.map { $0.totalSeconds * 1e3 }),
      total: ModeledBand(preset: total * 1e3, over: totals.map { $0 * 1e3 }), speedup: band, signDependsOn: flips)
  }

  /// `options.runs` timed runs of `executor` on `input` (after the warm-up), measured again
  /// while their spread exceeds `ProfileStability.maxSpread` (at most `retries` more times;
  /// the least spread measurement is kept), and the output.
  static func timeStable(
    _ executor: Executor, _ input: Tensor, _ options: ProfileOptions, _ name: String, _ progress: (String) -> Void
  ) throws -> (SegmentRuns, Tensor) {
    var (best, out) = try timeRuns(executor, input, options)
    var attempts = 1
    while attempts <= ProfileStability.retries, let why = ProfileStability.spreadProblem(best) {
      progress("unstable: \(name) \(why); measuring again (\(attempts) of \(ProfileStability.retries))")
      let (again, o) = try timeRuns(executor, input, options)
      attempts += 1
      if again.spread < best.spread { (best, out) = (again, o) }
    }
    best.attempts = attempts
    return (best, out)
  }

  static func timeRuns(_ executor: Executor, _ input: Tensor, _ options: ProfileOptions) throws -> (SegmentRuns, Tensor) {
    var out = try executor.run([input])[0]
    let times = try runTimes(options, skipWarmup: true) { out = try executor.run([input])[0] }
    return (SegmentRuns(seconds: times), out)
  }

  /// Median seconds of `options.runs` runs of `body` (after the warm-up).
  static func median(_ options: ProfileOptions, skipWarmup: Bool = false, _ body: () throws -> Void) throws -> Double {
    try runTimes(options, skipWarmup: skipWarmup, body).median
  }

  /// Seconds of each of `options.runs` timed runs of `body`, after the warm-up.
  static func runTimes(_ options: ProfileOptions, skipWarmup: Bool = false, _ body: () throws -> Void) throws -> [Double] {
    for _ in 0..<(skipWarmup ? max(0, options.warmup - 1) : options.warmup) { try body() }
    var times: [Double] = []
    for _ in 0..<options.runs {
      let t0 = DispatchTime.now().uptimeNanoseconds
      try body()
      times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    return times
  }
}

extension [StepMemory] {
  /// The executor's memory trace in the form the TEE cost model reads.
  public var teeTrace: [MemoryStep] {
    map { MemoryStep(weightBytes: $0.weightBytes, activationRanges: $0.activationRanges) }
  }
}

/// What machine and software produced a figure.
public enum MachineInfo {
  public static var description: String {
    let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
      .split(separator: "\n").first { $0.hasPrefix("model name") }?
      .split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
    return "\(cpu), \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB"
  }

  public static var versions: [String: String] {
    ["veil": VeilVersion.string, "onednn": Engine.backendVersion, "os": ProcessInfo.processInfo.operatingSystemVersionString]
  }
}

public enum VeilVersion {
  public static let string = "0.3.0"
}
