import Crypto
import Foundation
import XCTest

import VeilTEE
import VeilTestSupport

final class SealedHeadTests: XCTestCase {
  let head = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }

  func testSealOpenRoundTripAndLayout() throws {
    let key = SealedHead.newKey()
    let sealed = try SealedHead.seal(head, key: key)
    XCTAssertEqual(sealed.count, SealedHead.headerSize + head.count + 16)
    XCTAssertEqual(Array(sealed[0..<8]), Array("VEILSEAL".utf8))
    XCTAssertEqual(Array(sealed[12..<44]), SealedHead.keyID(key))
    XCTAssertEqual(Int(sealed[56]) | Int(sealed[57]) << 8, head.count)
    XCTAssertNotEqual(Array(sealed[64..<64 + 100]), Array(head[0..<100]))
    XCTAssertEqual(try SealedHead.open(sealed, key: key), head)
  }

  func testWrongKeyTamperingAndTruncation() throws {
    let key = SealedHead.newKey()
    let sealed = try SealedHead.seal(head, key: key)
    XCTAssertThrowsError(try SealedHead.open(sealed, key: SealedHead.newKey())) {
      XCTAssertTrue("\($0)".contains("another key"), "\($0)")
    }
    for offset in [0, 9, 11, 50, 60, 64, 5000, sealed.count - 1] {
      var bad = sealed
      bad[offset] ^= 1
      XCTAssertThrowsError(try SealedHead.open(bad, key: key), "byte \(offset)")
    }
    XCTAssertThrowsError(try SealedHead.open(Array(sealed.dropLast()), key: key)) {
      XCTAssertTrue("\($0)".contains("truncated"), "\($0)")
    }
    XCTAssertThrowsError(try SealedHead.open(Array(sealed.prefix(20)), key: key)) {
      XCTAssertTrue("\($0)".contains("truncated"), "\($0)")
    }
  }

  /// Gramine's sealing-key file, laid out as Gramine exposes it, gives a stable head key.
  func testGramineSealingKey() throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("veil-seal-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: root) }
    XCTAssertThrowsError(try SealedHead.gramineSealingKey(.mrEnclave, attestationRoot: root)) {
      XCTAssertTrue("\($0)".contains("no sealing key"), "\($0)")
    }
    try FileManager.default.createDirectory(at: root.appendingPathComponent("keys"), withIntermediateDirectories: true)
    try Data(repeating: 3, count: 16).write(to: root.appendingPathComponent("keys/_sgx_mrenclave"))
    try Data(repeating: 4, count: 15).write(to: root.appendingPathComponent("keys/_sgx_mrsigner"))
    let k1 = try SealedHead.gramineSealingKey(.mrEnclave, attestationRoot: root)
    let sealed = try SealedHead.seal(head, key: k1)
    XCTAssertEqual(
      try SealedHead.open(sealed, key: try SealedHead.gramineSealingKey(.mrEnclave, attestationRoot: root)), head)
    XCTAssertThrowsError(try SealedHead.gramineSealingKey(.mrSigner, attestationRoot: root)) {
      XCTAssertTrue("\($0)".contains("16-byte"), "\($0)")
    }
  }

  /// The owner releases the key only to evidence that passes its policy and binds the
  /// requester's key and the owner's challenge.
  func testKeyReleaseFollowsThePolicy() throws {
    let enclave = SimulatedEnclave(binaryDigest: [1], headDigest: [2])
    let provider = SimulatedProvider(enclave: enclave)
    let key = SealedHead.newKey()
    let sealed = try SealedHead.seal(head, key: key)
    var policy = Policy()
    policy.allowSimulation = true
    policy.allowDebug = true
    policy.mrEnclave = enclave.mrEnclave
    let owner = KeyReleaser(
      verifier: AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Date()), policy: policy))

    let requester = KeyRequester()
    let challenge = KeyReleaser.challenge()
    let request = try KeyRequest(try requester.request(challenge: challenge, provider: provider).bytes)
    let (wrapped, verdict) = try owner.release(headKey: key, to: request, challenge: challenge)
    XCTAssertTrue(verdict.passed)
    let unwrapped = try requester.unwrap(wrapped, for: request)
    XCTAssertEqual(try SealedHead.open(sealed, key: unwrapped), head)
    XCTAssertThrowsError(try KeyRequester().unwrap(wrapped, for: request), "another enclave's key cannot unwrap it")

    // A replayed request (old challenge), a swapped recipient key, another enclave: refused.
    XCTAssertThrowsError(try owner.release(headKey: key, to: request, challenge: KeyReleaser.challenge())) {
      XCTAssertTrue("\($0)".contains("replay"), "\($0)")
    }
    var swapped = request
    swapped.recipientKey = Array(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation)
    XCTAssertThrowsError(try owner.release(headKey: key, to: swapped, challenge: challenge)) {
      XCTAssertTrue("\($0)".contains("report data"), "\($0)")
    }
    let other = SimulatedProvider(enclave: SimulatedEnclave(binaryDigest: [1], headDigest: [3]))
    let c2 = KeyReleaser.challenge()
    XCTAssertThrowsError(
      try owner.release(headKey: key, to: try requester.request(challenge: c2, provider: other), challenge: c2)
    ) {
      XCTAssertTrue("\($0)".contains("MRENCLAVE"), "\($0)")
    }
    var strict = policy
    strict.allowSimulation = false
    let strictOwner = KeyReleaser(verifier: AttestationVerifier(dcap: owner.verifier.dcap, policy: strict))
    XCTAssertThrowsError(try strictOwner.release(headKey: key, to: request, challenge: challenge)) {
      XCTAssertTrue("\($0)".contains("simulation"), "\($0)")
    }
  }

  /// The model owner releases the head key to an SEV-SNP confidential VM whose report (with
  /// its certificates) binds the request, under a policy that pins the SNP measurement.
  func testKeyReleaseToAnSNPGuest() throws {
    struct Provider: EvidenceProvider {
      var ca: SNPTestAuthority
      var measurement: [UInt8]
      var mode: EvidenceMode { .configfsTSM }
      func evidence(reportData: [UInt8]) throws -> [UInt8] {
        try ca.report(reportData: reportData, measurement: measurement, carrying: try ca.collateral())
      }
    }
    let ca = try SNPTestAuthority(product: .milan)
    let now = ca.validFrom.addingTimeInterval(600)
    var policy = Policy()
    policy.snpMeasurement = [UInt8](repeating: 0x42, count: 48)
    let owner = KeyReleaser(
      verifier: AttestationVerifier(
        dcap: try DCAPVerifier(collateral: nil, time: now),
        snp: SNPVerifier(collateral: nil, time: now, trustedRoots: ca.trustedRoots), policy: policy))
    try owner.checkPolicy()
    let key = SealedHead.newKey()
    let requester = KeyRequester()
    let challenge = KeyReleaser.challenge()
    let request = try requester.request(
      challenge: challenge, provider: Provider(ca: ca, measurement: policy.snpMeasurement ?? []))
    let (wrapped, verdict) = try owner.release(headKey: key, to: request, challenge: challenge)
    XCTAssertTrue(verdict.passed, "\(verdict.failures)")
    XCTAssertEqual(try requester.unwrap(wrapped, for: request).withUnsafeBytes { Array($0) }, key.withUnsafeBytes { Array($0) })
    // Another measurement is refused.
    let c2 = KeyReleaser.challenge()
    let other = try requester.request(challenge: c2, provider: Provider(ca: ca, measurement: [UInt8](repeating: 1, count: 48)))
    XCTAssertThrowsError(try owner.release(headKey: key, to: other, challenge: c2)) {
      XCTAssertTrue("\($0)".contains("SNP measurement"), "\($0)")
    }
  }

  /// A policy that pins no measurement releases nothing unless the releaser allows it
  /// explicitly, and then the verdict's first check says so; refusals to the requester are
  /// generic.
  func testKeyReleaseRefusesAnUnpinnedPolicyUnlessAllowed() throws {
    let provider = SimulatedProvider(enclave: SimulatedEnclave(binaryDigest: [1], headDigest: [2]))
    let key = SealedHead.newKey()
    var policy = Policy()
    policy.allowSimulation = true
    policy.allowDebug = true
    XCTAssertEqual(policy.pinnedMeasurements, [])
    let verifier = AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Date()), policy: policy)
    let requester = KeyRequester()
    let challenge = KeyReleaser.challenge()
    let request = try requester.request(challenge: challenge, provider: provider)

    let strict = KeyReleaser(verifier: verifier)
    XCTAssertThrowsError(try strict.checkPolicy()) { XCTAssertTrue("\($0)".contains("pins no measurement"), "\($0)") }
    XCTAssertThrowsError(try strict.release(headKey: key, to: request, challenge: challenge))
    let outcome = strict.answer(request.bytes, headKey: key, challenge: challenge, reference: "R000001")
    XCTAssertEqual(outcome.reply, .refused(KeyReleaser.genericRefusal(reference: "R000001")))
    XCTAssertTrue(outcome.refusal?.contains("pins no measurement") == true, outcome.refusal ?? "")

    let lenient = KeyReleaser(verifier: verifier, allowUnpinnedPolicy: true)
    let (wrapped, verdict) = try lenient.release(headKey: key, to: request, challenge: challenge)
    XCTAssertTrue(verdict.passed)
    XCTAssertEqual(verdict.checks.first?.name, "key release: UNPINNED POLICY")
    XCTAssertEqual(try requester.unwrap(wrapped, for: request).withUnsafeBytes { Array($0) }, key.withUnsafeBytes { Array($0) })

    // A pinned policy carries no such check; a refusal names nothing the requester could use.
    policy.mrEnclave = [UInt8](repeating: 9, count: 32)
    XCTAssertEqual(policy.pinnedMeasurements, ["MRENCLAVE"])
    let pinned = KeyReleaser(verifier: AttestationVerifier(dcap: verifier.dcap, policy: policy))
    let refused = pinned.answer(request.bytes, headKey: key, challenge: challenge, reference: "R000002")
    guard case .refused(let why) = refused.reply else { return XCTFail("released to the wrong MRENCLAVE") }
    XCTAssertFalse(why.contains("0909"), why)
    XCTAssertTrue(refused.refusal?.contains("0909") == true, refused.refusal ?? "")
  }
}
