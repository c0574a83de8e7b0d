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

  /// Drops Identity and inference Dropout by rewiring their readers to their input.
  public mutating func removeIdentities() {
    var replace: [ValueID: ValueID] = [:]
    var keep: [Node] = []
    for n in nodes {
      switch n.op {
      case .identity, .dropout:
        let src = replace[n.inputs[0]] ?? n.inputs[0]
        if outputs.contains(n.outputs[0]) {
          var m = n
          m.inputs[0] = src
          keep.append(m)
        } else {
          replace[n.outputs[0]] = src
        }
      default:
        var m = n
        m.inputs = m.inputs.map { replace[$0] ?? $0 }
        keep.append(m)
      }
    }
    nodes = keep
  }

  /// Fuses into each Conv, and each Gemm, the chain of work that only it feeds: activations,
  /// and a residual Add (as an in-place sum) followed by activations. ConvTranspose takes
  /// activations only. A Gemm's output may pass through one Reshape first (a transformer's
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

  /// The standard inference pipeline: identities out, BatchNorm folded, post-ops fused.
  public mutating func optimizeForInference() throws {
    try sortTopologically()
    removeIdentities()
    foldBatchNormalization()
    // Fusion compares shapes (a residual must have the output's).
    try inferShapes()
    fusePostOps()
    try inferShapes()
  }
}
