import Foundation

/// The most evidence bytes any parser accepts: a DCAP quote with its PEM chain is about 5 KiB.
public let maxEvidenceBytes = 64 * 1024

/// An SGX REPORT body (384 bytes), as in the enclave's quote and in the QE's report.
public struct SGXReportBody: Sendable, Equatable {
  public static let size = 384
  public var cpuSVN: [UInt8]
  public var miscSelect: UInt32
  public var isvExtProdID: [UInt8]
  /// ATTRIBUTES: FLAGS (8 bytes, little-endian) then XFRM (8 bytes).
  public var attributes: [UInt8]
  public var mrEnclave: [UInt8]
  public var mrSigner: [UInt8]
  public var configID: [UInt8]
  public var isvProdID: UInt16
  public var isvSVN: UInt16
  public var configSVN: UInt16
  public var isvFamilyID: [UInt8]
  public var reportData: [UInt8]

  /// ATTRIBUTES.FLAGS bit 1: the enclave can be debugged, so its memory is not private.
  public var isDebug: Bool { attributes[0] & 0x02 != 0 }
  public var attributeFlags: UInt64 {
    attributes[0..<8].enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
  }

  init(_ r: ByteReader, at base: Int, prefix: String = "") throws {
    cpuSVN = try r.slice(prefix + "CPUSVN", at: base, count: 16)
    miscSelect = try r.u32(prefix + "MISCSELECT", at: base + 16)
    isvExtProdID = try r.slice(prefix + "ISVEXTPRODID", at: base + 32, count: 16)
    attributes = try r.slice(prefix + "ATTRIBUTES", at: base + 48, count: 16)
    mrEnclave = try r.slice(prefix + "MRENCLAVE", at: base + 64, count: 32)
    mrSigner = try r.slice(prefix + "MRSIGNER", at: base + 128, count: 32)
    configID = try r.slice(prefix + "CONFIGID", at: base + 192, count: 64)
    isvProdID = try r.u16(prefix + "ISVPRODID", at: base + 256)
    isvSVN = try r.u16(prefix + "ISVSVN", at: base + 258)
    configSVN = try r.u16(prefix + "CONFIGSVN", at: base + 260)
    isvFamilyID = try r.slice(prefix + "ISVFAMILYID", at: base + 304, count: 16)
    reportData = try r.slice(prefix + "REPORTDATA", at: base + 320, count: 64)
  }
}

/// A TDX TD report body: TDX 1.0 (584 bytes, quote v4 and v5 type 2) or TDX 1.5 (648 bytes,
/// quote v5 type 3, which appends TEE_TCB_SVN2 and MRSERVICETD).
public struct TDReportBody: Sendable, Equatable {
  public static let size = 584
  public static let size15 = 648
  public var teeTCBSVN: [UInt8]
  public var mrSeam: [UInt8]
  public var mrSignerSeam: [UInt8]
  public var seamAttributes: [UInt8]
  public var tdAttributes: [UInt8]
  public var xfam: [UInt8]
  public var mrTD: [UInt8]
  public var mrConfigID: [UInt8]
  public var mrOwner: [UInt8]
  public var mrOwnerConfig: [UInt8]
  public var rtmrs: [[UInt8]]
  public var reportData: [UInt8]
  /// TDX 1.5 only.
  public var teeTCBSVN2: [UInt8]?
  public var mrServiceTD: [UInt8]?

  /// TD_ATTRIBUTES.DEBUG (bit 0): the host can read the TD's memory.
  public var isDebug: Bool { tdAttributes[0] & 0x01 != 0 }

  init(_ r: ByteReader, at base: Int, tdx15: Bool = false) throws {
    teeTCBSVN = try r.slice("TEE_TCB_SVN", at: base, count: 16)
    mrSeam = try r.slice("MRSEAM", at: base + 16, count: 48)
    mrSignerSeam = try r.slice("MRSIGNERSEAM", at: base + 64, count: 48)
    seamAttributes = try r.slice("SEAMATTRIBUTES", at: base + 112, count: 8)
    tdAttributes = try r.slice("TDATTRIBUTES", at: base + 120, count: 8)
    xfam = try r.slice("XFAM", at: base + 128, count: 8)
    mrTD = try r.slice("MRTD", at: base + 136, count: 48)
    mrConfigID = try r.slice("MRCONFIGID", at: base + 184, count: 48)
    mrOwner = try r.slice("MROWNER", at: base + 232, count: 48)
    mrOwnerConfig = try r.slice("MROWNERCONFIG", at: base + 280, count: 48)
    rtmrs = try (0..<4).map { try r.slice("RTMR\($0)", at: base + 328 + 48 * $0, count: 48) }
    reportData = try r.slice("REPORTDATA", at: base + 520, count: 64)
    if tdx15 {
      teeTCBSVN2 = try r.slice("TEE_TCB_SVN2", at: base + 584, count: 16)
      mrServiceTD = try r.slice("MRSERVICETD", at: base + 600, count: 48)
    }
  }
}

/// The ECDSA signature data that follows a DCAP quote's body.
public struct QuoteSignatureData: Sendable, Equatable {
  /// ECDSA P-256 signature (r ‖ s) over the header and body.
  public var signature: [UInt8]
  /// The attestation key (x ‖ y) that the QE certified.
  public var attestationKey: [UInt8]
  public var qeReport: SGXReportBody
  public var qeReportBytes: [UInt8]
  /// Where the QE report starts in the quote (it is the region the PCK key signs).
  public var qeReportOffset: Int
  public var qeReportSignature: [UInt8]
  public var qeAuthData: [UInt8]
  /// 5: PCK certificate chain (PEM, leaf first).
  public var certificationDataType: UInt16
  public var certificationData: [UInt8]
}

/// An Intel DCAP quote: version 3 (SGX), version 4 (TDX or SGX) or version 5 (typed body).
public struct DCAPQuote: Sendable, Equatable {
  public enum Body: Sendable, Equatable {
    case sgx(SGXReportBody)
    case tdx(TDReportBody)
  }

  public static let headerSize = 48
  public static let intelQEVendorID: [UInt8] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
  ]

  public var bytes: [UInt8]
  public var version: UInt16
  public var attestationKeyType: UInt16
  /// 0 for SGX, 0x81 for TDX (version 4 only; version 3 has no such field).
  public var teeType: UInt32
  public var qeSVN: UInt16
  public var pceSVN: UInt16
  public var qeVendorID: [UInt8]
  public var userData: [UInt8]
  public var body: Body
  public var signatureData: QuoteSignatureData
  /// Header and body: the bytes the attestation key signs.
  public var signedLength: Int
  /// Zero bytes after the signature data (some TDX quote generators pad quotes).
  public var paddingLength: Int

  public var reportData: [UInt8] {
    switch body {
    case .sgx(let b): return b.reportData
    case .tdx(let b): return b.reportData
    }
  }

  public init(_ bytes: [UInt8]) throws {
    let name = "DCAP quote"
    guard bytes.count <= maxEvidenceBytes else {
      throw TEEError.oversized(structure: name, size: bytes.count, limit: maxEvidenceBytes)
    }
    let r = ByteReader(bytes: bytes, structure: name)
    self.bytes = bytes
    version = try r.u16("version", at: 0)
    attestationKeyType = try r.constant("att_key_type", at: 2, UInt16(2), meaning: "ECDSA P-256")
    switch version {
    case 3: teeType = 0
    case 4, 5: teeType = try r.u32("tee_type", at: 4)
    default:
      throw TEEError.unexpectedValue(
        structure: name, field: "version", offset: 0, expected: "3, 4 or 5", found: "\(version)")
    }
    guard teeType == 0 || teeType == 0x81 else {
      throw TEEError.unexpectedValue(
        structure: name, field: "tee_type", offset: 4, expected: "0 (SGX) or 0x81 (TDX)",
        found: String(format: "0x%x", teeType))
    }
    qeSVN = try r.u16("qe_svn", at: 8)
    pceSVN = try r.u16("pce_svn", at: 10)
    qeVendorID = try r.slice("qe_vendor_id", at: 12, count: 16)
    userData = try r.slice("user_data", at: 28, count: 20)
    var bodyOffset = Self.headerSize
    // Version 5 announces the body's type and size; 3 and 4 imply them from the TEE type.
    var bodyType: UInt16 = teeType == 0 ? 1 : 2
    if version == 5 {
      bodyType = try r.u16("body type", at: 48)
      let size = Int(try r.u32("body size", at: 50))
      let expected: [UInt16: Int] = [1: SGXReportBody.size, 2: TDReportBody.size, 3: TDReportBody.size15]
      guard let want = expected[bodyType], (bodyType == 1) == (teeType == 0) else {
        throw TEEError.unexpectedValue(
          structure: name, field: "body type", offset: 48,
          expected: teeType == 0 ? "1 (SGX report)" : "2 (TD report 1.0) or 3 (TD report 1.5)", found: "\(bodyType)")
      }
      guard size == want else {
        throw TEEError.unexpectedValue(
          structure: name, field: "body size", offset: 50, expected: "\(want) for body type \(bodyType)",
          found: "\(size)")
      }
      bodyOffset = 54
    }
    switch bodyType {
    case 1: body = .sgx(try SGXReportBody(r, at: bodyOffset))
    default: body = .tdx(try TDReportBody(r, at: bodyOffset, tdx15: bodyType == 3))
    }
    let bodySize = [1: SGXReportBody.size, 2: TDReportBody.size, 3: TDReportBody.size15][bodyType] ?? 0
    let signed = bodyOffset + bodySize
    signedLength = signed
    let sigLen = Int(try r.u32("signature_data_len", at: signed))
    let sigStart = signed + 4
    let end = sigStart + sigLen
    guard end <= bytes.count else {
      throw TEEError.truncated(
        structure: name, field: "signature data", offset: sigStart, needed: sigLen, available: bytes.count - sigStart)
    }
    if let stray = bytes[end...].firstIndex(where: { $0 != 0 }) {
      throw TEEError.unexpectedValue(
        structure: name, field: "padding after the signature data", offset: stray, expected: "zero bytes",
        found: String(format: "0x%02x", bytes[stray]))
    }
    paddingLength = bytes.count - end
    let signature = try r.slice("quote signature", at: sigStart, count: 64)
    let attestationKey = try r.slice("attestation key", at: sigStart + 64, count: 64)
    var at = sigStart + 128
    if version >= 4 {
      // Versions 4 and 5 wrap the QE report in certification data of type 6.
      try r.constant("certification_data_type", at: at, UInt16(6), meaning: "QE report certification data")
      let outerSize = Int(try r.u32("certification_data_size", at: at + 2))
      guard at + 6 + outerSize == end else {
        throw TEEError.unexpectedValue(
          structure: name, field: "certification_data_size", offset: at + 2,
          expected: "\(end - at - 6) (the rest of the signature data)", found: "\(outerSize)")
      }
      at += 6
    }
    let qeReportOffset = at
    let qeReportBytes = try r.slice("QE report", at: at, count: SGXReportBody.size)
    let qeReport = try SGXReportBody(r, at: at, prefix: "QE report ")
    let qeReportSignature = try r.slice("QE report signature", at: at + 384, count: 64)
    let authLen = Int(try r.u16("qe_auth_data_len", at: at + 448))
    let qeAuthData = try r.slice("qe_auth_data", at: at + 450, count: authLen)
    at += 450 + authLen
    let certType = try r.u16("certification_data_type", at: at)
    let certSize = Int(try r.u32("certification_data_size", at: at + 2))
    let certData = try r.slice("certification_data", at: at + 6, count: certSize)
    guard at + 6 + certSize == end else {
      throw TEEError.unexpectedValue(
        structure: name, field: "certification_data_size", offset: at + 2,
        expected: "\(end - at - 6) (the rest of the signature data)", found: "\(certSize)")
    }
    signatureData = QuoteSignatureData(
      signature: signature, attestationKey: attestationKey, qeReport: qeReport,
      qeReportBytes: qeReportBytes, qeReportOffset: qeReportOffset,
      qeReportSignature: qeReportSignature, qeAuthData: qeAuthData,
      certificationDataType: certType, certificationData: certData)
  }
}

/// An SEV-SNP TCB version: the security patch levels the PSP reports, by component. Milan and
/// Genoa lay the 64 bits out as bootloader, TEE, 4 reserved bytes, SNP, microcode; Turin as FMC,
/// bootloader, TEE, SNP, 3 reserved bytes, microcode.
public struct SNPTCB: Sendable, Equatable, Codable {
  public var raw: UInt64
  public var fmc: Int?
  public var bootloader: Int
  public var tee: Int
  public var snp: Int
  public var microcode: Int

  public init(raw: UInt64, turinLayout: Bool) {
    self.raw = raw
    func byte(_ i: Int) -> Int { Int((raw >> (8 * UInt64(i))) & 0xFF) }
    if turinLayout {
      fmc = byte(0)
      bootloader = byte(1)
      tee = byte(2)
      snp = byte(3)
    } else {
      fmc = nil
      bootloader = byte(0)
      tee = byte(1)
      snp = byte(6)
    }
    microcode = byte(7)
  }

  /// "bootloader 3, tee 0, snp 8, microcode 115" (with "fmc N, " first on Turin).
  public var components: String {
    (fmc.map { "fmc \($0), " } ?? "") + "bootloader \(bootloader), tee \(tee), snp \(snp), microcode \(microcode)"
  }
}

/// One entry of the SNP certificate table: the GUID-indexed blobs that follow a report in an
/// extended report (configfs-tsm's `auxblob`, the GHCB's extended guest request).
public struct SNPCertificateEntry: Sendable, Equatable {
  public enum Kind: String, Sendable, CaseIterable {
    case ark = "c0b406a4-a803-4952-9743-3fb6014cd0ae"
    case ask = "4ab7b379-bbac-4fe4-a02f-05aef327c782"
    case vcek = "63da758d-e664-4564-adc5-f4b93be8accd"
    case vlek = "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
    case crl = "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"

    /// The GUID's 16 bytes in the table (RFC 4122 order, as the kernel and AMD's tools write it).
    public var guid: [UInt8] { [UInt8](hex: rawValue.replacingOccurrences(of: "-", with: "")) ?? [] }
  }

  public var guid: [UInt8]
  public var data: [UInt8]

  public init(guid: [UInt8], data: [UInt8]) {
    self.guid = guid
    self.data = data
  }

  public init(_ kind: Kind, data: [UInt8]) {
    self.init(guid: kind.guid, data: data)
  }

  public var kind: Kind? { Kind.allCases.first { $0.guid == guid } }

  /// The most entries a table may hold (AMD's has three to five).
  public static let maxEntries = 16

  /// Reads a table: 24-byte entries (GUID, offset, length, little-endian, offsets from the
  /// table's start) ended by an all-zero entry, then the blobs.
  public static func parseTable(_ bytes: ArraySlice<UInt8>) throws -> [SNPCertificateEntry] {
    let name = "SEV-SNP certificate table"
    let table = Array(bytes)
    let r = ByteReader(bytes: table, structure: name)
    var entries: [SNPCertificateEntry] = []
    var at = 0
    while true {
      let guid = try r.slice("entry \(entries.count) guid", at: at, count: 16)
      let offset = Int(try r.u32("entry \(entries.count) offset", at: at + 16))
      let length = Int(try r.u32("entry \(entries.count) length", at: at + 20))
      if guid.allSatisfy({ $0 == 0 }) && offset == 0 && length == 0 { break }
      guard entries.count < maxEntries else {
        throw TEEError.unexpectedValue(
          structure: name, field: "entries", offset: at, expected: "at most \(maxEntries) entries",
          found: "more")
      }
      let data = try r.slice("entry \(entries.count) data", at: offset, count: length)
      entries.append(SNPCertificateEntry(guid: guid, data: data))
      at += 24
    }
    return entries
  }

  /// Writes a table that `parseTable` reads back.
  public static func encodeTable(_ entries: [SNPCertificateEntry]) -> [UInt8] {
    var header: [UInt8] = []
    var blobs: [UInt8] = []
    let start = 24 * (entries.count + 1)
    func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: UInt32(v) >> (8 * UInt32($0))) } }
    for e in entries {
      header += e.guid + le32(start + blobs.count) + le32(e.data.count)
      blobs += e.data
    }
    return header + [UInt8](repeating: 0, count: 24) + blobs
  }
}

/// An AMD SEV-SNP attestation report (1184 bytes), as the PSP returns it, and the certificate
/// table that may follow it.
public struct SNPReport: Sendable, Equatable {
  public static let size = 1184
  public static let signedLength = 0x2A0

  /// The report's 1184 bytes (without the certificate table).
  public var bytes: [UInt8]
  public var version: UInt32
  public var guestSVN: UInt32
  /// Guest policy; bit 19 allows the host to debug the guest.
  public var policy: UInt64
  public var familyID: [UInt8]
  public var imageID: [UInt8]
  public var vmpl: UInt32
  public var signatureAlgorithm: UInt32
  public var currentTCB: UInt64
  public var platformInfo: UInt64
  /// Bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 the signing key (0 VCEK, 1 VLEK, 7 none).
  public var keyInfo: UInt32
  public var reportData: [UInt8]
  public var measurement: [UInt8]
  public var hostData: [UInt8]
  public var idKeyDigest: [UInt8]
  public var authorKeyDigest: [UInt8]
  public var reportID: [UInt8]
  public var reportIDMA: [UInt8]
  public var reportedTCB: UInt64
  /// CPUID family, model and stepping (reports of version 3 and later; zero before).
  public var cpuidFamily: UInt8
  public var cpuidModel: UInt8
  public var cpuidStepping: UInt8
  public var chipID: [UInt8]
  public var committedTCB: UInt64
  /// The PSP firmware: major.minor, build.
  public var currentFirmware: (major: UInt8, minor: UInt8, build: UInt8)
  public var launchTCB: UInt64
  /// ECDSA P-384 signature components, little-endian, 72 bytes each.
  public var signatureR: [UInt8]
  public var signatureS: [UInt8]
  /// The certificate table after the report, when the evidence carries one.
  public var certificates: [SNPCertificateEntry]

  public var debugAllowed: Bool { policy & (1 << 19) != 0 }
  /// Which key signed: 0 the VCEK, 1 a VLEK, 7 none.
  public var signingKey: UInt32 { (keyInfo >> 2) & 7 }
  /// The product by CPUID, where the report says it (version 3 and later).
  public var product: AMDProduct? { AMDProduct(family: cpuidFamily, model: cpuidModel) }
  /// REPORTED_TCB by component, in the layout of the report's product.
  public var reportedTCBComponents: SNPTCB { SNPTCB(raw: reportedTCB, turinLayout: product == .turin) }

  public static func == (a: SNPReport, b: SNPReport) -> Bool { a.bytes == b.bytes && a.certificates == b.certificates }

  /// Reads a report, and the certificate table when bytes follow the report's 1184.
  public init(_ bytes: [UInt8]) throws {
    let name = "SEV-SNP report"
    guard bytes.count <= maxEvidenceBytes else {
      throw TEEError.oversized(structure: name, size: bytes.count, limit: maxEvidenceBytes)
    }
    let r = ByteReader(bytes: bytes, structure: name)
    self.bytes = try r.slice("report", at: 0, count: Self.size)
    version = try r.u32("version", at: 0)
    guard (2...5).contains(version) else {
      throw TEEError.unexpectedValue(
        structure: name, field: "version", offset: 0, expected: "2 to 5", found: "\(version)")
    }
    guestSVN = try r.u32("guest_svn", at: 4)
    policy = try r.u64("policy", at: 8)
    familyID = try r.slice("family_id", at: 0x10, count: 16)
    imageID = try r.slice("image_id", at: 0x20, count: 16)
    vmpl = try r.u32("vmpl", at: 0x30)
    signatureAlgorithm = try r.constant("signature_algo", at: 0x34, UInt32(1), meaning: "ECDSA P-384 with SHA-384")
    currentTCB = try r.u64("current_tcb", at: 0x38)
    platformInfo = try r.u64("platform_info", at: 0x40)
    keyInfo = try r.u32("key_info", at: 0x48)
    reportData = try r.slice("report_data", at: 0x50, count: 64)
    measurement = try r.slice("measurement", at: 0x90, count: 48)
    hostData = try r.slice("host_data", at: 0xC0, count: 32)
    idKeyDigest = try r.slice("id_key_digest", at: 0xE0, count: 48)
    authorKeyDigest = try r.slice("author_key_digest", at: 0x110, count: 48)
    reportID = try r.slice("report_id", at: 0x140, count: 32)
    reportIDMA = try r.slice("report_id_ma", at: 0x160, count: 32)
    reportedTCB = try r.u64("reported_tcb", at: 0x180)
    let cpuid = version >= 3 ? try r.slice("cpuid", at: 0x188, count: 3) : [0, 0, 0]
    (cpuidFamily, cpuidModel, cpuidStepping) = (cpuid[0], cpuid[1], cpuid[2])
    chipID = try r.slice("chip_id", at: 0x1A0, count: 64)
    committedTCB = try r.u64("committed_tcb", at: 0x1E0)
    let fw = try r.slice("current_build/minor/major", at: 0x1E8, count: 3)
    currentFirmware = (major: fw[2], minor: fw[1], build: fw[0])
    launchTCB = try r.u64("launch_tcb", at: 0x1F0)
    signatureR = try r.slice("signature r", at: 0x2A0, count: 72)
    signatureS = try r.slice("signature s", at: 0x2A0 + 72, count: 72)
    certificates = bytes.count > Self.size ? try SNPCertificateEntry.parseTable(bytes[Self.size...]) : []
  }
}

/// Attestation evidence of any supported kind, recognised from its bytes.
public enum Evidence: Sendable, Equatable {
  case sgx(DCAPQuote)
  case tdx(DCAPQuote)
  case snp(SNPReport)

  /// Text that marks simulated evidence in its QE user data, beside the all-zero vendor id.
  public static let simulationMarker = Array("VEIL SIMULATED".utf8)

  public init(_ bytes: [UInt8]) throws {
    guard bytes.count <= maxEvidenceBytes else {
      throw TEEError.oversized(structure: "evidence", size: bytes.count, limit: maxEvidenceBytes)
    }
    guard bytes.count >= 4 else {
      throw TEEError.truncated(
        structure: "evidence", field: "version", offset: 0, needed: 4, available: bytes.count)
    }
    let r = ByteReader(bytes: bytes, structure: "evidence")
    let v32 = try r.u32("version", at: 0)
    // A DCAP quote's first 32 bits hold its version and attestation key type (2 or 3) in the
    // upper half, so versions 2...5 there can only be an SNP report.
    if (2...5).contains(v32) {
      self = .snp(try SNPReport(bytes))
      return
    }
    let quote = try DCAPQuote(bytes)
    switch quote.body {
    case .sgx: self = .sgx(quote)
    case .tdx: self = .tdx(quote)
    }
  }

  public var kind: String {
    switch self {
    case .sgx(let q): return isSimulated ? "SIMULATED SGX quote v3 (not a TEE)" : "SGX DCAP quote v\(q.version)"
    case .tdx(let q): return "TDX DCAP quote v\(q.version)"
    case .snp(let r): return "SEV-SNP attestation report v\(r.version)"
    }
  }

  /// Simulated evidence: an SGX quote with an all-zero QE vendor id (no real QE has one).
  public var isSimulated: Bool {
    if case .sgx(let q) = self { return q.qeVendorID.allSatisfy { $0 == 0 } }
    return false
  }

  public var reportData: [UInt8] {
    switch self {
    case .sgx(let q), .tdx(let q): return q.reportData
    case .snp(let r): return r.reportData
    }
  }

  public var isDebug: Bool {
    switch self {
    case .sgx(let q), .tdx(let q):
      switch q.body {
      case .sgx(let b): return b.isDebug
      case .tdx(let b): return b.isDebug
      }
    case .snp(let r): return r.debugAllowed
    }
  }

  /// The parsed fields, in the order a reader checks them, as `veil attest inspect` shows them.
  public var fields: [(name: String, value: String)] {
    var out: [(String, String)] = [("kind", kind), ("simulated", isSimulated ? "yes (SIMULATED, not a TEE)" : "no")]
    switch self {
    case .sgx(let q), .tdx(let q):
      out += [
        ("version", "\(q.version)"), ("qe_svn", "\(q.qeSVN)"), ("pce_svn", "\(q.pceSVN)"),
        ("qe_vendor_id", q.qeVendorID.hex),
      ]
      switch q.body {
      case .sgx(let b):
        out += [
          ("mrenclave", b.mrEnclave.hex), ("mrsigner", b.mrSigner.hex), ("isvprodid", "\(b.isvProdID)"),
          ("isvsvn", "\(b.isvSVN)"), ("attributes", b.attributes.hex),
          ("debug", b.isDebug ? "yes" : "no"), ("cpusvn", b.cpuSVN.hex),
          ("miscselect", String(format: "0x%08x", b.miscSelect)),
        ]
      case .tdx(let b):
        out += [
          ("tee_tcb_svn", b.teeTCBSVN.hex), ("mrseam", b.mrSeam.hex), ("td_attributes", b.tdAttributes.hex),
          ("debug", b.isDebug ? "yes" : "no"), ("xfam", b.xfam.hex), ("mrtd", b.mrTD.hex),
          ("mrconfigid", b.mrConfigID.hex), ("mrowner", b.mrOwner.hex),
        ]
        out += b.rtmrs.enumerated().map { ("rtmr\($0.offset)", $0.element.hex) }
        if let svn2 = b.teeTCBSVN2, let service = b.mrServiceTD {
          out += [("tee_tcb_svn2", svn2.hex), ("mrservicetd", service.hex)]
        }
      }
      out += [
        ("report_data", q.reportData.hex),
        ("certification_data_type", "\(q.signatureData.certificationDataType)"),
      ]
    case .snp(let r):
      out += [
        ("version", "\(r.version)"), ("guest_svn", "\(r.guestSVN)"),
        ("policy", String(format: "0x%016llx", r.policy)), ("debug", r.debugAllowed ? "yes" : "no"),
        ("vmpl", "\(r.vmpl)"), ("measurement", r.measurement.hex), ("host_data", r.hostData.hex),
        ("signing_key", r.signingKey == 0 ? "VCEK" : r.signingKey == 1 ? "VLEK" : "none (\(r.signingKey))"),
        ("product", r.product.map(\.rawValue) ?? "not in the report (version 2)"),
        ("cpuid", String(format: "family 0x%02x model 0x%02x stepping 0x%02x", r.cpuidFamily, r.cpuidModel, r.cpuidStepping)),
        ("reported_tcb", String(format: "0x%016llx", r.reportedTCB) + " (\(r.reportedTCBComponents.components))"),
        ("current_tcb", String(format: "0x%016llx", r.currentTCB) + " (\(SNPTCB(raw: r.currentTCB, turinLayout: r.product == .turin).components))"),
        ("committed_tcb", String(format: "0x%016llx", r.committedTCB)),
        ("launch_tcb", String(format: "0x%016llx", r.launchTCB)),
        ("platform_info", String(format: "0x%llx", r.platformInfo)),
        ("firmware", "\(r.currentFirmware.major).\(r.currentFirmware.minor) build \(r.currentFirmware.build)"),
        ("chip_id", r.chipID.hex), ("report_id", r.reportID.hex), ("report_data", r.reportData.hex),
        ("id_key_digest", r.idKeyDigest.hex), ("author_key_digest", r.authorKeyDigest.hex),
        ("certificate_table", r.certificates.isEmpty ? "none" : r.certificates.map { "\($0.kind.map { "\($0)" } ?? $0.guid.hex) (\($0.data.count) bytes)" }.joined(separator: ", ")),
      ]
    }
    return out
  }
}
