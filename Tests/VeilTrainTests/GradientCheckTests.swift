import Foundation
import VeilTensor
import XCTest

import VeilTrain

/// Every op's backward against central finite differences of its forward.
///
/// For an op f and a fixed random R of the output's shape, the analytic gradient of
/// L = Σ R ⊙ f(inputs) (one backward pass seeded with R) is compared with
/// (L(x + ε) − L(x − ε)) / 2ε per input element, L summed in float64. The error reported is
/// max |analytic − numeric| / max |numeric| per input (relative to the gradient's largest
/// entry, so near-zero entries do not dominate). The forward runs in float32, so with ε = 1e-2
/// on O(1) inputs the finite difference itself is good to about 1e-3; the tolerance is 1e-2.
final class GradientCheckTests: XCTestCase {
  static let tolerance = 1e-2
  static let epsilon: Float = 1e-2

  func random(_ shape: [Int], seed: UInt64, awayFromZero: Float = 0) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor(shape: shape) { d in
      for i in 0..<d.count {
        let v = g.nextNormal()
        d[i] = v + (v >= 0 ? awayFromZero : -awayFromZero)
      }
    }
  }

  func leaf(_ shape: [Int], seed: UInt64, awayFromZero: Float = 0) -> Variable {
    Variable(random(shape, seed: seed, awayFromZero: awayFromZero), requiresGrad: true)
  }

  /// Checks ∂/∂input for every input; returns the worst error and prints it under `op`.
  @discardableResult
  func check(_ op: String, _ inputs: [Variable], file: StaticString = #filePath, line: UInt = #line,
    _ f: () throws -> Variable) throws -> Double
  {
    let y = try f()
    let r = random(y.shape, seed: 99)
    for x in inputs { x.grad = nil }
    try y.backward(seed: r)
    func objective() throws -> Double {
      let out = try f().value
      return out.withUnsafeBuffer { o in
        r.withUnsafeBuffer { w in
          var s = 0.0
          for i in 0..<o.count { s += Double(o[i]) * Double(w[i]) }
          return s
        }
      }
    }
    var worst = 0.0
    for (k, x) in inputs.enumerated() {
      let analytic = try XCTUnwrap(x.grad, "\(op): input \(k) got no gradient", file: file, line: line).scalars
      var numeric = [Double](repeating: 0, count: x.value.count)
      for i in 0..<numeric.count {
        let v = x.value.scalars[i]
        x.value.withUnsafeMutableBuffer { $0[i] = v + Self.epsilon }
        let up = try objective()
        x.value.withUnsafeMutableBuffer { $0[i] = v - Self.epsilon }
        let down = try objective()
        x.value.withUnsafeMutableBuffer { $0[i] = v }
        numeric[i] = (up - down) / (2 * Double(Self.epsilon))
      }
      let scale = numeric.map(abs).max() ?? 0
      XCTAssertGreaterThan(scale, 1e-3, "\(op): input \(k) has a vanishing gradient; the check would prove nothing",
        file: file, line: line)
      let err = zip(analytic, numeric).map { abs(Double($0) - $1) }.max()! / scale
      worst = max(worst, err)
      XCTAssertLessThan(err, Self.tolerance, "\(op): input \(k) \(x.shape)", file: file, line: line)
    }
    print(String(format: "gradient check %-28@ max relative error %.2e", op as NSString, worst))
    return worst
  }

  func testConvolution() throws {
    let x = leaf([2, 3, 7, 6], seed: 1)
    let w = leaf([4, 3, 3, 3], seed: 2)
    let b = leaf([4], seed: 3)
    let strided = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1)
    try check("Conv 3x3 s2 p1 + bias", [x, w, b]) { try convolution(x, w, b, strided) }
    let w2 = leaf([2, 3, 2, 3], seed: 4)
    let dilated = ConvolutionSpec(strides: [1, 1], dilations: [2, 1], padsBegin: [0, 1], padsEnd: [1, 0], groups: 1)
    try check("Conv 2x3 dilated, no bias", [x, w2]) { try convolution(x, w2, nil, dilated) }
  }

  func testConvTranspose() throws {
    // pix2pix's upsampling: 4×4, stride 2, padding 1 doubles the size.
    let x = leaf([2, 3, 4, 5], seed: 5)
    let w = leaf([3, 2, 4, 4], seed: 6)
    let b = leaf([2], seed: 7)
    let spec = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1, transposed: true)
    XCTAssertEqual(try convolution(x, w, b, spec).shape, [2, 2, 8, 10])
    try check("ConvTranspose 4x4 s2 p1", [x, w, b]) { try convolution(x, w, b, spec) }
  }

  func testBatchNormalization() throws {
    let bn = BatchNorm("bn", channels: 3)
    bn.scale.value = random([3], seed: 8)
    bn.shift.value = random([3], seed: 9)
    let x = leaf([4, 3, 3, 2], seed: 10)
    try check("BatchNorm (training)", [x, bn.scale, bn.shift]) { try bn(x) }
    let flat = leaf([5, 3], seed: 11)
    try check("BatchNorm [N, C] (training)", [flat, bn.scale, bn.shift]) { try bn(flat) }
    bn.training = false
    try check("BatchNorm (evaluation)", [x, bn.scale, bn.shift]) { try bn(x) }
  }

  func testActivations() throws {
    // Kinked functions are sampled away from their kink, where the derivative is defined.
    let x = leaf([2, 3, 4], seed: 12, awayFromZero: 0.1)
    try check("Relu", [x]) { relu(x) }
    try check("LeakyRelu(0.2)", [x]) { leakyRelu(x, alpha: 0.2) }
    try check("Tanh", [x]) { VeilTrain.tanh(x) }
    try check("Sigmoid", [x]) { sigmoid(x) }
  }

  func testBroadcastingAddAndMul() throws {
    let a = leaf([2, 3, 4, 5], seed: 13)
    let bias = leaf([1, 3, 1, 1], seed: 14)
    let row = leaf([5], seed: 15)
    try check("Add [2,3,4,5] + [1,3,1,1]", [a, bias]) { try add(a, bias) }
    try check("Mul [2,3,4,5] * [5]", [a, row]) { try mul(a, row) }
    try check("Mul same shape", [a]) { try mul(a, a) }
    XCTAssertThrowsError(try add(a, leaf([4, 4], seed: 1))) { XCTAssertTrue("\($0)".contains("do not broadcast"), "\($0)") }
  }

  func testConcatReshapeFlatten() throws {
    let a = leaf([2, 3, 2, 2], seed: 16)
    let b = leaf([2, 1, 2, 2], seed: 17)
    let y = try concat([a, b])
    XCTAssertEqual(y.shape, [2, 4, 2, 2])
    // Channel 3 of item 1 is b's only channel of item 1.
    XCTAssertEqual(Array(y.value.scalars[(4 + 3) * 4..<(4 + 4) * 4]), Array(b.value.scalars[4..<8]))
    try check("Concat (channels)", [a, b]) { try concat([a, b]) }
    try check("Flatten", [a]) { try flatten(a) }
    try check("Reshape", [a]) { try reshape(a, [3, -1, 2]) }
  }

  func testLinear() throws {
    let x = leaf([3, 5], seed: 18)
    let w = leaf([4, 5], seed: 19)
    let b = leaf([4], seed: 20)
    try check("Gemm (Linear)", [x, w, b]) { try linear(x, w, b) }
  }

  func testLosses() throws {
    let p = leaf([2, 3, 4], seed: 21)
    let t = random([2, 3, 4], seed: 22)
    try check("MSE loss", [p]) { try mseLoss(p, t) }
    // L1 has a kink at p = t: keep every pair apart.
    let apart = try Kernels.zip(p.value, t) { p, t in abs(p - t) < 0.1 ? t + 0.2 : p }
    let q = Variable(apart, requiresGrad: true)
    try check("L1 loss", [q]) { try l1Loss(q, t) }
    let labels = Tensor(shape: [2, 3, 4]) { d in for i in 0..<d.count { d[i] = Float(i % 3) / 2 } }
    let logits = Variable(Kernels.map(p.value) { 4 * $0 }, requiresGrad: true)
    try check("BCE with logits", [logits]) { try binaryCrossEntropyWithLogits(logits, labels) }
    let scores = leaf([4, 5], seed: 23)
    try check("softmax cross-entropy", [scores]) { try softmaxCrossEntropy(scores, labels: [0, 4, 2, 2]) }
    XCTAssertThrowsError(try softmaxCrossEntropy(scores, labels: [0, 5, 1, 1])) {
      XCTAssertTrue("\($0)".contains("label 5 at 1 is outside 0..<5"), "\($0)")
    }
    // Large logits must not overflow: log(1 + e^40) computed naively is inf in float32.
    let big = try binaryCrossEntropyWithLogits(Variable(Tensor(shape: [2], values: [100, -100])), Tensor(shape: [2], values: [0, 1]))
    XCTAssertEqual(big.value.scalars[0], 100, accuracy: 1e-3)
  }
}
