import VeilTensor

// Gemm as a layer: y = x·Wᵀ + b, W [out, in] as PyTorch's Linear and ONNX's Gemm(transB=1).

/// x [N, in] times Wᵀ (W [out, in]) plus b [out].
public func linear(_ x: Variable, _ w: Variable, _ b: Variable?) throws -> Variable {
  guard x.shape.count == 2, w.shape.count == 2, x.shape[1] == w.shape[1] else {
    throw TrainError.shapeMismatch(op: "Gemm", detail: "input \(x.shape) and weights \(w.shape) (want [N, in] and [out, in])")
  }
  let (n, k, m) = (x.shape[0], x.shape[1], w.shape[0])
  if let b, b.shape != [m] {
    throw TrainError.shapeMismatch(op: "Gemm", detail: "bias \(b.shape) for \(m) outputs")
  }
  let y = x.value.withUnsafeBuffer { xp in
    w.value.withUnsafeBuffer { wp in
      Tensor(shape: [n, m]) { yp in
        for i in 0..<n {
          for j in 0..<m {
            var s: Float = 0
            for t in 0..<k { s += xp[i * k + t] * wp[j * k + t] }
            yp[i * m + j] = s
          }
        }
        if let b { b.value.withUnsafeBuffer { bp in for i in 0..<n { for j in 0..<m { yp[i * m + j] += bp[j] } } } }
      }
    }
  }
  return Variable(y, parents: [x, w] + (b.map { [$0] } ?? [])) { g in
    g.withUnsafeBuffer { gp in
      // ∂x = g·W, ∂W = gᵀ·x, ∂b = Σ_rows g.
      let dx = x.requiresGrad
        ? w.value.withUnsafeBuffer { wp in
          Tensor(shape: [n, k]) { d in
            for i in 0..<n {
              for j in 0..<m {
                let gij = gp[i * m + j]
                for t in 0..<k { d[i * k + t] += gij * wp[j * k + t] }
              }
            }
          }
        } : nil
      let dw = w.requiresGrad
        ? x.value.withUnsafeBuffer { xp in
          Tensor(shape: [m, k]) { d in
            for i in 0..<n {
              for j in 0..<m {
                let gij = gp[i * m + j]
                for t in 0..<k { d[j * k + t] += gij * xp[i * k + t] }
              }
            }
          }
        } : nil
      let db = b.map { _ in Tensor(shape: [m]) { d in for i in 0..<n { for j in 0..<m { d[j] += gp[i * m + j] } } } }
      return [dx, dw, db]
    }
  }
}

/// A fully connected layer with parameters `name.weight` [out, in] and `name.bias` [out].
public final class Linear: Layer {
  public let weight: Variable
  public let bias: Variable?

  public init(
    _ name: String, inFeatures: Int, outFeatures: Int, bias: Bool = true,
    initializer: Initializer = .kaimingUniform(negativeSlope: Float(5).squareRoot()), generator: inout SeededGenerator
  ) {
    weight = parameter("\(name).weight", [outFeatures, inFeatures], initializer, &generator)
    self.bias = bias ? parameter("\(name).bias", [outFeatures], .zeros, &generator) : nil
  }

  public var parameters: [Variable] { [weight] + (bias.map { [$0] } ?? []) }

  public func callAsFunction(_ x: Variable) throws -> Variable { try linear(x, weight, bias) }
}
