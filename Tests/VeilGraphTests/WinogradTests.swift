import Foundation
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// `ConvolutionAlgorithm.winograd`: oneDNN's Winograd kernel, where it is faster, computes what
/// the direct algorithm computes. Two 3×3 layers with the same weight dimensions at 56 × 56 and
/// 14 × 14 (DenseNet's 128 → 32) get Winograd weight layouts that differ; the backend's
/// primitive cache keyed both by the same text ("opaque") and gave the second layer the first
/// one's weight reorder: outputs 8.9× their size off here, DenseNet-121's 2e8.
final class WinogradTests: XCTestCase {
  func testWinogradLayersAgreeWithTheDirectAlgorithm() throws {
    var rng = SeededGenerator(seed: 31)
    func w(_ shape: [Int]) -> Tensor { .randomNormal(shape: shape, std: 0.05, generator: &rng) }
    var g = Graph(name: "winograd")
    let x = g.addInput(name: "x", shape: [1, 128, 56, 56])
    var v = g.activation(g.conv(x, weight: w([32, 128, 3, 3]), .square(3), name: "at56"), .relu, name: "r56")
    v = g.maxPool(v, PoolAttributes(kernel: [4, 4], strides: [4, 4]), name: "pool")
    v = g.conv(v, weight: w([128, 32, 1, 1]), .square(1), name: "widen")
    g.outputs = [g.conv(v, weight: w([32, 128, 3, 3]), .square(3), name: "at14")]
    let batched = try g.withBatch(8)
    let input = Tensor.randomNormal(shape: [8, 128, 56, 56], generator: &rng)
    let want = try Executor(graph: batched, backend: DNNLBackend(convolutionAlgorithm: .direct)).run([input])[0]
    let executor = try Executor(graph: batched, backend: DNNLBackend(convolutionAlgorithm: .winograd))
    let winogradSteps = executor.kernelNames.filter { $0.contains("Winograd") }.count
    if ConvolutionAlgorithm.winogradAvailable {
      XCTAssertEqual(winogradSteps, 2, "oneDNN chose Winograd for both 3×3 layers: \(executor.kernelNames)")
    } else {
      XCTAssertEqual(winogradSteps, 0, "Winograd without AVX-512: \(executor.kernelNames)")
    }
    let got = try executor.run([input])[0]
    let c = Comparison(got: got, want: want, tolerance: Tolerance(abs: 1e-4, rel: 1e-4))
    XCTAssertTrue(c.passed, "\(c)")
    // One item keeps the direct algorithm (Winograd was no faster there).
    let one = try Executor(graph: g, backend: DNNLBackend(convolutionAlgorithm: .winograd))
    XCTAssertFalse(one.kernelNames.contains { $0.contains("Winograd") }, "\(one.kernelNames)")
  }

  /// The kernels of one executor share one working buffer, the largest kernel's: VGG-16 at
  /// batch 8 peaked at 1830 MiB with a scratchpad per Winograd layer, 1159 MiB with one.
  func testAnExecutorsKernelsShareOneScratchpadOfTheLargestSize() throws {
    var rng = SeededGenerator(seed: 32)
    func w(_ shape: [Int]) -> Tensor { .randomNormal(shape: shape, std: 0.05, generator: &rng) }
    func layer(_ g: inout Graph, _ x: ValueID, _ c: Int, _ name: String) -> ValueID {
      g.activation(g.conv(x, weight: w([c, c, 3, 3]), .square(3), name: name), .relu, name: name + ".relu")
    }
    let backend = DNNLBackend(convolutionAlgorithm: .winograd)
    var first = Graph(name: "first")
    first.outputs = [layer(&first, first.addInput(name: "x", shape: [4, 32, 40, 40]), 32, "a")]
    var second = Graph(name: "second")
    second.outputs = [layer(&second, second.addInput(name: "x", shape: [4, 32, 40, 40]), 32, "b")]
    let alone = try [first, second].map { try Executor(graph: $0, backend: backend).scratchpadBytes }
    var both = Graph(name: "both")
    let x = both.addInput(name: "x", shape: [4, 32, 40, 40])
    both.outputs = [layer(&both, layer(&both, x, 32, "a"), 32, "b")]
    let executor = try Executor(graph: both, backend: backend)
    XCTAssertGreaterThan(alone[0], 0, "a convolution needs working memory: \(executor.kernelNames)")
    XCTAssertEqual(executor.scratchpadBytes, alone.max(), "one buffer of the largest need, not \(alone[0]) + \(alone[1])")
    // Each run reuses the buffer, and the second layer's use of it does not spoil the first's.
    let input = Tensor.randomNormal(shape: [4, 32, 40, 40], generator: &rng)
    let want = try Executor(graph: both, backend: DNNLBackend(convolutionAlgorithm: .direct)).run([input])[0]
    for _ in 0..<2 {
      let c = Comparison(got: try executor.run([input])[0], want: want, tolerance: Tolerance(abs: 1e-4, rel: 1e-4))
      XCTAssertTrue(c.passed, "\(c)")
    }
  }

  /// Executors that share working memory (a served model's, one per batch size) grow one
  /// buffer to the largest need instead of holding one each, and each still computes its own
  /// batch right when the buffer has grown under it.
  func testExecutorsSharingWorkingMemoryHoldOneBufferOfTheLargestNeed() throws {
    var rng = SeededGenerator(seed: 33)
    var g = Graph(name: "shared")
    let x = g.addInput(name: "x", shape: [1, 32, 40, 40])
    let c = g.conv(x, weight: .randomNormal(shape: [32, 32, 3, 3], std: 0.05, generator: &rng), .square(3), name: "c")
    g.outputs = [g.activation(c, .relu, name: "r")]
    let shared = SharedWorkingMemory()
    let backend = DNNLBackend(convolutionAlgorithm: .winograd)
    let small = try Executor(graph: g.withBatch(2), backend: backend, options: .init(workingMemory: shared))
    let large = try Executor(graph: g.withBatch(6), backend: backend, options: .init(workingMemory: shared))
    XCTAssertEqual(shared.bytes, 0, "nothing is allocated before a run")
    XCTAssertGreaterThan(large.scratchpadBytes, small.scratchpadBytes, "\(large.kernelNames)")
    let direct = DNNLBackend(convolutionAlgorithm: .direct)
    func check(_ e: Executor, _ batch: Int) throws {
      let input = Tensor.randomNormal(shape: [batch, 32, 40, 40], generator: &rng)
      let want = try Executor(graph: g.withBatch(batch), backend: direct).run([input])[0]
      let c = Comparison(got: try e.run([input])[0], want: want, tolerance: Tolerance(abs: 1e-4, rel: 1e-4))
      XCTAssertTrue(c.passed, "batch \(batch): \(c)")
    }
    try check(small, 2)
    XCTAssertEqual(shared.bytes, (small.scratchpadBytes + 3) / 4 * 4)
    try check(large, 6)
    XCTAssertEqual(shared.bytes, (large.scratchpadBytes + 3) / 4 * 4, "grown to the larger need")
    try check(small, 2)
    XCTAssertEqual(shared.bytes, (large.scratchpadBytes + 3) / 4 * 4, "one buffer, not one each")
  }
}

