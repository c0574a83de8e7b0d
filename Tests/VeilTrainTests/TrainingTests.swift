import Foundation
import VeilTensor
import XCTest

import VeilTrain

/// Forward results against direct loops, training that learns, optimiser updates against
/// their formulas, and checkpoints that resume exactly.
final class TrainingTests: XCTestCase {
  /// Direct convolution / transposed convolution (scatter form) in float64.
  func directConvolution(_ x: Tensor, _ w: Tensor, _ b: Tensor, stride: Int, pad: Int, transposed: Bool, out: [Int]) -> [Double] {
    let (n, ic, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (oc, oh, ow) = (out[1], out[2], out[3])
    let (kh, kw) = (w.shape[2], w.shape[3])
    let xs = x.scalars, ws = w.scalars, bs = b.scalars
    var y = [Double](repeating: 0, count: n * oc * oh * ow)
    for bi in 0..<n { for o in 0..<oc { for i in 0..<oh * ow { y[(bi * oc + o) * oh * ow + i] = Double(bs[o]) } } }
    for bi in 0..<n {
      for c in 0..<ic {
        for o in 0..<oc {
          for ki in 0..<kh {
            for kj in 0..<kw {
              let wv = Double(transposed ? ws[((c * oc + o) * kh + ki) * kw + kj] : ws[((o * ic + c) * kh + ki) * kw + kj])
              if transposed {
                for i in 0..<h {
                  for j in 0..<wd {
                    let (yi, yj) = (i * stride - pad + ki, j * stride - pad + kj)
                    guard yi >= 0, yi < oh, yj >= 0, yj < ow else { continue }
                    y[((bi * oc + o) * oh + yi) * ow + yj] += wv * Double(xs[((bi * ic + c) * h + i) * wd + j])
                  }
                }
              } else {
                for i in 0..<oh {
                  for j in 0..<ow {
                    let (xi, xj) = (i * stride - pad + ki, j * stride - pad + kj)
                    guard xi >= 0, xi < h, xj >= 0, xj < wd else { continue }
                    y[((bi * oc + o) * oh + i) * ow + j] += wv * Double(xs[((bi * ic + c) * h + xi) * wd + xj])
                  }
                }
              }
            }
          }
        }
      }
    }
    return y
  }

  func testConvolutionForwardMatchesDirectLoops() throws {
    var g = SeededGenerator(seed: 5)
    for transposed in [false, true] {
      let x = Tensor.randomNormal(shape: [2, 3, 6, 5], generator: &g)
      let w = Tensor.randomNormal(shape: transposed ? [3, 4, 4, 4] : [4, 3, 4, 4], generator: &g)
      let b = Tensor.randomNormal(shape: [4], generator: &g)
      let spec = ConvolutionSpec(
        strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1, transposed: transposed)
      let y = try convolution(Variable(x), Variable(w), Variable(b), spec).value
      XCTAssertEqual(y.shape, transposed ? [2, 4, 12, 10] : [2, 4, 3, 2])
      let expected = directConvolution(x, w, b, stride: 2, pad: 1, transposed: transposed, out: y.shape)
      let err = zip(y.scalars, expected).map { abs(Double($0) - $1) }.max()!
      XCTAssertLessThan(err, 1e-4, "transposed \(transposed)")
    }
  }

  func testBatchNormKeepsRunningStatisticsWithMomentum() throws {
    let bn = BatchNorm("bn", channels: 2, momentum: 0.1)
    // Channel 0 holds 1, 2, 3, 4; channel 1 holds 10 × that.
    let x = try Tensor(shape: [2, 2, 1, 2], values: [1, 2, 10, 20, 3, 4, 30, 40])
    let y = try bn(Variable(x))
    XCTAssertEqual(bn.runningMean.scalars[0], 0.1 * 2.5, accuracy: 1e-6)
    XCTAssertEqual(bn.runningMean.scalars[1], 0.1 * 25, accuracy: 1e-5)
    // Unbiased variance of 1…4 is 5/3; running starts at 1.
    XCTAssertEqual(bn.runningVariance.scalars[0], 0.9 + 0.1 * 5 / 3, accuracy: 1e-6)
    // Normalised output of channel 0: (v − 2.5) / √(1.25 + ε).
    XCTAssertEqual(y.value.scalars[0], (1 - 2.5) / (1.25 + 1e-5).squareRoot(), accuracy: 1e-5)
    bn.training = false
    let e = try bn(Variable(x))
    XCTAssertEqual(e.value.scalars[0], (1 - 0.25) / (bn.runningVariance.scalars[0] + 1e-5).squareRoot(), accuracy: 1e-5)
  }

  func testAdamAndSGDFollowTheirFormulas() throws {
    let p = Variable(try Tensor(shape: [2], values: [1, -2]), requiresGrad: true)
    let adam = try Adam(parameters: [p], learningRate: 0.1, beta1: 0.5, beta2: 0.9, weightDecay: 0.01)
    p.grad = try Tensor(shape: [2], values: [0.5, 0.25])
    try adam.step()
    // First step: m̂ = g, v̂ = g², so θ moves by lr·g/(|g| + ε) = lr·sign(g) (g includes λθ).
    XCTAssertEqual(p.value.scalars[0], 0.9, accuracy: 1e-6)
    XCTAssertEqual(p.value.scalars[1], -2.1, accuracy: 1e-6)

    let q = Variable(try Tensor(shape: [1], values: [1]), requiresGrad: true)
    let sgd = try SGD(parameters: [q], learningRate: 0.1, momentum: 0.9)
    q.grad = try Tensor(shape: [1], values: [1])
    try sgd.step()  // b = 1, θ = 0.9
    try sgd.step()  // b = 1.9, θ = 0.71
    XCTAssertEqual(q.value.scalars[0], 0.71, accuracy: 1e-6)
    XCTAssertThrowsError(try Adam(parameters: [p], learningRate: 0.1, beta1: 1)) {
      XCTAssertTrue("\($0)".contains("β1 1.0"), "\($0)")
    }
  }

  /// A tiny encoder–decoder (Conv s2 → BatchNorm → LeakyReLU → ConvTranspose s2 → Tanh), the
  /// shape of one pix2pix level, fitted to a fixed batch.
  final class TinyAutoencoder: Layer {
    let down: Conv2d
    let norm: BatchNorm
    let up: Conv2d

    init(seed: UInt64) {
      var g = SeededGenerator(seed: seed)
      down = Conv2d("down", inChannels: 3, outChannels: 8, kernel: 4, stride: 2, padding: 1, initializer: .normal(mean: 0, std: 0.02), generator: &g)
      norm = BatchNorm("norm", channels: 8)
      up = Conv2d("up", inChannels: 8, outChannels: 3, kernel: 4, stride: 2, padding: 1, transposed: true, initializer: .normal(mean: 0, std: 0.02), generator: &g)
    }

    var parameters: [Variable] { down.parameters + norm.parameters + up.parameters }

    func callAsFunction(_ x: Variable) throws -> Variable {
      VeilTrain.tanh(try up(leakyRelu(try norm(try down(x)), alpha: 0.2)))
    }
  }

  func fixedBatch() -> (Tensor, Tensor) {
    var g = SeededGenerator(seed: 42)
    let x = Tensor.randomUniform(shape: [4, 3, 8, 8], low: -1, high: 1, generator: &g)
    // Target: a smooth function of the input, inside tanh's range.
    let t = Kernels.map(x) { 0.8 * sinf(2 * $0) }
    return (x, t)
  }

  func testTinyNetworkLossDecreasesUnderAdam() throws {
    let net = TinyAutoencoder(seed: 1)
    let (x, t) = fixedBatch()
    let adam = try Adam(parameters: net.parameters, learningRate: 1e-2, beta1: 0.5, beta2: 0.999)
    var curve: [Float] = []
    for _ in 0..<60 {
      adam.zeroGradients()
      let loss = try l1Loss(try net(Variable(x)), t)
      try loss.backward()
      try adam.step()
      curve.append(loss.value.scalars[0])
    }
    print("tiny autoencoder L1 loss every 10 steps: " + stride(from: 0, to: 60, by: 10).map { String(format: "%.4f", curve[$0]) }.joined(separator: " ") + String(format: " → %.4f", curve.last!))
    XCTAssertLessThan(curve.last!, 0.5 * curve.first!)
    XCTAssertLessThan(curve.suffix(5).max()!, curve.prefix(5).min()!)
  }

  func testTinyClassifierLossDecreasesUnderSGDWithMomentum() throws {
    var g = SeededGenerator(seed: 3)
    let l1 = Linear("fc1", inFeatures: 6, outFeatures: 16, generator: &g)
    let l2 = Linear("fc2", inFeatures: 16, outFeatures: 1, generator: &g)
    let x = Tensor.randomNormal(shape: [32, 6], generator: &g)
    // Label: is the first feature larger than the second?
    let labels = Tensor(shape: [32, 1]) { d in x.withUnsafeBuffer { xp in for i in 0..<32 { d[i] = xp[i * 6] > xp[i * 6 + 1] ? 1 : 0 } } }
    let sgd = try SGD(parameters: l1.parameters + l2.parameters, learningRate: 0.1, momentum: 0.9)
    var curve: [Float] = []
    for _ in 0..<50 {
      sgd.zeroGradients()
      let loss = try binaryCrossEntropyWithLogits(try l2(relu(try l1(Variable(x)))), labels)
      try loss.backward()
      try sgd.step()
      curve.append(loss.value.scalars[0])
    }
    print(String(format: "tiny classifier BCE: %.4f → %.4f after 50 SGD steps", curve.first!, curve.last!))
    XCTAssertLessThan(curve.last!, 0.3 * curve.first!)
  }

  func testCheckpointResumesBitForBit() throws {
    let (x, t) = fixedBatch()
    func train(_ net: TinyAutoencoder, _ adam: Adam, steps: Int) throws {
      for _ in 0..<steps {
        adam.zeroGradients()
        try l1Loss(try net(Variable(x)), t).backward()
        try adam.step()
      }
    }
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-ckpt-\(UUID().uuidString).safetensors")
    defer { try? FileManager.default.removeItem(at: url) }
    let a = TinyAutoencoder(seed: 7)
    let adamA = try Adam(parameters: a.parameters, learningRate: 1e-2, beta1: 0.5)
    try train(a, adamA, steps: 3)
    try Checkpoint.save(parameters: a.parameters, batchNorms: [a.norm], optimizer: adamA, metadata: ["epoch": "3"], to: url)
    try train(a, adamA, steps: 3)

    let b = TinyAutoencoder(seed: 8)  // different initial weights, all overwritten by the load
    let adamB = try Adam(parameters: b.parameters, learningRate: 1e-2, beta1: 0.5)
    let meta = try Checkpoint.load(into: b.parameters, batchNorms: [b.norm], optimizer: adamB, from: url)
    XCTAssertEqual(meta["epoch"], "3")
    XCTAssertEqual(adamB.stepCount, 3)
    try train(b, adamB, steps: 3)
    for (pa, pb) in zip(a.parameters, b.parameters) { XCTAssertEqual(pa.value.scalars, pb.value.scalars, pa.name) }
    XCTAssertEqual(a.norm.runningMean.scalars, b.norm.runningMean.scalars)

    // A model of another shape is refused with the tensor's name and both shapes.
    var g = SeededGenerator(seed: 1)
    let other = Conv2d("down", inChannels: 3, outChannels: 4, kernel: 4, generator: &g)
    XCTAssertThrowsError(try Checkpoint.load(into: other.parameters, from: url)) {
      XCTAssertTrue("\($0)".contains("'down.weight' has shape [8, 3, 4, 4], the model wants [4, 3, 4, 4]"), "\($0)")
    }
  }
}
