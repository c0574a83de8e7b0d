import Crypto
import Foundation

/// A stand-in for an SGX enclave on machines without a TEE. Its evidence has the SGX quote v3
/// layout so the same parsers and tools handle it, but it proves nothing: the key is generated
/// locally, the DEBUG attribute is set, the QE vendor id is all zero and the user data says
/// "VEIL SIMULATED". Verifiers refuse it unless the policy allows simulation.
public struct SimulatedEnclave: Sendable {
  public let signingKey: P256.Signing.PrivateKey
  /// SHA-256 over a label, the enclave binary's digest and the served head's digest.
  public let mrEnclave: [UInt8]
  /// SHA-256 of the simulation key: it identifies the key, not a vendor.
  public var mrSigner: [UInt8] { Array(SHA256.hash(data: signingKey.publicKey.rawRepresentation)) }

  public init(binaryDigest: [UInt8], headDigest: [UInt8], signingKey: P256.Signing.PrivateKey = .init()) {
    self.signingKey = signingKey
    mrEnclave = Self.measurement(binaryDigest: binaryDigest, headDigest: headDigest)
  }

  /// Measures the enclave binary and head files as a simulated MRENCLAVE.
  public init(binary: URL, head: URL, signingKey: P256.Signing.PrivateKey = .init()) throws {
    self.init(binaryDigest: try fileDigest(binary), headDigest: try fileDigest(head), signingKey: signingKey)
  }

  public static func measurement(binaryDigest: [UInt8], headDigest: [UInt8]) -> [UInt8] {
    Array(SHA256.hash(data: Array("veil simulated MRENCLAVE v1".utf8) + binaryDigest + headDigest))
  }

  static let qeAuthData = Array(SHA256.hash(data: Array("veil simulated QE".utf8)))
  static let certificationData = Array("VEIL SIMULATED EVIDENCE: NOT FROM A TEE, NO PCK CHAIN\n".utf8)

  /// A simulated SGX quote v3 whose REPORTDATA is `reportData` (64 bytes).
  public func quote(reportData: [UInt8]) throws -> [UInt8] {
    guard reportData.count == 64 else {
      throw TEEError.invalidArgument(name: "report data", detail: "expected 64 bytes, found \(reportData.count)")
    }
    var q = le16(3) + le16(2) + [UInt8](repeating: 0, count: 8) + [UInt8](repeating: 0, count: 16)
    q += Evidence.simulationMarker + [UInt8](repeating: 0, count: 20 - Evidence.simulationMarker.count)
    // ATTRIBUTES.FLAGS: INIT | DEBUG | MODE64BIT; XFRM: x87 | SSE.
    let attributes = [UInt8]([0x07, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0])
    q += Self.reportBody(attributes: attributes, mrEnclave: mrEnclave, mrSigner: mrSigner, reportData: reportData)
    let attestationKey = Array(signingKey.publicKey.rawRepresentation)
    let binding = Array(SHA256.hash(data: attestationKey + Self.qeAuthData)) + [UInt8](repeating: 0, count: 32)
    let qeReport = Self.reportBody(
      attributes: [UInt8](repeating: 0, count: 16), mrEnclave: [UInt8](repeating: 0, count: 32),
      mrSigner: [UInt8](repeating: 0, count: 32), reportData: binding)
    let quoteSig = Array(try signingKey.signature(for: SHA256.hash(data: q)).rawRepresentation)
    let qeSig = Array(try signingKey.signature(for: SHA256.hash(data: qeReport)).rawRepresentation)
    var sig = quoteSig + attestationKey + qeReport + qeSig
    sig += le16(UInt16(Self.qeAuthData.count)) + Self.qeAuthData
    sig += le16(5) + le32(UInt32(Self.certificationData.count)) + Self.certificationData
    return q + le32(UInt32(sig.count)) + sig
  }

  static func reportBody(attributes: [UInt8], mrEnclave: [UInt8], mrSigner: [UInt8], reportData: [UInt8]) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: SGXReportBody.size)
    b.replaceSubrange(48..<64, with: attributes)
    b.replaceSubrange(64..<96, with: mrEnclave)
    b.replaceSubrange(128..<160, with: mrSigner)
    b.replaceSubrange(320..<384, with: reportData)
    return b
  }

  /// Checks that simulated evidence is self-consistent (signed by the key it carries). This
  /// shows the bytes were not altered after signing; it does not show that a TEE exists.
  static func verifySignatures(_ quote: DCAPQuote, into v: inout Verdict) {
    let sd = quote.signatureData
    var ok = false
    if let key = try? P256.Signing.PublicKey(rawRepresentation: sd.attestationKey),
      let sig = try? P256.Signing.ECDSASignature(rawRepresentation: sd.signature),
      let qeSig = try? P256.Signing.ECDSASignature(rawRepresentation: sd.qeReportSignature)
    {
      ok =
        key.isValidSignature(sig, for: SHA256.hash(data: quote.bytes[0..<quote.signedLength]))
        && key.isValidSignature(qeSig, for: SHA256.hash(data: sd.qeReportBytes))
        && Array(sd.qeReport.reportData[0..<32]) == Array(SHA256.hash(data: sd.attestationKey + sd.qeAuthData))
    }
    v.check(
      "simulated signature", ok,
      ok
        ? "SIMULATED: signed by the locally generated simulation key it carries (no TEE, no Intel chain)"
        : "the simulation key's signatures do not verify: the evidence was altered")
    v.tcbStatus = "Simulated"
  }
}

/// SHA-256 of a file, read in pieces so a large head does not need to fit in memory twice.
public func fileDigest(_ url: URL) throws -> [UInt8] {
  guard let h = FileHandle(forReadingAtPath: url.path) else {
    throw TEEError.io(path: url.path, detail: "cannot be opened for reading")
  }
  defer { try? h.close() }
  var sha = SHA256()
  while true {
    let chunk = h.readData(ofLength: 1 << 20)
    if chunk.isEmpty { break }
    sha.update(data: chunk)
  }
  return Array(sha.finalize())
}
