import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import VeilTestSupport

/// A vision transformer exported by PyTorch (scripts/vit_export.py: torchvision's
/// VisionTransformer module by module in plain torch, nn.MultiheadAttention, random weights),
/// by both exporters: the TorchScript one at opsets 14 (LayerNorm written out as ReduceMean,
/// Pow, Sqrt…) and 17 (LayerNormalization; GELU as Erf arithmetic, or Tanh arithmetic for the
/// approximation), and torch.export's at opsets 18 (Erf arithmetic) and 20 (the Gelu op). Veil
/// imports each file and matches ONNX Runtime on the original within 1e-4 of the largest logit,
/// at batch 2; the same weights saved as a state_dict under torchvision's keys load by name
/// into the zoo's ViT builder (`ModelZoo.visionTransformer`) and give the same logits. Skipped,
/// with the reason printed, when torch is not importable in .venv.
final class ViTExportTests: XCTestCase {
  static let variants = ["14:script:erf", "17:script:erf", "17:script:tanh", "18:dynamo:erf", "20:dynamo:erf", "20:dynamo:tanh"]

  func testExportedVisionTransformerMatchesONNXRuntime() throws {
    try TorchExport.each("vit_export.py", variants: Self.variants, what: "vision transformer") { e in
      // The TorchScript exports' attention reshapes fold the batch into the heads: imported at
      // the batch they run.
      let g = try ONNXReader.read(e.model, batch: e.input.shape[0])
      // Three encoder blocks: two LayerNorms each and the encoder's, whichever way the file
      // writes them; GELU's erf form is one op.
      let norms = g.nodes.filter { if case .layerNormalization = $0.op { return true } else { return false } }
      XCTAssertEqual(norms.count, 7, "\(e.name): two LayerNorms per block and the encoder's")
      if e.name.hasSuffix("erf") {
        let gelus = g.nodes.filter { if case .activation(.gelu(tanh: false)) = $0.op { return true } else { return false } }
        XCTAssertEqual(gelus.count, 3, "\(e.name): one fused GELU per block")
      }
      for optimize in [false, true] {
        let got = try Executor(graph: g, options: ExecutorOptions(optimize: optimize)).run([e.input])[0]
        let c = Comparison(got: got, want: e.expected, tolerance: .relativeToPeak(1e-4, of: e.expected))
        print("vit \(e.name) [optimize: \(optimize)]: max|veil−ort|/max|ort| = \(c.relativeToPeakError)")
        XCTAssertTrue(c.passed, "\(e.name) [optimize: \(optimize)]: \(c)")
      }
      // The same weights as a torchvision state_dict, loaded by name into the zoo's builder.
      guard e.name.hasSuffix("erf") else { return }
      var zoo = try ModelZoo.visionTransformer(
        VisionTransformerShape(image: 32, patch: 8, layers: 3, heads: 4, dim: 64, mlp: 128, classes: 10), batch: 2)
      let report = StateDict.load(try TorchCheckpoint.read(e.model.deletingLastPathComponent().appendingPathComponent("state_dict.pth")), into: &zoo)
      XCTAssertTrue(report.isComplete, "\(e.name): \(report)")
      let got = try Executor(graph: zoo).run([e.input])[0]
      let c = Comparison(got: got, want: e.expected, tolerance: .relativeToPeak(1e-4, of: e.expected))
      print("vit \(e.name) state_dict in the zoo builder: max|veil−ort|/max|ort| = \(c.relativeToPeakError)")
      XCTAssertTrue(c.passed, "\(e.name) state_dict: \(c)")
    }
  }
}
