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

func readFileBytes(_ path: String, what: String) throws -> [UInt8] {
  guard let d = FileManager.default.contents(atPath: path) else {
    throw ValidationError("\(what) '\(path)': no such readable file")
  }
  return Array(d)
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
      """)

  @Argument(help: "An evidence file.")
  var evidence: String
  @Option(help: "Collateral JSON as a PCCS serves it (CRLs, TCB info, QE identity).")
  var collateral: String?
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
    let coll = try collateral.map { try Collateral(json: Data(try readFileBytes($0, what: "collateral"))) }
    let pol = try policy.map { try Policy(json: Data(try readFileBytes($0, what: "policy"))) } ?? Policy()
    let verifier = AttestationVerifier(dcap: try DCAPVerifier(root: rootCert, collateral: coll, time: at), policy: pol)
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
      print("TCB status: \(verdict.tcbStatus ?? "unknown")\(advisories)")
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

struct Enclave: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Deploy the head in an SGX enclave under Gramine.", subcommands: [EnclaveManifest.self, EnclaveServe.self])
}

struct EnclaveManifest: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "manifest",
    abstract: "Write a Gramine manifest template for `veil enclave serve` under gramine-sgx.",
    discussion: """
      Then: gramine-manifest DIR/veil.manifest.template veil.manifest; gramine-sgx-sign
      --manifest veil.manifest --output veil.manifest.sgx; gramine-sgx-sigstruct-view veil.sig
      gives the mr_enclave to put in the client's policy. See docs/tee.md.
      """)

  @Option(help: "A plan folder or plan.json (`veil plan`): the head and its measured peak memory come from it.")
  var plan: String?
  @Option(help: "The head model file the enclave serves (ONNX, plain or sealed); not with --plan.")
  var head: String?
  @Option(help: "The head's measured peak memory in bytes (veil bench reports it); not with --plan.")
  var peakMemory: Int?
  @Option(help: "Directory to write veil.manifest.template into.")
  var out: String
  @Option(help: "The enclave binary (default: this veil binary).")
  var binary: String?
  @Option(help: "oneDNN kernel threads inside the enclave (default: every core).")
  var threads: Int?

  func validate() throws {
    guard (plan == nil) != (head == nil && peakMemory == nil) else {
      throw ValidationError("give either --plan, or --head with --peak-memory")
    }
    if plan == nil, head == nil || peakMemory == nil { throw ValidationError("--head needs --peak-memory (and the reverse)") }
  }

  /// The head file, its peak memory and the plan file: from the plan (its chosen cut's profile
  /// row) or given (the plan then is `plan.json` beside the head).
  func headAndPeak() throws -> (head: String, peak: Int, plan: String?) {
    guard let plan else {
      guard let head, let peakMemory else { throw ValidationError("--head needs --peak-memory (and the reverse)") }
      return (head, peakMemory, nil)
    }
    let loaded: LoadedPlan
    do { loaded = try DeploymentPlan.load(plan) } catch { throw ValidationError("--plan: \(error)") }
    let document = try? JSONDecoder().decode(PlanDocument.self, from: Data(contentsOf: loaded.file))
    guard let row = document?.planning.row(loaded.plan.cut.name), let peak = row.headPeakBytes else {
      throw ValidationError(
        "--plan \(loaded.file.path): no measured peak memory for cut \(loaded.plan.cut.name) (a plan from `veil plan` has it); pass --head and --peak-memory instead")
    }
    return (loaded.headURL.path, peak, loaded.file.standardizedFileURL.path)
  }

  func run() throws {
    let (head, peakMemory, planFile) = try headAndPeak()
    let bin = URL(fileURLWithPath: binary ?? CommandLine.arguments[0]).standardizedFileURL.path
    let headPath = URL(fileURLWithPath: head).standardizedFileURL.path
    guard FileManager.default.isReadableFile(atPath: headPath) else {
      throw ValidationError("--head '\(head)': no such readable file")
    }
    let libs = try sharedLibraries(of: bin)
    let size: (String) -> Int = { (try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0 }
    var manifest: GramineManifest
    do {
      manifest = try GramineManifest(
        binary: bin, libraries: libs, head: headPath, peakMemory: peakMemory,
        kernelThreads: threads ?? ProcessInfo.processInfo.activeProcessorCount, fileBytes: 0, plan: planFile)
    } catch { throw ValidationError("\(error)") }
    manifest.fileBytes = ([bin, headPath, manifest.plan] + manifest.planFiles + libs).map(size).reduce(0, +)
    if !FileManager.default.fileExists(atPath: manifest.plan) {
      note("note: no \(manifest.plan): `veil enclave serve` inside the enclave reads the plan there (write the plan folder with `veil plan`)")
    }
    do {
      try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
      let file = URL(fileURLWithPath: out).appendingPathComponent("veil.manifest.template")
      try Data(manifest.template.utf8).write(to: file)
      note(
        "wrote \(file.path): enclave size \(manifest.enclaveSize >> 20) MiB, \(manifest.maxThreads) threads, \(libs.count) libraries"
      )
    } catch {
      throw ValidationError("--out '\(out)': \(error.localizedDescription)")
    }
  }
}
