import Foundation
import Synchronization
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// Executors of graphs with the same shapes share the backend's cached primitives: the
/// accelerator serving two versions of one model, or the tail of every cut (`--every-cut`),
/// runs them from several threads at once. Each run must compute what it computes alone.
final class ConcurrentExecutionTests: XCTestCase {
  private func network(seed: UInt64) -> Graph {
    var rng = SeededGenerator(seed: seed)
    func w(_ shape: [Int]) -> Tensor { .randomNormal(shape: shape, std: 0.2, generator: &rng) }
    var g = Graph(name: "version \(seed)")
    let x = g.addInput(name: "x", shape: [1, 3, 32, 32])
    var v = g.activation(g.conv(x, weight: w([32, 3, 3, 3]), bias: w([32]), .square(3), name: "stem"), .relu, name: "r0")
    v = g.activation(g.conv(v, weight: w([64, 32, 3, 3]), bias: w([64]), .square(3, stride: 2), name: "c1"), .relu, name: "r1")
    let r = g.conv(v, weight: w([64, 64, 1, 1]), bias: w([64]), .square(1), name: "c2")
    v = g.add(v, r, name: "residual")
    v = g.activation(g.conv(v, weight: w([64, 1, 3, 3]), bias: w([64]), .square(3, groups: 64), name: "dw"), .relu, name: "r2")
    v = g.conv(v, weight: w([128, 64, 1, 1]), bias: w([128]), .square(1), name: "expand")
    v = g.flatten(g.globalAveragePool(v, name: "gap"), name: "flat")
    g.outputs = [g.linear(v, weight: w([10, 128]), bias: w([10]), name: "fc")]
    return g
  }

  func testExecutorsSharingPrimitivesAgreeWhenRunAtOnce() throws {
    let backend = DNNLBackend()
    let executors = try [1, 2].map { try Executor(graph: network(seed: $0), backend: backend) }
    XCTAssertGreaterThan(backend.cacheHits, 0, "the second version should reuse the first's primitives")
    var rng = SeededGenerator(seed: 9)
    let inputs = (0..<2).map { _ in Tensor.randomNormal(shape: [1, 3, 32, 32], generator: &rng) }
    let alone = try zip(executors, inputs).map { try $0.run([$1])[0] }
    let rounds = 300
    let failures = Mutex<[String]>([])
    DispatchQueue.concurrentPerform(iterations: 2) { i in
      for round in 0..<rounds {
        do {
          let got = try executors[i].run([inputs[i]])[0]
          let c = Comparison(got: got, want: alone[i], tolerance: Tolerance(abs: 1e-5, rel: 1e-5))
          if !c.passed { failures.withLock { $0.append("version \(i + 1), round \(round): \(c)") } }
        } catch {
          failures.withLock { $0.append("version \(i + 1), round \(round): \(error)") }
        }
      }
    }
    let found = failures.withLock { $0 }
    XCTAssertTrue(found.isEmpty, "\(found.count) of \(2 * rounds) concurrent runs differ from a run alone, first: \(found.prefix(3))")
  }

  /// `--threads` holds on every thread. OpenMP keeps the team size a thread at a time, so a
  /// server's worker threads started at every core: the executors they compiled ignored
  /// `--threads`, and kernels made on the main thread ran there on a larger team than they were
  /// made for. The executor now makes and runs its kernels on the process's team, whichever
  /// thread calls.
  func testKernelsRunOnTheProcessTeamFromAnyThread() throws {
    let engine = Engine.shared
    let before = engine.threads
    try engine.setThreads(1)
    defer { try? engine.setThreads(before) }
    let executor = try Executor(graph: network(seed: 3), backend: DNNLBackend())
    var rng = SeededGenerator(seed: 4)
    let input = Tensor.randomNormal(shape: [1, 3, 32, 32], generator: &rng)
    let here = try executor.run([input])[0]
    let seen = Mutex<(team: Int, output: Tensor?, error: String?)>((0, nil, nil))
    let done = DispatchSemaphore(value: 0)
    let worker = Thread {
      seen.withLock { $0.team = engine.onTeam { engine.teamSizeOfCallingThread } }
      do {
        let out = try executor.run([input])[0]
        seen.withLock { $0.output = out }
      } catch {
        seen.withLock { $0.error = "\(error)" }
      }
      done.signal()
    }
    worker.start()
    XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "the worker thread did not finish within 60 s")
    let (team, output, error) = seen.withLock { ($0.team, $0.output, $0.error) }
    XCTAssertNil(error)
    XCTAssertEqual(team, 1, "a worker thread's team under --threads 1")
    let c = Comparison(got: try XCTUnwrap(output), want: here, tolerance: Tolerance(abs: 0, rel: 0))
    XCTAssertTrue(c.passed, "the worker thread's run differs from the compiling thread's: \(c)")
  }
}
