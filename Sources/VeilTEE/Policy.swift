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
  public var allowDebug = false
  public var allowSimulation = false
  public var acceptedTCBStatuses = Policy.defaultAcceptedTCBStatuses
  public var maxEvidenceAgeSeconds: Double?

  public init() {}

  static let keys: Set<String> = [
    "mrenclave", "mrsigner", "isvprodid", "min_isvsvn", "mrtd", "rtmrs", "snp_measurement",
    "allow_debug", "allow_simulation", "accepted_tcb_statuses", "max_evidence_age_seconds",
  ]

  /// The file's keys as written; decoding checks their types.
  private struct File: Codable {
    var mrenclave: String?
    var mrsigner: String?
    var isvprodid: UInt16?
    var min_isvsvn: UInt16?
    var mrtd: String?
    var rtmrs: [String?]?
    var snp_measurement: String?
    var allow_debug: Bool?
    var allow_simulation: Bool?
    var accepted_tcb_statuses: [String]?
    var max_evidence_age_seconds: Double?
  }

  private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
  }

  private struct KeyList: Decodable {
    var keys: [String]
    init(from decoder: Decoder) throws {
      keys = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
    }
  }

  /// Reads a policy file's JSON.
  public init(json: Data) throws {
    let file: File
    do {
      for key in try JSONDecoder().decode(KeyList.self, from: json).keys.sorted() where !Self.keys.contains(key) {
        throw TEEError.policy(
          key: key, detail: "unknown key; the keys are \(Self.keys.sorted().joined(separator: ", "))")
      }
      file = try JSONDecoder().decode(File.self, from: json)
    } catch let e as TEEError {
      throw e
    } catch let DecodingError.typeMismatch(type, ctx) {
      throw TEEError.policy(key: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: "expected \(type)")
    } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
      throw TEEError.policy(key: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: ctx.debugDescription)
    } catch {
      throw TEEError.policy(key: "(document)", detail: "not a JSON object: \(error)")
    }
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
      guard n > 0 else {
        throw TEEError.policy(
          key: "max_evidence_age_seconds", detail: "expected a positive number of seconds, found \(n)")
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
    let file = File(
      mrenclave: mrEnclave?.hex, mrsigner: mrSigner?.hex, isvprodid: isvProdID, min_isvsvn: minISVSVN, mrtd: mrTD?.hex,
      rtmrs: rtmrs?.map { $0?.hex }, snp_measurement: snpMeasurement?.hex, allow_debug: allowDebug, allow_simulation: allowSimulation,
      accepted_tcb_statuses: acceptedTCBStatuses, max_evidence_age_seconds: maxEvidenceAgeSeconds)
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try e.encode(file) + Data("\n".utf8)
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
    if !evidence.isSimulated {
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
}
