// The batching scheduler behind a served model (the accelerator's tails, the enclave's batched
// head): a bounded queue whose worker thread gathers requests into batches, runs them on a
// bounded cache of compiled executors (one per batch size, least recently used evicted) and
// hands each request its own rows back. It knows nothing of gRPC: it throws `SchedulerError`,
// which each service maps to its own protocol at its edge. Compute runs on the worker thread,
// never on the Swift concurrency pool, so that the handlers stay responsive while a batch runs.
import Foundation
import VeilGraph
import VeilTensor

/// Why the scheduler did not answer a request with its outputs.
public enum SchedulerError: Error, CustomStringConvertible, Sendable, Equatable {
  /// The queue already holds `capacity` waiting requests.
  case queueFull(model: String, version: String, waiting: Int, capacity: Int)
  /// The request's deadline passed while it waited; it was not run.
  case deadlineExceeded(model: String, version: String)
  /// The request was cancelled (its caller went away) while it waited; it was not run.
  case cancelled(model: String, version: String)
  /// The model is shutting down and takes no new requests.
  case shuttingDown(model: String, version: String)
  /// The request has more rows than one run takes.
  case batchTooLarge(model: String, version: String, rows: Int, max: Int)
  /// The run failed.
  case runFailed(model: String, version: String, rows: Int, detail: String)

  public var description: String {
    switch self {
    case .queueFull(let m, let v, let n, let c):
      "the queue of model '\(m)' version \(v) is full (\(n) requests waiting, capacity \(c)); retry later"
    case .deadlineExceeded(let m, let v):
      "model '\(m)' version \(v): the deadline passed while the request waited in the queue; it was not run"
    case .cancelled(let m, let v):
      "model '\(m)' version \(v): the request was cancelled while it waited in the queue; it was not run"
    case .shuttingDown(let m, let v): "model '\(m)' version \(v) is shutting down"
    case .batchTooLarge(let m, let v, let rows, let max):
      "model '\(m)' version \(v): a request of \(rows) rows exceeds the most one run takes (\(max))"
    case .runFailed(let m, let v, let rows, let detail):
      "model '\(m)' version \(v) failed on a batch of \(rows): \(detail)"
    }
  }
}

/// A request's answer from the scheduler: its outputs, and where its time went on the worker.
public struct ScheduledRun: Sendable {
  public var outputs: [Tensor]
  /// From the request's arrival in the queue to the start of the run that took it, ms.
  public var queueMs: Double
  /// That run (compiling an executor for a new batch size included), ms: shared with the other
  /// requests of its batch.
  public var computeMs: Double
}

/// The bounded queue and worker thread of one model version. Only the worker runs the
/// executors; the queue's state is guarded by `condition`, the executor cache by its lock.
final class BatchScheduler: @unchecked Sendable {
  private final class Job {
    let id: Int
    let inputs: [Tensor]
    let rows: Int
    let deadline: UInt64?
    let enqueued: UInt64
    let continuation: CheckedContinuation<ScheduledRun, any Error>
    init(
      id: Int, inputs: [Tensor], rows: Int, deadline: UInt64?, enqueued: UInt64,
      continuation: CheckedContinuation<ScheduledRun, any Error>
    ) {
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
  /// Whether the worker is running a batch now, and how many requests arrived while it did:
  /// requests that arrive while the model is busy are the sign that company is coming.
  private var running = false
  private var arrivedWhileRunning = 0
  /// Compiled executors by batch size, with the tick of their last use.
  private var executors: [Int: (executor: Executor, used: UInt64)] = [:]
  private var tick: UInt64 = 0
  private var compiled = 0
  private let executorLock = NSLock()
  /// One working buffer for the executors of every batch size: the worker runs one batch at a
  /// time, and with Winograd each batch size's executor needs scratch in proportion to it.
  let workingMemory = SharedWorkingMemory()
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

  /// Requests ever accepted into the queue (waiting, running or done).
  var accepted: Int {
    condition.lock()
    defer { condition.unlock() }
    return nextID
  }

  var depth: Int {
    condition.lock()
    defer { condition.unlock() }
    return queue.count
  }

  /// The batch sizes whose executors are cached now, and how many executors were compiled in all.
  var executorCache: (sizes: [Int], compiled: Int) {
    executorLock.withLock { (executors.keys.sorted(), compiled) }
  }

  /// The executor for `batch` rows, compiled on first use; beyond the cache's capacity the
  /// least recently used one is dropped (it is compiled again if that size comes back).
  func executor(batch: Int) throws -> Executor {
    executorLock.lock()
    defer { executorLock.unlock() }
    tick += 1
    if let e = executors[batch] {
      executors[batch] = (e.executor, tick)
      return e.executor
    }
    let e = try Executor(
      graph: batch == 1 || !batches ? graph : graph.withBatch(batch), options: .init(workingMemory: workingMemory))
    compiled += 1
    while executors.count >= batching.executorCacheCapacity,
      let oldest = executors.min(by: { $0.value.used < $1.value.used })?.key
    {
      executors[oldest] = nil
    }
    executors[batch] = (e, tick)
    return e
  }

  func submit(_ inputs: [Tensor], deadline: UInt64?) async throws -> ScheduledRun {
    let rows = batches ? (inputs.first?.shape.first ?? 1) : 1
    guard rows <= batching.maxBatchSize else {
      throw SchedulerError.batchTooLarge(model: model, version: version, rows: rows, max: batching.maxBatchSize)
    }
    let ticket = Ticket()
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<ScheduledRun, any Error>) in
        condition.lock()
        if ticket.cancelled {
          condition.unlock()
          c.resume(throwing: SchedulerError.cancelled(model: model, version: version))
          return
        }
        if stopping {
          condition.unlock()
          c.resume(throwing: SchedulerError.shuttingDown(model: model, version: version))
          return
        }
        if queue.count >= batching.queueCapacity {
          let n = queue.count
          condition.unlock()
          metrics?.rejected(model: model)
          c.resume(
            throwing: SchedulerError.queueFull(
              model: model, version: version, waiting: n, capacity: batching.queueCapacity))
          return
        }
        nextID += 1
        if running { arrivedWhileRunning += 1 }
        ticket.id = nextID
        queue.append(
          Job(
            id: nextID, inputs: inputs, rows: rows, deadline: deadline, enqueued: DispatchTime.now().uptimeNanoseconds,
            continuation: c))
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
            ? SchedulerError.deadlineExceeded(model: model, version: version)
            : SchedulerError.cancelled(model: model, version: version))
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
  /// first has waited `maxQueueDelay`, drops the expired, runs the rest as one batch. The wait
  /// for company happens only under load: when requests came while the previous batch ran, or
  /// several wait already. A lone request on an idle model runs at once; it never waits for a
  /// batch that nobody else will join.
  private func work() {
    let delayNanos =
      UInt64(max(0, batching.maxQueueDelay.components.seconds)) * 1_000_000_000
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
      let underLoad = batching.waitsWhenIdle || arrivedWhileRunning > 0 || queue.count > 1
      if batching.maxBatchSize > 1, underLoad {
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
      running = !taken.isEmpty
      arrivedWhileRunning = queue.count
      condition.unlock()
      for job in expired {
        metrics?.expired(model: model)
        job.continuation.resume(throwing: SchedulerError.deadlineExceeded(model: model, version: version))
      }
      if !taken.isEmpty {
        condition.lock()
        batchesRun += 1
        rowsRun += rows
        condition.unlock()
        run(taken, rows: rows)
        condition.lock()
        running = false
        condition.unlock()
      }
    }
  }

  private func run(_ jobs: [Job], rows: Int) {
    do {
      let start = DispatchTime.now().uptimeNanoseconds
      let answer = { (job: Job, outputs: [Tensor], end: UInt64) in
        ScheduledRun(
          outputs: outputs, queueMs: Double(start &- min(job.enqueued, start)) / 1e6,
          computeMs: Double(end &- start) / 1e6)
      }
      if jobs.count == 1 {
        let outputs = try executor(batch: batches ? rows : 1).run(jobs[0].inputs)
        let end = DispatchTime.now().uptimeNanoseconds
        metrics?.batch(model: model, rows: rows)
        jobs[0].continuation.resume(returning: answer(jobs[0], outputs, end))
        return
      }
      let inputs = try jobs[0].inputs.indices.map { i in try Self.concatenate(jobs.map { $0.inputs[i] }) }
      let outputs = try executor(batch: rows).run(inputs)
      let end = DispatchTime.now().uptimeNanoseconds
      metrics?.batch(model: model, rows: rows)
      var offset = 0
      for job in jobs {
        job.continuation.resume(returning: answer(job, outputs.map { Self.rows($0, from: offset, count: job.rows) }, end))
        offset += job.rows
      }
    } catch {
      let failure = SchedulerError.runFailed(model: model, version: version, rows: rows, detail: "\(error)")
      for job in jobs { job.continuation.resume(throwing: failure) }
    }
  }

  /// Tensors stacked along the first dimension (all other dimensions equal, checked upstream).
  static func concatenate(_ parts: [Tensor]) throws -> Tensor {
    guard var shape = parts.first?.shape else { throw AcceleratorError.badRequest("empty batch") }
    shape[0] = parts.reduce(0) { $0 + $1.shape[0] }
    return Tensor(uninitialized: shape) { out in
      guard let base = out.baseAddress else { return }
      var at = 0
      for p in parts {
        p.withUnsafeBuffer { src in
          if let s = src.baseAddress, src.count > 0 { (base + at).update(from: s, count: src.count) }
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
    return Tensor(uninitialized: shape) { out in
      t.withUnsafeBuffer { src in
        if let o = out.baseAddress, let s = src.baseAddress, out.count > 0 {
          o.update(from: s + from * per, count: count * per)
        }
      }
    }
  }
}
