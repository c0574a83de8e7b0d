import Foundation
import VeilTEE
import VeilTestSupport

/// SEV-SNP evidence as a client reads it from an enclave, and AMD's certificates and CRLs as a
/// verifier reads them from a collateral folder or a certificate table:
///
/// - `snp-evidence`: a report followed by a certificate table (parsed, shown, verified with the
///   certificates it carries; every check of the chain runs even when an earlier one fails);
/// - `amd-certificate`: one certificate or CRL (DER or PEM), read, its VCEK extensions taken, and
///   put in turn in the VCEK's, the ASK's and the CRL's place of a chain that otherwise holds.
///
/// The seeds come from a test authority of Veil's own (`SNPTestAuthority`), not from AMD.
enum SNPTargets {
  static let all: [FuzzTarget] = [
    FuzzTarget(
      name: "snp-evidence", summary: "SEV-SNP report + certificate table: parsing, AMD's chain, the signature",
      run: { bytes in
        if let e = try? Evidence(bytes) { _ = e.fields }
        _ = verifier.verify(bytes)
        _ = FuzzFixtures.strictVerifier.verify(bytes)
      }),
    FuzzTarget(
      name: "amd-certificate", summary: "AMD certificate or CRL (DER/PEM) in each place of an SNP chain",
      run: { bytes in
        guard let fixture else { fatalError("the test authority's chain must build") }
        if let cert = try? AMDCertificate(bytes: bytes, name: "fuzz") {
          _ = cert.vcekExtensions
          _ = cert.keySHA256
          _ = cert.commonName
          for place in 0..<3 {
            var c = fixture.collateral
            if place == 0 { c.vcek = cert } else if place == 1 { c.ask = cert } else { c.ark = cert }
            check(fixture.report, c)
          }
        }
        if let crl = try? SNPCollateral.crlDER(bytes, name: "fuzz") {
          var c = fixture.collateral
          c.crl = crl
          check(fixture.report, c)
        }
      }),
  ]

  /// Trusts the fixture authority's root, so inputs can reach the checks past the ARK.
  static let verifier: AttestationVerifier = {
    var p = Policy()
    p.acceptedEvidence = ["snp"]
    return AttestationVerifier(
      dcap: FuzzFixtures.lenientVerifier.dcap,
      snp: SNPVerifier(collateral: nil, time: FuzzFixtures.time, trustedRoots: fixture?.authority.trustedRoots ?? [:]),
      policy: p)
  }()

  struct Fixture {
    var authority: SNPTestAuthority
    var collateral: SNPCollateral
    var report: SNPReport
  }

  static let fixture: Fixture? = {
    guard let ca = try? SNPTestAuthority(product: .genoa, validFrom: FuzzFixtures.time.addingTimeInterval(-86_400)),
      let collateral = try? ca.collateral(crl: try ca.crl(revoking: [[0x02, 0x00, 0x01]])),
      let bytes = try? ca.report(reportData: [UInt8](repeating: 9, count: 64)), let report = try? SNPReport(bytes)
    else { return nil }
    return Fixture(authority: ca, collateral: collateral, report: report)
  }()

  static func check(_ report: SNPReport, _ collateral: SNPCollateral) {
    var v = Verdict(evidenceKind: "fuzz", simulated: false)
    SNPVerifier(collateral: collateral, time: FuzzFixtures.time, trustedRoots: fixture?.authority.trustedRoots ?? [:])
      .verify(report, into: &v)
  }

  static func seeds() throws -> [(String, [(String, [UInt8])])] {
    guard let f = fixture else { throw TEEError.invalidArgument(name: "fuzz seeds", detail: "test authority") }
    let c = f.collateral
    let withTable = try f.authority.report(reportData: [UInt8](repeating: 9, count: 64), carrying: c)
    var pem: [(String, [UInt8])] = []
    for (name, cert) in [("vcek", c.vcek), ("ask", c.ask), ("ark", c.ark)] {
      guard let der = cert?.der else { continue }
      let b64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
      pem.append(("\(name).der", der))
      pem.append(("\(name).pem", Array("-----BEGIN CERTIFICATE-----\n\(b64)\n-----END CERTIFICATE-----\n".utf8)))
    }
    let crl = c.crl ?? []
    let crlB64 = Data(crl).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
    pem.append(("crl.der", crl))
    pem.append(("crl.pem", Array("-----BEGIN X509 CRL-----\n\(crlB64)\n-----END X509 CRL-----\n".utf8)))
    return [
      ("snp-evidence", [("report-with-table.bin", withTable), ("report.bin", f.report.bytes)]),
      ("amd-certificate", pem),
    ]
  }
}
