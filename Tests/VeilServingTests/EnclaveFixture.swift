import Crypto
import Foundation
import GRPCCore
import Logging
import Synchronization
import VeilData
import VeilGraph
import VeilModels
import VeilServing
import VeilTEE
import VeilTensor
import XCTest

/// A MobileNetV2 (seeded weights) cut at features.7, written as a plan folder once per test
/// process, and the pieces the enclave tests share: simulated evidence, policies, photos.
enum EnclaveFixture {
  static let model = "mobilenet_v2"
  static let cut = "features.7"

  private static let cache = Mutex<[String: LoadedPlan]>([:])

  /// The plan folder for `site` (client or enclave preprocessing).
  static func plan(_ site: DeploymentPlan.PreprocessingSite = .client) throws -> LoadedPlan {
    if let p = cache.withLock({ $0[site.rawValue] }) { return p }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
      "veil-enclave-fixture-\(getpid())-\(site.rawValue)")
    let p = try DeploymentPlan.write(
      model: try ModelZoo.build(model, batch: 1, seed: 0), name: model, cut: cut,
      preprocessing: .init(preset: "imagenet", appliedIn: site), labels: (0..<1000).map { "class \($0)" }, to: dir)
    cache.withLock { $0[site.rawValue] = p }
    return p
  }

  /// The whole model's logits on `x`, run directly.
  static func reference(_ x: Tensor) throws -> [Float] {
    try Executor(graph: try ModelZoo.build(model, batch: 1, seed: 0)).run([x])[0].scalars
  }

  static let simulation = SimulatedEnclave(
    binaryDigest: Array(SHA256.hash(data: Data("veil enclave tests".utf8))),
    headDigest: Array(SHA256.hash(data: Data("mobilenet_v2 head".utf8))))

  static func verifier(allowSimulation: Bool = true, mrEnclave: [UInt8]? = simulation.mrEnclave) throws
    -> AttestationVerifier
  {
    var p = Policy()
    p.allowSimulation = allowSimulation
    p.allowDebug = allowSimulation
    p.mrEnclave = mrEnclave
    return AttestationVerifier(dcap: try DCAPVerifier(collateral: nil, time: Date()), policy: p)
  }

  /// A 320×240 RGB photo with structure (gradients and a disc), PNG-encoded.
  static func photo(seed: Int = 0) throws -> Data {
    let w = 320
    let h = 240
    var pixels = [UInt8](repeating: 0, count: w * h * 3)
    for y in 0..<h {
      for x in 0..<w {
        let i = (y * w + x) * 3
        let inDisc = (x - 160 - seed * 7) * (x - 160 - seed * 7) + (y - 120) * (y - 120) < 70 * 70
        pixels[i] = UInt8((x * 255 / w + seed * 40) % 256)
        pixels[i + 1] = UInt8(y * 255 / h)
        pixels[i + 2] = inDisc ? 230 : UInt8((x + y + seed * 13) % 256)
      }
    }
    return try ImageCodec.encodePNG(ByteImage(width: w, height: h, channels: 3, pixels: pixels))
  }

  /// The plan's input tensor for a photo, preprocessed as a client would.
  static func input(_ png: Data, plan: DeploymentPlan) throws -> Tensor {
    let d = try ImageCodec.decode(png, name: "test photo")
    return try plan.imagePreprocessing.tensor(d.byteImage().oriented(exif: d.orientation))
  }

  /// Sends `request` and expects an invalid-input answer whose message names `naming`.
  static func expectRefusal(_ session: EnclaveSession, _ request: EnclaveRequestMessage, _ what: String, naming: String) async throws {
    do {
      _ = try await session.infer(request)
      XCTFail("\(what) accepted")
    } catch EnclaveError.remote(let kind, let message) {
      XCTAssertEqual(kind, .invalidInput, what)
      XCTAssertTrue(message.contains(naming), "\(what): \(message)")
    }
  }

  /// Largest logit difference relative to max(1, largest |reference|).
  static func relativeError(_ a: [Float], _ ref: [Float]) -> Float {
    let scale = max(1, ref.map(abs).max() ?? 1)
    return zip(a, ref).map { abs($0 - $1) }.max().map { $0 / scale } ?? .infinity
  }
}

/// Collects every log line a service writes, to check what it never writes.
final class CapturedLogs: @unchecked Sendable {
  private let lock = NSLock()
  private var lines: [String] = []

  var text: String { lock.withLock { lines.joined(separator: "\n") } }

  func append(_ s: String) { lock.withLock { lines.append(s) } }

  var logger: Logger {
    var l = Logger(label: "veil.enclave.test") { _ in CapturingHandler(sink: self) }
    l.logLevel = .trace
    return l
  }

  struct CapturingHandler: LogHandler {
    let sink: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
      get { metadata[key] }
      set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
      sink.append("\(event.level) \(event.message) \(metadata.merging(event.metadata ?? [:]) { $1 })")
    }
  }
}

/// An enclave server on a free loopback port for the duration of `body`.
func withEnclave<R: Sendable>(
  plan: LoadedPlan, backend: (any TailBackend)? = nil, configuration: EnclaveConfiguration = .init(),
  connections: ConnectionLimits = .init(), imageLimits: ImageLimits = .init(), clock: any ServiceClock = SystemClock(),
  logs: CapturedLogs? = nil, _ body: @Sendable (EnclaveServer, Endpoint) async throws -> R
) async throws -> R {
  let tail = try backend ?? LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail"))
  let engine = try EnclaveEngine(plan: plan, backend: tail, imageLimits: imageLimits)
  let server = try EnclaveServer(
    config: EnclaveServerConfig(port: 0, limits: configuration, connections: connections), engine: engine,
    provider: SimulatedProvider(enclave: EnclaveFixture.simulation),
    logger: logs?.logger ?? Logger(label: "veil.enclave.test") { _ in SwiftLogNoOpLogHandler() }, clock: clock)
  return try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await server.run() }
    let port = try await server.port()
    do {
      let r = try await body(server, Endpoint(host: "127.0.0.1", port: port))
      server.beginGracefulShutdown()
      group.cancelAll()
      return r
    } catch {
      server.beginGracefulShutdown()
      group.cancelAll()
      throw error
    }
  }
}

/// The gRPC status code of an error, when it is an RPCError.
func rpcCode(_ error: Error) -> RPCError.Code? { (error as? RPCError)?.code }

/// Runs `body`, which must fail with one of `codes`; `what` says what it must not do.
func expectRPCError(
  _ codes: [RPCError.Code], _ what: String, file: StaticString = #filePath, line: UInt = #line,
  _ body: () async throws -> Void
) async {
  do {
    try await body()
    XCTFail(what, file: file, line: line)
  } catch {
    XCTAssertTrue(rpcCode(error).map(codes.contains) == true, "\(what): \(error)", file: file, line: line)
  }
}
