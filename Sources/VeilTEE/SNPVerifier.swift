import Crypto
import Foundation

/// AMD's collateral for SNP reports: the chip's VCEK, the product's ASK and ARK, and the ARK's
/// CRL. It comes from a folder (the layout of AMD's KDS downloads: `vcek.der`, `ask.pem`,
/// `ark.pem`, `crl.pem`) or from the certificate table the enclave sends after its report; a
/// verifier never trusts any of it beyond what the pinned ARK key and the signatures prove.
public struct SNPCollateral: Sendable, Equatable {
  public var vcek: AMDCertificate?
  public var ask: AMDCertificate?
  public var ark: AMDCertificate?
  /// The CRL, DER.
  public var crl: [UInt8]?

  /// The largest CRL read (AMD's are about 1 KiB).
  public static let maxCRLBytes = 256 * 1024

  public init(vcek: AMDCertificate? = nil, ask: AMDCertificate? = nil, ark: AMDCertificate? = nil, crl: [UInt8]? = nil) {
    self.vcek = vcek
    self.ask = ask
    self.ark = ark
    self.crl = crl
  }

  /// Reads a collateral folder. The certificates may be DER or PEM under either extension;
  /// `vcek`, `ask` and `ark` are required, `crl` is optional.
  public init(directory: URL) throws {
    func find(_ stem: String) -> URL? {
      for ext in ["der", "pem", "crt", "cert"] {
        let u = directory.appendingPathComponent("\(stem).\(ext)")
        if FileManager.default.fileExists(atPath: u.path) { return u }
      }
      return nil
    }
    var missing: [String] = []
    func certificate(_ stem: String) throws -> AMDCertificate? {
      guard let url = find(stem) else {
        missing.append("\(stem).der or \(stem).pem")
        return nil
      }
      return try AMDCertificate(bytes: try readBoundedFile(url, limit: AMDCertificate.maxBytes), name: url.path)
    }
    vcek = try certificate("vcek")
    ask = try certificate("ask")
    ark = try certificate("ark")
    guard missing.isEmpty else {
      throw TEEError.io(
        path: directory.path,
        detail:
          "SNP collateral folder lacks \(missing.joined(separator: ", ")) (expected vcek.der, ask.pem, ark.pem and optionally crl.pem, as AMD's KDS serves them)"
      )
    }
    if let url = find("crl") {
      crl = try Self.crlDER(try readBoundedFile(url, limit: Self.maxCRLBytes), name: url.path)
    }
  }

  /// Reads the certificates of a report's certificate table; entries of other kinds are ignored.
  public init(table: [SNPCertificateEntry]) throws {
    for entry in table {
      switch entry.kind {
      case .vcek: vcek = try AMDCertificate(bytes: entry.data, name: "VCEK in the certificate table")
      case .ask: ask = try AMDCertificate(bytes: entry.data, name: "ASK in the certificate table")
      case .ark: ark = try AMDCertificate(bytes: entry.data, name: "ARK in the certificate table")
      case .crl: crl = try Self.crlDER(entry.data, name: "CRL in the certificate table")
      case .vlek, nil: continue
      }
    }
  }

  /// The certificate table that carries this collateral (what an enclave appends to its report).
  public var tableEntries: [SNPCertificateEntry] {
    var out: [SNPCertificateEntry] = []
    if let vcek { out.append(SNPCertificateEntry(.vcek, data: vcek.der)) }
    if let ask { out.append(SNPCertificateEntry(.ask, data: ask.der)) }
    if let ark { out.append(SNPCertificateEntry(.ark, data: ark.der)) }
    if let crl { out.append(SNPCertificateEntry(.crl, data: crl)) }
    return out
  }

  /// This collateral, with what it lacks taken from `other`.
  public func filling(from other: SNPCollateral) -> SNPCollateral {
    SNPCollateral(vcek: vcek ?? other.vcek, ask: ask ?? other.ask, ark: ark ?? other.ark, crl: crl ?? other.crl)
  }

  /// A CRL's DER from DER or PEM (`-----BEGIN X509 CRL-----`) bytes.
  public static func crlDER(_ bytes: [UInt8], name: String) throws -> [UInt8] {
    guard bytes.count <= maxCRLBytes else {
      throw TEEError.oversized(structure: name, size: bytes.count, limit: maxCRLBytes)
    }
    if bytes.first == 0x30 { return bytes }
    let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    guard let begin = text.range(of: "-----BEGIN X509 CRL-----"), let end = text.range(of: "-----END X509 CRL-----"),
      begin.upperBound <= end.lowerBound,
      let der = Data(base64Encoded: text[begin.upperBound..<end.lowerBound].filter { !$0.isWhitespace })
    else {
      throw TEEError.collateral(field: name, detail: "neither DER nor a PEM X509 CRL")
    }
    return Array(der)
  }
}

/// Verifies SEV-SNP reports up to AMD's pinned root keys, at a given time.
///
/// The chain: the ARK's key is one of AMD's (pinned per product) and signs itself; the ARK signs
/// the ASK and the CRL; the CRL is current and does not revoke the ASK; the ASK signs the VCEK;
/// the VCEK is for this chip (hardware ID = CHIP_ID) and this TCB (its SPLs = REPORTED_TCB) and
/// signs the report. Every signature in the chain is RSASSA-PSS SHA-384; the report's is ECDSA
/// P-384 over bytes 0x000–0x29F. Like `DCAPVerifier`, it never throws for bad evidence: every
/// check lands in the verdict.
public struct SNPVerifier: Sendable {
  /// Collateral given by the relying party (a folder). What it lacks is taken from the
  /// evidence's certificate table; what it has wins.
  public var collateral: SNPCollateral?
  public var time: Date
  /// The ARK keys trusted, by product (SHA-256 of the SubjectPublicKeyInfo, hex). AMD's by default.
  public var trustedRoots: [AMDProduct: String]
  /// Refuse when no CRL is at hand (revocation of the ASK then goes unchecked).
  public var requireCRL = true

  public static let amdRoots = Dictionary(uniqueKeysWithValues: AMDProduct.allCases.map { ($0, $0.pinnedARKKeySHA256) })

  public init(collateral: SNPCollateral?, time: Date, trustedRoots: [AMDProduct: String] = SNPVerifier.amdRoots) {
    self.collateral = collateral
    self.time = time
    self.trustedRoots = trustedRoots
  }

  public func verify(_ report: SNPReport, into v: inout Verdict) {
    var carried = SNPCollateral()
    if !report.certificates.isEmpty {
      do {
        carried = try SNPCollateral(table: report.certificates)
      } catch {
        v.check("SNP certificate table", false, "\(error)")
      }
    }
    let c = (collateral ?? SNPCollateral()).filling(from: carried)
    guard let ark = c.ark, let ask = c.ask, let vcek = c.vcek else {
      let missing = [("VCEK", c.vcek == nil), ("ASK", c.ask == nil), ("ARK", c.ark == nil)].filter(\.1).map(\.0)
      v.check(
        "SNP collateral", false,
        "no \(missing.joined(separator: ", ")): pass --collateral DIR with vcek.der, ask.pem, ark.pem and crl.pem (from AMD's KDS), or let the enclave send them after its report"
      )
      return
    }
    func window(_ cert: AMDCertificate) -> String? {
      time < cert.notBefore || time > cert.notAfter
        ? "not valid at \(iso(time)) (valid \(iso(cert.notBefore)) .. \(iso(cert.notAfter)))" : nil
    }

    // 1. The root: one of AMD's keys, for the product it names, self-signed, in its window.
    var product: AMDProduct?
    var problems: [String] = []
    let arkName = ark.commonName
    if arkName.hasPrefix("ARK-"), let p = AMDProduct(rawValue: String(arkName.dropFirst(4))) {
      product = p
      if let pin = trustedRoots[p] {
        if ark.keySHA256 != pin {
          problems.append("its key (SHA-256 \(ark.keySHA256)) is not AMD's \(p.rawValue) root key (\(pin))")
        }
      } else {
        problems.append("no root key is trusted for \(p.rawValue)")
      }
    } else {
      problems.append("'\(arkName)' names no product Veil pins (ARK-Milan, ARK-Genoa, ARK-Turin)")
    }
    if ark.issuer != ark.subject { problems.append("issuer '\(ark.issuer)' is not its subject: not self-signed") }
    if let p = ark.signatureProblem(issuer: ark) { problems.append("self-signature: \(p)") }
    if let w = window(ark) { problems.append(w) }
    v.check(
      "ARK (AMD root key)", problems.isEmpty,
      problems.isEmpty ? "'\(arkName)', the pinned \(product?.rawValue ?? "?") root key, self-signed" : "'\(arkName)': " + problems.joined(separator: "; "))

    // 2. The ASK, signed by the ARK.
    problems = []
    if ask.issuer != ark.subject { problems.append("issued by '\(ask.issuer)', not by '\(arkName)'") }
    if let p = ask.signatureProblem(issuer: ark) { problems.append(p) }
    if let w = window(ask) { problems.append(w) }
    v.check(
      "ASK signed by the ARK", problems.isEmpty,
      problems.isEmpty ? "'\(ask.commonName)' (serial 0x\(serialHex(ask.serial))) signed by '\(arkName)'" : "'\(ask.commonName)': " + problems.joined(separator: "; "))

    // 3. Revocation: the ARK's CRL, current, not listing the ASK.
    if let der = c.crl {
      problems = []
      do {
        let crl = try RevocationList(der: der, field: "SNP CRL")
        if crl.issuer != ark.subject { problems.append("issued by '\(crl.issuer)', not by '\(arkName)'") }
        if let p = crl.amdSignatureProblem(issuer: ark) { problems.append(p) }
        if time < crl.thisUpdate || (crl.nextUpdate.map { time > $0 } ?? false) {
          problems.append(
            "not current at \(iso(time)) (this update \(iso(crl.thisUpdate)), next update \(crl.nextUpdate.map(iso) ?? "none"))")
        }
        if crl.revokedSerials.contains(ask.serial) {
          problems.append("revokes the ASK (serial 0x\(serialHex(ask.serial)))")
        }
        v.check(
          "CRL (ASK not revoked)", problems.isEmpty,
          problems.isEmpty
            ? "signed by '\(arkName)', current, \(crl.revokedSerials.count) revoked serial(s), the ASK not among them"
            : problems.joined(separator: "; "))
      } catch {
        v.check("CRL (ASK not revoked)", false, "\(error)")
      }
    } else {
      v.check(
        "CRL (ASK not revoked)", !requireCRL,
        "no CRL: the ASK's revocation is not checked\(requireCRL ? " (put crl.pem from AMD's KDS in the collateral folder)" : "")")
    }

    // 4. The VCEK, signed by the ASK, for this product.
    problems = []
    let ext = vcek.vcekExtensions
    if vcek.issuer != ask.subject { problems.append("issued by '\(vcek.issuer)', not by '\(ask.commonName)'") }
    if let p = vcek.signatureProblem(issuer: ask) { problems.append(p) }
    if let w = window(vcek) { problems.append(w) }
    problems += ext.problems
    let vcekProduct = ext.productName.flatMap { AMDProduct(productName: $0) }
    if vcekProduct == nil {
      problems.append("productName \(ext.productName.map { "'\($0)'" } ?? "absent") names no known product")
    } else if let product, vcekProduct != product {
      problems.append("is for \(vcekProduct?.rawValue ?? "?"), the chain for \(product.rawValue)")
    }
    if let reportProduct = report.product, let product, reportProduct != product {
      problems.append("the report's CPUID says \(reportProduct.rawValue), the chain is \(product.rawValue)'s")
    }
    v.check(
      "VCEK signed by the ASK", problems.isEmpty,
      problems.isEmpty ? "'\(vcek.commonName)' for \(ext.productName ?? "?") signed by '\(ask.commonName)'" : problems.joined(separator: "; "))

    // 5. The VCEK is this chip's, at this TCB.
    let chip = report.chipID
    if let hw = ext.hardwareID {
      let ok = hw.count == 64 ? hw == chip : (hw.count == 8 && Array(chip.prefix(8)) == hw)
      let masked = report.keyInfo & 2 != 0
      v.check(
        "VCEK is for this chip", ok,
        ok
          ? "hardware ID = CHIP_ID"
          : masked
            ? "the report masks its CHIP_ID (MASK_CHIP_ID set in the guest's launch), so no VCEK can be matched to it"
            : "the VCEK's hardware ID \(hw.hex) is not the report's CHIP_ID \(chip.hex)")
    } else {
      v.check("VCEK is for this chip", false, "the VCEK has no hardware ID extension (1.3.6.1.4.1.3704.1.4)")
    }
    let tcb = SNPTCB(raw: report.reportedTCB, turinLayout: (product ?? report.product) == .turin)
    var mismatches: [String] = []
    for (name, certified, reported) in [
      ("bootloader", ext.bootloader, tcb.bootloader), ("tee", ext.tee, tcb.tee), ("snp", ext.snp, tcb.snp),
      ("microcode", ext.microcode, tcb.microcode),
    ] {
      if certified != reported { mismatches.append("\(name) \(certified.map(String.init) ?? "absent") ≠ \(reported)") }
    }
    if let fmc = tcb.fmc, ext.fmc != fmc { mismatches.append("fmc \(ext.fmc.map(String.init) ?? "absent") ≠ \(fmc)") }
    v.check(
      "VCEK is for the reported TCB", mismatches.isEmpty,
      mismatches.isEmpty
        ? "REPORTED_TCB \(tcb.components)"
        : "the VCEK's SPLs differ from REPORTED_TCB (VCEK ≠ report): " + mismatches.joined(separator: ", "))

    // 6. The report, signed by the VCEK.
    guard report.signingKey == 0 else {
      v.check(
        "report signature", false,
        "the report was signed by \(report.signingKey == 1 ? "a VLEK" : "no key (signing key \(report.signingKey))"); Veil verifies VCEK-signed reports")
      return
    }
    let rBE = Array(report.signatureR.prefix(48).reversed())
    let sBE = Array(report.signatureS.prefix(48).reversed())
    let padded = report.signatureR.dropFirst(48).allSatisfy { $0 == 0 } && report.signatureS.dropFirst(48).allSatisfy { $0 == 0 }
    guard padded else {
      v.check("report signature", false, "r or s has non-zero bytes above its 48 bytes")
      return
    }
    v.checkSignature(
      "report signature", algorithm: "ECDSA P-384", over: "bytes 0x000..0x29F", by: "the VCEK",
      failureHint: " (report altered, or another chip's or TCB's VCEK)"
    ) {
      try P384.Signing.PublicKey(derRepresentation: vcek.subjectPublicKeyInfo).isValidSignature(
        P384.Signing.ECDSASignature(rawRepresentation: rBE + sBE),
        for: SHA384.hash(data: report.bytes[0..<SNPReport.signedLength]))
    }
  }
}

private func serialHex(_ serial: [UInt8]) -> String { serial.isEmpty ? "0" : serial.hex }
