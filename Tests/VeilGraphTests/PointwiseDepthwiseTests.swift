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

  func check(_ b: Block, fused: Bool, extraReader: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
    let g = Self.graph(b, seed: 7, extraReader: extraReader)
    var rng = SeededGenerator(seed: 8)
    let input = Tensor.randomNormal(shape: [b.batch, b.channels, b.size, b.size], generator: &rng)
    let executor = try Executor(graph: g, backend: DNNLBackend.shared)
    let names = executor.kernelNames
    XCTAssertEqual(names.contains { $0.contains("Depthwise3x3/\(b.stride)") }, fused, "\(b): kernels \(names)", file: file, line: line)
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
  }

  /// MobileNet V2's first expanding blocks at batch 8 (ReLU6 both times), MNASNet's (ReLU),
  /// MobileNet V3's (HardSwish), a depthwise convolution without a bias, and one whose
  /// activation is a SiLU (run after the kernel, as after a convolution).
  func testExpansionAndDepthwiseRunAsOneKernelAndAgreeWithThePlainLoops() throws {
    let relu6 = Activation.clip(min: 0, max: 6)
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
