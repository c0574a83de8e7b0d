import ArgumentParser
import Foundation
import VeilPlanning
import VeilServing
import VeilTEE
import X509

struct Attest: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Inspect and verify TEE attestation evidence (SGX/TDX DCAP quotes, SEV-SNP reports).",
    subcommands: [AttestInspect.self, AttestVerify.self, AttestSimulate.self])
}

struct AttestInspect: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "inspect", abstract: "Print the parsed fields of evidence (no verification).")

  @Argument(help: "An evidence file: SGX quote v3, TDX quote v4/v5, or SEV-SNP report.")
  var evidence: String
  @Flag(help: "Print one JSON document.")
  var json = false

  func run() throws {
    let e = try Evidence(try readFileBytes(evidence, what: "evidence"))
    if json {
      return try printJSON(Dictionary(uniqueKeysWithValues: e.fields.map { ($0.name, $0.value) }))
    }
    if e.isSimulated { print("SIMULATED EVIDENCE: produced without a TEE; it proves nothing about the host.") }
    let width = e.fields.map(\.name.count).max() ?? 0
    for f in e.fields { print(f.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + f.value) }
  }
}

struct AttestVerify: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "verify",
    abstract: "Verify evidence against collateral and a policy; exit 0 only when every check passes.",
    discussion: """
      DCAP quotes are checked up to the pinned Intel SGX Root CA (or --root): quote signature,
      QE report signature and binding, PCK chain validity and CRLs, TCB info and QE identity
      signatures and windows, and the TCB status. Without --policy the default policy applies:
      no measurement pinned, debug and simulation refused, TCB statuses UpToDate,
      SWHardeningNeeded, ConfigurationNeeded and ConfigurationAndSWHardeningNeeded accepted.

      SEV-SNP reports are checked up to AMD's root keys, pinned for Milan, Genoa and Turin: the
      ARK self-signed, the ASK signed by the ARK, the ARK's CRL current and not revoking the ASK,
      the VCEK signed by the ASK for this chip (hardware ID = CHIP_ID) and this TCB (its SPLs =
      REPORTED_TCB), and the report's ECDSA P-384 signature by the VCEK. --collateral names the
      folder with vcek.der, ask.pem, ark.pem and crl.pem (AMD's KDS serves them); without it,
      the certificates the evidence carries after the report are used. SNP evidence passes the
      policy only when the policy names SNP (snp_measurement, snp_min_tcb, snp_max_vmpl,
      snp_host_data, or accepted_evidence).
      """)

  @Argument(help: "An evidence file.")
  var evidence: String
  @Option(
    help: ArgumentHelp(
      "DCAP collateral (JSON, as a PCCS serves it), or a folder of SEV-SNP collateral (vcek.der, ask.pem, ark.pem, crl.pem).",
      valueName: "file-or-dir"))
  var collateral: String?
  @Flag(help: "SEV-SNP: accept a collateral folder without crl.pem (the ASK's revocation then goes unchecked).")
  var allowMissingCRL = false
  @Option(help: "Root CA certificate (DER or PEM) instead of the pinned Intel SGX Root CA.")
  var root: String?
  @Option(help: "Verification time, ISO 8601 (default: now).")
  var time: String?
  @Option(help: "Policy file (JSON).")
  var policy: String?
  @Option(help: "When the evidence was produced, ISO 8601 (for the policy's max_evidence_age_seconds).")
  var evidenceTime: String?
  @Flag(help: "Print one JSON document.")
  var json = false

  func run() throws {
    let bytes = try readFileBytes(evidence, what: "evidence")
    var at = Date()
    if let time {
      guard let t = parseInstant(time) else {
        throw ValidationError("--time '\(time)': expected ISO 8601 such as 2025-07-01T12:00:00Z")
      }
      at = t
    }
    var produced: Date?
    if let evidenceTime {
      guard let t = parseInstant(evidenceTime) else {
        throw ValidationError("--evidence-time '\(evidenceTime)': expected ISO 8601")
      }
      produced = t
    }
    var rootCert: Certificate?
    if let root {
      let raw = try readFileBytes(root, what: "root certificate")
      do {
        rootCert = try Certificate(derEncoded: raw)
      } catch {
        do { rootCert = try Certificate(pemEncoded: String(decoding: raw, as: UTF8.self)) } catch {
          throw ValidationError("--root '\(root)': neither a DER nor a PEM certificate")
        }
      }
    }
    let pol = try policy.map { try Policy(json: Data(try readFileBytes($0, what: "policy"))) } ?? Policy()
    let verifier = try RelyingPartyCollateral(path: collateral).verifier(
      policy: pol, time: at, root: rootCert, allowMissingCRL: allowMissingCRL)
    let verdict = verifier.verify(bytes, evidenceTime: produced)
    if json {
      try printJSON(verdict)
    } else {
      print(
        "verdict: \(verdict.passed ? "PASS" : "FAIL") (\(verdict.evidenceKind), checked at \(ISO8601DateFormatter().string(from: at)))"
      )
      if verdict.simulated { print("SIMULATED EVIDENCE: produced without a TEE; it proves nothing about the host.") }
      let advisories =
        verdict.advisoryIDs.isEmpty ? "" : " (advisories: \(verdict.advisoryIDs.joined(separator: ", ")))"
      if case .snp(let r)? = try? Evidence(bytes) {
        print("TCB: REPORTED_TCB \(r.reportedTCBComponents.components) (AMD publishes no TCB status; pin snp_min_tcb)")
      } else {
        print("TCB status: \(verdict.tcbStatus ?? "unknown")\(advisories)")
      }
      for c in verdict.checks { print("  \(c.passed ? "ok  " : "FAIL") \(c.name): \(c.detail)") }
      if !verdict.passed { print("\(verdict.failures.count) check(s) failed") }
    }
    if !verdict.passed { throw ExitCode(1) }
  }
}

struct AttestSimulate: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "simulate",
    abstract: "Write SIMULATED evidence (SGX quote v3 layout, DEBUG set, local key) for a binary and head.",
    discussion: "For development without a TEE. Verifiers refuse it unless the policy sets allow_simulation.")

  @Option(help: "The head the enclave serves.")
  var head: String
  @Option(help: "The enclave binary (default: this veil binary).")
  var binary: String?
  @Option(help: "Report data, 128 hex digits (default: zeros).")
  var reportData: String?
  @Option(help: "Where to write the evidence.")
  var out: String

  func run() throws {
    let bin = binary ?? CommandLine.arguments[0]
    let enclave = try SimulatedEnclave(binary: URL(fileURLWithPath: bin), head: URL(fileURLWithPath: head))
    var rd = [UInt8](repeating: 0, count: 64)
    if let reportData {
      guard let b = [UInt8](hex: reportData), b.count == 64 else {
        throw ValidationError("--report-data: expected 64 bytes as 128 hex digits")
      }
      rd = b
    }
    let quote = try enclave.quote(reportData: rd)
    guard FileManager.default.createFile(atPath: out, contents: Data(quote)) else {
      throw ValidationError("--out '\(out)': cannot be written")
    }
    note("wrote SIMULATED evidence to \(out): MRENCLAVE \(enclave.mrEnclave.hex) (not from a TEE)")
  }
}
