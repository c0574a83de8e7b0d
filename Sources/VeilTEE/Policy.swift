import Foundation

/// What a relying party (the client, or a model owner releasing a key) accepts as evidence.
///
/// Its file is a JSON object; unknown keys are refused so that a misspelt key cannot silently
/// widen what is accepted. See docs/tee.md for the format.
public struct Policy: Sendable, Equatable {
  /// Intel's TCB statuses; the default accepts a platform at the latest TCB level even where
  /// Intel asks for configuration or software hardening, and refuses anything out of date.
  public static let tcbStatuses = [
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
  ]
  public static let defaultAcceptedTCBStatuses = [
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
  ]

  public var mrEnclave: [UInt8]?
  public var mrSigner: [UInt8]?
  public var isvProdID: UInt16?
  public var minISVSVN: UInt16?
  public var mrTD: [UInt8]?
  /// RTMR0..3; a nil entry accepts any value of that register.
  public var rtmrs: [[UInt8]?]?
  public var snpMeasurement: [UInt8]?
  /// SEV-SNP HOST_DATA (32 bytes the host sets at launch, e.g. a hash of the VM's configuration).
  public var snpHostData: [UInt8]?
  /// SEV-SNP: the lowest security patch level accepted per TCB component (REPORTED_TCB, the
  /// level the VCEK certifies).
  public var snpMinTCB: SNPMinimumTCB?
  /// SEV-SNP: the highest VMPL accepted for the software that asked for the report (0 is the
  /// most privileged level, the guest kernel's without an SVSM).
  public var snpMaxVMPL: UInt32?
  /// The evidence kinds accepted ("sgx", "tdx", "snp"). Unset: SGX and TDX, and SNP as soon as
  /// the policy names any snp_ key.
  public var acceptedEvidence: [String]?
  public var allowDebug = false
  public var allowSimulation = false
  public var acceptedTCBStatuses = Policy.defaultAcceptedTCBStatuses
  public var maxEvidenceAgeSeconds: Double?

  public init() {}

  /// Per-component minimum of an SNP TCB; an unset component accepts any level.
  public struct SNPMinimumTCB: Codable, Sendable, Equatable {
    public var bootloader: Int?
    public var tee: Int?
    public var snp: Int?
    public var microcode: Int?
    public var fmc: Int?

    public init(bootloader: Int? = nil, tee: Int? = nil, snp: Int? = nil, microcode: Int? = nil, fmc: Int? = nil) {
      self.bootloader = bootloader
      self.tee = tee
      self.snp = snp
      self.microcode = microcode
      self.fmc = fmc
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case bootloader, tee, snp, microcode, fmc }

    public init(from decoder: Decoder) throws {
      let keys = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
      let known = CodingKeys.allCases.map(\.rawValue)
      for key in keys.sorted() where !known.contains(key) {
        throw TEEError.policy(key: "snp_min_tcb.\(key)", detail: "unknown component; the components are \(known.joined(separator: ", "))")
      }
      let c = try decoder.container(keyedBy: CodingKeys.self)
      bootloader = try c.decodeIfPresent(Int.self, forKey: .bootloader)
      tee = try c.decodeIfPresent(Int.self, forKey: .tee)
      snp = try c.decodeIfPresent(Int.self, forKey: .snp)
      microcode = try c.decodeIfPresent(Int.self, forKey: .microcode)
      fmc = try c.decodeIfPresent(Int.self, forKey: .fmc)
    }
  }

  public static let evidenceKinds = ["sgx", "tdx", "snp"]

  static let keys: Set<String> = [
    "mrenclave", "mrsigner", "isvprodid", "min_isvsvn", "mrtd", "rtmrs", "snp_measurement", "snp_host_data",
    "snp_min_tcb", "snp_max_vmpl", "accepted_evidence",
    "allow_debug", "allow_simulation", "accepted_tcb_statuses", "max_evidence_age_seconds",
  ]

  /// Whether the policy names SEV-SNP (an snp_ key), which lets SNP evidence in by default.
  public var namesSNP: Bool { snpMeasurement != nil || snpHostData != nil || snpMinTCB != nil || snpMaxVMPL != nil }

  /// The evidence kinds this policy accepts.
  public var evidenceKinds: [String] { acceptedEvidence ?? (["sgx", "tdx"] + (namesSNP ? ["snp"] : [])) }

  /// The file's keys as written; decoding checks their types.
  private struct File: Codable {
    var mrenclave: String?
    var mrsigner: String?
    var isvprodid: UInt16?
    var min_isvsvn: UInt16?
    var mrtd: String?
    var rtmrs: [String?]?
    var snp_measurement: String?
    var snp_host_data: String?
    var snp_min_tcb: SNPMinimumTCB?
    var snp_max_vmpl: UInt32?
    var accepted_evidence: [String]?
    var allow_debug: Bool?
    var allow_simulation: Bool?
    var accepted_tcb_statuses: [String]?
    var max_evidence_age_seconds: Double?
  }

  fileprivate struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
  }

  /// Reads a policy file's JSON.
  public init(json: Data) throws {
    do {
      self = try JSONDecoder().decode(Policy.self, from: json)
    } catch let e as TEEError {
      throw e
    } catch let DecodingError.typeMismatch(type, ctx) {
      throw TEEError.policy(key: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: "expected \(type)")
    } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
      throw TEEError.policy(key: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: ctx.debugDescription)
    } catch {
      throw TEEError.policy(key: "(document)", detail: "not a JSON object: \(error)")
    }
  }

  /// A policy from the file's keys, each checked (sizes of the pins, ranges, known names).
  private init(file: File) throws {
    func hex(_ key: String, bytes: Int, _ value: String?) throws -> [UInt8]? {
      guard let value else { return nil }
      guard let b = [UInt8](hex: value), b.count == bytes else {
        throw TEEError.policy(key: key, detail: "expected \(bytes) bytes as \(2 * bytes) hex digits, found '\(value)'")
      }
      return b
    }
    mrEnclave = try hex("mrenclave", bytes: 32, file.mrenclave)
    mrSigner = try hex("mrsigner", bytes: 32, file.mrsigner)
    isvProdID = file.isvprodid
    minISVSVN = file.min_isvsvn
    mrTD = try hex("mrtd", bytes: 48, file.mrtd)
    if let list = file.rtmrs {
      guard list.count <= 4 else {
        throw TEEError.policy(key: "rtmrs", detail: "expected at most 4 entries (RTMR0..3), found \(list.count)")
      }
      rtmrs = try list.enumerated().map { try hex("rtmrs[\($0.offset)]", bytes: 48, $0.element) }
    }
    snpMeasurement = try hex("snp_measurement", bytes: 48, file.snp_measurement)
    snpHostData = try hex("snp_host_data", bytes: 32, file.snp_host_data)
    if let t = file.snp_min_tcb {
      for (name, value) in [("bootloader", t.bootloader), ("tee", t.tee), ("snp", t.snp), ("microcode", t.microcode), ("fmc", t.fmc)] {
        if let value, !(0...255).contains(value) {
          throw TEEError.policy(key: "snp_min_tcb.\(name)", detail: "expected a security patch level 0...255, found \(value)")
        }
      }
      snpMinTCB = t
    }
    if let n = file.snp_max_vmpl {
      guard n <= 3 else { throw TEEError.policy(key: "snp_max_vmpl", detail: "expected a VMPL 0...3, found \(n)") }
      snpMaxVMPL = n
    }
    if let kinds = file.accepted_evidence {
      for k in kinds where !Self.evidenceKinds.contains(k) {
        throw TEEError.policy(
          key: "accepted_evidence", detail: "unknown evidence kind '\(k)'; known: \(Self.evidenceKinds.joined(separator: ", "))")
      }
      acceptedEvidence = kinds
    }
    allowDebug = file.allow_debug ?? false
    allowSimulation = file.allow_simulation ?? false
    if let list = file.accepted_tcb_statuses {
      for s in list where !Self.tcbStatuses.contains(s) {
        throw TEEError.policy(
          key: "accepted_tcb_statuses",
          detail: "unknown TCB status '\(s)'; known: \(Self.tcbStatuses.joined(separator: ", "))")
      }
      acceptedTCBStatuses = list
    }
    if let n = file.max_evidence_age_seconds {
      guard n > 0, n <= 1e9 else {
        throw TEEError.policy(
          key: "max_evidence_age_seconds", detail: "expected a positive number of seconds up to 1e9 (about 31 years), found \(n)")
      }
      maxEvidenceAgeSeconds = n
    }
    if mrSigner != nil, isvProdID == nil {
      throw TEEError.policy(key: "isvprodid", detail: "required with mrsigner: a signer signs many products")
    }
  }

  /// The policy file's JSON: what `init(json:)` reads back to an equal policy (keys sorted;
  /// unset pins left out). The planner writes the client policy with it.
  public func json() throws -> Data {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try e.encode(self) + Data("\n".utf8)
  }

  /// The policy as its file's keys.
  private var file: File {
    File(
      mrenclave: mrEnclave?.hex, mrsigner: mrSigner?.hex, isvprodid: isvProdID, min_isvsvn: minISVSVN, mrtd: mrTD?.hex,
      rtmrs: rtmrs?.map { $0?.hex }, snp_measurement: snpMeasurement?.hex, snp_host_data: snpHostData?.hex,
      snp_min_tcb: snpMinTCB, snp_max_vmpl: snpMaxVMPL, accepted_evidence: acceptedEvidence,
      allow_debug: allowDebug, allow_simulation: allowSimulation,
      accepted_tcb_statuses: acceptedTCBStatuses, max_evidence_age_seconds: maxEvidenceAgeSeconds)
  }

  /// The measurements the policy pins (MRENCLAVE, MRSIGNER with ISVPRODID, MRTD, RTMRs, the SNP
  /// measurement), by name; empty when any enclave with genuine evidence would pass.
  public var pinnedMeasurements: [String] {
    var names: [String] = []
    if mrEnclave != nil { names.append("MRENCLAVE") }
    if mrSigner != nil { names.append("MRSIGNER") }
    if mrTD != nil { names.append("MRTD") }
    for (i, r) in (rtmrs ?? []).enumerated() where r != nil { names.append("RTMR\(i)") }
    if snpMeasurement != nil { names.append("SNP measurement") }
    return names
  }

  /// Adds the policy's checks to a verdict of `evidence`. `evidenceTime` is when the evidence
  /// was produced, where known; `now` is the verifier's time.
  public func evaluate(_ evidence: Evidence, evidenceTime: Date?, now: Date, into v: inout Verdict) {
    let kind: String
    switch evidence {
    case .sgx: kind = "sgx"
    case .tdx: kind = "tdx"
    case .snp: kind = "snp"
    }
    let kinds = evidenceKinds
    v.check(
      "policy: evidence kind", kinds.contains(kind),
      kinds.contains(kind)
        ? "\(kind) evidence is accepted"
        : kind == "snp" && acceptedEvidence == nil
          ? "SEV-SNP evidence is accepted only when the policy names it: pin snp_measurement (or set snp_min_tcb, snp_max_vmpl, snp_host_data, or accepted_evidence with \"snp\")"
          : "\(kind) evidence is not among the accepted kinds \(kinds.joined(separator: ", "))")
    if evidence.isSimulated {
      v.check(
        "policy: simulation", allowSimulation,
        allowSimulation
          ? "SIMULATED evidence accepted because the policy allows simulation: this is not a TEE"
          : "SIMULATED evidence (no TEE, locally generated key) is refused; set allow_simulation to accept it")
    }
    let debug = evidence.isDebug
    v.check(
      "policy: debug", !debug || allowDebug,
      debug
        ? (allowDebug
          ? "debug enclave accepted by the policy"
          : "the enclave is debuggable (its memory is readable by the host); refused") : "not a debug enclave")
    if case .snp(let r) = evidence {
      evaluateSNP(r, into: &v)
    } else if !evidence.isSimulated {
      if let status = v.tcbStatus {
        let ok = acceptedTCBStatuses.contains(status)
        v.check(
          "policy: TCB status", ok,
          ok
            ? "\(status) is accepted"
            : "\(status) is not among the accepted statuses \(acceptedTCBStatuses.joined(separator: ", "))")
      } else {
        v.check("policy: TCB status", false, "no TCB status could be established")
      }
    }
    var mismatches: [String] = []
    var pinned: [String] = []
    func compare(_ name: String, _ want: [UInt8]?, _ have: [UInt8]?) {
      guard let want else { return }
      pinned.append(name)
      guard let have else {
        mismatches.append("the policy pins \(name) but the evidence (\(evidence.kind)) has none")
        return
      }
      if want != have { mismatches.append("\(name) is \(have.hex), the policy expects \(want.hex)") }
    }
    var sgx: SGXReportBody?
    var td: TDReportBody?
    var snp: SNPReport?
    switch evidence {
    case .sgx(let q), .tdx(let q):
      switch q.body {
      case .sgx(let b): sgx = b
      case .tdx(let b): td = b
      }
    case .snp(let r): snp = r
    }
    compare("MRENCLAVE", mrEnclave, sgx?.mrEnclave)
    compare("MRSIGNER", mrSigner, sgx?.mrSigner)
    if let isvProdID {
      pinned.append("ISVPRODID")
      if sgx?.isvProdID != isvProdID {
        mismatches.append("ISVPRODID is \(sgx.map { "\($0.isvProdID)" } ?? "absent"), the policy expects \(isvProdID)")
      }
    }
    if let minISVSVN {
      pinned.append("ISVSVN")
      if (sgx?.isvSVN ?? 0) < minISVSVN || sgx == nil {
        mismatches.append(
          "ISVSVN is \(sgx.map { "\($0.isvSVN)" } ?? "absent"), the policy requires at least \(minISVSVN)")
      }
    }
    compare("MRTD", mrTD, td?.mrTD)
    for (i, want) in (rtmrs ?? []).enumerated() {
      compare("RTMR\(i)", want, td?.rtmrs[i])
    }
    compare("SNP measurement", snpMeasurement, snp?.measurement)
    compare("SNP HOST_DATA", snpHostData, snp?.hostData)
    v.check(
      "policy: measurement", mismatches.isEmpty,
      !mismatches.isEmpty
        ? mismatches.joined(separator: "; ")
        : pinned.isEmpty
          ? "not pinned by the policy: any enclave with genuine evidence is accepted"
          : "\(pinned.joined(separator: ", ")) as the policy expects")
    if let maxAge = maxEvidenceAgeSeconds {
      if let evidenceTime {
        let age = now.timeIntervalSince(evidenceTime)
        v.check(
          "policy: evidence age", age <= maxAge && age >= -60,
          "evidence produced \(Int(age)) s before the verification time; the policy allows \(Int(maxAge)) s")
      } else {
        v.check(
          "policy: evidence age", false,
          "the policy limits evidence age to \(Int(maxAge)) s but the evidence's production time is unknown")
      }
    }
  }

  /// SNP's counterparts of Intel's TCB status: the minimum TCB per component and the VMPL.
  private func evaluateSNP(_ r: SNPReport, into v: inout Verdict) {
    let tcb = r.reportedTCBComponents
    if let min = snpMinTCB {
      var low: [String] = []
      for (name, want, have) in [
        ("bootloader", min.bootloader, tcb.bootloader), ("tee", min.tee, tcb.tee), ("snp", min.snp, tcb.snp),
        ("microcode", min.microcode, tcb.microcode), ("fmc", min.fmc, tcb.fmc ?? 0),
      ] {
        if let want, have < want { low.append("\(name) \(have) < \(want)") }
      }
      v.check(
        "policy: SNP TCB", low.isEmpty,
        low.isEmpty
          ? "REPORTED_TCB \(tcb.components) meets the policy's minimum"
          : "REPORTED_TCB is below the policy's minimum: " + low.joined(separator: ", "))
    } else {
      v.check("policy: SNP TCB", true, "no minimum in the policy (snp_min_tcb); REPORTED_TCB is \(tcb.components)")
    }
    if let max = snpMaxVMPL {
      v.check(
        "policy: SNP VMPL", r.vmpl <= max,
        "the report was requested at VMPL \(r.vmpl); the policy accepts 0...\(max)")
    }
  }
}

/// A policy encodes as its file's JSON object and decodes from one, refusing unknown keys and
/// checking every value as `init(json:)` does, so a policy can sit inside another document
/// (a plan, a key-release configuration) in the same form as its own file.
extension Policy: Codable {
  public init(from decoder: Decoder) throws {
    for key in try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue).sorted()
    where !Self.keys.contains(key) {
      throw TEEError.policy(key: key, detail: "unknown key; the keys are \(Self.keys.sorted().joined(separator: ", "))")
    }
    try self.init(file: File(from: decoder))
  }

  public func encode(to encoder: Encoder) throws {
    try file.encode(to: encoder)
  }
}
