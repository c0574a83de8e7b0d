import Foundation

/// Verifies evidence of any kind and applies a policy: the one entry point relying parties use.
public struct AttestationVerifier: Sendable {
  public var dcap: DCAPVerifier
  /// SEV-SNP reports: AMD's chain and the report's signature. By default it holds no collateral
  /// of its own and takes the certificates the evidence carries, at the DCAP verifier's time.
  public var snp: SNPVerifier
  public var policy: Policy

  public init(dcap: DCAPVerifier, snp: SNPVerifier? = nil, policy: Policy) {
    self.dcap = dcap
    self.snp = snp ?? SNPVerifier(collateral: nil, time: dcap.time)
    self.policy = policy
  }

  /// The same verifier, judging certificates, CRLs and collateral at `time`.
  public func at(_ time: Date) -> AttestationVerifier {
    var v = self
    v.dcap.time = time
    v.snp.time = time
    return v
  }

  /// Checks `bytes` as evidence. `expectedReportData`, when given, must equal the evidence's
  /// report data (the channel passes its transcript hash); `evidenceTime` feeds the age limit.
  public func verify(_ bytes: [UInt8], expectedReportData: [UInt8]? = nil, evidenceTime: Date? = nil) -> Verdict {
    let evidence: Evidence
    do {
      evidence = try Evidence(bytes)
    } catch {
      var v = Verdict(evidenceKind: "unparsable evidence", simulated: false)
      v.check("parse", false, "\(error)")
      return v
    }
    var v = Verdict(evidenceKind: evidence.kind, simulated: evidence.isSimulated)
    switch evidence {
    case .sgx(let q) where evidence.isSimulated:
      SimulatedEnclave.verifySignatures(q, into: &v)
    case .sgx(let q), .tdx(let q):
      dcap.verify(q, into: &v)
    case .snp(let r):
      snp.verify(r, into: &v)
    }
    if let expectedReportData {
      let ok = evidence.reportData == expectedReportData
      v.check(
        "report data", ok,
        ok ? "binds the expected value" : "is \(evidence.reportData.hex), expected \(expectedReportData.hex)")
    }
    policy.evaluate(evidence, evidenceTime: evidenceTime, now: dcap.time, into: &v)
    return v
  }
}
