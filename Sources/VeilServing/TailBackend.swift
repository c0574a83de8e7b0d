import Dispatch
import Foundation
import Synchronization
import VeilGraph
import VeilTensor

/// Where the enclave sends the feature map: something that runs the model's tail and answers
/// the logits. The KServe v2 client (any Triton / KServe / `veil accelerator serve` endpoint) is
/// the one deployments use; `LocalTailBackend` runs the tail in this process.
public protocol TailBackend: Sendable {
  /// Names the backend in logs, answers and errors ("in-process", "127.0.0.1:8001").
  var endpoint: String { get }
  /// Runs the tail on a batch-1 feature map. Throws `EnclaveError.acceleratorUnavailable` when
  /// the endpoint cannot be reached (callers may fail over), `EnclaveError.accelerator` when it
  /// answered with an error.
  func infer(_ features: Tensor) async throws -> Tensor
}

/// Runs blocking engine work on a Dispatch queue, so that a long forward pass does not hold
/// one of the few threads of Swift's cooperative pool that the gRPC handlers need.
public func runBlocking<T: Sendable>(
  on queue: DispatchQueue, _ body: @escaping @Sendable () throws -> T
) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    queue.async { continuation.resume(with: Result { try body() }) }
  }
}

/// The tail run by Veil's engine in this process: a real backend for tests, demos, and
/// deployments without an accelerator. Requests run one at a time (the executor's lock).
public final class LocalTailBackend: TailBackend {
  public let endpoint: String
  private let executor: Executor
  private let inputShape: [Int]
  private let queue = DispatchQueue(label: "veil.tail.local")

  public init(tail: Graph, endpoint: String = "in-process") throws {
    inputShape = tail.inputs.first.flatMap { tail.shape($0) } ?? []
    executor = try Executor(graph: tail)
    self.endpoint = endpoint
  }

  public func infer(_ features: Tensor) async throws -> Tensor {
    guard features.shape == inputShape else {
      throw EnclaveError.accelerator(
        endpoint: endpoint, detail: "the tail takes \(inputShape), the feature map is \(features.shape)")
    }
    let executor = self.executor
    return try await runBlocking(on: queue) { try executor.run([features])[0] }
  }
}

/// Several endpoints serving the same tail: a request goes to the first endpoint that is not
/// marked down; an endpoint that cannot be reached is marked down for `retryAfter` seconds and
/// the request moves on to the next one. When every endpoint is down, each is tried again, so
/// the enclave recovers as soon as any accelerator returns.
public final class FailoverBackend: TailBackend {
  public let backends: [any TailBackend]
  public let retryAfter: Double
  private let downUntil: Mutex<[Double]>

  public var endpoint: String { backends.map(\.endpoint).joined(separator: ",") }

  public init(_ backends: [any TailBackend], retryAfter: Double = 2) {
    precondition(!backends.isEmpty, "FailoverBackend needs at least one endpoint")
    self.backends = backends
    self.retryAfter = retryAfter
    downUntil = Mutex([Double](repeating: 0, count: backends.count))
  }

  /// Which endpoints are marked down now (for metrics and tests).
  public var down: [String] {
    let now = Date().timeIntervalSinceReferenceDate
    let d = downUntil.withLock { $0 }
    return backends.indices.filter { d[$0] > now }.map { backends[$0].endpoint }
  }

  /// The endpoint that answered, with its answer.
  public func inferReporting(_ features: Tensor) async throws -> (Tensor, endpoint: String) {
    let now = Date().timeIntervalSinceReferenceDate
    let d = downUntil.withLock { $0 }
    // Up endpoints in configured order first, then the ones in their back-off.
    let order = backends.indices.filter { d[$0] <= now } + backends.indices.filter { d[$0] > now }
    var failures: [String] = []
    for i in order {
      try Task.checkCancellation()
      do {
        let y = try await backends[i].infer(features)
        downUntil.withLock { $0[i] = 0 }
        return (y, backends[i].endpoint)
      } catch let e as EnclaveError {
        guard case .acceleratorUnavailable(let why) = e else { throw e }
        downUntil.withLock { $0[i] = Date().timeIntervalSinceReferenceDate + retryAfter }
        failures.append(why)
      }
    }
    throw EnclaveError.acceleratorUnavailable(
      failures.joined(separator: "; ") + " (start the accelerator or pass another with --accelerator)")
  }

  public func infer(_ features: Tensor) async throws -> Tensor {
    try await inferReporting(features).0
  }
}
