import CDNNL
import Foundation

// Gradient argument slots (dnnl_types.h: DNNL_ARG_DIFF_FLAG 128 plus the forward slot).
let argDiffSrc: Int32 = 129
let argDiffDst: Int32 = 145
let argDiffWeights: Int32 = 161
let argDiffBias: Int32 = 169

/// A 2-D convolution or transposed convolution for training, grouped or not (depthwise ones
/// in MobileNet and EfficientNet): forward, backward-data and backward-weights, all three on
/// oneDNN (the backward primitives are created with the forward one as their hint, as oneDNN
/// requires). The caller's tensors are plain: NCHW activations, ONNX weight order
/// ([out, in/groups, kh, kw] for Conv, [in, out/groups, kh, kw] for ConvTranspose), so the
/// autograd layer never sees a blocked layout; with groups, oneDNN reads those weights as 5-D
/// [groups, out/groups, in/groups, kh, kw]. Each primitive, though, picks its own layouts
/// (format `any`): with plain ones oneDNN 2.6 falls back to im2col + GEMM ("gemm:jit") for
/// every pass, while its direct AVX2 kernels on 8-channel blocks (and its depthwise kernels)
/// run the attacker's layers faster, reorders to and from the plain tensors included
/// (docs/benchmarks.md, docs/training.md).
///
/// The backward primitives, and the buffers their layouts need, are made on first use: a frozen
/// network (white-box inversion) never makes the backward-weights ones. One instance serves one
/// set of shapes; `DNNLBackend.trainingConvolution` shares instances (a bounded cache), and a
/// lock serialises runs because the memory objects are rebound on every call.
public final class ConvolutionTraining: TrainingConvolutionKernel, @unchecked Sendable {
  public let spec: ConvolutionSpec
  public let inputDims: [Int]
  public let weightShape: [Int]
  public let outputDims: [Int]
  public let hasBias: Bool

  /// A primitive with its arguments in the layouts it chose.
  private final class Pass {
    let entry: PrimitiveEntry
    let arguments: [ConvArgument]
    init(_ entry: PrimitiveEntry, _ arguments: [ConvArgument]) {
      self.entry = entry
      self.arguments = arguments
    }
  }

  private let forwardPass: Pass
  private var dataPass: Pass?
  private var weightsPass: Pass?
  private let bias: BoundMemory
  private let engine: Engine
  private let lock = NSLock()
  // What the backward descriptors are made of: `any` layouts, the caller's plain ones, geometry.
  private let srcAny, weightsAny, dstAny, biasPlain: dnnl_memory_desc_t
  private let srcPlain, weightsPlain, dstPlain: Layout
  private let strides, dilations, padsLeft, padsRight: [Int64]
  private let what: String

  public init(_ spec: ConvolutionSpec, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool) throws {
    guard inputDims.count == 4, outputDims.count == 4, weightShape.count == 4, spec.strides.count == 2,
      spec.dilations.count == 2, spec.padsBegin.count == 2, spec.padsEnd.count == 2
    else {
      throw TensorError.invalidArgument(
        "training convolution: 2-D only; input \(inputDims), weights \(weightShape), output \(outputDims), \(spec)")
    }
    let (ic, oc, g) = (inputDims[1], outputDims[1], spec.groups)
    guard g >= 1, ic % g == 0, oc % g == 0 else {
      throw TensorError.invalidArgument(
        "training convolution: groups \(g) must divide the input (\(ic)) and output (\(oc)) channels")
    }
    let expected = spec.transposed ? [ic, oc / g] : [oc, ic / g]
    guard Array(weightShape.prefix(2)) == expected else {
      throw TensorError.shapeMismatch(
        what: spec.transposed ? "ConvTranspose weights" : "Conv weights",
        expected: "\(expected) + kernel for input \(inputDims), output \(outputDims) and groups \(g)", found: "\(weightShape)")
    }
    self.spec = spec
    self.inputDims = inputDims
    self.weightShape = weightShape
    self.outputDims = outputDims
    self.hasBias = hasBias
    let engine = Engine.shared
    self.engine = engine

    func i64(_ a: [Int]) -> [Int64] { a.map { Int64($0) } }
    // oneDNN's logical weight dims are [g,] oc/g, ic/g, kh, kw for both; ConvTranspose's ONNX
    // order puts in/g before out/g, the permuted tag (b)acd over them.
    let kernel = Array(weightShape.dropFirst(2))
    let wdims = (g > 1 ? [g] : []) + [oc / g, ic / g] + kernel
    let tag = g > 1 ? (spec.transposed ? dnnl_acbde : dnnl_abcde) : (spec.transposed ? dnnl_bacd : dnnl_abcd)
    var weiPlainMd = dnnl_memory_desc_t()
    let wd = i64(wdims)
    _ = wd.withUnsafeBufferPointer { veil_md_tag(&weiPlainMd, Int32(wdims.count), $0.baseAddress, tag) }
    srcPlain = Layout.plain(inputDims)
    dstPlain = Layout.plain(outputDims)
    weightsPlain = Layout(md: weiPlainMd)
    srcAny = DNNLLayout.anyMD(inputDims)
    dstAny = DNNLLayout.anyMD(outputDims)
    weightsAny = DNNLLayout.anyMD(wdims)
    biasPlain = DNNLLayout.plainMD([oc])
    let (st, dil, pl, pr) = (i64(spec.strides), i64(spec.dilations.map { $0 - 1 }), i64(spec.padsBegin), i64(spec.padsEnd))
    let what = "\(spec.transposed ? "ConvTranspose" : "Conv") input \(inputDims), weights \(weightShape), output \(outputDims), \(spec)"
    (strides, dilations, padsLeft, padsRight, self.what) = (st, dil, pl, pr, what)
    bias = try BoundMemory(Layout(md: biasPlain), engine: engine.engine)

    forwardPass = try Self.pass(
      "training convolution forward", engine: engine, descriptors: (srcAny, weightsAny, dstAny, biasPlain), bias: hasBias,
      hint: nil, detail: what,
      arguments: [(srcPlain, dnnl_query_src_md, false), (weightsPlain, dnnl_query_weights_md, false), (dstPlain, dnnl_query_dst_md, true)]
    ) { desc, src, wei, dst, bp in
      spec.transposed
        ? dnnl_dilated_deconvolution_forward_desc_init(
          desc, dnnl_forward_training, dnnl_deconvolution_direct, src, wei, bp, dst, st, dil, pl, pr)
        : dnnl_dilated_convolution_forward_desc_init(
          desc, dnnl_forward_training, dnnl_convolution_direct, src, wei, bp, dst, st, dil, pl, pr)
    }
  }

  /// Fills a pass's descriptor from the source, weights, destination and (optional) bias
  /// memory descriptors.
  private typealias PassDescriptor = (
    UnsafeMutablePointer<dnnl_convolution_desc_t>, UnsafePointer<dnnl_memory_desc_t>, UnsafePointer<dnnl_memory_desc_t>,
    UnsafePointer<dnnl_memory_desc_t>, UnsafePointer<dnnl_memory_desc_t>?
  ) -> dnnl_status_t

  /// One pass: its descriptor, which `initialise` fills from the any-layout source, weights
  /// and destination (and the plain bias where the pass takes one), its primitive, and its
  /// arguments (plain layout, the query for the primitive's layout, whether the pass writes
  /// it) in the order `execute` binds them.
  private static func pass(
    _ op: String, engine: Engine,
    descriptors: (src: dnnl_memory_desc_t, weights: dnnl_memory_desc_t, dst: dnnl_memory_desc_t, bias: dnnl_memory_desc_t),
    bias: Bool, hint: dnnl_primitive_desc_t?, detail: String, arguments: [(Layout, dnnl_query_t, Bool)],
    _ initialise: PassDescriptor
  ) throws -> Pass {
    var (src, wei, dst, b) = descriptors
    var desc = dnnl_convolution_desc_t()
    try check(withOptionalPointer(bias, &b) { bp in initialise(&desc, &src, &wei, &dst, bp) }, "\(op) descriptor", detail: detail)
    let entry = try create(&desc, hint: hint, engine: engine, op, detail: detail)
    return Pass(
      entry,
      try arguments.map { plain, query, output in
        try ConvArgument(plain: plain, chosen: Layout(md: entry.md(query)), output: output, engine: engine)
      })
  }

  private static func create(
    _ desc: inout dnnl_convolution_desc_t, hint: dnnl_primitive_desc_t?, engine: Engine, _ op: String, detail: String
  ) throws -> PrimitiveEntry {
    var pd: dnnl_primitive_desc_t?
    try check(dnnl_primitive_desc_create(&pd, &desc, nil, engine.engine, hint), op, detail: detail)
    guard let pd else { throw TensorError.backend(operation: op, status: -1, detail: "no primitive descriptor for \(detail)") }
    return try PrimitiveEntry(pd: pd, operation: op)
  }

  /// The backward-data pass, made on first use (under `lock`).
  private func backwardDataPass() throws -> Pass {
    try backwardPass(
      \.dataPass, "convolution backward-data", bias: false,
      [(dstPlain, dnnl_query_diff_dst_md, false), (weightsPlain, dnnl_query_weights_md, false), (srcPlain, dnnl_query_diff_src_md, true)]
    ) { desc, src, wei, dst, _ in
      spec.transposed
        ? dnnl_dilated_deconvolution_backward_data_desc_init(
          desc, dnnl_deconvolution_direct, src, wei, dst, strides, dilations, padsLeft, padsRight)
        : dnnl_dilated_convolution_backward_data_desc_init(
          desc, dnnl_convolution_direct, src, wei, dst, strides, dilations, padsLeft, padsRight)
    }
  }

  /// The backward-weights pass, made on first use (under `lock`).
  private func backwardWeightsPass() throws -> Pass {
    try backwardPass(
      \.weightsPass, "convolution backward-weights", bias: hasBias,
      [(srcPlain, dnnl_query_src_md, false), (dstPlain, dnnl_query_diff_dst_md, false), (weightsPlain, dnnl_query_diff_weights_md, true)]
    ) { desc, src, wei, dst, bp in
      spec.transposed
        ? dnnl_dilated_deconvolution_backward_weights_desc_init(
          desc, dnnl_deconvolution_direct, src, wei, bp, dst, strides, dilations, padsLeft, padsRight)
        : dnnl_dilated_convolution_backward_weights_desc_init(
          desc, dnnl_convolution_direct, src, wei, bp, dst, strides, dilations, padsLeft, padsRight)
    }
  }

  /// A backward pass kept in `slot`, made on first use with the forward pass as its hint.
  private func backwardPass(
    _ slot: ReferenceWritableKeyPath<ConvolutionTraining, Pass?>, _ op: String, bias: Bool,
    _ arguments: [(Layout, dnnl_query_t, Bool)], _ initialise: PassDescriptor
  ) throws -> Pass {
    if let pass = self[keyPath: slot] { return pass }
    let pass = try Self.pass(
      op, engine: engine, descriptors: (srcAny, weightsAny, dstAny, biasPlain), bias: bias, hint: forwardPass.entry.pd,
      detail: what, arguments: arguments, initialise)
    self[keyPath: slot] = pass
    return pass
  }

  /// Binds the caller's tensors to the pass's arguments (in order), reorders the inputs into
  /// the primitive's layouts, runs it and reorders its outputs back; `plainArgs` (bias) are
  /// bound as they are.
  private func execute(
    _ pass: Pass, _ slots: [Int32], _ tensors: [Tensor],
    plain plainArgs: [(Int32, BoundMemory, UnsafeMutableRawPointer)] = [], _ op: String
  ) throws {
    for (a, t) in zip(pass.arguments, tensors) {
      try check(dnnl_memory_set_data_handle(a.plain.memory, UnsafeMutableRawPointer(t.storage.pointer)), "\(op): binding memory")
    }
    for (_, m, p) in plainArgs { try check(dnnl_memory_set_data_handle(m.memory, p), "\(op): binding memory") }
    func run(_ primitive: dnnl_primitive_t, _ args: [dnnl_exec_arg_t]) throws {
      let status = args.withUnsafeBufferPointer {
        dnnl_primitive_execute(primitive, engine.stream, Int32($0.count), $0.baseAddress)
      }
      try check(status, op)
    }
    for a in pass.arguments where !a.output {
      if let r = a.reorder, let b = a.blocked {
        try run(r.primitive, [dnnl_exec_arg_t(arg: argSrc, memory: a.plain.memory), dnnl_exec_arg_t(arg: argDst, memory: b.memory)])
      }
    }
    try run(
      pass.entry.primitive,
      zip(slots, pass.arguments).map { dnnl_exec_arg_t(arg: $0, memory: $1.memory) }
        + plainArgs.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.memory) })
    for a in pass.arguments where a.output {
      if let r = a.reorder, let b = a.blocked {
        try run(r.primitive, [dnnl_exec_arg_t(arg: argSrc, memory: b.memory), dnnl_exec_arg_t(arg: argDst, memory: a.plain.memory)])
      }
    }
    engine.wait()
    withExtendedLifetime(tensors) {}
  }

  private func checkShape(_ t: Tensor, _ shape: [Int], _ what: String) throws {
    guard t.shape == shape else { throw TensorError.shapeMismatch(what: what, expected: "\(shape)", found: "\(t.shape)") }
  }

  /// y = conv(x, W) + b.
  public func forward(input: Tensor, weights w: Tensor, bias b: Tensor?) throws -> Tensor {
    try checkShape(input, inputDims, "convolution input")
    try checkShape(w, weightShape, "convolution weights")
    if hasBias { try checkShape(b ?? Tensor(zeros: [0]), [outputDims[1]], "convolution bias") }
    let out = Tensor(uninitialized: outputDims)  // the primitive writes every element
    lock.lock()
    defer { lock.unlock() }
    try execute(
      forwardPass, [argSrc, argWeights, argDst], [input, w, out],
      plain: hasBias ? b.map { [(argBias, bias, UnsafeMutableRawPointer($0.storage.pointer))] } ?? [] : [],
      "convolution forward")
    withExtendedLifetime(b) {}
    return out
  }

  /// ∂L/∂x from ∂L/∂y.
  public func backwardData(outputGradient dy: Tensor, weights w: Tensor) throws -> Tensor {
    try checkShape(dy, outputDims, "convolution output gradient")
    try checkShape(w, weightShape, "convolution weights")
    let dx = Tensor(uninitialized: inputDims)
    lock.lock()
    defer { lock.unlock() }
    try execute(try backwardDataPass(), [argDiffDst, argWeights, argDiffSrc], [dy, w, dx], "convolution backward-data")
    return dx
  }

  /// ∂L/∂W (and ∂L/∂b when the convolution has a bias) from the input and ∂L/∂y.
  public func backwardWeights(input: Tensor, outputGradient dy: Tensor) throws -> (weights: Tensor, bias: Tensor?) {
    try checkShape(input, inputDims, "convolution input")
    try checkShape(dy, outputDims, "convolution output gradient")
    let dw = Tensor(uninitialized: weightShape)
    let db = hasBias ? Tensor(uninitialized: [outputDims[1]]) : nil
    lock.lock()
    defer { lock.unlock() }
    try execute(
      try backwardWeightsPass(), [argSrc, argDiffDst, argDiffWeights], [input, dy, dw],
      plain: db.map { [(argDiffBias, bias, UnsafeMutableRawPointer($0.storage.pointer))] } ?? [], "convolution backward-weights")
    return (dw, db)
  }

  /// Whether the backward passes have been made (a frozen network makes only backward-data).
  public var madePasses: (backwardData: Bool, backwardWeights: Bool) {
    lock.lock()
    defer { lock.unlock() }
    return (dataPass != nil, weightsPass != nil)
  }
}

/// One argument of a training primitive: the caller's plain tensor (bound at each run) and,
/// where the primitive chose another layout, a buffer of its own in that layout with the
/// reorder into it (an input) or out of it (an output).
private final class ConvArgument: @unchecked Sendable {
  let plain: BoundMemory
  let blocked: BoundMemory?
  let reorder: PrimitiveEntry?
  let output: Bool
  private let buffer: UnsafeMutableRawPointer?

  init(plain layout: Layout, chosen: Layout, output: Bool, engine: Engine) throws {
    plain = try BoundMemory(layout, engine: engine.engine)
    self.output = output
    guard chosen != layout else {
      blocked = nil
      reorder = nil
      buffer = nil
      return
    }
    let b = UnsafeMutableRawPointer.allocate(byteCount: max(chosen.byteCount, 64), alignment: 64)
    buffer = b
    blocked = try BoundMemory(chosen, engine: engine.engine, handle: b)
    var from = try (output ? chosen : layout).dnnlMD()
    var to = try (output ? layout : chosen).dnnlMD()
    var pd: dnnl_primitive_desc_t?
    let detail = "\(Layout(md: from)) → \(Layout(md: to))"
    try check(
      dnnl_reorder_primitive_desc_create(&pd, &from, engine.engine, &to, engine.engine, nil), "training convolution reorder",
      detail: detail)
    guard let pd else { throw TensorError.backend(operation: "training convolution reorder", status: -1, detail: detail) }
    reorder = try PrimitiveEntry(pd: pd, operation: "reorder")
  }

  /// The memory the primitive reads or writes.
  var memory: dnnl_memory_t { (blocked ?? plain).memory }

  deinit { buffer?.deallocate() }
}
