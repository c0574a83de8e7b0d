import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport

/// torchvision's own models, exported by PyTorch's TorchScript exporter (Debian's PyTorch 1.13
/// and torchvision 0.14, scripts/torchvision_export.py, random weights with BatchNorm and
/// LayerNorm statistics drawn away from 1 and 0), at opsets 11, 13 and 17: classifiers of every
/// family the survey in docs/onnx-support.md covers, a Swin transformer (whose shifted-window
/// mask and relative-position bias the exporter computes from shapes: Range, ScatterND, Where,
/// Equal, Not, all folded at import), ViT-B/16, and a Faster R-CNN feature pyramid (Resize).
/// Veil imports each at the batch of its input and matches PyTorch's own output and ONNX
/// Runtime's on the file, within 1e-4 of the largest value. Skipped, with the reason printed,
/// when Debian's python3-torchvision is not installed (`make python-torchvision`).
///
/// Opsets 18 to 21 come from PyTorch 2's torch.export-based exporter (the one PyTorch now
/// writes by default), run by .venv's PyTorch 2.13 with torchvision 0.28 (`make python-torch`):
/// it writes ReduceMean with its axes as an input, Split into equal parts by `num_outputs`,
/// LayerNormalization and Gelu as ops, Einsum (MaxViT), an `as_strided` Gather (ConvNeXt), and
/// for Swin V2's cosine attention ReduceL2, Expand and GatherND.
final class TorchvisionExportTests: XCTestCase {
  static let variants = [
    "mobilenet_v3_small:11", "squeezenet1_1:13", "shufflenet_v2_x1_0:17:2", "regnet_y_400mf:13", "efficientnet_b0:17",
    "googlenet:11", "densenet121:13:2", "convnext_tiny:17", "swin_t:11", "swin_t:17:2", "vit_b_16:17",
    "fpn_mobilenet_v3_large:13",
    // At batch 8 its expansions and depthwise steps run as fused kernels (PointwiseDepthwiseTests).
    "mobilenet_v2:13:8",
  ]

  static let dynamoVariants = [
    "shufflenet_v2_x1_0:18:2", "efficientnet_b0:19", "convnext_tiny:20", "swin_t:21", "maxvit_t:18",
    "mobilenet_v3_small:21:2", "swin_v2_t:20",
  ]

  func testTorchvisionExportsMatchPyTorchAndONNXRuntime() throws {
    try TorchExport.each(
      "torchvision_export.py", variants: Self.variants, what: "torchvision model", python: PythonScript.debianPython,
      Self.check)
  }

  func testTorchExportOfTorchvisionAtOpsets18To21MatchesPyTorchAndONNXRuntime() throws {
    try TorchExport.each("torchvision_export.py", variants: Self.dynamoVariants, what: "torchvision model", Self.check)
  }

  /// timm's architectures beyond torchvision's (timm 1.0 on .venv's PyTorch 2, `make
  /// python-torch`): MobileViT's unfold and fold, LeViT's attention with its own means over
  /// tokens and HardSwish, ResNeSt's split attention (a ReduceSum over the radix), MixNet's
  /// five-way Split, HRNet's multi-resolution fusion (Resize), TF-EfficientNet-Lite0's
  /// "same" padding computed from the size.
  static let timmVariants = [
    "timm/mobilevit_s:18", "timm/levit_128:21", "timm/resnest14d:18", "timm/mixnet_s:21", "timm/hrnet_w18_small:18",
    "timm/tf_efficientnet_lite0:21",
  ]

  func testTimmExportsAtOpsets18To21MatchPyTorchAndONNXRuntime() throws {
    try TorchExport.each("torchvision_export.py", variants: Self.timmVariants, what: "timm model", Self.check)
  }

  static func check(_ e: TorchExport) throws {
    let g = try ONNXReader.read(e.model, batch: e.input.shape[0])
    let got = try Executor(graph: g).run([e.input])[0]
    let c = Comparison(got: got, want: e.expected, tolerance: .relativeToPeak(1e-4, of: e.expected))
    print("\(e.name): max|veil−torch|/max|torch| = \(c.relativeToPeakError)")
    XCTAssertTrue(c.passed, "\(e.name) against PyTorch: \(c)")
    // ONNX Runtime on the exported file itself (scripts/compare_ort.py exits 1 above 1e-4).
    let out = e.model.deletingLastPathComponent().appendingPathComponent("veil_0.npy")
    try NPY.write(got, to: out)
    let input = e.model.deletingLastPathComponent().appendingPathComponent("input_0.npy")
    XCTAssertNoThrow(
      print(try PythonScript.run("compare_ort.py", [e.model.path, input.path, out.path]).trimmingCharacters(in: .newlines)),
      "\(e.name) against ONNX Runtime")
  }
}
