import Foundation
import VeilGraph
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
    try check("Sqrt", [x]) { squareRoot(relu(x)) }
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

  func testNewActivationsAndSoftmax() throws {
    let x = leaf([2, 3, 4], seed: 30, awayFromZero: 0.1)
    try check("SiLU", [x]) { silu(x) }
    // Clip's kinks at 0 and 1: move values near them away.
    let y = Variable(Kernels.map(x.value) { v in abs(v) < 0.1 || abs(v - 1) < 0.1 ? v + 0.25 : v }, requiresGrad: true)
    try check("Clip(0, 1)", [y]) { clip(y, min: 0, max: 1) }
    try check("HardSwish", [x]) { hardSwish(x) }
    try check("GELU", [x]) { gelu(x) }
    try check("GELU (tanh)", [x]) { gelu(x, tanh: true) }
    let (scale, shift) = (leaf([4], seed: 31), leaf([4], seed: 32))
    try check("LayerNorm", [x, scale, shift]) { try layerNormalization(x, scale: scale, shift: shift) }
    let wide = leaf([3, 4], seed: 33)
    try check("LayerNorm two axes", [x, wide]) { try layerNormalization(x, scale: wide, shift: nil, axis: 1) }
    try check("Softmax axis 1", [x]) { try softmax(x, axis: 1) }
    try check("Softmax axis -1", [x]) { try softmax(x, axis: -1) }
    let s = try softmax(x, axis: 1).value.scalars
    XCTAssertEqual(Double(s[0] + s[4] + s[8]), 1, accuracy: 1e-6, "softmax sums to 1 along its axis")
    XCTAssertThrowsError(try softmax(x, axis: 3)) { XCTAssertTrue("\($0)".contains("axis 3 is out of range"), "\($0)") }
  }

  func testPooling() throws {
    // Distinct values, so every max is unique and the max's derivative is defined.
    var g = SeededGenerator(seed: 31)
    let perm = (0..<2 * 3 * 7 * 6).shuffled(using: &g).map { Float($0) / 40 }
    let x = Variable(try Tensor(shape: [2, 3, 7, 6], values: perm), requiresGrad: true)
    let k3s2p1 = PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], padsEnd: [1, 1])
    XCTAssertEqual(try maxPool(x, k3s2p1).shape, [2, 3, 4, 3])
    try check("MaxPool 3x3 s2 p1", [x]) { try maxPool(x, k3s2p1) }
    let ceil = PoolAttributes(kernel: [2, 2], strides: [2, 2], ceilMode: true)
    XCTAssertEqual(try maxPool(x, ceil).shape, [2, 3, 4, 3])
    try check("MaxPool 2x2 s2 ceil", [x]) { try maxPool(x, ceil) }
    let include = PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], padsEnd: [1, 1], countIncludePad: true)
    let exclude = PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], padsEnd: [1, 1], countIncludePad: false)
    try check("AveragePool count_include_pad", [x]) { try averagePool(x, include) }
    try check("AveragePool exclude pad", [x]) { try averagePool(x, exclude) }
    let corner = (x.value.scalars[0] + x.value.scalars[1] + x.value.scalars[6] + x.value.scalars[7])
    XCTAssertEqual(try averagePool(x, include).value.scalars[0], corner / 9, accuracy: 1e-6)
    XCTAssertEqual(try averagePool(x, exclude).value.scalars[0], corner / 4, accuracy: 1e-6)
    try check("GlobalAveragePool", [x]) { try globalAveragePool(x) }
    XCTAssertThrowsError(try maxPool(x, PoolAttributes(kernel: [3, 3], padsBegin: [3, 3]))) {
      XCTAssertTrue("\($0)".contains("pads must be below the kernel"), "\($0)")
    }
  }

  func testResize() throws {
    let x = leaf([1, 2, 3, 4], seed: 32)
    XCTAssertEqual(try resize(x, size: [6, 8], mode: .nearest).shape, [1, 2, 6, 8])
    try check("Resize nearest x2", [x]) { try resize(x, size: [6, 8], mode: .nearest) }
    try check("Resize bilinear x2", [x]) { try resize(x, size: [6, 8], mode: .bilinear) }
    try check("Resize bilinear 5x7", [x]) { try resize(x, size: [5, 7], mode: .bilinear) }
    try check("Resize bilinear down 2x3", [x]) { try resize(x, size: [2, 3], mode: .bilinear) }
    // Bilinear ×2 with half-pixel centres: output 1 of a row [a, b, ...] is 0.25a + 0.75b... of
    // the first pair: (1 + ½)/2 − ½ = 0.25 → 0.75·x0 + 0.25·x1.
    let v = x.value.scalars
    XCTAssertEqual(try resize(x, size: [6, 8], mode: .bilinear).value.scalars[1], 0.75 * v[0] + 0.25 * v[1], accuracy: 1e-5)
  }

  func testDropout() throws {
    let x = leaf([4, 50], seed: 33)
    var g = SeededGenerator(seed: 1)
    let y = try dropout(x, ratio: 0.5, training: true, generator: &g)
    let kept = y.value.scalars.filter { $0 != 0 }.count
    XCTAssertTrue((60...140).contains(kept), "\(kept) of 200 kept at p = 0.5")
    for (a, b) in zip(y.value.scalars, x.value.scalars) where a != 0 { XCTAssertEqual(a, 2 * b, accuracy: 1e-6) }
    try check("Dropout(0.5) fixed mask", [x]) {
      var same = SeededGenerator(seed: 1)
      return try dropout(x, ratio: 0.5, training: true, generator: &same)
    }
    XCTAssertEqual(try dropout(x, ratio: 0.5, training: false, generator: &g).value.scalars, x.value.scalars)
    XCTAssertThrowsError(try dropout(x, ratio: 1, training: true, generator: &g))
  }

  func testGemmAndMatMul() throws {
    let a = leaf([3, 5], seed: 34)
    let at = leaf([5, 3], seed: 35)
    let b = leaf([5, 4], seed: 36)
    let bt = leaf([4, 5], seed: 37)
    let c = leaf([1, 4], seed: 38)
    try check("Gemm", [a, b, c]) { try gemm(a, b, c) }
    try check("Gemm transA transB a=0.5 b=2", [at, bt, c]) { try gemm(at, bt, c, alpha: 0.5, beta: 2, transA: true, transB: true) }
    try check("Gemm transA", [at, b]) { try gemm(at, b, nil, transA: true) }
    try check("Gemm transB (Linear)", [a, bt]) { try gemm(a, bt, nil, transB: true) }
    // Gemm(transB) agrees with Linear.
    let bias = leaf([4], seed: 39)
    XCTAssertEqual(try gemm(a, bt, bias, transB: true).value.scalars, try linear(a, bt, bias).value.scalars)
    let x = leaf([2, 3, 5], seed: 40)
    let y = leaf([2, 5, 4], seed: 41)
    try check("MatMul batched", [x, y]) { try matMul(x, y) }
    try check("MatMul shared B", [x, b]) { try matMul(x, b) }
    XCTAssertThrowsError(try gemm(a, a)) { XCTAssertTrue("\($0)".contains("inner dimensions differ"), "\($0)") }
  }

  func testTransposeAndPad() throws {
    let x = leaf([2, 3, 4, 5], seed: 46)
    let nhwc = try transpose(x, [0, 2, 3, 1])
    XCTAssertEqual(nhwc.shape, [2, 4, 5, 3])
    // Element (n=1, h=2, w=3, c=1) of the NHWC copy is x[1, 1, 2, 3].
    let (nhwcIndex, nchwIndex) = (((1 * 4 + 2) * 5 + 3) * 3 + 1, ((1 * 3 + 1) * 4 + 2) * 5 + 3)
    XCTAssertEqual(nhwc.value.scalars[nhwcIndex], x.value.scalars[nchwIndex])
    try check("Transpose NCHW→NHWC", [x]) { try transpose(x, [0, 2, 3, 1]) }
    try check("Transpose [3,1,0,2]", [x]) { try transpose(x, [3, 1, 0, 2]) }
    XCTAssertThrowsError(try transpose(x, [0, 1, 1, 2])) { XCTAssertTrue("\($0)".contains("is not a permutation"), "\($0)") }

    let row = Variable(try Tensor(shape: [1, 4], values: [1, 2, 3, 4]), requiresGrad: true)
    // numpy: pad([1,2,3,4], (2, 3), mode) for the three modes.
    XCTAssertEqual(try pad(row, pads: [0, 2, 0, 3], mode: .constant, value: 9).value.scalars, [9, 9, 1, 2, 3, 4, 9, 9, 9])
    XCTAssertEqual(try pad(row, pads: [0, 2, 0, 3], mode: .reflect).value.scalars, [3, 2, 1, 2, 3, 4, 3, 2, 1])
    XCTAssertEqual(try pad(row, pads: [0, 2, 0, 3], mode: .edge).value.scalars, [1, 1, 1, 2, 3, 4, 4, 4, 4])
    XCTAssertEqual(try pad(row, pads: [0, -1, 0, 1], mode: .constant).value.scalars, [2, 3, 4, 0], "negative pads crop")
    let spatial = [0, 0, 1, 2, 0, 0, 2, 1]
    try check("Pad constant 0.5 (H, W)", [x]) { try pad(x, pads: spatial, mode: .constant, value: 0.5) }
    try check("Pad constant, channels and a crop", [x]) { try pad(x, pads: [0, 1, -1, 0, 1, 0, 0, 2], mode: .constant) }
    try check("Pad reflect", [x]) { try pad(x, pads: [0, 0, 3, 2, 0, 0, 1, 4], mode: .reflect) }
    try check("Pad edge", [x]) { try pad(x, pads: [0, 1, 3, 2, 1, 0, 1, 4], mode: .edge) }
    XCTAssertThrowsError(try pad(x, pads: [0, 0, 4, 0, 0, 0, 0, 0], mode: .reflect)) {
      XCTAssertTrue("\($0)".contains("must be smaller than the input's extent 4 on axis 2"), "\($0)")
    }
  }

  /// Slice scatters its gradient into zeros of the input's shape; a channel split whose two
  /// halves both flow on (ShuffleNet V2's unit, through GraphModel) gives every input element
  /// exactly one gradient.
  func testSlice() throws {
    let x = leaf([2, 6, 4, 5], seed: 47)
    let half = SliceAttributes(starts: [3], ends: [Int.max], axes: [1])
    let y = try slice(x, half)
    XCTAssertEqual(y.shape, [2, 3, 4, 5])
    // Element (n=1, c=0, h=2, w=3) of the second half is x[1, 3, 2, 3].
    let (yIndex, xIndex) = (((1 * 3 + 0) * 4 + 2) * 5 + 3, ((1 * 6 + 3) * 4 + 2) * 5 + 3)
    XCTAssertEqual(y.value.scalars[yIndex], x.value.scalars[xIndex])
    try check("Slice channel half", [x]) { try slice(x, half) }
    try check("Slice negative bounds, steps 2 and 3", [x]) {
      try slice(x, SliceAttributes(starts: [-4, 0, 1], ends: [-1, 5, 6], axes: [2, 3, 1], steps: [1, 3, 2]))
    }
    try check("Slice reversed W, step −2 on H", [x]) {
      try slice(x, SliceAttributes(starts: [-1, 3], ends: [Int.min, -100], axes: [3, 2], steps: [-1, -2]))
    }
    // Outside the slice the gradient is exactly zero.
    x.grad = nil
    try slice(x, half).backward(seed: Tensor(shape: [2, 3, 4, 5], repeating: 1))
    let g = try XCTUnwrap(x.grad).scalars
    // 20 elements a channel map; channels 3..<6 of each item were taken.
    let taken: [Bool] = g.indices.map { ($0 / 20) % 6 >= 3 }
    let expected: [Float] = taken.map { $0 ? 1 : 0 }
    XCTAssertEqual(g, expected)
    XCTAssertThrowsError(try slice(x, SliceAttributes(starts: [4], ends: [2], axes: [1]))) {
      XCTAssertTrue("\($0)".contains("takes nothing"), "\($0)")
    }

    var graph = Graph(name: "shufflenet_unit")
    let input = graph.addInput(name: "x", shape: [2, 6, 4, 5])
    var r = SeededGenerator(seed: 48)
    let kept = graph.slice(input, SliceAttributes(starts: [0], ends: [3], axes: [1]), name: "split_0")
    var b = graph.slice(input, SliceAttributes(starts: [3], ends: [6], axes: [1]), name: "split_1")
    b = graph.conv(b, weight: .randomNormal(shape: [3, 3, 1, 1], std: 0.5, generator: &r), bias: nil, .square(1), name: "pw")
    b = graph.activation(b, .tanh, name: "act")
    let joined = graph.concat([kept, b], axis: 1, name: "concat")
    let grouped = graph.reshape(joined, to: [2, 2, 3, 4, 5], name: "group")
    let shuffled = graph.addNode(.transpose(permutation: [0, 2, 1, 3, 4]), name: "shuffle", inputs: [grouped])[0]
    graph.outputs = [graph.reshape(shuffled, to: [2, 6, 4, 5], name: "ungroup")]
    let model = try GraphModel(graph)
    try check("ShuffleNet V2 unit (GraphModel)", [x] + model.parameters) { try model(x) }
  }

  func testLocalResponseNormalization() throws {
    let x = leaf([2, 6, 3, 2], seed: 47)
    // Channel 0 with size 3 sees channels 0 and 1: y = x / (2 + 0.5/3·(x0² + x1²))^0.75.
    let y = try localResponseNormalization(x, size: 3, alpha: 0.5, beta: 0.75, bias: 2).value.scalars
    let (x0, x1) = (x.value.scalars[0], x.value.scalars[6])
    XCTAssertEqual(y[0], x0 / powf(2 + 0.5 / 3 * (x0 * x0 + x1 * x1), 0.75), accuracy: 1e-6)
    try check("LRN size 5 (AlexNet)", [x]) { try localResponseNormalization(x, size: 5, alpha: 0.5, beta: 0.75, bias: 1) }
    try check("LRN size 4 (uneven window)", [x]) { try localResponseNormalization(x, size: 4, alpha: 1, beta: 0.6, bias: 2) }
    try check("LRN size 1", [x]) { try localResponseNormalization(x, size: 1, alpha: 0.3, beta: 1, bias: 1) }
  }

  func testSubAndDiv() throws {
    let a = leaf([2, 3, 4, 5], seed: 48)
    let perChannel = leaf([1, 3, 1, 1], seed: 49, awayFromZero: 0.5)
    let full = leaf([2, 3, 4, 5], seed: 50, awayFromZero: 0.5)
    try check("Sub [2,3,4,5] − [1,3,1,1]", [a, perChannel]) { try sub(a, perChannel) }
    try check("Sub [1,3,1,1] − [2,3,4,5]", [perChannel, a]) { try sub(perChannel, a) }
    try check("Div [2,3,4,5] / [1,3,1,1]", [a, perChannel]) { try div(a, perChannel) }
    try check("Div same shape", [a, full]) { try div(a, full) }
    try check("Div [1,3,1,1] / [2,3,4,5]", [perChannel, full]) { try div(perChannel, full) }
    XCTAssertEqual(try div(a, full).value.scalars[7], a.value.scalars[7] / full.value.scalars[7])
  }

  func testGroupedConvolution() throws {
    let x = leaf([2, 4, 5, 6], seed: 42)
    let depthwise = leaf([4, 1, 3, 3], seed: 43)
    let b = leaf([4], seed: 44)
    let spec = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 4)
    try check("Conv depthwise 3x3 s2", [x, depthwise, b]) { try convolution(x, depthwise, b, spec) }
    let w2 = leaf([6, 2, 3, 3], seed: 45)
    let two = ConvolutionSpec(strides: [1, 1], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 2)
    try check("Conv groups 2", [x, w2]) { try convolution(x, w2, nil, two) }
    // EfficientNet-Lite's TensorFlow "SAME" padding: asymmetric on a stride-2 depthwise conv.
    let w5 = leaf([4, 1, 5, 5], seed: 51)
    let same = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [2, 2], groups: 4)
    try check("Conv depthwise 5x5 s2 asymmetric pads", [x, w5, b]) { try convolution(x, w5, b, same) }
    let dilated = ConvolutionSpec(strides: [1, 1], dilations: [2, 2], padsBegin: [2, 2], padsEnd: [2, 2], groups: 4)
    try check("Conv depthwise 3x3 dilated 2", [x, depthwise]) { try convolution(x, depthwise, nil, dilated) }
    // ConvTranspose weights [in, out/groups, kh, kw]: 4 → 6 channels in 2 groups.
    let wt = leaf([4, 3, 4, 4], seed: 52)
    let bt = leaf([6], seed: 53)
    let up = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 2, transposed: true)
    XCTAssertEqual(try convolution(x, wt, bt, up).shape, [2, 6, 10, 12])
    try check("ConvTranspose groups 2", [x, wt, bt]) { try convolution(x, wt, bt, up) }
  }

  /// A convolution whose weights want no gradient makes only oneDNN's backward-data pass.
  func testFrozenConvolutionRunsNoWeightPass() throws {
    // Shapes no other test uses, so the shared primitive is this test's own.
    let x = leaf([1, 5, 9, 7], seed: 54)
    let spec = ConvolutionSpec(strides: [1, 1], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 5)
    let w = Variable(random([5, 1, 3, 3], seed: 55))
    let b = Variable(random([5], seed: 56))
    try convolution(x, w, b, spec).backward()
    XCTAssertNotNil(x.grad)
    let made = try DNNLBackend.shared.trainingConvolution(
      spec, inputDims: [1, 5, 9, 7], weightShape: [5, 1, 3, 3], outputDims: [1, 5, 9, 7], hasBias: true)
    let kernel = try XCTUnwrap(made as? ConvolutionTraining, "oneDNN's training convolution")
    XCTAssertTrue(kernel.madePasses.backwardData)
    XCTAssertFalse(kernel.madePasses.backwardWeights, "frozen weights made a backward-weights primitive")
    let trainable = Variable(w.value, requiresGrad: true)
    try convolution(x, trainable, b, spec).backward()
    XCTAssertTrue(kernel.madePasses.backwardWeights)
    XCTAssertNotNil(trainable.grad)
    XCTAssertNil(b.grad)
  }
}
