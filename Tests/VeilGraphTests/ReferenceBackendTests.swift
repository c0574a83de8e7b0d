import Foundation
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// The op table through the `ComputeBackend` seam on a second backend. Every case of
/// `OpCases.all` is compiled by the same executor, once for oneDNN and once for
/// `ReferenceBackend` (plain loops written from the ops' definitions), with and without the
/// inference passes, and the outputs are compared. Each backend is within the case's tolerance
/// of the exact result (OpTests checks oneDNN against ONNX Runtime with it), so the two agree
/// within twice that; bit-exact cases (copies, max) stay bit-exact.
final class ReferenceBackendTests: XCTestCase {
  func testOpTableOnThePlainLoopBackendAgreesWithOneDNN() throws {
    let reference = ReferenceBackend()
    var covered = Set<String>()
    for c in OpCases.all {
      for optimize in [false, true] {
        let label = "\(c.name) [optimize: \(optimize)]"
        let options = ExecutorOptions(optimize: optimize)
        let want = try Executor(graph: c.graph, backend: DNNLBackend.shared, options: options).run(c.inputs)
        let executor = try Executor(graph: c.graph, backend: reference, options: options)
        // Every step is the reference backend's: the executor has no path of its own to oneDNN.
        for k in executor.kernelNames { XCTAssertTrue(k.hasPrefix("Ref"), "\(label): step '\(k)' is not the reference backend's") }
        let got = try executor.run(c.inputs)
        XCTAssertEqual(got.count, want.count, label)
        let tolerance = Tolerance(abs: 2 * c.tolerance.abs, rel: 2 * c.tolerance.rel)
        for (k, (g, w)) in zip(got, want).enumerated() {
          let r = Comparison(got: g, want: w, tolerance: tolerance)
          XCTAssertTrue(r.passed, "\(label): \(c.summary): output \(k): \(r)")
        }
        for n in executor.graph.nodes { covered.insert(n.op.typeName) }
      }
    }
    for op in ["Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Add", "MaxPool", "AveragePool", "Softmax", "Concat", "Pad"] {
      XCTAssertTrue(covered.contains(op), "no case ran \(op) on the reference backend")
    }
  }

  /// A layout is its backend's: the plain-loop backend refuses oneDNN's blocked one by name
  /// instead of reading its bytes as plain.
  func testAnotherBackendsLayoutIsRefused() throws {
    var rng = SeededGenerator(seed: 3)
    let w = Tensor.randomNormal(shape: [16, 16, 3, 3], generator: &rng)
    let spec = ConvolutionSpec(strides: [1, 1], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1)
    let conv = try DNNLBackend.shared.convolution(
      spec, inputDims: [1, 16, 8, 8], weights: w, bias: nil, postOps: [], outputDims: [1, 16, 8, 8])
    let blocked = conv.outputLayout
    XCTAssertNotNil(blocked.token, "oneDNN chose a blocked layout for a 16-channel convolution")
    XCTAssertNotEqual(blocked, .plain([1, 16, 8, 8]))
    XCTAssertThrowsError(try ReferenceBackend().activation(.relu, input: blocked)) { e in
      XCTAssertTrue("\(e)".contains("not plain"), "\(e)")
    }
  }
}
