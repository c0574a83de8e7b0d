import VeilTensor

/// Convolution attributes as ONNX states them, with pads resolved to explicit numbers.
public struct ConvAttributes: Sendable, Hashable {
  public var kernel: [Int]
  public var strides: [Int]
  public var dilations: [Int]
  public var padsBegin: [Int]
  public var padsEnd: [Int]
  public var groups: Int
  /// ConvTranspose only.
  public var outputPadding: [Int]

  public init(
    kernel: [Int], strides: [Int]? = nil, dilations: [Int]? = nil, padsBegin: [Int]? = nil, padsEnd: [Int]? = nil,
    groups: Int = 1, outputPadding: [Int]? = nil
  ) {
    let n = kernel.count
    self.kernel = kernel
    self.strides = strides ?? Array(repeating: 1, count: n)
    self.dilations = dilations ?? Array(repeating: 1, count: n)
    self.padsBegin = padsBegin ?? Array(repeating: 0, count: n)
    self.padsEnd = padsEnd ?? self.padsBegin
    self.groups = groups
    self.outputPadding = outputPadding ?? Array(repeating: 0, count: n)
  }

  /// Symmetric "same"-style padding of k/2 (odd kernels), as torchvision builds its convs.
  public static func square(_ k: Int, stride: Int = 1, padding: Int? = nil, groups: Int = 1, dilation: Int = 1) -> ConvAttributes {
    let p = padding ?? (dilation * (k - 1)) / 2
    return ConvAttributes(kernel: [k, k], strides: [stride, stride], dilations: [dilation, dilation], padsBegin: [p, p], padsEnd: [p, p], groups: groups)
  }
}

public struct PoolAttributes: Sendable, Hashable {
  public var kernel: [Int]
  public var strides: [Int]
  public var padsBegin: [Int]
  public var padsEnd: [Int]
  public var ceilMode: Bool
  /// AveragePool only.
  public var countIncludePad: Bool

  public init(kernel: [Int], strides: [Int]? = nil, padsBegin: [Int]? = nil, padsEnd: [Int]? = nil, ceilMode: Bool = false, countIncludePad: Bool = false) {
    self.kernel = kernel
    self.strides = strides ?? Array(repeating: 1, count: kernel.count)
    self.padsBegin = padsBegin ?? Array(repeating: 0, count: kernel.count)
    self.padsEnd = padsEnd ?? self.padsBegin
    self.ceilMode = ceilMode
    self.countIncludePad = countIncludePad
  }
}

public struct GemmAttributes: Sendable, Hashable {
  public var alpha: Float
  public var beta: Float
  public var transA: Bool
  public var transB: Bool
  public init(alpha: Float = 1, beta: Float = 1, transA: Bool = false, transB: Bool = false) {
    self.alpha = alpha
    self.beta = beta
    self.transA = transA
    self.transB = transB
  }
}

/// ONNX Slice as the file states it: on each of `axes`, the elements from `starts` up to (not
/// including) `ends`, every `steps`-th one. Negative starts and ends count from the end of the
/// axis, and out-of-range ones are clamped (`resolved(_:)`), so one node keeps its meaning when
/// the batch changes. A negative step walks backwards.
public struct SliceAttributes: Sendable, Hashable, CustomStringConvertible {
  public var starts: [Int]
  public var ends: [Int]
  public var axes: [Int]
  public var steps: [Int]

  /// `axes` default to 0..<starts.count, `steps` to 1 (ONNX's defaults).
  public init(starts: [Int], ends: [Int], axes: [Int]? = nil, steps: [Int]? = nil) {
    self.starts = starts
    self.ends = ends
    self.axes = axes ?? Array(0..<starts.count)
    self.steps = steps ?? Array(repeating: 1, count: starts.count)
  }

  public var description: String { "starts \(starts) ends \(ends) axes \(axes) steps \(steps)" }

  /// Per axis of an input of `dims` (every axis, sliced or not): the first element, the step
  /// and the number of elements taken, with ONNX's clamping (starts to [0, d] for positive
  /// steps, [0, d − 1] for negative ones; ends to [0, d] and [−1, d − 1]). An extent may be 0;
  /// a step that takes at most one element is reported as 1.
  /// Throws the reason in words when the lists differ in length, an axis is out of range or
  /// repeated, or a step is 0.
  public func resolved(_ dims: [Int]) throws(SliceError) -> (starts: [Int], steps: [Int], extents: [Int]) {
    let r = dims.count
    guard ends.count == starts.count, axes.count == starts.count, steps.count == starts.count else {
      throw SliceError(detail: "starts \(starts), ends \(ends), axes \(axes) and steps \(steps) differ in length")
    }
    var first = [Int](repeating: 0, count: r)
    var step = [Int](repeating: 1, count: r)
    var extents = dims
    var seen = Set<Int>()
    for (k, a) in axes.enumerated() {
      let axis = a < 0 ? a + r : a
      guard axis >= 0, axis < r else { throw SliceError(detail: "axis \(a) is out of range for rank \(r)") }
      guard seen.insert(axis).inserted else { throw SliceError(detail: "axis \(a) appears twice in \(axes)") }
      let d = dims[axis]
      let st = steps[k]
      guard st != 0 else { throw SliceError(detail: "step 0 on axis \(a)") }
      func clamp(_ v: Int, _ lo: Int, _ hi: Int) -> Int { min(max(v, lo), hi) }
      // Values come from a file: Int.min + d cannot overflow, and the extent is counted as
      // ⌈span / |step|⌉ without forming span + step.
      let b = starts[k] < 0 ? starts[k] + d : starts[k]
      let e = ends[k] < 0 ? ends[k] + d : ends[k]
      if st > 0 {
        first[axis] = clamp(b, 0, d)
        let end = clamp(e, 0, d)
        extents[axis] = end > first[axis] ? (end - first[axis] - 1) / st + 1 : 0
      } else {
        first[axis] = clamp(b, 0, d - 1)
        let end = clamp(e, -1, d - 1)
        extents[axis] = first[axis] > end ? (first[axis] - end - 1) / -max(st, -Int.max) + 1 : 0
      }
      // A step that takes one element is reported as 1, so that strides formed from it stay
      // within the tensor's size.
      step[axis] = extents[axis] > 1 ? st : 1
    }
    return (first, step, extents)
  }
}

/// Why a slice does not fit its input; `detail` says it in words.
public struct SliceError: Error, Sendable, CustomStringConvertible {
  public let detail: String
  public var description: String { detail }
}

/// The engine's op set. Names follow ONNX; SiLU is one op here (ONNX spells it Sigmoid·Mul).
public enum Op: Sendable, Hashable, CustomStringConvertible {
  case conv(ConvAttributes)
  case convTranspose(ConvAttributes)
  /// Inputs: x, scale, bias, mean, variance.
  case batchNormalization(epsilon: Float)
  /// Inputs: x, scale, [bias]. Normalises over the axes from `axis` to the last (mean and
  /// biased variance per row), then scales and shifts per element of those axes.
  case layerNormalization(axis: Int, epsilon: Float)
  case activation(Activation)
  case maxPool(PoolAttributes)
  case averagePool(PoolAttributes)
  case globalAveragePool
  case binary(BinaryKind)
  case concat(axis: Int)
  /// Inputs: A, B, [C].
  case gemm(GemmAttributes)
  case matMul
  case flatten(axis: Int)
  /// ONNX semantics: 0 copies the input's dim, -1 is inferred.
  case reshape(shape: [Int])
  case transpose(permutation: [Int])
  /// ShuffleNet's channel shuffle: axis 1's C channels viewed as [groups, C/groups], that view
  /// transposed. ONNX spells it Reshape → Transpose → Reshape; the executor's optimisation
  /// fuses those into this, which runs in whatever layout its producer wrote.
  case channelShuffle(groups: Int)
  /// ONNX Slice of a runtime tensor (ONNX Split is imported as one per output).
  case slice(SliceAttributes)
  /// pads: begins for every axis, then ends.
  case pad(mode: PadMode, pads: [Int], value: Float)
  /// Exactly one of scales or sizes (full rank).
  case resize(ResizeKind, scales: [Float]?, sizes: [Int]?)
  case softmax(axis: Int)
  /// Local response normalization across channels (AlexNet, GoogLeNet):
  /// y = x / (bias + alpha/size · Σ x²)^beta over `size` neighbouring channels.
  case localResponseNormalization(size: Int, alpha: Float, beta: Float, bias: Float)
  case dropout(ratio: Float)
  case identity

  /// The ONNX op type this corresponds to.
  public var typeName: String {
    switch self {
    case .conv: return "Conv"
    case .convTranspose: return "ConvTranspose"
    case .batchNormalization: return "BatchNormalization"
    case .layerNormalization: return "LayerNormalization"
    case .activation(let a):
      switch a {
      case .relu: return "Relu"
      case .leakyRelu: return "LeakyRelu"
      case .clip: return "Clip"
      case .sigmoid: return "Sigmoid"
      case .silu: return "SiLU"
      case .hardSigmoid: return "HardSigmoid"
      case .hardSwish: return "HardSwish"
      case .tanh: return "Tanh"
      case .sqrt: return "Sqrt"
      case .gelu: return "Gelu"
      }
    case .maxPool: return "MaxPool"
    case .averagePool: return "AveragePool"
    case .globalAveragePool: return "GlobalAveragePool"
    case .binary(let k): return ["Add", "Sub", "Mul", "Div"][k.rawValue]
    case .concat: return "Concat"
    case .gemm: return "Gemm"
    case .matMul: return "MatMul"
    case .flatten: return "Flatten"
    case .reshape: return "Reshape"
    case .transpose: return "Transpose"
    case .channelShuffle: return "ChannelShuffle"
    case .slice: return "Slice"
    case .pad: return "Pad"
    case .resize: return "Resize"
    case .softmax: return "Softmax"
    case .localResponseNormalization: return "LRN"
    case .dropout: return "Dropout"
    case .identity: return "Identity"
    }
  }

  public var description: String { typeName }
}

/// numpy broadcasting of two shapes.
public func broadcastShapes(_ a: [Int], _ b: [Int]) -> [Int]? {
  let r = max(a.count, b.count)
  let pa = Array(repeating: 1, count: r - a.count) + a
  let pb = Array(repeating: 1, count: r - b.count) + b
  var out = [Int]()
  for i in 0..<r {
    if pa[i] == pb[i] || pb[i] == 1 { out.append(pa[i]) } else if pa[i] == 1 { out.append(pb[i]) } else { return nil }
  }
  return out
}

extension Op {
  /// Output pooling extent for one axis; with ceil mode the last window may start in the
  /// padding-free part only (ONNX/PyTorch rule).
  static func pooledSize(_ n: Int, k: Int, s: Int, pb: Int, pe: Int, d: Int = 1, ceil: Bool) -> Int {
    let span = n + pb + pe - d * (k - 1) - 1
    var o = (ceil ? (span + s - 1) / s : span / s) + 1
    if ceil, (o - 1) * s >= n + pb { o -= 1 }
    return o
  }

  /// The output shape given the input shapes (ONNX's rules). Throws with the node's name, also
  /// for a shape with a negative dimension or more elements than one tensor may hold
  /// (`Graph.maxTensorElements`): whoever derives a shape (shape inference, an importer as it
  /// reads nodes, a folded Reshape) gets it bounded, so the next op's products cannot overflow.
  public func outputShape(_ ins: [[Int]], node: String) throws -> [Int] {
    let out = try derivedShape(ins, node: node)
    try Graph.checkBounded(out, node: node, op: typeName)
    return out
  }

  private func derivedShape(_ ins: [[Int]], node: String) throws -> [Int] {
    func fail(_ d: String) -> GraphError { .shapeError(node: node, op: typeName, detail: d) }
    func need(_ n: Int) throws {
      if ins.count < n { throw fail("expected at least \(n) inputs, found \(ins.count)") }
    }
    switch self {
    case .conv(let a), .convTranspose(let a):
      try need(2)
      let x = ins[0]
      let w = ins[1]
      let nsp = a.kernel.count
      guard x.count == nsp + 2, w.count == nsp + 2 else {
        throw fail("input \(x) and weights \(w) must have rank \(nsp + 2) for a \(nsp)-D kernel \(a.kernel)")
      }
      guard a.groups >= 1, a.strides.allSatisfy({ $0 >= 1 }), a.dilations.allSatisfy({ $0 >= 1 }),
        a.strides.count == nsp, a.dilations.count == nsp, a.padsBegin.count == nsp, a.padsEnd.count == nsp
      else { throw fail("invalid attributes: groups \(a.groups), strides \(a.strides), dilations \(a.dilations), pads \(a.padsBegin)/\(a.padsEnd)") }
      guard Array(w.dropFirst(2)) == a.kernel else { throw fail("weights \(w) do not match kernel_shape \(a.kernel)") }
      if case .conv = self {
        guard x[1] == w[1] * a.groups, w[0] % a.groups == 0 else {
          throw fail("input has \(x[1]) channels but weights \(w) with group \(a.groups) expect \(w[1] * a.groups)")
        }
        if ins.count > 2, ins[2] != [w[0]] { throw fail("bias \(ins[2]) must be [\(w[0])]") }
        var out = [x[0], w[0]]
        for i in 0..<nsp {
          let eff = a.dilations[i] * (a.kernel[i] - 1) + 1
          let o = (x[i + 2] + a.padsBegin[i] + a.padsEnd[i] - eff) / a.strides[i] + 1
          guard o >= 1 else { throw fail("input \(x) is smaller than the kernel \(a.kernel) with pads") }
          out.append(o)
        }
        return out
      } else {
        guard x[1] == w[0] else { throw fail("input has \(x[1]) channels but weights \(w) expect \(w[0])") }
        let oc = w[1] * a.groups
        if ins.count > 2, ins[2] != [oc] { throw fail("bias \(ins[2]) must be [\(oc)]") }
        var out = [x[0], oc]
        for i in 0..<nsp {
          let o = a.strides[i] * (x[i + 2] - 1) + a.outputPadding[i] + a.dilations[i] * (a.kernel[i] - 1) + 1
            - a.padsBegin[i] - a.padsEnd[i]
          guard o >= 1 else { throw fail("output extent \(o) on axis \(i + 2) is not positive") }
          out.append(o)
        }
        return out
      }
    case .batchNormalization:
      try need(5)
      guard ins[0].count >= 2 else { throw fail("input \(ins[0]) needs rank ≥ 2") }
      for i in 1...4 where ins[i] != [ins[0][1]] { throw fail("parameter \(i) is \(ins[i]), expected [\(ins[0][1])]") }
      return ins[0]
    case .layerNormalization(let axis, _):
      try need(2)
      let r = ins[0].count
      let ax = axis < 0 ? axis + r : axis
      guard ax >= 0, ax < r else { throw fail("axis \(axis) out of range for rank \(r)") }
      let normalized = Array(ins[0][ax...])
      for i in 1..<min(ins.count, 3) where broadcastShapes(normalized, ins[i]) != normalized {
        throw fail("\(i == 1 ? "scale" : "bias") \(ins[i]) does not broadcast to the normalised axes \(normalized)")
      }
      return ins[0]
    case .localResponseNormalization(let size, _, _, _):
      try need(1)
      guard ins[0].count >= 3, size >= 1 else { throw fail("needs rank ≥ 3 and size ≥ 1, found \(ins[0]) and size \(size)") }
      return ins[0]
    case .activation, .softmax, .dropout, .identity:
      try need(1)
      if case .softmax(let axis) = self, !(-ins[0].count..<ins[0].count).contains(axis) {
        throw fail("axis \(axis) out of range for rank \(ins[0].count)")
      }
      return ins[0]
    case .maxPool(let p), .averagePool(let p):
      try need(1)
      let x = ins[0]
      let nsp = p.kernel.count
      guard x.count == nsp + 2 else { throw fail("input \(x) must have rank \(nsp + 2) for kernel \(p.kernel)") }
      var out = [x[0], x[1]]
      for i in 0..<nsp {
        let o = Op.pooledSize(x[i + 2], k: p.kernel[i], s: p.strides[i], pb: p.padsBegin[i], pe: p.padsEnd[i], ceil: p.ceilMode)
        guard o >= 1 else { throw fail("input \(x) is smaller than the window \(p.kernel)") }
        out.append(o)
      }
      return out
    case .globalAveragePool:
      try need(1)
      guard ins[0].count >= 3 else { throw fail("input \(ins[0]) needs rank ≥ 3") }
      return [ins[0][0], ins[0][1]] + Array(repeating: 1, count: ins[0].count - 2)
    case .binary:
      try need(2)
      guard let s = broadcastShapes(ins[0], ins[1]) else { throw fail("shapes \(ins[0]) and \(ins[1]) do not broadcast") }
      return s
    case .concat(let axis):
      try need(1)
      let r = ins[0].count
      let ax = axis < 0 ? axis + r : axis
      guard ax >= 0, ax < r else { throw fail("axis \(axis) out of range for rank \(r)") }
      var out = ins[0]
      for s in ins.dropFirst() {
        guard s.count == r, (0..<r).allSatisfy({ $0 == ax || s[$0] == out[$0] }) else {
          throw fail("input \(s) does not match \(ins[0]) outside axis \(ax)")
        }
        out[ax] += s[ax]
      }
      return out
    case .gemm(let g):
      try need(2)
      guard ins[0].count == 2, ins[1].count == 2 else { throw fail("A \(ins[0]) and B \(ins[1]) must be matrices") }
      let (m, k) = g.transA ? (ins[0][1], ins[0][0]) : (ins[0][0], ins[0][1])
      let (k2, n) = g.transB ? (ins[1][1], ins[1][0]) : (ins[1][0], ins[1][1])
      guard k == k2 else { throw fail("inner dimensions differ: A \(ins[0]) (transA \(g.transA)), B \(ins[1]) (transB \(g.transB))") }
      if ins.count > 2, broadcastShapes([m, n], ins[2]) != [m, n] { throw fail("C \(ins[2]) does not broadcast to [\(m), \(n)]") }
      return [m, n]
    case .matMul:
      try need(2)
      var a = ins[0]
      var b = ins[1]
      guard !a.isEmpty, !b.isEmpty else { throw fail("MatMul of scalars") }
      let va = a.count == 1
      let vb = b.count == 1
      if va { a = [1] + a }
      if vb { b = b + [1] }
      guard a[a.count - 1] == b[b.count - 2] else { throw fail("inner dimensions differ: \(ins[0]) × \(ins[1])") }
      guard let batch = broadcastShapes(Array(a.dropLast(2)), Array(b.dropLast(2))) else {
        throw fail("batch dimensions of \(ins[0]) and \(ins[1]) do not broadcast")
      }
      var out = batch + [a[a.count - 2], b[b.count - 1]]
      if va { out.remove(at: out.count - 2) }
      if vb { out.removeLast() }
      return out
    case .flatten(let axis):
      try need(1)
      let r = ins[0].count
      let ax = axis < 0 ? axis + r : axis
      guard ax >= 0, ax <= r else { throw fail("axis \(axis) out of range for rank \(r)") }
      return [ins[0][..<ax].reduce(1, *), ins[0][ax...].reduce(1, *)]
    case .reshape(let shape):
      try need(1)
      let total = ins[0].reduce(1, *)
      var out = shape.enumerated().map { i, d in d == 0 && i < ins[0].count ? ins[0][i] : d }
      let unknown = out.indices.filter { out[$0] == -1 }
      guard unknown.count <= 1, out.allSatisfy({ $0 >= -1 }) else { throw fail("invalid target shape \(shape)") }
      // The target comes from a model file: multiply with overflow checks.
      if let u = unknown.first {
        guard let known = Graph.checkedProduct(out.enumerated().filter { $0.offset != u }.map(\.element)), known > 0,
          total % known == 0
        else { throw fail("cannot reshape \(ins[0]) to \(shape)") }
        out[u] = total / known
      }
      guard Graph.checkedProduct(out) == total else { throw fail("cannot reshape \(ins[0]) (\(total) elements) to \(shape)") }
      return out
    case .channelShuffle(let g):
      try need(1)
      guard ins[0].count >= 2, g >= 1, ins[0][1] % g == 0 else { throw fail("\(ins[0]) has no channel axis that \(g) groups divide") }
      return ins[0]
    case .transpose(let p):
      try need(1)
      guard p.count == ins[0].count, Set(p) == Set(0..<p.count) else { throw fail("perm \(p) does not fit rank \(ins[0].count)") }
      return p.map { ins[0][$0] }
    case .slice(let a):
      try need(1)
      let extents: [Int]
      do { extents = try a.resolved(ins[0]).extents } catch { throw fail(error.detail) }
      guard extents.allSatisfy({ $0 >= 1 }) else { throw fail("\(a) takes nothing of \(ins[0]) (output \(extents))") }
      return extents
    case .pad(_, let pads, _):
      try need(1)
      let r = ins[0].count
      guard pads.count == 2 * r else { throw fail("\(pads.count) pads for rank \(r)") }
      let out = (0..<r).map { ins[0][$0] + pads[$0] + pads[r + $0] }
      guard out.allSatisfy({ $0 >= 1 }) else { throw fail("pads \(pads) crop \(ins[0]) to nothing") }
      return out
    case .resize(_, let scales, let sizes):
      try need(1)
      let r = ins[0].count
      if let sizes {
        guard sizes.count == r, sizes.allSatisfy({ $0 >= 1 }) else { throw fail("sizes \(sizes) do not fit rank \(r)") }
        return sizes
      }
      guard let scales, scales.count == r, scales.allSatisfy({ $0 > 0 }) else { throw fail("needs scales or sizes of rank \(r)") }
      return (0..<r).map { Int((Float(ins[0][$0]) * scales[$0]).rounded(.down)) }
    }
  }
}
