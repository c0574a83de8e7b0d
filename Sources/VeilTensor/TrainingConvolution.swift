import CDNNL
import Foundation

// Gradient argument slots (dnnl_types.h: DNNL_ARG_DIFF_FLAG 128 plus the forward slot).
let argDiffSrc: Int32 = 129
let argDiffDst: Int32 = 145
let argDiffWeights: Int32 = 161
let argDiffBias: Int32 = 169

/// A 2-D convolution or transposed convolution for training: forward, backward-data and
/// backward-weights, all three on oneDNN (the backward primitives are created with the forward
/// one as their hint, as oneDNN requires). The caller's tensors are plain: NCHW activations,
/// ONNX weight order ([out, in, kh, kw] for Conv, [in, out, kh, kw] for ConvTranspose), so the
/// autograd layer never sees a blocked layout. Each primitive, though, picks its own layouts
/// (format `any`): with plain ones oneDNN 2.6 falls back to im2col + GEMM ("gemm:jit") for
/// every pass, while its direct AVX2 kernels on 8-channel blocks run the attacker's layers
/// faster, reorders to and from the plain tensors included (docs/benchmarks.md). Groups must
/// be 1 in this first version.
///
/// One instance serves one set of shapes; `ConvolutionTraining.make` shares instances, and a
/// lock serialises runs because the memory objects are rebound on every call.
public final class ConvolutionTraining: @unchecked Sendable {
  public let spec: ConvolutionSpec
  public let inputDims: [Int]
  public let weightShape: [Int]
  public let outputDims: [Int]
  public let hasBias: Bool

  private let forwardEntry: PrimitiveEntry
  private let dataEntry: PrimitiveEntry
  private let weightsEntry: PrimitiveEntry
  // Each pass's arguments, in the layouts its primitive chose.
  private let forwardSrc, forwardWeights, forwardDst: ConvArgument
  private let dataDiffDst, dataWeights, dataDiffSrc: ConvArgument
  private let weightsSrc, weightsDiffDst, weightsDiffWeights: ConvArgument
  private let bias: BoundMemory
  private let engine: Engine
  private let lock = NSLock()

  private static let cacheLock = NSLock()
  nonisolated(unsafe) private static var cache: [String: ConvolutionTraining] = [:]

  /// A shared instance for these shapes, built on first use.
  public static func make(
    _ spec: ConvolutionSpec, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool
  ) throws -> ConvolutionTraining {
    let key = "\(spec)|\(inputDims)|\(weightShape)|\(outputDims)|\(hasBias)"
    cacheLock.lock()
    defer { cacheLock.unlock() }
    if let c = cache[key] { return c }
    let c = try ConvolutionTraining(
      spec, inputDims: inputDims, weightShape: weightShape, outputDims: outputDims, hasBias: hasBias)
    cache[key] = c
    return c
  }

  public init(_ spec: ConvolutionSpec, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool) throws {
    guard inputDims.count == 4, outputDims.count == 4, weightShape.count == 4, spec.strides.count == 2,
      spec.dilations.count == 2, spec.padsBegin.count == 2, spec.padsEnd.count == 2
    else {
      throw TensorError.invalidArgument(
        "training convolution: 2-D only; input \(inputDims), weights \(weightShape), output \(outputDims), \(spec)")
    }
    guard spec.groups == 1 else {
      throw TensorError.unsupported("training convolution with groups = \(spec.groups) (only 1 so far)")
    }
    let (ic, oc) = (inputDims[1], outputDims[1])
    let expected = spec.transposed ? [ic, oc] : [oc, ic]
    guard Array(weightShape.prefix(2)) == expected else {
      throw TensorError.shapeMismatch(
        what: spec.transposed ? "ConvTranspose weights" : "Conv weights",
        expected: "\(expected) + kernel for input \(inputDims) and output \(outputDims)", found: "\(weightShape)")
    }
    self.spec = spec
    self.inputDims = inputDims
    self.weightShape = weightShape
    self.outputDims = outputDims
    self.hasBias = hasBias
    let engine = Engine.shared
    self.engine = engine

    func i64(_ a: [Int]) -> [Int64] { a.map { Int64($0) } }
    // oneDNN's logical weight dims are [oc, ic, kh, kw] for both; ConvTranspose's ONNX order
    // [ic, oc, kh, kw] is the permuted tag bacd over them.
    let wdims = [oc, ic] + Array(weightShape.dropFirst(2))
    let srcPlain = Layout.plain(inputDims)
    let dstPlain = Layout.plain(outputDims)
    var weiPlainMd = dnnl_memory_desc_t()
    let wd = i64(wdims)
    _ = wd.withUnsafeBufferPointer { veil_md_tag(&weiPlainMd, 4, $0.baseAddress, spec.transposed ? dnnl_bacd : dnnl_abcd) }
    let weiPlain = Layout(md: weiPlainMd)
    var srcMd = Layout.any(inputDims)
    var dstMd = Layout.any(outputDims)
    var weiMd = Layout.any(wdims)
    var biasMd = Layout.plain([oc]).md
    let strides = i64(spec.strides)
    let dil = i64(spec.dilations.map { $0 - 1 })
    let pl = i64(spec.padsBegin)
    let pr = i64(spec.padsEnd)
    let what = "\(spec.transposed ? "ConvTranspose" : "Conv") input \(inputDims), weights \(weightShape), output \(outputDims), \(spec)"

    func create(_ desc: inout dnnl_convolution_desc_t, hint: dnnl_primitive_desc_t?, _ op: String) throws -> PrimitiveEntry {
      var pd: dnnl_primitive_desc_t?
      try check(dnnl_primitive_desc_create(&pd, &desc, nil, engine.engine, hint), op, detail: what)
      return try PrimitiveEntry(pd: pd!, operation: op)
    }

    var fdesc = dnnl_convolution_desc_t()
    try check(
      withOptionalPointer(hasBias, &biasMd) { bp in
        spec.transposed
          ? dnnl_dilated_deconvolution_forward_desc_init(
            &fdesc, dnnl_forward_training, dnnl_deconvolution_direct, &srcMd, &weiMd, bp, &dstMd, strides, dil, pl, pr)
          : dnnl_dilated_convolution_forward_desc_init(
            &fdesc, dnnl_forward_training, dnnl_convolution_direct, &srcMd, &weiMd, bp, &dstMd, strides, dil, pl, pr)
      }, "training convolution forward descriptor", detail: what)
    forwardEntry = try create(&fdesc, hint: nil, "training convolution forward")

    var ddesc = dnnl_convolution_desc_t()
    try check(
      spec.transposed
        ? dnnl_dilated_deconvolution_backward_data_desc_init(
          &ddesc, dnnl_deconvolution_direct, &srcMd, &weiMd, &dstMd, strides, dil, pl, pr)
        : dnnl_dilated_convolution_backward_data_desc_init(
          &ddesc, dnnl_convolution_direct, &srcMd, &weiMd, &dstMd, strides, dil, pl, pr),
      "convolution backward-data descriptor", detail: what)
    dataEntry = try create(&ddesc, hint: forwardEntry.pd, "convolution backward-data")

    var wdesc = dnnl_convolution_desc_t()
    try check(
      withOptionalPointer(hasBias, &biasMd) { bp in
        spec.transposed
          ? dnnl_dilated_deconvolution_backward_weights_desc_init(
            &wdesc, dnnl_deconvolution_direct, &srcMd, &weiMd, bp, &dstMd, strides, dil, pl, pr)
          : dnnl_dilated_convolution_backward_weights_desc_init(
            &wdesc, dnnl_convolution_direct, &srcMd, &weiMd, bp, &dstMd, strides, dil, pl, pr)
      }, "convolution backward-weights descriptor", detail: what)
    weightsEntry = try create(&wdesc, hint: forwardEntry.pd, "convolution backward-weights")

    func argument(_ plain: Layout, _ entry: PrimitiveEntry, _ query: dnnl_query_t, output: Bool) throws -> ConvArgument {
      try ConvArgument(plain: plain, chosen: Layout(md: entry.md(query)), output: output, engine: engine)
    }
    forwardSrc = try argument(srcPlain, forwardEntry, dnnl_query_src_md, output: false)
    forwardWeights = try argument(weiPlain, forwardEntry, dnnl_query_weights_md, output: false)
    forwardDst = try argument(dstPlain, forwardEntry, dnnl_query_dst_md, output: true)
    dataDiffDst = try argument(dstPlain, dataEntry, dnnl_query_diff_dst_md, output: false)
    dataWeights = try argument(weiPlain, dataEntry, dnnl_query_weights_md, output: false)
    dataDiffSrc = try argument(srcPlain, dataEntry, dnnl_query_diff_src_md, output: true)
    weightsSrc = try argument(srcPlain, weightsEntry, dnnl_query_src_md, output: false)
    weightsDiffDst = try argument(dstPlain, weightsEntry, dnnl_query_diff_dst_md, output: false)
    weightsDiffWeights = try argument(weiPlain, weightsEntry, dnnl_query_diff_weights_md, output: true)
    bias = try BoundMemory(Layout(md: biasMd), engine: engine.engine)
  }

  /// Binds the caller's tensors, reorders the inputs into the primitive's layouts, runs it and
  /// reorders its outputs back; `plainArgs` (bias) are bound as they are.
  private func execute(
    _ entry: PrimitiveEntry, _ bindings: [(Int32, ConvArgument, UnsafeMutableRawPointer)],
    plain plainArgs: [(Int32, BoundMemory, UnsafeMutableRawPointer)] = [], _ op: String
  ) throws {
    for (_, a, p) in bindings { try check(dnnl_memory_set_data_handle(a.plain.memory, p), "\(op): binding memory") }
    for (_, m, p) in plainArgs { try check(dnnl_memory_set_data_handle(m.memory, p), "\(op): binding memory") }
    func run(_ primitive: dnnl_primitive_t, _ args: [dnnl_exec_arg_t]) throws {
      let status = args.withUnsafeBufferPointer {
        dnnl_primitive_execute(primitive, engine.stream, Int32($0.count), $0.baseAddress)
      }
      try check(status, op)
    }
    for (_, a, _) in bindings where !a.output {
      if let r = a.reorder, let b = a.blocked {
        try run(r.primitive, [dnnl_exec_arg_t(arg: argSrc, memory: a.plain.memory), dnnl_exec_arg_t(arg: argDst, memory: b.memory)])
      }
    }
    try run(
      entry.primitive,
      bindings.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.memory) } + plainArgs.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.memory) })
    for (_, a, _) in bindings where a.output {
      if let r = a.reorder, let b = a.blocked {
        try run(r.primitive, [dnnl_exec_arg_t(arg: argSrc, memory: b.memory), dnnl_exec_arg_t(arg: argDst, memory: a.plain.memory)])
      }
    }
    engine.wait()
  }

  private func checkShape(_ t: Tensor, _ shape: [Int], _ what: String) throws {
    guard t.shape == shape else { throw TensorError.shapeMismatch(what: what, expected: "\(shape)", found: "\(t.shape)") }
  }

  private func raw(_ t: Tensor) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(t.storage.pointer) }

  /// y = conv(x, W) + b.
  public func forward(input: Tensor, weights w: Tensor, bias b: Tensor?) throws -> Tensor {
    try checkShape(input, inputDims, "convolution input")
    try checkShape(w, weightShape, "convolution weights")
    if hasBias { try checkShape(b ?? Tensor(zeros: [0]), [outputDims[1]], "convolution bias") }
    let out = Tensor(uninitialized: outputDims)  // the primitive writes every element
    lock.lock()
    defer { lock.unlock() }
    try execute(
      forwardEntry, [(argSrc, forwardSrc, raw(input)), (argWeights, forwardWeights, raw(w)), (argDst, forwardDst, raw(out))],
      plain: hasBias ? b.map { [(argBias, bias, raw($0))] } ?? [] : [], "convolution forward")
    return out
  }

  /// ∂L/∂x from ∂L/∂y.
  public func backwardData(outputGradient dy: Tensor, weights w: Tensor) throws -> Tensor {
    try checkShape(dy, outputDims, "convolution output gradient")
    try checkShape(w, weightShape, "convolution weights")
    let dx = Tensor(uninitialized: inputDims)
    lock.lock()
    defer { lock.unlock() }
    try execute(
      dataEntry, [(argDiffDst, dataDiffDst, raw(dy)), (argWeights, dataWeights, raw(w)), (argDiffSrc, dataDiffSrc, raw(dx))],
      "convolution backward-data")
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
      weightsEntry,
      [(argSrc, weightsSrc, raw(input)), (argDiffDst, weightsDiffDst, raw(dy)), (argDiffWeights, weightsDiffWeights, raw(dw))],
      plain: db.map { [(argDiffBias, bias, raw($0))] } ?? [], "convolution backward-weights")
    return (dw, db)
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
    var from = output ? chosen.md : layout.md
    var to = output ? layout.md : chosen.md
    var pd: dnnl_primitive_desc_t?
    try check(
      dnnl_reorder_primitive_desc_create(&pd, &from, engine.engine, &to, engine.engine, nil), "training convolution reorder",
      detail: "\(Layout(md: from)) → \(Layout(md: to))")
    reorder = try PrimitiveEntry(pd: pd!, operation: "reorder")
  }

  /// The memory the primitive reads or writes.
  var memory: dnnl_memory_t { (blocked ?? plain).memory }

  deinit { buffer?.deallocate() }
}
