import CDNNL

/// oneDNN's side of the `TrainingBackend` seam: convolutions on its forward and backward
/// primitives (`ConvolutionTraining`, shared per shape through a bounded cache), and the
/// plain-layout kernels oneDNN 2.6 has no primitive for in the form VeilTrain needs: batch
/// normalisation on NCHW tensors with the batch statistics the autograd layer keeps, and
/// Adam's update. Those run the vectorised C loops of training_kernels.c; tensors are
/// [N, C, ...] with every axis after the second flattened.
extension DNNLBackend: TrainingBackend {
  public func trainingConvolution(
    _ spec: ConvolutionSpec, inputDims: [Int], weightShape: [Int], outputDims: [Int], hasBias: Bool
  ) throws -> any TrainingConvolutionKernel {
    try trainingConvolutions.value("\(spec)|\(inputDims)|\(weightShape)|\(outputDims)|\(hasBias)") {
      try ConvolutionTraining(spec, inputDims: inputDims, weightShape: weightShape, outputDims: outputDims, hasBias: hasBias)
    }
  }

  private func channelDims(_ x: Tensor) -> (Int64, Int64, Int64) {
    (Int64(x.shape[0]), Int64(x.shape[1]), Int64(x.shape.dropFirst(2).reduce(1, *)))
  }

  /// Per-channel mean and biased variance over the batch and every position.
  public func channelMeanVariance(_ x: Tensor) -> (mean: [Double], variance: [Double]) {
    let (n, c, inner) = channelDims(x)
    var mean = [Double](repeating: 0, count: Int(c))
    var variance = mean
    x.withUnsafeBuffer { xp in veil_channel_mean_var(xp.baseAddress, n, c, inner, &mean, &variance) }
    return (mean, variance)
  }

  /// x̂ = (x − mean)·invStd and y = γ·x̂ + β, per channel.
  public func batchNormApply(_ x: Tensor, mean: [Float], invStd: [Float], scale: Tensor, shift: Tensor)
    -> (normalized: Tensor, output: Tensor)
  {
    let (n, c, inner) = channelDims(x)
    precondition(mean.count == Int(c) && invStd.count == Int(c) && scale.count == Int(c) && shift.count == Int(c))
    var normalized = Tensor(uninitialized: x.shape)
    let output = x.withUnsafeBuffer { xp in
      scale.withUnsafeBuffer { g in
        shift.withUnsafeBuffer { b in
          normalized.withUnsafeMutableBuffer { h in
            Tensor(uninitialized: x.shape) { y in
              veil_batchnorm_apply(
                xp.baseAddress, n, c, inner, mean, invStd, g.baseAddress, b.baseAddress, h.baseAddress, y.baseAddress)
            }
          }
        }
      }
    }
    return (normalized, output)
  }

  /// Per-channel Σg and Σg·h of two tensors of one shape.
  public func channelSums(_ g: Tensor, _ h: Tensor) -> (sum: [Double], dot: [Double]) {
    precondition(g.shape == h.shape)
    let (n, c, inner) = channelDims(g)
    var sum = [Double](repeating: 0, count: Int(c))
    var dot = sum
    g.withUnsafeBuffer { gp in h.withUnsafeBuffer { hp in veil_channel_sums(gp.baseAddress, hp.baseAddress, n, c, inner, &sum, &dot) } }
    return (sum, dot)
  }

  /// dx = k·(g − a − h·b), per channel: batch normalisation's input gradient.
  public func batchNormBackward(_ g: Tensor, normalized h: Tensor, k: [Float], a: [Float], b: [Float]) -> Tensor {
    precondition(g.shape == h.shape)
    let (n, c, inner) = channelDims(g)
    precondition(k.count == Int(c) && a.count == Int(c) && b.count == Int(c))
    return g.withUnsafeBuffer { gp in
      h.withUnsafeBuffer { hp in
        Tensor(uninitialized: g.shape) { d in
          veil_batchnorm_backward(gp.baseAddress, hp.baseAddress, n, c, inner, k, a, b, d.baseAddress)
        }
      }
    }
  }

  /// y = a·(x − m) + b per channel (a, m, b of C entries): evaluation-mode batch
  /// normalisation as one pass, and its input gradient (m = b = 0).
  public func channelAffine(_ x: Tensor, scale a: [Float], center m: [Float], shift b: [Float]) -> Tensor {
    let (n, c, inner) = channelDims(x)
    precondition(a.count == Int(c) && m.count == Int(c) && b.count == Int(c))
    return x.withUnsafeBuffer { xp in
      Tensor(uninitialized: x.shape) { y in veil_channel_affine(xp.baseAddress, n, c, inner, a, m, b, y.baseAddress) }
    }
  }

  /// One Adam update of `weights` in place, with its moments: g ← g + wd·w,
  /// m ← β1·m + (1 − β1)·g, v ← β2·v + (1 − β2)·g², w ← w − lr·(m/c1)/(√(v/c2) + ε).
  /// oneDNN's SGEMM (row-major, β = 1 to accumulate), on its OpenMP threads.
  public func multiplyAccumulate(
    _ a: UnsafePointer<Float>, transposeA: Bool, _ b: UnsafePointer<Float>, transposeB: Bool,
    into c: UnsafeMutablePointer<Float>, m: Int, k: Int, n: Int, alpha: Float
  ) {
    guard m > 0, n > 0, k > 0 else { return }
    let status = dnnl_sgemm(
      CChar(UInt8(ascii: transposeA ? "T" : "N")), CChar(UInt8(ascii: transposeB ? "T" : "N")),
      Int64(m), Int64(n), Int64(k), alpha, a, Int64(transposeA ? m : k), b, Int64(transposeB ? k : n), 1, c, Int64(n))
    // The arguments are consistent by construction (the shapes come from checked tensors); a
    // failure here is a broken invariant, not bad input.
    precondition(status == dnnl_success, "dnnl_sgemm failed (\(status)) for \(m)×\(k) by \(k)×\(n)")
  }

  public func adamStep(
    weights: inout Tensor, firstMoment: inout Tensor, secondMoment: inout Tensor, gradient: Tensor,
    beta1: Float, beta2: Float, learningRate: Float, biasCorrection1 c1: Float, biasCorrection2 c2: Float,
    epsilon: Float, weightDecay: Float
  ) {
    let count = weights.count
    precondition(firstMoment.count == count && secondMoment.count == count && gradient.count == count)
    gradient.withUnsafeBuffer { g in
      firstMoment.withUnsafeMutableBuffer { m in
        secondMoment.withUnsafeMutableBuffer { v in
          weights.withUnsafeMutableBuffer { w in
            veil_adam_f32(
              w.baseAddress, m.baseAddress, v.baseAddress, g.baseAddress, Int64(count), beta1, beta2, learningRate, c1, c2,
              epsilon, weightDecay)
          }
        }
      }
    }
  }
}
