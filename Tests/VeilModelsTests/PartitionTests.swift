import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import VeilTestSupport

/// Cut points and head/tail split on the reference architectures: every cut, head then tail
/// equals the whole model; exported heads and tails run in ONNX Runtime with Veil's results.
final class PartitionTests: XCTestCase {
  func testCutPointsAreNamedStructurallyAndCrossOneTensor() throws {
    let expected: [String: [String]] = [
      "vgg16": ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"],
      "resnet50": ["stem", "layer1", "layer2", "layer3", "layer4", "avgpool"],
      "efficientnet_b0": ["features.0", "features.1", "features.2", "features.4", "features.8", "avgpool"],
    ]
    for name in ["vgg16", "resnet50", "efficientnet_b0"] {
      let g = try ModelZoo.build(name)
      let cuts = try g.candidateCuts()
      let names = cuts.map(\.name)
      XCTAssertEqual(names, g.metadata["cuts"]?.split(separator: ",").map(String.init), name)
      for n in expected[name]! { XCTAssertTrue(names.contains(n), "\(name) lacks cut \(n): \(names)") }
      // Indices in order; head work grows, tail work shrinks; the bytes are the shape's.
      XCTAssertEqual(cuts.map(\.index), Array(cuts.indices))
      for (a, b) in zip(cuts, cuts.dropFirst()) {
        XCTAssertLessThan(a.headNodes, b.headNodes)
        XCTAssertLessThanOrEqual(a.headFlops, b.headFlops)
        XCTAssertLessThanOrEqual(a.headParameterBytes, b.headParameterBytes)
      }
      // Head and tail share the work (the graph's FLOPs less its dropouts, which inference drops).
      let work = cuts[0].headFlops + cuts[0].tailFlops
      XCTAssertEqual(Double(work), Double(g.totalFlops), accuracy: Double(g.totalFlops) * 1e-4)
      for c in cuts {
        XCTAssertEqual(c.bytes, c.shape.reduce(1, *) * 4)
        XCTAssertEqual(c.headFlops + c.tailFlops, work, "\(name) \(c.name)")
      }
    }
    // VGG-16's block3_pool: [1, 256, 28, 28]; its head holds the first 7 convolutions.
    let vgg = try ModelZoo.build("vgg16")
    let c = try vgg.cut(named: "block3_pool")
    XCTAssertEqual(c.shape, [1, 256, 28, 28])
    let convWeights = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
      .reduce(0) { $0 + ($1.0 * 9 + 1) * $1.1 } * 4
    XCTAssertEqual(c.headParameterBytes, convWeights)
  }

  func testEveryPointIsListedWithAllAndBranchesAreRefused() throws {
    let g = try ModelZoo.build("resnet50")
    let all = try g.candidateCuts(all: true)
    let structural = try g.candidateCuts()
    XCTAssertGreaterThan(all.count, structural.count)
    // Inside a bottleneck the shortcut crosses too: no point between its convolutions.
    XCTAssertFalse(all.contains { $0.name.hasPrefix("layer1.0.conv2") || $0.name.hasPrefix("layer1.0.bn2") })
    XCTAssertThrowsError(try g.cut(named: "layer1.0.conv2")) { error in
      let text = "\(error)"
      XCTAssertTrue(text.contains("more than one tensor crosses") && text.contains("layer3"), text)
    }
    XCTAssertThrowsError(try g.cut(named: "layer9")) { error in
      XCTAssertTrue("\(error)".contains("layer3"), "\(error)")
    }
    XCTAssertEqual(try g.cut(named: "2").name, structural[2].name)
    // A single-tensor point that is not structural needs `all`.
    let inner = try XCTUnwrap(all.first { a in !structural.contains { $0.tensor == a.tensor } })
    XCTAssertThrowsError(try g.cut(named: inner.name)) { XCTAssertTrue("\($0)".contains("--all"), "\($0)") }
    XCTAssertEqual(try g.cut(named: inner.name, all: true).tensor, inner.tensor)
  }

  /// Head then tail gives the whole model's output, for every cut of the three reference
  /// architectures (batch 2, so the batch dimension is carried through the cut).
  func testHeadThenTailEqualsTheWholeModelAtEveryCut() throws {
    for name in ["vgg16", "resnet50", "efficientnet_b0"] {
      let g = try ModelZoo.build(name, batch: 2)
      var rng = SeededGenerator(label: "partition-\(name)")
      let x = Tensor.randomNormal(shape: g.shape(g.inputs[0])!, generator: &rng)
      let whole = try Executor(graph: g).run([x])[0]
      for cut in try g.candidateCuts() {
        let (head, tail) = try g.split(at: cut)
        XCTAssertEqual(head.shape(head.outputs[0]), cut.shape)
        XCTAssertEqual(tail.shape(tail.inputs[0]), cut.shape)
        XCTAssertEqual(head.parameterCount * 4, cut.headParameterBytes, "\(name) \(cut.name)")
        XCTAssertEqual(head.parameterCount + tail.parameterCount, g.parameterCount, "\(name) \(cut.name): weights are split, not shared")
        let feature = try Executor(graph: head).run([x])[0]
        let y = try Executor(graph: tail).run([feature])[0]
        let c = Comparison(got: y, want: whole, tolerance: .relativeToPeak(1e-5, of: whole))
        XCTAssertTrue(c.passed, "\(name) cut \(cut.name): \(c)")
      }
    }
  }

  /// Exported heads and tails (a few cuts of each architecture) run in ONNX Runtime and give
  /// what Veil's engine gives for the same part.
  func testExportedHeadsAndTailsMatchONNXRuntime() throws {
    var cases: [ReferenceCase] = []
    var veil: [String: Tensor] = [:]
    for (name, picks) in [("vgg16", ["block2_pool", "block5_pool"]), ("resnet50", ["layer1", "layer3"]), ("efficientnet_b0", ["features.2", "features.6"])] {
      let g = try ModelZoo.build(name)
      var rng = SeededGenerator(label: "partition-ort-\(name)")
      let x = Tensor.randomNormal(shape: g.shape(g.inputs[0])!, generator: &rng)
      for pick in picks {
        let (head, tail) = try g.split(at: try g.cut(named: pick))
        let feature = try Executor(graph: head).run([x])[0]
        let y = try Executor(graph: tail).run([feature])[0]
        cases.append(ReferenceCase(name: "\(name)_\(pick)_head", graph: head, inputs: [x]))
        cases.append(ReferenceCase(name: "\(name)_\(pick)_tail", graph: tail, inputs: [feature]))
        veil["\(name)_\(pick)_head"] = feature
        veil["\(name)_\(pick)_tail"] = y
      }
    }
    let ort = try ONNXRuntimeReference.outputs(for: cases)
    for c in cases {
      let want = try XCTUnwrap(ort[c.name]?.first, c.name)
      let cmp = Comparison(got: veil[c.name]!, want: want, tolerance: .relativeToPeak(1e-4, of: want))
      XCTAssertTrue(cmp.passed, "\(c.name): \(cmp)")
    }
  }
}
