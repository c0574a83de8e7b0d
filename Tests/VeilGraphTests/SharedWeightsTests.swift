import Foundation
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// Weights reordered into a kernel's layout are held once for every kernel that reorders the
/// same values into the same layout (a served model's executors for each batch size, the tails
/// of every cut), never for weights that only share a shape.
final class SharedWeightsTests: XCTestCase {
  private func graph(seed: UInt64) -> Graph {
    var rng = SeededGenerator(seed: seed)
    var g = Graph(name: "weights\(seed)")
    let x = g.addInput(name: "x", shape: [1, 32, 12, 12])
    var v = g.conv(x, weight: .randomNormal(shape: [64, 32, 3, 3], std: 0.05, generator: &rng), .square(3), name: "a")
    v = g.activation(v, .relu, name: "r")
    v = g.conv(v, weight: .randomNormal(shape: [64, 64, 1, 1], std: 0.05, generator: &rng), .square(1), name: "b")
    g.outputs = [v]
    return g
  }

  func testEqualWeightsAreHeldOnceAndOthersApart() throws {
    let backend = DNNLBackend(convolutionAlgorithm: .direct)
    var rng = SeededGenerator(seed: 9)
    let input = Tensor.randomNormal(shape: [1, 32, 12, 12], generator: &rng)
    let reference = ReferenceBackend()
    var first: Executor? = try Executor(graph: graph(seed: 1), backend: backend)
    let once = backend.sharedConstantBytes
    XCTAssertGreaterThan(once, 0, "the convolutions' weights were reordered: \(first!.kernelNames)")
    // A second model version with the same weights shares them.
    var second: Executor? = try Executor(graph: graph(seed: 1), backend: backend)
    XCTAssertEqual(backend.sharedConstantBytes, once)
    // Other weights of the same shapes get their own copy, and their own answer.
    let other = try Executor(graph: graph(seed: 2), backend: backend)
    XCTAssertEqual(backend.sharedConstantBytes, 2 * once)
    for (e, seed) in [(first!, UInt64(1)), (second!, 1), (other, 2)] {
      let want = try Executor(graph: graph(seed: seed), backend: reference).run([input])[0]
      let c = Comparison(got: try e.run([input])[0], want: want, tolerance: Tolerance(abs: 1e-4, rel: 1e-4))
      XCTAssertTrue(c.passed, "weights of seed \(seed): \(c)")
    }
    // The last kernel that holds a copy frees it.
    first = nil
    XCTAssertEqual(backend.sharedConstantBytes, 2 * once, "the second version still holds the shared copy")
    second = nil
    XCTAssertEqual(backend.sharedConstantBytes, once)
    _ = other
  }
}
