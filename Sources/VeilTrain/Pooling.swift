import VeilGraph
import VeilTensor

// MaxPool, AveragePool and GlobalAveragePool over NCHW, with ONNX's attributes
// (`PoolAttributes`: kernel, strides, explicit pads, ceil mode, count_include_pad). Plain
// loops: the windows are small and the backward of each is a scatter of the output gradient
// back onto the window it came from.

/// The 2-D pooling geometry of one input: output extents and, per output position, the
/// window's first row/column (may be negative inside the padding).
struct PoolGeometry {
  let n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw: Int
  /// The padded extent PyTorch and ONNX divide by with count_include_pad: the window clipped
  /// to input + pads (not to the ceil-mode overhang beyond the pads).
  let paddedH, paddedW: Int

  init(_ op: String, input: [Int], _ a: PoolAttributes) throws {
    guard input.count == 4, a.kernel.count == 2, a.strides.count == 2, a.padsBegin.count == 2, a.padsEnd.count == 2 else {
      throw TrainError.shapeMismatch(op: op, detail: "2-D pooling of input \(input) with kernel \(a.kernel) (want NCHW and a 2-D window)")
    }
    guard a.kernel.allSatisfy({ $0 >= 1 }), a.strides.allSatisfy({ $0 >= 1 }),
      zip(a.padsBegin, a.kernel).allSatisfy({ $0 >= 0 && $0 < $1 }), zip(a.padsEnd, a.kernel).allSatisfy({ $0 >= 0 && $0 < $1 })
    else {
      throw TrainError.invalidArgument(
        "\(op): kernel \(a.kernel), strides \(a.strides), pads \(a.padsBegin)/\(a.padsEnd): pads must be below the kernel, all ≥ 0")
    }
    (n, c, h, w) = (input[0], input[1], input[2], input[3])
    (kh, kw, sh, sw, ph, pw) = (a.kernel[0], a.kernel[1], a.strides[0], a.strides[1], a.padsBegin[0], a.padsBegin[1])
    func extent(_ size: Int, _ k: Int, _ s: Int, _ pb: Int, _ pe: Int) -> Int {
      let span = size + pb + pe - k
      var o = (a.ceilMode ? (span + s - 1) / s : span / s) + 1
      // A ceil-mode window must start inside the input or the leading padding.
      if a.ceilMode, (o - 1) * s >= size + pb { o -= 1 }
      return o
    }
    oh = extent(h, kh, sh, ph, a.padsEnd[0])
    ow = extent(w, kw, sw, pw, a.padsEnd[1])
    guard oh >= 1, ow >= 1 else {
      throw TrainError.shapeMismatch(op: op, detail: "input \(input) is smaller than the window \(a.kernel) with pads")
    }
    paddedH = h + a.padsEnd[0]
    paddedW = w + a.padsEnd[1]
  }

  var outputShape: [Int] { [n, c, oh, ow] }
}

/// The maximum over each window (padding never wins). The gradient goes to the element that
/// was the maximum (the first one on ties, as oneDNN and PyTorch pick it).
public func maxPool(_ x: Variable, _ attributes: PoolAttributes) throws -> Variable {
  let p = try PoolGeometry("MaxPool", input: x.shape, attributes)
  var argmax = [Int](repeating: 0, count: p.n * p.c * p.oh * p.ow)
  let y = x.value.withUnsafeBuffer { xp in
    Tensor(shape: p.outputShape) { yp in
      for plane in 0..<p.n * p.c {
        let base = plane * p.h * p.w
        for i in 0..<p.oh {
          let r0 = i * p.sh - p.ph
          for j in 0..<p.ow {
            let c0 = j * p.sw - p.pw
            var best = -Float.infinity
            var at = -1
            for r in max(r0, 0)..<min(r0 + p.kh, p.h) {
              for col in max(c0, 0)..<min(c0 + p.kw, p.w) where xp[base + r * p.w + col] > best || at < 0 {
                best = xp[base + r * p.w + col]
                at = base + r * p.w + col
              }
            }
            let o = (plane * p.oh + i) * p.ow + j
            yp[o] = best
            argmax[o] = at
          }
        }
      }
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      g.withUnsafeBuffer { gp in
        Tensor(shape: x.shape) { d in for o in 0..<gp.count where argmax[o] >= 0 { d[argmax[o]] += gp[o] } }
      }
    ]
  }
}

/// The mean over each window. With `countIncludePad` the divisor counts padded positions
/// (ONNX count_include_pad = 1, PyTorch's default) but not a ceil-mode overhang past the pads;
/// without it, only the input elements inside the window.
public func averagePool(_ x: Variable, _ attributes: PoolAttributes) throws -> Variable {
  let p = try PoolGeometry("AveragePool", input: x.shape, attributes)
  let includePad = attributes.countIncludePad
  // Per output position (the same for every plane): the clipped window and its divisor.
  var windows: [(r: Range<Int>, c: Range<Int>, scale: Float)] = []
  for i in 0..<p.oh {
    for j in 0..<p.ow {
      let (r0, c0) = (i * p.sh - p.ph, j * p.sw - p.pw)
      let rows = max(r0, 0)..<min(r0 + p.kh, p.h)
      let cols = max(c0, 0)..<min(c0 + p.kw, p.w)
      let count = includePad
        ? (min(r0 + p.kh, p.paddedH) - r0) * (min(c0 + p.kw, p.paddedW) - c0)
        : rows.count * cols.count
      windows.append((rows, cols, count > 0 ? 1 / Float(count) : 0))
    }
  }
  let y = x.value.withUnsafeBuffer { xp in
    Tensor(shape: p.outputShape) { yp in
      for plane in 0..<p.n * p.c {
        let base = plane * p.h * p.w
        for (k, win) in windows.enumerated() {
          var s: Float = 0
          for r in win.r { for col in win.c { s += xp[base + r * p.w + col] } }
          yp[plane * windows.count + k] = s * win.scale
        }
      }
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      g.withUnsafeBuffer { gp in
        Tensor(shape: x.shape) { d in
          for plane in 0..<p.n * p.c {
            let base = plane * p.h * p.w
            for (k, win) in windows.enumerated() {
              let v = gp[plane * windows.count + k] * win.scale
              for r in win.r { for col in win.c { d[base + r * p.w + col] += v } }
            }
          }
        }
      }
    ]
  }
}

/// The mean over every spatial position: [N, C, ...] → [N, C, 1, ...].
public func globalAveragePool(_ x: Variable) throws -> Variable {
  guard x.shape.count >= 3 else {
    throw TrainError.shapeMismatch(op: "GlobalAveragePool", detail: "input \(x.shape) needs rank ≥ 3 (N, C, spatial...)")
  }
  let planes = x.shape[0] * x.shape[1]
  let inner = x.shape.dropFirst(2).reduce(1, *)
  let scale = 1 / Float(inner)
  let y = x.value.withUnsafeBuffer { xp in
    Tensor(shape: Array(x.shape.prefix(2)) + Array(repeating: 1, count: x.shape.count - 2)) { yp in
      for q in 0..<planes {
        var s: Float = 0
        for i in 0..<inner { s += xp[q * inner + i] }
        yp[q] = s * scale
      }
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      g.withUnsafeBuffer { gp in
        Tensor(shape: x.shape) { d in
          for q in 0..<planes {
            let v = gp[q] * scale
            for i in 0..<inner { d[q * inner + i] = v }
          }
        }
      }
    ]
  }
}
