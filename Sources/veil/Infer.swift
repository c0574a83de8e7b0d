import ArgumentParser
import Foundation
import VeilFormats
import VeilServing
import VeilTEE

/// What a client needs to check an enclave: the policy, and DCAP collateral for real quotes.
struct AttestationOptions: ParsableArguments {
  @Option(help: "The policy the enclave's evidence must satisfy (JSON; see docs/tee.md).")
  var policy: String
  @Option(
    help: ArgumentHelp(
      "DCAP collateral (JSON, as a PCCS serves it), or a folder of SEV-SNP collateral (vcek.der, ask.pem, ark.pem, crl.pem). SEV-SNP evidence may also carry its certificates.",
      valueName: "file-or-dir"))
  var collateral: String?
  @Flag(help: "SEV-SNP: accept collateral without a CRL (the ASK's revocation then goes unchecked).")
  var allowMissingCRL = false
  @Option(help: "Verification time, ISO 8601 (default: now).")
  var time: String?

  func verifier() throws -> AttestationVerifier {
    let pol: Policy
    do { pol = try Policy(json: Data(try readFileBytes(policy, what: "policy"))) } catch let e as ValidationError {
      throw e
    } catch {
      throw ValidationError("--policy '\(policy)': \(error)")
    }
    var at = Date()
    if let time {
      guard let t = parseInstant(time) else { throw ValidationError("--time '\(time)': expected ISO 8601") }
      at = t
    }
    return try RelyingPartyCollateral(path: collateral).verifier(policy: pol, time: at, allowMissingCRL: allowMissingCRL)
  }
}

/// The enclave replicas a client talks to: `--enclave HOST:PORT`, repeated or comma-separated
/// (`--endpoint` is the same option's older name).
struct EnclaveEndpointOptions: ParsableArguments {
  @Option(
    name: [.customLong("enclave"), .customLong("endpoint")],
    help: ArgumentHelp(
      "An enclave replica (repeatable, or comma-separated; DNS names fine). Sessions are spread across the replicas; a request lost with one is sent again to another.",
      valueName: "host:port"))
  var enclave: [String] = []
  @Option(help: "Seconds an enclave replica that could not be reached is skipped before it is tried again.")
  var enclaveRetryAfter: Double = 2
  @Flag(
    help:
      "Send each request as a call of its own (Infer) instead of on the session's open stream (InferStream, the default, which saves a call's set-up per request): to compare the two, or through a proxy that does not pass streams."
  )
  var unary = false

  var description: String { enclave.joined(separator: ",") }

  func validate() throws {
    guard !enclave.isEmpty else { throw ValidationError("give the enclave with --enclave HOST:PORT (repeatable)") }
    do { _ = try EnclaveReplicas.parse(enclave) } catch { throw ValidationError("--enclave: \(error)") }
    guard enclaveRetryAfter >= 0, enclaveRetryAfter.isFinite else {
      throw ValidationError("--enclave-retry-after must be ≥ 0 seconds, found \(enclaveRetryAfter)")
    }
  }

  func replicas(verifier: AttestationVerifier, timeout: Double) throws -> EnclaveReplicas {
    do {
      return try EnclaveReplicas(
        endpoints: try EnclaveReplicas.parse(enclave), verifier: verifier, timeout: .milliseconds(Int64(timeout * 1000)),
        retryAfter: enclaveRetryAfter, streaming: !unary)
    } catch { throw ValidationError("--enclave: \(error)") }
  }
}

struct Infer: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Classify photos through an enclave: verify its evidence, send each photo sealed, print the labels.",
    discussion: """
      Connects to `veil enclave serve`, completes the attested handshake and checks the
      enclave's evidence against --policy before anything else is sent (simulated evidence is
      refused unless the policy sets allow_simulation). The enclave then tells, inside the
      channel, how the plan preprocesses: on the client (the photo is resized and cropped here,
      to the plan's size, and its 8-bit pixels are sent; the enclave applies the preset's
      normalisation) or in the enclave (the encoded photo is sent).
      Each answer lists the top classes with the plan's labels when it has them.

      Several enclave replicas (--enclave repeated or comma-separated): the session opens on
      the first that answers; when the one in use drops, the photo in flight is counted as lost
      and sent again on a new session with the next replica (each replica's evidence is checked
      against the same policy).
      """)

  @OptionGroup var enclaves: EnclaveEndpointOptions
  @OptionGroup var attestation: AttestationOptions
  @Argument(help: "Photos (.png, .jpg).")
  var images: [String]
  @Option(help: "How many top classes to print per photo.")
  var top = 5
  @Option(help: "Write each photo's logits to DIR/<photo name>.npy.")
  var saveLogits: String?
  @Option(help: "Seconds to wait for each call.")
  var timeout: Double = 60
  @Flag(help: "Print one JSON document.")
  var json = false

  struct Item: Encodable {
    var image: String
    var top: [EnclaveAnswer.Class]
    var headMs: Double
    var tailMs: Double
    var enclaveMs: Double
    var roundTripMs: Double
    var accelerator: String
    /// The enclave replica that answered.
    var enclave: String
  }
  struct Report: Encodable {
    var endpoint: String
    /// Requests lost with a replica and sent again to another, and sessions by replica.
    var replicas: EnclaveReplicas.Tally
    var evidence: String
    var simulated: Bool
    var tcbStatus: String?
    var model: String
    var cut: String
    var preprocessing: String
    var items: [Item]
  }

  func validate() throws {
    guard !images.isEmpty else { throw ValidationError("give at least one photo") }
    guard (0...100).contains(top) else { throw ValidationError("--top must be in 0...100, found \(top)") }
    for i in images where !FileManager.default.isReadableFile(atPath: i) {
      throw ValidationError("photo '\(i)': no such readable file")
    }
  }

  func run() async throws {
    let replicas = try enclaves.replicas(verifier: try attestation.verifier(), timeout: timeout)
    if let saveLogits { try FileManager.default.createDirectory(atPath: saveLogits, withIntermediateDirectories: true) }
    let report = try await replicas.withCaller { caller in
      let session: EnclaveSession
      do { session = try await caller.session() } catch {
        throw RuntimeFailure("handshake with \(enclaves.description): \(error)")
      }
      let v = session.verdict
      if v.simulated { note("the enclave's evidence is SIMULATED (accepted by the policy): no TEE protects the photos") }
      let p = session.plan
      var items: [Item] = []
      for (i, image) in images.enumerated() {
        if !json { note("[\(i + 1)/\(images.count)] \(image)") }
        let url = URL(fileURLWithPath: image)
        let (top, logits) = (self.top, saveLogits != nil)
        let t0 = Date()
        let answer: EnclaveAnswer
        do {
          answer = try await caller.infer { s in try s.request(photo: url, top: top, logits: logits) }
        } catch { throw RuntimeFailure("\(image): \(error)") }
        let rt = Date().timeIntervalSince(t0) * 1000
        if let saveLogits, let logits = answer.logits {
          let name = url.deletingPathExtension().lastPathComponent
          try NPY.write(logits, to: URL(fileURLWithPath: saveLogits).appendingPathComponent("\(name).npy"))
        }
        items.append(
          Item(
            image: image, top: answer.top, headMs: answer.headMs, tailMs: answer.tailMs, enclaveMs: answer.enclaveMs,
            roundTripMs: rt, accelerator: answer.accelerator, enclave: await caller.endpoint?.description ?? "-"))
      }
      return Report(
        endpoint: enclaves.description, replicas: replicas.tally, evidence: v.evidenceKind, simulated: v.simulated,
        tcbStatus: v.tcbStatus, model: p.model.name, cut: p.cut.name,
        preprocessing: "\(p.preprocessing.preset) on the \(p.preprocessing.appliedIn.rawValue)", items: items)
    }
    if json { return try printJSON(report) }
    print(
      "enclave \(report.endpoint): \(report.evidence)\(report.simulated ? " (SIMULATED)" : ""), TCB \(report.tcbStatus ?? "-"); "
        + "model \(report.model) cut at \(report.cut), \(report.preprocessing) preprocessing")
    for item in report.items {
      let list = item.top.map { c in String(format: "#%d%@ (%.4f)", c.index, c.label.map { " \($0)" } ?? "", c.score) }
      print("\(item.image): \(list.joined(separator: ", "))")
      print(
        String(
          format: "  head %.1f ms, tail %.1f ms (%@), enclave %.1f ms (%@), round trip %.1f ms", item.headMs, item.tailMs,
          item.accelerator, item.enclaveMs, item.enclave, item.roundTripMs))
    }
    if report.replicas.lost > 0 {
      note("\(report.replicas.lost) requests lost with an enclave replica, \(report.replicas.retried) sent again to another")
    }
  }
}
