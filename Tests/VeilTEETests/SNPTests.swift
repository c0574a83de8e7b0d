import Crypto
import Foundation
import XCTest

import VeilTEE
import VeilTestSupport

/// Real SEV-SNP reports and AMD's certificates, from ../shared/testvectors/attestation/snp (its
/// README lists the sources, the expected fields and what must be rejected).
enum SNPVectors {
  static let dir = Vectors.dir.appendingPathComponent("snp")
  static let time = parseInstant("2025-09-01T00:00:00Z")!

  struct Set {
    var name: String
    var report: String
    var vcek: String
    /// The folder with the product's ask.pem, ark.pem and crl.pem.
    var chain: String
  }

  static let milan = Set(name: "Milan v2", report: "snp_report.bin", vcek: "vcek.der", chain: "")
  static let milanV3 = Set(name: "Milan v3", report: "milan_v3/snp_report.bin", vcek: "milan_v3/vcek.der", chain: "")
  static let genoa = Set(name: "Genoa v5", report: "genoa/snp_report.bin", vcek: "genoa/vcek.der", chain: "genoa")
  static let genoa2024 = Set(
    name: "Genoa TCB 2024", report: "genoa/tcb_2024/snp_report.bin", vcek: "genoa/tcb_2024/vcek.der", chain: "genoa")
  static let all = [milan, milanV3, genoa, genoa2024]

  static func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: dir.appendingPathComponent(path))) }

  static func cert(_ path: String) throws -> AMDCertificate { try AMDCertificate(bytes: try bytes(path), name: path) }

  static func chainPath(_ chain: String, _ file: String) -> String { chain.isEmpty ? file : "\(chain)/\(file)" }

  static func collateral(vcek: String, chain: String, crlChain: String? = nil, arkChain: String? = nil) throws -> SNPCollateral {
    SNPCollateral(
      vcek: try cert(vcek), ask: try cert(chainPath(chain, "ask.pem")), ark: try cert(chainPath(arkChain ?? chain, "ark.pem")),
      crl: try SNPCollateral.crlDER(try bytes(chainPath(crlChain ?? chain, "crl.pem")), name: "crl.pem"))
  }

  static func verdict(_ report: [UInt8], _ collateral: SNPCollateral, at t: Date = time) throws -> Verdict {
    var v = Verdict(evidenceKind: "SEV-SNP", simulated: false)
    SNPVerifier(collateral: collateral, time: t).verify(try SNPReport(report), into: &v)
    return v
  }
}

final class SNPTests: XCTestCase {
  func failed(_ v: Verdict) -> Set<String> { Set(v.failures.map(\.name)) }

  func testPinnedRootsAreTheVectorsARKs() throws {
    XCTAssertEqual(try SNPVectors.cert("ark.pem").keySHA256, AMDProduct.milan.pinnedARKKeySHA256)
    XCTAssertEqual(try SNPVectors.cert("genoa/ark.pem").keySHA256, AMDProduct.genoa.pinnedARKKeySHA256)
  }

  /// The certificates' quirks: serial 0, PSS, the VCEK's extensions with multi-byte integers.
  func testVCEKExtensionsAreRead() throws {
    let vcek = try SNPVectors.cert("milan_v3/vcek.der")
    XCTAssertEqual(vcek.serial, [])
    XCTAssertEqual(vcek.signatureAlgorithm, .rsaPSSSHA384)
    let ext = vcek.vcekExtensions
    XCTAssertEqual(ext.productName, "Milan-B0")
    XCTAssertEqual([ext.bootloader, ext.tee, ext.snp, ext.microcode], [4, 0, 24, 219])
    XCTAssertEqual(ext.hardwareID?.count, 64)
    XCTAssertEqual(ext.problems, [])
    XCTAssertEqual(try SNPVectors.cert("ask.pem").serial, [0x01, 0x00, 0x01])
  }

  func testAllFourReportsVerifyWithTheirFields() throws {
    struct Expect {
      var set: SNPVectors.Set
      var version: UInt32
      var measurement: String
      var reportDataPrefix: String
      var tcb: [Int]
      var firmware: String
      var chipPrefix: String
    }
    let expected = [
      Expect(
        set: SNPVectors.milan, version: 2,
        measurement: "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        reportDataPrefix: "d447b55d197491bf", tcb: [3, 0, 8, 115], firmware: "1.52 build 4", chipPrefix: "d49554ec717f4e5b"),
      Expect(
        set: SNPVectors.milanV3, version: 3,
        measurement: "195b01b74976a1faba13bd85eaf787958f0a46e6dddd45c5bdbf8673522777842b8057ae5d866b75416efb62012deaa3",
        reportDataPrefix: "a7ca989b0359ea4e", tcb: [4, 0, 24, 219], firmware: "1.55 build 29", chipPrefix: "a3fdc2c64dc299ab"),
      Expect(
        set: SNPVectors.genoa, version: 5,
        measurement: "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc",
        reportDataPrefix: "8100555af0ad8e75", tcb: [10, 0, 25, 84], firmware: "1.55 build 43", chipPrefix: "d2421d976f95ce0b"),
      Expect(
        set: SNPVectors.genoa2024, version: 2,
        measurement: "de654ed1eb03b69567338d357f86735c64fc771676bcd5d05ca6afe86f3eb9f7549222afae6139a8d282a34d09d59f95",
        reportDataPrefix: "e8c6c542bb712e5d", tcb: [7, 0, 15, 62], firmware: "1.55 build 24", chipPrefix: "d2421d976f95ce0b"),
    ]
    for e in expected {
      let raw = try SNPVectors.bytes(e.set.report)
      let r = try SNPReport(raw)
      XCTAssertEqual(r.version, e.version, e.set.name)
      XCTAssertEqual(r.measurement.hex, e.measurement, e.set.name)
      XCTAssertTrue(r.reportData.hex.hasPrefix(e.reportDataPrefix), e.set.name)
      let t = r.reportedTCBComponents
      XCTAssertEqual([t.bootloader, t.tee, t.snp, t.microcode], e.tcb, e.set.name)
      XCTAssertEqual("\(r.currentFirmware.major).\(r.currentFirmware.minor) build \(r.currentFirmware.build)", e.firmware)
      XCTAssertTrue(r.chipID.hex.hasPrefix(e.chipPrefix), e.set.name)
      XCTAssertEqual(r.vmpl, 0)
      XCTAssertEqual(r.policy, 0x30000)
      XCTAssertEqual(r.signingKey, 0)
      XCTAssertTrue(r.reportIDMA.allSatisfy { $0 == 0xFF })
      XCTAssertEqual(r.currentTCB, r.reportedTCB)
      XCTAssertEqual(r.committedTCB, r.reportedTCB)
      XCTAssertEqual(r.launchTCB, r.reportedTCB)

      let v = try SNPVectors.verdict(raw, try SNPVectors.collateral(vcek: e.set.vcek, chain: e.set.chain))
      XCTAssertTrue(v.passed, "\(e.set.name): \(v.failures)")
      XCTAssertEqual(v.checks.count, 7, "\(e.set.name): \(v.checks.map(\.name))")

      // Through the one entry point, with a policy that pins this measurement and minimum TCB.
      var policy = Policy()
      policy.snpMeasurement = r.measurement
      policy.snpMinTCB = .init(bootloader: e.tcb[0], tee: e.tcb[1], snp: e.tcb[2], microcode: e.tcb[3])
      policy.snpMaxVMPL = 0
      let verifier = AttestationVerifier(
        dcap: try DCAPVerifier(collateral: nil, time: SNPVectors.time),
        snp: SNPVerifier(collateral: try SNPVectors.collateral(vcek: e.set.vcek, chain: e.set.chain), time: SNPVectors.time),
        policy: policy)
      let full = verifier.verify(raw, expectedReportData: r.reportData)
      XCTAssertTrue(full.passed, "\(e.set.name): \(full.failures)")
      policy.snpMinTCB?.snp = e.tcb[2] + 1
      let tooOld = AttestationVerifier(dcap: verifier.dcap, snp: verifier.snp, policy: policy).verify(raw)
      XCTAssertEqual(failed(tooOld), ["policy: SNP TCB"], "\(e.set.name)")
    }
    XCTAssertEqual(try SNPReport(try SNPVectors.bytes("milan_v3/snp_report.bin")).product, .milan)
    XCTAssertEqual(try SNPReport(try SNPVectors.bytes("genoa/snp_report.bin")).product, .genoa)
  }

  func testAFlippedBitInAnySignedFieldOrInRSIsRejected() throws {
    for set in SNPVectors.all {
      let raw = try SNPVectors.bytes(set.report)
      let coll = try SNPVectors.collateral(vcek: set.vcek, chain: set.chain)
      // VERSION, POLICY, VMPL, REPORT_DATA, MEASUREMENT, REPORTED_TCB, CHIP_ID, byte 0x29F, R, S.
      for offset in [0x00, 0x08, 0x30, 0x50, 0x90, 0x180, 0x1A0, 0x29F, 0x2A0, 0x2E8] {
        var bad = raw
        bad[offset] ^= 0x01
        let v = try SNPVectors.verdict(bad, coll)
        XCTAssertTrue(failed(v).contains("report signature"), "\(set.name) byte 0x\(String(offset, radix: 16)): \(v.checks)")
      }
    }
  }

  func testATamperedVCEKFailsUnderTheASK() throws {
    let raw = try SNPVectors.bytes("snp_report.bin")
    let good = try SNPVectors.bytes("vcek.der")
    let chip = try SNPReport(raw).chipID
    // One bit of the signature (the last byte) and one of the signed part (inside the hardware ID).
    guard let hw = (0...(good.count - 64)).first(where: { Array(good[$0..<$0 + 64]) == chip }) else {
      return XCTFail("the VCEK does not hold the report's chip ID")
    }
    for offset in [good.count - 1, hw + 10] {
      var bad = good
      bad[offset] ^= 0x01
      var coll = try SNPVectors.collateral(vcek: "vcek.der", chain: "")
      coll.vcek = try AMDCertificate(bytes: bad, name: "tampered VCEK")
      let v = try SNPVectors.verdict(raw, coll)
      XCTAssertTrue(failed(v).contains("VCEK signed by the ASK"), "byte \(offset): \(v.failures)")
    }
  }

  /// Each report against every other set's VCEK (with the report's own chain): another chip's
  /// key, or the same chip's at another TCB, never verifies.
  func testAnotherChipsOrTCBsVCEKIsRejected() throws {
    for set in SNPVectors.all {
      for other in SNPVectors.all where other.vcek != set.vcek {
        let raw = try SNPVectors.bytes(set.report)
        let v = try SNPVectors.verdict(raw, try SNPVectors.collateral(vcek: other.vcek, chain: set.chain))
        let f = failed(v)
        XCTAssertTrue(f.contains("report signature"), "\(set.name) with \(other.name)'s VCEK: \(v.failures)")
        if set.chain == other.chain {
          XCTAssertFalse(f.contains("VCEK signed by the ASK"), "\(set.name)/\(other.name)")
          let sameChip = try SNPReport(raw).chipID == SNPVectors.cert(other.vcek).vcekExtensions.hardwareID
          XCTAssertTrue(
            f.contains(sameChip ? "VCEK is for the reported TCB" : "VCEK is for this chip"),
            "\(set.name) with \(other.name)'s VCEK: \(v.failures)")
        } else {
          XCTAssertTrue(f.contains("VCEK signed by the ASK"), "\(set.name) with \(other.name)'s VCEK: \(v.failures)")
        }
      }
    }
    // The README's named case, both directions: same chip, TCB 10/0/25/84 against 7/0/15/62.
    let v = try SNPVectors.verdict(
      try SNPVectors.bytes("genoa/snp_report.bin"), try SNPVectors.collateral(vcek: "genoa/tcb_2024/vcek.der", chain: "genoa"))
    XCTAssertEqual(failed(v), ["VCEK is for the reported TCB", "report signature"])
  }

  func testTheOtherProductsChainIsRejected() throws {
    let milan = try SNPVectors.bytes("snp_report.bin")
    // The Milan ASK under the Genoa ARK (with the Genoa CRL).
    var v = try SNPVectors.verdict(milan, try SNPVectors.collateral(vcek: "vcek.der", chain: "", crlChain: "genoa", arkChain: "genoa"))
    XCTAssertTrue(failed(v).contains("ASK signed by the ARK"), "\(v.failures)")
    // The Genoa VCEK under the Milan ASK.
    let genoa = try SNPVectors.bytes("genoa/snp_report.bin")
    v = try SNPVectors.verdict(genoa, try SNPVectors.collateral(vcek: "genoa/vcek.der", chain: ""))
    XCTAssertTrue(failed(v).contains("VCEK signed by the ASK"), "\(v.failures)")
    // Each CRL under the other product's ARK.
    v = try SNPVectors.verdict(milan, try SNPVectors.collateral(vcek: "vcek.der", chain: "", crlChain: "genoa"))
    XCTAssertEqual(failed(v), ["CRL (ASK not revoked)"])
    v = try SNPVectors.verdict(genoa, try SNPVectors.collateral(vcek: "genoa/vcek.der", chain: "genoa", crlChain: ""))
    XCTAssertEqual(failed(v), ["CRL (ASK not revoked)"])
  }

  func testAChainOutOfOrderIsRejected() throws {
    let raw = try SNPVectors.bytes("snp_report.bin")
    let good = try SNPVectors.collateral(vcek: "vcek.der", chain: "")
    // The ASK in the ARK's place: not pinned, not self-signed.
    var c = good
    c.ark = good.ask
    c.ask = good.ark
    var v = try SNPVectors.verdict(raw, c)
    XCTAssertTrue(failed(v).isSuperset(of: ["ARK (AMD root key)", "ASK signed by the ARK"]), "\(v.failures)")
    // The ARK in the ASK's place: the VCEK was not signed by it.
    c = good
    c.ask = good.ark
    v = try SNPVectors.verdict(raw, c)
    XCTAssertTrue(failed(v).contains("VCEK signed by the ASK"), "\(v.failures)")
    // A self-made ARK that names Milan is not AMD's.
    let fake = try SNPTestAuthority(product: .milan)
    c = good
    c.ark = fake.ark
    v = try SNPVectors.verdict(raw, c)
    XCTAssertTrue(failed(v).isSuperset(of: ["ARK (AMD root key)", "ASK signed by the ARK"]), "\(v.failures)")
    XCTAssertTrue(v.failures.first { $0.name == "ARK (AMD root key)" }?.detail.contains("not AMD's Milan root key") ?? false)
  }

  func testTimesOutsideEveryWindowAreRejected() throws {
    for set in SNPVectors.all {
      let raw = try SNPVectors.bytes(set.report)
      let coll = try SNPVectors.collateral(vcek: set.vcek, chain: set.chain)
      for when in ["2023-01-01T00:00:00Z", "2033-01-01T00:00:00Z"] {
        let v = try SNPVectors.verdict(raw, coll, at: parseInstant(when)!)
        XCTAssertTrue(failed(v).contains("VCEK signed by the ASK"), "\(set.name) at \(when): \(v.failures)")
        XCTAssertTrue(v.failures.contains { $0.detail.contains("not valid at") }, "\(set.name) at \(when)")
      }
    }
    // The Genoa CRL's nextUpdate is 2025-11-03T01:00:00Z; the Milan CRL's 2026-05-12.
    let after = parseInstant("2025-11-04T00:00:00Z")!
    let genoa = try SNPVectors.verdict(
      try SNPVectors.bytes("genoa/snp_report.bin"), try SNPVectors.collateral(vcek: "genoa/vcek.der", chain: "genoa"), at: after)
    XCTAssertEqual(failed(genoa), ["CRL (ASK not revoked)"])
    let milan = try SNPVectors.verdict(
      try SNPVectors.bytes("snp_report.bin"), try SNPVectors.collateral(vcek: "vcek.der", chain: ""), at: after)
    XCTAssertTrue(milan.passed, "\(milan.failures)")
  }

  /// The Genoa CRL revokes serial 0x020001 (an earlier SEV-Genoa ASK): an ASK with that serial is
  /// refused by the serial lookup, the current one (0x020002) is not.
  func testTheGenoaCRLRevokesTheEarlierASK() throws {
    let raw = try SNPVectors.bytes("genoa/snp_report.bin")
    let coll = try SNPVectors.collateral(vcek: "genoa/vcek.der", chain: "genoa")
    XCTAssertEqual(coll.ask?.serial, [0x02, 0x00, 0x02])
    // The real ASK with only its serial changed to 0x020001 (its signature then breaks too).
    guard var der = coll.ask?.der, let at = (0..<(der.count - 5)).first(where: { Array(der[$0..<$0 + 5]) == [0x02, 0x03, 0x02, 0x00, 0x02] })
    else { return XCTFail("serial 0x020002 not found in the ASK") }
    der[at + 4] = 0x01
    var revoked = coll
    revoked.ask = try AMDCertificate(bytes: der, name: "ASK with serial 0x020001")
    XCTAssertEqual(revoked.ask?.serial, [0x02, 0x00, 0x01])
    let v = try SNPVectors.verdict(raw, revoked)
    let crl = v.checks.first { $0.name == "CRL (ASK not revoked)" }
    XCTAssertEqual(crl?.passed, false)
    XCTAssertTrue(crl?.detail.contains("revokes the ASK (serial 0x020001)") ?? false, "\(String(describing: crl))")
  }

  /// A chain of the tests' own CA, where only the CRL differs: revoking the ASK's serial is the
  /// one failure, and without a CRL the verdict fails unless the verifier allows it.
  func testARevokedASKOfATestAuthorityIsRejected() throws {
    let ca = try SNPTestAuthority(product: .genoa, askSerial: [0x02, 0x00, 0x01])
    let now = ca.validFrom.addingTimeInterval(86_400)
    let report = try ca.report(reportData: [UInt8](repeating: 7, count: 64))
    func verdict(_ c: SNPCollateral, requireCRL: Bool = true) throws -> Verdict {
      var verifier = SNPVerifier(collateral: c, time: now, trustedRoots: ca.trustedRoots)
      verifier.requireCRL = requireCRL
      var v = Verdict(evidenceKind: "SEV-SNP", simulated: false)
      verifier.verify(try SNPReport(report), into: &v)
      return v
    }
    let clean = try verdict(try ca.collateral())
    XCTAssertTrue(clean.passed, "\(clean.failures)")
    let revoked = try verdict(try ca.collateral(crl: try ca.crl(revoking: [[0x05], [0x02, 0x00, 0x01]])))
    XCTAssertEqual(failed(revoked), ["CRL (ASK not revoked)"])
    var noCRL = try ca.collateral()
    noCRL.crl = nil
    XCTAssertEqual(failed(try verdict(noCRL)), ["CRL (ASK not revoked)"])
    XCTAssertTrue(try verdict(noCRL, requireCRL: false).passed)
    // The pinned AMD roots do not trust the test authority.
    var v = Verdict(evidenceKind: "SEV-SNP", simulated: false)
    SNPVerifier(collateral: try ca.collateral(), time: now).verify(try SNPReport(report), into: &v)
    XCTAssertEqual(failed(v), ["ARK (AMD root key)"])
  }

  /// Evidence that carries its collateral in the certificate table verifies with no folder; the
  /// client still checks every signature, so a carried chain of another root fails.
  func testCollateralCarriedInTheCertificateTable() throws {
    let raw = try SNPVectors.bytes("genoa/snp_report.bin")
    let coll = try SNPVectors.collateral(vcek: "genoa/vcek.der", chain: "genoa")
    let evidence = raw + SNPCertificateEntry.encodeTable(coll.tableEntries)
    guard case .snp(let r) = try Evidence(evidence) else { return XCTFail("not SNP") }
    XCTAssertEqual(r.certificates.map(\.kind), [.vcek, .ask, .ark, .crl])
    var policy = Policy()
    policy.snpMeasurement = r.measurement
    let verifier = AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: SNPVectors.time), policy: policy)
    let v = verifier.verify(evidence)
    XCTAssertTrue(v.passed, "\(v.failures)")
    // A folder's VCEK wins over the carried one.
    var other = verifier
    other.snp.collateral = SNPCollateral(vcek: try SNPVectors.cert("genoa/tcb_2024/vcek.der"))
    XCTAssertFalse(other.verify(evidence).passed)
    // Without a policy that names SNP, the evidence kind is refused even though the chain holds.
    let refused = AttestationVerifier(dcap: verifier.dcap, policy: Policy()).verify(evidence)
    XCTAssertEqual(failed(refused), ["policy: evidence kind"])
    // The table's bounds are checked: an entry pointing past the end is an error, not a trap.
    var table = SNPCertificateEntry.encodeTable(coll.tableEntries)
    table[20] = 0xFF
    table[21] = 0xFF
    XCTAssertThrowsError(try Evidence(raw + table)) { XCTAssertTrue("\($0)".contains("truncated"), "\($0)") }
  }

  func testPolicyReadsTheSNPKeys() throws {
    let p = try Policy(
      json: Data(
        #"{"snp_measurement": "\#(String(repeating: "ab", count: 48))", "snp_host_data": "\#(String(repeating: "01", count: 32))", "snp_min_tcb": {"bootloader": 3, "snp": 8, "microcode": 115}, "snp_max_vmpl": 0}"#
          .utf8))
    XCTAssertEqual(p.snpMinTCB, Policy.SNPMinimumTCB(bootloader: 3, snp: 8, microcode: 115))
    XCTAssertEqual(p.snpMaxVMPL, 0)
    XCTAssertEqual(p.evidenceKinds, ["sgx", "tdx", "snp"])
    XCTAssertEqual(try Policy(json: try p.json()), p)
    XCTAssertEqual(Policy().evidenceKinds, ["sgx", "tdx"])
    XCTAssertThrowsError(try Policy(json: Data(#"{"snp_max_vmpl": 4}"#.utf8))) { XCTAssertTrue("\($0)".contains("snp_max_vmpl")) }
    XCTAssertThrowsError(try Policy(json: Data(#"{"snp_min_tcb": {"snp": 300}}"#.utf8))) {
      XCTAssertTrue("\($0)".contains("snp_min_tcb.snp"), "\($0)")
    }
    XCTAssertThrowsError(try Policy(json: Data(#"{"snp_min_tcb": {"spl": 3}}"#.utf8))) {
      XCTAssertTrue("\($0)".contains("snp_min_tcb.spl"), "\($0)")
    }
    XCTAssertThrowsError(try Policy(json: Data(#"{"accepted_evidence": ["sev"]}"#.utf8))) {
      XCTAssertTrue("\($0)".contains("accepted_evidence"), "\($0)")
    }

    // HOST_DATA and VMPL against a report of the test authority.
    let ca = try SNPTestAuthority()
    let raw = try ca.report(reportData: [], vmpl: 2, hostData: [UInt8](repeating: 1, count: 32), carrying: try ca.collateral())
    let verifier = AttestationVerifier(
      dcap: try DCAPVerifier(collateral: nil, time: ca.validFrom.addingTimeInterval(60)),
      snp: SNPVerifier(collateral: nil, time: ca.validFrom.addingTimeInterval(60), trustedRoots: ca.trustedRoots), policy: p)
    let v = verifier.verify(raw)
    XCTAssertEqual(failed(v), ["policy: SNP VMPL", "policy: measurement"], "\(v.failures)")
    XCTAssertFalse(v.failures.contains { $0.detail.contains("HOST_DATA") })
  }
}
