import Foundation
import VeilTensor

public struct ExecutorOptions: Sendable {
  /// Run the inference passes first (identity removal, BatchNorm folding, post-op fusion),
  /// and run attention blocks written out as ops as one kernel each.
  public var optimize: Bool
  /// Names of values to keep readable after a run (feature maps at cut points), besides the
  /// graph outputs. Their buffers are never reused.
  public var retain: [String]
  /// Working memory shared with other executors (a served model's executors for each batch
  /// size), or nil for a buffer of the executor's own.
  public var workingMemory: SharedWorkingMemory?

  public init(optimize: Bool = true, retain: [String] = [], workingMemory: SharedWorkingMemory? = nil) {
    self.optimize = optimize
    self.retain = retain
    self.workingMemory = workingMemory
  }
}

/// The kernels' working memory (`Kernel.scratchpadBytes`) for several executors that never
/// need it at once: a served model's executors, one per batch size, run one batch at a time,
/// and with Winograd each needs scratch in proportion to its batch (VGG-16 229 MiB at batch 8).
/// The buffer grows to the largest need; executors that share it run one at a time (a run
/// holds its lock), whichever threads call them.
public final class SharedWorkingMemory: @unchecked Sendable {
  private let lock = NSLock()
  private var storage: TensorStorage?

  public init() {}

  /// Bytes held now: the largest need of the runs so far.
  public var bytes: Int { lock.withLock { (storage?.count ?? 0) * 4 } }

  /// Runs `body` with the buffer, grown first to at least `bytes`; no other run that shares
  /// it runs meanwhile.
  func withBuffer<T>(atLeast bytes: Int, _ body: (UnsafeMutableRawPointer) throws -> T) rethrows -> T {
    lock.lock()
    defer { lock.unlock() }
    let buffer: TensorStorage
    if let held = storage, held.count * 4 >= bytes {
      buffer = held
    } else {
      buffer = TensorStorage(count: (bytes + 3) / 4)
      storage = buffer
    }
    return try body(UnsafeMutableRawPointer(buffer.pointer))
  }
}

/// Time spent in one step of a run (a node's kernel, or a layout reorder the executor added).
public struct StepTiming: Sendable {
  public var node: String
  public var op: String
  public var seconds: Double
}

/// What one step of a run touches (see `Executor.memoryTrace`).
public struct StepMemory: Sendable {
  public var node: String
  public var op: String
  /// Bytes of constants the step reads (weights in the kernel's layout, executor constants).
  public var weightBytes: Int
  /// Byte ranges of the activation arena read or written.
  public var activationRanges: [Range<Int>]
}

/// A graph compiled for fixed input shapes: one backend kernel per node (plus the layout
/// reorders between them), and one arena of activation memory laid out by liveness.
///
/// Layouts: each kernel states the layout it wants for its inputs; the executor keeps each
/// value in the layout its producer wrote, and inserts a reorder only where a reader needs
/// another (so consecutive convolutions stay in the backend's blocked layout).
/// Memory: every intermediate buffer lives from the step that writes it to the last step that
/// reads it; buffers whose lifetimes do not overlap share arena space, and element-wise ops
/// and residual sums run in place when their input dies at that step.
/// A run is serialized by a lock: one executor runs one request at a time.
public final class Executor: @unchecked Sendable {
  /// The graph as compiled (after passes, shapes inferred). Weights the kernels copied into
  /// their own layouts are dropped from it, so they are held once.
  public private(set) var graph: Graph
  public let backend: ComputeBackend
  /// Bytes of the activation arena: the peak of live intermediate tensors.
  public let peakActivationBytes: Int
  /// What the activations would take without reuse.
  public let unplannedActivationBytes: Int
  /// Bytes of constants owned by kernels (weights in the backend's layouts) and the executor.
  /// A backend may hold a copy once for several executors (equal weights in equal layouts); each
  /// counts it here.
  public let constantBytes: Int
  /// Number of layout reorders inserted between nodes.
  public let reorderCount: Int
  /// Bytes of the kernels' working memory: one buffer, the largest kernel's need, which every
  /// kernel uses in turn (`Kernel.scratchpadBytes`).
  public let scratchpadBytes: Int

  struct Step {
    var kernel: Kernel
    var node: String
    var op: String
    var inputs: [Int]
    var output: Int
    /// Made and run by the calling thread alone (`ComputeBackend.serially`): too small to pay
    /// for waking the backend's other threads.
    var serial = false
  }

  enum BufferKind {
    case arena
    case constant(TensorStorage)
  }

  struct Buffer {
    var bytes: Int
    var kind: BufferKind
    var first: Int
    var last: Int
    var offset = 0
  }

  private var steps: [Step] = []
  private var buffers: [Buffer] = []
  private let inputBuffers: [Int]
  private let outputBuffers: [(buffer: Int, shape: [Int])]
  private let retainedBuffers: [String: (buffer: Int, shape: [Int])]
  private var arena: TensorStorage
  /// The kernels' working memory: the executor's own, or shared (`ExecutorOptions.workingMemory`)
  /// and bound to the kernels again when the shared buffer has grown since their last run.
  private let scratchpad: TensorStorage?
  private let sharedWorkingMemory: SharedWorkingMemory?
  private var boundScratchpad: UnsafeMutableRawPointer?
  private var stepInputs: [[UnsafeMutableRawPointer]] = []
  private var stepOutputs: [UnsafeMutableRawPointer] = []
  private let lock = NSLock()

  /// Compiles `source` for `backend` (the process's default, `Backends.compute`, unless
  /// given). Pass a graph you no longer need (a temporary) to let weights be freed as their
  /// kernels take them, which keeps peak memory near one copy of the weights.
  public init(
    graph source: consuming Graph, backend: any ComputeBackend = Backends.compute, options: ExecutorOptions = .init()
  ) throws {
    var g = consume source
    if options.optimize {
      try g.optimizeForInference()
    } else {
      try g.sortTopologically()
      try g.inferShapes()
    }
    self.backend = backend
    let retainIDs = try options.retain.map { name -> ValueID in
      guard let v = g.value(named: name) else {
        throw GraphError.unknownValue("\(name) (no value of that name in '\(g.name)')")
      }
      return v
    }
    var compiler = Compiler(graph: consume g, backend: backend)
    try backend.onTeam { try compiler.compile(retain: retainIDs, fuse: options.optimize) }
    graph = compiler.graph
    steps = compiler.steps
    buffers = compiler.buffers
    inputBuffers = compiler.inputBuffers
    outputBuffers = compiler.outputBuffers
    retainedBuffers = compiler.retained
    reorderCount = compiler.reorders
    constantBytes = compiler.steps.reduce(0) { $0 + $1.kernel.constantBytes } + compiler.constantBufferBytes
    unplannedActivationBytes = buffers.reduce(0) { if case .arena = $1.kind { return $0 + $1.bytes } else { return $0 } }
    peakActivationBytes = Executor.planArena(&buffers)
    scratchpadBytes = compiler.steps.map(\.kernel.scratchpadBytes).max() ?? 0
    // Each tensor is bounded (`Graph.maxTensorElements`), but the activations alive at once
    // may still exceed the machine: refuse, rather than fail the allocation or be killed while
    // the pages are touched.
    let memory = ProcessInfo.processInfo.physicalMemory
    guard UInt64(peakActivationBytes) + UInt64(scratchpadBytes) <= memory else {
      let planned = compiler.graph
      throw GraphError.invalidGraph(
        "'\(planned.name)' needs \(Executor.gib(peakActivationBytes + scratchpadBytes)) of activation memory at once, the kernels' working memory included (input \(planned.inputs.map { planned[$0].shape ?? [] })), more than this machine's \(Executor.gib(Int(clamping: memory))); run a smaller batch or input size")
    }
    arena = TensorStorage(count: (peakActivationBytes + 3) / 4)
    sharedWorkingMemory = options.workingMemory
    if options.workingMemory == nil {
      let own = TensorStorage(count: (scratchpadBytes + 3) / 4)
      scratchpad = own
      try Executor.bind(UnsafeMutableRawPointer(own.pointer), to: compiler.steps)
      boundScratchpad = UnsafeMutableRawPointer(own.pointer)
    } else {
      scratchpad = nil
    }
    bindPointers()
  }

  static func gib(_ bytes: Int) -> String { String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }

  /// Places arena buffers at offsets so that buffers alive at the same time never overlap:
  /// largest first, each at the lowest offset free during its whole lifetime. Returns the size.
  static func planArena(_ buffers: inout [Buffer]) -> Int {
    let order = buffers.indices.filter {
      if case .arena = buffers[$0].kind { return true } else { return false }
    }.sorted { buffers[$0].bytes > buffers[$1].bytes || (buffers[$0].bytes == buffers[$1].bytes && $0 < $1) }
    var placed: [Int] = []
    var total = 0
    for i in order {
      let b = buffers[i]
      let size = (b.bytes + 63) & ~63
      let overlapping = placed.filter { buffers[$0].first <= b.last && b.first <= buffers[$0].last }
        .map { (buffers[$0].offset, buffers[$0].offset + ((buffers[$0].bytes + 63) & ~63)) }
        .sorted { $0.0 < $1.0 }
      var offset = 0
      for (start, end) in overlapping {
        if offset + size <= start { break }
        offset = max(offset, end)
      }
      buffers[i].offset = offset
      total = max(total, offset + size)
      placed.append(i)
    }
    return total
  }

  private func pointer(_ buffer: Int) -> UnsafeMutableRawPointer {
    switch buffers[buffer].kind {
    case .arena: return UnsafeMutableRawPointer(arena.pointer) + buffers[buffer].offset
    case .constant(let s): return UnsafeMutableRawPointer(s.pointer)
    }
  }

  private func bindPointers() {
    stepInputs = steps.map { $0.inputs.map(pointer) }
    stepOutputs = steps.map { pointer($0.output) }
  }

  /// Runs the graph. Inputs in `graph.inputs` order, plain NCHW; outputs in `graph.outputs`
  /// order, plain.
  public func run(_ inputs: [Tensor]) throws -> [Tensor] {
    try run(inputs, timings: nil).outputs
  }

  /// Runs the graph and also returns the retained values (see `ExecutorOptions.retain`).
  public func runRetaining(_ inputs: [Tensor]) throws -> (outputs: [Tensor], retained: [String: Tensor]) {
    let r = try run(inputs, timings: nil)
    return (r.outputs, r.retained)
  }

  /// Runs the graph, timing every step.
  public func profile(_ inputs: [Tensor]) throws -> (outputs: [Tensor], steps: [StepTiming]) {
    var t: [StepTiming] = []
    let r = try run(inputs, timings: &t)
    return (r.outputs, t)
  }

  private func run(_ inputs: [Tensor], timings: UnsafeMutablePointer<[StepTiming]>?) throws
    -> (outputs: [Tensor], retained: [String: Tensor])
  {
    lock.lock()
    defer { lock.unlock() }
    guard let shared = sharedWorkingMemory, scratchpadBytes > 0 else {
      return try backend.onTeam { try runOnTeam(inputs, timings: timings) }
    }
    return try shared.withBuffer(atLeast: scratchpadBytes) { buffer in
      if buffer != boundScratchpad {
        try Executor.bind(buffer, to: steps)
        boundScratchpad = buffer
      }
      return try backend.onTeam { try runOnTeam(inputs, timings: timings) }
    }
  }

  private static func bind(_ buffer: UnsafeMutableRawPointer, to steps: [Step]) throws {
    for s in steps where s.kernel.scratchpadBytes > 0 { try s.kernel.bindScratchpad(buffer) }
  }

  private func runOnTeam(_ inputs: [Tensor], timings: UnsafeMutablePointer<[StepTiming]>?) throws
    -> (outputs: [Tensor], retained: [String: Tensor])
  {
    guard inputs.count == inputBuffers.count else {
      throw GraphError.inputMismatch(
        input: graph.name, expected: "\(inputBuffers.count) input tensor(s)", found: "\(inputs.count)")
    }
    for (i, t) in inputs.enumerated() {
      let v = graph.inputs[i]
      let expected = graph.shape(v) ?? []
      guard t.shape == expected else {
        throw GraphError.inputMismatch(
          input: graph[v].name, expected: "shape \(expected)", found: "shape \(t.shape)")
      }
      pointer(inputBuffers[i]).copyMemory(from: t.storage.pointer, byteCount: t.count * 4)
    }
    if let timings {
      timings.pointee.reserveCapacity(steps.count)
      for (i, s) in steps.enumerated() {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try runStep(i)
        let t1 = DispatchTime.now().uptimeNanoseconds
        timings.pointee.append(StepTiming(node: s.node, op: s.op, seconds: Double(t1 - t0) / 1e9))
      }
    } else {
      for i in steps.indices { try runStep(i) }
    }
    func read(_ b: Int, _ shape: [Int]) -> Tensor {
      let src = pointer(b)
      return Tensor(shape: shape) { buf in
        UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: src, byteCount: buf.count * 4)
      }
    }
    let outs = outputBuffers.map { read($0.buffer, $0.shape) }
    var kept: [String: Tensor] = [:]
    for (name, r) in retainedBuffers { kept[name] = read(r.buffer, r.shape) }
    return (outs, kept)
  }

  @inline(__always) private func runStep(_ i: Int) throws {
    if steps[i].serial {
      try backend.serially { try steps[i].kernel.run(inputs: stepInputs[i], output: stepOutputs[i]) }
    } else {
      try steps[i].kernel.run(inputs: stepInputs[i], output: stepOutputs[i])
    }
  }

  /// Steps run by the calling thread alone (see `ComputeBackend.serialStepNanoseconds`).
  public var serialStepCount: Int { steps.filter(\.serial).count }

  /// The memory each step touches, in step order: the weights its kernel owns, and the byte
  /// ranges of the activation arena it reads and writes (inputs and output, as planned, and
  /// its working memory, placed after the arena).
  /// What a TEE cost model needs to simulate an enclave's page cache over one request.
  public var memoryTrace: [StepMemory] {
    steps.map { s in
      var weights = s.kernel.constantBytes
      var ranges: [Range<Int>] = []
      for b in s.inputs + [s.output] {
        switch buffers[b].kind {
        case .arena: ranges.append(buffers[b].offset..<(buffers[b].offset + buffers[b].bytes))
        case .constant(let t): weights += t.count * 4
        }
      }
      // The shared working memory sits after the arena.
      if s.kernel.scratchpadBytes > 0 {
        ranges.append(peakActivationBytes..<(peakActivationBytes + s.kernel.scratchpadBytes))
      }
      return StepMemory(node: s.node, op: s.op, weightBytes: weights, activationRanges: ranges)
    }
  }

  public var stepCount: Int { steps.count }

  /// The kernel behind each step, with its output layout ("Conv+Relu → 1x64x56x56 …").
  public var kernelNames: [String] { steps.map { "\($0.kernel.name)" } }
}

/// Turns a graph into steps and buffers. Kept apart from `Executor` so the executor holds only
/// what a run needs.
struct Compiler {
  var graph: Graph
  let backend: ComputeBackend
  var steps: [Executor.Step] = []
  var buffers: [Executor.Buffer] = []
  var inputBuffers: [Int] = []
  var outputBuffers: [(buffer: Int, shape: [Int])] = []
  var retained: [String: (buffer: Int, shape: [Int])] = [:]
  var reorders = 0
  var constantBufferBytes = 0

  /// Where a value lives now and in which layout; a value may also exist in other layouts
  /// after reorders, kept in `converted`.
  struct Placement {
    var buffer: Int
    var layout: Layout
  }
  var placement: [ValueID: Placement] = [:]
  var converted: [ValueID: [Placement]] = [:]

  var readers: [ValueID: Int] = [:]
  /// Values written by a fused expansion and depthwise kernel (`emitPointwiseDepthwise`).
  var fusedOutputs = Set<ValueID>()

  init(graph: consuming Graph, backend: ComputeBackend) {
    self.graph = graph
    self.backend = backend
    for n in self.graph.nodes { for v in n.inputs { readers[v, default: 0] += 1 } }
  }

  mutating func newBuffer(_ bytes: Int) -> Int {
    buffers.append(.init(bytes: bytes, kind: .arena, first: steps.count, last: steps.count))
    return buffers.count - 1
  }

  mutating func use(_ buffer: Int) {
    buffers[buffer].last = max(buffers[buffer].last, steps.count)
  }

  func shape(_ v: ValueID) -> [Int] { graph.shape(v) ?? [] }

  /// The placement of runtime value `v` in `layout`, adding a reorder (or, for a constant,
  /// converting once now) when it is held in another layout.
  mutating func ensure(_ v: ValueID, _ layout: Layout, node: String) throws -> Int {
    if placement[v] == nil, let t = graph.initializers[v] {
      let s = TensorStorage(count: t.count)
      s.pointer.update(from: t.storage.pointer, count: t.count)
      buffers.append(.init(bytes: t.count * 4, kind: .constant(s), first: 0, last: 0))
      constantBufferBytes += t.count * 4
      placement[v] = Placement(buffer: buffers.count - 1, layout: .plain(t.shape))
    }
    guard let p = placement[v] else {
      throw GraphError.invalidGraph("node '\(node)' reads '\(graph[v].name)' before it is computed")
    }
    if p.layout == layout {
      use(p.buffer)
      return p.buffer
    }
    if let c = converted[v]?.first(where: { $0.layout == layout }) {
      use(c.buffer)
      return c.buffer
    }
    let k = try wrap(node: node, op: "reorder") { try backend.reorder(from: p.layout, to: layout) }
    if case .constant = buffers[p.buffer].kind {
      let s = TensorStorage(count: (layout.byteCount + 3) / 4)
      try k.run(inputs: [UnsafeMutableRawPointer(constantPointer(p.buffer))], output: UnsafeMutableRawPointer(s.pointer))
      buffers.append(.init(bytes: layout.byteCount, kind: .constant(s), first: 0, last: 0))
      constantBufferBytes += layout.byteCount
      converted[v, default: []].append(Placement(buffer: buffers.count - 1, layout: layout))
      return buffers.count - 1
    }
    use(p.buffer)
    let out = newBuffer(layout.byteCount)
    steps.append(.init(kernel: k, node: node, op: "Reorder", inputs: [p.buffer], output: out))
    reorders += 1
    converted[v, default: []].append(Placement(buffer: out, layout: layout))
    return out
  }

  func constantPointer(_ b: Int) -> UnsafeMutablePointer<Float> {
    if case .constant(let s) = buffers[b].kind { return s.pointer }
    fatalError("not a constant buffer")
  }

  func wrap<T>(node: String, op: String, _ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as TensorError {
      throw GraphError.unsupported(node: node, op: op, detail: e.description)
    }
  }

  /// Adds the step computing `n` with `kernel`, reading `ins` (runtime values) in the layouts
  /// the kernel asks for.
  mutating func emit(_ n: Node, _ kernel: Kernel, _ ins: [ValueID]) throws {
    var inBufs: [Int] = []
    for (i, v) in ins.enumerated() { inBufs.append(try ensure(v, kernel.inputLayouts[i], node: n.name)) }
    // Reorders added above moved the step index on: the inputs live until this step reads them.
    for b in inBufs { use(b) }
    let out = newBuffer(kernel.outputLayout.byteCount)
    steps.append(.init(kernel: kernel, node: n.name, op: n.op.typeName, inputs: inBufs, output: out))
    placement[n.outputs[0]] = Placement(buffer: out, layout: kernel.outputLayout)
  }

  /// Adds the step computing `n` with `kernel`, which reads runtime value `x` as a plain tensor
  /// of other dimensions (the same bytes: a [rows, features] view of a plain [..., features]
  /// tensor) and writes a plain output that is `n`'s output viewed the same way.
  mutating func emitViewed(_ n: Node, _ kernel: Kernel, _ x: ValueID) throws {
    let b = try ensure(x, .plain(shape(x)), node: n.name)
    use(b)
    let out = newBuffer(kernel.outputLayout.byteCount)
    steps.append(.init(kernel: kernel, node: n.name, op: n.op.typeName, inputs: [b], output: out))
    placement[n.outputs[0]] = Placement(buffer: out, layout: .plain(shape(n.outputs[0])))
  }

  /// The kernel of a matched attention block (`AttentionMatch`), written as the value of its
  /// last node. Its working memory (the second input) is an arena buffer alive for that step
  /// only, so it shares space with activations that are dead by then.
  mutating func emitAttention(_ n: Node, _ m: AttentionMatch) throws {
    let k = try wrap(node: n.name, op: "Attention") {
      try backend.attention(
        batch: m.batch, tokens: m.tokens, heads: m.heads, headWidth: m.headWidth, packedWidth: m.packedWidth,
        offsets: m.offsets, scale: m.scale)
    }
    let src = try ensure(m.qkv, k.inputLayouts[0], node: n.name)
    use(src)
    let scratch = newBuffer(k.inputLayouts[1].byteCount)
    let out = newBuffer(k.outputLayout.byteCount)
    steps.append(.init(kernel: k, node: n.name, op: "Attention", inputs: [src, scratch], output: out))
    placement[n.outputs[0]] = Placement(buffer: out, layout: k.outputLayout)
  }

  /// The 1×1 convolutions (by node index) whose output only a 3×3 depthwise convolution reads,
  /// with that convolution's index: `PointwiseDepthwise`'s shapes, activations only after
  /// each, constant weights, nothing small enough to run on one thread, and no value between
  /// them that the caller keeps.
  func pointwiseDepthwisePairs(keeping: Set<ValueID>) -> [Int: Int] {
    let consumers = graph.consumers()
    let onlyActivations: (Node) -> Bool = { n in
      n.postOps.allSatisfy { if case .activation = $0 { return true } else { return false } }
    }
    var pairs: [Int: Int] = [:]
    for (i, n) in graph.nodes.enumerated() {
      guard case .conv(let a) = n.op, a.kernel == [1, 1], a.strides == [1, 1], a.dilations == [1, 1],
        a.padsBegin == [0, 0], a.padsEnd == [0, 0], a.groups == 1, onlyActivations(n),
        n.inputs.dropFirst().allSatisfy({ graph.initializers[$0] != nil }),
        let v = n.outputs.first, readers[v] == 1, !graph.outputs.contains(v), !keeping.contains(v),
        let j = consumers[v]?.last, j > i, case .conv(let d) = graph.nodes[j].op, graph.nodes[j].inputs[0] == v,
        onlyActivations(graph.nodes[j]), graph.nodes[j].inputs.dropFirst().allSatisfy({ graph.initializers[$0] != nil }),
        d.kernel == [3, 3], d.strides == [1, 1] || d.strides == [2, 2], d.dilations == [1, 1],
        d.padsBegin == [1, 1], d.padsEnd == [1, 1], shape(v).count == 4, d.groups == shape(v)[1],
        graph.initializers[graph.nodes[j].inputs[1]]?.shape == [d.groups, 1, 3, 3], !isSmall(n)
      else { continue }
      pairs[i] = j
    }
    return pairs
  }

  /// Emits the pair as one kernel if the backend has one (`ComputeBackend.pointwiseDepthwise`);
  /// false, having emitted nothing, if it has not.
  mutating func emitPointwiseDepthwise(_ n: Node, _ m: Node) throws -> Bool {
    guard case .conv(let d) = m.op else { return false }
    func activations(_ n: Node) -> [Activation] {
      n.postOps.compactMap { if case .activation(let a) = $0 { return a } else { return nil } }
    }
    let block = try PointwiseDepthwise(
      inputDims: shape(n.inputs[0]), weights: constant(n.inputs[1], node: n, role: "weights"),
      bias: n.inputs.count > 2 ? constant(n.inputs[2], node: n, role: "bias") : nil, activations: activations(n),
      depthwiseStride: d.strides[0], depthwiseWeights: constant(m.inputs[1], node: m, role: "weights"),
      depthwiseBias: m.inputs.count > 2 ? constant(m.inputs[2], node: m, role: "bias") : nil,
      depthwiseActivations: activations(m), outputDims: shape(m.outputs[0]))
    guard let k = try wrap(node: n.name, op: n.op.typeName, { try backend.pointwiseDepthwise(block) }) else { return false }
    for v in n.inputs.dropFirst() + m.inputs.dropFirst() { release(v) }
    var both = n
    both.name = n.name + "+" + m.name
    both.outputs = m.outputs
    try emit(both, k, [n.inputs[0]])
    fusedOutputs.insert(m.outputs[0])
    return true
  }

  /// Drops a weight from the graph once a kernel holds it, unless another node still reads it.
  mutating func release(_ v: ValueID) {
    if readers[v, default: 0] <= 1 { graph.initializers[v] = nil } else { readers[v, default: 0] -= 1 }
  }

  func constant(_ v: ValueID, node: Node, role: String) throws -> Tensor {
    guard let t = graph.initializers[v] else {
      throw GraphError.unsupported(node: node.name, op: node.op.typeName, detail: "\(role) '\(graph[v].name)' must be a constant (initializer)")
    }
    return t
  }

  /// Whether one thread would run `n` in less time than waking the backend's team costs
  /// (`ComputeBackend.serialStepNanoseconds`), by a rough estimate: matrix products and
  /// convolutions at 25 GFLOP/s, anything else at two elements (read or written) a nanosecond.
  func isSmall(_ n: Node) -> Bool {
    let limit = backend.serialStepNanoseconds
    guard limit > 0 else { return false }
    let ns: Double
    switch n.op {
    case .conv, .convTranspose, .gemm, .matMul:
      ns = Double(graph.flops(of: n)) / 25
    default:
      let elements = (n.inputs + n.outputs).reduce(0) { $0 + shape($1).reduce(1, *) }
      ns = Double(elements) / 2
    }
    return ns < limit
  }

  mutating func compile(retain: [ValueID], fuse: Bool = true) throws {
    // Every tensor within the backend's rank, before any kernel is asked for (a file can
    // declare an input of rank 35; oneDNN's descriptors hold 12).
    let ends = (graph.inputs + graph.outputs).map { v in (v, node: graph[v].name, op: "graph input or output") }
    for (v, node, op) in graph.nodes.flatMap({ n in (n.inputs + n.outputs).map { ($0, node: n.name, op: n.op.typeName) } }) + ends
    where shape(v).count > backend.maxRank {
      throw GraphError.unsupported(
        node: node, op: op,
        detail: "'\(graph[v].name)' has rank \(shape(v).count) (\(shape(v).prefix(16))); the \(backend.name) backend computes on tensors of at most \(backend.maxRank) dimensions")
    }
    for v in graph.inputs {
      let s = shape(v)
      let b = newBuffer(s.reduce(1, *) * 4)
      buffers[b].first = 0
      inputBuffers.append(b)
      placement[v] = Placement(buffer: b, layout: .plain(s))
    }
    // With the inference passes, attention blocks that match exactly run as one kernel at
    // their last node; the nodes they replace emit nothing.
    var attention: [Int: AttentionMatch] = [:]
    var replaced = Set<Int>()
    for m in fuse ? graph.attentionMatches(keeping: Set(retain)) : [] {
      attention[m.last] = m
      replaced.formUnion(m.nodes)
    }
    // And an inverted residual block's 1×1 expansion and the depthwise convolution reading it
    // run as one kernel, where the backend has one, at the expansion; the depthwise node then
    // emits nothing.
    let fusable = fuse ? pointwiseDepthwisePairs(keeping: Set(retain)) : [:]
    for (i, n) in graph.nodes.enumerated() {
      if let m = attention[i] {
        try emitAttention(n, m)
      } else if let j = fusable[i], try emitPointwiseDepthwise(n, graph.nodes[j]) {
        replaced.insert(j)
      } else if !replaced.contains(i) {
        // A small step (and the reorders in front of it) is made, and later run, by the
        // calling thread alone.
        let first = steps.count
        if isSmall(n) {
          try backend.serially { try compileNode(n) }
          for k in first..<steps.count { steps[k].serial = true }
        } else {
          try compileNode(n)
        }
      }
    }
    // Graph outputs and retained values end in plain layout and stay alive to the end.
    for v in graph.outputs {
      let b = try ensure(v, .plain(shape(v)), node: "output '\(graph[v].name)'")
      outputBuffers.append((b, shape(v)))
    }
    for v in retain {
      let b = try ensure(v, .plain(shape(v)), node: "retained '\(graph[v].name)'")
      retained[graph[v].name] = (b, shape(v))
    }
    // Only now: the reorders above appended steps, and a buffer they wrote must not end
    // before the step that writes it.
    let end = steps.count + 1
    for (b, _) in outputBuffers { buffers[b].last = end }
    for (_, r) in retained { buffers[r.buffer].last = end }
    mergeInPlace()
  }

  /// Lets a step write over its in-place input when that input's buffer dies at the step.
  mutating func mergeInPlace() {
    var redirect = Array(buffers.indices)
    func root(_ b: Int) -> Int {
      var b = b
      while redirect[b] != b { b = redirect[b] }
      return b
    }
    let pinned = Set(inputBuffers)
    for s in steps.indices {
      guard let i = steps[s].kernel.inPlaceInput else { continue }
      let src = root(steps[s].inputs[i])
      let dst = root(steps[s].output)
      guard src != dst, !pinned.contains(src), case .arena = buffers[src].kind, buffers[src].last == s,
        buffers[src].bytes == buffers[dst].bytes, steps[s].kernel.inputLayouts[i] == steps[s].kernel.outputLayout,
        steps[s].inputs.filter({ root($0) == src }).count == 1
      else { continue }
      redirect[dst] = src
      buffers[src].last = buffers[dst].last
      buffers[dst].bytes = 0
    }
    for s in steps.indices {
      steps[s].inputs = steps[s].inputs.map(root)
      steps[s].output = root(steps[s].output)
    }
    inputBuffers = inputBuffers.map(root)
    outputBuffers = outputBuffers.map { (root($0.buffer), $0.shape) }
    for (k, r) in retained { retained[k] = (root(r.buffer), r.shape) }
    // Merged-away buffers take no space.
    for b in buffers.indices where root(b) != b { buffers[b].first = 0; buffers[b].last = 0 }
  }

  mutating func compileNode(_ n: Node) throws {
    let out = shape(n.outputs[0])
    let x = n.inputs[0]
    let xs = shape(x)
    func layoutOf(_ v: ValueID) -> Layout {
      if let p = placement[v] { return p.layout }
      return .plain(shape(v))
    }
    switch n.op {
    case .conv(let a), .convTranspose(let a):
      var transposed = false
      if case .convTranspose = n.op { transposed = true }
      let w = try constant(n.inputs[1], node: n, role: "weights")
      let b = n.opInputs.count > 2 ? try constant(n.inputs[2], node: n, role: "bias") : nil
      let spec = ConvolutionSpec(
        strides: a.strides, dilations: a.dilations, padsBegin: a.padsBegin,
        padsEnd: transposed ? zip(a.padsEnd, a.outputPadding).map { $0 - $1 } : a.padsEnd,
        groups: a.groups, transposed: transposed)
      // A map a fused expansion and depthwise step wrote (in that kernel's own layout) is read
      // as it is held where the backend can, not reordered first.
      let held = fusedOutputs.contains(x) ? placement[x]?.layout : nil
      let k = try wrap(node: n.name, op: n.op.typeName) {
        try backend.convolution(spec, inputDims: xs, weights: w, bias: b, postOps: n.postOps, outputDims: out, inputLayout: held)
      }
      // The kernel holds the weights in its own layout now; drop the graph's copy.
      release(n.inputs[1])
      if n.opInputs.count > 2 { release(n.inputs[2]) }
      try emit(n, k, n.residual.map { [x, $0] } ?? [x])
    case .batchNormalization(let eps):
      guard n.postOps.isEmpty || n.postOps == [.activation(.relu)] else {
        throw GraphError.unsupported(node: n.name, op: "BatchNormalization", detail: "fused work \(n.postOps) (a ReLU only)")
      }
      let p = try (1...4).map { try constant(n.inputs[$0], node: n, role: "parameter") }
      let k = try wrap(node: n.name, op: n.op.typeName) {
        try backend.batchNormalization(
          input: layoutOf(x), scale: p[0], bias: p[1], mean: p[2], variance: p[3], epsilon: eps,
          relu: n.postOps == [.activation(.relu)])
      }
      try emit(n, k, [x])
    case .layerNormalization(let axis, let eps):
      // Normalising over the trailing axes from `axis` is normalising the rows of a
      // [rows, features] view; the per-element scale and bias are broadcast to the features.
      let ax = axis < 0 ? axis + xs.count : axis
      let features = xs[ax...].reduce(1, *)
      let rows = xs[..<ax].reduce(1, *)
      func expanded(_ v: ValueID, _ role: String) throws -> Tensor {
        let t = try constant(v, node: n, role: role)
        if t.count == features { return try t.reshaped([features]) }
        let full = Array(xs[ax...])
        do { return try t.broadcast(to: full).reshaped([features]) } catch {
          throw GraphError.shapeError(node: n.name, op: "LayerNormalization", detail: "\(role) \(t.shape) does not broadcast to \(full)")
        }
      }
      let scale = try expanded(n.inputs[1], "scale")
      let bias = n.opInputs.count > 2 ? try expanded(n.inputs[2], "bias") : nil
      let k = try wrap(node: n.name, op: n.op.typeName) {
        try backend.layerNormalization(input: .plain([rows, features]), scale: scale, bias: bias, epsilon: eps)
      }
      release(n.inputs[1])
      if n.opInputs.count > 2 { release(n.inputs[2]) }
      try emitViewed(n, k, x)
    case .activation(let a):
      let k = try wrap(node: n.name, op: n.op.typeName) { try backend.activation(a, input: layoutOf(x)) }
      try emit(n, k, [x])
    case .maxPool(let p), .averagePool(let p):
      var padsEnd = p.padsEnd
      for i in p.kernel.indices {
        // A backend's pooling floors (`PoolingSpec`); widen the end padding so it yields the
        // ceil-mode extent.
        let need = (out[i + 2] - 1) * p.strides[i] + p.kernel[i] - xs[i + 2] - p.padsBegin[i]
        padsEnd[i] = max(padsEnd[i], need)
      }
      let kind: PoolingKind
      if case .maxPool = n.op { kind = .max } else { kind = .average(countIncludePad: p.countIncludePad) }
      if case .average(true) = kind, padsEnd != p.padsEnd {
        // ONNX counts the explicit pads in the divisor but not the extra ceil mode adds;
        // a backend's pooling would count both. Pad explicitly, then average without counting
        // the rest.
        try emitPaddedAveragePool(n, p, widenedEnd: padsEnd)
        return
      }
      let spec = PoolingSpec(kind: kind, kernel: p.kernel, strides: p.strides, padsBegin: p.padsBegin, padsEnd: padsEnd)
      let k = try wrap(node: n.name, op: n.op.typeName) { try backend.pooling(spec, input: layoutOf(x), outputDims: out) }
      try emit(n, k, [x])
    case .globalAveragePool:
      let sp = Array(xs.dropFirst(2))
      let spec = PoolingSpec(
        kind: .average(countIncludePad: false), kernel: sp, strides: sp.map { _ in 1 },
        padsBegin: sp.map { _ in 0 }, padsEnd: sp.map { _ in 0 })
      let k = try wrap(node: n.name, op: n.op.typeName) { try backend.pooling(spec, input: layoutOf(x), outputDims: out) }
      try emit(n, k, [x])
    case .binary(let kind):
      var a = n.inputs[0]
      var b = n.inputs[1]
      if shape(a) != out, shape(b) == out, kind == .add || kind == .mul { swap(&a, &b) }
      let sa = shape(a)
      let sb = shape(b)
      if sa == out, sb.count == sa.count {
        let la = layoutOf(a)
        var lb = layoutOf(b)
        if sb == sa {
          lb = la  // same dims: read both in one layout
        } else if let m = la.matching(sb) {
          lb = m  // a broadcast operand in the other's arrangement
        } else if !lb.isPlain {
          lb = .plain(sb)
        }
        if let k = try? backend.binary(kind, a: la, b: lb, outputDims: out) {
          try emit(n, k, [a, b])
          return
        }
      }
      let k = try wrap(node: n.name, op: n.op.typeName) {
        try backend.binary(kind, a: .plain(shape(n.inputs[0])), b: .plain(shape(n.inputs[1])), outputDims: out)
      }
      try emit(n, k, [n.inputs[0], n.inputs[1]])
    case .concat(let axis):
      let ax = axis < 0 ? axis + xs.count : axis
      let ls = n.inputs.map(layoutOf)
      // As the inputs are; else all in the layout of the largest (one reorder of the smaller
      // ones); else all plain.
      let largest = n.inputs.indices.max { shape(n.inputs[$0]).reduce(1, *) < shape(n.inputs[$1]).reduce(1, *) } ?? 0
      let common = n.inputs.map { ls[largest].matching(shape($0)) }
      if let k = try? backend.concat(axis: ax, inputs: ls) {
        try emit(n, k, n.inputs)
      } else if common.allSatisfy({ $0 != nil }), let k = try? backend.concat(axis: ax, inputs: common.map { $0! }) {
        try emit(n, k, n.inputs)
      } else {
        let k = try wrap(node: n.name, op: n.op.typeName) {
          try backend.concat(axis: ax, inputs: n.inputs.map { .plain(shape($0)) })
        }
        try emit(n, k, n.inputs)
      }
    case .gemm(let g):
      guard !g.transA else {
        throw GraphError.unsupported(node: n.name, op: "Gemm", detail: "transA = 1 (transpose A with a Transpose node first)")
      }
      var w = try constant(n.inputs[1], node: n, role: "B")
      release(n.inputs[1])
      if !g.transB { w = transposed2D(w) }
      if g.alpha != 1 { w = scaled(w, g.alpha) }
      var bias: Tensor? = nil
      if n.opInputs.count > 2 {
        let c = try constant(n.inputs[2], node: n, role: "C")
        guard c.count == out[1] else {
          throw GraphError.unsupported(node: n.name, op: "Gemm", detail: "C of shape \(c.shape) (only a bias of [\(out[1])] or [1, \(out[1])])")
        }
        release(n.inputs[2])
        bias = try (g.beta == 1 ? c : scaled(c, g.beta)).reshaped([out[1]])
      }
      let wt = w
      let bt = bias
      let k = try wrap(node: n.name, op: "Gemm") {
        try backend.innerProduct(inputDims: xs, weights: wt, bias: bt, postOps: n.postOps)
      }
      try emit(n, k, n.residual.map { [x, $0] } ?? [x])
    case .matMul:
      let bShape = shape(n.inputs[1])
      if xs.count >= 2, bShape.count == 2, let bw = graph.initializers[n.inputs[1]] {
        // A constant matrix: a dense layer over the rows of A's [rows, K] view (a transformer's
        // projections of [N, tokens, dim] are this).
        let w = transposed2D(bw)
        let rows = xs.dropLast().reduce(1, *)
        let k = try wrap(node: n.name, op: "MatMul") {
          try backend.innerProduct(inputDims: [rows, xs[xs.count - 1]], weights: w, bias: nil, postOps: [])
        }
        release(n.inputs[1])
        if xs.count == 2 { try emit(n, k, [x]) } else { try emitViewed(n, k, x) }
      } else {
        guard xs.count >= 2, bShape.count >= 2 else {
          throw GraphError.unsupported(node: n.name, op: "MatMul", detail: "1-D operands \(xs) × \(bShape)")
        }
        let k = try wrap(node: n.name, op: "MatMul") { try backend.matmul(a: xs, b: bShape, outputDims: out) }
        try emit(n, k, [x, n.inputs[1]])
      }
    case .flatten, .reshape, .identity, .dropout:
      // Same bytes under another name or shape: share the buffer, in plain layout.
      if graph.initializers[x] != nil {
        graph.initializers[n.outputs[0]] = try graph.initializers[x]!.reshaped(out)
        return
      }
      let b = try ensure(x, .plain(xs), node: n.name)
      placement[n.outputs[0]] = Placement(buffer: b, layout: .plain(out))
    case .transpose(let perm):
      let k = try wrap(node: n.name, op: "Transpose") { try backend.transpose(permutation: perm, inputDims: xs) }
      try emit(n, k, [x])
    case .channelShuffle(let groups):
      // In the layout its producer wrote where the backend can, else in the plain one.
      let k =
        try (try? backend.channelShuffle(groups: groups, input: layoutOf(x)))
        ?? wrap(node: n.name, op: "ChannelShuffle") { try backend.channelShuffle(groups: groups, input: .plain(xs)) }
      try emit(n, k, [x])
    case .slice(let a):
      let r: (starts: [Int], steps: [Int], extents: [Int])
      do { r = try a.resolved(xs) } catch {
        throw GraphError.shapeError(node: n.name, op: "Slice", detail: error.detail)
      }
      // In the layout its producer wrote where the backend can (a channel split of a
      // channels-last tensor, or of a blocked one on block bounds), else from the plain one.
      let k =
        try (try? backend.slice(starts: r.starts, steps: r.steps, input: layoutOf(x), outputDims: out))
        ?? wrap(node: n.name, op: "Slice") {
          try backend.slice(starts: r.starts, steps: r.steps, input: .plain(xs), outputDims: out)
        }
      try emit(n, k, [x])
    case .pad(let mode, let pads, let value):
      let k = try wrap(node: n.name, op: "Pad") { try backend.pad(mode: mode, value: value, pads: pads, inputDims: xs) }
      try emit(n, k, [x])
    case .resize(let kind, _, _):
      guard xs.count >= 3, out[0] == xs[0], out[1] == xs[1] else {
        throw GraphError.unsupported(node: n.name, op: "Resize", detail: "resizing batch or channel axes (\(xs) → \(out))")
      }
      let k = try wrap(node: n.name, op: "Resize") { try backend.resize(kind, input: layoutOf(x), outputDims: out) }
      try emit(n, k, [x])
    case .localResponseNormalization(let size, let alpha, let beta, let bias):
      guard size % 2 == 1 else {
        // ONNX centres an even window one channel off; the seam's LRN window is centred.
        // Refuse, never guess.
        throw GraphError.unsupported(node: n.name, op: "LRN", detail: "an even size (\(size)); only odd window sizes")
      }
      let k = try wrap(node: n.name, op: "LRN") {
        try backend.localResponseNormalization(size: size, alpha: alpha, beta: beta, k: bias, input: layoutOf(x))
      }
      try emit(n, k, [x])
    case .softmax(let axis):
      let ax = axis < 0 ? axis + xs.count : axis
      let k = try wrap(node: n.name, op: "Softmax") { try backend.softmax(axis: ax, input: .plain(xs)) }
      try emit(n, k, [x])
    }
  }

  /// AveragePool with count_include_pad and ceil mode: zero-pad by the explicit pads, then
  /// pool over the padded tensor, excluding only the ceil-mode extension from the divisor.
  mutating func emitPaddedAveragePool(_ n: Node, _ p: PoolAttributes, widenedEnd: [Int]) throws {
    let x = n.inputs[0]
    let xs = shape(x)
    let nsp = p.kernel.count
    let pads = [0, 0] + p.padsBegin + [0, 0] + p.padsEnd
    let padK = try wrap(node: n.name, op: "Pad") { try backend.pad(mode: .constant, value: 0, pads: pads, inputDims: xs) }
    let src = try ensure(x, padK.inputLayouts[0], node: n.name)
    use(src)
    let padded = newBuffer(padK.outputLayout.byteCount)
    steps.append(.init(kernel: padK, node: n.name, op: "Pad", inputs: [src], output: padded))
    let spec = PoolingSpec(
      kind: .average(countIncludePad: false), kernel: p.kernel, strides: p.strides,
      padsBegin: Array(repeating: 0, count: nsp), padsEnd: (0..<nsp).map { widenedEnd[$0] - p.padsEnd[$0] })
    let poolK = try wrap(node: n.name, op: n.op.typeName) {
      try backend.pooling(spec, input: padK.outputLayout, outputDims: shape(n.outputs[0]))
    }
    use(padded)
    let out = newBuffer(poolK.outputLayout.byteCount)
    steps.append(.init(kernel: poolK, node: n.name, op: n.op.typeName, inputs: [padded], output: out))
    placement[n.outputs[0]] = Placement(buffer: out, layout: poolK.outputLayout)
  }

  func transposed2D(_ t: Tensor) -> Tensor {
    let r = t.shape[0]
    let c = t.shape[1]
    return Tensor(shape: [c, r]) { out in
      let src = t.storage.pointer
      for i in 0..<r { for j in 0..<c { out[j * r + i] = src[i * c + j] } }
    }
  }

  func scaled(_ t: Tensor, _ s: Float) -> Tensor {
    Tensor(shape: t.shape) { out in
      for i in 0..<t.count { out[i] = t.storage.pointer[i] * s }
    }
  }
}
