import CDNNL
import Foundation

// Gradient argument slots (dnnl_types.h: DNNL_ARG_DIFF_FLAG 128 plus the forward slot).
let argDiffSrc: Int32 = 129
let argDiffDst: Int32 = 145
let argDiffWeights: Int32 = 161
let argDiffBias: Int32 = 169

/// A 2-D convolution or transposed convolution for training: forward, backward-data and
/// backward-weights, all three on oneDNN (the backward primitives are created with the forward
/// one as their hint, as oneDNN requires). Every tensor is plain: NCHW activations, ONNX weight
/// order ([out, in, kh, kw] for Conv, [in, out, kh, kw] for ConvTranspose), so the autograd
/// layer never sees a blocked layout. Groups must be 1 in this first version.
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
  private let src, weights, bias, dst: BoundMemory
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
    var srcMd = Layout.plain(inputDims).md
    var dstMd = Layout.plain(outputDims).md
    var weiMd = dnnl_memory_desc_t()
    let wd = i64(wdims)
    _ = wd.withUnsafeBufferPointer { veil_md_tag(&weiMd, 4, $0.baseAddress, spec.transposed ? dnnl_bacd : dnnl_abcd) }
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

    src = try BoundMemory(Layout(md: srcMd), engine: engine.engine)
    weights = try BoundMemory(Layout(md: weiMd), engine: engine.engine)
    bias = try BoundMemory(Layout(md: biasMd), engine: engine.engine)
    dst = try BoundMemory(Layout(md: dstMd), engine: engine.engine)
  }

  private func execute(_ entry: PrimitiveEntry, _ bindings: [(Int32, BoundMemory, UnsafeMutableRawPointer)], _ op: String)
    throws
  {
    for (_, m, p) in bindings { try check(dnnl_memory_set_data_handle(m.memory, p), "\(op): binding memory") }
    let args = bindings.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.memory) }
    let status = args.withUnsafeBufferPointer {
      dnnl_primitive_execute(entry.primitive, engine.stream, Int32($0.count), $0.baseAddress)
    }
    try check(status, op)
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
    let out = Tensor(zeros: outputDims)
    lock.lock()
    defer { lock.unlock() }
    var bindings = [(argSrc, src, raw(input)), (argWeights, weights, raw(w)), (argDst, dst, raw(out))]
    if hasBias, let b { bindings.append((argBias, bias, raw(b))) }
    try execute(forwardEntry, bindings, "convolution forward")
    return out
  }

  /// ∂L/∂x from ∂L/∂y.
  public func backwardData(outputGradient dy: Tensor, weights w: Tensor) throws -> Tensor {
    try checkShape(dy, outputDims, "convolution output gradient")
    try checkShape(w, weightShape, "convolution weights")
    let dx = Tensor(zeros: inputDims)
    lock.lock()
    defer { lock.unlock() }
    try execute(
      dataEntry, [(argDiffDst, dst, raw(dy)), (argWeights, weights, raw(w)), (argDiffSrc, src, raw(dx))],
      "convolution backward-data")
    return dx
  }

  /// ∂L/∂W (and ∂L/∂b when the convolution has a bias) from the input and ∂L/∂y.
  public func backwardWeights(input: Tensor, outputGradient dy: Tensor) throws -> (weights: Tensor, bias: Tensor?) {
    try checkShape(input, inputDims, "convolution input")
    try checkShape(dy, outputDims, "convolution output gradient")
    let dw = Tensor(zeros: weightShape)
    let db = hasBias ? Tensor(zeros: [outputDims[1]]) : nil
    lock.lock()
    defer { lock.unlock() }
    var bindings = [(argSrc, src, raw(input)), (argDiffDst, dst, raw(dy)), (argDiffWeights, weights, raw(dw))]
    if let db { bindings.append((argDiffBias, bias, raw(db))) }
    try execute(weightsEntry, bindings, "convolution backward-weights")
    return (dw, db)
  }
}
