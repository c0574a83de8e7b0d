import Crypto
import Foundation

/// The attested channel: a transport-independent state machine. The caller moves bytes (over
/// gRPC, a socket, or memory); these types say what to send and check what arrives.
///
///     client                                   enclave
///     ClientHello  = 01 01 ‖ X25519 key (32) ‖ nonce (32)  ─►
///                  ◄─  ServerHello = 01 02 ‖ X25519 key (32) ‖ len (u32 BE) ‖ evidence
///     report data of the evidence = SHA-512(ClientHello ‖ ServerHello[0..<34])
///     traffic secret per direction = HKDF-SHA256(X25519 secret, salt: that hash, info: label)
///     record = 01 ‖ type ‖ seq (u64 BE) ‖ len (u32 BE) ‖ AES-256-GCM(ciphertext ‖ tag)
///
/// Any malformed, replayed, reordered, truncated or forged record closes the session.
public enum ChannelProtocol {
  public static let version: UInt8 = 1
  public static let clientHelloSize = 66
  public static let serverHelloHeaderSize = 38
  public static let recordHeaderSize = 14
  /// The largest plaintext one record carries (a feature map or an input image fits).
  public static let maxRecordPlaintext = 64 << 20
  /// Records under one key before the next epoch's key: below AES-GCM's 2^24.5 advice.
  public static let defaultRekeyInterval: UInt64 = 1 << 24

  static let dataType: UInt8 = 0x17
  static let closeType: UInt8 = 0x15
  static let clientLabel = Array("veil channel v1 client to enclave".utf8)
  static let enclaveLabel = Array("veil channel v1 enclave to client".utf8)
}

/// A decoded ClientHello.
public struct ClientHello: Sendable, Equatable {
  public var publicKey: [UInt8]
  public var nonce: [UInt8]

  public var bytes: [UInt8] { [ChannelProtocol.version, 1] + publicKey + nonce }

  public init(publicKey: [UInt8], nonce: [UInt8]) {
    self.publicKey = publicKey
    self.nonce = nonce
  }

  public init(_ bytes: [UInt8]) throws {
    let r = ByteReader(bytes: bytes, structure: "ClientHello")
    try expectHeader(r, type: 1)
    guard bytes.count == ChannelProtocol.clientHelloSize else {
      throw TEEError.unexpectedValue(
        structure: "ClientHello", field: "length", offset: 0, expected: "\(ChannelProtocol.clientHelloSize) bytes",
        found: "\(bytes.count)")
    }
    publicKey = try r.slice("X25519 key", at: 2, count: 32)
    nonce = try r.slice("nonce", at: 34, count: 32)
  }
}

/// A decoded ServerHello.
public struct ServerHello: Sendable, Equatable {
  public var publicKey: [UInt8]
  public var evidence: [UInt8]

  /// The part of the message the transcript covers (the evidence cannot cover itself).
  public var header: [UInt8] { [ChannelProtocol.version, 2] + publicKey }
  public var bytes: [UInt8] { header + be32(UInt32(evidence.count)) + evidence }

  public init(publicKey: [UInt8], evidence: [UInt8]) {
    self.publicKey = publicKey
    self.evidence = evidence
  }

  public init(_ bytes: [UInt8]) throws {
    let r = ByteReader(bytes: bytes, structure: "ServerHello")
    try expectHeader(r, type: 2)
    publicKey = try r.slice("X25519 key", at: 2, count: 32)
    let len = Int(readBE(try r.slice("evidence length", at: 34, count: 4)[...]))
    guard len <= maxEvidenceBytes else {
      throw TEEError.oversized(structure: "ServerHello evidence", size: len, limit: maxEvidenceBytes)
    }
    evidence = try r.slice("evidence", at: 38, count: len)
    guard bytes.count == 38 + len else {
      throw TEEError.unexpectedValue(
        structure: "ServerHello", field: "length", offset: 34, expected: "\(38 + len) bytes", found: "\(bytes.count)")
    }
  }
}

private func expectHeader(_ r: ByteReader, type: UInt8) throws {
  try r.constant("version", at: 0, ChannelProtocol.version)
  try r.constant("type", at: 1, type)
}

func transcriptHash(_ hello: ClientHello, _ serverHeader: [UInt8]) -> [UInt8] {
  Array(SHA512.hash(data: hello.bytes + serverHeader))
}

private func trafficSecrets(
  _ mine: Curve25519.KeyAgreement.PrivateKey, peer: [UInt8], transcript: [UInt8]
) throws -> (client: SymmetricKey, enclave: SymmetricKey) {
  do {
    let peerKey = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: peer)
    let shared = try mine.sharedSecretFromKeyAgreement(with: peerKey)
    let ikm = shared.withUnsafeBytes { SymmetricKey(data: Array($0)) }
    guard ikm.withUnsafeBytes({ $0.contains { $0 != 0 } }) else {
      throw TEEError.channel(detail: "the peer's X25519 key gives an all-zero secret (a low-order point)")
    }
    func derive(_ label: [UInt8]) -> SymmetricKey {
      HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: transcript, info: label, outputByteCount: 32)
    }
    return (derive(ChannelProtocol.clientLabel), derive(ChannelProtocol.enclaveLabel))
  } catch let e as TEEError {
    throw e
  } catch {
    throw TEEError.channel(detail: "key agreement failed: \(error)")
  }
}

/// The client's side of the handshake: `start`, send its bytes, `finish` with the answer.
public final class ClientHandshake {
  private let key = Curve25519.KeyAgreement.PrivateKey()
  private let verifier: AttestationVerifier
  private let rekeyInterval: UInt64
  private var hello: ClientHello?
  private var finished = false

  public init(verifier: AttestationVerifier, rekeyInterval: UInt64 = ChannelProtocol.defaultRekeyInterval) {
    self.verifier = verifier
    self.rekeyInterval = rekeyInterval
  }

  /// The ClientHello to send: a fresh key and a fresh 32-byte nonce.
  public func start() throws -> [UInt8] {
    guard hello == nil else { throw TEEError.channel(detail: "handshake already started") }
    let nonce = SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
    let h = ClientHello(publicKey: Array(key.publicKey.rawRepresentation), nonce: nonce)
    hello = h
    return h.bytes
  }

  /// Verifies the enclave's evidence and policy over the transcript, then derives the keys.
  /// Throws, and derives nothing, when the evidence or the policy check fails.
  public func finish(serverHello bytes: [UInt8]) throws -> (session: SecureSession, verdict: Verdict) {
    guard let hello, !finished else { throw TEEError.channel(detail: "finish called before start or twice") }
    finished = true
    let server = try ServerHello(bytes)
    let transcript = transcriptHash(hello, server.header)
    // The evidence answers this handshake's fresh nonce, so it was produced just now.
    let verdict = verifier.verify(server.evidence, expectedReportData: transcript, evidenceTime: verifier.dcap.time)
    guard verdict.passed else {
      throw TEEError.channel(
        detail: "the enclave's evidence was refused: "
          + verdict.failures.map { "\($0.name): \($0.detail)" }.joined(separator: "; "))
    }
    let secrets = try trafficSecrets(key, peer: server.publicKey, transcript: transcript)
    let session = SecureSession(send: secrets.client, receive: secrets.enclave, rekeyInterval: rekeyInterval)
    return (session, verdict)
  }
}

/// The enclave's side: answer a ClientHello with evidence over the transcript.
public enum EnclaveHandshake {
  public static func respond(
    to clientHello: [UInt8], provider: any EvidenceProvider,
    rekeyInterval: UInt64 = ChannelProtocol.defaultRekeyInterval
  ) throws -> (serverHello: [UInt8], session: SecureSession) {
    let hello = try ClientHello(clientHello)
    let key = Curve25519.KeyAgreement.PrivateKey()
    let header = [ChannelProtocol.version, 2] + Array(key.publicKey.rawRepresentation)
    let transcript = transcriptHash(hello, header)
    let evidence = try provider.evidence(reportData: transcript)
    let secrets = try trafficSecrets(key, peer: hello.publicKey, transcript: transcript)
    let server = ServerHello(publicKey: Array(key.publicKey.rawRepresentation), evidence: evidence)
    return (server.bytes, SecureSession(send: secrets.enclave, receive: secrets.client, rekeyInterval: rekeyInterval))
  }
}

/// What `SecureSession.open` found in a record.
public enum Inbound: Equatable, Sendable {
  case data([UInt8])
  /// The peer closed the session in an authenticated record.
  case closed
}

/// One side of an established channel: seals outgoing and opens incoming records.
///
/// Each direction has its own secret and sequence number; the key for records
/// `[e * interval, (e + 1) * interval)` is HKDF(secret, "veil record key" ‖ e), so both sides
/// rekey at the same record without a message, long before AES-GCM's limits.
public final class SecureSession {
  private struct Direction {
    var secret: SymmetricKey
    var sequence: UInt64 = 0
    var epoch: UInt64 = 0
    var key: SymmetricKey

    init(secret: SymmetricKey) {
      self.secret = secret
      key = Direction.key(secret, epoch: 0)
    }

    static func key(_ secret: SymmetricKey, epoch: UInt64) -> SymmetricKey {
      HKDF<SHA256>.deriveKey(
        inputKeyMaterial: secret, info: Array("veil record key".utf8) + be64(epoch), outputByteCount: 32)
    }

    mutating func advance(interval: UInt64) {
      let e = sequence / interval
      if e != epoch {
        epoch = e
        key = Direction.key(secret, epoch: e)
      }
    }
  }

  private var send: Direction
  private var receive: Direction
  private let rekeyInterval: UInt64
  public private(set) var closedReason: String?

  init(send: SymmetricKey, receive: SymmetricKey, rekeyInterval: UInt64) {
    self.send = Direction(secret: send)
    self.receive = Direction(secret: receive)
    self.rekeyInterval = max(1, rekeyInterval)
  }

  public var isClosed: Bool { closedReason != nil }
  /// Records sealed and opened so far, and the current key epochs (for tests and metrics).
  public var sentCount: UInt64 { send.sequence }
  public var receivedCount: UInt64 { receive.sequence }
  public var sendEpoch: UInt64 { send.epoch }

  private func fail(_ detail: String) -> TEEError {
    if closedReason == nil { closedReason = detail }
    return TEEError.channel(detail: detail)
  }

  private static func nonce(_ sequence: UInt64) throws -> AES.GCM.Nonce {
    try AES.GCM.Nonce(data: [0, 0, 0, 0] + be64(sequence))
  }

  /// Encrypts `plaintext` as the next record.
  public func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
    try sealRecord(type: ChannelProtocol.dataType, plaintext)
  }

  /// An authenticated close; the session is closed afterwards.
  public func close() throws -> [UInt8] {
    let record = try sealRecord(type: ChannelProtocol.closeType, [])
    closedReason = "closed by this side"
    return record
  }

  private func sealRecord(type: UInt8, _ plaintext: [UInt8]) throws -> [UInt8] {
    if let closedReason { throw TEEError.channel(detail: "session already closed (\(closedReason))") }
    guard plaintext.count <= ChannelProtocol.maxRecordPlaintext else {
      throw TEEError.oversized(
        structure: "record plaintext", size: plaintext.count, limit: ChannelProtocol.maxRecordPlaintext)
    }
    guard send.sequence < UInt64.max else { throw fail("sequence numbers exhausted; start a new session") }
    send.advance(interval: rekeyInterval)
    let header = [ChannelProtocol.version, type] + be64(send.sequence) + be32(UInt32(plaintext.count + 16))
    let box = try AES.GCM.seal(plaintext, using: send.key, nonce: try Self.nonce(send.sequence), authenticating: header)
    send.sequence += 1
    return header + Array(box.ciphertext) + Array(box.tag)
  }

  /// Decrypts the next record. Any fault closes the session and throws.
  public func open(_ record: [UInt8]) throws -> Inbound {
    if let closedReason { throw TEEError.channel(detail: "session already closed (\(closedReason))") }
    guard record.count >= ChannelProtocol.recordHeaderSize else {
      throw fail("record truncated: \(record.count) bytes, the header alone is \(ChannelProtocol.recordHeaderSize)")
    }
    guard record[0] == ChannelProtocol.version else {
      throw fail("record byte 0: version \(record[0]), expected \(ChannelProtocol.version)")
    }
    let type = record[1]
    guard type == ChannelProtocol.dataType || type == ChannelProtocol.closeType else {
      throw fail("record byte 1: unknown type 0x\(String(type, radix: 16))")
    }
    let sequence = readBE(record[2..<10])
    let length = Int(readBE(record[10..<14]))
    guard length >= 16, length <= ChannelProtocol.maxRecordPlaintext + 16 else {
      throw fail("record byte 10: length \(length) outside 16...\(ChannelProtocol.maxRecordPlaintext + 16)")
    }
    guard record.count == ChannelProtocol.recordHeaderSize + length else {
      throw fail(
        "record length \(length) but \(record.count - ChannelProtocol.recordHeaderSize) bytes follow the header (truncated or padded)"
      )
    }
    guard sequence == receive.sequence else {
      let what = sequence < receive.sequence ? "replayed" : "out of order (a record was dropped or reordered)"
      throw fail("record \(sequence) \(what): expected record \(receive.sequence)")
    }
    receive.advance(interval: rekeyInterval)
    let header = Array(record[0..<14])
    let body = record[14...]
    do {
      let box = try AES.GCM.SealedBox(
        nonce: try Self.nonce(sequence), ciphertext: body.dropLast(16), tag: body.suffix(16))
      let plain = try AES.GCM.open(box, using: receive.key, authenticating: header)
      receive.sequence += 1
      if type == ChannelProtocol.closeType {
        closedReason = "closed by the peer"
        return .closed
      }
      return .data(Array(plain))
    } catch {
      throw fail("record \(sequence) failed authentication (forged or corrupted)")
    }
  }
}
