import Foundation
import X509
import XCTest

import VeilTEE

/// Test vectors: real Intel quotes and collateral from ../shared/testvectors/attestation.
enum Vectors {
  static let dir: URL = {
    var d = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { d = d.deletingLastPathComponent() }
    let inRepo = d.deletingLastPathComponent().appendingPathComponent("shared/testvectors/attestation")
    if FileManager.default.fileExists(atPath: inRepo.path) { return inRepo }
    return URL(fileURLWithPath: "/work/shared/testvectors/attestation")
  }()

  static func bytes(_ name: String) throws -> [UInt8] {
    Array(try Data(contentsOf: dir.appendingPathComponent(name)))
  }

  static func collateral(_ name: String) throws -> Collateral {
    try Collateral(json: try Data(contentsOf: dir.appendingPathComponent(name)))
  }

  /// Instants inside each collateral window (README of the test vectors).
  static let sgxTime = parseInstant("2025-07-01T12:00:00Z")!
  static let outdatedTime = parseInstant("2026-03-01T12:00:00Z")!

  static func verifier(_ collateral: String, at time: Date, policy: Policy = Policy()) throws -> AttestationVerifier {
    AttestationVerifier(dcap: try DCAPVerifier(collateral: try Self.collateral(collateral), time: time), policy: policy)
  }
}

final class DCAPTests: XCTestCase {
  func testPinnedRootIsTheTestVectorRoot() throws {
    XCTAssertEqual(intelSGXRootCADER, try Vectors.bytes("TrustedRootCA.der"))
  }

  func testSGXQuoteParses() throws {
    let e = try Evidence(try Vectors.bytes("sgx_quote"))
    guard case .sgx(let q) = e, case .sgx(let body) = q.body else { return XCTFail("not SGX: \(e.kind)") }
    XCTAssertEqual(q.version, 3)
    XCTAssertEqual(q.qeVendorID, DCAPQuote.intelQEVendorID)
    XCTAssertFalse(e.isSimulated)
    XCTAssertEqual(body.mrEnclave.count, 32)
    XCTAssertEqual(q.signatureData.certificationDataType, 5)
    XCTAssertEqual(q.signatureData.qeAuthData.count, 32)
    // Independent reads at the documented offsets.
    let raw = try Vectors.bytes("sgx_quote")
    XCTAssertEqual(body.mrEnclave, Array(raw[112..<144]))
    XCTAssertEqual(body.mrSigner, Array(raw[176..<208]))
    XCTAssertEqual(body.reportData, Array(raw[368..<432]))
    XCTAssertEqual(body.isvProdID, UInt16(raw[304]) | UInt16(raw[305]) << 8)
    XCTAssertEqual(body.isDebug, raw[96] & 2 != 0)
  }

  func testTDXQuoteParses() throws {
    let raw = try Vectors.bytes("tdx_quote")
    guard case .tdx(let q) = try Evidence(raw), case .tdx(let body) = q.body else { return XCTFail("not TDX") }
    XCTAssertEqual(q.version, 4)
    XCTAssertEqual(q.teeType, 0x81)
    XCTAssertEqual(body.mrTD, Array(raw[184..<232]))
    XCTAssertEqual(body.rtmrs[3], Array(raw[520..<568]))
    XCTAssertEqual(body.reportData, Array(raw[568..<632]))
    XCTAssertEqual(q.signedLength, 632)
    XCTAssertEqual(q.paddingLength, 70, "this quote generator pads with zeros")
  }

  func testTDXQuoteVersion5Parses() throws {
    let raw = try Vectors.bytes("tdx_quote_outdated")
    guard case .tdx(let q) = try Evidence(raw), case .tdx(let body) = q.body else { return XCTFail("not TDX") }
    XCTAssertEqual(q.version, 5)
    XCTAssertEqual(q.signedLength, 54 + 648)
    XCTAssertEqual(body.mrTD, Array(raw[190..<238]))
    XCTAssertEqual(body.reportData, Array(raw[574..<638]))
    XCTAssertEqual(body.mrServiceTD, Array(raw[654..<702]))
  }

  func testSGXQuoteVerifiesWithItsCollateral() throws {
    let v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime).verify(
      try Vectors.bytes("sgx_quote"))
    XCTAssertTrue(v.passed, v.failures.map { "\($0.name): \($0.detail)" }.joined(separator: "\n"))
    XCTAssertEqual(v.tcbStatus, "ConfigurationAndSWHardeningNeeded")
    XCTAssertEqual(Set(v.advisoryIDs), ["INTEL-SA-00289", "INTEL-SA-00615"])
  }

  func testTDXQuoteVerifiesUpToDate() throws {
    let v = try Vectors.verifier("tdx_quote_collateral.json", at: Vectors.sgxTime).verify(
      try Vectors.bytes("tdx_quote"))
    XCTAssertTrue(v.passed, v.failures.map { "\($0.name): \($0.detail)" }.joined(separator: "\n"))
    XCTAssertEqual(v.tcbStatus, "UpToDate")
    XCTAssertEqual(v.advisoryIDs, [])
  }

  func testOutdatedTDXQuoteIsOutOfDateAndRefusedByDefault() throws {
    let v = try Vectors.verifier("tdx_quote_outdated_collateral.json", at: Vectors.outdatedTime)
      .verify(try Vectors.bytes("tdx_quote_outdated"))
    XCTAssertEqual(v.tcbStatus, "OutOfDate")
    XCTAssertEqual(v.failures.map(\.name), ["policy: TCB status"], v.failures.map(\.detail).joined(separator: "\n"))
    var lenient = Policy()
    lenient.acceptedTCBStatuses = ["UpToDate", "OutOfDate"]
    let ok = try Vectors.verifier("tdx_quote_outdated_collateral.json", at: Vectors.outdatedTime, policy: lenient)
      .verify(try Vectors.bytes("tdx_quote_outdated"))
    XCTAssertTrue(ok.passed, ok.failures.map(\.detail).joined(separator: "\n"))
  }

  func testOutsideTheCollateralWindowFails() throws {
    let late = parseInstant("2025-09-01T00:00:00Z")!
    let v = try Vectors.verifier("sgx_quote_collateral.json", at: late).verify(try Vectors.bytes("sgx_quote"))
    XCTAssertFalse(v.passed)
    let names = Set(v.failures.map(\.name))
    XCTAssertTrue(names.contains("TCB info validity") && names.contains("QE identity validity"), "\(names)")
    XCTAssertTrue(names.contains("PCK certificate chain"), "the CRLs expire too: \(names)")
  }

  /// Flipping one byte anywhere in a signed region must fail verification. Samples offsets
  /// spread across the quote header and body, the attestation key, the QE report, the QE auth
  /// data and both signatures.
  func testFlippedBytesInSignedRegionsFail() throws {
    for (file, collateral, time) in [
      ("sgx_quote", "sgx_quote_collateral.json", Vectors.sgxTime),
      ("tdx_quote", "tdx_quote_collateral.json", Vectors.sgxTime),
      ("tdx_quote_outdated", "tdx_quote_outdated_collateral.json", Vectors.outdatedTime),
    ] {
      let raw = try Vectors.bytes(file)
      var accepting = Policy()
      accepting.acceptedTCBStatuses = Policy.tcbStatuses
      let verifier = try Vectors.verifier(collateral, at: time, policy: accepting)
      XCTAssertTrue(verifier.verify(raw).passed, "\(file) must verify before it is tampered with")
      let q = try DCAPQuote(raw)
      let sigStart = q.signedLength + 4
      let qe = q.signatureData.qeReportOffset
      let regions: [(String, Range<Int>)] = [
        ("header and body", 0..<q.signedLength),
        ("quote signature", sigStart..<sigStart + 64),
        ("attestation key", sigStart + 64..<sigStart + 128),
        ("QE report", qe..<qe + 384),
        ("QE report signature", qe + 384..<qe + 448),
        ("QE auth data", qe + 450..<qe + 450 + q.signatureData.qeAuthData.count),
      ]
      for (name, range) in regions {
        let step = max(1, range.count / 23)
        for offset in stride(from: range.lowerBound, to: range.upperBound, by: step) {
          var bad = raw
          bad[offset] ^= 0x01
          let v = verifier.verify(bad)
          XCTAssertFalse(v.passed, "\(file): flipping byte \(offset) (\(name)) still verifies")
        }
      }
    }
  }

  func testTamperedCollateralFails() throws {
    var c = try Vectors.collateral("sgx_quote_collateral.json")
    c.tcbInfo = c.tcbInfo.replacingOccurrences(of: "\"tcbStatus\":\"OutOfDate\"", with: "\"tcbStatus\":\"UpToDate\"")
    let v = AttestationVerifier(dcap: try DCAPVerifier(collateral: c, time: Vectors.sgxTime), policy: Policy())
      .verify(try Vectors.bytes("sgx_quote"))
    XCTAssertEqual(v.failures.map(\.name), ["TCB info signature"])
  }

  func testQuoteWithoutCollateralCannotPass() throws {
    let v = AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Vectors.sgxTime), policy: Policy())
      .verify(try Vectors.bytes("sgx_quote"))
    XCTAssertFalse(v.passed)
    XCTAssertNil(v.tcbStatus)
    XCTAssertTrue(v.checks.contains { $0.name == "quote signature" && $0.passed })
  }
}
