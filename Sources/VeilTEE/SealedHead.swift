import Crypto
import Foundation

/// A model head encrypted for shipping to an enclave (AES-256-GCM).
///
///     offset  size  field
///     0       8     magic "VEILSEAL"
///     8       2     version, little-endian (1)
///     10      2     algorithm (1 = AES-256-GCM)
///     12      32    key id = SHA-256("veil head key id v1" ‖ key)
///     44      12    nonce
///     56      8     plaintext length, little-endian
///     64      n     ciphertext
///     64+n    16    GCM tag; the 64 header bytes are authenticated as associated data
public enum SealedHead {
  public static let magic = Array("VEILSEAL".utf8)
  public static let headerSize = 64
  /// Heads are the first layers of a CNN; 4 GiB bounds a hostile length field.
  public static let maxPlaintext = 4 << 30

  public static func keyID(_ key: SymmetricKey) -> [UInt8] {
    key.withUnsafeBytes { Array(SHA256.hash(data: Array("veil head key id v1".utf8) + Array($0))) }
  }

  /// A fresh 256-bit head key.
  public static func newKey() -> SymmetricKey { SymmetricKey(size: .bits256) }

  /// Gramine's SGX sealing keys: only an enclave with the same MRENCLAVE (or MRSIGNER) on the
  /// same CPU reads the same 16 bytes.
  public enum SealingIdentity: String, Sendable {
    case mrEnclave = "_sgx_mrenclave"
    case mrSigner = "_sgx_mrsigner"
  }

  /// A head key derived from Gramine's sealing key, for heads sealed to the enclave itself
  /// (after the first key release) rather than to the model owner's key.
  public static func gramineSealingKey(
    _ identity: SealingIdentity, attestationRoot: URL = URL(fileURLWithPath: "/dev/attestation")
  ) throws -> SymmetricKey {
    let file = attestationRoot.appendingPathComponent("keys").appendingPathComponent(identity.rawValue)
    guard let raw = FileManager.default.contents(atPath: file.path) else {
      throw TEEError.provider(
        mode: EvidenceMode.gramineSGX.rawValue, path: file.path,
        detail: "no sealing key (not inside a Gramine SGX enclave; gramine-direct has no SGX keys)")
    }
    guard raw.count == 16 else {
      throw TEEError.provider(
        mode: EvidenceMode.gramineSGX.rawValue, path: file.path,
        detail: "expected a 16-byte key, found \(raw.count) bytes")
    }
    return HKDF<SHA256>.deriveKey(
      inputKeyMaterial: SymmetricKey(data: raw), info: Array("veil head sealing v1".utf8), outputByteCount: 32)
  }

  public static func seal(_ plaintext: [UInt8], key: SymmetricKey) throws -> [UInt8] {
    guard key.bitCount == 256 else {
      throw TEEError.invalidArgument(name: "head key", detail: "expected 256 bits, found \(key.bitCount)")
    }
    let nonce = AES.GCM.Nonce()
    let header =
      magic + le16(1) + le16(1) + keyID(key) + Array(nonce) + le32(UInt32(plaintext.count & 0xffff_ffff))
      + le32(UInt32(plaintext.count >> 32))
    let box = try AES.GCM.seal(plaintext, using: key, nonce: nonce, authenticating: header)
    return header + Array(box.ciphertext) + Array(box.tag)
  }

  public static func open(_ sealed: [UInt8], key: SymmetricKey) throws -> [UInt8] {
    let r = ByteReader(bytes: sealed, structure: "sealed head")
    guard try r.slice("magic", at: 0, count: 8) == magic else {
      throw TEEError.sealed(offset: 0, detail: "not a sealed head (magic is not VEILSEAL)")
    }
    let version = try r.u16("version", at: 8)
    guard version == 1 else { throw TEEError.sealed(offset: 8, detail: "version \(version), expected 1") }
    let algorithm = try r.u16("algorithm", at: 10)
    guard algorithm == 1 else {
      throw TEEError.sealed(offset: 10, detail: "algorithm \(algorithm), expected 1 (AES-256-GCM)")
    }
    guard try r.slice("key id", at: 12, count: 32) == keyID(key) else {
      throw TEEError.sealed(offset: 12, detail: "sealed under another key (key id differs)")
    }
    let nonceBytes = try r.slice("nonce", at: 44, count: 12)
    let length = try r.u64("plaintext length", at: 56)
    guard length <= UInt64(maxPlaintext), sealed.count == headerSize + Int(length) + 16 else {
      throw TEEError.sealed(
        offset: 56,
        detail: "plaintext length \(length) does not match the \(sealed.count) bytes of the file (truncated or padded)")
    }
    do {
      let box = try AES.GCM.SealedBox(
        nonce: try AES.GCM.Nonce(data: nonceBytes), ciphertext: sealed[headerSize..<sealed.count - 16],
        tag: sealed[(sealed.count - 16)...])
      return Array(try AES.GCM.open(box, using: key, authenticating: sealed[0..<headerSize]))
    } catch {
      throw TEEError.sealed(offset: headerSize, detail: "authentication failed: the file was altered")
    }
  }
}

/// An enclave's request for a head key: a fresh X25519 key whose hash, with the owner's
/// challenge, is the evidence's report data, so the key can only be wrapped to this enclave.
///
///     request = 01 ‖ recipient X25519 key (32) ‖ challenge (32) ‖ len (u32 BE) ‖ evidence
///     report data = SHA-512("veil key request v1" ‖ recipient key ‖ challenge)
///     wrapped key = ephemeral X25519 key (32) ‖ nonce (12) ‖ AES-256-GCM(head key) (32) ‖ tag (16)
public struct KeyRequest: Sendable, Equatable {
  public var recipientKey: [UInt8]
  public var challenge: [UInt8]
  public var evidence: [UInt8]

  public static func reportData(recipientKey: [UInt8], challenge: [UInt8]) -> [UInt8] {
    Array(SHA512.hash(data: Array("veil key request v1".utf8) + recipientKey + challenge))
  }

  public var bytes: [UInt8] { [1] + recipientKey + challenge + be32(UInt32(evidence.count)) + evidence }

  public init(recipientKey: [UInt8], challenge: [UInt8], evidence: [UInt8]) {
    self.recipientKey = recipientKey
    self.challenge = challenge
    self.evidence = evidence
  }

  public init(_ bytes: [UInt8]) throws {
    let r = ByteReader(bytes: bytes, structure: "key request")
    try r.constant("version", at: 0, UInt8(1))
    recipientKey = try r.slice("recipient key", at: 1, count: 32)
    challenge = try r.slice("challenge", at: 33, count: 32)
    let len = Int(readBE(try r.slice("evidence length", at: 65, count: 4)[...]))
    guard len <= maxEvidenceBytes, bytes.count == 69 + len else {
      throw TEEError.unexpectedValue(
        structure: "key request", field: "evidence length", offset: 65, expected: "\(bytes.count - 69) (the rest)",
        found: "\(len)")
    }
    evidence = try r.slice("evidence", at: 69, count: len)
  }
}

private func wrapKey(_ shared: SharedSecret, salt: [UInt8]) -> SymmetricKey {
  shared.hkdfDerivedSymmetricKey(
    using: SHA256.self, salt: salt, sharedInfo: Array("veil key wrap v1".utf8), outputByteCount: 32)
}

/// The enclave's side of key release.
public struct KeyRequester {
  private let key = Curve25519.KeyAgreement.PrivateKey()

  public init() {}

  /// A request answering the owner's `challenge`, with evidence from `provider`.
  public func request(challenge: [UInt8], provider: any EvidenceProvider) throws -> KeyRequest {
    guard challenge.count == 32 else {
      throw TEEError.invalidArgument(name: "challenge", detail: "expected 32 bytes, found \(challenge.count)")
    }
    let recipient = Array(key.publicKey.rawRepresentation)
    let evidence = try provider.evidence(
      reportData: KeyRequest.reportData(recipientKey: recipient, challenge: challenge))
    return KeyRequest(recipientKey: recipient, challenge: challenge, evidence: evidence)
  }

  /// Opens a wrapped head key released to this requester.
  public func unwrap(_ wrapped: [UInt8], for request: KeyRequest) throws -> SymmetricKey {
    guard wrapped.count == 32 + 12 + 32 + 16 else {
      throw TEEError.sealed(offset: 0, detail: "wrapped key is \(wrapped.count) bytes, expected 92")
    }
    do {
      let peer = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: wrapped[0..<32])
      let kek = wrapKey(try key.sharedSecretFromKeyAgreement(with: peer), salt: request.bytes)
      let box = try AES.GCM.SealedBox(
        nonce: try AES.GCM.Nonce(data: wrapped[32..<44]), ciphertext: wrapped[44..<76], tag: wrapped[76...])
      return SymmetricKey(data: try AES.GCM.open(box, using: kek))
    } catch {
      throw TEEError.sealed(offset: 0, detail: "the wrapped key does not open with this request's key")
    }
  }
}

/// The model owner's side: releases a head key only to evidence that satisfies its policy.
///
/// A policy that pins no measurement (no MRENCLAVE, MRSIGNER, MRTD, RTMR or SNP measurement)
/// would release the key to any enclave with genuine evidence, whatever code it runs; the
/// releaser refuses to serve under such a policy unless `allowUnpinnedPolicy` says so, and then
/// every verdict says it in its first check.
public struct KeyReleaser: Sendable {
  public var verifier: AttestationVerifier
  public var allowUnpinnedPolicy: Bool

  public init(verifier: AttestationVerifier, allowUnpinnedPolicy: Bool = false) {
    self.verifier = verifier
    self.allowUnpinnedPolicy = allowUnpinnedPolicy
  }

  /// Throws when the policy pins no measurement and `allowUnpinnedPolicy` is off: what a key
  /// server checks before it listens.
  public func checkPolicy() throws {
    guard verifier.policy.pinnedMeasurements.isEmpty, !allowUnpinnedPolicy else { return }
    throw TEEError.policy(
      key: "(measurement)",
      detail:
        "the policy pins no measurement, so any enclave with genuine evidence would get the key whatever code it runs; "
        + "pin mrenclave, mrsigner with isvprodid, mrtd, rtmrs or snp_measurement (or allow it explicitly)")
  }

  /// A fresh challenge for the next request.
  public static func challenge() -> [UInt8] { SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) } }

  /// Wraps `headKey` to the request's recipient key when its evidence binds that key and the
  /// owner's `challenge` and passes the owner's policy; otherwise throws with every failed check.
  public func release(headKey: SymmetricKey, to request: KeyRequest, challenge: [UInt8]) throws -> (
    wrapped: [UInt8], verdict: Verdict
  ) {
    try checkPolicy()
    guard request.challenge == challenge else {
      throw TEEError.policy(key: "challenge", detail: "the request answers another challenge (a replay)")
    }
    // The evidence answers the owner's fresh challenge, so it was produced just now.
    var verdict = verifier.verify(
      request.evidence,
      expectedReportData: KeyRequest.reportData(recipientKey: request.recipientKey, challenge: challenge),
      evidenceTime: verifier.dcap.time)
    if verifier.policy.pinnedMeasurements.isEmpty {
      verdict.checks.insert(
        Check(
          "key release: UNPINNED POLICY", true,
          "the owner's policy pins no measurement and release was allowed explicitly: any enclave with genuine evidence gets the key"),
        at: 0)
    }
    guard verdict.passed else {
      throw TEEError.policy(
        key: "(evidence)",
        detail: "key not released: " + verdict.failures.map { "\($0.name): \($0.detail)" }.joined(separator: "; "))
    }
    let ephemeral = Curve25519.KeyAgreement.PrivateKey()
    let peer: Curve25519.KeyAgreement.PublicKey
    do {
      peer = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: request.recipientKey)
    } catch {
      throw TEEError.invalidArgument(name: "recipient key", detail: "not an X25519 key")
    }
    let kek = wrapKey(try ephemeral.sharedSecretFromKeyAgreement(with: peer), salt: request.bytes)
    let box = try headKey.withUnsafeBytes { try AES.GCM.seal(Array($0), using: kek) }
    return (
      Array(ephemeral.publicKey.rawRepresentation) + Array(box.nonce) + Array(box.ciphertext) + Array(box.tag), verdict
    )
  }
}

/// The key-release exchange as bytes, for any transport (`veil keys serve` uses TCP):
///
///     owner → enclave   challenge (32 bytes)
///     enclave → owner   len (u32 BE) ‖ KeyRequest
///     owner → enclave   status (0 released, 1 refused) ‖ len (u32 BE) ‖ wrapped key or reason (UTF-8)
public enum KeyReleaseReply: Sendable, Equatable {
  case released([UInt8])
  case refused(String)

  /// Reasons are short; a wrapped key is 92 bytes.
  public static let maxPayload = 16 * 1024

  public var bytes: [UInt8] {
    switch self {
    case .released(let w): return [0] + be32(UInt32(w.count)) + w
    case .refused(let why):
      let text = Array(why.utf8.prefix(Self.maxPayload))
      return [1] + be32(UInt32(text.count)) + text
    }
  }

  public init(_ bytes: [UInt8]) throws {
    let r = ByteReader(bytes: bytes, structure: "key release reply")
    let status = try r.slice("status", at: 0, count: 1)[0]
    let len = Int(readBE(try r.slice("length", at: 1, count: 4)[...]))
    guard len <= Self.maxPayload, bytes.count == 5 + len else {
      throw TEEError.unexpectedValue(
        structure: "key release reply", field: "length", offset: 1,
        expected: "\(bytes.count - 5) (≤ \(Self.maxPayload))",
        found: "\(len)")
    }
    let payload = try r.slice("payload", at: 5, count: len)
    switch status {
    case 0: self = .released(payload)
    case 1: self = .refused(String(decoding: payload, as: UTF8.self))
    default:
      throw TEEError.unexpectedValue(
        structure: "key release reply", field: "status", offset: 0, expected: "0 or 1", found: "\(status)")
    }
  }
}

/// What the owner did with one key request: the reply to send, and for its own log the verdict
/// (when the evidence could be read) and, for a refusal, every reason.
public struct KeyReleaseOutcome: Sendable {
  public var reply: KeyReleaseReply
  public var verdict: Verdict?
  /// Why the key was not released (nil when it was): for the owner's log, never for the requester.
  public var refusal: String?
}

extension KeyReleaser {
  /// Answers one request. A refusal tells the requester only that it was refused and under which
  /// `reference`; the reasons (which checks failed, which measurement the policy expects) go to
  /// the outcome for the owner's log, since the requester has not been authenticated.
  public func answer(_ requestBytes: [UInt8], headKey: SymmetricKey, challenge: [UInt8], reference: String) -> KeyReleaseOutcome {
    do {
      let request = try KeyRequest(requestBytes)
      let (wrapped, verdict) = try release(headKey: headKey, to: request, challenge: challenge)
      return KeyReleaseOutcome(reply: .released(wrapped), verdict: verdict, refusal: nil)
    } catch {
      return KeyReleaseOutcome(reply: .refused(Self.genericRefusal(reference: reference)), verdict: nil, refusal: "\(error)")
    }
  }

  /// The only refusal text a requester sees.
  public static func genericRefusal(reference: String) -> String {
    "key not released: the request does not satisfy the key owner's policy (reference \(reference); the owner's log says why)"
  }
}
