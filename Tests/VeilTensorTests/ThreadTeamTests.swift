import CDNNL
import Foundation
import Synchronization
import VeilTensor
import XCTest

/// Veil's thread team (CDNNL's team.c), the OpenMP entry points oneDNN calls: team sizes and
/// thread numbers, nesting, barriers, per-thread thread counts, callers on several threads at
/// once, and threads that sleep once a pass is over.
final class ThreadTeamTests: XCTestCase {
  /// What one region saw, filled in by its threads.
  final class Region: @unchecked Sendable {
    let lock = NSLock()
    var seen: [(thread: Int, size: Int, inParallel: Bool)] = []
    var body: (Region) -> Void = { _ in }

    func record(_ t: Int, _ n: Int, _ p: Bool) { lock.withLock { seen.append((t, n, p)) } }
  }

  /// Runs `body` on the team as a parallel region of `threads` (0: the calling thread's count).
  @discardableResult
  static func parallel(_ threads: UInt32 = 0, _ body: @escaping (Region) -> Void) -> Region {
    let region = Region()
    region.body = body
    let data = Unmanaged.passRetained(region).toOpaque()
    GOMP_parallel({ p in Unmanaged<Region>.fromOpaque(p!).takeUnretainedValue().body(Unmanaged<Region>.fromOpaque(p!).takeUnretainedValue()) }, data, threads, 0)
    Unmanaged<Region>.fromOpaque(data).release()
    return region
  }

  func testARegionRunsOnceOnEveryThreadOfItsTeam() {
    for n in [1, 2, 3, 5] {
      let r = Self.parallel(UInt32(n)) { $0.record(Int(omp_get_thread_num()), Int(omp_get_num_threads()), omp_in_parallel() != 0) }
      XCTAssertEqual(r.seen.map(\.thread).sorted(), Array(0..<n), "team of \(n)")
      XCTAssertTrue(r.seen.allSatisfy { $0.size == n }, "every thread sees the team size \(n): \(r.seen)")
      XCTAssertTrue(r.seen.allSatisfy { $0.inParallel == (n > 1) }, "in a region of \(n): \(r.seen)")
    }
    XCTAssertEqual(omp_get_thread_num(), 0)
    XCTAssertEqual(omp_get_num_threads(), 1)
    XCTAssertEqual(omp_in_parallel(), 0, "outside any region")
  }

  func testARegionInsideARegionRunsOnItsCallerAlone() {
    let inner = Region()
    Self.parallel(3) { _ in
      let me = Int(omp_get_thread_num())
      let r = Self.parallel(4) { $0.record(Int(omp_get_thread_num()), Int(omp_get_num_threads()), omp_in_parallel() != 0) }
      inner.lock.withLock { inner.seen += r.seen.map { ($0.thread + 10 * me, $0.size, $0.inParallel) } }
      // The outer thread number is the caller's again.
      XCTAssertEqual(Int(omp_get_thread_num()), me)
      XCTAssertEqual(omp_get_num_threads(), 3)
    }
    XCTAssertEqual(inner.seen.map(\.thread).sorted(), [0, 10, 20], "each outer thread ran the inner region once, as thread 0")
    XCTAssertTrue(inner.seen.allSatisfy { $0.size == 1 && $0.inParallel }, "\(inner.seen)")
  }

  func testTheBarrierHoldsEveryThreadUntilAllArrive() {
    let n = 3
    let rounds = 2000
    let counts = Mutex([Int](repeating: 0, count: rounds))
    let violations = Atomic<Int>(0)
    Self.parallel(UInt32(n)) { _ in
      for round in 0..<rounds {
        counts.withLock { $0[round] += 1 }
        GOMP_barrier()
        // Past the barrier, every thread has counted this round.
        if counts.withLock({ $0[round] }) != n { violations.add(1, ordering: .relaxed) }
        GOMP_barrier()
      }
    }
    XCTAssertEqual(violations.load(ordering: .relaxed), 0)
    XCTAssertEqual(counts.withLock { $0 }, [Int](repeating: n, count: rounds))
  }

  func testTheThreadCountIsEachThreadsOwn() throws {
    let before = omp_get_max_threads()
    omp_set_num_threads(1)
    defer { omp_set_num_threads(before) }
    let other = Atomic<Int32>(-1)
    let thread = Thread { other.store(omp_get_max_threads(), ordering: .sequentiallyConsistent) }
    thread.start()
    let deadline = Date().addingTimeInterval(10)
    while other.load(ordering: .sequentiallyConsistent) < 0, Date() < deadline { usleep(1000) }
    let processDefault = ProcessInfo.processInfo.environment["OMP_NUM_THREADS"].flatMap { Int($0) } ?? Engine.availableCores
    XCTAssertEqual(Int(other.load(ordering: .sequentiallyConsistent)), processDefault, "another thread keeps the process default")
    XCTAssertEqual(omp_get_max_threads(), 1, "this thread's count")
    let r = Self.parallel { $0.record(Int(omp_get_thread_num()), Int(omp_get_num_threads()), omp_in_parallel() != 0) }
    XCTAssertEqual(r.seen.count, 1, "a region of the calling thread's count, 1")
  }

  /// Callers on several threads share one team: each region still runs exactly once per
  /// thread number of its own team (the team's or, while it is busy, the caller's alone).
  func testCallersOnSeveralThreadsEachGetTheirWholeRegion() {
    let callers = 3
    let regions = 400
    let wrong = Atomic<Int>(0)
    let finished = Atomic<Int>(0)
    for _ in 0..<callers {
      Thread {
        for _ in 0..<regions {
          let r = Self.parallel(2) { $0.record(Int(omp_get_thread_num()), Int(omp_get_num_threads()), true) }
          let size = r.seen.first?.size ?? 0
          if r.seen.map(\.thread).sorted() != Array(0..<size) || !(1...2).contains(size) { wrong.add(1, ordering: .relaxed) }
        }
        finished.add(1, ordering: .sequentiallyConsistent)
      }.start()
    }
    let deadline = Date().addingTimeInterval(120)
    while finished.load(ordering: .sequentiallyConsistent) < callers, Date() < deadline { usleep(1000) }
    XCTAssertEqual(finished.load(ordering: .sequentiallyConsistent), callers, "every caller finished (no deadlock)")
    XCTAssertEqual(wrong.load(ordering: .relaxed), 0)
  }

  /// A region returns only once every thread has left it, even when the worker of the region
  /// before is late to say it has. The wait used to end on a counter the previous region's
  /// worker could still bump after its caller had moved on (its decrement of the running
  /// count came first), so the next region's caller returned while the worker still ran the
  /// region's function on data from the caller's stack: a crash in the suite, once in three
  /// runs. Regions back to back, the worker made late between its two steps by a test hook,
  /// and recording its part of each region late.
  func testARegionEndsOnlyWhenEveryThreadHasLeftIt() {
    // The worker late by 50 µs between its two steps, every region.
    veil_team_set_late_worker(50_000)
    defer { veil_team_set_late_worker(0) }
    var early = 0
    let deadline = Date().addingTimeInterval(20)
    var regions = 0
    while regions < 2000, Date() < deadline {
      let r = Self.parallel(2) { region in
        if omp_get_thread_num() != 0 {
          var x = 0
          for i in 0..<(regions % 7) * 50 { x &+= i }
          if x == -1 { print(x) }
        }
        region.record(Int(omp_get_thread_num()), Int(omp_get_num_threads()), true)
      }
      if r.lock.withLock({ r.seen.count }) != (r.seen.first?.size ?? 0) { early += 1 }
      regions += 1
    }
    XCTAssertEqual(early, 0, "\(early) of \(regions) regions returned before every thread had left them")
  }

  /// Outside a pass the threads sleep at once: after a region with no hold, the worker goes to
  /// sleep waiting for the next one, and a held team under the spinning policy does not.
  func testThreadsSleepOnceThePassIsOver() {
    let waiting = Engine.threadWaiting
    defer { Engine.threadWaiting = waiting }
    Engine.threadWaiting = .standard
    let sleeps = veil_team_sleeps()
    Self.parallel(2) { _ in }
    let deadline = Date().addingTimeInterval(10)
    while veil_team_sleeps() == sleeps, Date() < deadline { usleep(500) }
    XCTAssertGreaterThan(veil_team_sleeps(), sleeps, "the worker went to sleep after the region")

    Engine.threadWaiting = .spinning
    veil_team_hold(1)
    Self.parallel(2) { _ in }  // wakes the sleeping worker; from here on it spins
    let spinning = veil_team_sleeps()
    for _ in 0..<200 { Self.parallel(2) { _ in } }
    veil_team_hold(0)
    XCTAssertEqual(veil_team_sleeps(), spinning, "a spinning team's threads did not sleep between regions")
    let regions = veil_team_regions()
    Self.parallel(2) { _ in }
    XCTAssertEqual(veil_team_regions(), regions + 1)
  }

  /// A pass that runs pinned (`veil_team_hold(2)`; every pass in mode 2, the tests'): the
  /// caller on the CPU it was on, the worker on another, each allowed that one CPU alone; and
  /// once the pass is over both may run on every CPU they had before. (In a virtual machine the
  /// scheduler put them on one core after a few milliseconds of idleness, and a pass took twice
  /// as long; when pinning pays is measured in docs/benchmarks.md.) Mode 0 never pins; the
  /// default mode does not pin a pass that follows the last region within a millisecond (the
  /// worker has not been idle 2 ms).
  func testAPinnedPassGivesEachThreadOneCPUAndFreesThemAfter() {
    let waiting = Engine.threadWaiting
    defer {
      Engine.threadWaiting = waiting
      veil_team_set_placement(1)
    }
    Engine.threadWaiting = .standard
    let cpus = Self.allowedCPUs()
    Self.parallel(2) { _ in }  // the worker exists
    struct Seen { var cpu = -1, allowed = -1 }
    let worker = Mutex(Seen())
    let caller = Mutex(Seen())
    // A region in which each thread records where it runs and on how many CPUs it may.
    func region() {
      Self.parallel(2) { _ in
        let seen = Seen(cpu: Self.currentCPU(), allowed: Self.allowedCPUs())
        if omp_get_thread_num() == 0 { caller.withLock { $0 = seen } } else { worker.withLock { $0 = seen } }
      }
    }
    func pass() {
      veil_team_hold(2)
      region()
      veil_team_hold(0)
    }

    veil_team_set_placement(0)
    var before = veil_team_placements()
    pass()
    XCTAssertEqual(veil_team_placements(), before, "mode 0 never pins")
    XCTAssertEqual(caller.withLock { $0.allowed }, cpus)

    // The default mode, a pass right after a region: tried until one starts within 1 ms of the
    // region's end (a descheduled test thread may take longer), which must not be pinned.
    veil_team_set_placement(1)
    var backToBack = false
    for _ in 0..<100 where !backToBack {
      region()
      let ended = DispatchTime.now().uptimeNanoseconds
      before = veil_team_placements()
      veil_team_hold(2)
      let started = DispatchTime.now().uptimeNanoseconds
      veil_team_hold(0)
      if started - ended < 1_000_000 {
        backToBack = true
        XCTAssertEqual(veil_team_placements(), before, "a pass right after a region is not pinned")
      }
    }
    XCTAssertTrue(backToBack, "no pass started within 1 ms of a region in 100 tries")

    veil_team_set_placement(2)
    before = veil_team_placements()
    pass()
    if cpus < 2 {
      XCTAssertEqual(veil_team_placements(), before, "one CPU: nothing to pin")
      return
    }
    XCTAssertEqual(veil_team_placements(), before + 1, "the pass ran pinned")
    let (c, w) = (caller.withLock { $0 }, worker.withLock { $0 })
    XCTAssertEqual(c.allowed, 1, "the caller allowed its CPU alone")
    XCTAssertEqual(w.allowed, 1, "the worker allowed one CPU alone")
    XCTAssertNotEqual(w.cpu, c.cpu, "caller and worker on CPUs of their own")
    var callerCPU: Int32 = -1
    var workerCPU: Int32 = -1
    veil_team_last_placement(&callerCPU, &workerCPU)
    XCTAssertEqual(Int(callerCPU), c.cpu)
    XCTAssertEqual(Int(workerCPU), w.cpu)
    // Over: a region outside any pass finds both free again.
    region()
    XCTAssertEqual(caller.withLock { $0.allowed }, cpus, "the caller has its CPUs back")
    XCTAssertEqual(worker.withLock { $0.allowed }, cpus, "the worker may run on every CPU again")
  }

  /// The CPU the calling thread runs on (field 39, "processor", of /proc/thread-self/stat).
  static func currentCPU() -> Int {
    guard let stat = try? String(contentsOfFile: "/proc/thread-self/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return -1 }
    // Fields from the third ("state") on follow the command name's closing parenthesis.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return fields.count > 36 ? Int(fields[36]) ?? -1 : -1
  }

  /// The CPUs the calling thread may run on (Cpus_allowed of /proc/thread-self/status, a hex
  /// mask).
  static func allowedCPUs() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8),
      let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") })
    else { return -1 }
    return line.dropFirst("Cpus_allowed:".count).reduce(0) { n, c in n + (c.hexDigitValue ?? 0).nonzeroBitCount }
  }
}
