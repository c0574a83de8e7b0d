import CDNNL
import Foundation

// Argument slots of oneDNN's execute call (dnnl_types.h); the C macros chain, so Swift does
// not import them.
let argSrc: Int32 = 1
let argSrc1: Int32 = 2
let argDst: Int32 = 17
let argWeights: Int32 = 33
let argBias: Int32 = 41
let argMean: Int32 = 49
let argVariance: Int32 = 50
let argScale: Int32 = 51
let argShift: Int32 = 52
let argScratchpad: Int32 = 80
/// A fused depthwise post-op's own arguments: DNNL_ARG_ATTR_POST_OP_DW | its weights or bias.
let argDepthwiseWeights: Int32 = 8192 | argWeights
let argDepthwiseBias: Int32 = 8192 | argBias
let argMultipleSrc: Int32 = 1024

/// Passes `&value` when `present`, else nil (optional descriptor arguments such as a bias).
func withOptionalPointer<T, R>(_ present: Bool, _ value: inout T, _ body: (UnsafePointer<T>?) throws -> R) rethrows -> R {
  if present { return try withUnsafePointer(to: &value) { try body($0) } }
  return try body(nil)
}

/// A primitive descriptor and its primitive, shared by every kernel with the same key.
final class PrimitiveEntry: @unchecked Sendable {
  let pd: dnnl_primitive_desc_t
  let primitive: dnnl_primitive_t

  init(pd: dnnl_primitive_desc_t, operation: String) throws {
    var p: dnnl_primitive_t?
    let status = dnnl_primitive_create(&p, pd)
    guard status == dnnl_success, let p else {
      dnnl_primitive_desc_destroy(pd)
      throw TensorError.backend(operation: operation, status: Int32(status.rawValue), detail: "creating the primitive")
    }
    self.pd = pd
    primitive = p
  }

  /// oneDNN's name of the implementation it chose ("jit:avx512_core", "ref:any", ...).
  var implementation: String { Self.implementation(of: pd) }

  static func implementation(of pd: dnnl_primitive_desc_t) -> String {
    var name: UnsafePointer<CChar>?
    guard dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success, let name else { return "" }
    return String(cString: name)
  }

  /// Bytes of scratchpad the primitive needs from its caller (0 when it needs none, or when
  /// it was made in oneDNN's own scratchpad mode, as training's primitives are).
  var scratchpadBytes: Int {
    var m = md(dnnl_query_scratchpad_md)
    return Int(veil_md_size(&m))
  }

  func md(_ what: dnnl_query_t, _ index: Int32 = 0) -> dnnl_memory_desc_t {
    dnnl_primitive_desc_query_md(pd, what, index).pointee
  }

  deinit {
    dnnl_primitive_destroy(primitive)
    dnnl_primitive_desc_destroy(pd)
  }
}

/// Values by key, at most `capacity` of them: a miss beyond that evicts the least recently
/// used. Kernels hold their own references, so evicting an entry only means the next kernel of
/// that key builds it again.
final class LRUCache<Value>: @unchecked Sendable {
  let capacity: Int
  private var entries: [String: (value: Value, lastUse: UInt64)] = [:]
  private var clock: UInt64 = 0
  private let lock = NSLock()
  private var counts = (hits: 0, misses: 0, evictions: 0)

  init(capacity: Int) {
    precondition(capacity >= 1, "a cache holds at least one entry")
    self.capacity = capacity
  }

  /// The value of `key`, made (under the lock, so once) on a miss.
  func value(_ key: String, make: () throws -> Value) throws -> Value {
    lock.lock()
    defer { lock.unlock() }
    clock += 1
    if let e = entries[key] {
      counts.hits += 1
      entries[key] = (e.value, clock)
      return e.value
    }
    counts.misses += 1
    let v = try make()
    if entries.count >= capacity, let oldest = entries.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
      entries[oldest] = nil
      counts.evictions += 1
    }
    entries[key] = (v, clock)
    return v
  }

  var count: Int { lock.withLock { entries.count } }
  var statistics: (hits: Int, misses: Int, evictions: Int) { lock.withLock { counts } }
}

/// Primitives keyed by operation, attributes, shapes and layouts. A model compiled twice (or
/// at a second batch size sharing layers) reuses them; oneDNN's own JIT cache sits below this.
final class PrimitiveCache: @unchecked Sendable {
  private let cache: LRUCache<PrimitiveEntry>

  init(capacity: Int) { cache = LRUCache(capacity: capacity) }

  /// The thread count the primitive is made for is part of its key: oneDNN fixes a JIT
  /// kernel's thread split when it is made (`DNNLBackend.serially`). Entries here are shared
  /// by executors on several threads, so each must leave its scratchpad to the kernel
  /// (`DNNLBackend.userScratchpad`); one made otherwise is refused, not cached.
  func entry(_ key: String, operation: String, make: () throws -> dnnl_primitive_desc_t) throws -> PrimitiveEntry {
    try cache.value("\(key)|threads \(omp_get_max_threads())") {
      let pd = try make()
      var attr: const_dnnl_primitive_attr_t?
      var mode = dnnl_scratchpad_mode_library
      guard dnnl_primitive_desc_get_attr(pd, &attr) == dnnl_success,
        dnnl_primitive_attr_get_scratchpad_mode(attr, &mode) == dnnl_success, mode == dnnl_scratchpad_mode_user
      else {
        dnnl_primitive_desc_destroy(pd)
        throw TensorError.backend(
          operation: operation, status: Int32(dnnl_invalid_arguments.rawValue),
          detail: "its primitive was made with oneDNN's own scratchpad, which executors on other threads would share")
      }
      return try PrimitiveEntry(pd: pd, operation: operation)
    }
  }

  var count: Int { cache.count }
  var statistics: (hits: Int, misses: Int, evictions: Int) { cache.statistics }
}

/// A step's scratchpad: a memory object over a buffer its kernel is given (`bindScratchpad`).
final class ScratchpadMemory: @unchecked Sendable {
  let memory: dnnl_memory_t

  init(_ md: dnnl_memory_desc_t, engine: dnnl_engine_t) throws {
    var d = md
    var m: dnnl_memory_t?
    // DNNL_MEMORY_NONE (NULL): the buffer is bound before the first run.
    try check(dnnl_memory_create(&m, &d, engine, nil), "creating a scratchpad")
    memory = m!
  }

  deinit { dnnl_memory_destroy(memory) }
}

/// A memory object whose data pointer is set at each run.
final class BoundMemory: @unchecked Sendable {
  let memory: dnnl_memory_t
  let layout: Layout

  init(_ layout: Layout, engine: dnnl_engine_t, handle: UnsafeMutableRawPointer? = nil) throws {
    var md = try layout.dnnlMD()
    var m: dnnl_memory_t?
    try check(dnnl_memory_create(&m, &md, engine, handle), "creating memory \(layout)")
    memory = m!
    self.layout = layout
  }

  deinit { dnnl_memory_destroy(memory) }
}

/// Weights in a kernel's layout, one copy for every kernel that reorders the same values into
/// the same layout: a served model's executors, one per batch size, or the accelerator's tails
/// of every cut held each its own copy before (ResNet-50's tail after `layer2` at eight batch
/// sizes: eight). Found by the layout and a hash of the values, then compared byte for byte;
/// held weakly, so the last kernel that drops a copy frees it.
final class SharedConstants: @unchecked Sendable {
  private final class Entry {
    weak var storage: TensorStorage?
    init(_ storage: TensorStorage) { self.storage = storage }
  }

  private let lock = NSLock()
  private var entries: [String: [Entry]] = [:]
  private var insertions = 0

  /// The held copy equal to `candidate` in `layout`, or `candidate`, now held for others.
  func share(_ candidate: TensorStorage, layout: Layout) -> TensorStorage {
    let bytes = candidate.count * 4
    let key = "\(layout)|\(bytes)|\(Self.hash(candidate.pointer, count: candidate.count))"
    lock.lock()
    defer { lock.unlock() }
    var list = entries[key, default: []].filter { $0.storage != nil }
    for e in list {
      if let held = e.storage, held.count == candidate.count, memcmp(held.pointer, candidate.pointer, bytes) == 0 {
        entries[key] = list
        return held
      }
    }
    list.append(Entry(candidate))
    entries[key] = list
    insertions += 1
    if insertions % 256 == 0 { entries = entries.filter { $0.value.contains { $0.storage != nil } } }
    return candidate
  }

  var heldBytes: Int {
    lock.withLock { entries.values.reduce(0) { $0 + $1.reduce(0) { $0 + ($1.storage?.count ?? 0) * 4 } } }
  }

  /// A 64-bit multiply-xorshift hash over the values' bits, eight bytes at a time.
  static func hash(_ p: UnsafePointer<Float>, count: Int) -> UInt64 {
    var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(count)
    UnsafeRawPointer(p).withMemoryRebound(to: UInt32.self, capacity: count) { w in
      var i = 0
      while i + 1 < count {
        h = (h ^ (UInt64(w[i]) | UInt64(w[i + 1]) << 32)) &* 0xBF58_476D_1CE4_E5B9
        h ^= h >> 29
        i += 2
      }
      if i < count { h = (h ^ UInt64(w[i])) &* 0x94D0_49BB_1331_11EB }
    }
    return h ^ (h >> 32)
  }
}

/// One or more oneDNN primitives run back to back over shared memory objects.
final class DNNLKernel: Kernel, @unchecked Sendable {
  struct Step {
    let entry: PrimitiveEntry
    var args: [dnnl_exec_arg_t]
  }

  let name: String
  let inputLayouts: [Layout]
  let outputLayout: Layout
  let inPlaceInput: Int?
  let constantBytes: Int
  private let steps: [Step]
  private let inputs: [BoundMemory?]
  private let output: BoundMemory
  private let keepAlive: [AnyObject]
  /// Sum post-op: the input whose contents must be in the output before the primitive runs.
  private let accumulateInput: Int?
  /// Further memories bound inside an input's buffer: (memory, input, byte offset).
  private let views: [(memory: BoundMemory, input: Int, offset: Int)]
  private let engine: Engine
  /// Run on the output after the primitives (Veil's own SiLU, in place of oneDNN's swish).
  private let epilogue: (@Sendable (UnsafeMutableRawPointer) -> Void)?
  let scratchpadBytes: Int
  private let scratchpads: [ScratchpadMemory]
  /// The scratchpad's buffer when no executor gave one (a kernel run on its own).
  private var ownScratchpad: TensorStorage?
  private var scratchpadBound = false

  init(
    name: String, steps: [Step], inputs: [BoundMemory?], inputLayouts: [Layout], output: BoundMemory,
    inPlaceInput: Int?, accumulateInput: Int? = nil, constantBytes: Int = 0, keepAlive: [AnyObject] = [],
    views: [(memory: BoundMemory, input: Int, offset: Int)] = [], outputLayout: Layout? = nil, engine: Engine,
    epilogue: (@Sendable (UnsafeMutableRawPointer) -> Void)? = nil
  ) throws {
    self.views = views
    self.epilogue = epilogue
    self.name = name
    // Each step's scratchpad is the caller's (see `DNNLBackend.userScratchpad`): the steps
    // run one after another, so they share one buffer of the largest size, bound later.
    var steps = steps
    var scratchpads: [ScratchpadMemory] = []
    for i in steps.indices where steps[i].entry.scratchpadBytes > 0 {
      let m = try ScratchpadMemory(steps[i].entry.md(dnnl_query_scratchpad_md), engine: engine.engine)
      steps[i].args.append(dnnl_exec_arg_t(arg: argScratchpad, memory: m.memory))
      scratchpads.append(m)
    }
    self.scratchpads = scratchpads
    scratchpadBytes = steps.map(\.entry.scratchpadBytes).max() ?? 0
    self.steps = steps
    self.inputs = inputs
    self.inputLayouts = inputLayouts
    self.output = output
    // The output memory may describe the buffer otherwise (the attention's heads, strided).
    self.outputLayout = outputLayout ?? output.layout
    self.inPlaceInput = inPlaceInput
    self.accumulateInput = accumulateInput
    self.constantBytes = constantBytes
    self.keepAlive = keepAlive
    self.engine = engine
  }

  func run(inputs ptrs: [UnsafeMutableRawPointer], output out: UnsafeMutableRawPointer) throws {
    guard ptrs.count == inputLayouts.count else {
      throw TensorError.invalidArgument("\(name): expected \(inputLayouts.count) inputs, got \(ptrs.count)")
    }
    if let acc = accumulateInput, ptrs[acc] != out {
      out.copyMemory(from: ptrs[acc], byteCount: outputLayout.byteCount)
    }
    for (i, m) in inputs.enumerated() {
      if let m { try check(dnnl_memory_set_data_handle(m.memory, ptrs[i]), "\(name): binding input \(i)") }
    }
    for v in views {
      try check(dnnl_memory_set_data_handle(v.memory.memory, ptrs[v.input] + v.offset), "\(name): binding a view of input \(v.input)")
    }
    try check(dnnl_memory_set_data_handle(output.memory, out), "\(name): binding output")
    if !scratchpadBound, scratchpadBytes > 0 {
      let own = TensorStorage(count: (scratchpadBytes + 3) / 4)
      try bindScratchpad(UnsafeMutableRawPointer(own.pointer))
      ownScratchpad = own
    }
    for step in steps {
      let status = step.args.withUnsafeBufferPointer {
        dnnl_primitive_execute(step.entry.primitive, engine.stream, Int32($0.count), $0.baseAddress)
      }
      try check(status, "running \(name)")
    }
    epilogue?(out)
  }
}

extension DNNLKernel {
  func bindScratchpad(_ buffer: UnsafeMutableRawPointer) throws {
    for m in scratchpads { try check(dnnl_memory_set_data_handle(m.memory, buffer), "\(name): binding its scratchpad") }
    scratchpadBound = true
    ownScratchpad = nil
  }
}

/// A kernel written in C or Swift: for a plain layout, or any layout for an element-wise one.
final class PlainKernel: Kernel, @unchecked Sendable {
  let name: String
  let inputLayouts: [Layout]
  let outputLayout: Layout
  let inPlaceInput: Int?
  let constantBytes = 0
  private let body: @Sendable ([UnsafeMutableRawPointer], UnsafeMutableRawPointer) throws -> Void

  init(
    name: String, inputs: [Layout], output: Layout, inPlaceInput: Int? = nil,
    body: @escaping @Sendable ([UnsafeMutableRawPointer], UnsafeMutableRawPointer) throws -> Void
  ) {
    self.name = name
    self.inPlaceInput = inPlaceInput
    inputLayouts = inputs
    outputLayout = output
    self.body = body
  }

  func run(inputs: [UnsafeMutableRawPointer], output: UnsafeMutableRawPointer) throws {
    try body(inputs, output)
  }
}

/// oneDNN 2.6 on the CPU: the compute backend, and (its `TrainingBackend` methods) the training one.
/// Its memory descriptors stay in here, as `Layout` tokens (`DNNLLayout`).
public final class DNNLBackend: ComputeBackend, @unchecked Sendable {
  public static let shared = DNNLBackend()
  /// Primitives kept for reuse by the shared backend. A ResNet-50 compiled at one batch size
  /// makes about 200; planning compiles the head and tail at every cut, mostly the same
  /// primitives again. Beyond this the least recently used is dropped (oneDNN's own cache of
  /// 1024 JIT kernels sits below, so a rebuild is cheap).
  public static let defaultPrimitiveCacheCapacity = 4096
  /// Training convolutions kept for reuse: one per shape of a network being trained (a
  /// pix2pix generator has about 20). Each holds buffers in its primitives' layouts.
  public static let defaultTrainingConvolutionCacheCapacity = 256

  public let name = "oneDNN CPU"
  public let maxRank = Int(DNNL_MAX_NDIMS)
  let engine = Engine.shared
  /// Direct convolutions, or Winograd where oneDNN finds it faster (see `ConvolutionAlgorithm`).
  public let convolutionAlgorithm: ConvolutionAlgorithm
  let cache: PrimitiveCache
  let trainingConvolutions: LRUCache<ConvolutionTraining>
  let sharedConstants = SharedConstants()

  /// A backend with caches of its own (the shared one is what executors use by default).
  public init(
    primitiveCacheCapacity: Int = DNNLBackend.defaultPrimitiveCacheCapacity,
    trainingConvolutionCacheCapacity: Int = DNNLBackend.defaultTrainingConvolutionCacheCapacity,
    serialStepNanoseconds: Double = DNNLBackend.defaultSerialStepNanoseconds,
    convolutionAlgorithm: ConvolutionAlgorithm = .processDefault
  ) {
    self.serialStepNanoseconds = max(0, serialStepNanoseconds)
    self.convolutionAlgorithm = convolutionAlgorithm
    cache = PrimitiveCache(capacity: primitiveCacheCapacity)
    trainingConvolutions = LRUCache(capacity: trainingConvolutionCacheCapacity)
  }

  /// Waking a sleeping OpenMP team costs 30–80 µs here (futex wakes of threads that wait
  /// passively), so with passive waiting a step under 40 µs runs on the calling thread. A team
  /// that spins, even briefly (Veil's default outside the servers), answers within a few
  /// microseconds, and a serial step only lengthens the gap in which its threads fall asleep
  /// (RegNetY-400MF 6.1 → 9.1 ms with a 4 µs threshold): 0, every step on the team.
  /// `VEIL_SERIAL_STEP_NS` overrides it, for benchmarks of the threshold itself.
  public let serialStepNanoseconds: Double

  /// The process's rule (see `serialStepNanoseconds`), read once.
  public static let defaultSerialStepNanoseconds: Double =
    ProcessInfo.processInfo.environment["VEIL_SERIAL_STEP_NS"].flatMap(Double.init).map { max(0, $0) }
    ?? (Engine.threadsWaitPassively ? 40_000 : 0)

  public func serially<T>(_ body: () throws -> T) rethrows -> T { try engine.serially(body) }
  public func onTeam<T>(_ body: () throws -> T) rethrows -> T { try engine.onTeam(body) }

  public var cachedPrimitives: Int { cache.count }
  public var cacheHits: Int { cache.statistics.hits }
  public var cacheMisses: Int { cache.statistics.misses }
  public var cacheEvictions: Int { cache.statistics.evictions }

  /// Attributes that only ask for a scratchpad of the caller's (`dnnl_scratchpad_mode_user`).
  /// In its default mode oneDNN keeps one scratchpad per primitive (a convolution's brgemm
  /// pointer tables) or per thread (Winograd, im2col), and the primitives cached here are
  /// shared by every executor of the same shapes. Two executors on two threads (two versions
  /// of one model, every cut's tail) then wrote the same scratchpad at once and computed wrong
  /// maps: 201 and 266 of 600 concurrent runs in ConcurrentExecutionTests before this. Each
  /// kernel now owns the scratchpad of its steps (`DNNLKernel`).
  nonisolated(unsafe) static let userScratchpad: dnnl_primitive_attr_t = {
    var a: dnnl_primitive_attr_t?
    guard dnnl_primitive_attr_create(&a) == dnnl_success, let a,
      dnnl_primitive_attr_set_scratchpad_mode(a, dnnl_scratchpad_mode_user) == dnnl_success
    else { fatalError("oneDNN: cannot create primitive attributes") }
    return a
  }()

  private func i64(_ a: [Int]) -> [Int64] { a.map { Int64($0) } }

  private func memory(_ layout: Layout) throws -> BoundMemory {
    try BoundMemory(layout, engine: engine.engine)
  }

  private func arg(_ slot: Int32, _ m: BoundMemory) -> dnnl_exec_arg_t {
    dnnl_exec_arg_t(arg: slot, memory: m.memory)
  }

  /// Attributes with the caller's scratchpad and `postOps`; with `depthwiseStride`, a 3×3
  /// depthwise convolution (padding 1) after them, then `afterDepthwise`.
  private func attr(_ postOps: [PostOp], depthwiseStride: Int? = nil, afterDepthwise: [PostOp] = []) throws
    -> dnnl_primitive_attr_t
  {
    var a: dnnl_primitive_attr_t?
    try check(dnnl_primitive_attr_create(&a), "creating primitive attributes")
    try check(dnnl_primitive_attr_set_scratchpad_mode(a, dnnl_scratchpad_mode_user), "asking for a kernel's own scratchpad")
    if !postOps.isEmpty || depthwiseStride != nil {
      var po: dnnl_post_ops_t?
      try check(dnnl_post_ops_create(&po), "creating post-ops")
      defer { dnnl_post_ops_destroy(po) }
      func append(_ ops: [PostOp]) throws {
        for op in ops {
          switch op {
          case .sum: try check(dnnl_post_ops_append_sum(po, 1), "appending a sum post-op")
          case .activation(let act):
            for (alg, alpha, beta) in eltwiseChain(act) {
              try check(dnnl_post_ops_append_eltwise(po, 1, alg, alpha, beta), "appending post-op \(act)")
            }
          }
        }
      }
      try append(postOps)
      if let s = depthwiseStride {
        try check(
          dnnl_post_ops_append_dw(po, dnnl_f32, dnnl_f32, dnnl_f32, 3, dnnl_dim_t(s), 1, 0, 0, nil),
          "appending a depthwise post-op")
        try append(afterDepthwise)
      }
      try check(dnnl_primitive_attr_set_post_ops(a, po), "setting post-ops")
    }
    return a!
  }

  /// oneDNN eltwise algorithms that make up an activation, applied in order.
  func eltwiseChain(_ a: Activation) -> [(dnnl_alg_kind_t, Float, Float)] {
    switch a {
    case .relu: return [(dnnl_eltwise_relu, 0, 0)]
    case .leakyRelu(let alpha): return [(dnnl_eltwise_relu, alpha, 0)]
    case .clip(let lo, let hi): return [(dnnl_eltwise_clip_v2, lo, hi)]
    case .sigmoid: return [(dnnl_eltwise_logistic, 0, 0)]
    case .silu: return [(dnnl_eltwise_swish, 1, 0)]
    case .hardSigmoid(let alpha, let beta):
      return [(dnnl_eltwise_linear, alpha, beta), (dnnl_eltwise_clip_v2, 0, 1)]
    case .hardSwish: return [(dnnl_eltwise_hardswish, 0, 0)]
    case .tanh: return [(dnnl_eltwise_tanh, 0, 0)]
    case .sqrt: return [(dnnl_eltwise_sqrt, 0, 0)]
    case .gelu(let t): return [(t ? dnnl_eltwise_gelu_tanh : dnnl_eltwise_gelu_erf, 0, 0)]
    }
  }

  /// Copies a constant tensor from its user layout into the layout a primitive chose.
  func reorderConstant(_ t: Tensor, from user: Layout, to target: Layout) throws -> TensorStorage {
    // Tensors never change once built (copy-on-write), so a weight already in the wanted
    // layout is shared rather than copied.
    if user == target { return t.storage }
    let out = TensorStorage(count: target.byteCount / 4)
    let k = try reorder(from: user, to: target)
    try k.run(inputs: [UnsafeMutableRawPointer(t.storage.pointer)], output: UnsafeMutableRawPointer(out.pointer))
    engine.wait()
    return sharedConstants.share(out, layout: target)
  }

  /// Bytes of reordered weights held now, each once however many kernels share it.
  public var sharedConstantBytes: Int { sharedConstants.heldBytes }

  /// A kernel's own copy of the first `count` values of `t` (a bias, a BatchNorm statistic),
  /// bound in plain layout (as [count], or as `dims` when given: a matmul's [1, count] bias)
  /// as the argument `slot`; `keep` holds it for the kernel's life.
  private func bindVector(
    _ t: Tensor, count: Int, dims: [Int]? = nil, at slot: Int32, args: inout [dnnl_exec_arg_t], keep: inout [AnyObject]
  ) throws {
    let store = TensorStorage(count: count)
    store.pointer.update(from: t.storage.pointer, count: count)
    let m = try BoundMemory(.plain(dims ?? [count]), engine: engine.engine, handle: UnsafeMutableRawPointer(store.pointer))
    args.append(arg(slot, m))
    keep += [store, m]
  }

  // MARK: - Convolution

  public func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp],
    outputDims: [Int]
  ) throws -> Kernel {
    try convolution(spec, inputDims: inputDims, weights: weights, bias: bias, postOps: postOps, outputDims: outputDims, inputLayout: nil)
  }

  /// A convolution that reads a blocked `inputLayout` where oneDNN has a kernel for it (a map a
  /// fused expansion and depthwise step wrote), instead of the layout it would pick alone,
  /// with a reorder in front; otherwise as `convolution` alone.
  public func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp],
    outputDims: [Int], inputLayout: Layout?
  ) throws -> Kernel {
    let nsp = inputDims.count - 2
    guard nsp >= 1, nsp <= 3, spec.strides.count == nsp, spec.dilations.count == nsp,
      spec.padsBegin.count == nsp, spec.padsEnd.count == nsp, weights.rank == nsp + 2
    else {
      throw TensorError.invalidArgument(
        "convolution: input rank \(inputDims.count), weights \(weights.shape), spec \(spec) do not agree")
    }
    let g = spec.groups
    let ic = inputDims[1]
    let oc = outputDims[1]
    // oneDNN's logical weight dims are [g,] oc/g, ic/g, k...; ONNX stores Conv weights as
    // [oc, ic/g, k...] and ConvTranspose weights as [ic, oc/g, k...].
    var wdims = [oc / g, ic / g] + Array(weights.shape.dropFirst(2))
    let userTag: dnnl_format_tag_t
    if g > 1 {
      wdims = [g] + wdims
      userTag = spec.transposed ? (nsp == 2 ? dnnl_acbde : nsp == 1 ? dnnl_acbd : dnnl_acbdef)
        : (nsp == 2 ? dnnl_abcde : nsp == 1 ? dnnl_abcd : dnnl_abcdef)
    } else {
      userTag = spec.transposed ? (nsp == 2 ? dnnl_bacd : nsp == 1 ? dnnl_bac : dnnl_bacde)
        : (nsp == 2 ? dnnl_abcd : nsp == 1 ? dnnl_abc : dnnl_abcde)
    }
    guard wdims.reduce(1, *) == weights.count, ic % g == 0, oc % g == 0 else {
      throw TensorError.shapeMismatch(
        what: "convolution weights", expected: "\(wdims.reduce(1, *)) elements for groups \(g), in \(ic), out \(oc)",
        found: "\(weights.shape)")
    }
    if let bias, bias.count != oc {
      throw TensorError.shapeMismatch(what: "convolution bias", expected: "[\(oc)]", found: "\(bias.shape)")
    }
    let hasSum = postOps.contains(.sum)
    // A trailing SiLU runs as Veil's own kernel on the output (`siluEpilogue`), not as
    // oneDNN's swish post-op, which costs twice as much.
    var postOps = postOps
    let silu = postOps.last == .activation(.silu)
    if silu { postOps.removeLast() }
    let winograd = convolutionAlgorithm.asksForWinograd(
      inputDims: inputDims, outputDims: outputDims, kernel: Array(weights.shape.suffix(2)), groups: g, spec: spec)
    let blocked = inputLayout.flatMap { l in !l.isPlain && l.dims == inputDims && !spec.transposed ? l : nil }
    let key = "conv|\(spec)|\(inputDims)|\(wdims)|\(bias != nil)|\(postOps)|\(outputDims)|\(winograd ? "winograd" : "direct")"
      + (blocked.map { "|reads \($0)" } ?? "")
    let entry = try cache.entry(key, operation: "convolution \(spec)") {
      // Blocks for nothing are no gain: where oneDNN keeps the direct algorithm, it picks the
      // layout too.
      if winograd, let pd = try? convolutionDescriptor(spec, inputDims, wdims, outputDims, bias != nil, postOps, winograd: true) {
        if PrimitiveEntry.implementation(of: pd).contains("wino") { return pd }
        dnnl_primitive_desc_destroy(pd)
      }
      if let blocked, let md = try? blocked.dnnlMD(),
        let pd = try? convolutionDescriptor(spec, inputDims, wdims, outputDims, bias != nil, postOps, winograd: false, source: md)
      {
        if !PrimitiveEntry.implementation(of: pd).hasPrefix("ref") { return pd }
        dnnl_primitive_desc_destroy(pd)
      }
      return try convolutionDescriptor(spec, inputDims, wdims, outputDims, bias != nil, postOps, winograd: false)
    }
    let srcL = Layout(md: entry.md(dnnl_query_src_md))
    let weiL = Layout(md: entry.md(dnnl_query_weights_md))
    let dstL = Layout(md: entry.md(dnnl_query_dst_md))
    var userMd = dnnl_memory_desc_t()
    let wd = i64(wdims)
    _ = wd.withUnsafeBufferPointer { veil_md_tag(&userMd, Int32(wdims.count), $0.baseAddress, userTag) }
    let wStore = try reorderConstant(weights, from: Layout(md: userMd), to: weiL)
    let srcM = try memory(srcL)
    let dstM = try memory(dstL)
    let weiM = try BoundMemory(weiL, engine: engine.engine, handle: UnsafeMutableRawPointer(wStore.pointer))
    var args = [arg(argSrc, srcM), arg(argWeights, weiM), arg(argDst, dstM)]
    var keep: [AnyObject] = [wStore, weiM]
    var constBytes = weiL.byteCount
    if let bias {
      try bindVector(bias, count: oc, at: argBias, args: &args, keep: &keep)
      constBytes += oc * 4
    }
    let name = spec.transposed ? "ConvTranspose" : entry.implementation.contains("wino") ? "Conv(Winograd)" : "Conv"
    let allPostOps = postOps + (silu ? [.activation(.silu)] : [])
    return try DNNLKernel(
      name: name + (allPostOps.isEmpty ? "" : "+" + allPostOps.map(\.description).joined(separator: "+")),
      steps: [.init(entry: entry, args: args)],
      inputs: hasSum ? [srcM, nil] : [srcM],
      inputLayouts: hasSum ? [srcL, dstL] : [srcL],
      output: dstM, inPlaceInput: hasSum ? 1 : nil, accumulateInput: hasSum ? 1 : nil,
      constantBytes: constBytes, keepAlive: keep, engine: engine, epilogue: silu ? Self.siluEpilogue(dstL) : nil)
  }

  /// A 1×1 convolution with oneDNN's depthwise post-op (`dnnl_post_ops_append_dw`). Taken only
  /// where oneDNN runs it as one JIT kernel, which computes the depthwise rows while the 1×1
  /// rows they read are still in the cache: at batch 8 on 2 threads, MobileNet V2's 16 → 96
  /// expansion at 112 × 112 with its stride-2 depthwise step took 2.07 ms fused against
  /// 4.64 ms apart (bench/pointwise_depthwise.c; docs/benchmarks.md, "One kernel for the
  /// expansion and the depthwise step"). Its fallback (`ref_fused_convolution`) runs the two one after the other through a
  /// scratchpad and gains nothing, so where oneDNN picks it, or refuses, the answer is nil. A
  /// SiLU before the depthwise step would be oneDNN's swish post-op, which costs twice Veil's
  /// own: not fused; a trailing SiLU runs after the kernel, as after a convolution.
  public func pointwiseDepthwise(_ block: PointwiseDepthwise) throws -> Kernel? {
    let x = block.inputDims
    let e = block.weights.shape.first ?? 0
    let s = block.depthwiseStride
    guard x.count == 4, x[0] >= 2, e > 0, block.weights.shape == [e, x[1], 1, 1], block.depthwiseWeights.shape == [e, 1, 3, 3],
      s == 1 || s == 2, block.outputDims == [x[0], e, (x[2] - 1) / s + 1, (x[3] - 1) / s + 1],
      block.bias.map({ $0.count == e }) ?? true, block.depthwiseBias.map({ $0.count == e }) ?? true,
      !block.activations.contains(.silu), !block.depthwiseActivations.dropLast().contains(.silu)
    else { return nil }
    let first = block.activations.map(PostOp.activation)
    var second = block.depthwiseActivations.map(PostOp.activation)
    let silu = second.last == .activation(.silu)
    if silu { second.removeLast() }
    let key = "pointwise-depthwise|\(x)|\(e)|\(block.bias != nil)|\(first)|stride \(s)|\(second)"
    let made = try? cache.entry(key, operation: "1×1 convolution with a depthwise step") { () throws -> dnnl_primitive_desc_t in
      // In oneDNN's own layout for it (16-channel blocks on AVX-512). Asked for channels last,
      // the layout its neighbours take, oneDNN 2.6 runs it too, but computes wrong maps.
      var src = DNNLLayout.anyMD(x)
      var dst = DNNLLayout.anyMD(block.expandedDims)
      var wei = DNNLLayout.anyMD([e, x[1], 1, 1])
      var b = DNNLLayout.plainMD([e])
      let ones = i64([1, 1])
      let zeros = i64([0, 0])
      var desc = dnnl_convolution_desc_t()
      let status = withOptionalPointer(block.bias != nil, &b) { bp in
        dnnl_dilated_convolution_forward_desc_init(
          &desc, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei, bp, &dst, ones, zeros, zeros, zeros)
      }
      try check(status, "1×1 convolution descriptor")
      let a = try attr(first, depthwiseStride: s, afterDepthwise: second)
      defer { dnnl_primitive_attr_destroy(a) }
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, a, engine.engine, nil), "1×1 convolution with a depthwise step")
      guard !PrimitiveEntry.implementation(of: pd!).hasPrefix("ref") else {
        dnnl_primitive_desc_destroy(pd)
        throw TensorError.invalidArgument("oneDNN has no single kernel for it here")
      }
      return pd!
    }
    guard let entry = made else { return nil }
    let srcL = Layout(md: entry.md(dnnl_query_src_md))
    let weiL = Layout(md: entry.md(dnnl_query_weights_md))
    let dstL = Layout(md: entry.md(dnnl_query_dst_md))
    let dwL = Layout(md: entry.md(dnnl_query_exec_arg_md, argDepthwiseWeights))
    let wStore = try reorderConstant(block.weights, from: .plain([e, x[1], 1, 1]), to: weiL)
    var userDw = dnnl_memory_desc_t()
    let dwDims = i64([e, 1, 1, 3, 3])
    _ = dwDims.withUnsafeBufferPointer { veil_md_tag(&userDw, 5, $0.baseAddress, dnnl_abcde) }
    let dwStore = try reorderConstant(block.depthwiseWeights, from: Layout(md: userDw), to: dwL)
    let srcM = try memory(srcL)
    let dstM = try memory(dstL)
    let weiM = try BoundMemory(weiL, engine: engine.engine, handle: UnsafeMutableRawPointer(wStore.pointer))
    let dwM = try BoundMemory(dwL, engine: engine.engine, handle: UnsafeMutableRawPointer(dwStore.pointer))
    var args = [arg(argSrc, srcM), arg(argWeights, weiM), arg(argDst, dstM), arg(argDepthwiseWeights, dwM)]
    var keep: [AnyObject] = [wStore, weiM, dwStore, dwM]
    if let bias = block.bias { try bindVector(bias, count: e, at: argBias, args: &args, keep: &keep) }
    // The depthwise step always reads a bias; a convolution without one adds zeros.
    try bindVector(block.depthwiseBias ?? Tensor(zeros: [e]), count: e, at: argDepthwiseBias, args: &args, keep: &keep)
    let steps = first.map(\.description) + ["Depthwise3x3/\(s)"] + (second + (silu ? [.activation(.silu)] : [])).map(\.description)
    return try DNNLKernel(
      name: "Conv1x1+" + steps.joined(separator: "+"), steps: [.init(entry: entry, args: args)], inputs: [srcM],
      inputLayouts: [srcL], output: dstM, inPlaceInput: nil,
      constantBytes: weiL.byteCount + dwL.byteCount + (block.bias != nil ? e * 4 : 0) + e * 4, keepAlive: keep,
      engine: engine, epilogue: silu ? Self.siluEpilogue(dstL) : nil)
  }

  /// SiLU in place over a buffer of `layout` (padding included: SiLU(0) = 0) on the calling
  /// thread's OpenMP team: oneDNN 2.6's swish takes 3.4–3.7 ms for 9.6 M values on two
  /// threads here, this 2.2–2.4 ms (bench/silu.c; docs/benchmarks.md, "SiLU").
  static func siluEpilogue(_ layout: Layout) -> @Sendable (UnsafeMutableRawPointer) -> Void {
    let count = Int64(layout.byteCount / 4)
    return { buffer in
      let p = buffer.assumingMemoryBound(to: Float.self)
      veil_silu_f32(p, p, count)
    }
  }

  /// A convolution's primitive descriptor: the direct algorithm on the layouts oneDNN picks,
  /// or, with `winograd`, oneDNN's choice between direct and Winograd (`dnnl_convolution_auto`)
  /// on maps in 16-channel blocks, the only layout its Winograd kernel takes.
  private func convolutionDescriptor(
    _ spec: ConvolutionSpec, _ inputDims: [Int], _ wdims: [Int], _ outputDims: [Int], _ hasBias: Bool,
    _ postOps: [PostOp], winograd: Bool, source: dnnl_memory_desc_t? = nil
  ) throws -> dnnl_primitive_desc_t {
    var src = source ?? (winograd ? DNNLLayout.taggedMD(inputDims, dnnl_aBcd16b) : DNNLLayout.anyMD(inputDims))
    var wei = DNNLLayout.anyMD(wdims)
    var dst = winograd ? DNNLLayout.taggedMD(outputDims, dnnl_aBcd16b) : DNNLLayout.anyMD(outputDims)
    var b = DNNLLayout.plainMD([outputDims[1]])
    let strides = i64(spec.strides)
    let dil = i64(spec.dilations.map { $0 - 1 })
    let pl = i64(spec.padsBegin)
    let pr = i64(spec.padsEnd)
    var desc = dnnl_convolution_desc_t()
    let algorithm = winograd ? dnnl_convolution_auto : dnnl_convolution_direct
    let status = withOptionalPointer(hasBias, &b) { bp in
      spec.transposed
        ? dnnl_dilated_deconvolution_forward_desc_init(
          &desc, dnnl_forward_inference, dnnl_deconvolution_direct, &src, &wei, bp, &dst, strides, dil, pl, pr)
        : dnnl_dilated_convolution_forward_desc_init(
          &desc, dnnl_forward_inference, algorithm, &src, &wei, bp, &dst, strides, dil, pl, pr)
    }
    try check(status, "convolution descriptor", detail: "input \(inputDims), weights \(wdims), \(spec)")
    let a = try attr(postOps)
    defer { dnnl_primitive_attr_destroy(a) }
    var pd: dnnl_primitive_desc_t?
    try check(
      dnnl_primitive_desc_create(&pd, &desc, a, engine.engine, nil), "convolution primitive",
      detail: "input \(inputDims), weights \(wdims), \(spec), post-ops \(postOps)")
    return pd!
  }

  // MARK: - Element-wise and normalization

  public func activation(_ activation: Activation, input: Layout) throws -> Kernel {
    if activation == .silu {
      let count = Int64(input.byteCount / 4)
      return PlainKernel(name: activation.description, inputs: [input], output: input, inPlaceInput: 0) { ins, out in
        veil_silu_f32(out.assumingMemoryBound(to: Float.self), ins[0].assumingMemoryBound(to: Float.self), count)
      }
    }
    let srcM = try memory(input)
    let dstM = try memory(input)
    var steps: [DNNLKernel.Step] = []
    for (i, (alg, alpha, beta)) in eltwiseChain(activation).enumerated() {
      let entry = try cache.entry("eltwise|\(alg)|\(alpha)|\(beta)|\(input)", operation: "\(activation)") {
        var md = try input.dnnlMD()
        var desc = dnnl_eltwise_desc_t()
        try check(dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, alg, &md, alpha, beta), "\(activation) descriptor")
        var pd: dnnl_primitive_desc_t?
        try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "\(activation) primitive")
        return pd!
      }
      // Later steps of a chain run in place on the output.
      steps.append(.init(entry: entry, args: [arg(argSrc, i == 0 ? srcM : dstM), arg(argDst, dstM)]))
    }
    return try DNNLKernel(
      name: activation.description, steps: steps, inputs: [srcM], inputLayouts: [input], output: dstM,
      inPlaceInput: 0, engine: engine)
  }

  public func batchNormalization(
    input: Layout, scale: Tensor, bias: Tensor, mean: Tensor, variance: Tensor, epsilon: Float, relu: Bool
  ) throws -> Kernel {
    let dims = input.dims
    guard dims.count >= 2 else {
      throw TensorError.invalidArgument("BatchNormalization needs rank ≥ 2, found \(dims)")
    }
    let c = dims[1]
    for (n, t) in [("scale", scale), ("bias", bias), ("mean", mean), ("variance", variance)] where t.count != c {
      throw TensorError.shapeMismatch(what: "BatchNormalization \(n)", expected: "[\(c)]", found: "\(t.shape)")
    }
    let entry = try cache.entry("bn|\(input)|\(epsilon)|\(relu)", operation: "BatchNormalization") {
      var md = try input.dnnlMD()
      var desc = dnnl_batch_normalization_desc_t()
      // In inference the fused ReLU needs no workspace.
      let flags = UInt32(
        dnnl_use_global_stats.rawValue | dnnl_use_scale.rawValue | dnnl_use_shift.rawValue
          | (relu ? dnnl_fuse_norm_relu.rawValue : 0))
      try check(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_inference, &md, epsilon, flags), "BatchNormalization descriptor")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "BatchNormalization primitive")
      return pd!
    }
    return try normalization(
      relu ? "BatchNormalization+Relu" : "BatchNormalization", entry, input: input, channels: c,
      vectors: [(argScale, scale), (argShift, bias), (argMean, mean), (argVariance, variance)])
  }

  /// A normalization's kernel: in place on `input`, with its per-channel vectors bound.
  private func normalization(
    _ name: String, _ entry: PrimitiveEntry, input: Layout, channels c: Int, vectors: [(slot: Int32, values: Tensor)]
  ) throws -> Kernel {
    let srcM = try memory(input)
    let dstM = try memory(input)
    var args = [arg(argSrc, srcM), arg(argDst, dstM)]
    var keep: [AnyObject] = []
    for v in vectors { try bindVector(v.values, count: c, at: v.slot, args: &args, keep: &keep) }
    return try DNNLKernel(
      name: name, steps: [.init(entry: entry, args: args)], inputs: [srcM], inputLayouts: [input], output: dstM,
      inPlaceInput: 0, constantBytes: vectors.count * c * 4, keepAlive: keep, engine: engine)
  }

  public func layerNormalization(input: Layout, scale: Tensor, bias: Tensor?, epsilon: Float) throws -> Kernel {
    let dims = input.dims
    guard let c = dims.last, dims.count >= 2, input.isPlain else {
      throw TensorError.invalidArgument("LayerNormalization needs a plain input of rank ≥ 2, found \(input)")
    }
    for (n, t) in [("scale", scale), ("bias", bias)] where t != nil && t!.count != c {
      throw TensorError.shapeMismatch(what: "LayerNormalization \(n)", expected: "[\(c)]", found: "\(t!.shape)")
    }
    let entry = try cache.entry("ln|\(input)|\(epsilon)|\(bias != nil)", operation: "LayerNormalization") {
      var md = try input.dnnlMD()
      var desc = dnnl_layer_normalization_desc_t()
      let flags = UInt32(dnnl_use_scale.rawValue | (bias != nil ? dnnl_use_shift.rawValue : 0))
      try check(
        dnnl_layer_normalization_forward_desc_init(&desc, dnnl_forward_inference, &md, nil, epsilon, flags),
        "LayerNormalization descriptor", detail: "\(input)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "LayerNormalization primitive")
      return pd!
    }
    return try normalization(
      "LayerNormalization", entry, input: input, channels: c,
      vectors: [(argScale, scale)] + (bias.map { [(argShift, $0)] } ?? []))
  }

  public func binary(_ kind: BinaryKind, a: Layout, b: Layout, outputDims: [Int]) throws -> Kernel {
    let ad = a.dims
    let bd = b.dims
    // oneDNN broadcasts only its second source and needs equal ranks; the first must have the
    // output's dims. Everything else takes the plain broadcasting kernel.
    if ad == outputDims, bd.count == ad.count {
      let alg: dnnl_alg_kind_t = [dnnl_binary_add, dnnl_binary_sub, dnnl_binary_mul, dnnl_binary_div][kind.rawValue]
      func make(_ a: Layout) throws -> (entry: PrimitiveEntry, b: Layout) {
        // A broadcast operand ([N,C,1,1] in squeeze-excitation) takes the first operand's
        // blocked layout; a plain one against a blocked first operand would send oneDNN to its
        // slow reference kernel.
        let bL = (bd != ad && !a.isPlain ? a.matching(bd) : nil) ?? b
        let entry = try cache.entry("binary|\(kind)|\(a)|\(bL)", operation: "binary \(kind)") {
          var m0 = try a.dnnlMD()
          var m1 = try bL.dnnlMD()
          var dst = try a.dnnlMD()
          var desc = dnnl_binary_desc_t()
          try check(dnnl_binary_desc_init(&desc, alg, &m0, &m1, &dst), "binary \(kind) descriptor", detail: "\(a) and \(b)")
          var pd: dnnl_primitive_desc_t?
          try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "binary \(kind) primitive", detail: "\(a) and \(b)")
          return pd!
        }
        return (entry, bL)
      }
      // oneDNN 2.6's JIT binary takes blocked layouts of its ISA's block only: a convolution's
      // other blocking (nChw8c after a grouped convolution on AVX-512) would run the reference
      // kernel, 100× slower. Such an operand is read in 16-channel blocks instead (the caller
      // reorders it), or, failing that, refused so that the caller passes plain ones. Plain
      // operands that only the reference kernel broadcasts (a Swin block's [B, W, H, T, T]
      // scores plus a [1, W, 1, T, T] mask) take Veil's broadcasting loop below.
      var (aL, made) = (a, try make(a))
      if made.entry.implementation.hasPrefix("ref"), !a.isPlain, ad.count == 4 || ad.count == 5 {
        var md = dnnl_memory_desc_t()
        let d = ad.map { Int64($0) }
        let tag = ad.count == 4 ? dnnl_aBcd16b : dnnl_aBcde16b
        if d.withUnsafeBufferPointer({ veil_md_tag(&md, Int32(d.count), $0.baseAddress, tag) }) == dnnl_success {
          aL = Layout(md: md)
          made = try make(aL)
        }
      }
      let reference = made.entry.implementation.hasPrefix("ref")
      if reference, !aL.isPlain {
        throw TensorError.unsupported("binary \(kind) on \(a): only oneDNN's reference kernel takes it")
      }
      if !reference {
        let s0 = try memory(aL)
        let s1 = try memory(made.b)
        let d = try memory(aL)
        return try DNNLKernel(
          name: "\(kind)".capitalized,
          steps: [.init(entry: made.entry, args: [arg(argSrc, s0), arg(argSrc1, s1), arg(argDst, d)])],
          inputs: [s0, s1], inputLayouts: [aL, made.b], output: d, inPlaceInput: 0, engine: engine)
      }
    }
    let rank = outputDims.count
    // The loop below indexes a stack array of oneDNN's rank.
    guard rank <= maxRank else { throw TensorError.invalidArgument("\(kind) of rank \(rank): at most \(maxRank) dimensions") }
    func bstrides(_ dims: [Int]) throws -> [Int64] {
      let padded = [Int](repeating: 1, count: rank - dims.count) + dims
      var strides = [Int64](repeating: 0, count: rank)
      var s = 1
      for i in stride(from: rank - 1, through: 0, by: -1) {
        if padded[i] == outputDims[i] && padded[i] != 1 {
          strides[i] = Int64(s)
        } else if padded[i] != 1 {
          throw TensorError.shapeMismatch(what: "broadcast \(kind)", expected: "dims compatible with \(outputDims)", found: "\(dims)")
        }
        s *= padded[i]
      }
      return strides
    }
    let sa = try bstrides(ad)
    let sb = try bstrides(bd)
    let od = i64(outputDims)
    let op = Int32(kind.rawValue)
    return PlainKernel(name: "\(kind)".capitalized, inputs: [.plain(ad), .plain(bd)], output: .plain(outputDims)) { ins, out in
      veil_binary_broadcast_f32(
        ins[0].assumingMemoryBound(to: Float.self), sa, ins[1].assumingMemoryBound(to: Float.self), sb,
        out.assumingMemoryBound(to: Float.self), od, Int32(rank), op)
    }
  }

  // MARK: - Pooling, concat, resize

  public func pooling(_ spec: PoolingSpec, input: Layout, outputDims: [Int]) throws -> Kernel {
    let alg: dnnl_alg_kind_t
    switch spec.kind {
    case .max: alg = dnnl_pooling_max
    case .average(let include): alg = include ? dnnl_pooling_avg_include_padding : dnnl_pooling_avg_exclude_padding
    }
    let entry = try cache.entry("pool|\(spec)|\(input)|\(outputDims)", operation: "pooling") {
      var src = try input.dnnlMD()
      var dst = DNNLLayout.anyMD(outputDims)
      var desc = dnnl_pooling_v2_desc_t()
      let dil = [Int64](repeating: 0, count: spec.kernel.count)
      try check(
        dnnl_pooling_v2_forward_desc_init(
          &desc, dnnl_forward_inference, alg, &src, &dst, i64(spec.strides), i64(spec.kernel), dil,
          i64(spec.padsBegin), i64(spec.padsEnd)), "pooling descriptor", detail: "\(spec) on \(input)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "pooling primitive", detail: "\(spec) on \(input)")
      return pd!
    }
    let name: String
    switch spec.kind {
    case .max: name = "MaxPool"
    case .average: name = "AveragePool"
    }
    return try sourceToDestination(name, entry, input, Layout(md: entry.md(dnnl_query_dst_md)))
  }

  public func concat(axis: Int, inputs: [Layout]) throws -> Kernel {
    guard let first = inputs.first else { throw TensorError.invalidArgument("Concat of no inputs") }
    var outDims = first.dims
    guard axis >= 0, axis < outDims.count else {
      throw TensorError.invalidArgument("Concat axis \(axis) out of range for rank \(outDims.count)")
    }
    outDims[axis] = inputs.reduce(0) { $0 + $1.dims[axis] }
    let entry = try cache.entry("concat|\(axis)|\(inputs.map(\.description))", operation: "Concat") {
      var dst = DNNLLayout.anyMD(outDims)
      var mds = try inputs.map { try $0.dnnlMD() }
      var pd: dnnl_primitive_desc_t?
      try check(
        dnnl_concat_primitive_desc_create(&pd, &dst, Int32(inputs.count), Int32(axis), &mds, Self.userScratchpad, engine.engine),
        "Concat primitive", detail: "axis \(axis), inputs \(inputs)")
      return pd!
    }
    // Inputs in different layouts (plain beside a convolution's NHWC) send oneDNN 2.6 to its
    // reference concat, an element at a time; the caller then passes one layout for all.
    if entry.implementation.hasPrefix("ref"), !inputs.allSatisfy({ first.matching($0.dims) == $0 }) {
      throw TensorError.unsupported("Concat of inputs in different layouts (\(inputs)): only oneDNN's reference kernel takes them")
    }
    let dstL = Layout(md: entry.md(dnnl_query_dst_md))
    let ms = try inputs.map { try memory($0) }
    let d = try memory(dstL)
    var args = ms.enumerated().map { arg(argMultipleSrc + Int32($0.offset), $0.element) }
    args.append(arg(argDst, d))
    return try DNNLKernel(
      name: "Concat", steps: [.init(entry: entry, args: args)], inputs: ms, inputLayouts: inputs, output: d,
      inPlaceInput: nil, engine: engine)
  }

  public func resize(_ kind: ResizeKind, input: Layout, outputDims: [Int]) throws -> Kernel {
    let alg = kind == .nearest ? dnnl_resampling_nearest : dnnl_resampling_linear
    let entry = try cache.entry("resize|\(kind)|\(input)|\(outputDims)", operation: "Resize") {
      var src = try input.dnnlMD()
      var dst = DNNLLayout.anyMD(outputDims)
      var desc = dnnl_resampling_desc_t()
      try check(
        dnnl_resampling_forward_desc_init(&desc, dnnl_forward_inference, alg, nil, &src, &dst), "Resize descriptor",
        detail: "\(input) to \(outputDims)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "Resize primitive")
      return pd!
    }
    return try sourceToDestination("Resize", entry, input, Layout(md: entry.md(dnnl_query_dst_md)))
  }

  // MARK: - Dense layers

  public func innerProduct(inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp]) throws -> Kernel {
    guard weights.rank == 2, inputDims.count == 2, inputDims[1] == weights.shape[1] else {
      throw TensorError.shapeMismatch(
        what: "Gemm weights", expected: "[out, \(inputDims.last ?? 0)] for input \(inputDims)", found: "\(weights.shape)")
    }
    let (rows, ic, oc) = (inputDims[0], inputDims[1], weights.shape[0])
    if let bias, bias.count != oc {
      throw TensorError.shapeMismatch(what: "Gemm bias", expected: "[\(oc)]", found: "\(bias.shape)")
    }
    let hasSum = postOps.contains(.sum)
    // Several rows (a transformer's tokens): oneDNN's matmul with weights in the layout it
    // picks (reordered once here) runs its brgemm kernels, 15–20 % faster than the inner
    // product on plain weights, and twice as fast on long reductions (a ViT's 3072 → 768).
    // One row (a classifier): the inner product on plain [out, in] weights is as fast, and the
    // (often huge) matrix is then shared with the graph instead of copied.
    let blocked = rows > 1
    let key = "ip|\(inputDims)|\(weights.shape)|\(bias != nil)|\(postOps)|\(blocked)"
    let entry = try cache.entry(key, operation: "Gemm") {
      let a = try attr(postOps)
      defer { dnnl_primitive_attr_destroy(a) }
      var src = DNNLLayout.plainMD(inputDims)
      var dst = DNNLLayout.plainMD([rows, oc])
      var pd: dnnl_primitive_desc_t?
      if blocked {
        var wei = DNNLLayout.anyMD([ic, oc])
        var b = DNNLLayout.plainMD([1, oc])
        var desc = dnnl_matmul_desc_t()
        try check(
          withOptionalPointer(bias != nil, &b) { dnnl_matmul_desc_init(&desc, &src, &wei, $0, &dst) },
          "Gemm descriptor", detail: "input \(inputDims), weights \(weights.shape)")
        try check(dnnl_primitive_desc_create(&pd, &desc, a, engine.engine, nil), "Gemm primitive", detail: "post-ops \(postOps)")
      } else {
        var wei = DNNLLayout.plainMD(weights.shape)
        var b = DNNLLayout.plainMD([oc])
        var desc = dnnl_inner_product_desc_t()
        try check(
          withOptionalPointer(bias != nil, &b) {
            dnnl_inner_product_forward_desc_init(&desc, dnnl_forward_inference, &src, &wei, $0, &dst)
          },
          "Gemm descriptor", detail: "input \(inputDims), weights \(weights.shape)")
        try check(dnnl_primitive_desc_create(&pd, &desc, a, engine.engine, nil), "Gemm primitive", detail: "post-ops \(postOps)")
      }
      return pd!
    }
    let weiL = Layout(md: entry.md(dnnl_query_weights_md))
    // The user's [out, in] matrix is the matmul's [in, out] operand with transposed strides.
    let userL: Layout = blocked ? .strided([ic, oc], strides: [1, ic]) : .plain(weights.shape)
    let wStore = try reorderConstant(weights, from: userL, to: weiL)
    let s = try memory(.plain(inputDims))
    let d = try memory(.plain([rows, oc]))
    let w = try BoundMemory(weiL, engine: engine.engine, handle: UnsafeMutableRawPointer(wStore.pointer))
    var args = [arg(argSrc, s), arg(argWeights, w), arg(argDst, d)]
    var keep: [AnyObject] = [wStore, w]
    if let bias { try bindVector(bias, count: oc, dims: blocked ? [1, oc] : nil, at: argBias, args: &args, keep: &keep) }
    return try DNNLKernel(
      name: "Gemm" + (postOps.isEmpty ? "" : "+" + postOps.map(\.description).joined(separator: "+")),
      steps: [.init(entry: entry, args: args)], inputs: hasSum ? [s, nil] : [s],
      inputLayouts: hasSum ? [.plain(inputDims), .plain([rows, oc])] : [.plain(inputDims)], output: d,
      inPlaceInput: hasSum ? 1 : nil, accumulateInput: hasSum ? 1 : nil,
      constantBytes: weiL.byteCount + (bias == nil ? 0 : oc * 4), keepAlive: keep, engine: engine)
  }

  public func matmul(a: [Int], b: [Int], outputDims: [Int]) throws -> Kernel {
    let rank = outputDims.count
    let pa = [Int](repeating: 1, count: rank - a.count) + a
    let pb = [Int](repeating: 1, count: rank - b.count) + b
    let entry = try cache.entry("matmul|\(pa)|\(pb)", operation: "MatMul") {
      var sa = DNNLLayout.plainMD(pa)
      var sb = DNNLLayout.plainMD(pb)
      var d = DNNLLayout.plainMD(outputDims)
      var desc = dnnl_matmul_desc_t()
      try check(dnnl_matmul_desc_init(&desc, &sa, &sb, nil, &d), "MatMul descriptor", detail: "\(a) × \(b)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "MatMul primitive", detail: "\(a) × \(b)")
      return pd!
    }
    let ma = try memory(.plain(pa))
    let mb = try memory(.plain(pb))
    let md = try memory(.plain(outputDims))
    return try DNNLKernel(
      name: "MatMul", steps: [.init(entry: entry, args: [arg(argSrc, ma), arg(argWeights, mb), arg(argDst, md)])],
      inputs: [ma, mb], inputLayouts: [.plain(a), .plain(b)], output: md, inPlaceInput: nil, engine: engine)
  }

  public func softmax(axis: Int, input: Layout) throws -> Kernel {
    let entry = try cache.entry("softmax|\(axis)|\(input)", operation: "Softmax") {
      var md = try input.dnnlMD()
      var desc = dnnl_softmax_desc_t()
      try check(dnnl_softmax_forward_desc_init(&desc, dnnl_forward_inference, &md, Int32(axis)), "Softmax descriptor", detail: "axis \(axis) of \(input)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "Softmax primitive")
      return pd!
    }
    return try sourceToDestination("Softmax", entry, input, input, inPlaceInput: 0)
  }

  /// Q·Kᵀ (scaled as oneDNN's output scale), softmax in place, then ·V, the two matmuls on
  /// strided descriptors straight into the packed input and the merged output, so no slice or
  /// transpose copies anything; the [N, h, T, T] scores live in the working memory the caller
  /// passes as the second input.
  public func attention(
    batch n: Int, tokens t: Int, heads h: Int, headWidth hd: Int, packedWidth w: Int, offsets: [Int], scale: Float
  ) throws -> Kernel {
    let d = h * hd
    guard n >= 1, t >= 1, h >= 1, hd >= 1, offsets.count == 3, offsets.allSatisfy({ $0 >= 0 && $0 + d <= w }) else {
      throw TensorError.invalidArgument("attention: offsets \(offsets) of \(h)×\(hd) heads in width \(w), batch \(n), tokens \(t)")
    }
    // Element (n, head, token, e) of Q (and V) sits at n·T·W + token·W + head·d + e past its
    // offset; Kᵀ is K's (n, head, e, token); the output is [N, T, h, d].
    let headsL = Layout.strided([n, h, t, hd], strides: [t * w, hd, w, 1])
    let keysL = Layout.strided([n, h, hd, t], strides: [t * w, hd, 1, w])
    let scoresL = Layout.plain([n, h, t, t])
    let outL = Layout.strided([n, h, t, hd], strides: [t * d, hd, d, 1])
    let shape = "\(n)|\(t)|\(h)|\(hd)|\(w)"
    func matmul(_ a: Layout, _ b: Layout, _ c: Layout, scale: Float?) throws -> PrimitiveEntry {
      try cache.entry("attention-matmul|\(shape)|\(a)|\(b)|\(scale.map { "\($0)" } ?? "-")", operation: "attention") {
        var ma = try a.dnnlMD()
        var mb = try b.dnnlMD()
        var mc = try c.dnnlMD()
        var desc = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc, &ma, &mb, nil, &mc), "attention matmul descriptor", detail: "\(a) × \(b)")
        let at = try attr([])
        defer { dnnl_primitive_attr_destroy(at) }
        if var s = scale { try check(dnnl_primitive_attr_set_output_scales(at, 1, 0, &s), "attention scale") }
        var pd: dnnl_primitive_desc_t?
        try check(dnnl_primitive_desc_create(&pd, &desc, at, engine.engine, nil), "attention matmul primitive", detail: "\(a) × \(b)")
        return pd!
      }
    }
    let scores = try matmul(headsL, keysL, scoresL, scale: scale)
    let mix = try matmul(scoresL, headsL, outL, scale: nil)
    let softmax = try cache.entry("softmax|3|\(scoresL)", operation: "attention softmax") {
      var md = try scoresL.dnnlMD()
      var desc = dnnl_softmax_desc_t()
      try check(dnnl_softmax_forward_desc_init(&desc, dnnl_forward_inference, &md, 3), "attention softmax descriptor")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "attention softmax primitive")
      return pd!
    }
    let (q, k, v) = (try memory(headsL), try memory(keysL), try memory(headsL))
    let sc = try memory(scoresL)
    let o = try memory(outL)
    let bytes = offsets.map { $0 * MemoryLayout<Float>.stride }
    return try DNNLKernel(
      name: "Attention",
      steps: [
        .init(entry: scores, args: [arg(argSrc, q), arg(argWeights, k), arg(argDst, sc)]),
        .init(entry: softmax, args: [arg(argSrc, sc), arg(argDst, sc)]),
        .init(entry: mix, args: [arg(argSrc, sc), arg(argWeights, v), arg(argDst, o)]),
      ],
      inputs: [nil, sc], inputLayouts: [.plain([n, t, w]), scoresL], output: o, inPlaceInput: nil,
      views: [(q, 0, bytes[0]), (k, 0, bytes[1]), (v, 0, bytes[2])], outputLayout: .plain([n, t, h, hd]), engine: engine)
  }

  public func localResponseNormalization(size: Int, alpha: Float, beta: Float, k: Float, input: Layout) throws -> Kernel {
    guard size >= 1 else { throw TensorError.invalidArgument("LRN size must be ≥ 1, found \(size)") }
    let entry = try cache.entry("lrn|\(size)|\(alpha)|\(beta)|\(k)|\(input)", operation: "LRN") {
      var md = try input.dnnlMD()
      var desc = dnnl_lrn_desc_t()
      // oneDNN divides alpha by the window size itself, as ONNX does.
      try check(
        dnnl_lrn_forward_desc_init(&desc, dnnl_forward_inference, dnnl_lrn_across_channels, &md, Int64(size), alpha, beta, k),
        "LRN descriptor", detail: "size \(size) on \(input)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "LRN primitive")
      return pd!
    }
    return try sourceToDestination("LRN", entry, input, input)
  }

  // MARK: - Data movement

  public func reorder(from: Layout, to: Layout) throws -> Kernel {
    guard from.dims == to.dims else {
      throw TensorError.shapeMismatch(what: "reorder", expected: "\(from.dims)", found: "\(to.dims)")
    }
    let entry = try cache.entry("reorder|\(from)|\(to)", operation: "reorder") {
      var s = try from.dnnlMD()
      var d = try to.dnnlMD()
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_reorder_primitive_desc_create(&pd, &s, engine.engine, &d, engine.engine, Self.userScratchpad), "reorder", detail: "\(from) → \(to)")
      return pd!
    }
    return try sourceToDestination("Reorder", entry, from, to)
  }

  /// The kernel of a primitive with one source and one destination (pooling, resampling,
  /// softmax, LRN, reorder): a buffer in `input`'s layout in, one in `output`'s out. With a
  /// `sourceView` (a sub-memory of `input`), the primitive reads that part of the buffer.
  private func sourceToDestination(
    _ name: String, _ entry: PrimitiveEntry, _ input: Layout, _ output: Layout, inPlaceInput: Int? = nil,
    sourceView: Layout? = nil
  ) throws -> Kernel {
    let s = try memory(sourceView ?? input)
    let d = try memory(output)
    return try DNNLKernel(
      name: name, steps: [.init(entry: entry, args: [arg(argSrc, s), arg(argDst, d)])], inputs: [s],
      inputLayouts: [input], output: d, inPlaceInput: inPlaceInput, engine: engine)
  }

  /// oneDNN's shuffle primitive views the axis as [C/G, G] and transposes it, G its group
  /// size; ONNX's [groups, C/groups] view is that with G = C/groups.
  public func channelShuffle(groups: Int, input: Layout) throws -> Kernel {
    let dims = input.dims
    guard dims.count >= 2, groups >= 1, dims[1] % groups == 0 else {
      throw TensorError.invalidArgument("ChannelShuffle: \(groups) groups do not divide the channels of \(dims)")
    }
    let entry = try cache.entry("shuffle|\(groups)|\(input)", operation: "ChannelShuffle") {
      var md = try input.dnnlMD()
      var desc = dnnl_shuffle_desc_t()
      try check(
        dnnl_shuffle_forward_desc_init(&desc, dnnl_forward_inference, &md, 1, dnnl_dim_t(dims[1] / groups)),
        "ChannelShuffle descriptor", detail: "\(groups) groups of \(input)")
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, Self.userScratchpad, engine.engine, nil), "ChannelShuffle primitive")
      return pd!
    }
    return try sourceToDestination("ChannelShuffle", entry, input, input)
  }

  public func transpose(permutation p: [Int], inputDims: [Int]) throws -> Kernel {
    let rank = inputDims.count
    guard p.count == rank, Set(p) == Set(0..<rank) else {
      throw TensorError.invalidArgument("Transpose perm \(p) is not a permutation of 0..<\(rank)")
    }
    let outDims = p.map { inputDims[$0] }
    var outStrides = [Int](repeating: 1, count: rank)
    for i in stride(from: rank - 2, through: 0, by: -1) { outStrides[i] = outStrides[i + 1] * outDims[i + 1] }
    // Describe the output buffer in the input's axis order: input axis p[i] moves with stride
    // outStrides[i], so a reorder writes the transposed tensor.
    var strides = [Int](repeating: 0, count: rank)
    for i in 0..<rank { strides[p[i]] = outStrides[i] }
    let inner = try reorder(from: .plain(inputDims), to: .strided(inputDims, strides: strides))
    let outL = Layout.plain(outDims)
    return PlainKernel(name: "Transpose", inputs: [.plain(inputDims)], output: outL) { ins, out in
      try inner.run(inputs: ins, output: out)
    }
  }

  public func slice(starts: [Int], steps: [Int], input: Layout, outputDims: [Int]) throws -> Kernel {
    let dims = input.dims
    try validateSlice(starts: starts, steps: steps, inputDims: dims, outputDims: outputDims)
    guard steps.allSatisfy({ $0 == 1 }) else {
      // Strided or reversed: a copy along rows, from the plain layout.
      let (offset, strides) = sliceView(inputDims: dims, starts: starts, steps: steps)
      return PlainKernel(name: "Slice", inputs: [.plain(dims)], output: .plain(outputDims)) { ins, out in
        StridedCopy.gather(
          ins[0].assumingMemoryBound(to: Float.self), offset: offset, strides: strides, shape: outputDims,
          into: out.assumingMemoryBound(to: Float.self))
      }
    }
    // A sub-memory of the input in its own layout (a channel split of the channels-last tensor
    // a convolution wrote, or of a blocked one on block bounds): one reorder copies it out, with
    // no reorder of the whole input first. oneDNN refuses bounds inside a block; the caller then
    // passes the plain layout.
    let output = input.matching(outputDims) ?? .plain(outputDims)
    var parent = try input.dnnlMD()
    var sub = dnnl_memory_desc_t()
    try check(
      dnnl_memory_desc_init_submemory(&sub, &parent, i64(outputDims), i64(starts)), "Slice sub-memory",
      detail: "\(outputDims) at \(starts) of \(input)")
    let view = Layout(dims: outputDims, token: DNNLLayout(md: sub))
    let entry = try cache.entry("slice|\(input)|\(starts)|\(outputDims)|\(output)", operation: "Slice") {
      var s = sub
      var d = try output.dnnlMD()
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_reorder_primitive_desc_create(&pd, &s, engine.engine, &d, engine.engine, Self.userScratchpad), "Slice reorder")
      return pd!
    }
    return try sourceToDestination("Slice", entry, input, output, sourceView: view)
  }

  public func pad(mode: PadMode, value: Float, pads: [Int], inputDims: [Int]) throws -> Kernel {
    let rank = inputDims.count
    // The loop below indexes stack arrays of oneDNN's rank.
    guard rank <= maxRank else { throw TensorError.invalidArgument("Pad of rank \(rank): at most \(maxRank) dimensions") }
    guard pads.count == 2 * rank else {
      throw TensorError.invalidArgument("Pad: \(pads.count) pad values for rank \(rank), expected \(2 * rank)")
    }
    let outDims = (0..<rank).map { inputDims[$0] + pads[$0] + pads[rank + $0] }
    guard outDims.allSatisfy({ $0 >= 1 }) else {
      throw TensorError.invalidArgument("Pad: pads \(pads) crop input \(inputDims) to nothing")
    }
    if mode == .reflect {
      for i in 0..<rank where pads[i] >= inputDims[i] || pads[rank + i] >= inputDims[i] {
        if pads[i] > 0 || pads[rank + i] > 0, inputDims[i] > 1 {
          throw TensorError.invalidArgument("Pad: reflect pads \(pads) must be smaller than input dim \(inputDims[i]) on axis \(i)")
        }
      }
    }
    let d = i64(inputDims)
    let pd = i64(pads)
    return PlainKernel(name: "Pad", inputs: [.plain(inputDims)], output: .plain(outDims)) { ins, out in
      veil_pad_f32(
        ins[0].assumingMemoryBound(to: Float.self), d, Int32(rank), pd, mode.rawValue, value,
        out.assumingMemoryBound(to: Float.self))
    }
  }
}
