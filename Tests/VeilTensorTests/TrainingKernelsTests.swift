import XCTest

import VeilTensor

final class TrainingKernelsTests: XCTestCase {
  /// [N, C, inner] with inner not a multiple of the eight lanes, and a channel whose mean is
  /// large next to its spread (where E[x²] − E[x]² in float would lose every digit).
  private func sample() throws -> Tensor {
    var g = SeededGenerator(seed: 7)
    let noise = Tensor.randomNormal(shape: [5, 3, 7, 3], generator: &g).scalars
    let values = noise.enumerated().map { i, v -> Float in
      let ch = (i / 21) % 3
      return ch == 0 ? v : ch == 1 ? 3 * v - 2 : 1000 + 0.01 * v
    }
    return try Tensor(shape: [5, 3, 7, 3], values: values)
  }

  func testChannelMeanVarianceMatchesDoublePrecision() throws {
    let x = try sample()
    let (mean, variance) = DNNLBackend.shared.channelMeanVariance(x)
    let v = x.scalars
    for ch in 0..<3 {
      let items = (0..<5).flatMap { b in (0..<21).map { Double(v[(b * 3 + ch) * 21 + $0]) } }
      let mu = items.reduce(0, +) / Double(items.count)
      let variance0 = items.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / Double(items.count)
      XCTAssertEqual(mean[ch], mu, accuracy: abs(mu) * 1e-7 + 1e-7, "channel \(ch)")
      XCTAssertEqual(variance[ch], variance0, accuracy: variance0 * 1e-4, "channel \(ch)")
    }
  }

  func testBatchNormApplyAndBackwardFollowTheirFormulas() throws {
    let x = try sample()
    let mean: [Float] = [0.1, -2, 1000]
    let invStd: [Float] = [1, 0.5, 100]
    let scale = try Tensor(shape: [3], values: [2, 1, -1])
    let shift = try Tensor(shape: [3], values: [0, 0.5, 3])
    let (h, y) = DNNLBackend.shared.batchNormApply(x, mean: mean, invStd: invStd, scale: scale, shift: shift)
    let g = try Tensor(shape: x.shape, values: x.scalars.indices.map { Float($0 % 11) - 5 })
    let (k, a, b): ([Float], [Float], [Float]) = ([1, 2, 3], [0.5, 0, -1], [0.25, 1, 2])
    let dx = DNNLBackend.shared.batchNormBackward(g, normalized: h, k: k, a: a, b: b)
    let (sum, dot) = DNNLBackend.shared.channelSums(g, h)
    var (sum0, dot0) = ([Double](repeating: 0, count: 3), [Double](repeating: 0, count: 3))
    for i in 0..<x.count {
      let ch = (i / 21) % 3
      let h0 = (x.scalars[i] - mean[ch]) * invStd[ch]
      XCTAssertEqual(h.scalars[i], h0, accuracy: 1e-5 * max(1, abs(h0)))
      XCTAssertEqual(y.scalars[i], scale.scalars[ch] * h0 + shift.scalars[ch], accuracy: 1e-4 * max(1, abs(h0)))
      let dx0 = k[ch] * (g.scalars[i] - a[ch] - h.scalars[i] * b[ch])
      XCTAssertEqual(dx.scalars[i], dx0, accuracy: 1e-4 * max(1, abs(dx0)))
      sum0[ch] += Double(g.scalars[i])
      dot0[ch] += Double(g.scalars[i]) * Double(h.scalars[i])
    }
    for ch in 0..<3 {
      XCTAssertEqual(sum[ch], sum0[ch], accuracy: 1e-4)
      XCTAssertEqual(dot[ch], dot0[ch], accuracy: 1e-4 * max(1, abs(dot0[ch])))
    }
  }

  func testAdamStepMatchesTheUpdateRule() throws {
    var w = try Tensor(shape: [19], values: (0..<19).map { Float($0) / 4 - 2 })
    var m = Tensor(zeros: [19])
    var v = Tensor(zeros: [19])
    var (w0, m0, v0) = (w.scalars.map(Double.init), [Double](repeating: 0, count: 19), [Double](repeating: 0, count: 19))
    let (b1, b2, lr, eps, wd) = (0.5, 0.999, 2e-4, 1e-8, 0.01)
    for step in 1...3 {
      let grad = try Tensor(shape: [19], values: (0..<19).map { Float(($0 * 7 + step) % 5) - 2 })
      let c1 = 1 - pow(b1, Double(step))
      let c2 = 1 - pow(b2, Double(step))
      DNNLBackend.shared.adamStep(
        weights: &w, firstMoment: &m, secondMoment: &v, gradient: grad, beta1: Float(b1), beta2: Float(b2),
        learningRate: Float(lr), biasCorrection1: Float(c1), biasCorrection2: Float(c2), epsilon: Float(eps),
        weightDecay: Float(wd))
      for i in 0..<19 {
        let gi = Double(grad.scalars[i]) + wd * w0[i]
        m0[i] = b1 * m0[i] + (1 - b1) * gi
        v0[i] = b2 * v0[i] + (1 - b2) * gi * gi
        w0[i] -= lr * (m0[i] / c1) / ((v0[i] / c2).squareRoot() + eps)
      }
    }
    for i in 0..<19 {
      XCTAssertEqual(Double(w.scalars[i]), w0[i], accuracy: 1e-6, "weight \(i)")
      XCTAssertEqual(Double(m.scalars[i]), m0[i], accuracy: 1e-5, "first moment \(i)")
      XCTAssertEqual(Double(v.scalars[i]), v0[i], accuracy: 1e-5, "second moment \(i)")
    }
  }

  func testFreedBlocksAreReusedOnlyInsideAScopeUpToItsLimit() {
    let count = 40_000  // 160 000 bytes: above the 64 KiB floor
    _ = TensorStorage(count: count)
    XCTAssertEqual(TensorStorage.recycledBytes, 0, "outside every scope a freed block goes back")
    withBlockReuse(upTo: 200_000) {
      var blocks = [TensorStorage(count: count), TensorStorage(count: count)]
      let p1 = blocks[0].pointer
      blocks.removeFirst()
      XCTAssertEqual(TensorStorage.recycledBytes, 160_000, "the first freed block is kept")
      blocks.removeAll()
      XCTAssertEqual(TensorStorage.recycledBytes, 160_000, "no room for the second under the limit: freed")
      let again = TensorStorage(count: count)
      XCTAssertEqual(again.pointer, p1, "a block of the same size is reused")
      XCTAssertEqual(TensorStorage.recycledBytes, 0)
      _ = TensorStorage(count: 100)
      XCTAssertEqual(TensorStorage.recycledBytes, 0, "small blocks go back to malloc")
      withBlockReuse(upTo: 400_000) {
        _ = [TensorStorage(count: count), TensorStorage(count: count), TensorStorage(count: count)]
        XCTAssertEqual(TensorStorage.recycledBytes, 320_000, "a nested scope's larger limit applies inside it")
      }
      XCTAssertEqual(TensorStorage.recycledBytes, 0, "back under the outer limit: what was over it is released")
      _ = TensorStorage(count: count)
      XCTAssertEqual(TensorStorage.recycledBytes, 160_000)
      withExtendedLifetime(again) {}
    }
    XCTAssertEqual(TensorStorage.recycledBytes, 0, "the end of the last scope releases what is kept")
    _ = TensorStorage(count: count)
    XCTAssertEqual(TensorStorage.recycledBytes, 0, "and reuse is off again")
  }
}
