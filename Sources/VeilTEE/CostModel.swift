import Foundation

/// The TEE cost model: what running a model segment inside a TEE adds to its native time, when
/// Veil is not running inside a real TEE and cannot measure it. Every figure it produces is
/// *modeled* and is labelled so wherever it appears. The model, its parameters and their
/// sources are in docs/tee-cost-model.md:
///
///   t_tee = t_native × memory_encryption_factor
///         + EPC page swaps × swap_cycles / cpu_hz
///         + enclave transitions per request × transition_cycles / cpu_hz
///
/// EPC page swaps come from the segment's real memory trace (the weights and activation bytes
/// each step of Veil's compiled executor touches), replayed through an LRU cache of the
/// preset's EPC size in 4 KiB pages, in steady state (the request is replayed until the
/// fault count of a pass stops changing, at most four passes; the last pass counts).

/// A TEE's cost parameters. Every one can be overridden (`veil profile --tee-param k=v`).
public struct TEEPreset: Sendable, Equatable, Codable {
  public var name: String
  /// What kind of TEE this models: "sgx" (enclave with an EPC), "tdx", "snp" (confidential VMs).
  public var kind: String
  /// Usable enclave page cache in bytes; nil when all memory is protected (no paging).
  public var epcBytes: Int?
  /// Cycles for one EPC page swap (EWB out + ELDU in) of a 4 KiB page.
  public var pageSwapCycles: Double
  /// Cycles for one transition out of the TEE and back (an OCALL: EEXIT + EENTER; a
  /// TDCALL/VMGEXIT round trip).
  public var transitionCycles: Double
  /// Transitions per network I/O operation (under Gramine a send or receive is a poll and the
  /// call itself). A request served whole in the TEE makes 2 I/O operations (request in,
  /// answer out); a partitioned one 4 (plus feature map out, logits in).
  public var transitionsPerIO: Int
  /// Multiplier on native compute time for memory encryption and the library OS.
  public var memoryEncryptionFactor: Double
  /// Clock used to turn cycles into seconds.
  public var cpuHz: Double
  /// Bytes of the runtime itself (library OS, Swift runtime, oneDNN code and stacks) touched per
  /// request, resident in the EPC beside the model.
  public var runtimeBytes: Int
  /// Where the figures come from.
  public var sources: [String]

  public static let pageBytes = 4096

  public static let sgx1 = TEEPreset(
    name: "sgx1", kind: "sgx", epcBytes: 0x5d8_0000, pageSwapCycles: 40_000, transitionCycles: 12_000,
    transitionsPerIO: 2, memoryEncryptionFactor: 1.25, cpuHz: 3.0e9, runtimeBytes: 8 << 20,
    sources: [
      "EPC 93.5 MiB usable (0x5d80000 bytes, SGX1 client parts)", "page swap ≈ 40,000 cycles (VAULT, ASPLOS 2018)",
      "transition 8,000–17,000 cycles, 12,000 taken (HotCalls, ISCA 2017; Gramine docs)",
      "×1.25 compute: Gramine PyTorch overhead 25 % with stock OpenMP (Gramine docs)",
    ])
  public static let sgx2 = TEEPreset(
    name: "sgx2", kind: "sgx", epcBytes: 64 << 30, pageSwapCycles: 40_000, transitionCycles: 12_000,
    transitionsPerIO: 2, memoryEncryptionFactor: 1.08, cpuHz: 3.0e9, runtimeBytes: 8 << 20,
    sources: [
      "EPC up to 512 GB per socket on server SGX; 64 GiB taken", "page swap ≈ 40,000 cycles (VAULT)",
      "transition 12,000 cycles (HotCalls)",
      "×1.08 compute: Gramine PyTorch overhead 8 % with the patched OpenMP runtime (Gramine docs); no integrity tree",
    ])
  public static let tdx = TEEPreset(
    name: "tdx", kind: "tdx", epcBytes: nil, pageSwapCycles: 0, transitionCycles: 12_000, transitionsPerIO: 2,
    memoryEncryptionFactor: 1.05, cpuHz: 3.0e9, runtimeBytes: 8 << 20,
    sources: [
      "no EPC: all guest memory encrypted (TME-MK), no paging", "transition cost taken equal to SGX's (assumption)",
      "×1.05 compute for memory encryption (assumption: no figure in REFERENCES.md; override with --tee-param)",
    ])
  /// SEV-SNP: the same model as TDX (all guest memory encrypted, no EPC), with AMD's names.
  public static let snp: TEEPreset = {
    var p = tdx
    p.name = "snp"
    p.kind = "snp"
    p.sources[0] = "no EPC: all guest memory encrypted (SME/SEV), no paging"
    return p
  }()

  public static let presets: [TEEPreset] = [.sgx1, .sgx2, .tdx, .snp]

  public static func named(_ name: String) throws -> TEEPreset {
    guard let p = presets.first(where: { $0.name == name }) else {
      throw TEECostError.unknownPreset(name, valid: presets.map(\.name))
    }
    return p
  }

  /// Keys `setting(_:to:)` accepts.
  public static let parameterKeys = [
    "epc_mib", "page_swap_cycles", "transition_cycles", "transitions_per_io", "memory_encryption_factor",
    "cpu_ghz", "runtime_mib",
  ]

  /// Overrides one parameter, with its range checked.
  public mutating func set(_ key: String, to text: String) throws {
    guard let v = Double(text), v.isFinite else { throw TEECostError.badParameter(key, text, "not a number") }
    func check(_ ok: Bool, _ range: String) throws { if !ok { throw TEECostError.badParameter(key, text, "must be \(range)") } }
    switch key {
    case "epc_mib":
      try check(v >= 1 && v <= 4_194_304, "between 1 and 4194304 MiB")
      epcBytes = Int(v * 1_048_576)
    case "page_swap_cycles":
      try check(v >= 0 && v <= 1e7, "between 0 and 1e7")
      pageSwapCycles = v
    case "transition_cycles":
      try check(v >= 0 && v <= 1e7, "between 0 and 1e7")
      transitionCycles = v
    case "transitions_per_io":
      try check(v >= 0 && v <= 1e6 && v == v.rounded(), "a whole number between 0 and 1e6")
      transitionsPerIO = Int(v)
    case "memory_encryption_factor":
      try check(v >= 1 && v <= 100, "between 1 and 100")
      memoryEncryptionFactor = v
    case "cpu_ghz":
      try check(v >= 0.1 && v <= 10, "between 0.1 and 10")
      cpuHz = v * 1e9
    case "runtime_mib":
      try check(v >= 0 && v <= 1_048_576, "between 0 and 1048576")
      runtimeBytes = Int(v * 1_048_576)
    default:
      throw TEECostError.unknownParameter(key, valid: Self.parameterKeys)
    }
  }
}

/// A modeled figure with its sensitivity: its value at the cost model's cheap end, at the preset,
/// and at the costly end of the preset's uncertain parameters (`TEEPreset.bandScenarios`).
public struct ModeledBand: Sendable, Codable, Equatable {
  public var low: Double
  public var preset: Double
  public var high: Double

  public init(low: Double, preset: Double, high: Double) {
    self.low = low
    self.preset = preset
    self.high = high
  }

  /// The band of `values` (one per scenario) around the preset's `value`.
  public init(preset value: Double, over values: [Double]) {
    self.init(low: min(value, values.min() ?? value), preset: value, high: max(value, values.max() ?? value))
  }

  /// Whether the band holds values of both signs (a speed-up that may be a slow-down).
  public var straddlesZero: Bool { low < 0 && high > 0 }
}

/// One setting of the cost model's uncertain parameters the band is taken over.
public struct TEEScenario: Sendable, Equatable {
  /// "low" (every parameter at its cheap end), "high" (every one at its costly end), or
  /// "<key> low" / "<key> high" (that parameter alone moved, the others at the preset).
  public var name: String
  /// The parameter key moved alone; nil for the two corners.
  public var parameter: String?
  public var preset: TEEPreset
}

extension TEEPreset {
  /// The uncertain parameters with their cheap and costly ends (docs/tee-cost-model.md, "Band"):
  /// - `runtime_mib`: 0 (nothing of the runtime resident beside the model) … 2× the preset;
  /// - `epc_mib`: ±10 % (the usable EPC depends on the BIOS's PRM size and on the other enclaves
  ///   resident, the platform's own among them); only for presets with an EPC;
  /// - `memory_encryption_factor`: half … twice the preset's overhead (×1.25 → ×1.125 … ×1.5;
  ///   Gramine reports 25 % with the stock OpenMP runtime and 8 % with its patched one);
  /// - `transition_cycles`: 8,000/12,000 … 17,000/12,000 of the preset (HotCalls' range).
  /// The page-swap cost, the clock and the transitions per I/O are not varied.
  public var uncertainParameters: [(key: String, cheap: TEEPreset, costly: TEEPreset)] {
    var out: [(String, TEEPreset, TEEPreset)] = []
    var cheap = self
    var costly = self
    if let epc = epcBytes {
      cheap.runtimeBytes = 0
      costly.runtimeBytes = runtimeBytes * 2
      out.append(("runtime_mib", cheap, costly))
      cheap = self
      costly = self
      cheap.epcBytes = Int(Double(epc) * 1.1)
      costly.epcBytes = Int(Double(epc) * 0.9)
      out.append(("epc_mib", cheap, costly))
    }
    cheap = self
    costly = self
    cheap.memoryEncryptionFactor = 1 + (memoryEncryptionFactor - 1) / 2
    costly.memoryEncryptionFactor = 1 + (memoryEncryptionFactor - 1) * 2
    out.append(("memory_encryption_factor", cheap, costly))
    cheap = self
    costly = self
    cheap.transitionCycles = transitionCycles * 8 / 12
    costly.transitionCycles = transitionCycles * 17 / 12
    out.append(("transition_cycles", cheap, costly))
    return out
  }

  /// What a person calls an uncertain parameter.
  public static func parameterTitle(_ key: String) -> String {
    [
      "runtime_mib": "runtime pages", "epc_mib": "EPC size", "memory_encryption_factor": "compute factor",
      "transition_cycles": "transition cost",
    ][key] ?? key
  }

  /// The settings a band is taken over: both corners, then each uncertain parameter alone at
  /// either end.
  public var bandScenarios: [TEEScenario] {
    let params = uncertainParameters
    var low = self
    var high = self
    for (key, cheap, costly) in params {
      switch key {
      case "runtime_mib":
        low.runtimeBytes = cheap.runtimeBytes
        high.runtimeBytes = costly.runtimeBytes
      case "epc_mib":
        low.epcBytes = cheap.epcBytes
        high.epcBytes = costly.epcBytes
      case "memory_encryption_factor":
        low.memoryEncryptionFactor = cheap.memoryEncryptionFactor
        high.memoryEncryptionFactor = costly.memoryEncryptionFactor
      default:
        low.transitionCycles = cheap.transitionCycles
        high.transitionCycles = costly.transitionCycles
      }
    }
    var out = [TEEScenario(name: "low", parameter: nil, preset: low), TEEScenario(name: "high", parameter: nil, preset: high)]
    for (key, cheap, costly) in params {
      out.append(TEEScenario(name: "\(key) low", parameter: key, preset: cheap))
      out.append(TEEScenario(name: "\(key) high", parameter: key, preset: costly))
    }
    return out
  }
}

public enum TEECostError: Error, CustomStringConvertible, Equatable {
  case unknownPreset(String, valid: [String])
  case unknownParameter(String, valid: [String])
  case badParameter(String, String, String)

  public var description: String {
    switch self {
    case .unknownPreset(let n, let valid): return "unknown TEE preset '\(n)' (valid: \(valid.joined(separator: ", ")))"
    case .unknownParameter(let k, let valid):
      return "unknown TEE parameter '\(k)' (valid: \(valid.joined(separator: ", ")))"
    case .badParameter(let k, let v, let why): return "TEE parameter \(k)=\(v): \(why)"
    }
  }
}

/// One step of a segment's memory trace: the weight bytes it reads (laid out one after another
/// in step order) and the activation byte ranges it reads and writes (offsets in one arena).
public struct MemoryStep: Sendable {
  public var weightBytes: Int
  public var activationRanges: [Range<Int>]

  public init(weightBytes: Int, activationRanges: [Range<Int>]) {
    self.weightBytes = weightBytes
    self.activationRanges = activationRanges
  }
}

/// The modeled cost of one segment (or the whole model) in a TEE.
public struct TEECost: Sendable, Equatable, Codable {
  /// Native time measured on this machine, seconds.
  public var nativeSeconds: Double
  /// Native time × the memory-encryption factor.
  public var computeSeconds: Double
  /// Distinct 4 KiB pages the request touches (runtime + weights + activations).
  public var workingSetPages: Int
  /// EPC page faults per request in steady state.
  public var pageSwaps: Int
  public var pagingSeconds: Double
  public var transitionSeconds: Double
  /// "modeled", or "measured" when the time was taken inside a real TEE.
  public var label: String
  /// The time in the TEE.
  public var totalSeconds: Double { computeSeconds + pagingSeconds + transitionSeconds }

  /// A time measured inside a real TEE: nothing is added to it.
  public static func measured(_ seconds: Double) -> TEECost {
    TEECost(
      nativeSeconds: seconds, computeSeconds: seconds, workingSetPages: 0, pageSwaps: 0, pagingSeconds: 0,
      transitionSeconds: 0, label: "measured")
  }
}

public enum TEECostModel {
  /// The modeled cost of a segment whose native time is `nativeSeconds`, whose steps touch
  /// `trace`, and which makes `ioOperations` network sends or receives per request.
  public static func cost(nativeSeconds: Double, trace: [MemoryStep], preset: TEEPreset, ioOperations: Int) -> TEECost {
    let (pages, swaps) = simulatePaging(trace: trace, preset: preset)
    return cost(nativeSeconds: nativeSeconds, pages: pages, swaps: swaps, preset: preset, ioOperations: ioOperations)
  }

  /// The modeled cost of the segment under each of `preset.bandScenarios`, in their order.
  public static func scenarioCosts(nativeSeconds: Double, trace: [MemoryStep], preset: TEEPreset, ioOperations: Int) -> [TEECost] {
    // Paging depends on the EPC and the runtime pages only: simulate each pair once.
    var paging: [String: (Int, Int)] = [:]
    return preset.bandScenarios.map { s in
      let p = s.preset
      let key = "\(p.epcBytes ?? -1)/\(p.runtimeBytes)"
      let (pages, swaps) = paging[key] ?? simulatePaging(trace: trace, preset: p)
      paging[key] = (pages, swaps)
      return cost(nativeSeconds: nativeSeconds, pages: pages, swaps: swaps, preset: p, ioOperations: ioOperations)
    }
  }

  static func cost(nativeSeconds: Double, pages: Int, swaps: Int, preset: TEEPreset, ioOperations: Int) -> TEECost {
    TEECost(
      nativeSeconds: nativeSeconds, computeSeconds: nativeSeconds * preset.memoryEncryptionFactor,
      workingSetPages: pages, pageSwaps: swaps, pagingSeconds: Double(swaps) * preset.pageSwapCycles / preset.cpuHz,
      transitionSeconds: Double(ioOperations * preset.transitionsPerIO) * preset.transitionCycles / preset.cpuHz,
      label: "modeled")
  }

  /// Replays one request's page touches through an LRU cache of `preset.epcBytes`: returns the
  /// working set in pages and the steady-state faults per request.
  ///
  /// Address space: the runtime's pages first, then each step's weights in step order, then
  /// the activation arena. Per request: the runtime's pages, then per step its weights
  /// (sequential) and its activation ranges.
  public static func simulatePaging(trace: [MemoryStep], preset: TEEPreset) -> (workingSetPages: Int, swaps: Int) {
    let page = TEEPreset.pageBytes
    func pages(_ bytes: Int) -> Int { (bytes + page - 1) / page }
    let runtimePages = pages(preset.runtimeBytes)
    var weightStart: [Int] = []
    var next = runtimePages
    for s in trace {
      weightStart.append(next)
      next += pages(s.weightBytes)
    }
    let arenaBase = next
    let arenaPages = pages(trace.flatMap(\.activationRanges).map(\.upperBound).max() ?? 0)
    let total = arenaBase + arenaPages
    // One request as a list of page ranges.
    var touches: [Range<Int>] = [0..<runtimePages]
    var touched = [Bool](repeating: false, count: total)
    for p in 0..<runtimePages { touched[p] = true }
    for (i, s) in trace.enumerated() {
      let w = weightStart[i]..<(weightStart[i] + pages(s.weightBytes))
      touches.append(w)
      for r in s.activationRanges where !r.isEmpty {
        let a = (arenaBase + r.lowerBound / page)..<(arenaBase + (r.upperBound + page - 1) / page)
        touches.append(a)
      }
    }
    for r in touches { for p in r { touched[p] = true } }
    let workingSet = touched.reduce(0) { $0 + ($1 ? 1 : 0) }
    guard let epc = preset.epcBytes else { return (workingSet, 0) }
    var lru = LRUPages(capacity: max(1, epc / page), pageCount: total)
    var last = -1
    var faults = 0
    for _ in 0..<4 {
      faults = 0
      for r in touches { for p in r where lru.touch(p) { faults += 1 } }
      if faults == last { break }
      last = faults
    }
    return (workingSet, faults)
  }
}

/// An exact LRU set of pages over a dense page numbering: a doubly linked list in arrays.
struct LRUPages {
  let capacity: Int
  var prev: [Int32]
  var next: [Int32]
  var resident: [Bool]
  var head: Int32 = -1
  var tail: Int32 = -1
  var count = 0

  init(capacity: Int, pageCount: Int) {
    self.capacity = capacity
    prev = [Int32](repeating: -1, count: pageCount)
    next = [Int32](repeating: -1, count: pageCount)
    resident = [Bool](repeating: false, count: pageCount)
  }

  /// Marks page `p` most recently used; returns true when it was not resident (a fault).
  mutating func touch(_ p: Int) -> Bool {
    let q = Int32(p)
    if resident[p] {
      if head == q { return false }
      unlink(q)
      pushFront(q)
      return false
    }
    if count == capacity {
      let victim = tail
      unlink(victim)
      resident[Int(victim)] = false
      count -= 1
    }
    pushFront(q)
    resident[p] = true
    count += 1
    return true
  }

  private mutating func unlink(_ q: Int32) {
    let i = Int(q)
    let p = prev[i]
    let n = next[i]
    if p >= 0 { next[Int(p)] = n } else { head = n }
    if n >= 0 { prev[Int(n)] = p } else { tail = p }
    prev[i] = -1
    next[i] = -1
  }

  private mutating func pushFront(_ q: Int32) {
    let i = Int(q)
    prev[i] = -1
    next[i] = head
    if head >= 0 { prev[Int(head)] = q }
    head = q
    if tail < 0 { tail = q }
  }
}

/// Whether this process runs inside a real TEE, by the same test the evidence providers use
/// (Gramine's /dev/attestation, or a configfs-tsm report provider). When it does, segment
/// times measured here already include the TEE's costs and are reported as measured.
public enum TEEEnvironment {
  public static func detect() -> String? {
    let gramine = GramineSGXProvider()
    if gramine.isAvailable { return "sgx (Gramine)" }
    let tsm = ConfigfsTSMProvider()
    if tsm.isAvailable { return "a confidential VM (configfs-tsm)" }
    return nil
  }
}
