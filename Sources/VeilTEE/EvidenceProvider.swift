import Foundation

/// Where evidence comes from.
public enum EvidenceMode: String, Sendable, CaseIterable {
  /// An SGX enclave under Gramine: `/dev/attestation`.
  case gramineSGX = "gramine-sgx"
  /// A TDX or SEV-SNP confidential VM: Linux configfs-tsm (kernel 6.7 and later).
  case configfsTSM = "configfs-tsm"
  /// No TEE: locally signed, clearly labelled evidence that verifiers refuse by default.
  case simulated
}

/// Produces evidence that binds 64 bytes of report data.
public protocol EvidenceProvider: Sendable {
  var mode: EvidenceMode { get }
  func evidence(reportData: [UInt8]) throws -> [UInt8]
}

private func checkReportData(_ reportData: [UInt8], mode: EvidenceMode) throws {
  guard reportData.count == 64 else {
    throw TEEError.invalidArgument(
      name: "report data for \(mode.rawValue)", detail: "expected 64 bytes, found \(reportData.count)")
  }
}

/// The pseudo-file exchange both kernel-backed providers use: write the report data to one
/// file, read the evidence back from another.
private func exchange(_ reportData: [UInt8], write input: URL, read output: URL, mode: EvidenceMode) throws -> [UInt8] {
  do {
    try Data(reportData).write(to: input)
  } catch {
    throw TEEError.provider(
      mode: mode.rawValue, path: input.path, detail: "cannot write report data: \(error.localizedDescription)")
  }
  let evidence: Data
  do {
    evidence = try Data(contentsOf: output)
  } catch {
    throw TEEError.provider(
      mode: mode.rawValue, path: output.path, detail: "cannot read the evidence: \(error.localizedDescription)")
  }
  guard !evidence.isEmpty, evidence.count <= maxEvidenceBytes else {
    throw TEEError.provider(
      mode: mode.rawValue, path: output.path, detail: "returned \(evidence.count) bytes, not evidence")
  }
  return Array(evidence)
}

/// Gramine's pseudo-files: write `user_report_data`, read `quote` (needs
/// `sgx.remote_attestation = "dcap"` in the manifest).
public struct GramineSGXProvider: EvidenceProvider {
  public var mode: EvidenceMode { .gramineSGX }
  public var root: URL

  public init(root: URL = URL(fileURLWithPath: "/dev/attestation")) {
    self.root = root
  }

  /// Whether this process runs in a Gramine SGX enclave with DCAP attestation.
  public var isAvailable: Bool {
    FileManager.default.fileExists(atPath: root.appendingPathComponent("quote").path)
  }

  public func evidence(reportData: [UInt8]) throws -> [UInt8] {
    try checkReportData(reportData, mode: mode)
    return try exchange(
      reportData, write: root.appendingPathComponent("user_report_data"), read: root.appendingPathComponent("quote"),
      mode: mode)
  }
}

/// Linux configfs-tsm: make a report entry, write `inblob`, read `outblob` (a TDX quote or an
/// SEV-SNP report, as `provider` says), remove the entry. An SEV-SNP report goes out followed by
/// a certificate table: the host's (`auxblob`, when the hypervisor supplies AMD's certificates)
/// and what `snpCollateral` adds, so that clients need no collateral folder of their own.
public struct ConfigfsTSMProvider: EvidenceProvider {
  public var mode: EvidenceMode { .configfsTSM }
  public var root: URL
  /// Certificates (and the CRL) sent after each SEV-SNP report, where the host's table lacks them.
  public var snpCollateral: SNPCollateral?

  public init(root: URL = URL(fileURLWithPath: "/sys/kernel/config/tsm/report"), snpCollateral: SNPCollateral? = nil) {
    self.root = root
    self.snpCollateral = snpCollateral
  }

  /// `evidence` as sent: unchanged unless it is an SEV-SNP report, which gets the entries of
  /// `auxblob` (a certificate table) and of `collateral` that the table lacks appended.
  public static func appendingCertificates(to evidence: [UInt8], auxblob: [UInt8]?, collateral: SNPCollateral?) throws
    -> [UInt8]
  {
    guard evidence.count == SNPReport.size, case .snp = try Evidence(evidence) else { return evidence }
    var entries = try auxblob.flatMap { $0.isEmpty ? nil : try SNPCertificateEntry.parseTable($0[...]) } ?? []
    for e in collateral?.tableEntries ?? [] where !entries.contains(where: { $0.guid == e.guid }) {
      entries.append(e)
    }
    let out = entries.isEmpty ? evidence : evidence + SNPCertificateEntry.encodeTable(entries)
    guard out.count <= maxEvidenceBytes else {
      throw TEEError.oversized(structure: "SEV-SNP report with certificates", size: out.count, limit: maxEvidenceBytes)
    }
    return out
  }

  public var isAvailable: Bool {
    var isDir: ObjCBool = false
    return FileManager.default.fileExists(atPath: root.path, isDirectory: &isDir) && isDir.boolValue
  }

  public func evidence(reportData: [UInt8]) throws -> [UInt8] {
    try checkReportData(reportData, mode: mode)
    let entry = root.appendingPathComponent("veil-\(getpid())-\(UUID().uuidString.prefix(8))")
    do {
      try FileManager.default.createDirectory(at: entry, withIntermediateDirectories: false)
    } catch {
      throw TEEError.provider(
        mode: mode.rawValue, path: entry.path, detail: "cannot create a report entry: \(error.localizedDescription)")
    }
    defer { try? FileManager.default.removeItem(at: entry) }
    let out = try exchange(
      reportData, write: entry.appendingPathComponent("inblob"), read: entry.appendingPathComponent("outblob"),
      mode: mode)
    // The host's certificate table, where the kernel offers one (SNP with certificates).
    let aux = entry.appendingPathComponent("auxblob")
    let auxblob = FileManager.default.fileExists(atPath: aux.path) ? try readBoundedFile(aux, limit: maxEvidenceBytes) : nil
    do {
      return try Self.appendingCertificates(to: out, auxblob: auxblob, collateral: snpCollateral)
    } catch {
      throw TEEError.provider(mode: mode.rawValue, path: aux.path, detail: "cannot append the certificates: \(error)")
    }
  }
}

/// Simulated evidence from a `SimulatedEnclave`.
public struct SimulatedProvider: EvidenceProvider {
  public var mode: EvidenceMode { .simulated }
  public var enclave: SimulatedEnclave

  public init(enclave: SimulatedEnclave) {
    self.enclave = enclave
  }

  public func evidence(reportData: [UInt8]) throws -> [UInt8] {
    try checkReportData(reportData, mode: mode)
    return try enclave.quote(reportData: reportData)
  }
}

/// Chooses a provider at run time: an explicit mode (configuration or `VEIL_EVIDENCE_MODE`)
/// wins; otherwise a real TEE wins over simulation, which is used only when `simulation` is
/// given.
public func detectEvidenceProvider(
  override: EvidenceMode? = nil, environment: [String: String] = ProcessInfo.processInfo.environment,
  gramine: GramineSGXProvider = GramineSGXProvider(), tsm: ConfigfsTSMProvider = ConfigfsTSMProvider(),
  simulation: SimulatedEnclave?
) throws -> any EvidenceProvider {
  var mode = override
  if mode == nil, let name = environment["VEIL_EVIDENCE_MODE"] {
    guard let m = EvidenceMode(rawValue: name) else {
      throw TEEError.invalidArgument(
        name: "VEIL_EVIDENCE_MODE",
        detail: "'\(name)' is not one of \(EvidenceMode.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    mode = m
  }
  switch mode {
  case .gramineSGX: return gramine
  case .configfsTSM: return tsm
  case .simulated:
    guard let simulation else {
      throw TEEError.provider(
        mode: "simulated", path: "-", detail: "simulation requested but no simulated enclave was configured")
    }
    return SimulatedProvider(enclave: simulation)
  case nil:
    if gramine.isAvailable { return gramine }
    if tsm.isAvailable { return tsm }
    guard let simulation else {
      throw TEEError.provider(
        mode: "detect", path: "\(gramine.root.path), \(tsm.root.path)",
        detail: "no TEE found and simulation not configured")
    }
    return SimulatedProvider(enclave: simulation)
  }
}
