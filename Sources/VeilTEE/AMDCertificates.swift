import Crypto
import Foundation
import SwiftASN1
import X509
import _CryptoExtras

// AMD's SEV-SNP certificates (ARK, ASK, VCEK) and CRLs, read by Veil itself rather than by
// swift-certificates: AMD signs them all with RSASSA-PSS (SHA-384, MGF1-SHA-384, 48-byte salt),
// which swift-certificates refuses to parse, and the VCEK breaks other X.509 habits (serial
// number 0, no basicConstraints, a raw 64-byte hardware ID in an extension). This reader takes
// exactly what the SNP chain needs and checks every signature with swift-crypto.

/// The EPYC product lines whose AMD root keys (ARK) Veil pins.
public enum AMDProduct: String, CaseIterable, Sendable, Codable {
  case milan = "Milan"
  case genoa = "Genoa"
  case turin = "Turin"

  /// SHA-256 of the ARK's SubjectPublicKeyInfo (DER), as AMD's KDS serves it at
  /// https://kdsintf.amd.com/vcek/v1/<product>/cert_chain. Pinned by key, not by certificate, so
  /// that a re-issued ARK with the same key still verifies. The certificates' own SHA-256:
  /// Milan 69d063b4…9a540bcd, Genoa 4c6598d1…d103db2f1, Turin 1f084161…73dd3f6a.
  public var pinnedARKKeySHA256: String {
    switch self {
    case .milan: return "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9"
    case .genoa: return "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831"
    case .turin: return "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08"
    }
  }

  /// The product a VCEK's productName extension names ("Milan-B0", "Genoa", "Turin"), if any.
  public init?(productName: String) {
    let stem = productName.split(separator: "-").first.map(String.init) ?? productName
    guard let p = Self.allCases.first(where: { $0.rawValue.caseInsensitiveCompare(stem) == .orderedSame }) else {
      return nil
    }
    self = p
  }

  /// The product of a CPU by its CPUID family and model (reports of version 3 and later carry them).
  public init?(family: UInt8, model: UInt8) {
    switch (family, model) {
    case (0x19, 0x00...0x0F): self = .milan
    case (0x19, 0x10...0x1F), (0x19, 0xA0...0xAF): self = .genoa  // Genoa, Bergamo, Siena
    case (0x1A, 0x00...0x1F): self = .turin
    default: return nil
    }
  }
}

/// A signature algorithm as an AMD certificate or CRL names it.
public enum AMDSignatureAlgorithm: Equatable, Sendable, CustomStringConvertible {
  /// RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt: the only one AMD's chain uses.
  case rsaPSSSHA384
  /// Anything else, by OID and parameters, refused by the verifier.
  case unsupported(String)

  static let rsaPSS: ASN1ObjectIdentifier = [1, 2, 840, 113549, 1, 1, 10]
  static let mgf1: ASN1ObjectIdentifier = [1, 2, 840, 113549, 1, 1, 8]
  static let sha384: ASN1ObjectIdentifier = [2, 16, 840, 1, 101, 3, 4, 2, 2]

  public var description: String {
    switch self {
    case .rsaPSSSHA384: return "RSASSA-PSS SHA-384 (MGF1-SHA-384, salt 48)"
    case .unsupported(let s): return s
    }
  }

  /// Reads an AlgorithmIdentifier.
  init(_ node: ASN1Node) throws {
    guard node.identifier == .sequence, case .constructed(let parts) = node.content else {
      throw ASN1Error.unexpectedFieldType(node.identifier)
    }
    var it = parts.makeIterator()
    guard let oidNode = it.next() else { throw ASN1Error.invalidASN1Object(reason: "empty AlgorithmIdentifier") }
    let oid = try ASN1ObjectIdentifier(derEncoded: oidNode)
    guard oid == Self.rsaPSS else {
      self = .unsupported("algorithm \(oid)")
      return
    }
    // RSASSA-PSS-params: [0] hash, [1] mask generation, [2] salt length, [3] trailer field;
    // the defaults (SHA-1, MGF1-SHA-1, 20, 1) are not what AMD uses, so each must be present.
    guard let params = it.next(), case .constructed(let fields) = params.content else {
      self = .unsupported("RSASSA-PSS without parameters (SHA-1 defaults)")
      return
    }
    var hash: ASN1ObjectIdentifier?
    var mgfHash: ASN1ObjectIdentifier?
    var mgf: ASN1ObjectIdentifier?
    var salt = 20
    var trailer = 1
    for field in fields {
      guard field.identifier.tagClass == .contextSpecific, case .constructed(let inner) = field.content,
        let value = inner.first(where: { _ in true })
      else { throw ASN1Error.invalidASN1Object(reason: "RSASSA-PSS parameter is not explicitly tagged") }
      switch field.identifier.tagNumber {
      case 0: hash = try Self.algorithmOID(value)
      case 1:
        mgf = try Self.algorithmOID(value)
        guard case .constructed(let mgfParts) = value.content else { break }
        var mgfIt = mgfParts.makeIterator()
        _ = mgfIt.next()
        if let inner = mgfIt.next() { mgfHash = try Self.algorithmOID(inner) }
      case 2: salt = try Int(derEncoded: value)
      case 3: trailer = try Int(derEncoded: value)
      default: throw ASN1Error.invalidASN1Object(reason: "unknown RSASSA-PSS parameter [\(field.identifier.tagNumber)]")
      }
    }
    if hash == Self.sha384, mgf == Self.mgf1, mgfHash == Self.sha384, salt == 48, trailer == 1 {
      self = .rsaPSSSHA384
    } else {
      self = .unsupported(
        "RSASSA-PSS with hash \(hash.map { "\($0)" } ?? "SHA-1"), mask \(mgf.map { "\($0)" } ?? "MGF1")/\(mgfHash.map { "\($0)" } ?? "SHA-1"), salt \(salt), trailer \(trailer)"
      )
    }
  }

  private static func algorithmOID(_ node: ASN1Node) throws -> ASN1ObjectIdentifier {
    guard node.identifier == .sequence, case .constructed(let parts) = node.content,
      let first = parts.first(where: { _ in true })
    else { throw ASN1Error.unexpectedFieldType(node.identifier) }
    return try ASN1ObjectIdentifier(derEncoded: first)
  }
}

/// One certificate of AMD's SNP chain, parsed far enough to verify it.
public struct AMDCertificate: Sendable, Equatable {
  public struct Extension: Sendable, Equatable {
    public var oid: ASN1ObjectIdentifier
    public var critical: Bool
    /// The extension's OCTET STRING contents.
    public var value: [UInt8]
  }

  /// The whole certificate, DER.
  public var der: [UInt8]
  /// The signed part (TBSCertificate), DER.
  public var tbs: [UInt8]
  /// The serial number's big-endian magnitude, without leading zeros (empty for 0).
  public var serial: [UInt8]
  public var issuer: DistinguishedName
  public var subject: DistinguishedName
  public var notBefore: Date
  public var notAfter: Date
  /// SubjectPublicKeyInfo, DER.
  public var subjectPublicKeyInfo: [UInt8]
  public var signatureAlgorithm: AMDSignatureAlgorithm
  public var signature: [UInt8]
  public var extensions: [Extension]

  /// Certificates larger than this are refused before parsing (AMD's are under 2 KiB).
  public static let maxBytes = 16 * 1024

  /// Reads a certificate from DER or PEM bytes; `name` says which one in errors.
  public init(bytes: [UInt8], name: String) throws {
    guard bytes.count <= Self.maxBytes else {
      throw TEEError.oversized(structure: name, size: bytes.count, limit: Self.maxBytes)
    }
    var der = bytes
    if bytes.first != 0x30 {
      let text = String(decoding: bytes, as: UTF8.self)
      do {
        der = try PEMDocument(pemString: text.trimmingCharacters(in: .whitespacesAndNewlines)).derBytes
      } catch {
        throw TEEError.certificate(chain: name, index: 0, detail: "neither DER nor a PEM certificate: \(error)")
      }
    }
    try self.init(der: der, name: name)
  }

  init(der: [UInt8], name: String) throws {
    func fail(_ d: String) -> TEEError { .certificate(chain: name, index: 0, detail: d) }
    do {
      let root = try DER.parse(der)
      guard root.identifier == .sequence, case .constructed(let top) = root.content else {
        throw fail("not a DER SEQUENCE")
      }
      var topIt = top.makeIterator()
      guard let tbsNode = topIt.next(), let algNode = topIt.next(), let sigNode = topIt.next(), topIt.next() == nil,
        tbsNode.identifier == .sequence, case .constructed(let tbsParts) = tbsNode.content
      else { throw fail("not a Certificate (tbsCertificate, signatureAlgorithm, signature)") }
      self.der = der
      tbs = Array(tbsNode.encodedBytes)
      signatureAlgorithm = try AMDSignatureAlgorithm(algNode)
      let bits = try ASN1BitString(derEncoded: sigNode)
      guard bits.paddingBits == 0 else { throw fail("signature BIT STRING has padding bits") }
      signature = Array(bits.bytes)

      var it = tbsParts.makeIterator()
      var node = it.next()
      if let n = node, n.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) {
        node = it.next()  // version
      }
      guard let serialNode = node else { throw fail("no serial number") }
      serial = RevocationList.normalized(try ArraySlice<UInt8>(derEncoded: serialNode))
      guard let innerAlg = it.next() else { throw fail("no signature algorithm in tbsCertificate") }
      guard Array(innerAlg.encodedBytes) == Array(algNode.encodedBytes) else {
        throw fail("the signature algorithm inside tbsCertificate differs from the outer one")
      }
      guard let issuerNode = it.next() else { throw fail("no issuer") }
      issuer = try DistinguishedName(derEncoded: issuerNode)
      guard let validity = it.next(), case .constructed(let times) = validity.content else { throw fail("no validity") }
      var timeIt = times.makeIterator()
      guard let nb = timeIt.next(), let na = timeIt.next() else { throw fail("validity lacks a time") }
      notBefore = try RevocationList.time(nb, field: name)
      notAfter = try RevocationList.time(na, field: name)
      guard let subjectNode = it.next() else { throw fail("no subject") }
      subject = try DistinguishedName(derEncoded: subjectNode)
      guard let spki = it.next(), spki.identifier == .sequence else { throw fail("no subjectPublicKeyInfo") }
      subjectPublicKeyInfo = Array(spki.encodedBytes)
      extensions = []
      while let n = it.next() {
        guard n.identifier == ASN1Identifier(tagWithNumber: 3, tagClass: .contextSpecific) else { continue }
        guard case .constructed(let wrapper) = n.content, let list = wrapper.first(where: { _ in true }),
          case .constructed(let items) = list.content
        else { throw fail("extensions are not a SEQUENCE") }
        for item in items {
          guard case .constructed(let parts) = item.content else { throw fail("an extension is not a SEQUENCE") }
          var partIt = parts.makeIterator()
          guard let oidNode = partIt.next(), var valueNode = partIt.next() else { throw fail("short extension") }
          var critical = false
          if valueNode.identifier == .boolean {
            critical = try Bool(derEncoded: valueNode)
            guard let v = partIt.next() else { throw fail("extension without a value") }
            valueNode = v
          }
          extensions.append(
            Extension(
              oid: try ASN1ObjectIdentifier(derEncoded: oidNode), critical: critical,
              value: Array(try ASN1OctetString(derEncoded: valueNode).bytes)))
        }
      }
    } catch let e as TEEError {
      throw e
    } catch {
      throw fail("not a valid DER certificate: \(error)")
    }
  }

  /// SHA-256 of the SubjectPublicKeyInfo, hex: what an ARK pin compares.
  public var keySHA256: String { Array(SHA256.hash(data: subjectPublicKeyInfo)).hex }

  /// The subject's common name (for messages and the ARK's product).
  public var commonName: String {
    for rdn in subject {
      for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
        return attribute.value.description
      }
    }
    return subject.description
  }

  /// Whether `tbs` carries `signature` by `issuer`'s RSA key under RSASSA-PSS SHA-384.
  /// Returns a reason when it does not.
  func signatureProblem(issuer: AMDCertificate) -> String? {
    verifyPSS(signed: tbs, signature: signature, algorithm: signatureAlgorithm, key: issuer)
  }

  /// The AMD extensions of a VCEK (OID arc 1.3.6.1.4.1.3704.1).
  public var vcekExtensions: VCEKExtensions { VCEKExtensions(self) }
}

/// Checks an RSASSA-PSS SHA-384 signature over `signed` with `key`'s RSA public key.
func verifyPSS(signed: [UInt8], signature: [UInt8], algorithm: AMDSignatureAlgorithm, key: AMDCertificate) -> String? {
  guard algorithm == .rsaPSSSHA384 else { return "signature algorithm \(algorithm) is not AMD's RSASSA-PSS SHA-384" }
  let rsa: _RSA.Signing.PublicKey
  do {
    rsa = try _RSA.Signing.PublicKey(derRepresentation: key.subjectPublicKeyInfo)
  } catch {
    return "'\(key.commonName)' has no RSA key of 2048 bits or more"
  }
  let ok = rsa.isValidSignature(
    _RSA.Signing.RSASignature(rawRepresentation: signature), for: SHA384.hash(data: signed), padding: .PSS)
  return ok ? nil : "the RSASSA-PSS signature does not verify with the key of '\(key.commonName)'"
}

/// The fields AMD's KDS writes into a VCEK: the product, the TCB it was derived for, the chip.
public struct VCEKExtensions: Sendable, Equatable {
  public static let arc: [UInt] = [1, 3, 6, 1, 4, 1, 3704, 1]
  public var productName: String?
  public var bootloader: Int?
  public var tee: Int?
  public var snp: Int?
  public var microcode: Int?
  /// Turin and later: the firmware (FMC) security patch level.
  public var fmc: Int?
  /// The chip ID: 64 raw bytes (Milan, Genoa) or 8 (Turin), not wrapped in an OCTET STRING.
  public var hardwareID: [UInt8]?
  /// Extensions that should be AMD's but could not be read, with why.
  public var problems: [String] = []

  init(_ cert: AMDCertificate) {
    func find(_ tail: [UInt]) -> [UInt8]? {
      guard let oid = try? ASN1ObjectIdentifier(elements: Self.arc + tail) else { return nil }
      return cert.extensions.first { $0.oid == oid }?.value
    }
    if let raw = find([2]) {
      do {
        productName = String(try ASN1IA5String(derEncoded: try DER.parse(raw)))
      } catch {
        problems.append("productName (1.3.6.1.4.1.3704.1.2) is not an IA5String")
      }
    }
    func spl(_ tail: [UInt], _ name: String) -> Int? {
      guard let raw = find(tail) else { return nil }
      guard let n = try? Int(derEncoded: try DER.parse(raw)), (0...255).contains(n) else {
        problems.append("\(name) (1.3.6.1.4.1.3704.1.\(tail.map(String.init).joined(separator: "."))) is not an INTEGER 0...255")
        return nil
      }
      return n
    }
    bootloader = spl([3, 1], "blSPL")
    tee = spl([3, 2], "teeSPL")
    snp = spl([3, 3], "snpSPL")
    microcode = spl([3, 8], "ucodeSPL")
    fmc = spl([3, 9], "fmcSPL")
    hardwareID = find([4])
  }
}

extension RevocationList {
  /// Whether an AMD ARK signed this list (RSASSA-PSS SHA-384); a reason when it did not.
  func amdSignatureProblem(issuer: AMDCertificate) -> String? {
    let algorithm: AMDSignatureAlgorithm
    do {
      algorithm = try AMDSignatureAlgorithm(try DER.parse(signatureAlgorithmDER))
    } catch {
      return "the CRL's signature algorithm cannot be read: \(error)"
    }
    return verifyPSS(signed: tbsBytes, signature: signature, algorithm: algorithm, key: issuer)
  }
}
