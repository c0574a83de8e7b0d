import Foundation
import Synchronization
import VeilTensor

/// A second backend: plain loops over plain row-major float32 tensors, written from the ops'
/// definitions (ONNX's, in the terms the seams pass) and nothing else. It proves the seams:
/// the executor compiles and runs a graph on it (`ComputeBackend`), and VeilTrain trains on it
/// (`TrainingBackend`, ReferenceTrainingBackend.swift), without either naming it, exactly as
/// they do on oneDNN; the op table and the training tests compare the two. Slow by design;
/// tests only.
///
/// Convolutions and pooling are 2-D (NCHW); every layout it states is `.plain`, so the
/// executor never inserts a reorder other than plain to plain.
public final class ReferenceBackend: ComputeBackend {
  public let name = "reference (plain loops)"
  /// As oneDNN's, so that the op table runs the same graphs on both.
  public let maxRank = 12
  /// Matrix products run here (`multiplyAccumulate`), so a test can tell that a model computed
  /// on this backend and not on a process-wide one.
  public var matrixProducts: Int { products.withLock { $0 } }
  let products = Mutex(0)

  public init() {}

  // MARK: - Convolution

  public func convolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp], outputDims: [Int]
  ) throws -> Kernel {
    guard inputDims.count == 4, outputDims.count == 4, weights.rank == 4 else {
      throw TensorError.invalidArgument("reference convolution: 2-D only (input \(inputDims), weights \(weights.shape))")
    }
    let (n, ic, ih, iw) = (inputDims[0], inputDims[1], inputDims[2], inputDims[3])
    let (oc, oh, ow) = (outputDims[1], outputDims[2], outputDims[3])
    let g = spec.groups
    let (kh, kw) = (weights.shape[2], weights.shape[3])
    let (icg, ocg) = (ic / g, oc / g)
    let (sy, sx, dy, dx, py, px) = (
      spec.strides[0], spec.strides[1], spec.dilations[0], spec.dilations[1], spec.padsBegin[0], spec.padsBegin[1]
    )
    let w = weights.scalars
    let b = bias?.scalars ?? [Float](repeating: 0, count: oc)
    let hasSum = postOps.contains(.sum)
    let transposed = spec.transposed
    let ins = hasSum ? [Layout.plain(inputDims), .plain(outputDims)] : [.plain(inputDims)]
    let name = (transposed ? "RefConvTranspose" : "RefConv") + postOps.map { "+\($0)" }.joined()
    return LoopKernel(name: name, inputs: ins, output: .plain(outputDims), constantBytes: (w.count + b.count) * 4) { i, y in
      let x = i[0]
      var acc = [Float](repeating: 0, count: n * oc * oh * ow)
      // Every pixel of the strided side (the output for Conv, the input for ConvTranspose)
      // meets, through tap (ky, kx), the pixel (y·sy − py + ky·dy, x·sx − px + kx·dx) of the
      // other side where that lies inside it. Called with offsets into each side's plane and
      // the tap's offset into the kernel.
      func forEachTap(strided sh: Int, _ sw: Int, reached rh: Int, _ rw: Int, _ body: (Int, Int, Int) -> Void) {
        for y0 in 0..<sh {
          for x0 in 0..<sw {
            for ky in 0..<kh {
              let ry = y0 * sy - py + ky * dy
              guard ry >= 0, ry < rh else { continue }
              for kx in 0..<kw {
                let rx = x0 * sx - px + kx * dx
                guard rx >= 0, rx < rw else { continue }
                body(y0 * sw + x0, ky * kw + kx, ry * rw + rx)
              }
            }
          }
        }
      }
      let (inPlane, outPlane, taps) = (ih * iw, oh * ow, kh * kw)
      for b0 in 0..<n {
        for gi in 0..<g {
          for co in 0..<ocg {
            let o = gi * ocg + co
            for ci in 0..<icg {
              let c = gi * icg + ci
              let (src, dst) = ((b0 * ic + c) * inPlane, (b0 * oc + o) * outPlane)
              if transposed {
                // ONNX ConvTranspose weights are [in, out/groups, kh, kw]: each input pixel
                // scatters into the outputs it reaches.
                let wk = (c * ocg + co) * taps
                forEachTap(strided: ih, iw, reached: oh, ow) { p, t, q in acc[dst + q] += x[src + p] * w[wk + t] }
              } else {
                // Conv weights are [out, in/groups, kh, kw]: each output pixel gathers.
                let wk = (o * icg + ci) * taps
                forEachTap(strided: oh, ow, reached: ih, iw) { p, t, q in acc[dst + p] += x[src + q] * w[wk + t] }
              }
            }
          }
        }
      }
      let plane = oh * ow
      for k in acc.indices {
        y[k] = Self.applying(postOps, to: acc[k] + b[(k / plane) % oc], residual: hasSum ? i[1][k] : 0)
      }
    }
  }

  /// `v` after `postOps` in order, a `.sum` adding `residual`.
  static func applying(_ postOps: [PostOp], to v: Float, residual: Float) -> Float {
    var v = v
    for op in postOps {
      switch op {
      case .sum: v += residual
      case .activation(let a): v = a.apply(v)
      }
    }
    return v
  }

  // MARK: - Element-wise and normalization

  public func activation(_ activation: Activation, input: Layout) throws -> Kernel {
    let dims = try plainDims(input, "activation")
    return LoopKernel(name: "Ref\(activation)", inputs: [input], output: input) { i, y in
      for k in 0..<count(dims) { y[k] = activation.apply(i[0][k]) }
    }
  }

  public func batchNormalization(
    input: Layout, scale: Tensor, bias: Tensor, mean: Tensor, variance: Tensor, epsilon: Float, relu: Bool
  ) throws -> Kernel {
    let dims = try plainDims(input, "BatchNormalization")
    let (c, inner) = (dims[1], dims.dropFirst(2).reduce(1, *))
    let (g, b, m, v) = (scale.scalars, bias.scalars, mean.scalars, variance.scalars)
    let name = relu ? "RefBatchNormalization+Relu" : "RefBatchNormalization"
    return LoopKernel(name: name, inputs: [input], output: input, constantBytes: 16 * c) { i, y in
      for k in 0..<count(dims) {
        let ch = (k / inner) % c
        let z = g[ch] * (i[0][k] - m[ch]) / (v[ch] + epsilon).squareRoot() + b[ch]
        y[k] = relu ? max(z, 0) : z
      }
    }
  }

  public func layerNormalization(input: Layout, scale: Tensor, bias: Tensor?, epsilon: Float) throws -> Kernel {
    let dims = try plainDims(input, "LayerNormalization")
    let c = dims[dims.count - 1]
    let (g, b) = (scale.scalars, bias?.scalars ?? [Float](repeating: 0, count: c))
    return LoopKernel(name: "RefLayerNormalization", inputs: [input], output: input, constantBytes: 8 * c) { i, y in
      for row in 0..<(count(dims) / c) {
        var (mean, square) = (0.0, 0.0)
        for k in 0..<c { mean += Double(i[0][row * c + k]) }
        mean /= Double(c)
        for k in 0..<c { square += (Double(i[0][row * c + k]) - mean) * (Double(i[0][row * c + k]) - mean) }
        let invStd = 1 / (square / Double(c) + Double(epsilon)).squareRoot()
        for k in 0..<c { y[row * c + k] = Float((Double(i[0][row * c + k]) - mean) * invStd) * g[k] + b[k] }
      }
    }
  }

  public func binary(_ kind: BinaryKind, a: Layout, b: Layout, outputDims: [Int]) throws -> Kernel {
    let (ad, bd) = (try plainDims(a, "binary"), try plainDims(b, "binary"))
    let rank = outputDims.count
    // Numpy broadcasting: an operand's axis of extent 1 (or missing) repeats.
    func strides(_ d: [Int]) throws -> [Int] {
      let padded = [Int](repeating: 1, count: rank - d.count) + d
      guard zip(padded, outputDims).allSatisfy({ $0 == $1 || $0 == 1 }) else {
        throw TensorError.shapeMismatch(what: "reference \(kind)", expected: "dims broadcastable to \(outputDims)", found: "\(d)")
      }
      let s = rowMajorStrides(padded)
      return (0..<rank).map { padded[$0] == 1 ? 0 : s[$0] }
    }
    let (sa, sb) = (try strides(ad), try strides(bd))
    return LoopKernel(name: "Ref\(kind)", inputs: [a, b], output: .plain(outputDims)) { i, y in
      forEachIndex(outputDims) { idx, k in
        var (ka, kb) = (0, 0)
        for d in 0..<rank {
          ka += idx[d] * sa[d]
          kb += idx[d] * sb[d]
        }
        let (p, q) = (i[0][ka], i[1][kb])
        switch kind {
        case .add: y[k] = p + q
        case .sub: y[k] = p - q
        case .mul: y[k] = p * q
        case .div: y[k] = p / q
        }
      }
    }
  }

  public func localResponseNormalization(size: Int, alpha: Float, beta: Float, k: Float, input: Layout) throws -> Kernel {
    let dims = try plainDims(input, "LRN")
    let (c, inner) = (dims[1], dims.dropFirst(2).reduce(1, *))
    // ONNX: the window is channels [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉].
    let (before, after) = ((size - 1) / 2, size / 2)
    return LoopKernel(name: "RefLRN", inputs: [input], output: input) { i, y in
      for e in 0..<count(dims) {
        let ch = (e / inner) % c
        let base = e - ch * inner
        var s: Float = 0
        for cc in max(0, ch - before)...min(c - 1, ch + after) {
          let v = i[0][base + cc * inner]
          s += v * v
        }
        y[e] = i[0][e] / powf(k + alpha / Float(size) * s, beta)
      }
    }
  }

  public func softmax(axis: Int, input: Layout) throws -> Kernel {
    let dims = try plainDims(input, "Softmax")
    let (extent, inner) = (dims[axis], dims.dropFirst(axis + 1).reduce(1, *))
    let outer = dims.prefix(axis).reduce(1, *)
    return LoopKernel(name: "RefSoftmax", inputs: [input], output: input) { i, y in
      for o in 0..<outer {
        for r in 0..<inner {
          let at = { (j: Int) in (o * extent + j) * inner + r }
          let m = (0..<extent).map { i[0][at($0)] }.max() ?? 0
          var s: Float = 0
          for j in 0..<extent {
            y[at(j)] = expf(i[0][at(j)] - m)
            s += y[at(j)]
          }
          for j in 0..<extent { y[at(j)] /= s }
        }
      }
    }
  }

  public func attention(
    batch n: Int, tokens t: Int, heads h: Int, headWidth hd: Int, packedWidth w: Int, offsets: [Int], scale: Float
  ) throws -> Kernel {
    guard offsets.count == 3, offsets.allSatisfy({ $0 >= 0 && $0 + h * hd <= w }) else {
      throw TensorError.invalidArgument("reference attention: offsets \(offsets) of \(h)×\(hd) heads in width \(w)")
    }
    let (oq, ok, ov) = (offsets[0], offsets[1], offsets[2])
    // The second input (working memory for the scores) goes unused: rows are done one by one.
    let ins = [Layout.plain([n, t, w]), .plain([n, h, t, t])]
    return LoopKernel(name: "RefAttention", inputs: ins, output: .plain([n, t, h, hd])) { i, y in
      let x = i[0]
      var p = [Float](repeating: 0, count: t)
      for b in 0..<n {
        for head in 0..<h {
          let c = head * hd
          for r in 0..<t {
            for u in 0..<t {
              var s: Float = 0
              for e in 0..<hd { s += x[(b * t + r) * w + oq + c + e] * x[(b * t + u) * w + ok + c + e] }
              p[u] = scale * s
            }
            let m = p.max() ?? 0
            var z: Float = 0
            for u in 0..<t {
              p[u] = expf(p[u] - m)
              z += p[u]
            }
            for e in 0..<hd {
              var s: Float = 0
              for u in 0..<t { s += p[u] * x[(b * t + u) * w + ov + c + e] }
              y[((b * t + r) * h + head) * hd + e] = s / z
            }
          }
        }
      }
    }
  }

  // MARK: - Pooling, concat, resize

  public func pooling(_ spec: PoolingSpec, input: Layout, outputDims: [Int]) throws -> Kernel {
    let dims = try plainDims(input, "pooling")
    guard dims.count == 4, spec.kernel.count == 2 else {
      throw TensorError.invalidArgument("reference pooling: 2-D only (input \(dims))")
    }
    let (ih, iw, oh, ow) = (dims[2], dims[3], outputDims[2], outputDims[3])
    let planes = dims[0] * dims[1]
    return LoopKernel(name: "RefPool", inputs: [input], output: .plain(outputDims)) { i, y in
      for p in 0..<planes {
        for oy in 0..<oh {
          for ox in 0..<ow {
            let y0 = oy * spec.strides[0] - spec.padsBegin[0]
            let x0 = ox * spec.strides[1] - spec.padsBegin[1]
            var (best, sum, inside) = (-Float.infinity, Float(0), 0)
            for yy in max(y0, 0)..<min(y0 + spec.kernel[0], ih) {
              for xx in max(x0, 0)..<min(x0 + spec.kernel[1], iw) {
                let v = i[0][(p * ih + yy) * iw + xx]
                best = max(best, v)
                sum += v
                inside += 1
              }
            }
            let out: Float
            switch spec.kind {
            case .max: out = best
            case .average(let includePad):
              // Counting the pads: the window's extent clipped to the padded input.
              let hy = min(y0 + spec.kernel[0], ih + spec.padsEnd[0]) - y0
              let hx = min(x0 + spec.kernel[1], iw + spec.padsEnd[1]) - x0
              out = sum / Float(includePad ? hy * hx : inside)
            }
            y[(p * oh + oy) * ow + ox] = out
          }
        }
      }
    }
  }

  public func concat(axis: Int, inputs: [Layout]) throws -> Kernel {
    let all = try inputs.map { try plainDims($0, "Concat") }
    guard var out = all.first else { throw TensorError.invalidArgument("Concat of no inputs") }
    out[axis] = all.reduce(0) { $0 + $1[axis] }
    let outer = out.prefix(axis).reduce(1, *)
    let rows = all.map { $0.suffix(from: axis).reduce(1, *) }
    let outRow = out.suffix(from: axis).reduce(1, *)
    return LoopKernel(name: "RefConcat", inputs: inputs, output: .plain(out)) { i, y in
      for o in 0..<outer {
        var at = o * outRow
        for (k, r) in rows.enumerated() {
          for e in 0..<r { y[at + e] = i[k][o * r + e] }
          at += r
        }
      }
    }
  }

  public func resize(_ kind: ResizeKind, input: Layout, outputDims: [Int]) throws -> Kernel {
    let dims = try plainDims(input, "Resize")
    guard dims.count == 4 else { throw TensorError.invalidArgument("reference Resize: 2-D only (input \(dims))") }
    let (ih, iw, oh, ow) = (dims[2], dims[3], outputDims[2], outputDims[3])
    let planes = dims[0] * dims[1]
    // Source coordinate of an output one along an axis of extent `n` resized to `m`.
    func taps(_ n: Int, _ m: Int) -> [(Int, Int, Float)] {
      (0..<m).map { o in
        let scale = Float(n) / Float(m)
        if kind == .nearest { return (min(o * n / m, n - 1), 0, 0) }  // asymmetric, floor
        let s = max((Float(o) + 0.5) * scale - 0.5, 0)
        let i0 = min(Int(s), n - 1)
        return (i0, min(i0 + 1, n - 1), s - Float(i0))
      }
    }
    let (ty, tx) = (taps(ih, oh), taps(iw, ow))
    return LoopKernel(name: "RefResize", inputs: [input], output: .plain(outputDims)) { i, y in
      for p in 0..<planes {
        for (oy, (y0, y1, fy)) in ty.enumerated() {
          for (ox, (x0, x1, fx)) in tx.enumerated() {
            let at = { (yy: Int, xx: Int) in i[0][(p * ih + yy) * iw + xx] }
            let top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
            let bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
            y[(p * oh + oy) * ow + ox] = kind == .nearest ? at(y0, x0) : top * (1 - fy) + bottom * fy
          }
        }
      }
    }
  }

  // MARK: - Dense layers

  public func innerProduct(inputDims: [Int], weights: Tensor, bias: Tensor?, postOps: [PostOp]) throws -> Kernel {
    guard inputDims.count == 2, weights.rank == 2, weights.shape[1] == inputDims[1] else {
      throw TensorError.shapeMismatch(what: "reference Gemm", expected: "[out, \(inputDims.last ?? 0)]", found: "\(weights.shape)")
    }
    let (n, k, o) = (inputDims[0], inputDims[1], weights.shape[0])
    let w = weights.scalars
    let b = bias?.scalars ?? [Float](repeating: 0, count: o)
    let hasSum = postOps.contains(.sum)
    let ins = hasSum ? [Layout.plain(inputDims), .plain([n, o])] : [.plain(inputDims)]
    let name = "RefGemm" + postOps.map { "+\($0)" }.joined()
    return LoopKernel(name: name, inputs: ins, output: .plain([n, o]), constantBytes: 4 * (w.count + o)) { i, y in
      for r in 0..<n {
        for c in 0..<o {
          var s = b[c]
          for e in 0..<k { s += i[0][r * k + e] * w[c * k + e] }
          y[r * o + c] = Self.applying(postOps, to: s, residual: hasSum ? i[1][r * o + c] : 0)
        }
      }
    }
  }

  public func matmul(a: [Int], b: [Int], outputDims: [Int]) throws -> Kernel {
    let rank = outputDims.count
    let pa = [Int](repeating: 1, count: rank - a.count) + a
    let pb = [Int](repeating: 1, count: rank - b.count) + b
    let (m, k, n) = (pa[rank - 2], pa[rank - 1], pb[rank - 1])
    guard pb[rank - 2] == k else {
      throw TensorError.shapeMismatch(what: "reference MatMul", expected: "[…, \(k), n]", found: "\(b)")
    }
    let batch = Array(outputDims.prefix(rank - 2))
    // Broadcast batch axes: an operand's axis of extent 1 repeats.
    func batchStrides(_ d: [Int]) -> [Int] {
      let s = rowMajorStrides(Array(d.prefix(rank - 2)))
      return (0..<(rank - 2)).map { d[$0] == 1 ? 0 : s[$0] }
    }
    let (sa, sb) = (batchStrides(pa), batchStrides(pb))
    return LoopKernel(name: "RefMatMul", inputs: [.plain(a), .plain(b)], output: .plain(outputDims)) { i, y in
      forEachIndex(batch) { idx, q in
        let ia = zip(idx, sa).reduce(0) { $0 + $1.0 * $1.1 } * m * k
        let ib = zip(idx, sb).reduce(0) { $0 + $1.0 * $1.1 } * k * n
        for r in 0..<m {
          for c in 0..<n {
            var s: Float = 0
            for e in 0..<k { s += i[0][ia + r * k + e] * i[1][ib + e * n + c] }
            y[(q * m + r) * n + c] = s
          }
        }
      }
    }
  }

  // MARK: - Data movement

  public func pad(mode: PadMode, value: Float, pads: [Int], inputDims: [Int]) throws -> Kernel {
    let rank = inputDims.count
    guard pads.count == 2 * rank else {
      throw TensorError.invalidArgument("reference Pad: \(pads.count) pads for rank \(rank)")
    }
    let out = (0..<rank).map { inputDims[$0] + pads[$0] + pads[rank + $0] }
    let s = rowMajorStrides(inputDims)
    return LoopKernel(name: "RefPad", inputs: [.plain(inputDims)], output: .plain(out)) { i, y in
      forEachIndex(out) { idx, k in
        var at = 0
        for d in 0..<rank {
          var j = idx[d] - pads[d]
          let n = inputDims[d]
          if j < 0 || j >= n {
            switch mode {
            case .constant:
              y[k] = value
              return
            case .reflect: j = j < 0 ? -j : 2 * (n - 1) - j
            case .edge: j = min(max(j, 0), n - 1)
            }
          }
          at += j * s[d]
        }
        y[k] = i[0][at]
      }
    }
  }

  public func channelShuffle(groups: Int, input: Layout) throws -> Kernel {
    let dims = try plainDims(input, "ChannelShuffle")
    guard dims.count >= 2, groups >= 1, dims[1] % groups == 0 else {
      throw TensorError.invalidArgument("ChannelShuffle: \(groups) groups do not divide the channels of \(dims)")
    }
    let (c, inner) = (dims[1], dims.dropFirst(2).reduce(1, *))
    let per = c / groups
    return LoopKernel(name: "RefChannelShuffle", inputs: [input], output: input) { i, y in
      for e in 0..<count(dims) {
        // Output channel k = j·groups + g reads input channel g·per + j.
        let k = (e / inner) % c
        let from = (k % groups) * per + k / groups
        y[e] = i[0][e + (from - k) * inner]
      }
    }
  }

  public func transpose(permutation: [Int], inputDims: [Int]) throws -> Kernel {
    let out = permutation.map { inputDims[$0] }
    let s = rowMajorStrides(inputDims)
    return LoopKernel(name: "RefTranspose", inputs: [.plain(inputDims)], output: .plain(out)) { i, y in
      forEachIndex(out) { idx, k in
        var at = 0
        for (d, p) in permutation.enumerated() { at += idx[d] * s[p] }
        y[k] = i[0][at]
      }
    }
  }

  public func slice(starts: [Int], steps: [Int], input: Layout, outputDims: [Int]) throws -> Kernel {
    let dims = try plainDims(input, "Slice")
    try validateSlice(starts: starts, steps: steps, inputDims: dims, outputDims: outputDims)
    let s = rowMajorStrides(dims)
    return LoopKernel(name: "RefSlice", inputs: [input], output: .plain(outputDims)) { i, y in
      forEachIndex(outputDims) { idx, k in
        var at = 0
        for d in dims.indices { at += (starts[d] + idx[d] * steps[d]) * s[d] }
        y[k] = i[0][at]
      }
    }
  }

  public func reorder(from: Layout, to: Layout) throws -> Kernel {
    let dims = try plainDims(from, "reorder")
    _ = try plainDims(to, "reorder")
    guard dims == to.dims else {
      throw TensorError.shapeMismatch(what: "reference reorder", expected: "\(dims)", found: "\(to.dims)")
    }
    return LoopKernel(name: "RefCopy", inputs: [from], output: to) { i, y in
      for k in 0..<count(dims) { y[k] = i[0][k] }
    }
  }

  private func plainDims(_ l: Layout, _ op: String) throws -> [Int] {
    guard l.token == nil else {
      throw TensorError.invalidArgument("reference \(op): layout \(l) is not plain (another backend's)")
    }
    return l.dims
  }
}

/// A reference kernel: a closure over the input and output buffers.
private final class LoopKernel: Kernel, @unchecked Sendable {
  let name: String
  let inputLayouts: [Layout]
  let outputLayout: Layout
  let inPlaceInput: Int? = nil
  let constantBytes: Int
  private let body: ([UnsafePointer<Float>], UnsafeMutablePointer<Float>) -> Void

  init(
    name: String, inputs: [Layout], output: Layout, constantBytes: Int = 0,
    body: @escaping ([UnsafePointer<Float>], UnsafeMutablePointer<Float>) -> Void
  ) {
    self.name = name
    inputLayouts = inputs
    outputLayout = output
    self.constantBytes = constantBytes
    self.body = body
  }

  func run(inputs: [UnsafeMutableRawPointer], output: UnsafeMutableRawPointer) throws {
    guard inputs.count == inputLayouts.count else {
      throw TensorError.invalidArgument("\(name): expected \(inputLayouts.count) inputs, got \(inputs.count)")
    }
    let count = outputLayout.dims.reduce(1, *)
    body(
      zip(inputs, inputLayouts).map { UnsafePointer($0.bindMemory(to: Float.self, capacity: max($1.dims.reduce(1, *), 1))) },
      output.bindMemory(to: Float.self, capacity: max(count, 1)))
  }
}

private func count(_ dims: [Int]) -> Int { dims.reduce(1, *) }

private func rowMajorStrides(_ dims: [Int]) -> [Int] {
  var s = [Int](repeating: 1, count: dims.count)
  for i in stride(from: dims.count - 2, through: 0, by: -1) { s[i] = s[i + 1] * dims[i + 1] }
  return s
}

/// Calls `body` with every multi-index of `dims` in row-major order and its linear position.
private func forEachIndex(_ dims: [Int], _ body: ([Int], Int) -> Void) {
  let total = count(dims)
  guard total > 0 else { return }
  var idx = [Int](repeating: 0, count: dims.count)
  for k in 0..<total {
    body(idx, k)
    var d = dims.count - 1
    while d >= 0 {
      idx[d] += 1
      if idx[d] < dims[d] { break }
      idx[d] = 0
      d -= 1
    }
  }
}
