import VeilTensor

// Gemm as a layer: y = x·Wᵀ + b, W [out, in] as PyTorch's Linear and ONNX's Gemm(transB=1).

/// x [N, in] times Wᵀ (W [out, in]) plus b [out], the product on `backend`.
public func linear(_ x: Variable, _ w: Variable, _ b: Variable?, backend: any TrainingBackend = Backends.training) throws
  -> Variable
{
  guard x.shape.count == 2, w.shape.count == 2, x.shape[1] == w.shape[1] else {
    throw TrainError.shapeMismatch(op: "Gemm", detail: "input \(x.shape) and weights \(w.shape) (want [N, in] and [out, in])")
  }
  let m = w.shape[0]
  if let b, b.shape != [m] {
    throw TrainError.shapeMismatch(op: "Gemm", detail: "bias \(b.shape) for \(m) outputs")
  }
  // The ONNX Gemm it is, with one matrix product for forward and backward alike.
  return try gemm(x, w, b, transB: true, backend: backend)
}

/// A fully connected layer with parameters `name.weight` [out, in] and `name.bias` [out].
public final class Linear: Layer {
  public let weight: Variable
  public let bias: Variable?
  /// What its matrix products compute with.
  public let backend: any TrainingBackend

  public init(
    _ name: String, inFeatures: Int, outFeatures: Int, bias: Bool = true,
    initializer: Initializer = .kaimingUniform(negativeSlope: Float(5).squareRoot()), generator: inout SeededGenerator,
    backend: any TrainingBackend = Backends.training
  ) {
    self.backend = backend
    weight = parameter("\(name).weight", [outFeatures, inFeatures], initializer, &generator)
    self.bias = bias ? parameter("\(name).bias", [outFeatures], .zeros, &generator) : nil
  }

  public var parameters: [Variable] { [weight] + (bias.map { [$0] } ?? []) }

  public func callAsFunction(_ x: Variable) throws -> Variable { try linear(x, weight, bias, backend: backend) }
}

/// ONNX Gemm: Y = α·op(A)·op(B) + β·C, op being a transpose where `transA`/`transB` say; C
/// (optional) broadcasts to [M, N]. `linear` is the common case (transB, α = β = 1, C [N]).
public func gemm(
  _ a: Variable, _ b: Variable, _ c: Variable? = nil, alpha: Float = 1, beta: Float = 1, transA: Bool = false,
  transB: Bool = false, backend: any TrainingBackend = Backends.training
) throws -> Variable {
  guard a.shape.count == 2, b.shape.count == 2 else {
    throw TrainError.shapeMismatch(op: "Gemm", detail: "A \(a.shape) and B \(b.shape) must be matrices")
  }
  let (m, k) = transA ? (a.shape[1], a.shape[0]) : (a.shape[0], a.shape[1])
  let (k2, n) = transB ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
  guard k == k2 else {
    throw TrainError.shapeMismatch(
      op: "Gemm", detail: "inner dimensions differ: A \(a.shape) (transA \(transA)), B \(b.shape) (transB \(transB))")
  }
  let bc = try c.map { c -> Broadcast in
    let bc = try Broadcast([m, n], c.shape, op: "Gemm")
    guard bc.shape == [m, n] else {
      throw TrainError.shapeMismatch(op: "Gemm", detail: "C \(c.shape) does not broadcast to [\(m), \(n)]")
    }
    return bc
  }
  var y = a.value.withUnsafeBuffer { ap in
    b.value.withUnsafeBuffer { bp in
      Tensor(shape: [m, n]) { yp in
        backend.multiplyAccumulate(ap.baseAddress!, transposeA: transA, bp.baseAddress!, transposeB: transB, into: yp.baseAddress!, m: m, k: k, n: n, alpha: alpha)
      }
    }
  }
  if let c, let bc {
    let scaled = Kernels.map(c.value) { beta * $0 }
    y = bc.apply(y, scaled, +)
  }
  return Variable(y, parents: [a, b] + (c.map { [$0] } ?? [])) { g in
    g.withUnsafeBuffer { gp in
      let g0 = gp.baseAddress!
      // With op(A) = A: ∂A = α·g·op(B)ᵀ [m×k]; with op(A) = Aᵀ: ∂A = α·op(B)·gᵀ [k×m].
      let da = a.requiresGrad
        ? b.value.withUnsafeBuffer { bp in
          Tensor(shape: a.shape) { d in
            if transA {
              backend.multiplyAccumulate(bp.baseAddress!, transposeA: transB, g0, transposeB: true, into: d.baseAddress!, m: k, k: n, n: m, alpha: alpha)
            } else {
              backend.multiplyAccumulate(g0, transposeA: false, bp.baseAddress!, transposeB: !transB, into: d.baseAddress!, m: m, k: n, n: k, alpha: alpha)
            }
          }
        } : nil
      // With op(B) = B: ∂B = α·op(A)ᵀ·g [k×n]; with op(B) = Bᵀ: ∂B = α·gᵀ·op(A) [n×k].
      let db = b.requiresGrad
        ? a.value.withUnsafeBuffer { ap in
          Tensor(shape: b.shape) { d in
            if transB {
              backend.multiplyAccumulate(g0, transposeA: true, ap.baseAddress!, transposeB: transA, into: d.baseAddress!, m: n, k: m, n: k, alpha: alpha)
            } else {
              backend.multiplyAccumulate(ap.baseAddress!, transposeA: !transA, g0, transposeB: false, into: d.baseAddress!, m: k, k: m, n: n, alpha: alpha)
            }
          }
        } : nil
      let dc = c.flatMap { c in c.requiresGrad ? bc.map { bc in Kernels.map(bc.reduce(g, times: nil, into: c.shape, first: false)) { beta * $0 } } : nil }
      return [da, db, dc]
    }
  }
}

/// numpy matmul of A [..., M, K] by B [..., K, N] or [K, N]; batch dimensions must be equal
/// (B may be one matrix shared by every batch item).
public func matMul(_ a: Variable, _ b: Variable, backend: any TrainingBackend = Backends.training) throws -> Variable {
  guard a.shape.count >= 2, b.shape.count >= 2, a.shape[a.shape.count - 1] == b.shape[b.shape.count - 2],
    b.shape.count == 2 || a.shape.dropLast(2) == b.shape.dropLast(2)
  else {
    throw TrainError.shapeMismatch(
      op: "MatMul", detail: "A \(a.shape) × B \(b.shape) (want [..., M, K] × [..., K, N] with equal batch dimensions, or B [K, N])")
  }
  let (m, k, n) = (a.shape[a.shape.count - 2], a.shape[a.shape.count - 1], b.shape[b.shape.count - 1])
  let batch = a.shape.dropLast(2).reduce(1, *)
  let shared = b.shape.count == 2
  let y = a.value.withUnsafeBuffer { ap in
    b.value.withUnsafeBuffer { bp in
      Tensor(shape: Array(a.shape.dropLast()) + [n]) { yp in
        for t in 0..<batch {
          backend.multiplyAccumulate(
            ap.baseAddress! + t * m * k, transposeA: false, bp.baseAddress! + (shared ? 0 : t * k * n), transposeB: false,
            into: yp.baseAddress! + t * m * n, m: m, k: k, n: n, alpha: 1)
        }
      }
    }
  }
  return Variable(y, parents: [a, b]) { g in
    g.withUnsafeBuffer { gp in
      a.value.withUnsafeBuffer { ap in
        b.value.withUnsafeBuffer { bp in
          // Per batch item: ∂A = g·Bᵀ, ∂B = Aᵀ·g (summed over items when B is shared).
          let da = a.requiresGrad
            ? Tensor(shape: a.shape) { d in
              for t in 0..<batch {
                backend.multiplyAccumulate(
                  gp.baseAddress! + t * m * n, transposeA: false, bp.baseAddress! + (shared ? 0 : t * k * n), transposeB: true,
                  into: d.baseAddress! + t * m * k, m: m, k: n, n: k, alpha: 1)
              }
            } : nil
          let db = b.requiresGrad
            ? Tensor(shape: b.shape) { d in
              for t in 0..<batch {
                backend.multiplyAccumulate(
                  ap.baseAddress! + t * m * k, transposeA: true, gp.baseAddress! + t * m * n, transposeB: false,
                  into: d.baseAddress! + (shared ? 0 : t * k * n), m: k, k: m, n: n, alpha: 1)
              }
            } : nil
          return [da, db]
        }
      }
    }
  }
}
