import Foundation
import VeilGraph
import VeilTensor

// The op table (part of `ONNXReader`): each ONNX node type mapped to graph IR ops, with its
// attributes checked and errors that name the node.

// MARK: - Ops

/// One node being imported: its attributes and constant operands, with errors that name it.
struct ONNXNodeContext {
  let node: ONNXProto.Node
  let label: String
  let opset: Int

  func fail(_ detail: String) -> FormatError {
    .unsupportedNode(format: ONNXReader.format, node: label, op: node.opType, detail: detail)
  }

  func int(_ name: String, _ fallback: Int) throws -> Int {
    switch node.attributes[name] {
    case nil: return fallback
    case .int(let v):
      guard let i = Int(exactly: v), (-Int(Int32.max)...Int(Int32.max)).contains(i) else {
        throw fail("attribute '\(name)' = \(v) is out of range")
      }
      return i
    default: throw fail("attribute '\(name)' is not an integer")
    }
  }

  func float(_ name: String, _ fallback: Float) throws -> Float {
    switch node.attributes[name] {
    case nil: return fallback
    case .float(let v): return v
    default: throw fail("attribute '\(name)' is not a float")
    }
  }

  func string(_ name: String, _ fallback: String) throws -> String {
    switch node.attributes[name] {
    case nil: return fallback
    case .string(let v): return v
    default: throw fail("attribute '\(name)' is not a string")
    }
  }

  func ints(_ name: String) throws -> [Int]? {
    switch node.attributes[name] {
    case nil: return nil
    case .ints(let v):
      return try v.map {
        guard let i = Int(exactly: $0), (-Int(Int32.max)...Int(Int32.max)).contains(i) else {
          throw fail("attribute '\(name)' holds \($0), out of range")
        }
        return i
      }
    default: throw fail("attribute '\(name)' is not a list of integers")
    }
  }

  /// Input `i`, or nil when absent or named "" (an omitted optional input).
  func input(_ i: Int) -> String? {
    i < node.inputs.count && !node.inputs[i].isEmpty ? node.inputs[i] : nil
  }
}

extension ONNXImporter {
  /// A constant integer operand; entries and the product of their magnitudes are bounded so
  /// that shape arithmetic on them cannot overflow.
  func intConstant(_ name: String, _ c: ONNXNodeContext, what: String) throws -> [Int] {
    guard case .ints(_, let vs) = constants[name] else {
      throw c.fail("\(what) '\(name)' must be a constant integer tensor (an initializer or a Constant node)")
    }
    var product = 1
    return try vs.map {
      guard $0 >= -Int64(Int32.max), $0 <= Int64(Int32.max) else { throw c.fail("\(what) '\(name)' holds \($0), out of range") }
      let i = Int($0)
      product = product.multipliedReportingOverflow(by: max(1, abs(i))).partialValue
      guard product <= Int(Int32.max) else { throw c.fail("\(what) '\(name)' \(vs) is too large") }
      return i
    }
  }

  func floatConstant(_ name: String, _ c: ONNXNodeContext, what: String) throws -> [Float] {
    guard case .floats(let t) = constants[name] else {
      throw c.fail("\(what) '\(name)' must be a constant float tensor (an initializer or a Constant node)")
    }
    return t.scalars
  }

  func shapeOf(_ name: String, _ c: ONNXNodeContext) throws -> [Int] {
    if let v = values[name], let s = graph.shape(v) { return s }
    if let k = constants[name] { return k.dims }
    throw c.fail("the shape of '\(name)' is unknown")
  }

  /// Adds `op` reading `inputs` (ONNX names) and records its output shape at once, so later
  /// nodes (auto_pad, Shape) can use it.
  mutating func emit(_ op: Op, _ c: ONNXNodeContext, inputs: [String], outputs: Int = 1) throws {
    let outNames = Array(c.node.outputs.prefix(outputs))
    guard !outNames.isEmpty, !outNames[0].isEmpty else { throw c.fail("has no output") }
    try emit(op, label: c.label, opType: c.node.opType, inputs: inputs, outputs: outNames)
  }

  /// Adds one graph node named `label` for (part of) the ONNX node of type `opType`.
  mutating func emit(_ op: Op, label: String, opType: String, inputs: [String], outputs outNames: [String]) throws {
    let ins = try inputs.map { try value($0, node: label, op: opType) }
    let outs = graph.addNode(
      op, name: label, inputs: ins, outputNames: outNames.map { $0.isEmpty ? label + "_unused" : $0 })
    let shape: [Int]
    do {
      // Bounded as it is derived (outputShape checks): the nodes after this one multiply its
      // extents (Flatten, Reshape, a Conv's channels).
      shape = try op.outputShape(ins.map { graph.shape($0) ?? [] }, node: label)
    } catch let e as GraphError {
      throw FormatError.invalidGraph(format: Self.format, detail: e.description)
    }
    for (k, o) in outs.enumerated() {
      graph[o].shape = shape
      if !outNames[k].isEmpty { values[outNames[k]] = o }
    }
  }

  /// Explicit begin/end pads from `auto_pad` and the input's spatial extent.
  func resolvePads(
    _ c: ONNXNodeContext, input: [Int], kernel: [Int], strides: [Int], dilations: [Int], transposed: Bool = false,
    outputPadding: [Int] = []
  ) throws -> (begin: [Int], end: [Int]) {
    let n = kernel.count
    guard input.count == n + 2 else { throw c.fail("input rank \(input.count) does not fit kernel_shape \(kernel)") }
    let autoPad = try c.string("auto_pad", "NOTSET")
    switch autoPad {
    case "NOTSET":
      let pads = try c.ints("pads") ?? Array(repeating: 0, count: 2 * n)
      guard pads.count == 2 * n, pads.allSatisfy({ $0 >= 0 }) else {
        throw c.fail("attribute 'pads' \(pads) does not fit \(n) spatial axes")
      }
      return (Array(pads[..<n]), Array(pads[n...]))
    case "VALID":
      return (Array(repeating: 0, count: n), Array(repeating: 0, count: n))
    case "SAME_UPPER", "SAME_LOWER":
      guard strides.count == n, dilations.count == n,
        strides.allSatisfy({ (1...65536).contains($0) }), dilations.allSatisfy({ (1...65536).contains($0) }),
        kernel.allSatisfy({ (1...65536).contains($0) }), input.allSatisfy({ $0 >= 0 && $0 <= Int(Int32.max) })
      else {
        throw c.fail("auto_pad \(autoPad): strides \(strides) and dilations \(dilations) must each give one value in 1...65536 per axis of kernel_shape \(kernel), on an input of \(input)")
      }
      var begin: [Int] = []
      var end: [Int] = []
      for i in 0..<n {
        let x = input[i + 2]
        let eff = dilations[i] * (kernel[i] - 1) + 1
        let total: Int
        if transposed {
          let op = i < outputPadding.count ? outputPadding[i] : 0
          total = max(0, strides[i] * (x - 1) + op + eff - x * strides[i])
        } else {
          let out = (x + strides[i] - 1) / strides[i]
          total = max(0, (out - 1) * strides[i] + eff - x)
        }
        let small = total / 2
        if autoPad == "SAME_UPPER" {
          begin.append(small)
          end.append(total - small)
        } else {
          begin.append(total - small)
          end.append(small)
        }
      }
      return (begin, end)
    default:
      throw c.fail("attribute 'auto_pad' = '\(autoPad)' is not supported")
    }
  }

  mutating func importNode(_ n: ONNXProto.Node) throws {
    let c = ONNXNodeContext(node: n, label: label(n), opset: opset)
    guard n.domain.isEmpty || n.domain == "ai.onnx" else {
      throw c.fail("unknown op '\(n.opType)' in domain '\(n.domain)' (opset \(opset))")
    }
    if let a = n.fused, let x = c.input(0) { return try emit(.activation(a), c, inputs: [x]) }
    if try foldConstant(c) {
      // Folded constants cost memory the file does not hold: all of them share one budget.
      if let out = n.outputs.first, let k = constants[out] {
        foldedElements += k.dims.reduce(1) { $0 * max($1, 1) }
        guard foldedElements <= FormatLimits.maxFoldedElements else {
          throw c.fail(
            "constants folded from attributes and shape arithmetic exceed \(FormatLimits.maxFoldedElements) elements in all")
        }
      }
      return
    }
    func x() throws -> String {
      guard let i = c.input(0) else { throw c.fail("input 0 is missing") }
      return i
    }
    switch n.opType {
    case "Conv", "ConvTranspose":
      let transposed = n.opType == "ConvTranspose"
      guard let w = c.input(1) else { throw c.fail("weights (input 1) are missing") }
      let wShape = try shapeOf(w, c)
      let xShape = try shapeOf(try x(), c)
      guard wShape.count >= 3 else { throw c.fail("weights '\(w)' have shape \(wShape)") }
      let kernel = try c.ints("kernel_shape") ?? Array(wShape.dropFirst(2))
      let nsp = kernel.count
      let strides = try c.ints("strides") ?? Array(repeating: 1, count: nsp)
      let dilations = try c.ints("dilations") ?? Array(repeating: 1, count: nsp)
      let outputPadding = try c.ints("output_padding") ?? Array(repeating: 0, count: nsp)
      guard strides.count == nsp, dilations.count == nsp, strides.allSatisfy({ (1...65536).contains($0) }),
        dilations.allSatisfy({ (1...65536).contains($0) }), outputPadding.count == nsp,
        outputPadding.allSatisfy({ (0...65536).contains($0) })
      else {
        throw c.fail("strides \(strides) / dilations \(dilations) do not fit kernel_shape \(kernel)")
      }
      let groups = try c.int("group", 1)
      guard groups >= 1 else { throw c.fail("attribute 'group' = \(groups) is invalid") }
      if transposed, c.node.attributes["output_shape"] != nil {
        throw c.fail("attribute 'output_shape' is not supported")
      }
      let (pb, pe) = try resolvePads(
        c, input: xShape, kernel: kernel, strides: strides, dilations: dilations, transposed: transposed,
        outputPadding: outputPadding)
      let a = ConvAttributes(
        kernel: kernel, strides: strides, dilations: dilations, padsBegin: pb, padsEnd: pe, groups: groups,
        outputPadding: outputPadding)
      var ins = [try x(), w]
      if let b = c.input(2) { ins.append(b) }
      try emit(transposed ? .convTranspose(a) : .conv(a), c, inputs: ins)
    case "BatchNormalization":
      guard n.outputs.dropFirst().allSatisfy(\.isEmpty) else { throw c.fail("training-mode outputs are not supported") }
      let ins = try (0..<5).map { i in
        guard let s = c.input(i) else { throw c.fail("input \(i) is missing") }
        return s
      }
      try emit(.batchNormalization(epsilon: try c.float("epsilon", 1e-5)), c, inputs: ins)
    case "Relu": try emit(.activation(.relu), c, inputs: [try x()])
    case "LeakyRelu": try emit(.activation(.leakyRelu(alpha: try c.float("alpha", 0.01))), c, inputs: [try x()])
    case "Sigmoid": try emit(.activation(.sigmoid), c, inputs: [try x()])
    case "HardSigmoid":
      try emit(
        .activation(.hardSigmoid(alpha: try c.float("alpha", 0.2), beta: try c.float("beta", 0.5))), c,
        inputs: [try x()])
    case "HardSwish": try emit(.activation(.hardSwish), c, inputs: [try x()])
    case "Tanh": try emit(.activation(.tanh), c, inputs: [try x()])
    case "Sqrt": try emit(.activation(.sqrt), c, inputs: [try x()])
    case "Clip":
      var lo = -Float.greatestFiniteMagnitude
      var hi = Float.greatestFiniteMagnitude
      if opset < 11 {
        lo = try c.float("min", lo)
        hi = try c.float("max", hi)
      } else {
        for (i, what) in [(1, "min"), (2, "max")] {
          guard let s = c.input(i) else { continue }
          let v = try floatConstant(s, c, what: what)
          guard v.count == 1 else { throw c.fail("\(what) '\(s)' must be a scalar, found \(v.count) values") }
          if i == 1 { lo = v[0] } else { hi = v[0] }
        }
      }
      try emit(.activation(.clip(min: lo, max: hi)), c, inputs: [try x()])
    case "MaxPool", "AveragePool":
      let isMax = n.opType == "MaxPool"
      if isMax {
        guard n.outputs.count < 2 || n.outputs[1].isEmpty else { throw c.fail("the Indices output is not supported") }
        guard try c.int("storage_order", 0) == 0 else { throw c.fail("attribute 'storage_order' = 1 is not supported") }
      }
      guard let kernel = try c.ints("kernel_shape") else { throw c.fail("attribute 'kernel_shape' is missing") }
      let nsp = kernel.count
      let strides = try c.ints("strides") ?? Array(repeating: 1, count: nsp)
      let dilations = try c.ints("dilations") ?? Array(repeating: 1, count: nsp)
      guard dilations.count == nsp, dilations.allSatisfy({ $0 == 1 }) else {
        throw c.fail("attribute 'dilations' = \(dilations) is not supported")
      }
      guard strides.count == nsp, strides.allSatisfy({ (1...65536).contains($0) }),
        kernel.allSatisfy({ (1...65536).contains($0) })
      else {
        throw c.fail("strides \(strides) do not fit kernel_shape \(kernel)")
      }
      let (pb, pe) = try resolvePads(
        c, input: try shapeOf(try x(), c), kernel: kernel, strides: strides, dilations: dilations)
      let p = PoolAttributes(
        kernel: kernel, strides: strides, padsBegin: pb, padsEnd: pe, ceilMode: try c.int("ceil_mode", 0) != 0,
        countIncludePad: try c.int("count_include_pad", 0) != 0)
      try emit(isMax ? .maxPool(p) : .averagePool(p), c, inputs: [try x()])
    case "GlobalAveragePool": try emit(.globalAveragePool, c, inputs: [try x()])
    case "Add", "Sub", "Mul", "Div":
      let kind: BinaryKind = ["Add": .add, "Sub": .sub, "Mul": .mul, "Div": .div][n.opType] ?? .add
      guard let b = c.input(1) else { throw c.fail("input 1 is missing") }
      try emit(.binary(kind), c, inputs: [try x(), b])
    case "Expand":
      try importExpand(c, x: try x())
    case "Concat":
      guard c.node.attributes["axis"] != nil else { throw c.fail("attribute 'axis' is missing") }
      try emit(.concat(axis: try c.int("axis", 0)), c, inputs: n.inputs.filter { !$0.isEmpty })
    case "Gemm":
      let g = GemmAttributes(
        alpha: try c.float("alpha", 1), beta: try c.float("beta", 1), transA: try c.int("transA", 0) != 0,
        transB: try c.int("transB", 0) != 0)
      guard let b = c.input(1) else { throw c.fail("input B is missing") }
      try emit(.gemm(g), c, inputs: [try x(), b] + (c.input(2).map { [$0] } ?? []))
    case "MatMul":
      guard let b = c.input(1) else { throw c.fail("input B is missing") }
      try emit(.matMul, c, inputs: [try x(), b])
    case "Flatten": try emit(.flatten(axis: try c.int("axis", 1)), c, inputs: [try x()])
    case "Reshape":
      guard let s = c.input(1) else { throw c.fail("input 'shape' is missing") }
      let shape = try intConstant(s, c, what: "shape")
      if try c.int("allowzero", 0) != 0, shape.contains(0) {
        throw c.fail("attribute 'allowzero' = 1 with a 0 in the shape is not supported")
      }
      // A leading entry that is the symbolic batch (Shape(x)[0]) copies the input's batch, when
      // the input leads with the batch too (after a Transpose that moved the batch inwards,
      // Shape(x)[0] is another dimension, and the folded number stands).
      let leading = try shapeOf(try x(), c).first
      let batchAware = shape.indices.map {
        $0 == 0 && batchMarks[s]?.contains(0) == true && leading == shape[0] && leading == batchSize ? 0 : shape[$0]
      }
      try emit(.reshape(shape: batchAware), c, inputs: [try x()])
    case "Transpose":
      let rank = try shapeOf(try x(), c).count
      let perm = try c.ints("perm") ?? Array((0..<rank).reversed())
      try emit(.transpose(permutation: perm), c, inputs: [try x()])
    case "Slice":
      try emit(.slice(try sliceAttributes(c)), c, inputs: [try x()])
    case "Split":
      try importSplit(c, x: try x())
    case "Pad":
      let modeName = try c.string("mode", "constant")
      let modes: [String: PadMode] = ["constant": .constant, "reflect": .reflect, "edge": .edge]
      guard let mode = modes[modeName] else { throw c.fail("attribute 'mode' = '\(modeName)' is not supported") }
      if opset < 11 {
        // Before opset 11 the pads and the value are attributes.
        guard let pads = try c.ints("pads") else { throw c.fail("attribute 'pads' is missing") }
        try emit(.pad(mode: mode, pads: pads, value: try c.float("value", 0)), c, inputs: [try x()])
        return
      }
      guard let p = c.input(1) else { throw c.fail("input 'pads' is missing") }
      guard c.input(3) == nil else { throw c.fail("input 'axes' is not supported") }
      let pads = try intConstant(p, c, what: "pads")
      var value: Float = 0
      if let v = c.input(2) {
        let vs = try floatConstant(v, c, what: "constant_value")
        guard vs.count == 1 else { throw c.fail("constant_value must be a scalar") }
        value = vs[0]
      }
      try emit(.pad(mode: mode, pads: pads, value: value), c, inputs: [try x()])
    case "Resize":
      try importResize(c, x: try x())
    case "Softmax":
      let shape = try shapeOf(try x(), c)
      let rank = shape.count
      if opset >= 13 {
        try emit(.softmax(axis: try c.int("axis", -1)), c, inputs: [try x()])
      } else {
        // Before opset 13 Softmax flattens to 2-D at `axis`: the per-axis softmax when every
        // later dimension is 1 (classifier outputs of [N, 1000, 1, 1]).
        let axis = try c.int("axis", 1)
        let resolved = axis < 0 ? axis + rank : axis
        guard resolved >= 0, resolved < rank, shape[(resolved + 1)...].allSatisfy({ $0 == 1 }) else {
          throw c.fail(
            "opset \(opset) Softmax with axis \(axis) on shape \(shape) flattens the input; only an axis after which every dimension is 1 is supported"
          )
        }
        try emit(.softmax(axis: resolved), c, inputs: [try x()])
      }
    case "Dropout":
      var ratio: Float = 0.5
      if opset < 12 {
        ratio = try c.float("ratio", 0.5)
      } else {
        if let r = c.input(1) {
          let v = try floatConstant(r, c, what: "ratio")
          guard v.count == 1 else { throw c.fail("ratio must be a scalar") }
          ratio = v[0]
        }
        if let t = c.input(2) {
          // Training mode with ratio 0 drops nothing (torchvision's Swin passes training=True
          // to a dropout of p = 0): the identity, as in inference.
          guard case .ints(_, let vs) = constants[t], vs.allSatisfy({ $0 == 0 }) || ratio == 0 else {
            throw c.fail("input 'training_mode' must be a constant false (or the ratio 0): Veil runs inference only")
          }
        }
      }
      let outs = n.outputs.count >= 2 && !n.outputs[1].isEmpty ? 2 : 1
      try emit(.dropout(ratio: ratio), c, inputs: [try x()], outputs: outs)
    case "LRN":
      try emit(
        .localResponseNormalization(
          size: try c.int("size", 0), alpha: try c.float("alpha", 1e-4), beta: try c.float("beta", 0.75),
          bias: try c.float("bias", 1)), c, inputs: [try x()])
    case "Sum":
      let ins = n.inputs.filter { !$0.isEmpty }
      switch ins.count {
      case 1: try emit(.identity, c, inputs: ins)
      case 2: try emit(.binary(.add), c, inputs: ins)
      default: throw c.fail("Sum of \(ins.count) inputs is not supported (1 or 2)")
      }
    case "Identity":
      try emit(.identity, c, inputs: [try x()])
    case "Cast":
      // Exporters wrap float tensors in Casts to float; anything else would change the data.
      let to = try c.int("to", 0)
      guard to == ONNXProto.DataType.float else {
        throw c.fail("Cast of the float tensor '\(try x())' to element type \(to) is not supported (only to float, 1)")
      }
      try emit(.identity, c, inputs: [try x()])
    case "ReduceMean", "ReduceSum", "ReduceL2":
      try importReduceMean(c, x: try x(), sum: n.opType != "ReduceMean", squares: n.opType == "ReduceL2")
    case "LayerNormalization":
      guard n.outputs.dropFirst().allSatisfy(\.isEmpty) else {
        throw c.fail("the Mean and InvStdDev outputs (training) are not supported")
      }
      guard let scale = c.input(1) else { throw c.fail("input 'Scale' is missing") }
      try emit(
        .layerNormalization(axis: try c.int("axis", -1), epsilon: try c.float("epsilon", 1e-5)), c,
        inputs: [try x(), scale] + (c.input(2).map { [$0] } ?? []))
    case "Gelu":
      let approximate = try c.string("approximate", "none")
      guard approximate == "none" || approximate == "tanh" else {
        throw c.fail("attribute 'approximate' = '\(approximate)' is not supported (none or tanh)")
      }
      try emit(.activation(.gelu(tanh: approximate == "tanh")), c, inputs: [try x()])
    case "Unsqueeze", "Squeeze":
      try importSqueeze(c, x: try x())
    case "Gather":
      try importGather(c, x: try x())
    case "Einsum":
      try importEinsum(c)
    default:
      throw c.fail("unknown op '\(n.opType)' at opset \(opset)")
    }
  }

  mutating func importResize(_ c: ONNXNodeContext, x: String) throws {
    let mode = try c.string("mode", "nearest")
    let ctm = try c.string("coordinate_transformation_mode", "half_pixel")
    let kind: ResizeKind
    switch mode {
    case "nearest":
      let nm = try c.string("nearest_mode", "round_prefer_floor")
      guard ctm == "asymmetric" else {
        throw c.fail(
          "attribute 'coordinate_transformation_mode' = '\(ctm)' with mode 'nearest' is not supported (only 'asymmetric')"
        )
      }
      guard nm == "floor" else { throw c.fail("attribute 'nearest_mode' = '\(nm)' is not supported (only 'floor')") }
      kind = .nearest
    case "linear":
      guard ctm == "half_pixel" || ctm == "pytorch_half_pixel" else {
        throw c.fail(
          "attribute 'coordinate_transformation_mode' = '\(ctm)' with mode 'linear' is not supported (only 'half_pixel')"
        )
      }
      kind = .linear
    default:
      throw c.fail("attribute 'mode' = '\(mode)' is not supported")
    }
    for a in ["antialias", "exclude_outside"] where try c.int(a, 0) != 0 {
      throw c.fail("attribute '\(a)' is not supported")
    }
    if c.node.attributes["axes"] != nil { throw c.fail("attribute 'axes' is not supported") }
    var scales: [Float]?
    var sizes: [Int]?
    if let s = c.input(2), !(constants[s]?.dims.contains(0) ?? false) {
      scales = try floatConstant(s, c, what: "scales")
    }
    if let s = c.input(3), !(constants[s]?.dims.contains(0) ?? false) { sizes = try intConstant(s, c, what: "sizes") }
    guard (scales == nil) != (sizes == nil) else { throw c.fail("exactly one of 'scales' and 'sizes' must be given") }
    if let scales {
      let x = try shapeOf(x, c)
      guard scales.count == x.count, scales.allSatisfy({ $0.isFinite && $0 > 0 }) else {
        throw c.fail("scales \(scales) do not fit input \(x)")
      }
      var count: Float = 1
      for (d, s) in zip(x, scales) { count *= max(1, Float(d) * s) }
      guard count <= Float(Int32.max) else { throw c.fail("scales \(scales) make the output too large") }
    }
    try emit(.resize(kind, scales: scales, sizes: sizes), c, inputs: [x])
  }
}

extension ONNXImporter {
  /// Split as one Slice per output along `axis`: sizes from the attribute `split` (before
  /// opset 13) or the input `split` (from 13); without them, `num_outputs` parts (from 18; the
  /// last one smaller when the axis does not divide) or, before 18, equal parts, one per output.
  mutating func importSplit(_ c: ONNXNodeContext, x: String) throws {
    let shape = try shapeOf(x, c)
    let axis = try c.int("axis", 0)
    let ax = axis < 0 ? axis + shape.count : axis
    guard ax >= 0, ax < shape.count else { throw c.fail("axis \(axis) is out of range for rank \(shape.count)") }
    let d = shape[ax]
    let outputs = c.node.outputs
    guard !outputs.isEmpty else { throw c.fail("has no output") }
    var sizes: [Int]
    if opset < 13, let s = try c.ints("split") {
      sizes = s
    } else if opset >= 13, let s = c.input(1) {
      // Part sizes: bounded each and in sum (their product means nothing; MixNet splits 720
      // channels into five parts of 144).
      guard case .ints(_, let vs) = constants[s] else {
        throw c.fail("split '\(s)' must be a constant integer tensor (an initializer or a Constant node)")
      }
      guard vs.allSatisfy({ $0 >= 0 && $0 <= Int64(Int32.max) }), vs.reduce(0, { $0 + $1 }) <= Int64(Int32.max) else {
        throw c.fail("split '\(s)' \(vs.prefix(8)) holds a size out of range")
      }
      sizes = vs.map { Int($0) }
    } else if opset >= 18, c.node.attributes["num_outputs"] != nil {
      let n = try c.int("num_outputs", 0)
      guard n == outputs.count else { throw c.fail("num_outputs \(n) but \(outputs.count) outputs") }
      let chunk = (d + n - 1) / n
      sizes = (0..<n).map { min(chunk, max(0, d - $0 * chunk)) }
    } else {
      guard d % outputs.count == 0 else {
        throw c.fail("axis \(axis) of \(shape) does not split into \(outputs.count) equal parts")
      }
      sizes = Array(repeating: d / outputs.count, count: outputs.count)
    }
    guard sizes.count == outputs.count, sizes.allSatisfy({ $0 >= 0 }), sizes.reduce(0, +) == d else {
      throw c.fail("split \(sizes) does not cut the \(d) elements of axis \(axis) into \(outputs.count) outputs")
    }
    var start = 0
    for (k, (size, name)) in zip(sizes, outputs).enumerated() {
      defer { start += size }
      guard !name.isEmpty else { continue }
      try emit(
        .slice(SliceAttributes(starts: [start], ends: [start + size], axes: [ax])), label: "\(c.label)/\(k)",
        opType: c.node.opType, inputs: [x], outputs: [name])
    }
  }
}

extension ONNXImporter {
  /// Unsqueeze or Squeeze of a runtime tensor: a reshape to the shape the axes give.
  mutating func importSqueeze(_ c: ONNXNodeContext, x: String) throws {
    let shape = try shapeOf(x, c)
    var axes = try c.ints("axes")
    if opset >= 13, let a = c.input(1) { axes = try intConstant(a, c, what: "axes") }
    var out: [Int]
    if c.node.opType == "Unsqueeze" {
      guard let axes, !axes.isEmpty else { throw c.fail("Unsqueeze needs axes") }
      // The folder's own rule (rank within FormatLimits.maxRank, axes in range), and no axis twice.
      out = try unsqueezed(shape, axes: axes, c)
      let rank = out.count
      guard Set(axes.map { $0 < 0 ? $0 + rank : $0 }).count == axes.count else {
        throw c.fail("axes \(axes) name an axis twice")
      }
    } else {
      let rank = shape.count
      let resolved = Set((axes ?? shape.indices.filter { shape[$0] == 1 }).map { $0 < 0 ? $0 + rank : $0 })
      guard resolved.allSatisfy({ (0..<rank).contains($0) && shape[$0] == 1 }) else {
        throw c.fail("axes \(axes ?? []) of \(shape) are not all of extent 1")
      }
      out = shape.indices.filter { !resolved.contains($0) }.map { shape[$0] }
    }
    try emit(.reshape(shape: out), c, inputs: [x])
  }

  /// Gather of a runtime tensor at constant indices that pick one element of the axis (the
  /// class token of a transformer, a head of a packed projection) or a run of consecutive
  /// ones, in row-major order whatever the indices' shape (PyTorch 2 writes an `as_strided`
  /// view of a flattened tensor that way): a Slice, then a reshape to the gathered shape when
  /// the indices are not one axis (a scalar drops the axis; [1, C, 1, 1] indices make one).
  mutating func importGather(_ c: ONNXNodeContext, x: String) throws {
    let shape = try shapeOf(x, c)
    guard let i = c.input(1), case .ints(let idims, let raw)? = constants[i] else {
      throw c.fail("indices must be a constant integer tensor (gathering at runtime indices is not supported)")
    }
    let axis = try c.int("axis", 0)
    let ax = axis < 0 ? axis + shape.count : axis
    guard ax >= 0, ax < shape.count else { throw c.fail("axis \(axis) is out of range for rank \(shape.count)") }
    let d = shape[ax]
    let indices = try raw.map { v -> Int in
      guard v >= -Int64(d), v < Int64(d) else { throw c.fail("index \(v) is out of range for axis \(axis) of \(shape)") }
      return v < 0 ? Int(v) + d : Int(v)
    }
    guard let first = indices.first, indices == Array(first..<(first + indices.count)) else {
      throw c.fail("indices \(raw.prefix(8)) of shape \(idims) (only a scalar or a run of consecutive indices)")
    }
    let slice = SliceAttributes(starts: [first], ends: [first + indices.count], axes: [ax])
    guard idims.count != 1, let out = c.node.outputs.first else {
      try emit(.slice(slice), c, inputs: [x])
      return
    }
    let sliced = out + "/slice"
    try emit(.slice(slice), label: c.label + "/slice", opType: "Gather", inputs: [x], outputs: [sliced])
    let target = Array(shape[..<ax]) + idims + Array(shape[(ax + 1)...])
    try emit(.reshape(shape: target), label: c.label, opType: "Gather", inputs: [sliced], outputs: [out])
  }

  /// Expand of a runtime tensor (Swin V2 expands its query and key norms before the Div that
  /// normalises them): a Mul by ones that span only the axes the input lacks, which is exact
  /// (x · 1 = x) and keeps the batch axis free when the input already has it.
  mutating func importExpand(_ c: ONNXNodeContext, x: String) throws {
    guard let s = c.input(1) else { throw c.fail("input 'shape' is missing") }
    let want = try intConstant(s, c, what: "shape")
    let have = try shapeOf(x, c)
    guard want.allSatisfy({ $0 >= 1 }), let target = broadcastShapes(have, want) else {
      throw c.fail("shape \(want.prefix(8)) does not broadcast with the input's \(have)")
    }
    let padded = Array(repeating: 1, count: target.count - have.count) + have
    let ones = target.indices.map { padded[$0] == target[$0] ? 1 : target[$0] }
    guard ones.contains(where: { $0 != 1 }) || target.count != have.count else {
      return try emit(.identity, c, inputs: [x])
    }
    do {
      // The ones are a constant of their own; the result is a runtime tensor, bounded as a file's.
      _ = try FormatLimits.elementCount(ones, maxElements: FormatLimits.maxFoldedElements - foldedElements)
      _ = try FormatLimits.elementCount(target)
    } catch { throw c.fail("expanding \(have) to \(target.prefix(8)) \(error.detail)") }
    guard let out = c.node.outputs.first, !out.isEmpty else { throw c.fail("has no output") }
    constants[out + "/ones"] = .floats(Tensor(shape: ones, repeating: 1))
    try emit(.binary(.mul), c, inputs: [x, out + "/ones"])
  }

  /// Einsum where it is a (batched) matrix product: two operands, letters shared by both and the
  /// output (the batch, the same size in both), one letter summed over (in both, not in the
  /// output) and one free letter per operand (MaxViT's attention, "BGHID,BGHJD->BGHIJ"). Each
  /// operand is transposed to [batch..., i, k] and [batch..., k, j] where it is not already,
  /// then one MatMul, then a Transpose to the output's order if it asks for another. Anything
  /// else (an ellipsis, a repeated letter, a sum over one operand, several summed or free
  /// letters) is refused with the equation.
  mutating func importEinsum(_ c: ONNXNodeContext) throws {
    let equation = try c.string("equation", "").filter { !$0.isWhitespace }
    func refuse(_ why: String) -> Error { c.fail("equation '\(equation)' \(why) (only a matrix product is supported)") }
    let sides = equation.components(separatedBy: "->")
    guard sides.count == 2, !equation.contains(".") else { throw refuse("has no explicit output or has an ellipsis") }
    let terms = sides[0].split(separator: ",", omittingEmptySubsequences: false).map(Array.init)
    let output = Array(sides[1])
    guard terms.count == 2, c.node.inputs.count == 2, let a = c.input(0), let b = c.input(1) else {
      throw refuse("does not take two operands")
    }
    let (ta, tb) = (terms[0], terms[1])
    for t in [ta, tb, output] where Set(t).count != t.count || !t.allSatisfy({ $0.isLetter }) {
      throw refuse("repeats a letter or names a non-letter")
    }
    let sa = try shapeOf(a, c)
    let sb = try shapeOf(b, c)
    guard sa.count == ta.count, sb.count == tb.count else { throw refuse("does not match operand ranks \(sa) and \(sb)") }
    let batch = output.filter { ta.contains($0) && tb.contains($0) }
    let summed = ta.filter { tb.contains($0) && !output.contains($0) }
    let freeA = ta.filter { !tb.contains($0) }
    let freeB = tb.filter { !ta.contains($0) }
    guard summed.count == 1, freeA.count == 1, freeB.count == 1, output.allSatisfy({ ta.contains($0) || tb.contains($0) }),
      freeA.allSatisfy(output.contains), freeB.allSatisfy(output.contains), batch.count + 2 == output.count,
      batch.count + 2 == ta.count, batch.count + 2 == tb.count
    else { throw refuse("is not a product summed over one letter") }
    for l in batch + summed {
      let (da, db) = (sa[ta.firstIndex(of: l)!], sb[tb.firstIndex(of: l)!])
      guard da == db else { throw refuse("gives letter '\(l)' sizes \(da) and \(db)") }
    }
    guard let out = c.node.outputs.first, !out.isEmpty else { throw c.fail("has no output") }
    // Operand in the order `want`: itself, or a Transpose of it.
    func ordered(_ name: String, _ term: [Character], _ want: [Character], _ tag: String) throws -> String {
      let perm = want.map { term.firstIndex(of: $0)! }
      guard perm != Array(perm.indices) else { return name }
      let moved = out + "/" + tag
      try emit(.transpose(permutation: perm), label: c.label + "/" + tag, opType: "Einsum", inputs: [name], outputs: [moved])
      return moved
    }
    let left = try ordered(a, ta, batch + freeA + summed, "a")
    let right = try ordered(b, tb, batch + summed + freeB, "b")
    let product = batch + freeA + freeB
    let perm = output.map { product.firstIndex(of: $0)! }
    if perm == Array(perm.indices) {
      try emit(.matMul, label: c.label, opType: "Einsum", inputs: [left, right], outputs: [out])
    } else {
      try emit(.matMul, label: c.label + "/product", opType: "Einsum", inputs: [left, right], outputs: [out + "/product"])
      try emit(.transpose(permutation: perm), label: c.label, opType: "Einsum", inputs: [out + "/product"], outputs: [out])
    }
  }

  /// ReduceMean over the spatial axes of a 4-D tensor: global average pooling, with the
  /// transposes an NHWC exporter needs (axes [1, 2]) and the reshape `keepdims = 0` asks for.
  /// ReduceMean, and ReduceSum (the mean times the count), over any axes: as global average
  /// pooling of a [batch or 1, kept, reduced] view (a Transpose first when the reduced axes are
  /// not the last ones), then a Reshape to the output. Over the spatial axes of a 4-D map
  /// (NCHW or NHWC) it is the pooling itself. ReduceL2 (`squares`) is the square root of the
  /// sum of squares: a Mul first, a Sqrt last (Swin V2 normalises its queries and keys so).
  mutating func importReduceMean(_ c: ONNXNodeContext, x: String, sum: Bool = false, squares: Bool = false) throws {
    let shape = try shapeOf(x, c)
    var axes = try c.ints("axes")
    if opset >= (sum && !squares ? 13 : 18), let a = c.input(1) { axes = try intConstant(a, c, what: "axes") }
    let rank = shape.count
    guard rank >= 1 else { throw c.fail("cannot reduce a scalar") }
    if axes?.isEmpty == true, try c.int("noop_with_empty_axes", 0) != 0 {
      return try emit(.identity, c, inputs: [x])
    }
    let list = (axes?.isEmpty == false ? axes! : Array(0..<rank)).map { $0 < 0 ? $0 + rank : $0 }
    guard list.allSatisfy({ $0 >= 0 && $0 < rank }), Set(list).count == list.count else {
      throw c.fail("axes \(axes ?? []) are out of range or repeated for rank \(rank)")
    }
    let reduced = Set(list)
    let keep = try c.int("keepdims", 1) != 0
    let base = c.label
    var current = x
    guard let out = c.node.outputs.first, !out.isEmpty else { throw c.fail("has no output") }
    // Each step reads the previous one's output, and any further inputs it names.
    var steps: [(op: Op, suffix: String, more: [String])] = []
    func run() throws {
      for (k, step) in steps.enumerated() {
        let final = k == steps.count - 1
        let name = final ? out : "\(out)/\(step.suffix)"
        try emit(
          step.op, label: final ? base : "\(base)/\(step.suffix)", opType: c.node.opType, inputs: [current] + step.more,
          outputs: [name])
        current = name
      }
    }
    let count = reduced.reduce(1) { $0 * shape[$1] }
    if sum {
      constants["\(out)/count"] = .floats(Tensor(shape: [], repeating: Float(count)))
    }
    if rank == 4, !sum, reduced == [2, 3] || reduced == [1, 2] {
      let nhwc = reduced == [1, 2]
      if nhwc { steps.append((.transpose(permutation: [0, 3, 1, 2]), "to_nchw", [])) }
      steps.append((.globalAveragePool, "pool", []))
      if keep {
        if nhwc { steps.append((.transpose(permutation: [0, 2, 3, 1]), "to_nhwc", [])) }
      } else {
        steps.append((.reshape(shape: [0, nhwc ? shape[3] : shape[1]]), "flatten", []))
      }
      return try run()
    }
    if squares { steps.append((.binary(.mul), "square", [x])) }
    let kept = (0..<rank).filter { !reduced.contains($0) }
    let order = kept + (0..<rank).filter { reduced.contains($0) }
    if order != Array(0..<rank) { steps.append((.transpose(permutation: order), "reduced_last", [])) }
    // The batch (axis 0) is copied through the Reshapes (0) when it is kept, so the graph still
    // re-infers at another batch.
    let batchKept = kept.first == 0
    let keptCount = kept.reduce(1) { $0 * shape[$1] }
    let lead = batchKept ? 0 : 1
    let middle = batchKept ? keptCount / max(shape[0], 1) : keptCount
    steps.append((.reshape(shape: [lead, middle, count]), "view", []))
    steps.append((.globalAveragePool, "pool", []))
    if sum { steps.append((.binary(.mul), "times_count", ["\(out)/count"])) }
    var target = (0..<rank).compactMap { a -> Int? in reduced.contains(a) ? (keep ? 1 : nil) : shape[a] }
    if batchKept, !target.isEmpty { target[0] = 0 }
    steps.append((.reshape(shape: target), "shape", []))
    if squares { steps.append((.activation(.sqrt), "root", [])) }
    try run()
  }
}
