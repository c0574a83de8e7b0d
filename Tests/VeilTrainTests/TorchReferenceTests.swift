import Foundation
import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

import VeilTrain

/// Every op and loss against PyTorch on the same seeded inputs: the forward value and the
/// gradient of every input and parameter, for Σ R ⊙ f(inputs) with a fixed random R
/// (scripts/torch_gradients.py computes PyTorch's side in float64). Skipped, with the reason
/// printed, when torch is not importable in .venv (`make python-torch` installs it).
final class TorchReferenceTests: XCTestCase {
  /// float32 here against float64 there, relative to each tensor's largest entry.
  static let tolerance = 1e-5

  struct Case {
    var name: String
    var op: String
    var attrs: [String: Any]
    var inputs: [Variable]
    var grad: [Bool]
    var output: Variable
    /// Extra tensors to compare (BatchNorm's running statistics).
    var extra: [String: Tensor] = [:]
  }

  var cases: [Case] = []
  var generator = SeededGenerator(seed: 2026)

  func leaf(_ shape: [Int], awayFromZero: Float = 0) -> Variable {
    Variable(
      Tensor(shape: shape) { d in
        for i in 0..<d.count {
          let v = generator.nextNormal()
          d[i] = v + (v >= 0 ? awayFromZero : -awayFromZero)
        }
      }, requiresGrad: true)
  }

  func record(
    _ name: String, _ op: String, _ inputs: [Variable], attrs: [String: Any] = [:], grad: [Bool]? = nil,
    extra: [String: Tensor] = [:], _ f: () throws -> Variable
  ) throws {
    cases.append(
      Case(name: name, op: op, attrs: attrs, inputs: inputs, grad: grad ?? inputs.map { _ in true }, output: try f(), extra: extra))
  }

  func buildCases() throws {
    // Convolutions (oneDNN forward and backward primitives, grouped ones included).
    let x = leaf([2, 3, 7, 6])
    let w = leaf([4, 3, 3, 3])
    let b = leaf([4])
    let spec = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1)
    try record("conv_s2_p1", "conv", [x, w, b], attrs: ["strides": [2, 2], "dilations": [1, 1], "groups": 1, "pads": [1, 1, 1, 1]]) {
      try convolution(x, w, b, spec)
    }
    let w2 = leaf([2, 3, 2, 3])
    let dilated = ConvolutionSpec(strides: [1, 1], dilations: [2, 1], padsBegin: [0, 1], padsEnd: [1, 0], groups: 1)
    try record("conv_dilated_asym", "conv", [x, w2], attrs: ["strides": [1, 1], "dilations": [2, 1], "groups": 1, "pads": [0, 1, 1, 0]]) {
      try convolution(x, w2, nil, dilated)
    }
    let xg = leaf([2, 4, 6, 5])
    let dw = leaf([4, 1, 3, 3])
    let depthwise = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 4)
    try record("conv_depthwise", "conv", [xg, dw, b], attrs: ["strides": [2, 2], "dilations": [1, 1], "groups": 4, "pads": [1, 1, 1, 1]]) {
      try convolution(xg, dw, b, depthwise)
    }
    let same = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [2, 2], groups: 4)
    let dw5 = leaf([4, 1, 5, 5])
    try record("conv_depthwise_5x5_same", "conv", [xg, dw5], attrs: ["strides": [2, 2], "dilations": [1, 1], "groups": 4, "pads": [1, 1, 2, 2]]) {
      try convolution(xg, dw5, nil, same)
    }
    let wg = leaf([4, 3, 3, 3])
    let bg = leaf([6])
    let groupedUp = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 2, transposed: true)
    try record("conv_transpose_grouped", "conv_transpose", [xg, wg, bg], attrs: ["strides": [2, 2], "padding": [1, 1], "groups": 2]) {
      try convolution(xg, wg, bg, groupedUp)
    }
    let xt = leaf([2, 3, 4, 5])
    let wt = leaf([3, 2, 4, 4])
    let bt = leaf([2])
    let transposed = ConvolutionSpec(strides: [2, 2], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1, transposed: true)
    try record("conv_transpose", "conv_transpose", [xt, wt, bt], attrs: ["strides": [2, 2], "padding": [1, 1]]) {
      try convolution(xt, wt, bt, transposed)
    }
    // BatchNorm, training (batch statistics, running statistics updated) and evaluation.
    for training in [true, false] {
      let bn = BatchNorm("bn", channels: 3, momentum: 0.1)
      bn.scale.value = leaf([3]).value
      bn.shift.value = leaf([3]).value
      let mean = leaf([3]).value
      let variance = Kernels.map(leaf([3]).value) { 0.5 + abs($0) }
      try bn.load(runningMean: mean, runningVariance: variance)
      bn.training = training
      let xb = leaf([4, 3, 3, 2])
      let y = try bn(xb)
      try record(
        "batch_norm_\(training ? "train" : "eval")", "batch_norm",
        [xb, bn.scale, bn.shift],
        attrs: [
          "training": training, "momentum": 0.1, "epsilon": 1e-5, "running_mean": mean.scalars, "running_var": variance.scalars,
        ],
        extra: training ? ["running_mean": bn.runningMean, "running_var": bn.runningVariance] : [:]
      ) { y }
    }
    // Point-wise activations, sampled away from kinks.
    let a = leaf([2, 3, 4], awayFromZero: 0.05)
    try record("relu", "relu", [a]) { relu(a) }
    try record("leaky_relu", "leaky_relu", [a], attrs: ["alpha": 0.2]) { leakyRelu(a, alpha: 0.2) }
    try record("tanh", "tanh", [a]) { VeilTrain.tanh(a) }
    try record("sigmoid", "sigmoid", [a]) { sigmoid(a) }
    try record("silu", "silu", [a]) { silu(a) }
    let c = Variable(Kernels.map(leaf([2, 3, 4]).value) { v in abs(v - 1) < 0.05 ? v + 0.1 : v }, requiresGrad: true)
    try record("clip", "clip", [a], attrs: ["min": 0.0, "max": 1.0]) { clip(a, min: 0, max: 1) }
    try record("clip_relu6_scaled", "clip", [c], attrs: ["min": -0.5, "max": 1.0]) { clip(c, min: -0.5, max: 1) }
    let h = Kernels.map(leaf([2, 3, 4]).value) { 4 * $0 }
    let hs = Variable(Kernels.map(h) { v in abs(abs(v) - 3) < 0.05 ? v + 0.1 : v }, requiresGrad: true)
    try record("hard_swish", "hard_swish", [hs]) { hardSwish(hs) }
    try record("hard_sigmoid", "hard_sigmoid", [hs], attrs: ["alpha": 0.2, "beta": 0.5]) { hardSigmoid(hs, alpha: 0.2, beta: 0.5) }
    try record("softmax_axis1", "softmax", [a], attrs: ["axis": 1]) { try softmax(a, axis: 1) }
    try record("softmax_last", "softmax", [a], attrs: ["axis": -1]) { try softmax(a, axis: -1) }
    // Broadcasting arithmetic and data movement.
    let big = leaf([2, 3, 4, 5])
    let perChannel = leaf([1, 3, 1, 1])
    let row = leaf([5])
    try record("add_broadcast", "add", [big, perChannel]) { try VeilTrain.add(big, perChannel) }
    try record("mul_broadcast", "mul", [big, row]) { try mul(big, row) }
    let other = leaf([2, 2, 4, 5])
    try record("concat_channels", "concat", [big, other], attrs: ["axis": 1]) { try concat([big, other], axis: 1) }
    try record("reshape", "reshape", [big], attrs: ["shape": [3, -1, 2]]) { try reshape(big, [3, -1, 2]) }
    try record("flatten", "flatten", [big]) { try flatten(big) }
    try record("transpose_nhwc", "transpose", [big], attrs: ["perm": [0, 2, 3, 1]]) { try transpose(big, [0, 2, 3, 1]) }
    try record("transpose_3102", "transpose", [big], attrs: ["perm": [3, 1, 0, 2]]) { try transpose(big, [3, 1, 0, 2]) }
    for (mode, veil) in [("constant", PadMode.constant), ("reflect", .reflect), ("edge", .edge)] {
      let pads = [0, 0, 1, 3, 0, 0, 2, 1]
      try record("pad_\(mode)", "pad", [big], attrs: ["pads": pads, "mode": mode, "value": 0.5]) {
        try pad(big, pads: pads, mode: veil, value: 0.5)
      }
    }
    try record("pad_constant_crop", "pad", [big], attrs: ["pads": [0, 1, -1, 0, 0, 0, 1, -2], "mode": "constant", "value": 0.0]) {
      try pad(big, pads: [0, 1, -1, 0, 0, 0, 1, -2], mode: .constant)
    }
    let lrnInput = leaf([2, 7, 3, 2])
    try record("lrn_5", "lrn", [lrnInput], attrs: ["size": 5, "alpha": 0.5, "beta": 0.75, "bias": 1.0]) {
      try localResponseNormalization(lrnInput, size: 5, alpha: 0.5, beta: 0.75, bias: 1)
    }
    try record("lrn_3", "lrn", [lrnInput], attrs: ["size": 3, "alpha": 1e-2, "beta": 0.6, "bias": 2.0]) {
      try localResponseNormalization(lrnInput, size: 3, alpha: 1e-2, beta: 0.6, bias: 2)
    }
    // A transformer's: GELU both ways, LayerNorm over the last axis and over the last two.
    let tokens = leaf([2, 5, 8])
    try record("gelu", "gelu", [tokens], attrs: ["approximate": "none"]) { gelu(tokens) }
    try record("gelu_tanh", "gelu", [tokens], attrs: ["approximate": "tanh"]) { gelu(tokens, tanh: true) }
    let (lnScale, lnShift) = (leaf([8]), leaf([8]))
    try record("layer_norm", "layer_norm", [tokens, lnScale, lnShift], attrs: ["shape": [8], "epsilon": 1e-5]) {
      try layerNormalization(tokens, scale: lnScale, shift: lnShift, epsilon: 1e-5)
    }
    let lnScale2 = leaf([5, 8])
    try record("layer_norm_two_axes", "layer_norm", [tokens, lnScale2], attrs: ["shape": [5, 8], "epsilon": 1e-6]) {
      try layerNormalization(tokens, scale: lnScale2, shift: nil, axis: 1, epsilon: 1e-6)
    }
    let divisor = Variable(Kernels.map(leaf([1, 3, 1, 1]).value) { $0 >= 0 ? $0 + 0.5 : $0 - 0.5 }, requiresGrad: true)
    try record("sub_broadcast", "sub", [perChannel, big]) { try sub(perChannel, big) }
    try record("div_broadcast", "div", [big, divisor]) { try div(big, divisor) }
    // Gemm, Linear, MatMul.
    let m = leaf([3, 5])
    let mt = leaf([5, 3])
    let k = leaf([5, 4])
    let kt = leaf([4, 5])
    let bias = leaf([4])
    let cm = leaf([3, 4])
    try record("linear", "linear", [m, kt, bias]) { try linear(m, kt, bias) }
    try record("gemm", "gemm", [m, k, bias], attrs: ["alpha": 1.0, "beta": 1.0, "transA": false, "transB": false]) { try gemm(m, k, bias) }
    try record("gemm_trans_scaled", "gemm", [mt, kt, cm], attrs: ["alpha": 0.5, "beta": 2.0, "transA": true, "transB": true]) {
      try gemm(mt, kt, cm, alpha: 0.5, beta: 2, transA: true, transB: true)
    }
    let batched = leaf([2, 3, 5])
    let right = leaf([2, 5, 4])
    try record("matmul_batched", "matmul", [batched, right]) { try matMul(batched, right) }
    try record("matmul_shared", "matmul", [batched, k]) { try matMul(batched, k) }
    // Pooling (distinct values, so every maximum is unique) and resizing.
    var order = SeededGenerator(seed: 7)
    let distinct = (0..<2 * 3 * 7 * 6).shuffled(using: &order).map { Float($0) / 40 }
    let p = Variable(try Tensor(shape: [2, 3, 7, 6], values: distinct), requiresGrad: true)
    try record("max_pool_3x3_s2_p1", "max_pool", [p], attrs: ["kernel": [3, 3], "strides": [2, 2], "padding": [1, 1], "ceil": false]) {
      try maxPool(p, PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], padsEnd: [1, 1]))
    }
    try record("max_pool_2x2_ceil", "max_pool", [p], attrs: ["kernel": [2, 2], "strides": [2, 2], "padding": [0, 0], "ceil": true]) {
      try maxPool(p, PoolAttributes(kernel: [2, 2], strides: [2, 2], ceilMode: true))
    }
    for include in [true, false] {
      for ceil in [true, false] {
        try record(
          "avg_pool_\(include ? "include" : "exclude")_\(ceil ? "ceil" : "floor")", "avg_pool", [p],
          attrs: ["kernel": [3, 3], "strides": [2, 2], "padding": [1, 1], "ceil": ceil, "include_pad": include]
        ) {
          try averagePool(
            p, PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], padsEnd: [1, 1], ceilMode: ceil, countIncludePad: include))
        }
      }
    }
    try record("global_avg_pool", "global_avg_pool", [big]) { try globalAveragePool(big) }
    let small = leaf([1, 2, 3, 4])
    for (mode, veil) in [("nearest", ResizeMode.nearest), ("bilinear", .bilinear)] {
      for size in [[6, 8], [5, 7], [2, 3]] where !(mode == "nearest" && size == [5, 7]) {
        try record("resize_\(mode)_\(size[0])x\(size[1])", "resize", [small], attrs: ["mode": mode, "size": size]) {
          try resize(small, size: size, mode: veil)
        }
      }
    }
    // Losses (the target is a constant: no gradient wanted).
    let prediction = leaf([2, 3, 4])
    let target = Variable(leaf([2, 3, 4]).value)
    try record("mse_loss", "mse_loss", [prediction, target], grad: [true, false]) { try mseLoss(prediction, target.value) }
    let apart = Variable(try Kernels.zip(prediction.value, target.value) { p, t in abs(p - t) < 0.1 ? t + 0.2 : p }, requiresGrad: true)
    try record("l1_loss", "l1_loss", [apart, target], grad: [true, false]) { try l1Loss(apart, target.value) }
    let probabilities = Variable(Tensor(shape: [2, 3, 4]) { d in for i in 0..<d.count { d[i] = Float(i % 5) / 4 } })
    let logits = Variable(Kernels.map(prediction.value) { 4 * $0 }, requiresGrad: true)
    try record("bce_logits", "bce_logits", [logits, probabilities], grad: [true, false]) {
      try binaryCrossEntropyWithLogits(logits, probabilities.value)
    }
    let scores = leaf([4, 5])
    try record("cross_entropy", "cross_entropy", [scores], attrs: ["labels": [0, 4, 2, 2]]) { try softmaxCrossEntropy(scores, labels: [0, 4, 2, 2]) }
  }

  func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
    let scale = max(b.scalars.map { abs(Double($0)) }.max() ?? 0, 1e-6)
    return zip(a.scalars, b.scalars).map { abs(Double($0) - Double($1)) }.max().map { $0 / scale } ?? 0
  }

  func testEveryOpAndLossAgainstPyTorch() throws {
    try buildCases()
    let dir = try PythonScript.temporaryDirectory("torch-gradients")
    defer { try? FileManager.default.removeItem(at: dir) }
    var listing: [[String: Any]] = []
    var seeds: [String: Tensor] = [:]
    for c in cases {
      var files: [String] = []
      for (i, x) in c.inputs.enumerated() {
        let file = "\(c.name).in\(i).npy"
        try NPY.write(x.value, to: dir.appendingPathComponent(file))
        files.append(file)
      }
      let seed = Tensor.randomNormal(shape: c.output.shape, generator: &generator)
      seeds[c.name] = seed
      try NPY.write(seed, to: dir.appendingPathComponent("\(c.name).seed.npy"))
      listing.append(["name": c.name, "op": c.op, "attrs": c.attrs, "inputs": files, "grad": c.grad, "seed": "\(c.name).seed.npy"])
    }
    try JSONSerialization.data(withJSONObject: listing).write(to: dir.appendingPathComponent("cases.json"))
    let report: String
    do {
      report = try PythonScript.run("torch_gradients.py", [dir.path])
    } catch let failure as PythonScript.Failure where failure.description.contains("torch is not importable") {
      throw XCTSkip("PyTorch is not installed in .venv, so VeilTrain's gradients were not compared with it: run `make python-torch`")
    }
    print("PyTorch reference: \(report.trimmingCharacters(in: .whitespacesAndNewlines))")
    for c in cases {
      for x in c.inputs { x.grad = nil }
      try c.output.backward(seed: seeds[c.name])
      var worst = relativeError(c.output.value, try NPY.read(dir.appendingPathComponent("\(c.name).out.npy")))
      XCTAssertLessThan(worst, Self.tolerance, "\(c.name): forward")
      for (i, x) in c.inputs.enumerated() where c.grad[i] {
        let reference = try NPY.read(dir.appendingPathComponent("\(c.name).grad\(i).npy"))
        let ours = try XCTUnwrap(x.grad, "\(c.name): input \(i) got no gradient")
        XCTAssertEqual(ours.count, reference.count, "\(c.name): input \(i)")
        let err = relativeError(ours, reference)
        worst = max(worst, err)
        XCTAssertLessThan(err, Self.tolerance, "\(c.name): gradient of input \(i) \(x.shape)")
      }
      for (key, tensor) in c.extra {
        let err = relativeError(tensor, try NPY.read(dir.appendingPathComponent("\(c.name).\(key).npy")))
        worst = max(worst, err)
        XCTAssertLessThan(err, Self.tolerance, "\(c.name): \(key)")
      }
      print(String(format: "vs PyTorch %-28@ max relative error %.2e", c.name as NSString, worst))
    }
  }
}
