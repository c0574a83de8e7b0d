import Foundation
import VeilGraph
import VeilTensor

// Constant folding at import (part of `ONNXReader`): Constant nodes and the integer shape
// arithmetic exporters leave in front of Reshape, evaluated within `FormatLimits`' budgets.

// MARK: - Constant folding

extension ONNXImporter {
  /// Constant nodes, and integer arithmetic on shapes (Shape, Gather, Unsqueeze, Squeeze,
  /// Concat, Cast, Identity over constants), evaluated now. Returns false for anything else.
  mutating func foldConstant(_ c: ONNXNodeContext) throws -> Bool {
    let n = c.node
    guard let out = n.outputs.first, !out.isEmpty else { return false }
    let ins = n.inputs.filter { !$0.isEmpty }
    switch n.opType {
    case "Constant":
      guard n.attributes.count == 1, let (key, attr) = n.attributes.first.map({ ($0.key, $0.value) }) else {
        throw c.fail("needs exactly one value attribute")
      }
      switch attr {
      case .tensor(let t): constants[out] = try constant(t)
      case .float(let f) where key == "value_float": constants[out] = .floats(Tensor(shape: [], repeating: f))
      case .floats(let fs) where key == "value_floats":
        constants[out] = .floats(Tensor(shape: [fs.count]) { o in for i in fs.indices { o[i] = fs[i] } })
      case .int(let i) where key == "value_int": constants[out] = .ints(dims: [], values: [i])
      case .ints(let vs) where key == "value_ints": constants[out] = .ints(dims: [vs.count], values: vs)
      default: throw c.fail("attribute '\(key)' is not supported")
      }
      return true
    case "ConstantOfShape":
      guard let i = ins.first, case .ints(let d, let v) = constants[i] else { return false }
      guard d.count <= 1, v.allSatisfy({ $0 >= 0 && $0 <= Int64(Int32.max) }) else {
        throw c.fail("shape \(v) is not a list of non-negative sizes")
      }
      let shape = v.map { Int($0) }
      let count: Int
      do {
        count = try FormatLimits.elementCount(shape, maxElements: FormatLimits.maxFoldedElements - foldedElements)
      } catch {
        throw c.fail(
          "shape \(shape.prefix(8)) \(error.detail) (what is left of the \(FormatLimits.maxFoldedElements) elements "
            + "all folded constants may hold)")
      }
      var fill: Float = 0
      if case .tensor(let t)? = n.attributes["value"] {
        switch try constant(t) {
        case .floats(let f):
          guard f.count == 1 else { throw c.fail("'value' must hold one element") }
          fill = f.storage.pointer[0]
        case .ints(_, let iv):
          guard iv.count == 1 else { throw c.fail("'value' must hold one element") }
          constants[out] = .ints(dims: shape, values: Array(repeating: iv[0], count: count))
          return true
        }
      }
      constants[out] = .floats(Tensor(shape: shape, repeating: fill))
      return true
    case "Unsqueeze", "Squeeze", "Identity", "Reshape", "Flatten":
      // Float constants reshaped by old exporters (BatchNorm scales as [C, 1, 1]); integer
      // constants take the shape-arithmetic path below.
      guard let first = ins.first, case .floats(let t)? = constants[first] else { break }
      var dims = t.shape
      switch n.opType {
      case "Unsqueeze":
        var axes = try c.ints("axes")
        if opset >= 13, ins.count > 1, case .ints(_, let a)? = constants[ins[1]] { axes = a.map { Int($0) } }
        guard let axes else { throw c.fail("'axes' is missing") }
        dims = try unsqueezed(dims, axes: axes, c)
      case "Squeeze":
        var axes = try c.ints("axes")
        if opset >= 13, ins.count > 1, case .ints(_, let a)? = constants[ins[1]] { axes = a.map { Int($0) } }
        let drop = Set((axes ?? dims.indices.filter { dims[$0] == 1 }).map { $0 < 0 ? $0 + t.shape.count : $0 })
        dims = dims.indices.filter { !drop.contains($0) }.map { dims[$0] }
      case "Reshape":
        guard ins.count > 1, case .ints(_, let s)? = constants[ins[1]] else { return false }
        do {
          dims = try Op.reshape(shape: s.map { Int($0) }).outputShape([t.shape], node: c.label)
        } catch { throw c.fail("\(error)") }
      case "Flatten":
        let axis = try c.int("axis", 1)
        let ax = axis < 0 ? axis + dims.count : axis
        guard ax >= 0, ax <= dims.count else { throw c.fail("axis \(axis) is out of range") }
        dims = [dims[..<ax].reduce(1, *), dims[ax...].reduce(1, *)]
      default:
        break
      }
      do { constants[out] = .floats(try t.reshaped(dims)) } catch { throw c.fail("\(error)") }
      return true
    case "Sqrt", "Ceil", "Floor", "Relu", "Sigmoid", "Exp", "Add", "Sub", "Mul", "Div", "Cast":
      // Arithmetic on float constants (the attention scale 1/√√d an exporter computes from a
      // shape; TensorFlow-style "same" padding, ceil(size / stride), in timm's tf_ models;
      // Swin V2's position-bias MLP and logit scale, computed from constant tables), within
      // the folded budget; integer operands take the shape-arithmetic path below.
      let operands = ins.compactMap { name -> Tensor? in if case .floats(let t)? = constants[name] { t } else { nil } }
      guard let first = operands.first, operands.count == ins.count else { break }
      let arity = ["Add", "Sub", "Mul", "Div"].contains(n.opType) ? 2 : 1
      guard operands.count == arity else {
        throw c.fail("\(n.opType) takes \(arity) input(s), found \(operands.count)")
      }
      if n.opType == "Cast", try c.int("to", 0) != ONNXProto.DataType.float {
        // Float constants to integers (truncated, as ONNX Runtime does) or to booleans.
        let to = try c.int("to", 0)
        guard ONNXProto.DataType.integers.contains(to) || to == Int(ONNXProto.DataType.bool) else { return false }
        let v = first.scalars
        guard v.allSatisfy({ $0.isFinite && abs($0) < 0x1p62 }) else { throw c.fail("a float out of integer range is cast") }
        constants[out] = .ints(
          dims: first.shape, values: v.map { to == Int(ONNXProto.DataType.bool) ? ($0 != 0 ? 1 : 0) : Int64($0) })
        return true
      }
      let shape = try operands.dropFirst().reduce(first.shape) { s, t in
        guard let b = broadcastShapes(s, t.shape) else { throw c.fail("float operands \(s) and \(t.shape) do not broadcast") }
        return b
      }
      do {
        _ = try FormatLimits.elementCount(shape, maxElements: FormatLimits.maxFoldedElements - foldedElements)
      } catch { throw c.fail("folded result of shape \(shape.prefix(8)) \(error.detail)") }
      let spread = try operands.map { try $0.broadcast(to: shape).scalars }
      constants[out] = .floats(
        Tensor(shape: shape) { o in
          for k in o.indices {
            let a = spread[0][k]
            switch n.opType {
            case "Sqrt": o[k] = a.squareRoot()
            case "Ceil": o[k] = a.rounded(.up)
            case "Floor": o[k] = a.rounded(.down)
            case "Relu": o[k] = max(a, 0)
            case "Sigmoid": o[k] = 1 / (1 + expf(-a))
            case "Exp": o[k] = expf(a)
            case "Add": o[k] = a + spread[1][k]
            case "Sub": o[k] = a - spread[1][k]
            case "Mul": o[k] = a * spread[1][k]
            case "Div": o[k] = a / spread[1][k]
            default: o[k] = a
            }
          }
        })
      return true
    case "MatMul":
      // A product of float constants: [..., M, K] by [K, N] (Swin V2's position-bias MLP on its
      // constant coordinate table), its work bounded like its size.
      guard ins.count == 2, case .floats(let a)? = constants[ins[0]], case .floats(let b)? = constants[ins[1]],
        a.shape.count >= 2, b.shape.count == 2, a.shape.last == b.shape[0]
      else { break }
      let (k, cols) = (b.shape[0], b.shape[1])
      let rows = a.shape.dropLast().reduce(1, *)
      let shape = Array(a.shape.dropLast()) + [cols]
      do {
        _ = try FormatLimits.elementCount(shape, maxElements: FormatLimits.maxFoldedElements - foldedElements)
        _ = try FormatLimits.elementCount([rows, k, cols], maxElements: FormatLimits.maxFoldedElements)
      } catch { throw c.fail("folded product \(a.shape.prefix(8)) × \(b.shape) \(error.detail)") }
      let (x, w) = (a.scalars, b.scalars)
      constants[out] = .floats(
        Tensor(shape: shape) { o in
          for r in 0..<rows {
            for j in 0..<cols {
              var sum: Float = 0
              for i in 0..<k { sum += x[r * k + i] * w[i * cols + j] }
              o[r * cols + j] = sum
            }
          }
        })
      return true
    case "Transpose", "Slice", "Gather", "GatherND", "Concat", "Expand", "ScatterND", "Range", "Not", "Pow", "Equal",
      "Less", "Greater", "Where", "Clip":
      // Ops that only move, pick or compare constant values, on float data or on integer data
      // beyond what the shape-arithmetic path below takes (a Swin block's attention mask and
      // relative-position bias, computed by the exporter from shapes). Nil: not this path's.
      // foldMoving checks each result's size before it makes it.
      guard ins.allSatisfy({ constants[$0] != nil }), let k = try foldMoving(c, ins) else { break }
      constants[out] = k
      return true
    case "Shape":
      guard let i = ins.first, values[i] != nil || constants[i] != nil else { return false }
      var s = try shapeOf(i, c).map { Int64($0) }
      // Opset 15 slices the shape with start/end.
      let r = s.count
      func clampIndex(_ v: Int) -> Int { min(max(v < 0 ? v + r : v, 0), r) }
      let start = clampIndex(try c.int("start", 0))
      let end = clampIndex(try c.int("end", r))
      s = start < end ? Array(s[start..<end]) : []
      constants[out] = .ints(dims: [s.count], values: s)
      if symbolicBatch, values[i] != nil, start == 0, !s.isEmpty { batchMarks[out] = [0] }
      return true
    default:
      break
    }
    // The rest fold only when every input is an integer constant.
    var data: [(dims: [Int], values: [Int64])] = []
    for i in ins {
      guard case .ints(let d, let v) = constants[i] else { return false }
      // Every fold below indexes the values by the dims: the two must agree, whatever fold or
      // file wrote the constant.
      guard (try? FormatLimits.elementCount(d)) == v.count else {
        throw c.fail("integer constant '\(i)' has dims \(d.prefix(8)) but \(v.count) values")
      }
      data.append((d, v))
    }
    guard !data.isEmpty else { return false }
    switch n.opType {
    case "Identity", "Cast":
      if n.opType == "Cast", try c.int("to", 0) == Int(ONNXProto.DataType.bool) {
        constants[out] = .ints(dims: data[0].dims, values: data[0].values.map { $0 != 0 ? 1 : 0 })
        return true
      }
      if n.opType == "Cast", !ONNXProto.DataType.integers.contains(try c.int("to", 0)) {
        guard try c.int("to", 0) == ONNXProto.DataType.float else { return false }
        let v = data[0].values
        constants[out] = .floats(Tensor(shape: data[0].dims) { o in for k in v.indices { o[k] = Float(v[k]) } })
        return true
      }
      constants[out] = constants[ins[0]]
      batchMarks[out] = batchMarks[ins[0]]
    case "Add", "Sub", "Mul", "Div", "Mod", "Equal":
      guard data.count == 2 else { throw c.fail("needs two inputs") }
      if n.opType == "Mod", try c.int("fmod", 0) != 0 { return false }
      constants[out] = try integerArithmetic(n.opType, data[0], data[1], c)
    case "Where":
      // Where(cond, x, y) on shape arithmetic (PyTorch's expand(n, -1, -1)), with the condition
      // as 0/1: cond·x + (1 − cond)·y, each step checked as the others.
      guard data.count == 3 else { throw c.fail("needs a condition and two inputs") }
      let cond = (dims: data[0].dims, values: data[0].values.map { $0 != 0 ? Int64(1) : 0 })
      let notCond = (dims: cond.dims, values: cond.values.map { 1 - $0 })
      guard case .ints(let d1, let v1) = try integerArithmetic("Mul", cond, data[1], c),
        case .ints(let d2, let v2) = try integerArithmetic("Mul", notCond, data[2], c)
      else { return false }
      constants[out] = try integerArithmetic("Add", (d1, v1), (d2, v2), c)
    case "Reshape":
      guard data.count == 2 else { throw c.fail("needs data and shape") }
      let dims: [Int]
      do {
        dims = try Op.reshape(shape: data[1].values.map { Int(clamping: $0) }).outputShape([data[0].dims], node: c.label)
      } catch { throw c.fail("\(error)") }
      constants[out] = .ints(dims: dims, values: data[0].values)
      batchMarks[out] = batchMarks[ins[0]]
    case "Transpose":
      let (dims, v) = data[0]
      let perm = try c.ints("perm") ?? Array(dims.indices.reversed())
      guard perm.sorted() == Array(dims.indices) else { throw c.fail("perm \(perm) does not permute \(dims.count) axes") }
      let (outDims, source) = permutedIndices(dims, perm)
      constants[out] = .ints(dims: outDims, values: source.map { v[$0] })
      if let m = batchMarks[ins[0]] { batchMarks[out] = Set(source.indices.filter { m.contains(source[$0]) }) }
    case "Slice":
      let (outDims, source) = try sliceIndices(data[0].dims, c)
      constants[out] = .ints(dims: outDims, values: source.map { data[0].values[$0] })
      if let m = batchMarks[ins[0]] { batchMarks[out] = Set(source.indices.filter { m.contains(source[$0]) }) }
    case "Gather":
      guard data.count == 2 else { throw c.fail("needs data and indices") }
      let (d, v) = data[0]
      guard d.count == 1, try c.int("axis", 0) == 0 else {
        throw c.fail("only gathers from 1-D integer constants fold")
      }
      let picked = try data[1].values.map { k -> Int64 in
        let idx = k < 0 ? Int(k) + v.count : Int(k)
        guard idx >= 0, idx < v.count else { throw c.fail("index \(k) is out of range for \(v.count) values") }
        return v[idx]
      }
      constants[out] = .ints(dims: data[1].dims, values: picked)
      if let m = batchMarks[ins[0]] {
        batchMarks[out] = Set(data[1].values.indices.filter { k in
          let i = data[1].values[k]
          return m.contains(i < 0 ? Int(i) + v.count : Int(i))
        })
      }
    case "Unsqueeze", "Squeeze":
      var axes = try c.ints("axes")
      if opset >= 13, data.count > 1 { axes = data[1].values.map { Int($0) } }
      var dims = data[0].dims
      if n.opType == "Unsqueeze" {
        guard let axes else { throw c.fail("'axes' is missing") }
        dims = try unsqueezed(dims, axes: axes, c)
      } else {
        let r = dims.count
        let named = axes ?? dims.indices.filter { dims[$0] == 1 }
        let drop = Set(named.map { $0 < 0 ? $0 + r : $0 })
        guard drop.allSatisfy({ (0..<r).contains($0) && dims[$0] == 1 }) else {
          throw c.fail("Squeeze axes \(named) must name axes of extent 1 of \(dims)")
        }
        dims = dims.indices.filter { !drop.contains($0) }.map { dims[$0] }
      }
      constants[out] = .ints(dims: dims, values: data[0].values)
      batchMarks[out] = batchMarks[ins[0]]
    case "Concat":
      guard data.allSatisfy({ $0.dims.count == 1 }) else { throw c.fail("only 1-D integer constants fold") }
      let vs = data.flatMap(\.values)
      constants[out] = .ints(dims: [vs.count], values: vs)
      var marks = Set<Int>()
      var offset = 0
      for (k, i) in ins.enumerated() {
        marks.formUnion((batchMarks[i] ?? []).map { $0 + offset })
        offset += data[k].values.count
      }
      if !marks.isEmpty { batchMarks[out] = marks }
    default:
      return false
    }
    return true
  }
}

// MARK: - Folding helpers

extension ONNXImporter {
  /// `dims` with a 1 inserted at each of `axes` (negative: from the end of the result), the
  /// result's rank within `FormatLimits.maxRank`.
  func unsqueezed(_ dims: [Int], axes: [Int], _ c: ONNXNodeContext) throws -> [Int] {
    var dims = dims
    let r = dims.count + axes.count
    guard r <= FormatLimits.maxRank else {
      throw c.fail("unsqueezing to rank \(r) exceeds \(FormatLimits.maxRank)")
    }
    for a in axes.map({ $0 < 0 ? $0 + r : $0 }).sorted() {
      guard a >= 0, a <= dims.count else { throw c.fail("axis \(a) is out of range") }
      dims.insert(1, at: a)
    }
    return dims
  }

  /// Element-wise integer arithmetic with numpy broadcasting; Div truncates toward zero, as
  /// ONNX Runtime does for integer tensors.
  func integerArithmetic(
    _ op: String, _ a: (dims: [Int], values: [Int64]), _ b: (dims: [Int], values: [Int64]), _ c: ONNXNodeContext
  ) throws -> ONNXImportedConstant {
    guard let dims = broadcastShapes(a.dims, b.dims) else {
      throw c.fail("integer operands of shapes \(a.dims) and \(b.dims) do not broadcast")
    }
    let count: Int
    do { count = try FormatLimits.elementCount(dims, maxElements: 1 << 20) } catch {
      throw c.fail("integer result of shape \(dims.prefix(8)) is too large to fold: it \(error.detail)")
    }
    func index(_ flat: Int, _ d: [Int]) -> Int {
      // Position in an operand broadcast to `dims`.
      var rest = flat
      var k = 0
      var scale = 1
      let pad = dims.count - d.count
      for axis in stride(from: dims.count - 1, through: 0, by: -1) {
        let coordinate = rest % dims[axis]
        rest /= dims[axis]
        if axis >= pad {
          let size = d[axis - pad]
          if size != 1 { k += coordinate * scale }
          scale *= size
        }
      }
      return k
    }
    var out = [Int64](repeating: 0, count: count)
    for i in 0..<count {
      let x = a.values[index(i, a.dims)]
      let y = b.values[index(i, b.dims)]
      let r: (Int64, Bool)
      switch op {
      case "Add": r = x.addingReportingOverflow(y)
      case "Sub": r = x.subtractingReportingOverflow(y)
      case "Mul": r = x.multipliedReportingOverflow(by: y)
      case "Equal": r = (x == y ? 1 : 0, false)
      case "Mod":
        // ONNX's integer Mod (fmod = 0) takes the divisor's sign, as Python's %.
        guard y != 0 else { throw c.fail("integer modulo by zero") }
        guard x != Int64.min || y != -1 else { throw c.fail("integer Mod of \(x) and \(y) overflows") }
        let m = x % y
        r = (m != 0 && (m < 0) != (y < 0) ? m + y : m, false)
      default:
        guard y != 0 else { throw c.fail("integer division by zero") }
        r = x.dividedReportingOverflow(by: y)
      }
      guard !r.1 else { throw c.fail("integer \(op) of \(x) and \(y) overflows") }
      out[i] = r.0
    }
    return .ints(dims: dims, values: out)
  }

  /// The dims of `dims` permuted by `perm`, and for each output position its flat source index.
  func permutedIndices(_ dims: [Int], _ perm: [Int]) -> ([Int], [Int]) {
    let outDims = perm.map { dims[$0] }
    var strides = [Int](repeating: 1, count: dims.count)
    for k in stride(from: dims.count - 2, through: 0, by: -1) { strides[k] = strides[k + 1] * dims[k + 1] }
    let count = dims.reduce(1, *)
    var source = [Int](repeating: 0, count: count)
    for i in 0..<count {
      var rest = i
      var k = 0
      for axis in stride(from: outDims.count - 1, through: 0, by: -1) {
        k += (rest % outDims[axis]) * strides[perm[axis]]
        rest /= outDims[axis]
      }
      source[i] = k
    }
    return (outDims, source)
  }

  /// ONNX Slice's starts, ends, axes and steps: attributes before opset 10, constant integer
  /// inputs from it. Entries are kept as the file has them (PyTorch writes INT64_MAX for "to
  /// the end"); `SliceAttributes.resolved` clamps them against the input.
  func sliceAttributes(_ c: ONNXNodeContext) throws -> SliceAttributes {
    func list(_ v: [Int64]) -> [Int] { v.map { Int(clamping: $0) } }
    if opset < 10 {
      func attribute(_ name: String) throws -> [Int]? {
        switch c.node.attributes[name] {
        case nil: return nil
        case .ints(let v): return list(v)
        default: throw c.fail("attribute '\(name)' is not a list of integers")
        }
      }
      guard let s = try attribute("starts"), let e = try attribute("ends") else {
        throw c.fail("'starts' and 'ends' are required")
      }
      return SliceAttributes(starts: s, ends: e, axes: try attribute("axes"))
    }
    func operand(_ k: Int, _ what: String) throws -> [Int]? {
      guard let name = c.input(k) else { return nil }
      guard case .ints(_, let v)? = constants[name] else {
        throw c.fail("\(what) '\(name)' must be a constant integer tensor")
      }
      return list(v)
    }
    guard let s = try operand(1, "starts"), let e = try operand(2, "ends") else {
      throw c.fail("inputs 'starts' and 'ends' are required")
    }
    return SliceAttributes(starts: s, ends: e, axes: try operand(3, "axes"), steps: try operand(4, "steps"))
  }

  /// ONNX Slice over a tensor of `dims`: the output dims and each output position's flat
  /// source index.
  func sliceIndices(_ dims: [Int], _ c: ONNXNodeContext) throws -> ([Int], [Int]) {
    let r: (starts: [Int], steps: [Int], extents: [Int])
    do { r = try sliceAttributes(c).resolved(dims) } catch let e as SliceError { throw c.fail(e.detail) }
    let (offset, strides) = sliceView(inputDims: dims, starts: r.starts, steps: r.steps)
    var walk = StridedWalk(shape: r.extents, strides: strides, offset: offset)
    let source = (0..<r.extents.reduce(1, *)).map { _ in
      defer { walk.advance() }
      return walk.offset
    }
    return (r.extents, source)
  }
}

// MARK: - Folding constants of either kind

extension ONNXImportedConstant {
  /// The values as floats (integers converted).
  var floatValues: [Float] {
    switch self {
    case .floats(let t): return t.scalars
    case .ints(_, let v): return v.map { Float($0) }
    }
  }

  var isFloat: Bool { if case .floats = self { true } else { false } }

  /// A constant of the same kind, of `dims`, whose element i is this one's element `source[i]`.
  func picking(_ source: [Int], dims: [Int]) -> ONNXImportedConstant {
    switch self {
    case .floats(let t):
      let v = t.scalars
      return .floats(Tensor(shape: dims) { o in for i in source.indices { o[i] = v[source[i]] } })
    case .ints(_, let v):
      return .ints(dims: dims, values: source.map { v[$0] })
    }
  }
}

extension ONNXImporter {
  /// GatherND's and ScatterND's index tuples ([..., k], into data's first k axes) as the flat
  /// offsets of the slices they name, and the slices' length; each index checked against its
  /// axis (negative ones count from the end).
  func sliceOffsets(_ c: ONNXNodeContext, data dims: [Int], indices idx: [Int64], dims idims: [Int]) throws -> (
    slice: Int, offsets: [Int]
  ) {
    guard let k = idims.last, k >= 1, k <= dims.count else { throw c.fail("indices of shape \(idims) do not index data \(dims)") }
    let slice = dims[k...].reduce(1, *)
    var strides = [Int](repeating: 1, count: k)
    for a in stride(from: k - 2, through: 0, by: -1) { strides[a] = strides[a + 1] * dims[a + 1] }
    return (
      slice,
      try (0..<(idx.count / k)).map { t in
        var base = 0
        for a in 0..<k {
          let raw = idx[t * k + a]
          let i = raw < 0 ? Int(raw) + dims[a] : Int(raw)
          guard i >= 0, i < dims[a] else { throw c.fail("index \(raw) is out of range for \(dims[a]) entries on axis \(a)") }
          base += i * strides[a]
        }
        return base * slice
      }
    )
  }

  /// Folds the ops that move, pick or compare constants (Transpose, Slice, Gather, GatherND,
  /// Concat, Expand, ScatterND on data of either kind; Range, Not, Pow, Equal, Less, Greater, Where),
  /// every input a constant. Nil where the integer shape-arithmetic path takes the node (it
  /// also tracks where the batch size went), or for an op and kind not folded here. Each
  /// result's size is checked against what is left of the folded budget before it is made.
  func foldMoving(_ c: ONNXNodeContext, _ ins: [String]) throws -> ONNXImportedConstant? {
    let ks = ins.compactMap { constants[$0] }
    guard ks.count == ins.count, let first = ks.first else { return nil }
    let anyFloat = ks.contains { $0.isFloat }
    func budget(_ dims: [Int]) throws -> Int {
      do {
        return try FormatLimits.elementCount(dims, maxElements: FormatLimits.maxFoldedElements - foldedElements)
      } catch {
        throw c.fail("folded result of shape \(dims.prefix(8)) \(error.detail)")
      }
    }
    func ints(_ k: ONNXImportedConstant, _ what: String) throws -> [Int64] {
      guard case .ints(_, let v) = k else { throw c.fail("\(what) must be integers") }
      return v
    }
    func axis(_ a: Int, rank: Int) throws -> Int {
      let r = a < 0 ? a + rank : a
      guard r >= 0, r < rank else { throw c.fail("axis \(a) is out of range for rank \(rank)") }
      return r
    }
    switch c.node.opType {
    case "Transpose":
      guard anyFloat else { return nil }
      let dims = first.dims
      let perm = try c.ints("perm") ?? Array(dims.indices.reversed())
      guard perm.sorted() == Array(dims.indices) else { throw c.fail("perm \(perm) does not permute \(dims.count) axes") }
      _ = try budget(dims)
      let (outDims, source) = permutedIndices(dims, perm)
      return first.picking(source, dims: outDims)
    case "Slice":
      guard anyFloat, first.isFloat else { return nil }
      let (outDims, source) = try sliceIndices(first.dims, c)
      return first.picking(source, dims: outDims)
    case "Gather":
      guard ks.count == 2 else { throw c.fail("needs data and indices") }
      let dims = first.dims
      let a = try c.int("axis", 0)
      if !first.isFloat, dims.count == 1, a == 0 || a == -1 { return nil }
      guard !dims.isEmpty else { throw c.fail("cannot gather from a scalar") }
      let ax = try axis(a, rank: dims.count)
      let indices = try ints(ks[1], "indices")
      let picked = try indices.map { k -> Int in
        let i = k < 0 ? Int(k) + dims[ax] : Int(k)
        guard i >= 0, i < dims[ax] else { throw c.fail("index \(k) is out of range for \(dims[ax]) entries on axis \(ax)") }
        return i
      }
      let outer = dims[..<ax].reduce(1, *)
      let inner = dims[(ax + 1)...].reduce(1, *)
      let outDims = Array(dims[..<ax]) + ks[1].dims + Array(dims[(ax + 1)...])
      _ = try budget(outDims)
      var source: [Int] = []
      source.reserveCapacity(outer * picked.count * inner)
      for o in 0..<outer {
        for i in picked {
          let base = (o * dims[ax] + i) * inner
          for j in 0..<inner { source.append(base + j) }
        }
      }
      return first.picking(source, dims: outDims)
    case "Concat":
      if !anyFloat, ks.allSatisfy({ $0.dims.count == 1 }) { return nil }
      let rank = first.dims.count
      guard rank > 0 else { throw c.fail("cannot concatenate scalars") }
      let ax = try axis(try c.int("axis", 0), rank: rank)
      for k in ks where k.dims.count != rank || !k.dims.indices.allSatisfy({ $0 == ax || k.dims[$0] == first.dims[$0] }) {
        throw c.fail("operands \(first.dims) and \(k.dims) do not concatenate on axis \(ax)")
      }
      var outDims = first.dims
      outDims[ax] = ks.reduce(0) { $0 + $1.dims[ax] }
      _ = try budget(outDims)
      let outer = first.dims[..<ax].reduce(1, *)
      let inner = first.dims[(ax + 1)...].reduce(1, *)
      var offsets: [Int] = []
      var total = 0
      for k in ks {
        offsets.append(total)
        total += k.dims.reduce(1, *)
      }
      var source: [Int] = []
      source.reserveCapacity(outDims.reduce(1, *))
      for o in 0..<outer {
        for (n, k) in ks.enumerated() {
          let run = k.dims[ax] * inner
          for j in 0..<run { source.append(offsets[n] + o * run + j) }
        }
      }
      // Floats when any operand is: an integer operand joins as floats.
      let joined: ONNXImportedConstant
      if anyFloat {
        joined = .floats(try Tensor(shape: [total], values: ks.flatMap(\.floatValues)))
      } else {
        joined = .ints(dims: [total], values: try ks.flatMap { try ints($0, "operands") })
      }
      return joined.picking(source, dims: outDims)
    case "Expand":
      guard ks.count == 2 else { throw c.fail("needs data and a shape") }
      let raw = try ints(ks[1], "shape")
      guard raw.allSatisfy({ $0 >= 0 && $0 <= Int64(Int32.max) }),
        let shape = broadcastShapes(first.dims, raw.map { Int($0) })
      else {
        throw c.fail("shape \(raw.prefix(8)) does not broadcast with the input's \(first.dims)")
      }
      _ = try budget(shape)
      switch first {
      case .floats(let t): return .floats(try t.broadcast(to: shape))
      case .ints(let d, let v):
        // Positions ride through the float broadcast exactly below 2^24.
        guard v.count < 1 << 24 else { throw c.fail("integer data of \(v.count) elements is too large to expand") }
        let source = try Tensor(shape: d, values: v.indices.map { Float($0) }).broadcast(to: shape).scalars
        return .ints(dims: shape, values: source.map { v[Int($0)] })
      }
    case "GatherND":
      // The slices of data at `indices` ([..., k] index tuples into data's first k axes).
      guard ks.count == 2 else { throw c.fail("needs data and indices") }
      guard try c.int("batch_dims", 0) == 0 else { return nil }
      let idims = ks[1].dims
      let (slice, bases) = try sliceOffsets(c, data: first.dims, indices: try ints(ks[1], "indices"), dims: idims)
      let outDims = Array(idims.dropLast()) + Array(first.dims[idims[idims.count - 1]...])
      _ = try budget(outDims)
      return first.picking(bases.flatMap { $0..<($0 + slice) }, dims: outDims)
    case "ScatterND":
      // data with `updates` written at `indices` ([..., k] index tuples into data's first k axes).
      guard ks.count == 3 else { throw c.fail("needs data, indices and updates") }
      // PyTorch 2's exporter writes the default reduction out.
      guard try c.string("reduction", "none") == "none" else { return nil }
      let dims = first.dims
      let idims = ks[1].dims
      let (slice, targets) = try sliceOffsets(c, data: dims, indices: try ints(ks[1], "indices"), dims: idims)
      guard ks[2].dims == Array(idims.dropLast()) + Array(dims[idims[idims.count - 1]...]) else {
        throw c.fail("updates of shape \(ks[2].dims) do not fit indices \(idims) into data \(dims)")
      }
      _ = try budget(dims)
      if first.isFloat || ks[2].isFloat {
        var out = first.floatValues
        let u = ks[2].floatValues
        for (t, base) in targets.enumerated() { for j in 0..<slice { out[base + j] = u[t * slice + j] } }
        return .floats(try Tensor(shape: dims, values: out))
      }
      var out = try ints(first, "data")
      let u = try ints(ks[2], "updates")
      for (t, base) in targets.enumerated() { for j in 0..<slice { out[base + j] = u[t * slice + j] } }
      return .ints(dims: dims, values: out)
    case "Range":
      // The element count, checked as a Double before it becomes an Int (a span of 2^64, or
      // one over a tiny delta, would trap the conversion).
      func count(_ steps: Double) throws -> Int {
        let n = steps.rounded(.up)
        guard n.isFinite, n <= Double(FormatLimits.maxFoldedElements - foldedElements) else {
          throw c.fail("Range of \(n) elements is more than what is left of the \(FormatLimits.maxFoldedElements) elements all folded constants may hold")
        }
        return n <= 0 ? 0 : Int(n)
      }
      guard ks.count == 3, ks.allSatisfy({ $0.dims.reduce(1, *) == 1 }) else {
        throw c.fail("start, limit and delta must be scalars")
      }
      if anyFloat {
        let (s, l, d) = (ks[0].floatValues[0], ks[1].floatValues[0], ks[2].floatValues[0])
        guard d != 0, s.isFinite, l.isFinite, d.isFinite else { throw c.fail("delta is 0 or a bound is not finite") }
        let n = try count((Double(l) - Double(s)) / Double(d))
        return .floats(Tensor(shape: [n]) { o in for i in 0..<n { o[i] = s + Float(i) * d } })
      }
      let (s, l, d) = (try ints(ks[0], "start")[0], try ints(ks[1], "limit")[0], try ints(ks[2], "delta")[0])
      guard d != 0 else { throw c.fail("delta is 0") }
      let n = try count((Double(l) - Double(s)) / Double(d))
      // Every element lies between start and limit, so wrapping arithmetic gives it exactly
      // where i·delta alone would overflow (start Int64.min, delta 2^62).
      return .ints(dims: [n], values: (0..<n).map { s &+ Int64($0) &* d })
    case "Not":
      return .ints(dims: first.dims, values: try ints(first, "input").map { $0 != 0 ? 0 : 1 })
    case "Clip":
      // Bounds as inputs from opset 11 (either may be omitted), attributes before.
      func bound(_ k: Int, _ attribute: String, _ fallback: Float) throws -> Float {
        if c.opset < 11 { return try c.float(attribute, fallback) }
        guard let name = c.input(k), let b = constants[name] else { return fallback }
        guard b.dims.reduce(1, *) == 1 else { throw c.fail("Clip's \(attribute) must be a scalar") }
        return b.floatValues[0]
      }
      let lo = try bound(1, "min", -.infinity)
      let hi = try bound(2, "max", .infinity)
      switch first {
      case .floats(let t): return .floats(try Tensor(shape: t.shape, values: t.scalars.map { min(max($0, lo), hi) }))
      case .ints(let d, let v):
        guard lo.isNaN == false, hi.isNaN == false else { throw c.fail("Clip's bounds are not numbers") }
        // Bounds beyond Int64 (or infinite) clip nothing on that side.
        func integer(_ f: Float) -> Int64 { abs(f) < 0x1p62 ? Int64(f) : (f < 0 ? Int64.min : Int64.max) }
        let (l, h) = (integer(lo), integer(hi))
        return .ints(dims: d, values: v.map { min(max($0, l), h) })
      }
    case "Pow", "Equal", "Less", "Greater":
      guard ks.count == 2 else { throw c.fail("needs two inputs") }
      if !anyFloat, c.node.opType == "Equal" { return nil }
      guard let dims = broadcastShapes(first.dims, ks[1].dims) else {
        throw c.fail("operands \(first.dims) and \(ks[1].dims) do not broadcast")
      }
      _ = try budget(dims)
      let a = try Tensor(shape: first.dims, values: first.floatValues).broadcast(to: dims).scalars
      let b = try Tensor(shape: ks[1].dims, values: ks[1].floatValues).broadcast(to: dims).scalars
      switch c.node.opType {
      case "Pow":
        if !anyFloat {
          // Integer powers stay integers, when exact.
          let r = zip(a, b).map { Foundation.pow(Double($0), Double($1)) }
          guard r.allSatisfy({ $0.isFinite && abs($0) < 0x1p53 && $0 == $0.rounded() }) else { return nil }
          return .ints(dims: dims, values: r.map { Int64($0) })
        }
        return .floats(try Tensor(shape: dims, values: zip(a, b).map { Float(Foundation.pow(Double($0), Double($1))) }))
      case "Equal": return .ints(dims: dims, values: zip(a, b).map { $0 == $1 ? 1 : 0 })
      case "Less": return .ints(dims: dims, values: zip(a, b).map { $0 < $1 ? 1 : 0 })
      default: return .ints(dims: dims, values: zip(a, b).map { $0 > $1 ? 1 : 0 })
      }
    case "Where":
      guard ks.count == 3 else { throw c.fail("needs a condition and two inputs") }
      guard ks[1].isFloat || ks[2].isFloat else { return nil }
      let dims = try [ks[1].dims, ks[2].dims].reduce(first.dims) { s, d in
        guard let b = broadcastShapes(s, d) else { throw c.fail("operands \(s) and \(d) do not broadcast") }
        return b
      }
      _ = try budget(dims)
      let cond = try Tensor(shape: first.dims, values: ints(first, "the condition").map { $0 != 0 ? 1 : 0 })
        .broadcast(to: dims).scalars
      let x = try Tensor(shape: ks[1].dims, values: ks[1].floatValues).broadcast(to: dims).scalars
      let y = try Tensor(shape: ks[2].dims, values: ks[2].floatValues).broadcast(to: dims).scalars
      return .floats(try Tensor(shape: dims, values: cond.indices.map { cond[$0] != 0 ? x[$0] : y[$0] }))
    default:
      return nil
    }
  }
}
