import VeilTensor

/// Multi-head self-attention written out as ONNX ops over one packed projection, as the zoo's
/// vision transformers (`NetworkBuilder.selfAttention`) write it:
///
///     qkv [N, T, W] ─ Slice (last axis, width D) ─ Reshape [N, T, h, d] ─ Transpose [0,2,1,3]   (Q, K, V)
///     K ─ Transpose [0,1,3,2]   (or the Reshape ─ Transpose [0,2,3,1])
///     MatMul(Q, Kᵀ) ─ Mul (or Div) by a one-element constant ─ Softmax(last axis) ─ MatMul(·, V)
///       ─ Transpose [0,2,1,3] → [N, T, h, d]
///
/// The executor runs a match as one backend kernel (`ComputeBackend.attention`) that reads Q,
/// K and V where they lie in `qkv` and writes the heads side by side, so the slices and
/// transposes move no data. Anything else (another reader of an intermediate, a graph output
/// or retained value inside, other permutations, strides or axes) is left to the ops.
struct AttentionMatch {
  /// The packed projection [N, T, W] and the merged result [N, T, h, d].
  var qkv: ValueID
  var output: ValueID
  var batch: Int
  var tokens: Int
  var heads: Int
  var headWidth: Int
  var packedWidth: Int
  /// Where Q, K and V start on the last axis of `qkv`.
  var offsets: [Int]
  var scale: Float
  /// The nodes the kernel replaces; `last` computes `output`.
  var nodes: Set<Int>
  var last: Int
}

extension Graph {
  /// The attention blocks of the graph that match exactly (see `AttentionMatch`). Values in
  /// `keep` (retained ones) must stay computed, so a block that holds one does not match.
  func attentionMatches(keeping keep: Set<ValueID>) -> [AttentionMatch] {
    let producers = producers()
    let consumers = consumers()
    /// The node producing `v` when it is an op of the kind asked and `v` has no other use.
    func single(_ v: ValueID) -> Int? {
      guard let p = producers[v], nodes[p].postOps.isEmpty, !outputs.contains(v), !keep.contains(v),
        consumers[v]?.count == 1
      else { return nil }
      return p
    }
    func transpose(_ v: ValueID, _ perm: [Int]) -> Int? {
      guard let p = single(v), case .transpose(let q) = nodes[p].op, q == perm else { return nil }
      return p
    }
    /// Slice ─ Reshape [N, T, h, d] of the packed value: (qkv, offset, reshape, slice).
    func head(_ v: ValueID) -> (qkv: ValueID, offset: Int, nodes: [Int], dims: [Int])? {
      guard let r = single(v), case .reshape = nodes[r].op, let dims = shape(v), dims.count == 4,
        let s = single(nodes[r].inputs[0]), case .slice(let a) = nodes[s].op
      else { return nil }
      let packed = nodes[s].inputs[0]
      guard let ps = shape(packed), ps.count == 3, let cut = try? a.resolved(ps),
        cut.steps.allSatisfy({ $0 == 1 }), cut.starts[0] == 0, cut.starts[1] == 0,
        cut.extents == [ps[0], ps[1], dims[2] * dims[3]], dims[0] == ps[0], dims[1] == ps[1]
      else { return nil }
      return (packed, cut.starts[2], [s, r], dims)
    }
    var found: [AttentionMatch] = []
    for (last, merge) in nodes.enumerated() {
      guard case .transpose(let perm) = merge.op, perm == [0, 2, 1, 3], merge.postOps.isEmpty,
        let mix = single(merge.inputs[0]), case .matMul = nodes[mix].op,
        let soft = single(nodes[mix].inputs[0]), case .softmax(let axis) = nodes[soft].op, axis == -1 || axis == 3,
        let scaled = single(nodes[soft].inputs[0]), case .binary(let kind) = nodes[scaled].op, kind == .mul || kind == .div
      else { continue }
      // The scale: a one-element constant (the divisor of a Div, either factor of a Mul).
      let (a, b) = (nodes[scaled].inputs[0], nodes[scaled].inputs[1])
      let constantSide: ValueID
      let scoresValue: ValueID
      if let t = initializers[b], t.count == 1 {
        (constantSide, scoresValue) = (b, a)
      } else if kind == .mul, let t = initializers[a], t.count == 1 {
        (constantSide, scoresValue) = (a, b)
      } else {
        continue
      }
      let c = initializers[constantSide]!.storage.pointer[0]
      guard c.isFinite, c != 0 || kind == .mul else { continue }
      guard let scores = single(scoresValue), case .matMul = nodes[scores].op else { continue }
      // Q and V: Slice ─ Reshape ─ Transpose [0,2,1,3].
      guard let qT = transpose(nodes[scores].inputs[0], [0, 2, 1, 3]), let q = head(nodes[qT].inputs[0]),
        let vT = transpose(nodes[mix].inputs[1], [0, 2, 1, 3]), let v = head(nodes[vT].inputs[0])
      else { continue }
      // Kᵀ: Transpose [0,1,3,2] of the heads, or one Transpose [0,2,3,1] of the Reshape.
      var kNodes: [Int]
      let k: (qkv: ValueID, offset: Int, nodes: [Int], dims: [Int])
      if let t2 = transpose(nodes[scores].inputs[1], [0, 1, 3, 2]), let t1 = transpose(nodes[t2].inputs[0], [0, 2, 1, 3]),
        let h = head(nodes[t1].inputs[0])
      {
        (kNodes, k) = ([t1, t2], h)
      } else if let t = transpose(nodes[scores].inputs[1], [0, 2, 3, 1]), let h = head(nodes[t].inputs[0]) {
        (kNodes, k) = ([t], h)
      } else {
        continue
      }
      guard q.qkv == k.qkv, q.qkv == v.qkv, q.dims == k.dims, q.dims == v.dims, let packed = shape(q.qkv) else { continue }
      kNodes += k.nodes
      let all = Set([last, mix, soft, scaled, scores, qT, vT] + q.nodes + v.nodes + kNodes)
      found.append(
        AttentionMatch(
          qkv: q.qkv, output: merge.outputs[0], batch: q.dims[0], tokens: q.dims[1], heads: q.dims[2],
          headWidth: q.dims[3], packedWidth: packed[2], offsets: [q.offset, k.offset, v.offset],
          scale: kind == .mul ? c : 1 / c, nodes: all, last: last))
    }
    return found
  }
}
