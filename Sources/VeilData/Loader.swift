import Foundation
import VeilTensor

/// A progress bar on standard error for long loads: `label [#####.....] 120/400 30% 55/s ETA 5s`,
/// redrawn at most five times a second, on one line when standard error is a terminal and as
/// occasional plain lines otherwise (so logs stay readable).
public final class ProgressBar: @unchecked Sendable {
  public let total: Int
  public let label: String
  private let output: (String) -> Void
  private let terminal: Bool
  private let lock = NSLock()
  private var done = 0
  private let start = DispatchTime.now().uptimeNanoseconds
  private var lastDraw: UInt64 = 0
  private var lastPercent = -1

  /// `output` receives each rendering (tests capture it); by default they go to stderr.
  public init(total: Int, label: String, output: ((String) -> Void)? = nil) {
    self.total = max(total, 0)
    self.label = label
    terminal = output == nil && isatty(STDERR_FILENO) == 1
    self.output = output ?? { FileHandle.standardError.write(Data($0.utf8)) }
  }

  public func advance(by n: Int = 1) {
    lock.lock()
    defer { lock.unlock() }
    done += n
    let now = DispatchTime.now().uptimeNanoseconds
    let percent = total > 0 ? done * 100 / total : 100
    let due = terminal ? now - lastDraw >= 200_000_000 : percent / 10 != lastPercent / 10
    if due || done == total {
      lastDraw = now
      lastPercent = percent
      output((terminal ? "\r" : "") + render(seconds: Double(now - start) / 1e9) + (terminal ? "" : "\n"))
    }
  }

  /// Ends the line the bar was drawn on.
  public func finish() {
    lock.lock()
    defer { lock.unlock() }
    if terminal { output("\n") }
  }

  /// The bar's text after `seconds`.
  func render(seconds: Double) -> String {
    let width = 24
    let fraction = total > 0 ? min(Double(done) / Double(total), 1) : 1
    let filled = Int(fraction * Double(width))
    let rate = seconds > 0 ? Double(done) / seconds : 0
    let eta = rate > 0 ? Double(total - done) / rate : 0
    return "\(label) [" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
      + "] \(done)/\(total) \(Int(fraction * 100))% " + String(format: "%.1f/s ETA %.0fs", rate, eta)
  }
}

/// Produces items `0..<count` in order on a background thread, at most `capacity` ahead of the
/// consumer: bounded memory for data sets larger than memory, and loading overlapped with
/// whatever the consumer does. The first error a producer hits is thrown by `next()` at that
/// item's position. Dropping the loader stops the producer.
public final class PrefetchingLoader<Item: Sendable>: @unchecked Sendable {
  public let count: Int
  public let capacity: Int
  private let queue: PrefetchQueue<Item>
  private var delivered = 0
  private let progress: ProgressBar?

  /// `producerExited`, when given, is called on the producer thread as it ends (every item
  /// produced, an error, or the loader dropped).
  public init(
    count: Int, capacity: Int = 8, progress: ProgressBar? = nil, producerExited: (@Sendable () -> Void)? = nil,
    produce: @escaping @Sendable (Int) throws -> Item
  ) {
    self.count = count
    self.capacity = max(capacity, 1)
    self.progress = progress
    // The thread holds the queue, never the loader, so dropping the loader cancels it.
    let queue = PrefetchQueue<Item>(capacity: self.capacity)
    self.queue = queue
    let thread = Thread {
      defer { producerExited?() }
      for i in 0..<count {
        let result = Result { try produce(i) }
        guard queue.put(result) else { return }
        if case .failure = result { return }
      }
    }
    thread.name = "veil-prefetch"
    thread.start()
  }

  deinit { queue.cancel() }

  /// Items produced but not yet taken (never more than `capacity`).
  public var buffered: Int { queue.count }

  /// Whether the producer waits for room: `capacity` items are buffered and it holds the next.
  public var producerIsWaitingForRoom: Bool { queue.producerWaiting }

  /// The next item in order, nil after the last.
  public func next() throws -> Item? {
    guard delivered < count else { return nil }
    let result = queue.take()
    delivered += 1
    progress?.advance()
    if delivered == count { progress?.finish() }
    return try result.get()
  }
}

/// The bounded buffer between a loader's producer thread and its consumer.
final class PrefetchQueue<Item: Sendable>: @unchecked Sendable {
  private let condition = NSCondition()
  private var items: [Result<Item, Error>] = []
  private var cancelled = false
  private var waitingForRoom = false
  let capacity: Int

  init(capacity: Int) { self.capacity = capacity }

  var count: Int {
    condition.lock()
    defer { condition.unlock() }
    return items.count
  }

  var producerWaiting: Bool {
    condition.lock()
    defer { condition.unlock() }
    return waitingForRoom
  }

  /// Waits for room; false when the consumer has gone.
  func put(_ item: Result<Item, Error>) -> Bool {
    condition.lock()
    defer { condition.unlock() }
    while items.count >= capacity && !cancelled {
      waitingForRoom = true
      condition.wait()
    }
    waitingForRoom = false
    if cancelled { return false }
    items.append(item)
    condition.broadcast()
    return true
  }

  func take() -> Result<Item, Error> {
    condition.lock()
    defer { condition.unlock() }
    while items.isEmpty { condition.wait() }
    condition.broadcast()
    return items.removeFirst()
  }

  func cancel() {
    condition.lock()
    cancelled = true
    condition.broadcast()
    condition.unlock()
  }
}

/// A batch of model inputs with their labels.
public struct Batch: Sendable {
  public var inputs: Tensor
  public var labels: [Int]
  public var names: [String]
}

extension DataSet {
  /// Batches of `size` (the last may be smaller), each sample decoded and turned into a tensor by
  /// `transform`, loaded ahead on a background thread up to `prefetch` batches.
  public func batches(
    size: Int, prefetch: Int = 4, progress: Bool = false, transform: @escaping @Sendable (ByteImage) throws -> Tensor
  ) throws -> PrefetchingLoader<Batch> {
    guard size >= 1 else { throw DataError.invalidArgument("batch size must be ≥ 1, found \(size)") }
    let n = (samples.count + size - 1) / size
    let data = self
    let bar = progress ? ProgressBar(total: n, label: "loading \(samples.count) samples") : nil
    return PrefetchingLoader(count: n, capacity: prefetch, progress: bar) { b in
      let range = (b * size)..<min((b + 1) * size, data.samples.count)
      let tensors = try range.map { i -> Tensor in
        let t = try transform(data.load(i))
        return t
      }
      let first = tensors[0].shape
      if let i = tensors.firstIndex(where: { $0.shape != first }) {
        throw DataError.unsupportedImage(
          file: data.samples[range.lowerBound + i].name,
          detail:
            "gives a tensor of shape \(tensors[i].shape), the batch's first gives \(first): resize or crop to one size")
      }
      return Batch(
        inputs: try Tensor.concatenateBatch(tensors), labels: range.map { data.samples[$0].label },
        names: range.map { data.samples[$0].name })
    }
  }
}
