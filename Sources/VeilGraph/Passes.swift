import VeilTensor

/// Rewrites that keep a graph's results and make it cheaper to run. Each pass keeps the
/// graph valid and in topological order, and never changes graph inputs or outputs.
extension Graph {
  /// Folds an inference BatchNormalization into the Conv (or ConvTranspose with groups 1)
  /// that feeds it, when that conv's output has no other reader:
  /// W' = W·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β.
  public mutating func foldBatchNormalization() {
    let consumers = consumers()
    let producers = producers()
    var removed = Set<Int>()
    for (i, bn) in nodes.enumerated() {
      guard case .batchNormalization(let eps) = bn.op, bn.postOps.isEmpty,
        let p = producers[bn.inputs[0]], !removed.contains(p), nodes[p].postOps.isEmpty,
        (consumers[bn.inputs[0]] ?? []).count == 1, !outputs.contains(bn.inputs[0]),
        let gamma = initializers[bn.inputs[1]], let beta = initializers[bn.inputs[2]],
        let mean = initializers[bn.inputs[3]], let variance = initializers[bn.inputs[4]]
      else { continue }
      let conv = nodes[p]
      let isTransposed: Bool
      switch conv.op {
      case .conv: isTransposed = false
      case .convTranspose(let a) where a.groups == 1: isTransposed = true
      default: continue
      }
      guard let w = initializers[conv.inputs[1]] else { continue }
      let oc = gamma.count
      let bias = conv.inputs.count > 2 ? initializers[conv.inputs[2]] : nil
      if conv.inputs.count > 2, bias == nil { continue }
      var factor = [Float](repeating: 0, count: oc)
      for c in 0..<oc {
        factor[c] = gamma.storage.pointer[c] / (variance.storage.pointer[c] + eps).squareRoot()
      }
      let newW = Tensor(shape: w.shape) { out in
        let src = w.storage.pointer
        if isTransposed {
          // [ic, oc, k...]: output channel is the second axis.
          let inner = w.shape.dropFirst(2).reduce(1, *)
          for i0 in 0..<w.shape[0] {
            for c in 0..<oc {
              let base = (i0 * oc + c) * inner
              for k in 0..<inner { out[base + k] = src[base + k] * factor[c] }
            }
          }
        } else {
          let per = w.count / oc
          for c in 0..<oc {
            for k in 0..<per { out[c * per + k] = src[c * per + k] * factor[c] }
          }
        }
      }
      let newB = Tensor(shape: [oc]) { out in
        for c in 0..<oc {
          let b0 = bias?.storage.pointer[c] ?? 0
          out[c] = (b0 - mean.storage.pointer[c]) * factor[c] + beta.storage.pointer[c]
        }
      }
      initializers[conv.inputs[1]] = newW
      var ins = Array(conv.inputs.prefix(2))
      if conv.inputs.count > 2 {
        initializers[conv.inputs[2]] = newB
        ins.append(conv.inputs[2])
      } else {
        ins.append(addInitializer(name: conv.name + ".bias", newB))
      }
      nodes[p].inputs = ins
      // The conv now produces the BatchNorm's output value directly.
      nodes[p].outputs = [bn.outputs[0]]
      removed.insert(i)
    }
    nodes = nodes.indices.filter { !removed.contains($0) }.map { nodes[$0] }
    removeDeadCode()
  }

  /// Drops Identity, inference Dropout and a Pad of nothing (PyTorch's exporter writes one
  /// before every AvgPool2d) by rewiring their readers to their input.
  public mutating func removeIdentities() {
    var replace: [ValueID: ValueID] = [:]
    var keep: [Node] = []
    for n in nodes {
      let passesThrough: Bool
      switch n.op {
      case .identity, .dropout: passesThrough = true
      case .pad(_, let pads, _): passesThrough = pads.allSatisfy { $0 == 0 }
      default: passesThrough = false
      }
      if passesThrough {
        let src = replace[n.inputs[0]] ?? n.inputs[0]
        if outputs.contains(n.outputs[0]) {
          var m = n
          m.inputs[0] = src
          keep.append(m)
        } else {
          replace[n.outputs[0]] = src
        }
      } else {
        var m = n
        m.inputs = m.inputs.map { replace[$0] ?? $0 }
        keep.append(m)
      }
    }
    nodes = keep
  }

  /// ShuffleNet's channel shuffle as ONNX spells it, Reshape [N, C, rest] → [N, g, C/g, rest],
  /// Transpose swapping axes 1 and 2, Reshape back to [N, C, rest], each read only by the next,
  /// becomes one `.channelShuffle(groups: g)`, which runs in its producer's layout: the three
  /// steps need the plain one, and cost a reorder on each side of every shuffle when the
  /// convolutions around it run channels-last or blocked. Needs inferred shapes.
  public mutating func fuseChannelShuffle() {
    let readers = consumers()
    var removed = Set<Int>()
    for (i, n) in nodes.enumerated() {
      guard case .reshape = n.op, let x = n.inputs.first, let xs = shape(x), let vs = shape(n.outputs[0]),
        xs.count >= 2, vs.count == xs.count + 1, vs[0] == xs[0], vs[1] * vs[2] == xs[1], vs[1] > 1,
        Array(vs.dropFirst(3)) == Array(xs.dropFirst(2)), !outputs.contains(n.outputs[0]),
        let r1 = readers[n.outputs[0]], r1.count == 1, case .transpose(let perm) = nodes[r1[0]].op,
        perm == [0, 2, 1] + Array(3..<vs.count), !outputs.contains(nodes[r1[0]].outputs[0]),
        let r2 = readers[nodes[r1[0]].outputs[0]], r2.count == 1, case .reshape = nodes[r2[0]].op,
        shape(nodes[r2[0]].outputs[0]) == xs, nodes[r2[0]].postOps.isEmpty
      else { continue }
      nodes[r2[0]] = Node(
        name: nodes[r2[0]].name, op: .channelShuffle(groups: vs[1]), inputs: [x], outputs: nodes[r2[0]].outputs)
      removed.formUnion([i, r1[0]])
    }
    nodes = nodes.indices.filter { !removed.contains($0) }.map { nodes[$0] }
  }

  /// Moves a zero Pad of the spatial axes into the convolutions and average poolings that
  /// alone read it, as their own padding: PyTorch exports `AvgPool2d(count_include_pad=True)`
  /// with padding as a Pad, then an unpadded AveragePool (Inception v3 has nine), and a Pad
  /// kernel is a full copy of the map. An average pooling takes the padding only when it has
  /// none of its own (or counts its padding too) and does not round its output size up.
  public mutating func foldZeroPadding() {
    let readers = consumers()
    var removed = Set<Int>()
    for (i, n) in nodes.enumerated() {
      guard case .pad(.constant, let pads, let value) = n.op, value == 0, !outputs.contains(n.outputs[0]),
        pads.count % 2 == 0, pads.count >= 6, pads.allSatisfy({ $0 >= 0 })
      else { continue }
      let rank = pads.count / 2
      // Batch and channel unpadded; the rest are the spatial axes.
      guard pads[0] == 0, pads[1] == 0, pads[rank] == 0, pads[rank + 1] == 0,
        let r = readers[n.outputs[0]], !r.isEmpty
      else { continue }
      let begin = Array(pads[2..<rank])
      let end = Array(pads[(rank + 2)...])
      let takes = r.allSatisfy { k in
        let m = nodes[k]
        guard m.inputs.first == n.outputs[0], !m.inputs.dropFirst().contains(n.outputs[0]) else { return false }
        switch m.op {
        case .conv(let a): return a.kernel.count == begin.count
        case .averagePool(let a):
          let unpadded = a.padsBegin.allSatisfy { $0 == 0 } && a.padsEnd.allSatisfy { $0 == 0 }
          return a.kernel.count == begin.count && !a.ceilMode && (unpadded || a.countIncludePad)
        default: return false
        }
      }
      guard takes else { continue }
      // Pads from a file: a sum that overflows leaves the Pad where it is (shape inference then
      // says what is wrong with it).
      func added(_ a: [Int], _ b: [Int]) -> [Int]? {
        let sums = zip(a, b).map { $0.addingReportingOverflow($1) }
        return sums.contains { $0.overflow } ? nil : sums.map(\.partialValue)
      }
      var rewritten: [(Int, Op)] = []
      for k in r {
        switch nodes[k].op {
        case .conv(var a):
          guard let pb = added(a.padsBegin, begin), let pe = added(a.padsEnd, end) else { break }
          (a.padsBegin, a.padsEnd) = (pb, pe)
          rewritten.append((k, .conv(a)))
        case .averagePool(var a):
          guard let pb = added(a.padsBegin, begin), let pe = added(a.padsEnd, end) else { break }
          (a.padsBegin, a.padsEnd) = (pb, pe)
          a.countIncludePad = true
          rewritten.append((k, .averagePool(a)))
        default: break
        }
      }
      guard rewritten.count == r.count else { continue }
      for (k, op) in rewritten {
        nodes[k].op = op
        nodes[k].inputs[0] = n.inputs[0]
      }
      removed.insert(i)
    }
    if !removed.isEmpty { nodes = nodes.indices.filter { !removed.contains($0) }.map { nodes[$0] } }
  }

  /// Fuses into each Conv, and each Gemm, the chain of work that only it feeds: activations,
  /// and a residual Add (as an in-place sum) followed by activations. ConvTranspose takes
  /// activations only; a standalone BatchNormalization one ReLU. A Gemm's output may pass through one Reshape first (a transformer's
  /// [N·tokens, width] rows viewed back as [N, tokens, width]): the Reshape then moves after
  /// the fused work, and a residual is reshaped to the Gemm's rows before it.
  public mutating func fusePostOps() {
    var changed = true
    while changed {
      changed = false
      let consumers = consumers()
      let producers = producers()
      func onlyReader(_ v: ValueID) -> Int? {
        guard !outputs.contains(v), let r = consumers[v], r.count == 1 else { return nil }
        return r[0]
      }
      for (i, n) in nodes.enumerated() {
        let takesSum: Bool
        switch n.op {
        case .conv, .gemm: takesSum = true
        case .convTranspose: takesSum = false
        case .batchNormalization:
          // A ReLU only (a pre-activation network's BatchNorm → ReLU), and once.
          guard n.postOps.isEmpty, let r = onlyReader(n.outputs[0]), case .activation(.relu) = nodes[r].op else { continue }
          takesSum = false
        default: continue
        }
        let out = n.outputs[0]
        guard var j = onlyReader(out) else { continue }
        // Gemm → Reshape → work: the work reads the Reshape's output.
        var view: Int? = nil
        if case .gemm = n.op, case .reshape = nodes[j].op, let k = onlyReader(nodes[j].outputs[0]) {
          view = j
          j = k
        }
        let next = nodes[j]
        let seen = view.map { nodes[$0].outputs[0] } ?? out
        guard next.postOps.isEmpty, let outShape = shape(out) else { continue }
        var merged = n
        var residualView: Node? = nil
        switch next.op {
        case .activation(let a):
          merged.postOps.append(.activation(a))
        case .binary(.add) where takesSum && !n.postOps.contains(.sum):
          let other = next.inputs[0] == seen ? next.inputs[1] : next.inputs[0]
          guard other != seen, let otherShape = shape(other), otherShape == shape(seen), !isConstant(other) else { continue }
          // The residual must already be computed before the op runs.
          if let q = producers[other], q > i { continue }
          if view == nil {
            merged.inputs.append(other)
          } else {
            // The residual as the Gemm's [rows, width] (-1 rows: the graph still re-batches).
            let rows = addValue(name: self[other].name + "/rows", shape: outShape)
            residualView = Node(
              name: n.name + "/residual_rows", op: .reshape(shape: [-1, outShape[outShape.count - 1]]), inputs: [other],
              outputs: [rows])
            merged.inputs.append(rows)
          }
          merged.postOps.append(.sum)
        default:
          continue
        }
        if let v = view {
          // The Reshape now views the fused result and yields what the work yielded.
          nodes[v].outputs = next.outputs
        } else {
          merged.outputs = next.outputs
        }
        nodes[i] = merged
        nodes.remove(at: j)
        if let r = residualView { nodes.insert(r, at: i) }
        changed = true
        break
      }
    }
  }

  /// Gives a constant operand of an element-wise op the rank of the op's output, with leading
  /// 1s (a per-channel [C, 1, 1] becomes [1, C, 1, 1]: BatchNorm written as Mul and Add, as the
  /// ONNX model zoo's DenseNet and Inception do). Same values, same broadcast; a backend can
  /// then read it in the other operand's (blocked) arrangement instead of reordering that one
  /// to plain and back. A constant another node also reads is copied under a new name.
  mutating func alignConstantRanks() {
    for i in nodes.indices {
      guard case .binary = nodes[i].op, nodes[i].inputs.count == 2, let out = shape(nodes[i].outputs[0]) else { continue }
      for k in 0..<2 {
        let v = nodes[i].inputs[k]
        guard let t = initializers[v], t.rank < out.count, let padded = try? t.reshaped(Array(repeating: 1, count: out.count - t.rank) + t.shape)
        else { continue }
        let readers = nodes.filter { $0.inputs.contains(v) }.count
        if readers == 1, !outputs.contains(v) {
          initializers[v] = padded
          self[v].shape = padded.shape
        } else {
          nodes[i].inputs[k] = addInitializer(name: self[v].name + "/rank\(out.count)", padded)
        }
      }
    }
  }

  /// Turns BatchNorm written out as Mul by a per-channel constant then Add of one (the ONNX
  /// model zoo's DenseNet and Inception) into one BatchNormalization (mean 0, variance 1, ε 0),
  /// or into the BatchNorm it follows (Caffe2's SpatialBN and scale layer), which
  /// `foldBatchNormalization` then folds into the convolution before it where there is one, and
  /// which otherwise runs as one pass over the map instead of three. Only where the
  /// Mul's result has no other reader and both constants are per channel ([1, C, 1, …] or one
  /// value) of a map of rank ≥ 3.
  mutating func fuseChannelAffine() {
    let consumers = consumers()
    let producers = producers()
    var removed = Set<Int>()
    func perChannel(_ v: ValueID, _ c: Int, rank: Int) -> Tensor? {
      guard let t = initializers[v], t.rank == rank, t.shape.enumerated().allSatisfy({ $0.offset == 1 || $0.element == 1 }),
        t.shape[1] == c || t.shape[1] == 1
      else { return nil }
      return t.shape[1] == c ? try? t.reshaped([c]) : Tensor(shape: [c], repeating: t.storage.pointer[0])
    }
    for (i, mul) in nodes.enumerated() where !removed.contains(i) {
      guard case .binary(.mul) = mul.op, mul.postOps.isEmpty, let out = shape(mul.outputs[0]), out.count >= 3,
        !outputs.contains(mul.outputs[0]), let readers = consumers[mul.outputs[0]], readers.count == 1,
        case .binary(.add) = nodes[readers[0]].op, nodes[readers[0]].postOps.isEmpty
      else { continue }
      let c = out[1]
      let (x, sv) = initializers[mul.inputs[0]] == nil ? (mul.inputs[0], mul.inputs[1]) : (mul.inputs[1], mul.inputs[0])
      let add = nodes[readers[0]]
      let tv = add.inputs[0] == mul.outputs[0] ? add.inputs[1] : add.inputs[0]
      guard initializers[x] == nil, shape(x) == out, shape(add.outputs[0]) == out, add.inputs.contains(mul.outputs[0]),
        let scale = perChannel(sv, c, rank: out.count), let shift = perChannel(tv, c, rank: out.count)
      else { continue }
      // After a BatchNorm (Caffe2's SpatialBN then a scale layer): s·(γ·x̂ + β) + t is a
      // BatchNorm of scale s·γ and shift s·β + t.
      if let p = producers[x], !removed.contains(p), case .batchNormalization = nodes[p].op, nodes[p].postOps.isEmpty,
        consumers[x]?.count == 1, !outputs.contains(x), let gamma = initializers[nodes[p].inputs[1]],
        let beta = initializers[nodes[p].inputs[2]], gamma.count == c, beta.count == c
      {
        let (s, t, g, b) = (scale.scalars, shift.scalars, gamma.scalars, beta.scalars)
        var bn = nodes[p]
        bn.inputs[1] = addInitializer(name: bn.name + "/scaled", Tensor(shape: [c]) { o in for k in 0..<c { o[k] = s[k] * g[k] } })
        bn.inputs[2] = addInitializer(name: bn.name + "/shifted", Tensor(shape: [c]) { o in for k in 0..<c { o[k] = s[k] * b[k] + t[k] } })
        bn.outputs = add.outputs
        nodes[p] = bn
        removed.formUnion([i, readers[0]])
        continue
      }
      let ins = [
        x, addInitializer(name: mul.name + "/scale", scale), addInitializer(name: mul.name + "/shift", shift),
        addInitializer(name: mul.name + "/mean", Tensor(zeros: [c])),
        addInitializer(name: mul.name + "/variance", Tensor(shape: [c], repeating: 1)),
      ]
      nodes[i] = Node(name: mul.name, op: .batchNormalization(epsilon: 0), inputs: ins, outputs: add.outputs)
      removed.insert(readers[0])
    }
    nodes = nodes.indices.filter { !removed.contains($0) }.map { nodes[$0] }
    removeDeadCode()
  }

  /// The standard inference pipeline: identities out, zero padding folded into the convolution
  /// after it, channel shuffles fused, constants' ranks aligned, per-channel Mul and Add folded
  /// into one affine step, BatchNorm folded into the convolution before it, post-ops (bias,
  /// activations, residual adds) fused into the op that produces their input.
  public mutating func optimizeForInference() throws {
    try sortTopologically()
    removeIdentities()
    foldZeroPadding()
    try inferShapes()
    fuseChannelShuffle()
    alignConstantRanks()
    fuseChannelAffine()
    foldBatchNormalization()
    // Fusion compares shapes (a residual must have the output's).
    try inferShapes()
    fusePostOps()
    try inferShapes()
  }
}
