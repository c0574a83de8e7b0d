import Foundation
import VeilTensor

// Resize (upsampling or downsampling) of the two spatial axes of NCHW, as ONNX Resize and
// PyTorch's interpolate compute it. Each output pixel is a fixed weighted sum of input pixels,
// so the forward and the backward share one table of (source index, weight) per axis: the
// forward gathers, the backward scatters the gradient with the same weights.

/// How Resize samples the input.
public enum ResizeMode: Sendable, Equatable {
  /// Nearest neighbour, source = ⌊dst · in/out⌋ (ONNX asymmetric + floor; PyTorch "nearest").
  case nearest
  /// Bilinear with half-pixel centres, source = (dst + ½)·in/out − ½ clamped at 0 (ONNX
  /// half_pixel linear; PyTorch "bilinear" with align_corners=False).
  case bilinear
}

/// Per output index along one axis: up to two (source index, weight) pairs.
func resizeTaps(input: Int, output: Int, scale: Float, mode: ResizeMode) -> [(Int, Float, Int, Float)] {
  (0..<output).map { o in
    switch mode {
    case .nearest:
      let s = min(Int((Float(o) * scale).rounded(.down)), input - 1)
      return (s, 1, s, 0)
    case .bilinear:
      let src = max((Float(o) + 0.5) * scale - 0.5, 0)
      let i0 = min(Int(src.rounded(.down)), input - 1)
      let i1 = min(i0 + 1, input - 1)
      let f = src - Float(i0)
      return i0 == i1 ? (i0, 1, i1, 0) : (i0, 1 - f, i1, f)
    }
  }
}

/// x [N, C, H, W] resized to `size` [outH, outW]. `scales` (output/input, per spatial axis),
/// when given, sets the sampling step as ONNX's scales input and PyTorch's scale_factor do;
/// otherwise it is input/output from the sizes.
public func resize(_ x: Variable, size: [Int], mode: ResizeMode, scales: [Float]? = nil) throws -> Variable {
  guard x.shape.count == 4, size.count == 2, size.allSatisfy({ $0 >= 1 }) else {
    throw TrainError.shapeMismatch(op: "Resize", detail: "input \(x.shape) to size \(size) (want NCHW and two positive extents)")
  }
  if let scales, scales.count != 2 || !scales.allSatisfy({ $0 > 0 }) {
    throw TrainError.invalidArgument("Resize: scales \(scales) must be two positive factors (height, width)")
  }
  let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
  let (oh, ow) = (size[0], size[1])
  let rows = resizeTaps(input: h, output: oh, scale: scales.map { 1 / $0[0] } ?? Float(h) / Float(oh), mode: mode)
  let cols = resizeTaps(input: w, output: ow, scale: scales.map { 1 / $0[1] } ?? Float(w) / Float(ow), mode: mode)
  let y = x.value.withUnsafeBuffer { xp in
    Tensor(shape: [n, c, oh, ow]) { yp in
      for plane in 0..<n * c {
        let src = plane * h * w
        for (i, r) in rows.enumerated() {
          for (j, q) in cols.enumerated() {
            let top = r.1 * (q.1 * xp[src + r.0 * w + q.0] + q.3 * xp[src + r.0 * w + q.2])
            let bottom = r.3 == 0 ? 0 : r.3 * (q.1 * xp[src + r.2 * w + q.0] + q.3 * xp[src + r.2 * w + q.2])
            yp[(plane * oh + i) * ow + j] = top + bottom
          }
        }
      }
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      g.withUnsafeBuffer { gp in
        Tensor(shape: x.shape) { d in
          for plane in 0..<n * c {
            let dst = plane * h * w
            for (i, r) in rows.enumerated() {
              for (j, q) in cols.enumerated() {
                let v = gp[(plane * oh + i) * ow + j]
                d[dst + r.0 * w + q.0] += r.1 * q.1 * v
                d[dst + r.0 * w + q.2] += r.1 * q.3 * v
                d[dst + r.2 * w + q.0] += r.3 * q.1 * v
                d[dst + r.2 * w + q.2] += r.3 * q.3 * v
              }
            }
          }
        }
      }
    ]
  }
}
