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

  /// Whether the OpenMP threads sleep between parallel regions (`OMP_WAIT_POLICY=PASSIVE`: what
  /// `veil`'s servers set, see ThreadWaiting) rather than spin, even briefly, as read at start-up.
  public static let threadsWaitPassively: Bool =
    ProcessInfo.processInfo.environment["OMP_WAIT_POLICY"]?.uppercased() == "PASSIVE"

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
  public func onTeam<T>(_ body: () throws -> T) rethrows -> T {
    let want = Int32(threads)
    let before = omp_get_max_threads()
    guard before != want else { return try body() }
    omp_set_num_threads(want)
    defer { omp_set_num_threads(before) }
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
