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

struct Infer: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Classify photos through an enclave: verify its evidence, send each photo sealed, print the labels.",
    discussion: """
      Connects to `veil enclave serve`, completes the attested handshake and checks the
      enclave's evidence against --policy before anything else is sent (simulated evidence is
      refused unless the policy sets allow_simulation). The enclave then tells, inside the
      channel, how the plan preprocesses: on the client (the photo becomes the model's input
      tensor here, at the plan's size and preset) or in the enclave (the encoded photo is sent).
      Each answer lists the top classes with the plan's labels when it has them.
      """)

  @Option(help: ArgumentHelp("The enclave service.", valueName: "host:port"))
  var endpoint: String
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
  }
  struct Report: Encodable {
    var endpoint: String
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
    let ep: Endpoint
    do { ep = try Endpoint(parsing: endpoint) } catch { throw ValidationError("--endpoint: \(error)") }
    let verifier = try attestation.verifier()
    if let saveLogits { try FileManager.default.createDirectory(atPath: saveLogits, withIntermediateDirectories: true) }
    let report = try await EnclaveClient.with(ep, verifier: verifier) { base in
      var client = base
      client.timeout = .milliseconds(Int64(timeout * 1000))
      let session: EnclaveSession
      do { session = try await client.session() } catch {
        throw RuntimeFailure("handshake with \(ep): \(error)")
      }
      let v = session.verdict
      if v.simulated { note("the enclave's evidence is SIMULATED (accepted by the policy): no TEE protects the photos") }
      let p = session.plan
      var items: [Item] = []
      for (i, image) in images.enumerated() {
        if !json { note("[\(i + 1)/\(images.count)] \(image)") }
        let request = try session.request(photo: URL(fileURLWithPath: image), top: top, logits: saveLogits != nil)
        let t0 = Date()
        let answer: EnclaveAnswer
        do { answer = try await session.infer(request) } catch { throw RuntimeFailure("\(image): \(error)") }
        let rt = Date().timeIntervalSince(t0) * 1000
        if let saveLogits, let logits = answer.logits {
          let name = URL(fileURLWithPath: image).deletingPathExtension().lastPathComponent
          try NPY.write(logits, to: URL(fileURLWithPath: saveLogits).appendingPathComponent("\(name).npy"))
        }
        items.append(
          Item(
            image: image, top: answer.top, headMs: answer.headMs, tailMs: answer.tailMs, enclaveMs: answer.enclaveMs,
            roundTripMs: rt, accelerator: answer.accelerator))
      }
      try? await session.close()
      return Report(
        endpoint: ep.description, evidence: v.evidenceKind, simulated: v.simulated, tcbStatus: v.tcbStatus,
        model: p.model.name, cut: p.cut.name, preprocessing: "\(p.preprocessing.preset) on the \(p.preprocessing.appliedIn.rawValue)",
        items: items)
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
          format: "  head %.1f ms, tail %.1f ms (%@), enclave %.1f ms, round trip %.1f ms", item.headMs, item.tailMs,
          item.accelerator, item.enclaveMs, item.roundTripMs))
    }
  }
}
