import Crypto
import Foundation
import SwiftASN1
import VeilTEE
import X509
import _CryptoExtras

/// A certificate authority of the tests' own, shaped like AMD's SEV-SNP chain: an ARK and an ASK
/// with RSA keys signing with RSASSA-PSS SHA-384 (salt 48), a VCEK with a P-384 key, serial 0 and
/// AMD's extensions, a CRL signed by the ARK, and reports signed by the VCEK. The real vectors
/// cannot cover what AMD never signed (a revoked ASK, a report binding a test's channel key);
/// this can. Verifiers trust it only when a test adds its ARK key to their trusted roots.
public struct SNPTestAuthority: Sendable {
  public let product: AMDProduct
  public let arkKey: _RSA.Signing.PrivateKey
  public let askKey: _RSA.Signing.PrivateKey
  public let vcekKey: P384.Signing.PrivateKey
  public let chipID: [UInt8]
  public let tcb: SNPTCB
  public var askSerial: [UInt8]
  public let ark: AMDCertificate
  public let ask: AMDCertificate
  public let vcek: AMDCertificate
  /// Certificates are valid from `validFrom` for ten years.
  public let validFrom: Date

  /// The root this authority's chain ends in, as a verifier's `trustedRoots`.
  public var trustedRoots: [AMDProduct: String] { [product: ark.keySHA256] }

  public init(
    product: AMDProduct = .milan, askSerial: [UInt8] = [0x01, 0x00, 0x01], reportedTCB: UInt64 = 0x7308_0000_0000_0003,
    validFrom: Date = Date(timeIntervalSince1970: 1_700_000_000)
  ) throws {
    self.product = product
    self.askSerial = askSerial
    self.validFrom = validFrom
    arkKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
    askKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
    vcekKey = P384.Signing.PrivateKey()
    chipID = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
    tcb = SNPTCB(raw: reportedTCB, turinLayout: product == .turin)
    let until = validFrom.addingTimeInterval(10 * 365 * 86_400)
    let arkName = try Self.name("ARK-\(product.rawValue)")
    let askName = try Self.name("SEV-\(product.rawValue)")
    ark = try Self.certificate(
      serial: [0x01, 0x00, 0x00], issuer: arkName, subject: arkName, from: validFrom, until: until,
      spki: Array(arkKey.publicKey.derRepresentation), extensions: [], signer: arkKey)
    ask = try Self.certificate(
      serial: askSerial, issuer: arkName, subject: askName, from: validFrom, until: until,
      spki: Array(askKey.publicKey.derRepresentation), extensions: [], signer: arkKey)
    var ext: [([UInt], [UInt8])] = []
    ext.append(([2], try Self.der { try $0.serialize(ASN1IA5String("\(product.rawValue)-B0")) }))
    let spls: [([UInt], Int)] = [
      ([3, 1], tcb.bootloader), ([3, 2], tcb.tee), ([3, 3], tcb.snp), ([3, 8], tcb.microcode),
    ]
    for (tail, value) in spls { ext.append((tail, try Self.der { try $0.serialize(value) })) }
    if let fmc = tcb.fmc { ext.append(([3, 9], try Self.der { try $0.serialize(fmc) })) }
    ext.append(([4], chipID))
    vcek = try Self.certificate(
      serial: [], issuer: askName, subject: try Self.name("SEV-VCEK"), from: validFrom, until: until,
      spki: Array(vcekKey.publicKey.derRepresentation), extensions: ext, signer: askKey)
  }

  /// A CRL signed by the ARK that revokes `revoked` serials, current from `thisUpdate` for a year.
  public func crl(revoking revoked: [[UInt8]], thisUpdate: Date? = nil) throws -> [UInt8] {
    let from = thisUpdate ?? validFrom
    let alg = try Self.pssAlgorithm()
    let tbs = try Self.der { s in
      try s.appendConstructedNode(identifier: .sequence) { s in
        try s.serialize(1)
        try Self.raw(&s, alg)
        try s.serialize(try Self.name("ARK-\(product.rawValue)"))
        try s.serialize(try Self.time(from))
        try s.serialize(try Self.time(from.addingTimeInterval(365 * 86_400)))
        if !revoked.isEmpty {
          try s.appendConstructedNode(identifier: .sequence) { s in
            for serial in revoked {
              try s.appendConstructedNode(identifier: .sequence) { s in
                Self.integer(&s, serial)
                try s.serialize(try Self.time(from))
              }
            }
          }
        }
      }
    }
    return try Self.signed(tbs: tbs, alg: alg, signer: arkKey)
  }

  /// The collateral of this chain, with a CRL that revokes nothing unless given one.
  public func collateral(crl: [UInt8]? = nil) throws -> SNPCollateral {
    SNPCollateral(vcek: vcek, ask: ask, ark: ark, crl: try crl ?? self.crl(revoking: []))
  }

  /// A version 3 report binding `reportData`, signed by the VCEK, optionally followed by a
  /// certificate table carrying `collateral`.
  public func report(
    reportData: [UInt8], measurement: [UInt8] = [UInt8](repeating: 0x5A, count: 48), vmpl: UInt32 = 0,
    policy: UInt64 = 0x30000, hostData: [UInt8] = [UInt8](repeating: 0, count: 32), carrying collateral: SNPCollateral? = nil
  ) throws -> [UInt8] {
    var r = [UInt8](repeating: 0, count: SNPReport.size)
    func put(_ value: UInt64, at offset: Int, bytes: Int) {
      for i in 0..<bytes { r[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
    put(3, at: 0, bytes: 4)
    put(policy, at: 0x08, bytes: 8)
    put(UInt64(vmpl), at: 0x30, bytes: 4)
    put(1, at: 0x34, bytes: 4)
    put(tcb.raw, at: 0x38, bytes: 8)
    r.replaceSubrange(0x50..<0x90, with: reportData.prefix(64) + [UInt8](repeating: 0, count: max(0, 64 - reportData.count)))
    r.replaceSubrange(0x90..<0xC0, with: measurement.prefix(48))
    r.replaceSubrange(0xC0..<0xE0, with: hostData.prefix(32))
    put(tcb.raw, at: 0x180, bytes: 8)
    let (family, model): (UInt8, UInt8) = product == .milan ? (0x19, 0x01) : product == .genoa ? (0x19, 0x11) : (0x1A, 0x02)
    r[0x188] = family
    r[0x189] = model
    r[0x18A] = 1
    r.replaceSubrange(0x1A0..<0x1E0, with: chipID)
    put(tcb.raw, at: 0x1E0, bytes: 8)
    put(tcb.raw, at: 0x1F0, bytes: 8)
    let sig = try vcekKey.signature(for: SHA384.hash(data: r[0..<SNPReport.signedLength])).rawRepresentation
    let rs = Array(sig)
    r.replaceSubrange(0x2A0..<0x2A0 + 48, with: rs[0..<48].reversed())
    r.replaceSubrange(0x2E8..<0x2E8 + 48, with: rs[48..<96].reversed())
    guard let collateral else { return r }
    return r + SNPCertificateEntry.encodeTable(collateral.tableEntries)
  }

  // MARK: DER writing

  static func der(_ body: (inout DER.Serializer) throws -> Void) throws -> [UInt8] {
    var s = DER.Serializer()
    try body(&s)
    return s.serializedBytes
  }

  static func raw(_ s: inout DER.Serializer, _ bytes: [UInt8]) throws {
    // An already encoded element: parse it back into a node and write it as it is.
    s.serialize(try DER.parse(bytes))
  }

  static func integer(_ s: inout DER.Serializer, _ magnitude: [UInt8]) {
    var content = Array(magnitude.drop { $0 == 0 })
    if content.isEmpty || content[0] & 0x80 != 0 { content.insert(0, at: 0) }
    s.appendPrimitiveNode(identifier: .integer) { $0.append(contentsOf: content) }
  }

  static func name(_ commonName: String) throws -> DistinguishedName {
    try DistinguishedName {
      OrganizationalUnitName("Engineering")
      CountryName("US")
      OrganizationName("Veil test authority (not AMD)")
      CommonName(commonName)
    }
  }

  static func time(_ d: Date) throws -> UTCTime {
    var cal = Calendar(identifier: .gregorian)
    cal.timeZone = TimeZone(secondsFromGMT: 0) ?? cal.timeZone
    let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second], from: d)
    return try UTCTime(
      year: c.year ?? 2000, month: c.month ?? 1, day: c.day ?? 1, hours: c.hour ?? 0, minutes: c.minute ?? 0,
      seconds: c.second ?? 0)
  }

  /// AlgorithmIdentifier for RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48.
  static func pssAlgorithm() throws -> [UInt8] {
    let sha384: ASN1ObjectIdentifier = [2, 16, 840, 1, 101, 3, 4, 2, 2]
    return try der { s in
      try s.appendConstructedNode(identifier: .sequence) { s in
        try s.serialize([1, 2, 840, 113549, 1, 1, 10] as ASN1ObjectIdentifier)
        try s.appendConstructedNode(identifier: .sequence) { s in
          try s.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)) { s in
            try s.appendConstructedNode(identifier: .sequence) { s in try s.serialize(sha384) }
          }
          try s.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 1, tagClass: .contextSpecific)) { s in
            try s.appendConstructedNode(identifier: .sequence) { s in
              try s.serialize([1, 2, 840, 113549, 1, 1, 8] as ASN1ObjectIdentifier)
              try s.appendConstructedNode(identifier: .sequence) { s in try s.serialize(sha384) }
            }
          }
          try s.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 2, tagClass: .contextSpecific)) { s in
            try s.serialize(48)
          }
        }
      }
    }
  }

  static func signed(tbs: [UInt8], alg: [UInt8], signer: _RSA.Signing.PrivateKey) throws -> [UInt8] {
    let sig = try signer.signature(for: SHA384.hash(data: tbs), padding: .PSS).rawRepresentation
    return try der { s in
      try s.appendConstructedNode(identifier: .sequence) { s in
        try raw(&s, tbs)
        try raw(&s, alg)
        try s.serialize(ASN1BitString(bytes: ArraySlice(sig)))
      }
    }
  }

  static func certificate(
    serial: [UInt8], issuer: DistinguishedName, subject: DistinguishedName, from: Date, until: Date, spki: [UInt8],
    extensions: [([UInt], [UInt8])], signer: _RSA.Signing.PrivateKey
  ) throws -> AMDCertificate {
    let alg = try pssAlgorithm()
    let tbs = try der { s in
      try s.appendConstructedNode(identifier: .sequence) { s in
        try s.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)) { s in
          try s.serialize(2)
        }
        integer(&s, serial)
        try raw(&s, alg)
        try s.serialize(issuer)
        try s.appendConstructedNode(identifier: .sequence) { s in
          try s.serialize(try time(from))
          try s.serialize(try time(until))
        }
        try s.serialize(subject)
        try raw(&s, spki)
        if !extensions.isEmpty {
          try s.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 3, tagClass: .contextSpecific)) { s in
            try s.appendConstructedNode(identifier: .sequence) { s in
              for (tail, value) in extensions {
                try s.appendConstructedNode(identifier: .sequence) { s in
                  try s.serialize(try ASN1ObjectIdentifier(elements: VCEKExtensions.arc + tail))
                  try s.serialize(ASN1OctetString(contentBytes: ArraySlice(value)))
                }
              }
            }
          }
        }
      }
    }
    return try AMDCertificate(bytes: try signed(tbs: tbs, alg: alg, signer: signer), name: "test certificate")
  }
}
