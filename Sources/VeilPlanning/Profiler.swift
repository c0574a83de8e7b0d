/// VeilPlanning: the runtime profile of every cut (head in the TEE + transfer + tail on the
/// accelerator, against the whole model in the TEE) and its reports (JSON, CSV, SVG); the
/// planner that joins it with the privacy layer's verdicts into a choice (`Planner`, the cut
/// search), the plan's deployment folder (`PlanDeployment`), the whole plan as a library call
/// (`PlanJob`: what `veil plan` and `veil demo` run), plan.json's record and report.html.
///
/// Owns measurement and presentation; it must not implement kernels, formats, TEE evidence
/// or network protocols itself: it drives VeilGraph's executor, VeilTEE's cost model and the
/// real encryption code, and labels every figure it did not measure as modeled.
import Crypto
import Foundation
import VeilGraph
import VeilTEE
import VeilTensor

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
}

public struct ProfileReport: Sendable, Codable {
  public struct Baseline: Sendable, Codable {
    public var nativeMs: Double
    public var tee: TEECost
    public var totalMs: Double
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

    func teeCost(_ seconds: Double, _ trace: [StepMemory], io: Int) -> TEECost {
      if inTEE != nil {
        // Measured inside a real TEE: the native time already is the TEE time.
        return .measured(seconds)
      }
      return TEECostModel.cost(
        nativeSeconds: seconds, trace: trace.teeTrace,
        preset: options.preset, ioOperations: io)
    }

    progress("whole model: compiling")
    let whole = try Executor(graph: graph)
    let (wholeSeconds, _) = try time(whole, input, options)
    // The whole model in the TEE: the request comes in and the answer goes out.
    let wholeCost = teeCost(wholeSeconds, whole.memoryTrace, io: 2)
    progress(String(format: "whole model: %.1f ms native, %.1f ms in the TEE (%@)", wholeSeconds * 1e3, wholeCost.totalSeconds * 1e3, inTEE == nil ? "modeled" : "measured"))

    var rows: [CutProfile] = []
    for (k, cut) in cuts.enumerated() {
      let (headGraph, tailGraph) = try graph.split(at: cut)
      let head = try Executor(graph: headGraph)
      let (headSeconds, feature) = try time(head, input, options)
      let sealSeconds = try median(options) { _ = try transfer.seal(feature) }
      let records = try transfer.seal(feature)
      let openSeconds = try median(options) { _ = try transfer.open(records, shape: feature.shape) }
      let wireSeconds: Double
      let tailSeconds: Double
      if let remote = options.tailTimer {
        // The round trip to the accelerator holds the wire: nothing of it is modeled.
        wireSeconds = 0
        tailSeconds = try remote.seconds(cut: cut, feature: feature, runs: options.runs, warmup: options.warmup)
      } else {
        let wireBytes = records.reduce(0) { $0 + $1.count + 5 }  // + TLS record header
        wireSeconds = options.linkLatencyMs / 1e3 + Double(wireBytes) * 8 / (options.linkGbps * 1e9)
        tailSeconds = try time(try Executor(graph: tailGraph), feature, options).0
      }
      // The partitioned request in the TEE: request in, feature map out, logits in, answer out.
      let cost = teeCost(headSeconds, head.memoryTrace, io: 4)
      let transferSeconds = sealSeconds + openSeconds + wireSeconds
      let total = cost.totalSeconds + transferSeconds + tailSeconds
      let tailBytes = tailGraph.parameterCount * 4 + cut.bytes + (tailGraph.outputs.first.flatMap { tailGraph.shape($0) }?.reduce(4, *) ?? 0)
      rows.append(
        CutProfile(
          cut: cut, headNativeMs: headSeconds * 1e3, headTEE: cost, headTEEMs: cost.totalSeconds * 1e3,
          transferSealMs: sealSeconds * 1e3, transferOpenMs: openSeconds * 1e3, transferWireMs: wireSeconds * 1e3,
          transferMs: transferSeconds * 1e3, tailMs: tailSeconds * 1e3,
          tailRooflineMs: options.roofline.map { $0.seconds(flops: cut.tailFlops, bytes: tailBytes) * 1e3 },
          totalMs: total * 1e3, speedupPercent: (wholeCost.totalSeconds - total) / wholeCost.totalSeconds * 100,
          headPeakBytes: cut.headParameterBytes + head.peakActivationBytes))
      progress(
        String(
          format: "cut %d/%d %@: head %.1f ms (TEE %.1f), transfer %.2f ms, tail %.1f ms, total %.1f ms",
          k + 1, cuts.count, cut.name, headSeconds * 1e3, cost.totalSeconds * 1e3, transferSeconds * 1e3,
          tailSeconds * 1e3, total * 1e3))
    }
    let teeLabel = inTEE.map { "measured in \($0)" } ?? "modeled"
    var modeled = options.tailTimer == nil ? ["transferWireMs"] : []
    var measured = ["headNativeMs", "transferSealMs", "transferOpenMs", "tailMs", "baseline.nativeMs"]
    if inTEE == nil { modeled += ["headTEE", "headTEEMs", "baseline.tee", "baseline.totalMs", "totalMs", "speedupPercent"] }
    else { measured += ["headTEEMs", "baseline.totalMs", "totalMs", "speedupPercent"] }
    if options.roofline != nil { modeled.append("tailRooflineMs") }
    return ProfileReport(
      model: model, batch: graph.shape(graph.inputs[0])?.first ?? 1, machine: MachineInfo.description,
      threads: Engine.shared.threads, versions: MachineInfo.versions, preset: options.preset, teeTime: teeLabel,
      accelerator: options.tailTimer?.label ?? localAccelerator,
      link: options.tailTimer == nil
        ? String(format: "%.1f Gb/s, %.2f ms latency (modeled)", options.linkGbps, options.linkLatencyMs)
        : "the real network to the accelerator (measured inside tailMs)",
      roofline: options.roofline, runs: options.runs,
      baseline: .init(nativeMs: wholeSeconds * 1e3, tee: wholeCost, totalMs: wholeCost.totalSeconds * 1e3),
      cuts: rows, measured: measured, modeled: modeled, fastestCut: rows.min { $0.totalMs < $1.totalMs }?.cut.name)
  }

  /// Median seconds of `options.runs` runs of `executor` on `input` (after the warm-up), and
  /// the output.
  static func time(_ executor: Executor, _ input: Tensor, _ options: ProfileOptions) throws -> (Double, Tensor) {
    var out = try executor.run([input])[0]
    let seconds = try median(options, skipWarmup: true) { out = try executor.run([input])[0] }
    return (seconds, out)
  }

  static func median(_ options: ProfileOptions, skipWarmup: Bool = false, _ body: () throws -> Void) throws -> Double {
    for _ in 0..<(skipWarmup ? max(0, options.warmup - 1) : options.warmup) { try body() }
    var times: [Double] = []
    for _ in 0..<options.runs {
      let t0 = DispatchTime.now().uptimeNanoseconds
      try body()
      times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    return median(of: times)
  }

  /// The median of `values` (the mean of the two middle ones for an even count).
  static func median(of values: [Double]) -> Double {
    let v = values.sorted()
    return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
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
