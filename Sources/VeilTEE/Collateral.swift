import Crypto
import Foundation
import SwiftASN1
import X509

/// DCAP verification collateral as a PCCS serves it (the JSON of Intel's `QuoteCollateralV3`).
public struct Collateral: Sendable, Decodable {
  public var pckCRLIssuerChain: String
  /// Root CA CRL, hex of its DER.
  public var rootCACRL: String
  /// PCK (Processor or Platform) CA CRL, hex of its DER.
  public var pckCRL: String
  public var tcbInfoIssuerChain: String
  /// TCB info JSON exactly as signed: the signature covers these bytes.
  public var tcbInfo: String
  public var tcbInfoSignature: String
  public var qeIdentityIssuerChain: String
  public var qeIdentity: String
  public var qeIdentitySignature: String

  enum CodingKeys: String, CodingKey {
    case pckCRLIssuerChain = "pck_crl_issuer_chain"
    case rootCACRL = "root_ca_crl"
    case pckCRL = "pck_crl"
    case tcbInfoIssuerChain = "tcb_info_issuer_chain"
    case tcbInfo = "tcb_info"
    case tcbInfoSignature = "tcb_info_signature"
    case qeIdentityIssuerChain = "qe_identity_issuer_chain"
    case qeIdentity = "qe_identity"
    case qeIdentitySignature = "qe_identity_signature"
  }

  public init(json: Data) throws {
    do {
      self = try JSONDecoder().decode(Collateral.self, from: json)
    } catch let DecodingError.keyNotFound(key, _) {
      throw TEEError.collateral(field: key.stringValue, detail: "missing")
    } catch let DecodingError.typeMismatch(_, ctx) {
      throw TEEError.collateral(
        field: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: "expected a string")
    } catch {
      throw TEEError.collateral(field: "(document)", detail: "not JSON collateral: \(error)")
    }
  }

  func tcbInfoDocument() throws -> TCBInfo {
    try decodeSigned(TCBInfo.self, tcbInfo, field: "tcb_info")
  }

  func qeIdentityDocument() throws -> QEIdentity {
    try decodeSigned(QEIdentity.self, qeIdentity, field: "qe_identity")
  }

  private func decodeSigned<T: Decodable>(_ type: T.Type, _ text: String, field: String) throws -> T {
    do {
      return try JSONDecoder().decode(T.self, from: Data(text.utf8))
    } catch {
      throw TEEError.collateral(field: field, detail: "cannot be read: \(error)")
    }
  }
}

/// Intel TCB info (version 3, for SGX and TDX): which component SVNs give which TCB status.
struct TCBInfo: Decodable {
  struct Component: Decodable { var svn: Int }
  struct Level: Decodable {
    struct TCB: Decodable {
      var sgxtcbcomponents: [Component]
      var pcesvn: Int
      var tdxtcbcomponents: [Component]?
    }
    var tcb: TCB
    var tcbDate: String
    var tcbStatus: String
    var advisoryIDs: [String]?
  }
  struct ModuleIdentity: Decodable {
    var id: String
    var mrsigner: String
    var attributes: String
    var attributesMask: String
    var tcbLevels: [ISVSVNLevel]
  }
  var id: String?
  var version: Int
  var issueDate: String
  var nextUpdate: String
  var fmspc: String
  var pceId: String
  var tcbLevels: [Level]
  var tdxModuleIdentities: [ModuleIdentity]?
}

/// A TCB level keyed by one ISVSVN, as the QE identity and the TDX module identities list them.
struct ISVSVNLevel: Decodable {
  struct TCB: Decodable { var isvsvn: Int }
  var tcb: TCB
  var tcbStatus: String
  var advisoryIDs: [String]?
}

/// Intel QE identity (version 2): what a genuine quoting enclave looks like.
struct QEIdentity: Decodable {
  var id: String
  var version: Int
  var issueDate: String
  var nextUpdate: String
  var miscselect: String
  var miscselectMask: String
  var attributes: String
  var attributesMask: String
  var mrsigner: String
  var isvprodid: Int
  var tcbLevels: [ISVSVNLevel]
}

/// Parses an ISO 8601 instant as Intel's collateral and the CLI write it.
public func parseInstant(_ s: String) -> Date? {
  let f = ISO8601DateFormatter()
  f.formatOptions = [.withInternetDateTime]
  if let d = f.date(from: s) { return d }
  f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
  return f.date(from: s)
}

func utcDate(_ y: Int, _ mo: Int, _ d: Int, _ h: Int, _ mi: Int, _ s: Int) -> Date? {
  var c = DateComponents()
  (c.year, c.month, c.day, c.hour, c.minute, c.second) = (y, mo, d, h, mi, s)
  var cal = Calendar(identifier: .gregorian)
  cal.timeZone = TimeZone(secondsFromGMT: 0) ?? cal.timeZone
  return cal.date(from: c)
}

/// A certificate revocation list, parsed just far enough to check it and look serials up.
struct RevocationList {
  var issuer: DistinguishedName
  var thisUpdate: Date
  var nextUpdate: Date?
  var revokedSerials: Set<[UInt8]>
  var tbsBytes: [UInt8]
  var signatureAlgorithmDER: [UInt8]
  var signature: [UInt8]

  init(der: [UInt8], field: String) throws {
    func fail(_ what: String) -> TEEError { .collateral(field: field, detail: what) }
    do {
      let root = try DER.parse(der)
      guard case .constructed(let top) = root.content else { throw fail("not a DER SEQUENCE") }
      var topIt = top.makeIterator()
      guard let tbs = topIt.next(), let algNode = topIt.next(), let sigNode = topIt.next(),
        case .constructed(let tbsNodes) = tbs.content
      else { throw fail("not a CertificateList") }
      tbsBytes = Array(tbs.encodedBytes)
      signatureAlgorithmDER = Array(algNode.encodedBytes)
      signature = Array(try ASN1BitString(derEncoded: sigNode).bytes)
      var it = tbsNodes.makeIterator()
      var node = it.next()
      if let n = node, n.identifier == .integer { node = it.next() }  // version
      node = it.next()  // signature algorithm (the outer one is what is checked)
      guard let issuerNode = node else { throw fail("no issuer") }
      issuer = try DistinguishedName(derEncoded: issuerNode)
      guard let thisNode = it.next() else { throw fail("no thisUpdate") }
      thisUpdate = try Self.time(thisNode, field: field)
      nextUpdate = nil
      revokedSerials = []
      node = it.next()
      if let n = node, n.identifier == .utcTime || n.identifier == .generalizedTime {
        nextUpdate = try Self.time(n, field: field)
        node = it.next()
      }
      if let n = node, n.identifier == .sequence, case .constructed(let entries) = n.content {
        for entry in entries {
          guard case .constructed(let parts) = entry.content, let serialNode = parts.first(where: { _ in true })
          else { throw fail("malformed revoked entry") }
          let serial = try ArraySlice<UInt8>(derEncoded: serialNode)
          revokedSerials.insert(Self.normalized(serial))
        }
      }
    } catch let e as TEEError {
      throw e
    } catch {
      throw fail("not a DER certificate revocation list: \(error)")
    }
  }

  static func normalized<C: Collection<UInt8>>(_ serial: C) -> [UInt8] {
    Array(serial.drop(while: { $0 == 0 }))
  }

  static func time(_ node: ASN1Node, field: String) throws -> Date {
    let date: Date?
    if node.identifier == .utcTime {
      let t = try UTCTime(derEncoded: node)
      date = utcDate(t.year, t.month, t.day, t.hours, t.minutes, t.seconds)
    } else {
      let t = try GeneralizedTime(derEncoded: node)
      date = utcDate(t.year, t.month, t.day, t.hours, t.minutes, t.seconds)
    }
    guard let date else { throw TEEError.collateral(field: field, detail: "invalid time") }
    return date
  }

  /// Whether `issuer` signed this list (ECDSA P-256 with SHA-256, as Intel signs).
  func isSigned(by issuerCert: Certificate) -> Bool {
    guard let key = P256.Signing.PublicKey(issuerCert.publicKey),
      let sig = try? P256.Signing.ECDSASignature(derRepresentation: signature)
    else { return false }
    return key.isValidSignature(sig, for: SHA256.hash(data: tbsBytes))
  }
}

/// Splits a PEM bundle into certificates, in the order given.
func parseChain(_ pem: String, name: String) throws -> [Certificate] {
  var certs: [Certificate] = []
  let marker = "-----END CERTIFICATE-----"
  for (i, part) in pem.components(separatedBy: marker).enumerated() {
    let trimmed = part.trimmingCharacters(in: .whitespacesAndNewlines.union(.controlCharacters))
    if trimmed.isEmpty { continue }
    do {
      certs.append(try Certificate(pemEncoded: trimmed + "\n" + marker))
    } catch {
      throw TEEError.certificate(chain: name, index: i, detail: "not a PEM certificate: \(error)")
    }
  }
  guard !certs.isEmpty else { throw TEEError.certificate(chain: name, index: 0, detail: "no certificate") }
  return certs
}

/// Checks a leaf-first chain: each certificate signed by the next, the last one the pinned root,
/// every one valid at `time`, CA flags on issuers, and none revoked by a CRL of its issuer.
/// Returns the problems found; an empty list means the chain holds.
func chainProblems(
  _ chain: [Certificate], name: String, root: Certificate, at time: Date, crls: [RevocationList]
) -> [String] {
  var problems: [String] = []
  guard let last = chain.last else { return ["\(name): empty chain"] }
  if last != root {
    problems.append("\(name): ends in '\(last.subject)', not the pinned root '\(root.subject)'")
  }
  for (i, cert) in chain.enumerated() {
    if time < cert.notValidBefore || time > cert.notValidAfter {
      problems.append(
        "\(name), certificate \(i) '\(cert.subject)': not valid at \(iso(time)) (valid \(iso(cert.notValidBefore)) .. \(iso(cert.notValidAfter)))"
      )
    }
    let issuer = i + 1 < chain.count ? chain[i + 1] : cert
    if cert.issuer != issuer.subject || !issuer.publicKey.isValidSignature(cert.signature, for: cert) {
      problems.append(
        "\(name), certificate \(i) '\(cert.subject)': not signed by certificate \(min(i + 1, chain.count - 1)) '\(issuer.subject)' (chain out of order or forged)"
      )
    }
    if i > 0 {
      let isCA: Bool
      if case .isCertificateAuthority = (try? cert.extensions.basicConstraints) ?? .notCertificateAuthority {
        isCA = true
      } else {
        isCA = false
      }
      if !isCA { problems.append("\(name), certificate \(i) '\(cert.subject)': issues certificates but is not a CA") }
    }
    guard i + 1 < chain.count else { continue }
    let crl = crls.first { $0.issuer == cert.issuer }
    guard let crl else {
      problems.append("\(name), certificate \(i): no CRL from its issuer '\(cert.issuer)' in the collateral")
      continue
    }
    if !crl.isSigned(by: issuer) {
      problems.append("\(name): the CRL of '\(cert.issuer)' is not signed by it")
    }
    if time < crl.thisUpdate || (crl.nextUpdate.map { time > $0 } ?? false) {
      problems.append(
        "\(name): the CRL of '\(cert.issuer)' is not current at \(iso(time)) (this update \(iso(crl.thisUpdate)), next \(crl.nextUpdate.map(iso) ?? "none"))"
      )
    }
    if crl.revokedSerials.contains(RevocationList.normalized(cert.serialNumber.bytes)) {
      problems.append("\(name), certificate \(i) '\(cert.subject)': revoked (serial \(cert.serialNumber))")
    }
  }
  return problems
}

func iso(_ d: Date) -> String {
  let f = ISO8601DateFormatter()
  f.formatOptions = [.withInternetDateTime]
  return f.string(from: d)
}

/// The SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1): what the platform runs.
struct PCKExtension {
  static let oid: ASN1ObjectIdentifier = [1, 2, 840, 113741, 1, 13, 1]
  var fmspc: [UInt8]
  var pceID: [UInt8]
  var pceSVN: Int
  var cpuSVNComponents: [Int]

  init(_ cert: Certificate) throws {
    func fail(_ d: String) -> TEEError { .certificate(chain: "PCK", index: 0, detail: d) }
    guard let ext = cert.extensions.first(where: { $0.oid == Self.oid }) else {
      throw fail("no SGX extension (OID 1.2.840.113741.1.13.1)")
    }
    var values: [ASN1ObjectIdentifier: ASN1Node] = [:]
    func collect(_ node: ASN1Node) throws {
      guard case .constructed(let items) = node.content else { return }
      for item in items {
        guard case .constructed(let pair) = item.content else { continue }
        var it = pair.makeIterator()
        guard let oidNode = it.next(), let value = it.next() else { continue }
        let oid = try ASN1ObjectIdentifier(derEncoded: oidNode)
        values[oid] = value
        if value.identifier == .sequence { try collect(value) }
      }
    }
    do {
      try collect(try DER.parse(ext.value))
      func octets(_ last: [UInt]) throws -> [UInt8] {
        guard let n = values[try ASN1ObjectIdentifier(elements: [1, 2, 840, 113741, 1, 13, 1] + last)] else {
          throw fail("SGX extension lacks \(last)")
        }
        return Array(try ASN1OctetString(derEncoded: n).bytes)
      }
      func integer(_ last: [UInt]) throws -> Int {
        guard let n = values[try ASN1ObjectIdentifier(elements: [1, 2, 840, 113741, 1, 13, 1] + last)] else {
          throw fail("SGX extension lacks \(last)")
        }
        return try Int(derEncoded: n)
      }
      fmspc = try octets([4])
      pceID = try octets([3])
      pceSVN = try integer([2, 17])
      cpuSVNComponents = try (1...16).map { try integer([2, UInt($0)]) }
    } catch let e as TEEError {
      throw e
    } catch {
      throw fail("SGX extension is not valid DER: \(error)")
    }
  }
}
