// One model version of the accelerator service: the graph, what it declares over the protocol,
// and the batching scheduler (BatchScheduler.swift) that runs it.
import Foundation
import VeilGraph
import VeilTensor

/// Dynamic batching and queueing of one model version.
public struct KServeBatching: Sendable, Equatable {
  /// The most rows (sum of request batch sizes) one run takes; 1 turns dynamic batching off.
  /// It is also the largest batch one request may carry: a larger one is refused, so a client
  /// cannot make the server compile an executor for every batch size it likes.
  public var maxBatchSize: Int
  /// How long the first request of a batch may wait for others before the batch runs.
  public var maxQueueDelay: Duration
  /// Whether a request that finds the model idle waits `maxQueueDelay` for company (Triton's
  /// dynamic batcher does). Off by default: a request waits only under load (requests arrived
  /// while the previous batch ran, or several wait), so a lone request runs at once.
  public var waitsWhenIdle: Bool
  /// Requests waiting (not running) beyond which new ones are refused with RESOURCE_EXHAUSTED.
  public var queueCapacity: Int
  /// Compiled executors kept (one per batch size, least recently used dropped first): each holds
  /// its own activation buffers, so their memory grows with every batch size kept.
  public var executorCacheCapacity: Int

  public init(
    maxBatchSize: Int = 1, maxQueueDelay: Duration = .milliseconds(2), queueCapacity: Int = 64, executorCacheCapacity: Int = 8,
    waitsWhenIdle: Bool = false
  ) {
    self.maxBatchSize = maxBatchSize
    self.maxQueueDelay = maxQueueDelay
    self.waitsWhenIdle = waitsWhenIdle
    self.queueCapacity = queueCapacity
    self.executorCacheCapacity = executorCacheCapacity
  }

  /// No dynamic batching: each request runs on its own.
  public static let off = KServeBatching(maxBatchSize: 1, maxQueueDelay: .zero)
}

/// A model version to serve: a name, a version string and the graph that computes it.
public struct KServeModelSpec: Sendable {
  public var name: String
  public var version: String
  public var graph: Graph
  public var batching: KServeBatching

  public init(name: String, version: String = "1", graph: Graph, batching: KServeBatching = .off) {
    self.name = name
    self.version = version
    self.graph = graph
    self.batching = batching
  }
}

/// A model version loaded by the accelerator service.
public final class KServeModel: Sendable {
  public let name: String
  public let version: String
  /// What ModelMetadata answers; the batch dimension is -1 when the model batches.
  public let inputs: [KServeTensorMetadata]
  public let outputs: [KServeTensorMetadata]
  /// Whether the graph runs at any batch size (its shapes re-infer at batch 2). A model that
  /// does not batches neither dynamically nor per request: its shapes are fixed.
  public let batches: Bool
  public let batching: KServeBatching
  let scheduler: BatchScheduler

  /// Checks the graph (FP32 inputs, or UINT8 / UINT16 codes, with known shapes; shapes that infer), compiles it at its own
  /// batch size, and starts the scheduler's worker thread.
  public init(_ spec: KServeModelSpec, metrics: AcceleratorMetrics? = nil) throws {
    name = spec.name
    version = spec.version
    var probe = spec.graph
    try probe.inferShapes()
    var ins: [KServeTensorMetadata] = []
    for v in probe.inputs {
      guard let s = probe.shape(v), !s.isEmpty else {
        throw AcceleratorError.badModel(name: spec.name, detail: "input '\(probe[v].name)' has no known shape")
      }
      // An input marked as integer codes (a quantised map's) is declared with its type.
      let type = try WireIntegerType.of(input: probe[v].name, in: probe)
      ins.append(KServeTensorMetadata(name: probe[v].name, datatype: type?.rawValue ?? KServeCodec.fp32, shape: s))
    }
    var outs: [KServeTensorMetadata] = []
    for v in probe.outputs {
      guard let s = probe.shape(v), !s.isEmpty else {
        throw AcceleratorError.badModel(name: spec.name, detail: "output '\(probe[v].name)' has no known shape")
      }
      outs.append(KServeTensorMetadata(name: probe[v].name, datatype: KServeCodec.fp32, shape: s))
    }
    // A graph batches when every input and output has the batch as its first dimension: at
    // batch 1 all lead with 1, and re-inferred at batch 2 all lead with 2.
    var batches = ins.allSatisfy { $0.shape[0] == 1 } && outs.allSatisfy { $0.shape[0] == 1 }
    if batches, let g2 = try? spec.graph.withBatch(2) {
      batches = g2.outputs.allSatisfy { g2.shape($0)?.first == 2 }
    } else {
      batches = false
    }
    self.batches = batches
    if batches {
      for i in ins.indices { ins[i].shape[0] = -1 }
      for i in outs.indices { outs[i].shape[0] = -1 }
    }
    inputs = ins
    outputs = outs
    var batching = spec.batching
    if !batches { batching.maxBatchSize = 1 }
    batching.maxBatchSize = max(1, batching.maxBatchSize)
    batching.queueCapacity = max(1, batching.queueCapacity)
    batching.executorCacheCapacity = max(1, batching.executorCacheCapacity)
    self.batching = batching
    scheduler = try BatchScheduler(
      model: spec.name, version: spec.version, graph: spec.graph, batches: batches, batching: batching, metrics: metrics)
  }

  /// Compiles the executors of batch sizes 1…maxBatchSize now rather than at first use, as many
  /// of them (smallest first) as the executor cache keeps.
  public func precompile() throws {
    for n in 1...min(batching.maxBatchSize, batching.executorCacheCapacity) { _ = try scheduler.executor(batch: n) }
  }

  /// The batch sizes whose executors are cached now, and how many executors were compiled in all.
  public var executorCache: (sizes: [Int], compiled: Int) { scheduler.executorCache }

  /// Runs `inputs` (in the order of `inputs` metadata, batch first) through the queue. Throws
  /// `SchedulerError`: `queueFull`, `deadlineExceeded` when `deadline` (uptime nanoseconds)
  /// passes before the run starts, `batchTooLarge`, `shuttingDown`, `cancelled`, `runFailed`.
  public func infer(_ inputs: [Tensor], deadline: UInt64? = nil) async throws -> [Tensor] {
    try await scheduler.submit(inputs, deadline: deadline).outputs
  }

  /// `infer`, with the time the request waited in the queue and the time its run took.
  public func timedInfer(_ inputs: [Tensor], deadline: UInt64? = nil) async throws -> ScheduledRun {
    try await scheduler.submit(inputs, deadline: deadline)
  }

  /// Stops taking requests, finishes the queued ones, and ends the worker thread.
  public func shutdown() {
    scheduler.shutdown()
  }

  /// Requests waiting now.
  public var queueDepth: Int { scheduler.depth }
  /// Requests this model has accepted so far (waiting, running or answered).
  public var acceptedRequests: Int { scheduler.accepted }

  /// Runs so far and the rows they took (mean batch = rows / batches).
  public var statistics: (batches: Int, rows: Int) { scheduler.statistics }
}

/// Errors of the accelerator service's setup (the per-request errors are gRPC statuses).
public enum AcceleratorError: Error, CustomStringConvertible, Equatable {
  case badModel(name: String, detail: String)
  case duplicateModel(name: String, version: String)
  case badRequest(String)
  case badOption(String)

  public var description: String {
    switch self {
    case .badModel(let name, let detail): return "model '\(name)' cannot be served: \(detail)"
    case .duplicateModel(let name, let version):
      return "model '\(name)' version \(version) is given twice; give each NAME=PATH:VERSION once"
    case .badRequest(let detail): return "bad request: \(detail)"
    case .badOption(let detail): return detail
    }
  }
}
