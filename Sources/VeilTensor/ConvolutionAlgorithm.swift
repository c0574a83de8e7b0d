import CDNNL
import Foundation

/// How the oneDNN backend computes 2-D convolutions.
///
/// `direct`, the default, is what ONNX Runtime and PyTorch compute on the CPU. `winograd` lets
/// oneDNN 2.6 use its Winograd kernel (F(4×4, 3×3), AVX-512 only) for the 3×3 stride-1
/// convolutions where it judges it faster, on maps in 16-channel blocks: at batch 8 on an AMD
/// EPYC with AVX-512 and 2 threads, VGG-16 2.5×, GoogLeNet 1.4–1.6× and ResNet-50 1.2× faster, within
/// 1.3e-6 of ONNX Runtime (relative to the largest output). It costs memory: each Winograd
/// layer's kernel keeps scratch for the transformed tiles of its whole batch, so it is for the
/// accelerator's batched tails, not for a head in an enclave's few megabytes of protected
/// memory. docs/benchmarks.md, "Winograd", has the figures.
public enum ConvolutionAlgorithm: String, Sendable, CaseIterable {
  case direct
  /// Winograd where oneDNN finds it faster, for batches of 2 or more (at batch 1 it was no
  /// faster); direct elsewhere.
  case winograd

  /// `VEIL_CONV_ALGORITHM` (direct or winograd) if set, else direct.
  public static let processDefault: ConvolutionAlgorithm =
    ProcessInfo.processInfo.environment["VEIL_CONV_ALGORITHM"].flatMap { ConvolutionAlgorithm(rawValue: $0.lowercased()) }
    ?? .direct

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
