import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport

/// A ShuffleNet V2 exported by PyTorch's TorchScript exporter (scripts/shufflenet_export.py:
/// torchvision's blocks in plain torch, random weights and BatchNorm statistics), with its
/// channel split written the three ways exporters write it (Slices whose bounds come from
/// Shape arithmetic, constant Slices, Split) at opsets 11, 13 and 18: Veil imports each file
/// and matches ONNX Runtime on the original within 1e-4 of the largest logit, at batch 2.
/// Skipped, with the reason printed, when torch is not importable in .venv.
final class ShuffleNetExportTests: XCTestCase {
  static let variants = ["11:split", "13:chunk", "13:slice", "13:split", "18:split"]

  func testExportedShuffleNetV2MatchesONNXRuntime() throws {
    try TorchExport.each("shufflenet_export.py", variants: Self.variants, what: "ShuffleNet V2") { e in
      let g = try ONNXReader.read(e.model).withBatch(e.input.shape[0])
      // Stages of 4, 8 and 4 units: 3 + 7 + 3 of stride 1, each splitting its input in two.
      let slices = g.nodes.filter { if case .slice = $0.op { return true } else { return false } }
      XCTAssertEqual(slices.count, 26, "\(e.name): one Slice per half of each stride-1 unit's split")
      for optimize in [false, true] {
        let got = try Executor(graph: g, options: ExecutorOptions(optimize: optimize)).run([e.input])[0]
        let c = Comparison(got: got, want: e.expected, tolerance: .relativeToPeak(1e-4, of: e.expected))
        print("shufflenet v2 \(e.name) [optimize: \(optimize)]: max|veil−ort|/max|ort| = \(c.relativeToPeakError)")
        XCTAssertTrue(c.passed, "\(e.name) [optimize: \(optimize)]: \(c)")
      }
    }
  }
}
