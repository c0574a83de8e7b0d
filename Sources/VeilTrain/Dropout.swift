import VeilTensor

// Dropout: in training, each element is kept with probability 1 − p and scaled by 1/(1 − p)
// (inverted dropout, as PyTorch and ONNX training mode); in evaluation it is the identity.
// The mask comes from the caller's seeded generator, so a run is reproducible.

/// Inverted dropout of ratio `p` in [0, 1). With `training` false (or p = 0) x passes
/// through unchanged. The backward multiplies by the same mask.
public func dropout(_ x: Variable, ratio p: Float, training: Bool, generator: inout SeededGenerator) throws -> Variable {
  guard p >= 0, p < 1 else {
    throw TrainError.invalidArgument("Dropout: ratio \(p) must be in [0, 1)")
  }
  guard training, p > 0 else { return x }
  let keep = 1 / (1 - p)
  let mask = Tensor(shape: x.shape) { m in
    for i in 0..<m.count { m[i] = generator.nextUniform() < p ? 0 : keep }
  }
  let y = try Kernels.zip(x.value, mask, *)
  return Variable(y, parents: [x]) { g in [try Kernels.zip(g, mask, *)] }
}
