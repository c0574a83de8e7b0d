import Crypto
import Foundation
import XCTest

import VeilTEE

/// Bad evidence, policies, simulation and providers.
final class EvidenceTests: XCTestCase {
  func testTruncatedQuoteNamesTheFieldAndOffset() throws {
    let raw = try Vectors.bytes("sgx_quote")
    for cut in [0, 3, 47, 200, 431, 435, 600, 1013, 2000, raw.count - 1] {
      XCTAssertThrowsError(try Evidence(Array(raw.prefix(cut))), "cut at \(cut)") { error in
        guard let e = error as? TEEError else { return XCTFail("\(error)") }
        switch e {
        case .truncated, .unexpectedValue: break
        default: XCTFail("cut at \(cut): \(e)")
        }
      }
    }
    XCTAssertThrowsError(try Evidence(Array(raw.prefix(300)))) { error in
      XCTAssertEqual("\(error)", "DCAP quote: 'CONFIGID' needs 64 bytes at byte 240, only 60 remain (truncated)")
    }
  }

  func testOversizedAndWrongVersions() throws {
    XCTAssertThrowsError(try Evidence([UInt8](repeating: 0, count: maxEvidenceBytes + 1))) { error in
      XCTAssertTrue("\(error)".contains("more than the limit"), "\(error)")
    }
    var raw = try Vectors.bytes("sgx_quote")
    raw[0] = 2
    XCTAssertThrowsError(try Evidence(raw)) { error in
      XCTAssertEqual("\(error)", "DCAP quote: 'version' at byte 0: expected 3, 4 or 5, found 2")
    }
    raw = try Vectors.bytes("sgx_quote")
    raw[2] = 3
    XCTAssertThrowsError(try Evidence(raw)) { error in
      XCTAssertTrue("\(error)".contains("att_key_type") && "\(error)".contains("ECDSA P-256"), "\(error)")
    }
    raw = try Vectors.bytes("sgx_quote")
    raw.append(1)
    XCTAssertThrowsError(try Evidence(raw)) { error in
      XCTAssertTrue(
        "\(error)".contains("padding after the signature data") && "\(error)".contains("byte 4600"), "\(error)")
    }
    // A signature data length that claims more than there is.
    raw = try Vectors.bytes("sgx_quote")
    raw[432] = 0xff
    XCTAssertThrowsError(try Evidence(raw)) { error in
      XCTAssertTrue("\(error)".contains("signature data") && "\(error)".contains("truncated"), "\(error)")
    }
  }

  /// An SEV-SNP report written field by field at the offsets of AMD's ABI.
  func testSNPReportParses() throws {
    var r = [UInt8](repeating: 0, count: 1184)
    r[0] = 2  // version
    r[8 + 2] = 0x08  // policy bit 19: debug allowed
    r[0x34] = 1  // ECDSA P-384
    for i in 0..<64 { r[0x50 + i] = UInt8(i) }
    for i in 0..<48 { r[0x90 + i] = 0xA0 &+ UInt8(i) }
    let e = try Evidence(r)
    guard case .snp(let s) = e else { return XCTFail("not SNP: \(e.kind)") }
    XCTAssertEqual(s.version, 2)
    XCTAssertTrue(s.debugAllowed)
    XCTAssertEqual(s.reportData, (0..<64).map { UInt8($0) })
    XCTAssertEqual(s.measurement.first, 0xA0)
    XCTAssertEqual(e.fields.first { $0.name == "measurement" }?.value, s.measurement.hex)
    r[0x34] = 2
    XCTAssertThrowsError(try SNPReport(r)) { XCTAssertTrue("\($0)".contains("signature_algo"), "\($0)") }
    XCTAssertThrowsError(try SNPReport(Array(r.prefix(1000)))) { XCTAssertTrue("\($0)".contains("truncated"), "\($0)") }
    // Unverifiable without AMD's chain: a verdict says so instead of passing.
    r[0x34] = 1
    let v = AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Date()), policy: Policy()).verify(r)
    XCTAssertFalse(v.passed)
    XCTAssertTrue(v.failures.contains { $0.name == "SNP collateral" }, "\(v.failures)")
    // And the default policy does not take SNP evidence at all until it names SNP.
    XCTAssertTrue(v.failures.contains { $0.name == "policy: evidence kind" }, "\(v.failures)")
  }

  func testPolicyFileRejectsUnknownKeysAndBadValues() throws {
    XCTAssertThrowsError(try Policy(json: Data(#"{"mrenclav": "00"}"#.utf8))) { error in
      XCTAssertTrue("\(error)".hasPrefix("policy 'mrenclav': unknown key"), "\(error)")
    }
    XCTAssertThrowsError(try Policy(json: Data(#"{"mrenclave": "abcd"}"#.utf8))) { error in
      XCTAssertTrue("\(error)".contains("'mrenclave'") && "\(error)".contains("32 bytes"), "\(error)")
    }
    XCTAssertThrowsError(try Policy(json: Data(#"{"allow_debug": "yes"}"#.utf8))) { error in
      XCTAssertTrue("\(error)".contains("'allow_debug'"), "\(error)")
    }
    XCTAssertThrowsError(try Policy(json: Data(#"{"accepted_tcb_statuses": ["Fine"]}"#.utf8))) { error in
      XCTAssertTrue("\(error)".contains("unknown TCB status 'Fine'"), "\(error)")
    }
    XCTAssertThrowsError(try Policy(json: Data(#"{"mrsigner": "\#(String(repeating: "ab", count: 32))"}"#.utf8))) {
      XCTAssertTrue("\($0)".contains("'isvprodid'"), "\($0)")
    }
    XCTAssertThrowsError(try Policy(json: Data("[1]".utf8)))
    // An age limit past what seconds convert to an Int trapped every verification's message.
    for age in ["1e300", "1e19"] {
      XCTAssertThrowsError(try Policy(json: Data(#"{"max_evidence_age_seconds": \#(age)}"#.utf8))) { error in
        XCTAssertTrue("\(error)".contains("max_evidence_age_seconds"), "\(error)")
      }
    }
    let p = try Policy(
      json: Data(
        #"{"mrtd": "\#(String(repeating: "01", count: 48))", "rtmrs": [null, "\#(String(repeating: "02", count: 48))"], "allow_simulation": true, "max_evidence_age_seconds": 60}"#
          .utf8))
    XCTAssertEqual(p.mrTD, [UInt8](repeating: 1, count: 48))
    XCTAssertEqual(p.rtmrs?.count, 2)
    XCTAssertNil(p.rtmrs?[0] ?? nil)
    XCTAssertTrue(p.allowSimulation)
    XCTAssertEqual(p.maxEvidenceAgeSeconds, 60)
  }

  /// A policy inside another document: the same keys as its file, checked the same way.
  func testPolicyIsCodableInItsFileForm() throws {
    struct Holder: Codable, Equatable { var name: String; var policy: Policy }
    var policy = Policy()
    policy.mrEnclave = [UInt8](repeating: 7, count: 32)
    policy.snpMinTCB = .init(bootloader: 3, microcode: 200)
    policy.allowSimulation = true
    policy.maxEvidenceAgeSeconds = 30
    let data = try JSONEncoder().encode(Holder(name: "plan", policy: policy))
    XCTAssertEqual(try JSONDecoder().decode(Holder.self, from: data), Holder(name: "plan", policy: policy))
    // The nested form is the file's form: what json() writes, init(json:) reads.
    let object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    let nested = try JSONSerialization.data(withJSONObject: try XCTUnwrap(object["policy"]))
    XCTAssertEqual(try Policy(json: nested), policy)
    XCTAssertEqual(try Policy(json: policy.json()), policy)
    let text = String(decoding: try policy.json(), as: UTF8.self)
    XCTAssertTrue(text.contains(#""mrenclave" : "\#(String(repeating: "07", count: 32))""#), text)
    XCTAssertFalse(text.contains("mrsigner"), "unset pins are left out: \(text)")
    // Nested, a misspelt key or a bad value is refused as in a file.
    XCTAssertThrowsError(try JSONDecoder().decode(Holder.self, from: Data(#"{"name": "x", "policy": {"allow_simulaton": true}}"#.utf8))) {
      XCTAssertTrue("\($0)".contains("'allow_simulaton': unknown key"), "\($0)")
    }
    XCTAssertThrowsError(try JSONDecoder().decode(Holder.self, from: Data(#"{"name": "x", "policy": {"snp_max_vmpl": 9}}"#.utf8))) {
      XCTAssertTrue("\($0)".contains("VMPL"), "\($0)")
    }
  }

  func testPolicyPinsTheMeasurementOfARealQuote() throws {
    let raw = try Vectors.bytes("sgx_quote")
    guard case .sgx(let q) = try Evidence(raw), case .sgx(let body) = q.body else { return XCTFail() }
    var p = Policy()
    p.mrEnclave = body.mrEnclave
    p.mrSigner = body.mrSigner
    p.isvProdID = body.isvProdID
    p.minISVSVN = body.isvSVN
    XCTAssertTrue(try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p).verify(raw).passed)
    p.minISVSVN = body.isvSVN + 1
    var v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p).verify(raw)
    XCTAssertEqual(v.failures.map(\.name), ["policy: measurement"])
    XCTAssertTrue(
      v.failures[0].detail.contains("ISVSVN is \(body.isvSVN), the policy requires at least \(body.isvSVN + 1)"))
    p.minISVSVN = nil
    p.mrEnclave = [UInt8](repeating: 0, count: 32)
    v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p).verify(raw)
    XCTAssertEqual(v.failures.map(\.name), ["policy: measurement"])
    // A TDX measurement pinned against SGX evidence is a mismatch, not a pass.
    p = Policy()
    p.mrTD = [UInt8](repeating: 0, count: 48)
    v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p).verify(raw)
    XCTAssertTrue(v.failures.first?.detail.contains("pins MRTD") ?? false, "\(v.failures)")
    // An age limit needs the production time.
    p = Policy()
    p.maxEvidenceAgeSeconds = 300
    v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p).verify(raw)
    XCTAssertEqual(v.failures.map(\.name), ["policy: evidence age"])
    v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p)
      .verify(raw, evidenceTime: Vectors.sgxTime.addingTimeInterval(-100))
    XCTAssertTrue(v.passed)
    v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime, policy: p)
      .verify(raw, evidenceTime: Vectors.sgxTime.addingTimeInterval(-1000))
    XCTAssertEqual(v.failures.map(\.name), ["policy: evidence age"])
  }

  func testSimulatedEvidenceIsLabelledAndRefusedUnlessAllowed() throws {
    let sim = SimulatedEnclave(binaryDigest: Array(SHA256.hash(data: [1])), headDigest: Array(SHA256.hash(data: [2])))
    let reportData = (0..<64).map { UInt8($0) }
    let quote = try sim.quote(reportData: reportData)
    let e = try Evidence(quote)
    XCTAssertTrue(e.isSimulated)
    XCTAssertTrue(e.isDebug)
    XCTAssertTrue(e.kind.contains("SIMULATED"))
    XCTAssertEqual(e.reportData, reportData)
    guard case .sgx(let q) = e, case .sgx(let body) = q.body else { return XCTFail() }
    XCTAssertEqual(q.version, 3)
    XCTAssertEqual(q.qeVendorID, [UInt8](repeating: 0, count: 16))
    XCTAssertEqual(body.mrEnclave, sim.mrEnclave)
    XCTAssertEqual(
      sim.mrEnclave,
      SimulatedEnclave.measurement(
        binaryDigest: Array(SHA256.hash(data: [1])), headDigest: Array(SHA256.hash(data: [2]))))
    XCTAssertNotEqual(
      sim.mrEnclave,
      SimulatedEnclave.measurement(
        binaryDigest: Array(SHA256.hash(data: [1])), headDigest: Array(SHA256.hash(data: [3]))),
      "another head is another measurement")

    let dcap = try DCAPVerifier(collateral: nil, time: Date())
    let refused = AttestationVerifier(dcap: dcap, policy: Policy()).verify(quote)
    XCTAssertEqual(refused.failures.map(\.name), ["policy: simulation", "policy: debug"])
    XCTAssertEqual(refused.tcbStatus, "Simulated")
    var allow = Policy()
    allow.allowSimulation = true
    allow.allowDebug = true
    allow.mrEnclave = sim.mrEnclave
    let accepted = AttestationVerifier(dcap: dcap, policy: allow).verify(quote, expectedReportData: reportData)
    XCTAssertTrue(accepted.passed, "\(accepted.failures)")
    XCTAssertTrue(accepted.checks.contains { $0.detail.contains("SIMULATED") })
    var bad = quote
    bad[120] ^= 1
    XCTAssertFalse(AttestationVerifier(dcap: dcap, policy: allow).verify(bad).passed)
  }

  func testProvidersUseTheirFileProtocols() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-tee-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let sim = SimulatedEnclave(binaryDigest: [], headDigest: [])

    // Nothing real present: detection falls back to simulation, and only when configured.
    let gramine = GramineSGXProvider(root: dir.appendingPathComponent("attestation"))
    let tsm = ConfigfsTSMProvider(root: dir.appendingPathComponent("tsm"))
    XCTAssertEqual(
      try detectEvidenceProvider(environment: [:], gramine: gramine, tsm: tsm, simulation: sim).mode, .simulated)
    XCTAssertThrowsError(try detectEvidenceProvider(environment: [:], gramine: gramine, tsm: tsm, simulation: nil))
    XCTAssertThrowsError(
      try detectEvidenceProvider(
        environment: ["VEIL_EVIDENCE_MODE": "sgx"], gramine: gramine, tsm: tsm, simulation: sim)
    ) {
      XCTAssertTrue("\($0)".contains("gramine-sgx, configfs-tsm, simulated"), "\($0)")
    }

    // Gramine's files: the provider writes the report data and reads back what is at `quote`.
    try FileManager.default.createDirectory(at: gramine.root, withIntermediateDirectories: true)
    let real = try Vectors.bytes("sgx_quote")
    try Data(real).write(to: gramine.root.appendingPathComponent("quote"))
    XCTAssertEqual(
      try detectEvidenceProvider(environment: [:], gramine: gramine, tsm: tsm, simulation: sim).mode, .gramineSGX)
    let rd = [UInt8](repeating: 7, count: 64)
    XCTAssertEqual(try gramine.evidence(reportData: rd), real)
    XCTAssertEqual(Array(try Data(contentsOf: gramine.root.appendingPathComponent("user_report_data"))), rd)
    XCTAssertThrowsError(try gramine.evidence(reportData: [1, 2, 3])) {
      XCTAssertTrue("\($0)".contains("64 bytes"), "\($0)")
    }
    // The override wins over detection.
    XCTAssertEqual(
      try detectEvidenceProvider(override: .simulated, environment: [:], gramine: gramine, tsm: tsm, simulation: sim)
        .mode,
      .simulated)

    // configfs-tsm without the kernel behind it: a directory entry has no outblob, which is an error.
    try FileManager.default.createDirectory(at: tsm.root, withIntermediateDirectories: true)
    XCTAssertThrowsError(try tsm.evidence(reportData: rd)) { error in
      XCTAssertTrue("\(error)".contains("configfs-tsm") && "\(error)".contains("outblob"), "\(error)")
    }
    XCTAssertEqual(
      try FileManager.default.contentsOfDirectory(atPath: tsm.root.path), [], "the report entry is removed")
  }

  /// Thousands of mutated real quotes through the parser and the verifier: an error or a
  /// verdict every time, never a crash, and no mutation of a signed byte passes.
  func testFuzzEvidenceParserAndVerifier() throws {
    var rng = SplitMix(seed: 0xE71D)
    let sgx = try Vectors.bytes("sgx_quote")
    let tdx = try Vectors.bytes("tdx_quote")
    let v = try Vectors.verifier("sgx_quote_collateral.json", at: Vectors.sgxTime)
    var parsed = 0
    for i in 0..<3000 {
      var m = i % 2 == 0 ? sgx : tdx
      switch rng.next() % 4 {
      case 0: m = Array(m.prefix(Int(rng.next() % UInt64(m.count))))
      case 1:
        // Lengths and counts live in the first 1,300 bytes and at the signature data.
        let at = Int(rng.next() % 1300)
        m[at] = UInt8(truncatingIfNeeded: rng.next())
      case 2: m[Int(rng.next() % UInt64(m.count))] ^= UInt8(1 << (rng.next() % 8))
      default: m += [UInt8(truncatingIfNeeded: rng.next() | 1)]
      }
      if (try? Evidence(m)) != nil { parsed += 1 }
      if m != sgx, m != tdx, i % 10 == 0 {
        let verdict = v.verify(m)
        if verdict.passed {
          guard case .sgx(let q) = try Evidence(m) else { return XCTFail("a mutated TDX quote passed") }
          XCTAssertGreaterThanOrEqual(
            zip(m, sgx).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? 0,
            q.signatureData.qeReportOffset + 450 + 32,
            "only unsigned certification bytes may change")
        }
      }
    }
    XCTAssertGreaterThan(parsed, 100)
  }
}
