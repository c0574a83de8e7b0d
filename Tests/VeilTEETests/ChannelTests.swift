import Crypto
import Foundation
import XCTest

import VeilTEE
import VeilTestSupport

/// The attested channel over an in-memory transport: the bytes go from one side to the other
/// through arrays, as a gRPC or socket transport would carry them.
final class ChannelTests: XCTestCase {
  let enclave = SimulatedEnclave(binaryDigest: Array(SHA256.hash(data: [9])), headDigest: Array(SHA256.hash(data: [8])))

  func verifier(allowSimulation: Bool, mrEnclave: [UInt8]? = nil) throws -> AttestationVerifier {
    var p = Policy()
    // Freshness in the channel comes from the nonce: an age limit must not break it.
    p.maxEvidenceAgeSeconds = 60
    p.allowSimulation = allowSimulation
    p.allowDebug = allowSimulation
    p.mrEnclave = mrEnclave
    return AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Date()), policy: p)
  }

  func connect(rekeyInterval: UInt64 = ChannelProtocol.defaultRekeyInterval) throws -> (
    client: SecureSession, enclave: SecureSession
  ) {
    let client = ClientHandshake(
      verifier: try verifier(allowSimulation: true, mrEnclave: enclave.mrEnclave), rekeyInterval: rekeyInterval)
    let hello = try client.start()
    let (answer, enclaveSession) = try EnclaveHandshake.respond(
      to: hello, provider: SimulatedProvider(enclave: enclave), rekeyInterval: rekeyInterval)
    let (clientSession, verdict) = try client.finish(serverHello: answer)
    XCTAssertTrue(verdict.simulated)
    XCTAssertTrue(verdict.checks.contains { $0.name == "report data" && $0.passed })
    return (clientSession, enclaveSession)
  }

  func testHandshakeAndRecordsBothWays() throws {
    let (c, e) = try connect()
    let input = (0..<150_528).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    XCTAssertEqual(try e.open(try c.seal(input)), .data(input))
    XCTAssertEqual(try c.open(try e.seal([1, 2, 3])), .data([1, 2, 3]))
    XCTAssertEqual(try e.open(try c.seal([])), .data([]))
    let secret = [UInt8]("the client's private input".utf8)
    let record = try c.seal(secret)
    XCTAssertNil(record.firstRange(of: secret), "records are encrypted")
    XCTAssertEqual(try e.open(record), .data(secret))
    XCTAssertEqual(try e.open(try c.close()), .closed)
    XCTAssertTrue(e.isClosed && c.isClosed)
    XCTAssertThrowsError(try c.seal([1]))
  }

  func testSimulatedEvidenceIsRefusedUnlessAllowed() throws {
    let client = ClientHandshake(verifier: try verifier(allowSimulation: false))
    let (answer, _) = try EnclaveHandshake.respond(
      to: try client.start(), provider: SimulatedProvider(enclave: enclave))
    XCTAssertThrowsError(try client.finish(serverHello: answer)) { error in
      XCTAssertTrue("\(error)".contains("policy: simulation"), "\(error)")
    }
  }

  func testWrongMeasurementIsRefused() throws {
    let client = ClientHandshake(
      verifier: try verifier(allowSimulation: true, mrEnclave: [UInt8](repeating: 0, count: 32)))
    let (answer, _) = try EnclaveHandshake.respond(
      to: try client.start(), provider: SimulatedProvider(enclave: enclave))
    XCTAssertThrowsError(try client.finish(serverHello: answer)) {
      XCTAssertTrue("\($0)".contains("MRENCLAVE"), "\($0)")
    }
  }

  /// A man in the middle who swaps the enclave's key breaks the transcript the evidence signs.
  func testSwappedKeyOrReplayedEvidenceIsRefused() throws {
    let client = ClientHandshake(verifier: try verifier(allowSimulation: true))
    let hello = try client.start()
    let (answer, _) = try EnclaveHandshake.respond(to: hello, provider: SimulatedProvider(enclave: enclave))
    var swapped = try ServerHello(answer)
    swapped.publicKey = Array(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation)
    XCTAssertThrowsError(try client.finish(serverHello: swapped.bytes)) {
      XCTAssertTrue("\($0)".contains("report data"), "\($0)")
    }

    // Evidence from an earlier handshake (another nonce) does not fit a new one.
    let second = ClientHandshake(verifier: try verifier(allowSimulation: true))
    _ = try second.start()
    XCTAssertThrowsError(try second.finish(serverHello: answer)) {
      XCTAssertTrue("\($0)".contains("report data"), "\($0)")
    }
  }

  func testReplayedRecordClosesTheSession() throws {
    let (c, e) = try connect()
    let r = try c.seal([1])
    _ = try e.open(r)
    XCTAssertThrowsError(try e.open(r)) { XCTAssertTrue("\($0)".contains("replayed"), "\($0)") }
    XCTAssertTrue(e.isClosed)
    XCTAssertThrowsError(try e.open(try c.seal([2]))) { XCTAssertTrue("\($0)".contains("already closed"), "\($0)") }
  }

  func testReorderedRecordClosesTheSession() throws {
    let (c, e) = try connect()
    let first = try c.seal([1])
    let second = try c.seal([2])
    XCTAssertThrowsError(try e.open(second)) { XCTAssertTrue("\($0)".contains("out of order"), "\($0)") }
    XCTAssertThrowsError(try e.open(first))
  }

  func testTruncatedRecordClosesTheSession() throws {
    let (c, e) = try connect()
    let r = try c.seal([1, 2, 3, 4])
    XCTAssertThrowsError(try e.open(Array(r.dropLast()))) { XCTAssertTrue("\($0)".contains("truncated"), "\($0)") }
    XCTAssertTrue(e.isClosed)
    let (c2, e2) = try connect()
    XCTAssertThrowsError(try e2.open(Array(try c2.seal([1]).prefix(10)))) {
      XCTAssertTrue("\($0)".contains("truncated"), "\($0)")
    }
  }

  /// A flipped bit anywhere — header, ciphertext or tag — is caught.
  func testForgedRecordsCloseTheSession() throws {
    let payload = [UInt8](repeating: 0x5a, count: 40)
    let probe = try connect().client.seal(payload)
    for offset in 0..<probe.count {
      let (c, e) = try connect()
      var r = try c.seal(payload)
      r[offset] ^= 0x80
      XCTAssertThrowsError(try e.open(r), "flipping byte \(offset) went unnoticed")
      XCTAssertTrue(e.isClosed)
    }
    // A record from another session (other keys) is a forgery here.
    let (c1, _) = try connect()
    let (_, e2) = try connect()
    XCTAssertThrowsError(try e2.open(try c1.seal([1]))) { XCTAssertTrue("\($0)".contains("authentication"), "\($0)") }
    // A record sent back to its sender: the directions have separate keys.
    let (c3, _) = try connect()
    XCTAssertThrowsError(try c3.open(try c3.seal([1])))
  }

  func testRekeyingAtTheIntervalKeepsBothSidesInStep() throws {
    let (c, e) = try connect(rekeyInterval: 4)
    var ciphertexts = Set<[UInt8]>()
    for i in 0..<13 {
      let r = try c.seal([UInt8(i)])
      ciphertexts.insert(Array(r[14...]))
      XCTAssertEqual(try e.open(r), .data([UInt8(i)]))
    }
    XCTAssertEqual(c.sendEpoch, 3)
    XCTAssertEqual(e.receivedCount, 13)
    XCTAssertEqual(ciphertexts.count, 13)
  }

  func testBadHandshakeMessages() throws {
    XCTAssertThrowsError(try ClientHello([1, 1])) {
      XCTAssertTrue("\($0)".contains("expected 66 bytes, found 2"), "\($0)")
    }
    XCTAssertThrowsError(try ClientHello([2, 1] + [UInt8](repeating: 0, count: 64))) {
      XCTAssertTrue("\($0)".contains("version"), "\($0)")
    }
    XCTAssertThrowsError(try ClientHello([1, 1] + [UInt8](repeating: 0, count: 65))) {
      XCTAssertTrue("\($0)".contains("length"), "\($0)")
    }
    XCTAssertThrowsError(try ServerHello([1, 2] + [UInt8](repeating: 0, count: 32) + [0xff, 0xff, 0xff, 0xff])) {
      XCTAssertTrue("\($0)".contains("more than the limit"), "\($0)")
    }
    // A low-order X25519 key gives no shared secret.
    XCTAssertThrowsError(
      try EnclaveHandshake.respond(
        to: ClientHello(publicKey: [UInt8](repeating: 0, count: 32), nonce: [UInt8](repeating: 1, count: 32)).bytes,
        provider: SimulatedProvider(enclave: enclave)))
  }

  /// Thousands of mutated handshake messages and records: each ends in an error or a valid
  /// message, never a crash, and a mutated record never opens.
  func testFuzzDecoders() throws {
    var rng = SplitMix(seed: 0x5EED)
    let client = ClientHandshake(verifier: try verifier(allowSimulation: true))
    let hello = try client.start()
    let (answer, _) = try EnclaveHandshake.respond(to: hello, provider: SimulatedProvider(enclave: enclave))
    let (c, _) = try connect()
    let record = try c.seal(Array(repeating: 7, count: 100))
    var parsed = 0
    for i in 0..<6000 {
      let base = [hello, answer, record][i % 3]
      let m = mutate(base, &rng)
      switch i % 3 {
      case 0: if (try? ClientHello(m)) != nil { parsed += 1 }
      case 1:
        if let s = try? ServerHello(m) {
          parsed += 1
          _ = try? Evidence(s.evidence)
        }
      default:
        let (_, e) = try connect()
        if m != record { XCTAssertThrowsError(try e.open(m)) }
      }
    }
    XCTAssertGreaterThan(parsed, 0, "some mutations keep a valid message")
  }

  private func mutate(_ b: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
    var m = b
    switch rng.next() % 5 {
    case 0: m = Array(m.prefix(Int(rng.next() % UInt64(m.count + 1))))
    case 1: m += (0..<Int(rng.next() % 9)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    case 2:
      for _ in 0..<1 + Int(rng.next() % 4) where !m.isEmpty {
        m[Int(rng.next() % UInt64(m.count))] = UInt8(truncatingIfNeeded: rng.next())
      }
    case 3:
      if m.count > 6 { m.replaceSubrange(2..<6, with: [0xff, 0xff, 0xff, UInt8(truncatingIfNeeded: rng.next())]) }
    default:
      if !m.isEmpty { m.remove(at: Int(rng.next() % UInt64(m.count))) }
    }
    return m
  }
}

/// A small deterministic generator so failures reproduce.
struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// SEV-SNP evidence over the attested channel: the enclave's report binds the handshake and
/// carries its certificates; the client checks every signature up to the root it trusts.
final class SNPChannelTests: XCTestCase {
  struct Provider: EvidenceProvider {
    var ca: SNPTestAuthority
    var carry: Bool
    var mode: EvidenceMode { .configfsTSM }
    func evidence(reportData: [UInt8]) throws -> [UInt8] {
      let report = try ca.report(reportData: reportData)
      return try ConfigfsTSMProvider.appendingCertificates(
        to: report, auxblob: nil, collateral: carry ? try ca.collateral() : nil)
    }
  }

  func testSNPEvidenceCarriesItsChainAndBindsTheHandshake() throws {
    let ca = try SNPTestAuthority(product: .genoa)
    let now = ca.validFrom.addingTimeInterval(3600)
    var policy = Policy()
    policy.snpMeasurement = [UInt8](repeating: 0x5A, count: 48)
    policy.snpMaxVMPL = 0
    func handshake(roots: [AMDProduct: String], carry: Bool, policy: Policy) throws -> Verdict {
      let verifier = AttestationVerifier(
        dcap: try DCAPVerifier(collateral: nil, time: now),
        snp: SNPVerifier(collateral: nil, time: now, trustedRoots: roots), policy: policy)
      let client = ClientHandshake(verifier: verifier)
      let (answer, enclave) = try EnclaveHandshake.respond(to: try client.start(), provider: Provider(ca: ca, carry: carry))
      let (session, verdict) = try client.finish(serverHello: answer)
      XCTAssertEqual(try enclave.open(try session.seal([1, 2, 3])), .data([1, 2, 3]))
      return verdict
    }
    let verdict = try handshake(roots: ca.trustedRoots, carry: true, policy: policy)
    XCTAssertTrue(verdict.checks.contains { $0.name == "report data" && $0.passed })
    XCTAssertTrue(verdict.checks.contains { $0.name == "report signature" && $0.passed })
    // AMD's roots do not trust the test authority; no certificates means nothing to check with;
    // a policy that does not name SNP refuses it.
    for (roots, carry, p, failing) in [
      (SNPVerifier.amdRoots, true, policy, "ARK (AMD root key)"), (ca.trustedRoots, false, policy, "SNP collateral"),
      (ca.trustedRoots, true, Policy(), "policy: evidence kind"),
    ] {
      XCTAssertThrowsError(try handshake(roots: roots, carry: carry, policy: p)) { error in
        XCTAssertTrue("\(error)".contains(failing), "\(error)")
      }
    }
  }

  /// The provider appends the host's table and fills in from the operator's folder; a TDX
  /// quote passes through unchanged.
  func testTheProviderAppendsTheHostsTableAndTheOperatorsCollateral() throws {
    let ca = try SNPTestAuthority()
    let report = try ca.report(reportData: [])
    let full = try ca.collateral()
    let host = SNPCertificateEntry.encodeTable([SNPCertificateEntry(.vcek, data: full.vcek?.der ?? [])])
    let out = try ConfigfsTSMProvider.appendingCertificates(to: report, auxblob: host, collateral: full)
    guard case .snp(let r) = try Evidence(out) else { return XCTFail("not SNP") }
    XCTAssertEqual(r.certificates.map(\.kind), [.vcek, .ask, .ark, .crl])
    XCTAssertEqual(try ConfigfsTSMProvider.appendingCertificates(to: report, auxblob: nil, collateral: nil), report)
    let tdx = try Vectors.bytes("tdx_quote")
    XCTAssertEqual(try ConfigfsTSMProvider.appendingCertificates(to: tdx, auxblob: host, collateral: full), tdx)
    XCTAssertThrowsError(try ConfigfsTSMProvider.appendingCertificates(to: report, auxblob: [1, 2, 3], collateral: nil))
  }
}
