import Dispatch
import Foundation
import Synchronization
import VeilGraph
import VeilTensor

/// What a tail answered, and which endpoint answered it.
public struct TailAnswer: Sendable {
  public var output: Tensor
  /// The endpoint that ran the tail (for a failover backend, the one that answered).
  public var endpoint: String
  /// Where the answer's time went, when the backend knows.
  public var timing: CallTiming?

  public init(output: Tensor, endpoint: String, timing: CallTiming? = nil) {
    self.output = output
    self.endpoint = endpoint
    self.timing = timing
  }
}

/// Where the enclave sends the feature map: something that runs the model's tail and answers
/// the logits. The KServe v2 client (any Triton / KServe / `veil accelerator serve` endpoint) is
/// the one deployments use; `LocalTailBackend` runs the tail in this process.
public protocol TailBackend: Sendable {
  /// Names the backend in logs, answers and errors ("in-process", "127.0.0.1:8001").
  var endpoint: String { get }
  /// Runs the tail on a batch-1 feature map: `inputs` is the map, or a quantised map's codes,
  /// minimum and step (`EncodedMap.tensors`) where the plan sends it encoded. Throws
  /// `EnclaveError.acceleratorUnavailable` when the endpoint cannot be reached (callers may fail
  /// over), `EnclaveError.accelerator` when it answered with an error or with a tensor the tail
  /// does not declare.
  func infer(_ inputs: [Tensor]) async throws -> TailAnswer
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
  private let inputShapes: [[Int]]
  private let queue = DispatchQueue(label: "veil.tail.local")

  public init(tail: Graph, endpoint: String = "in-process") throws {
    inputShapes = tail.inputs.map { tail.shape($0) ?? [] }
    executor = try Executor(graph: tail)
    self.endpoint = endpoint
  }

  public func infer(_ inputs: [Tensor]) async throws -> TailAnswer {
    guard inputs.map(\.shape) == inputShapes else {
      throw EnclaveError.accelerator(
        endpoint: endpoint, detail: "the tail takes \(inputShapes), the enclave sent \(inputs.map(\.shape))")
    }
    let executor = self.executor
    let t0 = DispatchTime.now()
    let output = try await runBlocking(on: queue) { try executor.run(inputs)[0] }
    let ran = ms(t0, DispatchTime.now())
    return TailAnswer(
      output: output, endpoint: endpoint,
      timing: CallTiming(encodeMs: 0, callMs: ran, decodeMs: 0, server: KServeServerTiming(queueMs: 0, computeMs: ran)))
  }
}

/// Which of several endpoints are in their back-off after a failure: an endpoint that could not
/// be reached is skipped for `retryAfter` seconds, then tried again. Shared by the enclave's
/// accelerator failover (`FailoverBackend`) and the client's enclave replicas
/// (`EnclaveReplicas`).
public final class EndpointBackoff: Sendable {
  public let count: Int
  public let retryAfter: Double
  private let clock: any ServiceClock
  private let downUntil: Mutex<[Double]>

  public init(count: Int, retryAfter: Double, clock: any ServiceClock = SystemClock()) {
    self.count = count
    self.retryAfter = retryAfter
    self.clock = clock
    downUntil = Mutex([Double](repeating: -Double.infinity, count: count))
  }

  /// The order to try the endpoints in: those not in their back-off first, from `start` on
  /// (wrapping around), then those in it, so that a request still goes somewhere when all are.
  public func order(startingAt start: Int = 0) -> [Int] {
    let now = clock.now()
    let d = downUntil.withLock { $0 }
    let rotated = (0..<count).map { (start + $0) % count }
    return rotated.filter { d[$0] <= now } + rotated.filter { d[$0] > now }
  }

  public func markDown(_ i: Int) {
    let until = clock.now() + retryAfter
    downUntil.withLock { $0[i] = until }
  }

  public func markUp(_ i: Int) { downUntil.withLock { $0[i] = -Double.infinity } }

  /// The endpoints in their back-off now.
  public var down: [Int] {
    let now = clock.now()
    let d = downUntil.withLock { $0 }
    return (0..<count).filter { d[$0] > now }
  }
}

/// Several endpoints serving the same tail: a request goes to the first endpoint that is not
/// marked down; an endpoint that cannot be reached is marked down for `retryAfter` seconds and
/// the request moves on to the next one. When every endpoint is down, each is tried again, so
/// the enclave recovers as soon as any accelerator returns.
public final class FailoverBackend: TailBackend {
  public let backends: [any TailBackend]
  public var retryAfter: Double { backoff.retryAfter }
  private let backoff: EndpointBackoff

  public var endpoint: String { backends.map(\.endpoint).joined(separator: ",") }

  public init(_ backends: [any TailBackend], retryAfter: Double = 2, clock: any ServiceClock = SystemClock()) {
    precondition(!backends.isEmpty, "FailoverBackend needs at least one endpoint")
    self.backends = backends
    backoff = EndpointBackoff(count: backends.count, retryAfter: retryAfter, clock: clock)
  }

  /// Which endpoints are marked down now (for metrics and tests).
  public var down: [String] { backoff.down.map { backends[$0].endpoint } }

  public func infer(_ inputs: [Tensor]) async throws -> TailAnswer {
    // Up endpoints in configured order first, then the ones in their back-off.
    var failures: [String] = []
    for i in backoff.order() {
      try Task.checkCancellation()
      do {
        let y = try await backends[i].infer(inputs)
        backoff.markUp(i)
        return y
      } catch let e as EnclaveError {
        guard case .acceleratorUnavailable(let why) = e else { throw e }
        backoff.markDown(i)
        failures.append(why)
      }
    }
    throw EnclaveError.acceleratorUnavailable(
      failures.joined(separator: "; ") + " (start the accelerator or pass another with --accelerator)")
  }
}
