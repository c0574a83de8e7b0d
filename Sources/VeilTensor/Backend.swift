import Foundation

/// The seam between the graph and whatever library computes. The graph executor asks for
/// "a convolution with these attributes and this post-op chain on an input of these
/// dimensions"; a backend answers with a `Kernel` that states the memory layouts it wants and
/// runs on raw buffers. oneDNN (`DNNLBackend`) is the backend today; another (CUDA, say) would
/// implement this protocol without the graph, formats or privacy code changing.

/// Point-wise activations the backend can run alone or fuse after a convolution.
public enum Activation: Sendable, Hashable, CustomStringConvertible {
  case relu
  case leakyRelu(alpha: Float)
  case clip(min: Float, max: Float)
  case sigmoid
  case silu
  case hardSigmoid(alpha: Float, beta: Float)
  case hardSwish
  case tanh

  public var description: String {
    switch self {
    case .relu: return "Relu"
    case .leakyRelu(let a): return "LeakyRelu(\(a))"
    case .clip(let lo, let hi): return "Clip(\(lo), \(hi))"
    case .sigmoid: return "Sigmoid"
    case .silu: return "SiLU"
    case .hardSigmoid(let a, let b): return "HardSigmoid(\(a), \(b))"
    case .hardSwish: return "HardSwish"
    case .tanh: return "Tanh"
    }
  }

  /// The scalar function, for reference kernels and tests.
  public func apply(_ x: Float) -> Float {
    switch self {
    case .relu: return max(x, 0)
    case .leakyRelu(let a): return x >= 0 ? x : a * x
    case .clip(let lo, let hi): return min(max(x, lo), hi)
    case .sigmoid: return 1 / (1 + expf(-x))
    case .silu: return x / (1 + expf(-x))
    case .hardSigmoid(let a, let b): return min(max(a * x + b, 0), 1)
    case .hardSwish: return x * min(max(x / 6 + 0.5, 0), 1)
    case .tanh: return tanhf(x)
    }
  }
}

/// What runs after a convolution's accumulation, in order.
public enum PostOp: Sendable, Hashable, CustomStringConvertible {
  case activation(Activation)
  /// Adds a second runtime input of the output's shape (a residual connection). The kernel's
  /// output buffer may be that input's buffer (in-place accumulation).
  case sum

  public var description: String {
    switch self {
    case .activation(let a): return a.description
    case .sum: return "Add"
    }
  }
}

/// Convolution (or transposed convolution) attributes, in ONNX's terms.
public struct ConvolutionSpec: Sendable, Hashable {
  public var strides: [Int]
  public var dilations: [Int]
  public var padsBegin: [Int]
  public var padsEnd: [Int]
  public var groups: Int
  public var transposed: Bool

  public init(strides: [Int], dilations: [Int], padsBegin: [Int], padsEnd: [Int], groups: Int, transposed: Bool = false) {
    self.strides = strides
    self.dilations = dilations
    self.padsBegin = padsBegin
    self.padsEnd = padsEnd
    self.groups = groups
    self.transposed = transposed
  }
}

public enum PoolingKind: Sendable, Hashable {
  case max
  case average(countIncludePad: Bool)
}

/// Pooling window; `padsEnd` already includes any extra needed by ceil mode.
public struct PoolingSpec: Sendable, Hashable {
  public var kind: PoolingKind
  public var kernel: [Int]
  public var strides: [Int]
  public var padsBegin: [Int]
  public var padsEnd: [Int]

  public init(kind: PoolingKind, kernel: [Int], strides: [Int], padsBegin: [Int], padsEnd: [Int]) {
    self.kind = kind
    self.kernel = kernel
    self.strides = strides
    self.padsBegin = padsBegin
    self.padsEnd = padsEnd
  }
}

public enum BinaryKind: Int, Sendable, Hashable {
  case add = 0, sub, mul, div
}

public enum ResizeKind: Sendable, Hashable {
  /// Nearest neighbour with integer-aligned sampling (ONNX asymmetric+floor, equivalently
  /// half_pixel+round_prefer_floor at integer scales).
  case nearest
  /// Bilinear with half-pixel centres (ONNX half_pixel / PyTorch align_corners=False).
  case linear
}

public enum PadMode: Int32, Sendable, Hashable {
  case constant = 0, reflect, edge
}

/// A compiled operation on raw buffers. Inputs must be in `inputLayouts`, the output is
/// written in `outputLayout`.
public protocol Kernel: AnyObject, Sendable {
  var name: String { get }
  var inputLayouts: [Layout] { get }
  var outputLayout: Layout { get }
  /// The input whose buffer the output may overwrite (element-wise ops, residual sums).
  var inPlaceInput: Int? { get }
  /// Bytes of constant data (reordered weights) the kernel owns.
  var constantBytes: Int { get }
  func run(inputs: [UnsafeMutableRawPointer], output: UnsafeMutableRawPointer) throws
}

/// The primitives a backend provides. Every method checks its arguments and throws
/// `TensorError` with the offending values.
public protocol ComputeBackend: Sendable {
  var name: String { get }
  func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp],
    outputDims: [Int]) throws -> Kernel
  func activation(_ activation: Activation, input: Layout) throws -> Kernel
  func pooling(_ spec: PoolingSpec, input: Layout, outputDims: [Int]) throws -> Kernel
  func batchNormalization(
    input: Layout, scale: Tensor, bias: Tensor, mean: Tensor, variance: Tensor, epsilon: Float) throws -> Kernel
  func binary(_ kind: BinaryKind, a: Layout, b: Layout, outputDims: [Int]) throws -> Kernel
  func concat(axis: Int, inputs: [Layout]) throws -> Kernel
  /// y = x · Wᵀ + b with constant W of shape [out, in].
  func innerProduct(inputDims: [Int], weights: Tensor, bias: Tensor?) throws -> Kernel
  /// Batched matrix product of two runtime tensors (numpy broadcasting of batch dims).
  func matmul(a: [Int], b: [Int], outputDims: [Int]) throws -> Kernel
  func softmax(axis: Int, input: Layout) throws -> Kernel
  /// Local response normalization across channels: x / (k + alpha/size · Σ x²)^beta.
  func localResponseNormalization(size: Int, alpha: Float, beta: Float, k: Float, input: Layout) throws -> Kernel
  func resize(_ kind: ResizeKind, input: Layout, outputDims: [Int]) throws -> Kernel
  func pad(mode: PadMode, value: Float, pads: [Int], inputDims: [Int]) throws -> Kernel
  func transpose(permutation: [Int], inputDims: [Int]) throws -> Kernel
  func reorder(from: Layout, to: Layout) throws -> Kernel
}
