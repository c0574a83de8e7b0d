import CDNNL
import Foundation

/// How the oneDNN backend computes 2-D convolutions.
///
/// `winograd`, the default, lets oneDNN 2.6 use its Winograd kernel (F(4×4, 3×3), AVX-512 only)
/// for the plain 3×3 stride-1 convolutions of batches of 2 or more, where it judges it faster,
/// on maps in 16-channel blocks; every other convolution, and every one at batch 1, is direct.
/// At batch 8 on an AMD EPYC with AVX-512 and 2 threads: VGG-16 2.5×, GoogLeNet 1.1–1.5×,
/// Inception-v3 1.2×, ResNet-50 and DenseNet-121 1.2× faster than direct, within 1.3e-6 of ONNX
/// Runtime (relative to the largest output). Its working memory (the transformed tiles of the
/// whole batch) is one buffer per executor, the largest layer's (`Executor.scratchpadBytes`):
/// VGG-16 at batch 8 peaks at 1159 MiB against 957 MiB direct (ONNX Runtime: 1078 MiB),
/// ResNet-50 at 302 against 185 MiB (ONNX Runtime: 424–441 MiB). docs/benchmarks.md,
/// "Winograd", has the figures. A head in an enclave runs at batch 1, where nothing changes.
/// `direct` is what ONNX Runtime and PyTorch compute on the CPU: `VEIL_CONV_ALGORITHM=direct`.
public enum ConvolutionAlgorithm: String, Sendable, CaseIterable {
  /// The direct algorithm for every convolution.
  case direct
  /// Winograd where oneDNN finds it faster, for batches of 2 or more (at batch 1 it was no
  /// faster); direct elsewhere.
  case winograd

  /// `VEIL_CONV_ALGORITHM` (direct or winograd) if set, else winograd.
  public static let processDefault: ConvolutionAlgorithm =
    ProcessInfo.processInfo.environment["VEIL_CONV_ALGORITHM"].flatMap { ConvolutionAlgorithm(rawValue: $0.lowercased()) }
    ?? .winograd

  /// Whether this CPU has the AVX-512 kernels oneDNN's Winograd needs.
  public static let winogradAvailable: Bool = {
    let isa = dnnl_get_effective_cpu_isa().rawValue
    let avx512 = dnnl_cpu_isa_avx512_core.rawValue
    return isa & avx512 == avx512
  }()

  /// Whether a convolution of these dimensions asks oneDNN for Winograd: a plain (ungrouped),
  /// unstrided 3×3 convolution of 2 or more items whose channels divide into 16-channel blocks.
  func asksForWinograd(inputDims: [Int], outputDims: [Int], kernel: [Int], groups: Int, spec: ConvolutionSpec) -> Bool {
    self == .winograd && Self.winogradAvailable && !spec.transposed && groups == 1 && inputDims.count == 4 && kernel == [3, 3]
      && outputDims.count == 4 && inputDims[0] >= 2 && inputDims[1] % 16 == 0 && outputDims[1] % 16 == 0
      && spec.strides == [1, 1] && spec.dilations == [1, 1]
  }
}
