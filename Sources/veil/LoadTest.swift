import ArgumentParser
import Crypto
import Foundation
import Synchronization
import VeilData
import VeilFormats
import VeilGraph
import VeilServing
import VeilTEE
import VeilTensor

struct LoadTest: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "loadtest",
    abstract: "Drive an enclave with N concurrent clients end to end and check every answer against the whole model.",
    discussion: """
      Each client opens its own connection and attested session and sends its share of the
      requests one after another (the photos in turn). Every answer's logits are compared with
      the whole model run here on the same input (--model, which must be the model the plan was
      made from: its SHA-256 is checked against the plan's). A request that fails or times out
      is counted as lost, an answer that differs (another top class, or logits further apart
      than --tolerance) as wrong. With several enclave replicas (--enclave repeated or
      comma-separated) the clients' connections are spread across them; a request lost with a
      replica that drops is counted as lost and sent again on a new session with another, and
      only a request that fails on every replica tried counts as failed. Prints throughput and the p50/p90/p99 latency of the round
      trips, and progress on standard error.

      --breakdown adds where each request's time went, stage by stage (mean, p50, p90 over the
      measured requests): the client sealing its request; in the enclave, opening the record,
      decoding the input (the photo decoded and preprocessed, where the plan does that in the
      enclave), the head (with any wait for a head batch), the tail as encoding the feature map
      into a KServe v2 request, the call to the accelerator (the wire both ways, its queue and
      compute) and decoding its answer, building the answer; the rest of the round trip (the
      wire and gRPC both ways, the enclave's sealing of its answer); the client opening the
      answer. The enclave exports the same stages as Prometheus histograms
      (veil_enclave_stage_duration_seconds{stage=...} at its /metrics).
      """)

  @OptionGroup var enclaves: EnclaveEndpointOptions
  @OptionGroup var attestation: AttestationOptions
  @Option(help: "The whole model the plan was made from (zoo name or file), run here for the reference answers.")
  var model: String
  @Option(help: "Seed of the zoo model's weights (as given to the planner).")
  var seed: UInt64 = 0
  @Option(help: "Concurrent clients.")
  var clients = 8
  @Option(help: "Requests in all, shared among the clients.")
  var requests = 200
  @Option(help: "Requests per client before the clock starts (not counted).")
  var warmup = 2
  @Option(help: "Largest logit difference accepted, relative to the largest reference logit (at least 1).")
  var tolerance: Float = 1e-3
  @Option(help: "A name for this run in the output (e.g. 'batching on').")
  var label = ""
  @Option(help: "Seconds to wait for each call.")
  var timeout: Double = 120
  @Option(
    help: ArgumentHelp(
      "Idle milliseconds each client waits before each request, as a server sees sporadic requests (its threads asleep, other work in the caches); latencies exclude the wait, throughput does not.",
      valueName: "ms"))
  var gapMs: Double = 0
  @Argument(help: "Photos (.png, .jpg), sent in turn.")
  var images: [String]
  @Flag(
    help:
      "Plans that preprocess on the client: send the input tensor (4 bytes a value) instead of the resized and cropped pixels (1 byte), as clients before the pixels field did.")
  var sendTensor = false
  @Flag(help: "Print one JSON document.")
  var json = false
  @Flag(help: "Also print where each request's time went, stage by stage (client, enclave, accelerator, wire).")
  var breakdown = false
  @OptionGroup var engine: EngineOptions

  struct Report: Encodable {
    var label: String
    var endpoint: String
    var model: String
    var cut: String
    var clients: Int
    var requests: Int
    var ok: Int
    var wrong: Int
    /// Requests lost with an enclave replica (each sent again while attempts remained).
    var lost: Int
    var retried: Int
    /// Requests that got no answer after every attempt.
    var failed: Int
    /// Warm-up requests (not measured) that got no answer after every attempt.
    var warmupFailed: Int
    /// Sessions, answers and losses by enclave replica.
    var replicas: EnclaveReplicas.Tally
    var seconds: Double
    var throughput: Double
    var p50Ms: Double
    var p90Ms: Double
    var p99Ms: Double
    var meanHeadMs: Double
    var meanTailMs: Double
    var firstErrors: [String]
    var breakdown: [Stage]?
  }

  /// One stage of the breakdown, over the measured requests.
  struct Stage: Encodable {
    var stage: String
    var meanMs: Double
    var p50Ms: Double
    var p90Ms: Double
  }

  struct Sample: Sendable {
    var ms: Double
    var headMs: Double
    var tailMs: Double
    /// The stages, in `stages` order (empty when the enclave does not report them).
    var stages: [Double]
    /// Whether the accelerator gave its own account of the call (its queue and tail).
    var acceleratorTimed: Bool
  }

  /// The breakdown's stages, in a request's order, each read from an answer.
  static let stages: [(name: String, ms: @Sendable (EnclaveAnswer, EnclaveStagesMessage) -> Double)] = [
    ("client: seal the request", { a, _ in a.clientSealMs }),
    ("enclave: open the record", { _, s in s.openMs }),
    ("enclave: decode the input", { _, s in s.decodeMs }),
    ("enclave: head", { _, s in s.headMs }),
    ("enclave: the plan's defence", { _, s in s.defenceMs }),
    ("enclave: encode the feature map (KServe v2)", { _, s in s.tailEncodeMs }),
    // The accelerator's own account of the call, where it gives one (Veil's accelerator does;
    // other KServe v2 servers do not, and then the whole call is in the wire's row).
    ("accelerator: queue (as it reports)", { _, s in s.hasTailQueueMs ? s.tailQueueMs : 0 }),
    ("accelerator: tail (as it reports)", { _, s in s.hasTailComputeMs ? s.tailComputeMs : 0 }),
    ("accelerator call: wire and gRPC, both ways", { _, s in
      max(0, s.tailCallMs - (s.hasTailQueueMs ? s.tailQueueMs : 0) - (s.hasTailComputeMs ? s.tailComputeMs : 0))
    }),
    ("enclave: decode the tail's answer", { _, s in s.tailDecodeMs }),
    ("enclave: build the answer", { _, s in s.answerMs }),
    // What the enclave did not time: the wire and gRPC both ways, and its sealing of the answer.
    ("wire, gRPC, enclave's answer seal", { a, s in max(0, a.roundTripMs - s.openMs - a.enclaveMs) }),
    ("client: open the answer", { a, _ in a.clientOpenMs }),
  ]

  static func stages(of a: EnclaveAnswer) -> [Double] {
    guard let s = a.stages else { return [] }
    return stages.map { $0.ms(a, s) }
  }

  /// What the clients share: the tally and how many finished their warm-up.
  final class Shared: Sendable {
    let tally = Mutex(Tally())
    let ready = Mutex(0)
  }

  struct Tally: Sendable {
    var samples: [Sample] = []
    var wrong = 0
    var failed = 0
    var warmupFailed = 0
    var errors: [String] = []
    var done = 0
  }

  func validate() throws {
    guard clients >= 1, requests >= 1, warmup >= 0, gapMs >= 0, gapMs <= 60_000 else {
      throw ValidationError("--clients and --requests must be ≥ 1, --warmup ≥ 0 and --gap-ms in 0…60000")
    }
    guard !images.isEmpty else { throw ValidationError("give at least one photo") }
    for i in images where !FileManager.default.isReadableFile(atPath: i) {
      throw ValidationError("photo '\(i)': no such readable file")
    }
  }

  func run() async throws {
    try engine.apply()
    try ModelSource.check(model)
    let replicas = try enclaves.replicas(verifier: try attestation.verifier(), timeout: timeout)
    let ep = enclaves.description

    // The plan, as the enclave describes it, fixes the inputs; the reference runs here.
    let plan = try await replicas.withCaller { try await $0.session().plan }
    note("reference: \(model) run whole on this machine")
    let whole = try ModelSource.load(model, batch: 1, seed: seed)
    let digest = Array(SHA256.hash(data: try ONNXWriter.serialize(whole))).hex
    guard digest == plan.model.sha256 else {
      throw ValidationError(
        "--model \(model) (seed \(seed)) has SHA-256 \(digest), the enclave's plan was made from \(plan.model.sha256): give the model the plan was made from"
      )
    }
    let preprocessing = try plan.imagePreprocessing
    let cropped = try images.map { try preprocessing.geometry(ImageCodec.readUpright(URL(fileURLWithPath: $0))) }
    let inputs = try cropped.map { try preprocessing.tensor(fromCropped: $0) }
    let exec = try Executor(graph: whole)
    let references = try inputs.map { try exec.run([$0])[0].scalars }
    let requestsPerImage: [EnclaveRequestMessage] = try images.indices.map { i in
      var r: EnclaveRequestMessage
      if plan.preprocessing.appliedIn == .enclave {
        r = EnclaveRequestMessage()
        r.image = try Data(contentsOf: URL(fileURLWithPath: images[i]))
      } else if sendTensor {
        r = EnclaveSession.request(tensor: inputs[i], top: 0)
      } else {
        r = EnclaveSession.request(pixels: cropped[i], top: 0)
      }
      r.wantLogits = true
      r.topK = 1
      return r
    }

    // The reference is computed; from here on each request allocates what the last one freed.
    allocateForSteadyState()
    let shared = Shared()
    let total = requests
    let n = clients
    let warm = warmup
    let gap = gapMs
    let tol = tolerance
    note("\(n) clients, \(total) requests (+\(warm) warm-up each) to \(ep)\(label.isEmpty ? "" : " [\(label)]")")
    let start = ContinuousClock.now
    let progress = Task {
      while !Task.isCancelled {
        try? await Task.sleep(for: .seconds(2))
        let (d, f) = shared.tally.withLock { ($0.done, $0.failed) }
        let l = replicas.tally.lost
        let s = (ContinuousClock.now - start).seconds
        note(String(format: "  %d/%d done, %d lost and retried, %d failed, %.1f req/s", d, total, l, f, Double(d) / max(s, 1e-9)))
      }
    }
    var measuredStart = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
      for c in 0..<n {
        let mine = Array(stride(from: c, to: total, by: n))
        group.addTask {
          try await replicas.withCaller { caller in
            for w in 0..<warm {
              let r = requestsPerImage[(c + w) % requestsPerImage.count]
              do { _ = try await caller.infer { _ in r } } catch {
                // Not measured, but not hidden either.
                shared.tally.withLock {
                  $0.warmupFailed += 1
                  if $0.errors.count < 5 { $0.errors.append("warm-up request of client \(c): \(error)") }
                }
              }
            }
            shared.ready.withLock { $0 += 1 }
            for k in mine {
              let i = k % requestsPerImage.count
              let request = requestsPerImage[i]
              if gap > 0 { try? await Task.sleep(for: .microseconds(Int(gap * 1000))) }
              let t0 = ContinuousClock.now
              do {
                let a = try await caller.infer { _ in request }
                let ms = (ContinuousClock.now - t0).seconds * 1000
                let ok = a.logits.map { Self.matches($0.scalars, references[i], tolerance: tol) } ?? false
                shared.tally.withLock {
                  $0.samples.append(Sample(
                      ms: ms, headMs: a.headMs, tailMs: a.tailMs, stages: Self.stages(of: a),
                      acceleratorTimed: a.stages?.hasTailComputeMs ?? false))
                  if !ok {
                    $0.wrong += 1
                    if $0.errors.count < 5 { $0.errors.append("request \(k) (\(images[i])): answer differs from the whole model") }
                  }
                  $0.done += 1
                }
              } catch {
                shared.tally.withLock {
                  $0.failed += 1
                  $0.done += 1
                  if $0.errors.count < 5 { $0.errors.append("request \(k): \(error)") }
                }
              }
            }
          }
        }
      }
      // The clock starts when every client has finished its warm-up.
      while shared.ready.withLock({ $0 }) < n {
        try await Task.sleep(for: .milliseconds(5))
      }
      measuredStart = ContinuousClock.now
      try await group.waitForAll()
    }
    let seconds = (ContinuousClock.now - measuredStart).seconds
    progress.cancel()
    let t = shared.tally.withLock { $0 }
    let r = replicas.tally
    let lat = t.samples.map(\.ms).sorted()
    func pct(_ p: Double) -> Double { percentile(lat, p) }
    let mean: ([Double]) -> Double = { $0.isEmpty ? 0 : $0.reduce(0, +) / Double($0.count) }
    var stages: [Stage]?
    let staged = t.samples.filter { $0.stages.count == Self.stages.count }
    if breakdown {
      if staged.isEmpty {
        note("--breakdown: the enclave reported no stages (an older enclave, or no request succeeded)")
      } else {
        let untimed = staged.filter { !$0.acceleratorTimed }.count
        if untimed > 0 {
          note(
            "--breakdown: the accelerator gave no account of its queue and tail for \(untimed) of \(staged.count) requests "
              + "(a KServe v2 server other than Veil's accelerator): their whole call is in the row of the wire and gRPC")
        }
        stages = Self.stages.indices.map { i in
          let v = staged.map { $0.stages[i] }.sorted()
          return Stage(stage: Self.stages[i].name, meanMs: mean(v), p50Ms: percentile(v, 0.5), p90Ms: percentile(v, 0.9))
        }
      }
    }
    let report = Report(
      label: label, endpoint: ep, model: plan.model.name, cut: plan.cut.name, clients: n, requests: total,
      ok: t.samples.count - t.wrong, wrong: t.wrong, lost: r.lost, retried: r.retried, failed: t.failed, warmupFailed: t.warmupFailed, replicas: r,
      seconds: seconds,
      throughput: Double(t.samples.count) / max(seconds, 1e-9), p50Ms: pct(0.5), p90Ms: pct(0.9), p99Ms: pct(0.99),
      meanHeadMs: mean(t.samples.map(\.headMs)), meanTailMs: mean(t.samples.map(\.tailMs)), firstErrors: t.errors,
      breakdown: stages)
    if json {
      try printJSON(report)
    } else {
      print(
        "\(report.label.isEmpty ? "" : "[\(report.label)] ")\(report.model) cut at \(report.cut), \(n) clients: "
          + "\(report.ok) ok, \(report.wrong) wrong, \(report.failed) failed of \(total); "
          + "\(report.lost) lost with an enclave replica, \(report.retried) of them sent again (warm-up included)"
          + (t.warmupFailed > 0 ? "; \(t.warmupFailed) warm-up requests failed" : ""))
      if r.sessions.count > 1 {
        let rows = r.sessions.keys.sorted().map { e in
          "\(e): \(r.sessions[e] ?? 0) sessions, \(r.answered[e] ?? 0) answered, \(r.lostAt[e] ?? 0) lost"
        }
        print("replicas: " + rows.joined(separator: "; "))
      }
      print(
        String(
          format: "throughput %.2f req/s over %.1f s; latency p50 %.1f ms, p90 %.1f ms, p99 %.1f ms; mean head %.1f ms, tail %.1f ms",
          report.throughput, seconds, report.p50Ms, report.p90Ms, report.p99Ms, report.meanHeadMs, report.meanTailMs))
      for e in t.errors { print("  \(e)") }
      if let stages {
        let total = stages.reduce(0) { $0 + $1.meanMs }
        let width = stages.map(\.stage.count).max() ?? 0
        print("where the time went (\(staged.count) requests; ms):")
        print("  \(pad("stage", width))      mean       p50       p90   share of mean")
        for s in stages {
          print(
            "  \(pad(s.stage, width))"
              + String(format: " %9.3f %9.3f %9.3f   %5.1f %%", s.meanMs, s.p50Ms, s.p90Ms, 100 * s.meanMs / max(total, 1e-9)))
        }
        print("  \(pad("sum of the means", width))" + String(format: " %9.3f", total))
      }
    }
    if t.wrong > 0 || t.failed > 0 { throw ExitCode(1) }
  }

  /// Same top class, and every logit within `tolerance` × max(1, largest |reference|).
  static func matches(_ a: [Float], _ ref: [Float], tolerance: Float) -> Bool {
    guard a.count == ref.count, !ref.isEmpty else { return false }
    let scale = max(1, ref.map(abs).max() ?? 1)
    var worst: Float = 0
    for i in a.indices { worst = max(worst, abs(a[i] - ref[i])) }
    return worst <= tolerance * scale && topK(a, 1).first?.index == topK(ref, 1).first?.index
  }
}
