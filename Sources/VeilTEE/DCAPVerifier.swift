import Crypto
import Foundation
import X509

/// The Intel SGX Root CA that every PCK and TCB signing chain must end in (pinned, DER).
public let intelSGXRootCADER: [UInt8] =
  Data(
    base64Encoded: """
      MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIwaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJv\
      b3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ\
      BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0Ex\
      GjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT\
      AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi71OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL\
      0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOBuzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ\
      MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50ZWwuY29tL0ludGVsU0dYUm9vdENBLmRl\
      cjAdBgNVHQ4EFgQUImUM1lqdNInzg7SVUr9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI\
      KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwgAiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZ\
      UGOdRQ7cvqRXaqI=
      """.replacingOccurrences(of: "\n", with: "").replacingOccurrences(of: " ", with: "")
  ).map { Array($0) } ?? []

/// Verifies Intel DCAP quotes (SGX v3, TDX v4) against collateral, up to a pinned root.
///
/// Verification never throws for bad evidence: it returns a verdict listing every check, so a
/// caller (and `veil attest verify`) can say everything that failed, not just the first thing.
public struct DCAPVerifier: Sendable {
  public var root: Certificate
  public var collateral: Collateral?
  /// "Now": certificate, CRL and collateral validity are judged at this instant.
  public var time: Date

  public init(root: Certificate? = nil, collateral: Collateral?, time: Date) throws {
    if let root {
      self.root = root
    } else {
      do {
        self.root = try Certificate(derEncoded: intelSGXRootCADER)
      } catch {
        throw TEEError.certificate(chain: "pinned Intel SGX Root CA", index: 0, detail: "\(error)")
      }
    }
    self.collateral = collateral
    self.time = time
  }

  public func verify(_ quote: DCAPQuote, into v: inout Verdict) {
    let sd = quote.signatureData
    let isTDX: Bool
    if case .tdx = quote.body { isTDX = true } else { isTDX = false }

    // 1. The quote itself, signed by the attestation key.
    v.checkSignature(
      "quote signature", algorithm: "ECDSA P-256", over: "bytes 0..<\(quote.signedLength)", by: "the attestation key"
    ) {
      try P256.Signing.PublicKey(rawRepresentation: sd.attestationKey).isValidSignature(
        P256.Signing.ECDSASignature(rawRepresentation: sd.signature),
        for: SHA256.hash(data: quote.bytes[0..<quote.signedLength]))
    }

    // 2. The QE report binds the attestation key.
    let binding = Array(SHA256.hash(data: sd.attestationKey + sd.qeAuthData))
    let rd = sd.qeReport.reportData
    let bound = Array(rd[0..<32]) == binding && rd[32..<64].allSatisfy { $0 == 0 }
    v.check(
      "QE report data binding", bound,
      bound
        ? "QE REPORTDATA = SHA-256(attestation key ‖ QE auth data)"
        : "QE REPORTDATA[0..32] = \(Array(rd[0..<32]).hex), expected SHA-256(attestation key ‖ QE auth data) = \(binding.hex)"
    )

    // 3. The PCK chain up to the pinned root, with the CRLs.
    guard sd.certificationDataType == 5 else {
      v.check(
        "PCK certificate chain", false,
        "certification data type \(sd.certificationDataType); only 5 (PCK chain, PEM) is supported")
      return
    }
    let pem = String(decoding: sd.certificationData.prefix { $0 != 0 }, as: UTF8.self)
    let chain: [Certificate]
    do {
      chain = try parseChain(pem, name: "PCK chain")
    } catch {
      v.check("PCK certificate chain", false, "\(error)")
      return
    }
    var crls: [RevocationList] = []
    if let c = collateral {
      do {
        crls.append(try RevocationList(der: try hexField(c.pckCRL, "pck_crl"), field: "pck_crl"))
        crls.append(try RevocationList(der: try hexField(c.rootCACRL, "root_ca_crl"), field: "root_ca_crl"))
      } catch {
        v.check("collateral CRLs", false, "\(error)")
      }
    }
    let problems = chainProblems(chain, name: "PCK chain", root: root, at: time, crls: crls)
    v.check(
      "PCK certificate chain", problems.isEmpty,
      problems.isEmpty
        ? "\(chain.count) certificates up to the pinned Intel SGX Root CA, valid and not revoked at \(iso(time))"
        : problems.joined(separator: "; "))

    // 4. The QE report signed by the PCK leaf.
    let leaf = chain[0]
    v.checkSignature("QE report signature", algorithm: "ECDSA P-256", over: "the QE report", by: "the PCK leaf") {
      guard let key = P256.Signing.PublicKey(leaf.publicKey) else { throw Verdict.NotAKey() }
      return try key.isValidSignature(
        P256.Signing.ECDSASignature(rawRepresentation: sd.qeReportSignature), for: SHA256.hash(data: sd.qeReportBytes))
    }

    // 5. TCB status from the collateral.
    guard let collateral else {
      v.check(
        "collateral", false, "no collateral: CRLs, TCB info and QE identity cannot be checked (pass --collateral)")
      return
    }
    evaluateTCB(quote, isTDX: isTDX, leaf: leaf, collateral: collateral, crls: crls, into: &v)
  }

  private func hexField(_ s: String, _ field: String) throws -> [UInt8] {
    guard let b = [UInt8](hex: s.trimmingCharacters(in: .whitespacesAndNewlines)) else {
      throw TEEError.collateral(field: field, detail: "not hex")
    }
    return b
  }

  /// Checks a signed collateral document: its issuer chain, its signature, its validity window.
  private func signedDocument(
    name: String, text: String, signatureHex: String, chainPEM: String, issueDate: String,
    nextUpdate: String, crls: [RevocationList], into v: inout Verdict
  ) {
    do {
      let chain = try parseChain(chainPEM, name: "\(name) issuer chain")
      let problems = chainProblems(chain, name: "\(name) issuer chain", root: root, at: time, crls: crls)
      let sigBytes = try hexField(signatureHex, "\(name) signature")
      var ok = false
      if let key = P256.Signing.PublicKey(chain[0].publicKey),
        let sig = try? P256.Signing.ECDSASignature(rawRepresentation: sigBytes)
      {
        ok = key.isValidSignature(sig, for: SHA256.hash(data: Array(text.utf8)))
      }
      var failures = problems
      if !ok { failures.append("the signature over the \(name) JSON does not verify with '\(chain[0].subject)'") }
      v.check(
        "\(name) signature", failures.isEmpty,
        failures.isEmpty
          ? "signed by '\(chain[0].subject)', chain to the pinned root" : failures.joined(separator: "; "))
    } catch {
      v.check("\(name) signature", false, "\(error)")
    }
    if let from = parseInstant(issueDate), let to = parseInstant(nextUpdate) {
      let ok = time >= from && time <= to
      v.check("\(name) validity", ok, "\(issueDate) .. \(nextUpdate)\(ok ? "" : ": does not contain \(iso(time))")")
    } else {
      v.check(
        "\(name) validity", false, "issueDate '\(issueDate)' or nextUpdate '\(nextUpdate)' is not an ISO 8601 instant")
    }
  }

  private func evaluateTCB(
    _ quote: DCAPQuote, isTDX: Bool, leaf: Certificate, collateral: Collateral, crls: [RevocationList],
    into v: inout Verdict
  ) {
    let rootCRLs = crls.filter { $0.issuer == root.subject }
    let tcbInfo: TCBInfo
    let qeIdentity: QEIdentity
    let pck: PCKExtension
    do {
      tcbInfo = try collateral.tcbInfoDocument()
      qeIdentity = try collateral.qeIdentityDocument()
      pck = try PCKExtension(leaf)
    } catch {
      v.check("collateral", false, "\(error)")
      return
    }
    signedDocument(
      name: "TCB info", text: collateral.tcbInfo, signatureHex: collateral.tcbInfoSignature,
      chainPEM: collateral.tcbInfoIssuerChain, issueDate: tcbInfo.issueDate, nextUpdate: tcbInfo.nextUpdate,
      crls: rootCRLs, into: &v)
    signedDocument(
      name: "QE identity", text: collateral.qeIdentity, signatureHex: collateral.qeIdentitySignature,
      chainPEM: collateral.qeIdentityIssuerChain, issueDate: qeIdentity.issueDate,
      nextUpdate: qeIdentity.nextUpdate, crls: rootCRLs, into: &v)

    // The collateral must be for this kind of TEE and this platform.
    let expectedID = isTDX ? "TDX" : "SGX"
    let fmspcOK = [UInt8](hex: tcbInfo.fmspc) == pck.fmspc && [UInt8](hex: tcbInfo.pceId) == pck.pceID
    let idOK = (tcbInfo.id ?? "SGX") == expectedID
    v.check(
      "TCB info matches the platform", fmspcOK && idOK,
      "TCB info id \(tcbInfo.id ?? "SGX") (expected \(expectedID)), FMSPC \(tcbInfo.fmspc) (PCK certificate: \(pck.fmspc.hex)), PCE id \(tcbInfo.pceId) (PCK: \(pck.pceID.hex))"
    )

    // The quoting enclave is Intel's, at a known TCB level.
    let qe = quote.signatureData.qeReport
    var qeFailures: [String] = []
    let expectedQEID = isTDX ? "TD_QE" : "QE"
    if qeIdentity.id != expectedQEID { qeFailures.append("QE identity id \(qeIdentity.id), expected \(expectedQEID)") }
    if [UInt8](hex: qeIdentity.mrsigner) != qe.mrSigner {
      qeFailures.append("QE MRSIGNER \(qe.mrSigner.hex), expected \(qeIdentity.mrsigner.lowercased())")
    }
    if Int(qe.isvProdID) != qeIdentity.isvprodid {
      qeFailures.append("QE ISVPRODID \(qe.isvProdID), expected \(qeIdentity.isvprodid)")
    }
    if let mask = UInt32(qeIdentity.miscselectMask, radix: 16), let want = UInt32(qeIdentity.miscselect, radix: 16) {
      // The JSON writes MISCSELECT big-endian; the report holds it as a little-endian integer.
      if qe.miscSelect & mask != want & mask {
        qeFailures.append(
          String(
            format: "QE MISCSELECT 0x%08x under mask %@ differs from %@", qe.miscSelect, qeIdentity.miscselectMask,
            qeIdentity.miscselect))
      }
    } else {
      qeFailures.append("QE identity miscselect is not hex")
    }
    if let mask = [UInt8](hex: qeIdentity.attributesMask), let want = [UInt8](hex: qeIdentity.attributes),
      mask.count == 16, want.count == 16
    {
      if zip(qe.attributes, mask).map({ $0 & $1 }) != zip(want, mask).map({ $0 & $1 }) {
        qeFailures.append(
          "QE ATTRIBUTES \(qe.attributes.hex) under mask differ from \(qeIdentity.attributes.lowercased())")
      }
    } else {
      qeFailures.append("QE identity attributes are not 16 hex bytes")
    }
    let qeLevel = qeIdentity.tcbLevels.first { $0.tcb.isvsvn <= Int(qe.isvSVN) }
    if qeLevel == nil { qeFailures.append("QE ISVSVN \(qe.isvSVN) is below every level of the QE identity") }
    v.check(
      "QE identity", qeFailures.isEmpty,
      qeFailures.isEmpty
        ? "Intel's \(expectedQEID), ISVSVN \(qe.isvSVN): \(qeLevel?.tcbStatus ?? "?")"
        : qeFailures.joined(separator: "; "))

    // The platform's TCB level: the first level whose every component the platform meets.
    var teeTCBSVN: [UInt8] = []
    var tdBody: TDReportBody?
    if case .tdx(let b) = quote.body {
      teeTCBSVN = b.teeTCBSVN
      tdBody = b
    }
    // TDX modules 1.5 and later put the module's minor version in TEE_TCB_SVN[1]; their SVN is
    // judged by the module identity below, so the level comparison starts at index 2.
    let tdxStart = (teeTCBSVN.count == 16 && teeTCBSVN[1] > 0) ? 2 : 0
    let sgxMatches = tcbInfo.tcbLevels.filter { level in
      level.tcb.sgxtcbcomponents.count == 16 && pck.pceSVN >= level.tcb.pcesvn
        && zip(pck.cpuSVNComponents, level.tcb.sgxtcbcomponents).allSatisfy { $0 >= $1.svn }
    }
    let platform = sgxMatches.first { level in
      guard isTDX else { return true }
      guard let tdx = level.tcb.tdxtcbcomponents, tdx.count == 16 else { return false }
      return (tdxStart..<16).allSatisfy { Int(teeTCBSVN[$0]) >= tdx[$0].svn }
    }
    var status: String
    var advisories: [String]
    if let platform {
      status = platform.tcbStatus
      advisories = platform.advisoryIDs ?? []
      v.check("platform TCB level", true, "\(status) (TCB date \(platform.tcbDate))")
    } else if let lowest = tcbInfo.tcbLevels.last,
      ["OutOfDate", "OutOfDateConfigurationNeeded", "Revoked"].contains(lowest.tcbStatus)
    {
      // Older than every level Intel lists, and the oldest listed is already out of date (or
      // revoked): the platform can be no better. Intel's QVL calls this "TCB not supported";
      // Veil reports the lowest level's status so that policies see an out-of-date platform.
      status = lowest.tcbStatus
      advisories = lowest.advisoryIDs ?? []
      v.check(
        "platform TCB level", true,
        "\(status): CPUSVN components \(pck.cpuSVNComponents), PCESVN \(pck.pceSVN)\(isTDX ? ", TEE_TCB_SVN \(teeTCBSVN.hex)" : "") are below every TCB level; the lowest (TCB date \(lowest.tcbDate)) is \(lowest.tcbStatus)"
      )
    } else {
      v.check(
        "platform TCB level", false,
        "CPUSVN components \(pck.cpuSVNComponents), PCESVN \(pck.pceSVN)\(isTDX ? ", TEE_TCB_SVN \(teeTCBSVN.hex)" : "") are below every TCB level of the collateral (TCB not supported)"
      )
      return
    }

    // TDX module identity (modules 1.5+): its SVN against the module's own levels.
    var moduleStatus: String?
    if let tdBody, tdxStart == 2 {
      let wanted = String(format: "TDX_%02X", teeTCBSVN[1])
      if let identity = tcbInfo.tdxModuleIdentities?.first(where: { $0.id == wanted }) {
        var failures: [String] = []
        if [UInt8](hex: identity.mrsigner) != tdBody.mrSignerSeam {
          failures.append("MRSIGNERSEAM \(tdBody.mrSignerSeam.hex) differs from \(identity.mrsigner.lowercased())")
        }
        if let mask = [UInt8](hex: identity.attributesMask), let want = [UInt8](hex: identity.attributes),
          zip(tdBody.seamAttributes, mask).map({ $0 & $1 }) != zip(want, mask).map({ $0 & $1 })
        {
          failures.append(
            "SEAM attributes \(tdBody.seamAttributes.hex) differ from \(identity.attributes.lowercased())")
        }
        let level = identity.tcbLevels.first { $0.tcb.isvsvn <= Int(teeTCBSVN[0]) }
        if let level {
          moduleStatus = level.tcbStatus
          advisories += level.advisoryIDs ?? []
        } else {
          failures.append("TDX module SVN \(teeTCBSVN[0]) is below every level of \(wanted)")
        }
        v.check(
          "TDX module identity", failures.isEmpty,
          failures.isEmpty ? "\(wanted), SVN \(teeTCBSVN[0]): \(moduleStatus ?? "?")" : failures.joined(separator: "; ")
        )
      } else {
        v.check("TDX module identity", false, "the TCB info has no module identity \(wanted)")
      }
    }

    if let qeStatus = qeLevel?.tcbStatus {
      status = Self.converge(status, with: qeStatus)
      advisories += qeLevel?.advisoryIDs ?? []
    }
    if let moduleStatus { status = Self.converge(status, with: moduleStatus) }
    v.tcbStatus = status
    var seen = Set<String>()
    v.advisoryIDs = advisories.filter { seen.insert($0).inserted }
  }

  /// Combines the platform's status with a component's (QE, TDX module), as Intel's QVL does:
  /// an out-of-date component makes the whole out of date, keeping a configuration need.
  static func converge(_ platform: String, with component: String) -> String {
    switch component {
    case "Revoked": return "Revoked"
    case "OutOfDate":
      switch platform {
      case "UpToDate", "SWHardeningNeeded": return "OutOfDate"
      case "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded": return "OutOfDateConfigurationNeeded"
      default: return platform
      }
    default: return platform
    }
  }
}
