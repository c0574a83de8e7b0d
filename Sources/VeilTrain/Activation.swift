import Foundation
import VeilTensor

// Point-wise activations: forward and backward side by side. The backward of each is written
// in terms of what the forward kept (the input, or the output where that is cheaper).

/// max(x, 0); the gradient at 0 is taken as 0, as PyTorch does.
public func relu(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value) { max($0, 0) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in x > 0 ? g : 0 }]
  }
}

/// x for x ≥ 0, α·x below.
public func leakyRelu(_ x: Variable, alpha: Float = 0.2) -> Variable {
  let y = Kernels.map(x.value) { $0 >= 0 ? $0 : alpha * $0 }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in x >= 0 ? g : alpha * g }]
  }
}

/// tanh(x); dy/dx = 1 − y².
public func tanh(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value) { Foundation.tanh($0) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, y) { g, y in g * (1 - y * y) }]
  }
}

/// √x; dy/dx = 1 / (2·y), 0 where y is 0 (the subgradient a norm of zero takes).
public func squareRoot(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value) { $0.squareRoot() }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, y) { g, y in y > 0 ? g / (2 * y) : 0 }]
  }
}

/// 1 / (1 + e^−x); dy/dx = y·(1 − y).
public func sigmoid(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value, stableSigmoid)
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, y) { g, y in g * y * (1 - y) }]
  }
}

/// The logistic function without overflow for large |x|.
@inline(__always)
func stableSigmoid(_ x: Float) -> Float {
  if x >= 0 { return 1 / (1 + expf(-x)) }
  let e = expf(x)
  return e / (1 + e)
}

/// x·sigmoid(x) (SiLU, Swish); dy/dx = s·(1 + x·(1 − s)) with s = sigmoid(x).
public func silu(_ x: Variable) -> Variable {
  let s = Kernels.map(x.value, stableSigmoid)
  let y = Kernels.map(x.value) { $0 * stableSigmoid($0) }
  return Variable(y, parents: [x]) { g in
    let ds = try Kernels.zip(x.value, s) { x, s in s * (1 + x * (1 - s)) }
    return [try Kernels.zip(g, ds, *)]
  }
}

/// x·Φ(x) (GELU), exact (erf) or with PyTorch's tanh approximation; for the exact form
/// dy/dx = Φ(x) + x·φ(x), for the approximation the derivative of 0.5·x·(1 + tanh(u)),
/// u = √(2/π)·(x + 0.044715·x³).
public func gelu(_ x: Variable, tanh approximate: Bool = false) -> Variable {
  let k: Float = 0.797_884_56
  let c: Float = 0.044715
  let y = Kernels.map(x.value, Activation.gelu(tanh: approximate).apply)
  return Variable(y, parents: [x]) { g in
    [
      try Kernels.zip(g, x.value) { g, x in
        if approximate {
          let t = Foundation.tanh(k * (x + c * x * x * x))
          return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x))
        }
        let cdf = 0.5 * (1 + erff(x * 0.707_106_78))
        let pdf = expf(-0.5 * x * x) * 0.398_942_28
        return g * (cdf + x * pdf)
      }
    ]
  }
}

/// min(max(x, low), high) (ONNX Clip, ReLU6 with 0 and 6); the gradient passes strictly
/// inside (low, high), as PyTorch's hardtanh.
public func clip(_ x: Variable, min low: Float, max high: Float) -> Variable {
  let y = Kernels.map(x.value) { Swift.min(Swift.max($0, low), high) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in x > low && x < high ? g : 0 }]
  }
}

/// max(0, min(1, α·x + β)) (ONNX HardSigmoid).
public func hardSigmoid(_ x: Variable, alpha: Float = 0.2, beta: Float = 0.5) -> Variable {
  let y = Kernels.map(x.value) { Swift.min(Swift.max(alpha * $0 + beta, 0), 1) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in (alpha * x + beta > 0 && alpha * x + beta < 1) ? alpha * g : 0 }]
  }
}

/// x·HardSigmoid(x) with α = 1/6, β = 1/2 (ONNX HardSwish, MobileNetV3).
public func hardSwish(_ x: Variable) -> Variable {
  let y = Kernels.map(x.value) { $0 * Swift.min(Swift.max($0 / 6 + 0.5, 0), 1) }
  return Variable(y, parents: [x]) { g in
    [try Kernels.zip(g, x.value) { g, x in x <= -3 ? 0 : (x >= 3 ? g : g * (x / 3 + 0.5)) }]
  }
}

/// softmax along `axis` (negative counts from the end): e^{x_i − max} / Σ e^{x_j − max};
/// the backward is y ⊙ (g − Σ_axis g ⊙ y).
public func softmax(_ x: Variable, axis: Int = -1) throws -> Variable {
  let rank = x.shape.count
  let ax = axis < 0 ? axis + rank : axis
  guard ax >= 0, ax < rank else {
    throw TrainError.invalidArgument("Softmax: axis \(axis) is out of range for input \(x.shape)")
  }
  let outer = x.shape[..<ax].reduce(1, *)
  let extent = x.shape[ax]
  let inner = x.shape[(ax + 1)...].reduce(1, *)
  let y = x.value.withUnsafeBuffer { xp in
    Tensor(shape: x.shape) { yp in
      for o in 0..<outer {
        for i in 0..<inner {
          let base = o * extent * inner + i
          var top = -Float.infinity
          for k in 0..<extent { top = Swift.max(top, xp[base + k * inner]) }
          var sum: Float = 0
          for k in 0..<extent {
            let e = expf(xp[base + k * inner] - top)
            yp[base + k * inner] = e
            sum += e
          }
          for k in 0..<extent { yp[base + k * inner] /= sum }
        }
      }
    }
  }
  return Variable(y, parents: [x]) { g in
    [
      g.withUnsafeBuffer { gp in
        y.withUnsafeBuffer { yp in
          Tensor(shape: x.shape) { d in
            for o in 0..<outer {
              for i in 0..<inner {
                let base = o * extent * inner + i
                var dot: Float = 0
                for k in 0..<extent { dot += gp[base + k * inner] * yp[base + k * inner] }
                for k in 0..<extent { d[base + k * inner] = yp[base + k * inner] * (gp[base + k * inner] - dot) }
              }
            }
          }
        }
      }
    ]
  }
}
