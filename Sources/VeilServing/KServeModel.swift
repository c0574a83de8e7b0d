// One model version of the accelerator service and its scheduler: the graph, what it declares
// over the protocol, one compiled executor per batch size, and a bounded queue whose worker
// thread gathers requests into batches (dynamic batching), runs them and hands each request its
// own rows back. Compute runs on that thread, never on the Swift concurrency pool, so that the
// gRPC handlers stay responsive while a batch runs.
import Foundation
import GRPCCore
import VeilGraph
import VeilTensor

/// Dynamic batching and queueing of one model version.
public struct KServeBatching: Sendable, Equatable {
  /// The most rows (sum of request batch sizes) one run takes; 1 turns dynamic batching off.
  /// A single request larger than this still runs, alone.
  public var maxBatchSize: Int
  /// How long the first request of a batch may wait for others before the batch runs.
  public var maxQueueDelay: Duration
  /// Requests waiting (not running) beyond which new ones are refused with RESOURCE_EXHAUSTED.
  public var queueCapacity: Int

  public init(maxBatchSize: Int = 1, maxQueueDelay: Duration = .milliseconds(2), queueCapacity: Int = 64) {
    self.maxBatchSize = maxBatchSize
    self.maxQueueDelay = maxQueueDelay
    self.queueCapacity = queueCapacity
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
  let scheduler: KServeScheduler

  /// Checks the graph (FP32 inputs with known shapes, shapes that infer), compiles it at its own
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
      ins.append(KServeTensorMetadata(name: probe[v].name, datatype: KServeCodec.fp32, shape: s))
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
    self.batching = batching
    scheduler = try KServeScheduler(
      model: spec.name, version: spec.version, graph: spec.graph, batches: batches, batching: batching, metrics: metrics)
  }

  /// Compiles the executors of batch sizes 1…maxBatchSize now rather than at first use.
  public func precompile() throws {
    for n in 1...batching.maxBatchSize { _ = try scheduler.executor(batch: n) }
  }

  /// Runs `inputs` (in the order of `inputs` metadata, batch first) through the queue. Throws
  /// RPCError RESOURCE_EXHAUSTED when the queue is full, DEADLINE_EXCEEDED when `deadline`
  /// (uptime nanoseconds) passes before the run starts, UNAVAILABLE after shutdown.
  public func infer(_ inputs: [Tensor], deadline: UInt64? = nil) async throws -> [Tensor] {
    try await scheduler.submit(inputs, deadline: deadline)
  }

  /// Stops taking requests, finishes the queued ones, and ends the worker thread.
  public func shutdown() {
    scheduler.shutdown()
  }

  /// Requests waiting now.
  public var queueDepth: Int { scheduler.depth }

  /// Runs so far and the rows they took (mean batch = rows / batches).
  public var statistics: (batches: Int, rows: Int) { scheduler.statistics }
}

/// The bounded queue and worker thread of one model version. Only the worker touches the
/// executors; the queue's state is guarded by `condition`.
final class KServeScheduler: @unchecked Sendable {
  private final class Job {
    let id: Int
    let inputs: [Tensor]
    let rows: Int
    let deadline: UInt64?
    let enqueued: UInt64
    let continuation: CheckedContinuation<[Tensor], any Error>
    init(id: Int, inputs: [Tensor], rows: Int, deadline: UInt64?, enqueued: UInt64, continuation: CheckedContinuation<[Tensor], any Error>) {
      self.id = id
      self.inputs = inputs
      self.rows = rows
      self.deadline = deadline
      self.enqueued = enqueued
      self.continuation = continuation
    }
  }

  /// A request's place in the queue, read and written under `condition` only.
  private final class Ticket: @unchecked Sendable {
    var id = -1
    var cancelled = false
  }

  let model: String
  let version: String
  private let graph: Graph
  private let batches: Bool
  private let batching: KServeBatching
  private let metrics: AcceleratorMetrics?
  private let condition = NSCondition()
  private var queue: [Job] = []
  private var nextID = 0
  private var stopping = false
  private var finished = false
  private var batchesRun = 0
  private var rowsRun = 0
  private var executors: [Int: Executor] = [:]
  private let executorLock = NSLock()
  private var thread: Thread?

  init(
    model: String, version: String, graph: Graph, batches: Bool, batching: KServeBatching, metrics: AcceleratorMetrics?
  ) throws {
    self.model = model
    self.version = version
    self.graph = graph
    self.batches = batches
    self.batching = batching
    self.metrics = metrics
    _ = try executor(batch: 1)
    let t = Thread { [unowned self] in self.work() }
    t.name = "veil-kserve-\(model)-\(version)"
    thread = t
    t.start()
  }

  var statistics: (batches: Int, rows: Int) {
    condition.lock()
    defer { condition.unlock() }
    return (batchesRun, rowsRun)
  }

  var depth: Int {
    condition.lock()
    defer { condition.unlock() }
    return queue.count
  }

  /// The executor for `batch` rows, compiled on first use.
  func executor(batch: Int) throws -> Executor {
    executorLock.lock()
    defer { executorLock.unlock() }
    if let e = executors[batch] { return e }
    let e = try Executor(graph: batch == 1 || !batches ? graph : graph.withBatch(batch))
    executors[batch] = e
    return e
  }

  func submit(_ inputs: [Tensor], deadline: UInt64?) async throws -> [Tensor] {
    let rows = batches ? (inputs.first?.shape.first ?? 1) : 1
    let ticket = Ticket()
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<[Tensor], any Error>) in
        condition.lock()
        if ticket.cancelled {
          condition.unlock()
          c.resume(throwing: RPCError(code: .cancelled, message: "the request was cancelled before it was queued"))
          return
        }
        if stopping {
          condition.unlock()
          c.resume(throwing: RPCError(code: .unavailable, message: "model '\(model)' version \(version) is shutting down"))
          return
        }
        if queue.count >= batching.queueCapacity {
          let n = queue.count
          condition.unlock()
          metrics?.rejected(model: model)
          c.resume(
            throwing: RPCError(
              code: .resourceExhausted,
              message: "the queue of model '\(model)' version \(version) is full (\(n) requests waiting, capacity \(batching.queueCapacity)); retry later"
            ))
          return
        }
        nextID += 1
        ticket.id = nextID
        queue.append(Job(id: nextID, inputs: inputs, rows: rows, deadline: deadline, enqueued: DispatchTime.now().uptimeNanoseconds, continuation: c))
        metrics?.queueDepth(model: model, queue.count)
        condition.signal()
        condition.unlock()
      }
    } onCancel: {
      // A cancelled request (client gone or its deadline passed) leaves the queue unrun.
      condition.lock()
      ticket.cancelled = true
      if let i = queue.firstIndex(where: { $0.id == ticket.id }) {
        let job = queue.remove(at: i)
        metrics?.queueDepth(model: model, queue.count)
        condition.unlock()
        let expired = job.deadline.map { DispatchTime.now().uptimeNanoseconds >= $0 } ?? false
        job.continuation.resume(
          throwing: expired
            ? RPCError(code: .deadlineExceeded, message: "the deadline passed while the request waited in the queue; it was not run")
            : RPCError(code: .cancelled, message: "the request was cancelled while it waited in the queue; it was not run"))
      } else {
        condition.unlock()
      }
    }
  }

  func shutdown() {
    condition.lock()
    stopping = true
    condition.broadcast()
    while !finished { condition.wait() }
    condition.unlock()
  }

  /// The worker: waits for a first request, lets others join until the batch is full or the
  /// first has waited `maxQueueDelay`, drops the expired, runs the rest as one batch.
  private func work() {
    let delayNanos = UInt64(max(0, batching.maxQueueDelay.components.seconds)) * 1_000_000_000
      + UInt64(max(0, batching.maxQueueDelay.components.attoseconds / 1_000_000_000))
    while true {
      condition.lock()
      while queue.isEmpty && !stopping { condition.wait() }
      if queue.isEmpty && stopping {
        finished = true
        condition.broadcast()
        condition.unlock()
        return
      }
      if batching.maxBatchSize > 1 {
        let until = queue[0].enqueued + delayNanos
        while !stopping, !queue.isEmpty, queue.reduce(0, { $0 + $1.rows }) < batching.maxBatchSize {
          let now = DispatchTime.now().uptimeNanoseconds
          if now >= until { break }
          _ = condition.wait(until: Date(timeIntervalSinceNow: Double(until - now) / 1e9))
        }
      }
      let now = DispatchTime.now().uptimeNanoseconds
      var taken: [Job] = []
      var expired: [Job] = []
      var rows = 0
      var kept: [Job] = []
      for job in queue {
        if let d = job.deadline, now >= d {
          expired.append(job)
        } else if taken.isEmpty || (rows + job.rows <= batching.maxBatchSize && batches) {
          taken.append(job)
          rows += job.rows
        } else {
          kept.append(job)
        }
      }
      queue = kept
      metrics?.queueDepth(model: model, queue.count)
      condition.unlock()
      for job in expired {
        metrics?.expired(model: model)
        job.continuation.resume(
          throwing: RPCError(code: .deadlineExceeded, message: "the deadline passed while the request waited in the queue; it was not run"))
      }
      if !taken.isEmpty {
        condition.lock()
        batchesRun += 1
        rowsRun += rows
        condition.unlock()
        run(taken, rows: rows)
      }
    }
  }

  private func run(_ jobs: [Job], rows: Int) {
    do {
      let outputs: [Tensor]
      if jobs.count == 1 {
        outputs = try executor(batch: batches ? rows : 1).run(jobs[0].inputs)
        metrics?.batch(model: model, rows: rows)
        jobs[0].continuation.resume(returning: outputs)
        return
      }
      let inputs = try jobs[0].inputs.indices.map { i in try Self.concatenate(jobs.map { $0.inputs[i] }) }
      outputs = try executor(batch: rows).run(inputs)
      metrics?.batch(model: model, rows: rows)
      var offset = 0
      for job in jobs {
        job.continuation.resume(returning: outputs.map { Self.rows($0, from: offset, count: job.rows) })
        offset += job.rows
      }
    } catch {
      let message = "model '\(model)' version \(version) failed on a batch of \(rows): \(error)"
      for job in jobs { job.continuation.resume(throwing: RPCError(code: .internalError, message: message)) }
    }
  }

  /// Tensors stacked along the first dimension (all other dimensions equal, checked upstream).
  static func concatenate(_ parts: [Tensor]) throws -> Tensor {
    guard var shape = parts.first?.shape else { throw AcceleratorError.badRequest("empty batch") }
    shape[0] = parts.reduce(0) { $0 + $1.shape[0] }
    return Tensor(shape: shape) { out in
      var at = 0
      for p in parts {
        p.withUnsafeBuffer { src in
          if src.count > 0 { (out.baseAddress! + at).update(from: src.baseAddress!, count: src.count) }
          at += src.count
        }
      }
    }
  }

  /// Rows `from..<from+count` of `t` along the first dimension.
  static func rows(_ t: Tensor, from: Int, count: Int) -> Tensor {
    var shape = t.shape
    let per = shape.dropFirst().reduce(1, *)
    shape[0] = count
    return Tensor(shape: shape) { out in
      t.withUnsafeBuffer { src in
        if out.count > 0 { out.baseAddress!.update(from: src.baseAddress! + from * per, count: count * per) }
      }
    }
  }
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
