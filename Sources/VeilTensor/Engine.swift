import CDNNL
import Foundation

/// The process-wide oneDNN CPU engine and stream, and the thread count the kernels use.
/// oneDNN here runs on the OpenMP runtime, so the thread count is OpenMP's.
public final class Engine: @unchecked Sendable {
  public static let shared = Engine()

  let engine: dnnl_engine_t
  let stream: dnnl_stream_t
  private let lock = NSLock()
  private var threadCount: Int

  private init() {
    var e: dnnl_engine_t?
    guard dnnl_engine_create(&e, dnnl_cpu, 0) == dnnl_success, let e else {
      fatalError("oneDNN: cannot create the CPU engine")
    }
    var s: dnnl_stream_t?
    guard dnnl_stream_create(&s, e, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success, let s else {
      fatalError("oneDNN: cannot create a stream")
    }
    engine = e
    stream = s
    threadCount = Int(omp_get_max_threads())
  }

  /// Cores available to this process.
  public static var availableCores: Int { ProcessInfo.processInfo.activeProcessorCount }

  /// The number of threads kernels use. Defaults to every core.
  public var threads: Int {
    lock.lock()
    defer { lock.unlock() }
    return threadCount
  }

  /// Sets the kernel thread count; throws for a count below 1 or absurdly above the cores.
  public func setThreads(_ n: Int) throws {
    guard n >= 1, n <= 4096 else {
      throw TensorError.invalidArgument(
        "thread count must be between 1 and 4096 (this machine has \(Self.availableCores) cores), found \(n)")
    }
    lock.lock()
    defer { lock.unlock() }
    omp_set_num_threads(Int32(n))
    threadCount = n
  }

  /// How the kernels' threads wait between parallel regions (Veil's own team, CDNNL's team.c,
  /// which oneDNN's OpenMP calls reach).
  public enum ThreadWaiting: Sendable, Equatable {
    /// Sleep at once: every parallel region wakes the threads it needs.
    case passive
    /// Spin between the regions of one pass (`onTeam`), for at most this long per wait (less
    /// where waits keep outlasting the spin, a machine with more runnable threads than cores),
    /// and sleep at once outside a pass: a pass pays one wake-up, and no core is burnt between
    /// passes.
    case held(spinMicroseconds: Int)
    /// Spin between passes too (the best case on a quiet machine; benchmarks only).
    case spinning

    /// The default: a pass's regions are microseconds apart; 200 µs covers a slow step's gap
    /// and is short enough that a thread whose caller lost its core soon gives its own up.
    public static let standard = ThreadWaiting.held(spinMicroseconds: 200)
  }

  private nonisolated(unsafe) static var waiting = ThreadWaiting.standard
  private static let waitingLock = NSLock()

  /// The team's waiting, for the whole process.
  public static var threadWaiting: ThreadWaiting {
    get { waitingLock.withLock { waiting } }
    set {
      waitingLock.withLock {
        waiting = newValue
        switch newValue {
        case .passive: veil_team_set_spin(0, 0)
        case .held(let us): veil_team_set_spin(min(max(0, us), 10_000_000) * 1000, 0)
        case .spinning: veil_team_set_spin(Int.max / 2, Int.max / 2)
        }
      }
    }
  }

  /// Whether the threads sleep at once between parallel regions, so that a step too small to
  /// pay for waking them runs on the calling thread alone (`ComputeBackend.serialStepNanoseconds`).
  public static var threadsWaitPassively: Bool { threadWaiting == .passive }

  /// Runs `body` with this thread's OpenMP team limited to one thread (an ICV of the calling
  /// thread only), restoring the count after.
  public func serially<T>(_ body: () throws -> T) rethrows -> T {
    let before = omp_get_max_threads()
    guard before > 1 else { return try body() }
    omp_set_num_threads(1)
    defer { omp_set_num_threads(before) }
    return try body()
  }

  /// Runs `body` with the calling thread's OpenMP team at `threads`, restoring the count after.
  /// OpenMP keeps the count a thread at a time: `setThreads` sets it for the thread that calls
  /// it, and any other thread (a server's workers, a dispatch queue's) starts at every core.
  ///
  /// The team is held meanwhile (`veil_team_hold`): its threads spin between the body's parallel
  /// regions instead of sleeping, and sleep once the body returns. A body that starts after a
  /// few milliseconds of idleness, with a CPU free, runs with the caller and the team's threads
  /// each pinned to a CPU of its own (a virtual machine's scheduler otherwise stacks them on
  /// one; CDNNL's team.c, `pin_for_pass`).
  public func onTeam<T>(_ body: () throws -> T) rethrows -> T {
    let want = Int32(threads)
    let before = omp_get_max_threads()
    if before != want { omp_set_num_threads(want) }
    defer { if before != want { omp_set_num_threads(before) } }
    // After the count: the pass pins only the threads its team will use.
    veil_team_hold(2)
    defer { veil_team_hold(0) }
    return try body()
  }

  /// The team size a parallel region started now by the calling thread would have.
  public var teamSizeOfCallingThread: Int { Int(omp_get_max_threads()) }

  /// oneDNN's version string, for reports.
  public static var backendVersion: String {
    guard let v = dnnl_version() else { return "oneDNN unknown" }
    return "oneDNN \(v.pointee.major).\(v.pointee.minor).\(v.pointee.patch)"
  }

  func wait() { dnnl_stream_wait(stream) }
}

@inline(__always)
func check(_ status: dnnl_status_t, _ operation: @autoclosure () -> String, detail: @autoclosure () -> String = "") throws {
  if status != dnnl_success {
    throw TensorError.backend(operation: operation(), status: Int32(status.rawValue), detail: detail())
  }
}
