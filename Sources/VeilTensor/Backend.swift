import Foundation

/// The seam between the graph and whatever library computes. The graph executor asks for
/// "a convolution with these attributes and this post-op chain on an input of these
/// dimensions"; a backend answers with a `Kernel` that states the memory layouts it wants and
/// runs on raw buffers. Layouts are backend-neutral (`Layout`: dimensions plus the backend's
/// opaque token), and the caller passes the backend in (or takes `Backends.compute`), so the
/// graph layer never names a library. Training has its own short list (`TrainingBackend`).
/// oneDNN (`DNNLBackend`) implements both today; another (CUDA, say) is one new module that
/// implements them, without the graph, training, formats or privacy code changing.
/// A kernel also states the working memory it needs while it runs (`scratchpadBytes`); the
/// executor, which runs one kernel at a time, gives them all one buffer of the largest need.

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
  /// √x (ReduceL2's last step: Swin V2 normalises its queries and keys).
  case sqrt
  /// x·Φ(x): with `tanh`, the approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (ONNX
  /// Gelu's approximate = "tanh", PyTorch's `approximate="tanh"`); without, the exact erf form.
  case gelu(tanh: Bool)

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
    case .sqrt: return "Sqrt"
    case .gelu(let t): return t ? "Gelu(tanh)" : "Gelu"
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
    case .sqrt: return x.squareRoot()
    case .gelu(let t):
      if t { return 0.5 * x * (1 + tanhf(0.797_884_56 * (x + 0.044715 * x * x * x))) }
      return 0.5 * x * (1 + erff(x * 0.707_106_78))
    }
  }
}

/// What runs after a convolution's or a dense layer's accumulation, in order.
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

/// An inverted residual block's first two convolutions as one kernel (MobileNet V2, MNASNet,
/// MobileNet V3, EfficientNet): a 1×1 convolution (stride 1, no padding, ungrouped) and its
/// activations, then a 3×3 depthwise convolution over that result (one filter per channel,
/// padding 1 on every side, stride 1 or 2) and its activations. The 1×1 result, the block's
/// largest map (six times the block's input channels), then stays in the cache between the two
/// instead of going to memory and back.
public struct PointwiseDepthwise: Sendable {
  /// The block's input, [N, C, H, W].
  public var inputDims: [Int]
  /// The 1×1 convolution's weights [E, C, 1, 1] and bias [E].
  public var weights: Tensor
  public var bias: Tensor?
  public var activations: [Activation]
  /// 1 or 2 in both directions.
  public var depthwiseStride: Int
  /// [E, 1, 3, 3] and [E].
  public var depthwiseWeights: Tensor
  public var depthwiseBias: Tensor?
  public var depthwiseActivations: [Activation]
  /// [N, E, H', W'] with H' = (H − 1)/stride + 1.
  public var outputDims: [Int]

  public init(
    inputDims: [Int], weights: Tensor, bias: Tensor?, activations: [Activation], depthwiseStride: Int,
    depthwiseWeights: Tensor, depthwiseBias: Tensor?, depthwiseActivations: [Activation], outputDims: [Int]
  ) {
    self.inputDims = inputDims
    self.weights = weights
    self.bias = bias
    self.activations = activations
    self.depthwiseStride = depthwiseStride
    self.depthwiseWeights = depthwiseWeights
    self.depthwiseBias = depthwiseBias
    self.depthwiseActivations = depthwiseActivations
    self.outputDims = outputDims
  }

  /// The expanded map's dimensions, [N, E, H, W]: the 1×1 convolution's output.
  public var expandedDims: [Int] { [inputDims[0], weights.shape[0]] + inputDims.suffix(2) }
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
  /// Bytes of working memory the kernel needs while it runs and not after (a Winograd
  /// convolution's transformed tiles). The kernels of one executor run one at a time, so it
  /// gives them all one buffer of the largest size (`bindScratchpad`).
  var scratchpadBytes: Int { get }
  /// Makes `buffer` (at least `scratchpadBytes`, 64-byte aligned, alive while the kernel is)
  /// the kernel's working memory. A kernel never bound owns a buffer of its own.
  func bindScratchpad(_ buffer: UnsafeMutableRawPointer) throws
  func run(inputs: [UnsafeMutableRawPointer], output: UnsafeMutableRawPointer) throws
}

extension Kernel {
  public var scratchpadBytes: Int { 0 }
  public func bindScratchpad(_ buffer: UnsafeMutableRawPointer) throws {}
}

/// The primitives a backend provides. Every method checks its arguments and throws
/// `TensorError` with the offending values.
public protocol ComputeBackend: Sendable {
  var name: String { get }
  /// The most dimensions a tensor it computes on may have (oneDNN's descriptors hold 12). The
  /// executor refuses a graph with a larger one, naming the node, before it asks for a kernel.
  var maxRank: Int { get }
  func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp],
    outputDims: [Int]) throws -> Kernel
  /// `block` as one kernel, or nil where the backend has none or expects no gain from it: the
  /// caller then runs the two convolutions apart (`convolution`). The kernel reads the block's
  /// input and writes the depthwise convolution's output.
  func pointwiseDepthwise(_ block: PointwiseDepthwise) throws -> Kernel?
  /// `convolution`, told the layout its input is held in (`inputLayout`), which a backend may
  /// read directly where it has a kernel for it, instead of the layout it would pick alone.
  func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp],
    outputDims: [Int], inputLayout: Layout?) throws -> Kernel
  func activation(_ activation: Activation, input: Layout) throws -> Kernel
  func pooling(_ spec: PoolingSpec, input: Layout, outputDims: [Int]) throws -> Kernel
  /// Inference BatchNorm; with `relu`, a ReLU fused after it (a pre-activation network's
  /// BatchNorm → ReLU, one pass).
  func batchNormalization(
    input: Layout, scale: Tensor, bias: Tensor, mean: Tensor, variance: Tensor, epsilon: Float, relu: Bool) throws -> Kernel
  func binary(_ kind: BinaryKind, a: Layout, b: Layout, outputDims: [Int]) throws -> Kernel
  func concat(axis: Int, inputs: [Layout]) throws -> Kernel
  /// y = x · Wᵀ + b with constant W of shape [out, in], then `postOps` (a `.sum` reads a
  /// second runtime input of the output's dimensions, plain, as the convolution's does).
  func innerProduct(inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp]) throws -> Kernel
  /// Batched matrix product of two runtime tensors (numpy broadcasting of batch dims).
  func matmul(a: [Int], b: [Int], outputDims: [Int]) throws -> Kernel
  func softmax(axis: Int, input: Layout) throws -> Kernel
  /// Multi-head self-attention on a packed projection: the plain input [batch, tokens,
  /// packedWidth] holds Q, K and V at `offsets` (3 values) on its last axis, each `heads`
  /// heads of `headWidth` side by side; the plain output [batch, tokens, heads, headWidth] is
  /// softmax(scale·Q·Kᵀ)·V per head (softmax over the keys). The kernel's second input is
  /// working memory for the scores (`inputLayouts[1]`, contents undefined, overwritten), which
  /// the caller places in its activation memory.
  func attention(batch: Int, tokens: Int, heads: Int, headWidth: Int, packedWidth: Int, offsets: [Int], scale: Float)
    throws -> Kernel
  /// Layer normalisation over the last axis: y = (x − mean)/√(var + ε)·scale + bias, with the
  /// biased variance of each row; scale and bias (constant, [last axis]) are per feature.
  func layerNormalization(input: Layout, scale: Tensor, bias: Tensor?, epsilon: Float) throws -> Kernel
  /// Local response normalization across channels: x / (k + alpha/size · Σ x²)^beta.
  func localResponseNormalization(size: Int, alpha: Float, beta: Float, k: Float, input: Layout) throws -> Kernel
  func resize(_ kind: ResizeKind, input: Layout, outputDims: [Int]) throws -> Kernel
  func pad(mode: PadMode, value: Float, pads: [Int], inputDims: [Int]) throws -> Kernel
  func transpose(permutation: [Int], inputDims: [Int]) throws -> Kernel
  /// Axis 1's C channels viewed as [groups, C/groups] and that view transposed (ShuffleNet),
  /// in `input`'s layout; a backend may refuse a non-plain one, and the caller then passes the
  /// plain layout.
  func channelShuffle(groups: Int, input: Layout) throws -> Kernel
  /// ONNX Slice, resolved: output element i takes input element `starts[d] + i[d]·steps[d]`
  /// on every axis d (starts within the input, steps non-zero, negative ones walk back). A
  /// backend may refuse a non-plain `input`; the caller then passes the plain layout.
  func slice(starts: [Int], steps: [Int], input: Layout, outputDims: [Int]) throws -> Kernel
  func reorder(from: Layout, to: Layout) throws -> Kernel

  /// One thread's time, in nanoseconds, below which a step is better run by the calling
  /// thread alone than by the backend's thread team: what waking the team costs (threads that
  /// sleep between parallel regions take tens of microseconds to wake). 0: every step runs on
  /// the whole team.
  var serialStepNanoseconds: Double { get }
  /// Runs `body` with the calling thread's kernels limited to one thread. A kernel made in it is
  /// made for one thread, and runs in it again (`Executor` does both for its small steps).
  func serially<T>(_ body: () throws -> T) rethrows -> T
  /// Runs `body` with the calling thread's kernels on the process's thread team, as many
  /// threads as the process asked for, whichever thread calls. A kernel is made for a team
  /// size (oneDNN sizes per-thread scratch and splits work then), and a thread that never set
  /// its own would otherwise use every core: `Executor` compiles and runs in it, so a
  /// server's worker threads keep to `--threads` too.
  func onTeam<T>(_ body: () throws -> T) rethrows -> T
}

extension ComputeBackend {
  public var serialStepNanoseconds: Double { 0 }
  public func pointwiseDepthwise(_ block: PointwiseDepthwise) throws -> Kernel? { nil }
  public func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp],
    outputDims: [Int], inputLayout: Layout?
  ) throws -> Kernel {
    try convolution(spec, inputDims: inputDims, weights: weights, bias: bias, postOps: postOps, outputDims: outputDims)
  }
  public func serially<T>(_ body: () throws -> T) rethrows -> T { try body() }
  public func onTeam<T>(_ body: () throws -> T) rethrows -> T { try body() }
}

/// A convolution for training with fixed shapes: forward, and the two backward passes.
/// Tensors are plain (NCHW activations, ONNX weight order), whatever layouts it uses inside.
public protocol TrainingConvolutionKernel: AnyObject, Sendable {
  /// y = conv(x, W) + b.
  func forward(input: Tensor, weights: Tensor, bias: Tensor?) throws -> Tensor
  /// ∂L/∂x from ∂L/∂y.
  func backwardData(outputGradient: Tensor, weights: Tensor) throws -> Tensor
  /// ∂L/∂W (and ∂L/∂b when the convolution has a bias) from the input and ∂L/∂y.
  func backwardWeights(input: Tensor, outputGradient: Tensor) throws -> (weights: Tensor, bias: Tensor?)
}

/// The primitives the training engine (VeilTrain) computes with, beyond element-wise loops of
/// its own: convolutions with their backward passes, matrix products, batch normalisation over
/// [N, C, ...] tensors with the batch statistics the autograd layer keeps, and Adam's update.
public protocol TrainingBackend: Sendable {
  var name: String { get }
  /// A convolution (or, with `spec.transposed`, a transposed one) of these shapes; 2-D, grouped
  /// or not. Weights are [out, in/groups, kh, kw] (Conv) or [in, out/groups, kh, kw]
  /// (ConvTranspose). A backend may share one kernel between calls with the same shapes.
  func trainingConvolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool
  ) throws -> any TrainingConvolutionKernel
  /// Per-channel mean and biased variance over the batch and every position.
  func channelMeanVariance(_ x: Tensor) -> (mean: [Double], variance: [Double])
  /// x̂ = (x − mean)·invStd and y = γ·x̂ + β, per channel.
  func batchNormApply(_ x: Tensor, mean: [Float], invStd: [Float], scale: Tensor, shift: Tensor)
    -> (normalized: Tensor, output: Tensor)
  /// Per-channel Σg and Σg·h of two tensors of one shape.
  func channelSums(_ g: Tensor, _ h: Tensor) -> (sum: [Double], dot: [Double])
  /// dx = k·(g − a − h·b), per channel: batch normalisation's input gradient.
  func batchNormBackward(_ g: Tensor, normalized h: Tensor, k: [Float], a: [Float], b: [Float]) -> Tensor
  /// y = a·(x − m) + b per channel.
  func channelAffine(_ x: Tensor, scale a: [Float], center m: [Float], shift b: [Float]) -> Tensor
  /// c[m×n] += α·op(a)·op(b), row-major: op(a) [m×k] is a, or aᵀ of a stored [k×m]; op(b)
  /// [k×n] is b, or bᵀ of b stored [n×k]. Every matrix product of the autograd layer (Gemm,
  /// Linear, MatMul, forward and backward) is this one call.
  func multiplyAccumulate(
    _ a: UnsafePointer<Float>, transposeA: Bool, _ b: UnsafePointer<Float>, transposeB: Bool,
    into c: UnsafeMutablePointer<Float>, m: Int, k: Int, n: Int, alpha: Float)
  /// One Adam update of `weights` in place, with its moments: g ← g + wd·w,
  /// m ← β1·m + (1 − β1)·g, v ← β2·v + (1 − β2)·g², w ← w − lr·(m/c1)/(√(v/c2) + ε).
  func adamStep(
    weights: inout Tensor, firstMoment: inout Tensor, secondMoment: inout Tensor, gradient: Tensor,
    beta1: Float, beta2: Float, learningRate: Float, biasCorrection1: Float, biasCorrection2: Float,
    epsilon: Float, weightDecay: Float)
}

/// The backends used where a caller names none: an executor made without `backend:`, a
/// training layer made without `backend:`. oneDNN's unless a backend module is installed at
/// start-up (`Backends.compute = MyBackend()`), before the first executor or layer is made; a
/// layer or executor keeps the backend it was made with. Code that must not depend on
/// process-wide choices (tests comparing backends) passes its backend explicitly.
public enum Backends {
  private static let lock = NSLock()
  nonisolated(unsafe) private static var computeBackend: any ComputeBackend = DNNLBackend.shared
  nonisolated(unsafe) private static var trainingBackend: any TrainingBackend = DNNLBackend.shared

  public static var compute: any ComputeBackend {
    get { lock.withLock { computeBackend } }
    set { lock.withLock { computeBackend = newValue } }
  }

  public static var training: any TrainingBackend {
    get { lock.withLock { trainingBackend } }
    set { lock.withLock { trainingBackend = newValue } }
  }
}
