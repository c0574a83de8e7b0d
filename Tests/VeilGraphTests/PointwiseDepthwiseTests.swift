import Foundation
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// An inverted residual block's 1×1 expansion and the 3×3 depthwise convolution that reads it
/// run as one oneDNN kernel (`ComputeBackend.pointwiseDepthwise`) where oneDNN has one, and
/// compute what the two compute apart: checked against the plain-loop backend, which has no
/// such kernel and runs them apart.
final class PointwiseDepthwiseTests: XCTestCase {
  struct Block {
    var batch: Int, channels: Int, expanded: Int, size: Int, stride: Int
    var first: Activation, second: Activation?
    var depthwiseBias: Bool
  }

  /// One block: x → Conv 1×1 (bias) → `first` → depthwise Conv 3×3 → `second` (if any) → the
  /// projection, a 1×1 Conv back to the input's channels.
  static func graph(_ b: Block, seed: UInt64, extraReader: Bool = false) -> Graph {
    var rng = SeededGenerator(seed: seed)
    func w(_ shape: [Int]) -> Tensor { .randomNormal(shape: shape, std: 0.3, generator: &rng) }
    var g = Graph(name: "block")
    let x = g.addInput(name: "x", shape: [b.batch, b.channels, b.size, b.size])
    let e = g.activation(
      g.conv(x, weight: w([b.expanded, b.channels, 1, 1]), bias: w([b.expanded]), .square(1), name: "expand"), b.first,
      name: "expand.act")
    var d = g.conv(
      e, weight: w([b.expanded, 1, 3, 3]), bias: b.depthwiseBias ? w([b.expanded]) : nil,
      .square(3, stride: b.stride, groups: b.expanded), name: "depthwise")
    if let a = b.second { d = g.activation(d, a, name: "depthwise.act") }
    g.outputs = [g.conv(d, weight: w([b.channels, b.expanded, 1, 1]), .square(1), name: "project")]
    // A second reader of the expanded map (an output of its own) forbids the fusion.
    if extraReader { g.outputs.append(e) }
    return g
  }

  /// Whether oneDNN has one JIT kernel for the block on this CPU. It decides by the CPU's ISA
  /// and caches: on AVX-512 it fuses only where the 1×1 convolution's output per thread does
  /// not fit the L2 cache (MobileNet V2's 9.6 MB map at 56 px on a 2 MB L2, not the 3.6 MB
  /// one at 28 px), so which blocks fuse differs from one machine to the next.
  static func oneDNNFuses(_ b: Block) throws -> Bool {
    let e = b.expanded
    let out = (b.size - 1) / b.stride + 1
    return try DNNLBackend.shared.pointwiseDepthwise(
      PointwiseDepthwise(
        inputDims: [b.batch, b.channels, b.size, b.size], weights: Tensor(zeros: [e, b.channels, 1, 1]), bias: Tensor(zeros: [e]),
        activations: [b.first], depthwiseStride: b.stride, depthwiseWeights: Tensor(zeros: [e, 1, 3, 3]),
        depthwiseBias: b.depthwiseBias ? Tensor(zeros: [e]) : nil, depthwiseActivations: b.second.map { [$0] } ?? [],
        outputDims: [b.batch, e, out, out])) != nil
  }

  /// Runs the block; `fused`: the executor takes oneDNN's single kernel wherever oneDNN has one
  /// for it (false: it must not). Returns whether the kernel ran fused.
  @discardableResult
  func check(_ b: Block, fused: Bool, extraReader: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws -> Bool {
    let g = Self.graph(b, seed: 7, extraReader: extraReader)
    var rng = SeededGenerator(seed: 8)
    let input = Tensor.randomNormal(shape: [b.batch, b.channels, b.size, b.size], generator: &rng)
    let executor = try Executor(graph: g, backend: DNNLBackend.shared)
    let names = executor.kernelNames
    let expected = try fused && Self.oneDNNFuses(b)
    let ran = names.contains { $0.contains("Depthwise3x3/\(b.stride)") }
    XCTAssertEqual(ran, expected, "\(b): kernels \(names)", file: file, line: line)
    // The plain input into the kernel's layout and the plain output out of it: the projection
    // reads the fused kernel's map as it is.
    if fused { XCTAssertEqual(executor.reorderCount, 2, "\(b): no reorder between the kernel and the projection: \(names)", file: file, line: line) }
    let got = try executor.run([input])
    let want = try Executor(graph: g, backend: ReferenceBackend()).run([input])
    XCTAssertEqual(got.count, want.count, file: file, line: line)
    for (k, (x, y)) in zip(got, want).enumerated() {
      let c = Comparison(got: x, want: y, tolerance: Tolerance(abs: 1e-4, rel: 1e-4))
      XCTAssertTrue(c.passed, "\(b), output \(k): \(c)", file: file, line: line)
    }
    return ran
  }

  /// MobileNet V2's first expanding blocks at batch 8 (ReLU6 both times), MNASNet's (ReLU),
  /// MobileNet V3's (HardSwish), a depthwise convolution without a bias, and one whose
  /// activation is a SiLU (run after the kernel, as after a convolution): one kernel wherever
  /// oneDNN has one on this CPU, and at least for the largest map.
  func testExpansionAndDepthwiseRunAsOneKernelAndAgreeWithThePlainLoops() throws {
    let relu6 = Activation.clip(min: 0, max: 6)
    // MobileNet V2's first expansion at 112 px: a 38.5 MB map at batch 8, over any L2 per thread.
    let largest = try check(
      Block(batch: 8, channels: 16, expanded: 96, size: 112, stride: 2, first: relu6, second: relu6, depthwiseBias: true), fused: true)
    XCTAssertTrue(largest, "oneDNN has one kernel for MobileNet V2's first expansion at 112 px")
    try check(Block(batch: 8, channels: 16, expanded: 96, size: 56, stride: 2, first: relu6, second: relu6, depthwiseBias: true), fused: true)
    try check(Block(batch: 8, channels: 24, expanded: 144, size: 28, stride: 1, first: relu6, second: relu6, depthwiseBias: true), fused: true)
    try check(Block(batch: 8, channels: 24, expanded: 96, size: 28, stride: 2, first: .relu, second: .relu, depthwiseBias: false), fused: true)
    try check(Block(batch: 4, channels: 40, expanded: 240, size: 28, stride: 1, first: .hardSwish, second: .hardSwish, depthwiseBias: true), fused: true)
    try check(Block(batch: 8, channels: 16, expanded: 96, size: 28, stride: 1, first: relu6, second: .silu, depthwiseBias: true), fused: true)
    try check(Block(batch: 8, channels: 16, expanded: 96, size: 28, stride: 2, first: .relu, second: nil, depthwiseBias: true), fused: true)
  }

  /// Where the expanded map has a second reader, or its activation is a SiLU (oneDNN's swish
  /// post-op, slower than Veil's own), or the batch is one item (where fusing measured no
  /// faster), the two run apart, and still agree.
  func testTheTwoRunApartWhereFusingWouldNotPay() throws {
    let relu6 = Activation.clip(min: 0, max: 6)
    try check(Block(batch: 8, channels: 16, expanded: 96, size: 28, stride: 2, first: relu6, second: relu6, depthwiseBias: true), fused: false, extraReader: true)
    try check(Block(batch: 8, channels: 16, expanded: 96, size: 28, stride: 1, first: .silu, second: .silu, depthwiseBias: true), fused: false)
    try check(Block(batch: 1, channels: 16, expanded: 96, size: 56, stride: 2, first: relu6, second: relu6, depthwiseBias: true), fused: false)
  }
}
