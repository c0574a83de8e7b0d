import Foundation
import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// Every op of the engine against ONNX Runtime, as a table of cases (ONNX Runtime's own op
/// tests read the same way). Each case is a tiny graph with seeded random inputs and weights;
/// all cases are written as ONNX + .npy into one folder, `scripts/reference.py run` computes
/// the expected outputs with ORT (optimizations off) in a single Python process, and Veil's
/// executor runs each case with and without its inference passes (fusion, BatchNorm folding,
/// identity removal). Agreement is |veil − ort| ≤ abs + rel·|ort| element-wise, with the
/// tolerance stated per case.
final class OpTests: XCTestCase {
  func testConvolution() { check(OpCases.convolution) }
  func testConvTranspose() { check(OpCases.convTranspose) }
  func testBatchNormalization() { check(OpCases.batchNormalization) }
  func testActivations() { check(OpCases.activations) }
  func testPooling() { check(OpCases.pooling) }
  func testElementwise() { check(OpCases.elementwise) }
  func testMatrixProducts() { check(OpCases.matrixProducts) }
  func testDataMovement() { check(OpCases.dataMovement) }
  func testSlicing() { check(OpCases.slicing) }
  func testResize() { check(OpCases.resize) }
  func testSoftmaxDropoutIdentity() { check(OpCases.softmaxDropoutIdentity) }
  func testFusedPatterns() { check(OpCases.fused) }

  /// The dense-layer and attention cases fuse as intended, and the ones that must not, do not.
  func testGemmFusionHappensWhereItShould() throws {
    func kernels(_ name: String) throws -> [String] {
      let c = try XCTUnwrap(OpCases.fused.first { $0.name == name })
      return try Executor(graph: c.graph, backend: ReferenceBackend()).kernelNames
    }
    XCTAssertEqual(try kernels("fused_gemm_gelu"), ["RefGemm+Gelu"])
    XCTAssertEqual(try kernels("fused_gemm_single_row_add_relu"), ["RefGemm+Add+Relu"])
    XCTAssertEqual(try kernels("fused_gemm_token_mlp_residual"), ["RefGemm+Gelu", "RefGemm+Add"])
    let unfused = try kernels("unfused_gemm_broadcast_residual_and_read_view")
    XCTAssertFalse(unfused.contains { $0.contains("+") }, "\(unfused)")
    XCTAssertEqual(try kernels("fused_attention_packed_qkv"), ["RefAttention"])
    XCTAssertEqual(try kernels("fused_attention_div_scale_one_transpose"), ["RefAttention"])
    XCTAssertFalse(try kernels("unfused_attention_other_merge").contains("RefAttention"))
    // BatchNorm written as Mul and Add: into the BatchNorm before it and the convolution, or
    // one BatchNormalization; not where the Mul's result is read again.
    XCTAssertEqual(try kernels("fused_caffe2_bn_then_mul_add_relu"), ["RefConv+Relu"])
    XCTAssertEqual(try kernels("fused_channel_affine_after_concat"), ["RefConcat", "RefBatchNormalization+Relu"])
    let shared = try kernels("unfused_mul_add_shared_or_not_per_channel")
    XCTAssertFalse(shared.contains("RefBatchNormalization"), "\(shared)")
    XCTAssertEqual(try kernels("pad_of_nothing_before_avgpool"), ["RefConv", "RefPool"])
    XCTAssertEqual(try kernels("zero_pad_into_avgpool_and_conv"), ["RefPool", "RefConv"])
  }

  /// The table is checked for coverage: every op of `Op` appears in some case.
  func testEveryOpIsCovered() {
    var seen = Set<String>()
    for c in OpCases.all {
      for n in c.graph.nodes {
        seen.insert(n.op.typeName)
        for p in n.postOps { if case .activation(let a) = p { seen.insert(Op.activation(a).typeName) } }
      }
    }
    let ops: [Op] = [
      .conv(.square(1)), .convTranspose(.square(1)), .batchNormalization(epsilon: 0),
      .maxPool(PoolAttributes(kernel: [1])),
      .averagePool(PoolAttributes(kernel: [1])), .globalAveragePool, .concat(axis: 0), .gemm(GemmAttributes()), .matMul,
      .flatten(axis: 1), .reshape(shape: []), .transpose(permutation: []), .channelShuffle(groups: 1),
      .pad(mode: .constant, pads: [], value: 0),
      .slice(SliceAttributes(starts: [], ends: [])),
      .resize(.nearest, scales: nil, sizes: nil), .softmax(axis: 0), .dropout(ratio: 0), .identity,
      .localResponseNormalization(size: 1, alpha: 0, beta: 0, bias: 0), .layerNormalization(axis: -1, epsilon: 0),
    ]
    let activations: [Activation] = [
      .relu, .leakyRelu(alpha: 0), .clip(min: 0, max: 0), .sigmoid, .silu, .hardSigmoid(alpha: 0, beta: 0), .hardSwish,
      .tanh, .gelu(tanh: false), .sqrt,
    ]
    let binaries: [BinaryKind] = [.add, .sub, .mul, .div]
    let all =
      ops.map(\.typeName) + activations.map { Op.activation($0).typeName } + binaries.map { Op.binary($0).typeName }
    for name in all { XCTAssertTrue(seen.contains(name), "no OpTests case exercises \(name)") }
    XCTAssertEqual(Set(OpCases.all.map(\.name)).count, OpCases.all.count, "case names must be unique")
  }

  /// Runs `cases` through the executor (optimize off and on) and compares with ORT.
  func check(_ cases: [OpCase], file: StaticString = #filePath, line: UInt = #line) {
    let reference: [String: [Tensor]]
    switch OpReference.outputs {
    case .success(let r): reference = r
    case .failure(let e):
      XCTFail("reference outputs unavailable: \(e)", file: file, line: line)
      return
    }
    for c in cases {
      guard let expected = reference[c.name] else {
        XCTFail("\(c.name): no reference outputs", file: file, line: line)
        continue
      }
      for optimize in [false, true] {
        let label = "\(c.name) [optimize: \(optimize)]"
        let outputs: [Tensor]
        do {
          let executor = try Executor(graph: c.graph, options: ExecutorOptions(optimize: optimize))
          outputs = try executor.run(c.inputs)
          OpReference.keepVeilOutputs(outputs, of: c, optimize: optimize)
        } catch {
          print("FAIL \(label): executor threw: \(error)")
          XCTFail("\(label): \(c.summary): executor threw: \(error)", file: file, line: line)
          continue
        }
        guard outputs.count == expected.count else {
          XCTFail("\(label): \(outputs.count) outputs, ORT gave \(expected.count)", file: file, line: line)
          continue
        }
        for (k, (got, want)) in zip(outputs, expected).enumerated() {
          let r = Comparison(got: got, want: want, tolerance: c.tolerance)
          print("\(r.passed ? "ok  " : "FAIL") \(label) output \(k): \(r)")
          if !r.passed {
            XCTFail("\(label): \(c.summary): output \(k): \(r)", file: file, line: line)
          }
        }
      }
    }
  }
}

// MARK: - Reference outputs from ONNX Runtime, computed once for all cases

enum OpReference {
  /// Expected outputs by case name; computed on first use by one run of reference.py.
  static let outputs: Result<[String: [Tensor]], ReferenceError> = Result {
    () throws(ReferenceError) in
    try ONNXRuntimeReference.outputs(
      for: OpCases.all.map { ReferenceCase(name: $0.name, graph: $0.graph, inputs: $0.inputs) }, in: keptDirectory)
  }

  /// With VEIL_OPTESTS_DIR set, the cases stay in that folder after the run, and Veil's
  /// outputs are written beside ORT's (`veil_optimized_0.npy`, `veil_plain_0.npy`), to
  /// look at a failure in NumPy.
  static let keptDirectory: URL? = ProcessInfo.processInfo.environment["VEIL_OPTESTS_DIR"].map {
    URL(fileURLWithPath: $0, isDirectory: true)
  }

  static func keepVeilOutputs(_ outputs: [Tensor], of c: OpCase, optimize: Bool) {
    guard let dir = keptDirectory, let i = OpCases.all.firstIndex(where: { $0.name == c.name }) else { return }
    for (k, t) in outputs.enumerated() {
      let file = dir.appendingPathComponent(ONNXRuntimeReference.folderName(i, c.name)).appendingPathComponent(
        "veil_\(optimize ? "optimized" : "plain")_\(k).npy")
      try? NPY.write(t, to: file)
    }
  }
}

// MARK: - The cases

struct OpCase: Sendable {
  var name: String
  var graph: Graph
  var inputs: [Tensor]
  var tolerance: Tolerance

  /// The nodes and attributes, for failure messages.
  var summary: String {
    graph.nodes.map { n in
      let post = n.postOps.isEmpty ? "" : " +" + n.postOps.map(\.description).joined(separator: "+")
      return "\(n.op)\(attributes(n.op))\(post)"
    }.joined(separator: " → ")
  }

  func attributes(_ op: Op) -> String {
    switch op {
    case .conv(let a), .convTranspose(let a):
      return "(k \(a.kernel) s \(a.strides) d \(a.dilations) pads \(a.padsBegin)/\(a.padsEnd) g \(a.groups) "
        + "outpad \(a.outputPadding))"
    case .maxPool(let p), .averagePool(let p):
      return "(k \(p.kernel) s \(p.strides) pads \(p.padsBegin)/\(p.padsEnd) ceil \(p.ceilMode) "
        + "count_include_pad \(p.countIncludePad))"
    case .gemm(let g): return "(alpha \(g.alpha) beta \(g.beta) transA \(g.transA) transB \(g.transB))"
    case .activation(let a): return "[\(a)]"
    case .pad(let m, let p, let v): return "(\(m) \(p) \(v))"
    case .resize(let k, let s, let z):
      return "(\(k) scales \(s.map { "\($0)" } ?? "-") sizes \(z.map { "\($0)" } ?? "-"))"
    case .concat(let a), .softmax(let a), .flatten(let a): return "(axis \(a))"
    case .reshape(let s): return "(\(s))"
    case .transpose(let p): return "(\(p))"
    case .slice(let a): return "(\(a))"
    default: return ""
    }
  }
}

/// Builds one case: graph inputs get seeded data, weights become initializers.
struct CaseBuilder {
  var graph: Graph
  var rng: SeededGenerator
  var inputs: [Tensor] = []

  init(_ name: String) {
    graph = Graph(name: name)
    rng = SeededGenerator(label: name)
  }

  /// A graph input, normal(0, std) unless a range is given.
  mutating func input(_ shape: [Int], std: Float = 1, range: ClosedRange<Float>? = nil) -> ValueID {
    let t = range.map { uniform(shape, $0) } ?? normal(shape, std: std)
    inputs.append(t)
    return graph.addInput(name: "input\(inputs.count - 1)", shape: shape)
  }

  mutating func normal(_ shape: [Int], std: Float = 1) -> Tensor {
    Tensor.randomNormal(shape: shape, std: std, generator: &rng)
  }

  mutating func uniform(_ shape: [Int], _ range: ClosedRange<Float>) -> Tensor {
    Tensor.randomUniform(shape: shape, low: range.lowerBound, high: range.upperBound, generator: &rng)
  }

  mutating func constant(_ name: String, _ t: Tensor) -> ValueID { graph.addInitializer(name: name, t) }

  /// A conv with He-style weights [oc, ic/groups, k...] and a small bias.
  mutating func conv(_ x: ValueID, inChannels ic: Int, _ oc: Int, _ a: ConvAttributes, bias: Bool = true, name: String)
    -> ValueID
  {
    let fanIn = ic / a.groups * a.kernel.reduce(1, *)
    let w = normal([oc, ic / a.groups] + a.kernel, std: (2 / Float(fanIn)).squareRoot())
    let b = bias ? normal([oc], std: 0.1) : nil
    return graph.conv(x, weight: w, bias: b, a, name: name)
  }

  mutating func batchNorm(_ x: ValueID, channels c: Int, epsilon: Float = 1e-5, name: String) -> ValueID {
    let scale = uniform([c], 0.5...1.5)
    let bias = normal([c], std: 0.2)
    let mean = normal([c], std: 0.2)
    let variance = uniform([c], 0.5...2)
    return graph.batchNorm(x, scale: scale, bias: bias, mean: mean, variance: variance, epsilon: epsilon, name: name)
  }

  func finish(_ outputs: [ValueID], tolerance: Tolerance) -> OpCase {
    var g = graph
    g.outputs = outputs
    return OpCase(name: g.name, graph: g, inputs: inputs, tolerance: tolerance)
  }
}

func opCase(_ name: String, tolerance: Tolerance = .standard, _ body: (inout CaseBuilder) -> [ValueID]) -> OpCase {
  var b = CaseBuilder(name)
  let outputs = body(&b)
  return b.finish(outputs, tolerance: tolerance)
}

enum OpCases {
  static let all: [OpCase] =
    convolution + convTranspose + batchNormalization + activations + pooling + elementwise + matrixProducts
    + dataMovement + slicing
    + resize + softmaxDropoutIdentity + fused

  // Reductions here are ≤ 150 terms of O(1) values: float32 error stays near 1e-6.
  static let convolution: [OpCase] = [
    opCase("conv_3x3_pad1_bias") { b in
      let x = b.input([2, 3, 7, 7])
      return [b.conv(x, inChannels: 3, 4, .square(3), name: "conv")]
    },
    opCase("conv_1x1_no_bias") { b in
      let x = b.input([1, 8, 4, 4])
      return [b.conv(x, inChannels: 8, 5, .square(1), bias: false, name: "conv")]
    },
    opCase("conv_groups2") { b in
      let x = b.input([1, 4, 6, 6])
      return [b.conv(x, inChannels: 4, 6, .square(3, groups: 2), name: "conv")]
    },
    opCase("conv_depthwise") { b in
      let x = b.input([1, 4, 6, 6])
      return [b.conv(x, inChannels: 4, 4, .square(3, groups: 4), bias: false, name: "conv")]
    },
    opCase("conv_depthwise_5x5_stride2") { b in
      let x = b.input([1, 6, 9, 9])
      return [b.conv(x, inChannels: 6, 6, .square(5, stride: 2, groups: 6), name: "conv")]
    },
    opCase("conv_stride2") { b in
      let x = b.input([1, 3, 9, 9])
      return [b.conv(x, inChannels: 3, 5, .square(3, stride: 2), name: "conv")]
    },
    opCase("conv_dilation2") { b in
      let x = b.input([1, 2, 9, 9])
      return [b.conv(x, inChannels: 2, 3, .square(3, dilation: 2), name: "conv")]
    },
    opCase("conv_asymmetric_pads_rect_kernel") { b in
      let x = b.input([1, 2, 6, 7])
      let a = ConvAttributes(kernel: [3, 2], strides: [1, 2], padsBegin: [0, 1], padsEnd: [2, 0])
      return [b.conv(x, inChannels: 2, 3, a, name: "conv")]
    },
    opCase("conv_7x7_stride2_pad3") { b in
      let x = b.input([1, 3, 16, 16])
      return [b.conv(x, inChannels: 3, 8, .square(7, stride: 2), name: "conv")]
    },
  ]

  static let convTranspose: [OpCase] = [
    opCase("convtranspose_stride2_outpad1") { b in
      let x = b.input([1, 4, 5, 5])
      let a = ConvAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], outputPadding: [1, 1])
      return [
        b.graph.convTranspose(
          x, weight: b.normal([4, 3, 3, 3], std: 0.3), bias: b.normal([3], std: 0.1), a, name: "deconv")
      ]
    },
    opCase("convtranspose_4x4_stride2_pad1") { b in
      let x = b.input([1, 3, 4, 4])
      let a = ConvAttributes(kernel: [4, 4], strides: [2, 2], padsBegin: [1, 1])
      return [b.graph.convTranspose(x, weight: b.normal([3, 2, 4, 4], std: 0.3), bias: nil, a, name: "deconv")]
    },
    opCase("convtranspose_groups2_stride2_outpad1") { b in
      let x = b.input([1, 4, 4, 4])
      let a = ConvAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], groups: 2, outputPadding: [1, 1])
      // Weights [ic, oc/groups, k, k]: 4 input channels, 2 groups of 3 output channels.
      return [
        b.graph.convTranspose(
          x, weight: b.normal([4, 3, 3, 3], std: 0.3), bias: b.normal([6], std: 0.1), a, name: "deconv")
      ]
    },
    opCase("convtranspose_asymmetric_pads") { b in
      let x = b.input([1, 2, 3, 4])
      let a = ConvAttributes(kernel: [3, 3], strides: [2, 1], padsBegin: [0, 1], padsEnd: [1, 0])
      return [
        b.graph.convTranspose(
          x, weight: b.normal([2, 3, 3, 3], std: 0.3), bias: b.normal([3], std: 0.1), a, name: "deconv")
      ]
    },
  ]

  static let batchNormalization: [OpCase] = [
    // Standalone (its input is a graph input, so there is no conv to fold it into).
    opCase("batchnorm_eps1e-3") { b in
      let x = b.input([2, 3, 4, 5])
      return [b.batchNorm(x, channels: 3, epsilon: 1e-3, name: "bn")]
    },
    opCase("batchnorm_rank2") { b in
      let x = b.input([4, 6])
      return [b.batchNorm(x, channels: 6, name: "bn")]
    },
    // A transformer's: tokens [N, T, D] normalised over D, with scale and shift.
    opCase("layernorm_last_axis") { b in
      let x = b.input([2, 5, 16], std: 3)
      let g = b.constant("g", b.normal([16], std: 0.5))
      let s = b.constant("s", b.normal([16], std: 0.2))
      return [b.graph.addNode(.layerNormalization(axis: -1, epsilon: 1e-6), name: "ln", inputs: [x, g, s])[0]]
    },
    // Over the last two axes, without a shift, with a scale that broadcasts over one of them.
    opCase("layernorm_two_axes_scale_broadcast") { b in
      let x = b.input([3, 4, 6])
      let g = b.constant("g", b.normal([6], std: 0.5))
      return [b.graph.addNode(.layerNormalization(axis: 1, epsilon: 1e-5), name: "ln", inputs: [x, g])[0]]
    },
  ]

  static let activations: [OpCase] = {
    let table: [(String, Activation)] = [
      ("relu", .relu), ("clip_-1_2", .clip(min: -1, max: 2)), ("clip_relu6", .clip(min: 0, max: 6)),
      ("leakyrelu_0.1", .leakyRelu(alpha: 0.1)), ("sigmoid", .sigmoid), ("silu", .silu),
      ("hardsigmoid_0.2_0.5", .hardSigmoid(alpha: 0.2, beta: 0.5)),
      ("hardsigmoid_0.1667_0.5", .hardSigmoid(alpha: 1 / 6, beta: 0.5)),
      ("hardswish", .hardSwish), ("tanh", .tanh), ("gelu", .gelu(tanh: false)), ("gelu_tanh", .gelu(tanh: true)),
    ]
    // Inputs with std 4 cover both saturated ends and the linear middle of every function.
    return table.map { name, a in
      opCase("activation_" + name) { b in
        let x = b.input([2, 3, 4, 5], std: 4)
        return [b.graph.activation(x, a, name: "act")]
      }
    } + [
      // Veil's own SiLU (silu.c): more values than wake the thread team, not whole vectors.
      opCase("activation_silu_across_the_team") { b in
        let x = b.input([2, 3, 61, 53], std: 8)
        return [b.graph.activation(x, .silu, name: "act")]
      },
      // A SiLU after a convolution (fused by the passes) runs on the output in its own layout.
      opCase("conv_then_silu") { b in
        let x = b.input([2, 16, 24, 24])
        let c = b.conv(x, inChannels: 16, 32, .square(3), name: "conv")
        return [b.graph.activation(c, .silu, name: "act")]
      },
      // √ of what a Relu leaves: zeros and positives (ReduceL2's last step).
      opCase("activation_sqrt") { b in
        let x = b.graph.activation(b.input([2, 3, 4, 5], std: 4), .relu, name: "relu")
        return [b.graph.activation(x, .sqrt, name: "act")]
      }
    ]
  }()

  static let pooling: [OpCase] = [
    opCase("maxpool_3x3_stride2_pad1", tolerance: .exact) { b in
      let x = b.input([1, 3, 9, 9])
      return [b.graph.maxPool(x, PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1]), name: "pool")]
    },
    opCase("maxpool_2x2_stride2_ceil", tolerance: .exact) { b in
      let x = b.input([1, 2, 7, 7])
      return [b.graph.maxPool(x, PoolAttributes(kernel: [2, 2], strides: [2, 2], ceilMode: true), name: "pool")]
    },
    opCase("maxpool_asymmetric_pads", tolerance: .exact) { b in
      let x = b.input([1, 2, 6, 6])
      return [
        b.graph.maxPool(
          x, PoolAttributes(kernel: [3, 2], strides: [1, 2], padsBegin: [1, 0], padsEnd: [0, 1]), name: "pool")
      ]
    },
    opCase("avgpool_3x3_stride2_pad1_exclude_pad") { b in
      let x = b.input([1, 3, 8, 8])
      return [
        b.graph.averagePool(
          x, PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], countIncludePad: false), name: "pool")
      ]
    },
    opCase("avgpool_3x3_stride2_pad1_include_pad") { b in
      let x = b.input([1, 3, 8, 8])
      return [
        b.graph.averagePool(
          x, PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], countIncludePad: true), name: "pool")
      ]
    },
    opCase("avgpool_3x3_stride2_ceil_exclude_pad") { b in
      let x = b.input([1, 2, 8, 8])
      return [
        b.graph.averagePool(
          x, PoolAttributes(kernel: [3, 3], strides: [2, 2], ceilMode: true, countIncludePad: false), name: "pool")
      ]
    },
    // The last window starts on the explicit end pad and runs past it: only the explicit pad
    // counts in the divisor (ONNX / PyTorch), not the extension that ceil mode adds.
    opCase("avgpool_3x3_stride2_pad1_ceil_include_pad") { b in
      let x = b.input([1, 2, 8, 8])
      return [
        b.graph.averagePool(
          x,
          PoolAttributes(kernel: [3, 3], strides: [2, 2], padsBegin: [1, 1], ceilMode: true, countIncludePad: true),
          name: "pool")
      ]
    },
    opCase("avgpool_2x2_stride2") { b in
      let x = b.input([2, 3, 6, 6])
      return [b.graph.averagePool(x, PoolAttributes(kernel: [2, 2], strides: [2, 2]), name: "pool")]
    },
    // 42 terms per mean.
    opCase("globalaveragepool") { b in
      let x = b.input([2, 5, 7, 6])
      return [b.graph.globalAveragePool(x, name: "gap")]
    },
  ]

  static let elementwise: [OpCase] = [
    opCase("add_same_shape") { b in
      let x = b.input([2, 3, 4, 5])
      let y = b.input([2, 3, 4, 5])
      return [b.graph.binary(.add, x, y, name: "add")]
    },
    // Squeeze-and-excitation scaling: [N,C,H,W]·[N,C,1,1], both at run time.
    opCase("mul_nchw_by_nc11") { b in
      let x = b.input([2, 3, 4, 5])
      let s = b.input([2, 3, 1, 1])
      return [b.graph.binary(.mul, x, s, name: "mul")]
    },
    opCase("sub_scalar_like_constant") { b in
      let x = b.input([2, 3, 4, 5])
      let c = b.constant("c", b.normal([1]))
      return [b.graph.binary(.sub, x, c, name: "sub")]
    },
    opCase("div_by_channel_constant") { b in
      let x = b.input([2, 3, 4, 5])
      let c = b.constant("c", b.uniform([1, 3, 1, 1], 0.5...2))
      return [b.graph.binary(.div, x, c, name: "div")]
    },
    // The broadcast operand first: non-commutative ops must keep their order.
    opCase("sub_broadcast_first_operand") { b in
      let s = b.input([1, 3, 1, 1])
      let x = b.input([2, 3, 4, 5])
      return [b.graph.binary(.sub, s, x, name: "sub")]
    },
    opCase("div_scalar_like_runtime_by_tensor") { b in
      let s = b.input([1])
      let x = b.input([2, 3, 4, 5], range: 0.5...2)
      return [b.graph.binary(.div, s, x, name: "div")]
    },
    opCase("add_rank_mismatch_trailing") { b in
      let x = b.input([2, 3, 4, 5])
      let r = b.input([5])
      return [b.graph.binary(.add, x, r, name: "add")]
    },
    opCase("mul_both_broadcast") { b in
      let x = b.input([2, 1, 4, 1])
      let y = b.input([1, 3, 1, 5])
      return [b.graph.binary(.mul, x, y, name: "mul")]
    },
  ]

  // Gemm: K = 8; MatMul: K = 4.
  static let matrixProducts: [OpCase] = [
    opCase("gemm_transB_bias") { b in
      let a = b.input([3, 8])
      return [b.graph.linear(a, weight: b.normal([5, 8], std: 0.4), bias: b.normal([5], std: 0.1), name: "fc")]
    },
    opCase("gemm_no_transpose_bias") { b in
      let a = b.input([3, 8])
      let w = b.constant("w", b.normal([8, 5], std: 0.4))
      let c = b.constant("c", b.normal([5], std: 0.1))
      return [b.graph.addNode(.gemm(GemmAttributes()), name: "gemm", inputs: [a, w, c])[0]]
    },
    opCase("gemm_no_transpose_no_bias") { b in
      let a = b.input([4, 6])
      let w = b.constant("w", b.normal([6, 3], std: 0.4))
      return [b.graph.addNode(.gemm(GemmAttributes()), name: "gemm", inputs: [a, w])[0]]
    },
    opCase("gemm_alpha_beta_transB") { b in
      let a = b.input([3, 8])
      let w = b.constant("w", b.normal([5, 8], std: 0.4))
      let c = b.constant("c", b.normal([5], std: 0.1))
      return [
        b.graph.addNode(.gemm(GemmAttributes(alpha: 0.5, beta: 2, transB: true)), name: "gemm", inputs: [a, w, c])[0]
      ]
    },
    opCase("matmul_2d_runtime") { b in
      let x = b.input([3, 4])
      let y = b.input([4, 5])
      return [b.graph.addNode(.matMul, name: "matmul", inputs: [x, y])[0]]
    },
    opCase("matmul_batched_runtime") { b in
      let x = b.input([2, 3, 4])
      let y = b.input([2, 4, 5])
      return [b.graph.addNode(.matMul, name: "matmul", inputs: [x, y])[0]]
    },
    opCase("matmul_broadcast_constant_rhs") { b in
      let x = b.input([2, 3, 4])
      let w = b.constant("w", b.normal([4, 5]))
      return [b.graph.addNode(.matMul, name: "matmul", inputs: [x, w])[0]]
    },
    opCase("matmul_batch_broadcast_runtime") { b in
      let x = b.input([2, 3, 4, 5])
      let y = b.input([3, 5, 2])
      return [b.graph.addNode(.matMul, name: "matmul", inputs: [x, y])[0]]
    },
    // One attention head set as a transformer block computes it: softmax(Q·Kᵀ/√d)·V over
    // [N, heads, T, d], with the projections of [N, T, D] tokens by constant matrices.
    opCase("attention_two_heads") { b in
      let (n, t, heads, d) = (2, 5, 2, 4)
      let x = b.input([n, t, heads * d])
      func project(_ name: String) -> ValueID {
        let w = b.constant(name, b.normal([heads * d, heads * d], std: 0.3))
        let y = b.graph.addNode(.matMul, name: name + "_proj", inputs: [x, w])[0]
        let split = b.graph.addNode(.reshape(shape: [0, t, heads, d]), name: name + "_split", inputs: [y])[0]
        return b.graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: name + "_heads", inputs: [split])[0]
      }
      let (q, k, v) = (project("q"), project("k"), project("v"))
      let kt = b.graph.addNode(.transpose(permutation: [0, 1, 3, 2]), name: "k_t", inputs: [k])[0]
      let scores = b.graph.addNode(.matMul, name: "scores", inputs: [q, kt])[0]
      let scale = b.constant("scale", Tensor(shape: [1], repeating: 0.5))
      let scaled = b.graph.addNode(.binary(.mul), name: "scaled", inputs: [scores, scale])[0]
      let weights = b.graph.addNode(.softmax(axis: -1), name: "weights", inputs: [scaled])[0]
      let mixed = b.graph.addNode(.matMul, name: "mixed", inputs: [weights, v])[0]
      let merged = b.graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: "merged", inputs: [mixed])[0]
      return [b.graph.addNode(.reshape(shape: [0, t, heads * d]), name: "tokens", inputs: [merged])[0]]
    },
  ]

  static let dataMovement: [OpCase] = [
    opCase("concat_channels_three_inputs", tolerance: .exact) { b in
      let x = b.input([1, 2, 4, 4])
      let y = b.input([1, 3, 4, 4])
      let z = b.input([1, 1, 4, 4])
      return [b.graph.concat([x, y, z], axis: 1, name: "concat")]
    },
    opCase("concat_negative_axis", tolerance: .exact) { b in
      let x = b.input([2, 3])
      let y = b.input([2, 4])
      return [b.graph.concat([x, y], axis: -1, name: "concat")]
    },
    opCase("flatten_axis1", tolerance: .exact) { b in
      let x = b.input([2, 3, 4, 5])
      return [b.graph.flatten(x, axis: 1, name: "flatten")]
    },
    // Flatten of a computed value feeding a Linear, as classifier heads do.
    opCase("flatten_axis2_after_relu") { b in
      let x = b.input([2, 3, 2, 2])
      let r = b.graph.activation(x, .relu, name: "relu")
      let f = b.graph.flatten(r, axis: 2, name: "flatten")
      return [f]
    },
    opCase("reshape_zero_and_minus_one", tolerance: .exact) { b in
      let x = b.input([2, 3, 4, 5])
      return [b.graph.reshape(x, to: [2, 0, -1], name: "reshape")]
    },
    opCase("reshape_then_scale") { b in
      let x = b.input([2, 12])
      let r = b.graph.reshape(x, to: [2, 3, 2, 2], name: "reshape")
      let s = b.constant("s", b.normal([1, 3, 1, 1]))
      return [b.graph.binary(.mul, r, s, name: "mul")]
    },
    opCase("transpose_nchw_to_nhwc", tolerance: .exact) { b in
      let x = b.input([2, 3, 4, 5])
      return [b.graph.addNode(.transpose(permutation: [0, 2, 3, 1]), name: "transpose", inputs: [x])[0]]
    },
    opCase("transpose_2d", tolerance: .exact) { b in
      let x = b.input([3, 7])
      return [b.graph.addNode(.transpose(permutation: [1, 0]), name: "transpose", inputs: [x])[0]]
    },
    opCase("pad_constant_0.5", tolerance: .exact) { b in
      let x = b.input([1, 2, 4, 5])
      return [
        b.graph.addNode(.pad(mode: .constant, pads: [0, 0, 1, 2, 0, 0, 2, 1], value: 0.5), name: "pad", inputs: [x])[0]
      ]
    },
    opCase("pad_reflect", tolerance: .exact) { b in
      let x = b.input([1, 2, 4, 5])
      return [
        b.graph.addNode(.pad(mode: .reflect, pads: [0, 0, 2, 1, 0, 0, 1, 3], value: 0), name: "pad", inputs: [x])[0]
      ]
    },
    opCase("pad_edge", tolerance: .exact) { b in
      let x = b.input([1, 2, 4, 5])
      return [
        b.graph.addNode(.pad(mode: .edge, pads: [0, 0, 1, 1, 0, 0, 2, 0], value: 0), name: "pad", inputs: [x])[0]
      ]
    },
  ]

  /// ONNX Slice on runtime tensors (Split imports as one Slice per output): channel halves,
  /// negative and out-of-range bounds, steps above 1 and below 0, slices of a convolution's
  /// output, and ShuffleNet V2's unit around them.
  static let slicing: [OpCase] = [
    opCase("slice_channel_halves", tolerance: .exact) { b in
      let x = b.input([2, 6, 3, 4])
      return [
        b.graph.slice(x, SliceAttributes(starts: [0], ends: [3], axes: [1]), name: "first"),
        b.graph.slice(x, SliceAttributes(starts: [3], ends: [Int(Int64.max)], axes: [1]), name: "second"),
      ]
    },
    opCase("slice_negative_and_clamped_bounds", tolerance: .exact) { b in
      let x = b.input([2, 3, 5, 6])
      return [b.graph.slice(x, SliceAttributes(starts: [-4, -100], ends: [-1, 100], axes: [-1, 2]), name: "slice")]
    },
    opCase("slice_steps_2_and_3", tolerance: .exact) { b in
      let x = b.input([1, 4, 7, 9])
      return [
        b.graph.slice(x, SliceAttributes(starts: [1, 0, 1], ends: [7, 9, 4], axes: [2, 3, 1], steps: [2, 3, 2]), name: "slice")
      ]
    },
    opCase("slice_negative_steps", tolerance: .exact) { b in
      let x = b.input([1, 2, 4, 5])
      return [
        b.graph.slice(
          x, SliceAttributes(starts: [-1, 3], ends: [Int(Int64.min), -10], axes: [3, 2], steps: [-1, -2]), name: "flip")
      ]
    },
    // Slices of a convolution's output, in the layout oneDNN chose for it (channels-last, or
    // channel blocks): channels 8..<16 start on a block of 8 and inside one of 16; 0..<5 with
    // spatial crops fit no block.
    opCase("slice_conv_output_channels_8_to_16") { b in
      let x = b.input([1, 3, 6, 6])
      let c = b.conv(x, inChannels: 3, 16, .square(3), name: "conv")
      let s = b.graph.slice(c, SliceAttributes(starts: [8], ends: [16], axes: [1]), name: "slice")
      return [b.conv(s, inChannels: 8, 4, .square(1), name: "conv2")]
    },
    opCase("slice_conv_output_channels_0_to_5_cropped") { b in
      let x = b.input([1, 3, 6, 6])
      let c = b.conv(x, inChannels: 3, 12, .square(3), name: "conv")
      let s = b.graph.slice(c, SliceAttributes(starts: [0, 1, 1], ends: [5, -1, 6], axes: [1, 2, 3]), name: "slice")
      return [b.conv(s, inChannels: 5, 4, .square(1), name: "conv2")]
    },
    // ShuffleNet V2's stride-1 unit: split the channels, one half through 1×1 → depthwise 3×3
    // → 1×1, concat with the other half, then the channel shuffle (Reshape to 5-D, Transpose,
    // Reshape back).
    opCase("slice_shufflenet_v2_unit") { b in
      let x = b.input([2, 8, 6, 6])
      let kept = b.graph.slice(x, SliceAttributes(starts: [0], ends: [4], axes: [1]), name: "split_0")
      var y = b.graph.slice(x, SliceAttributes(starts: [4], ends: [8], axes: [1]), name: "split_1")
      y = b.graph.activation(b.conv(y, inChannels: 4, 4, .square(1), name: "pw1"), .relu, name: "relu1")
      y = b.conv(y, inChannels: 4, 4, .square(3, groups: 4), name: "dw")
      y = b.graph.activation(b.conv(y, inChannels: 4, 4, .square(1), name: "pw2"), .relu, name: "relu2")
      let joined = b.graph.concat([kept, y], axis: 1, name: "concat")
      let grouped = b.graph.reshape(joined, to: [2, 2, 4, 6, 6], name: "group")
      let shuffled = b.graph.addNode(.transpose(permutation: [0, 2, 1, 3, 4]), name: "shuffle", inputs: [grouped])[0]
      return [b.graph.reshape(shuffled, to: [2, 8, 6, 6], name: "ungroup")]
    },
  ]

  static let resize: [OpCase] = [
    opCase("resize_nearest_2x", tolerance: .exact) { b in
      let x = b.input([1, 2, 3, 4])
      return [b.graph.addNode(.resize(.nearest, scales: [1, 1, 2, 2], sizes: nil), name: "up", inputs: [x])[0]]
    },
    opCase("resize_nearest_sizes_3x") { b in
      let x = b.input([1, 2, 3, 4])
      return [b.graph.addNode(.resize(.nearest, scales: nil, sizes: [1, 2, 9, 12]), name: "up", inputs: [x])[0]]
    },
    opCase("resize_bilinear_2x") { b in
      let x = b.input([1, 2, 3, 4])
      return [b.graph.addNode(.resize(.linear, scales: [1, 1, 2, 2], sizes: nil), name: "up", inputs: [x])[0]]
    },
    opCase("resize_bilinear_sizes_non_integer") { b in
      let x = b.input([1, 2, 3, 4])
      return [b.graph.addNode(.resize(.linear, scales: nil, sizes: [1, 2, 5, 7]), name: "up", inputs: [x])[0]]
    },
  ]

  static let softmaxDropoutIdentity: [OpCase] = [
    opCase("lrn_alexnet") { b in
      let x = b.input([1, 16, 6, 6], std: 2)
      return [b.graph.addNode(.localResponseNormalization(size: 5, alpha: 1e-4, beta: 0.75, bias: 1), name: "lrn", inputs: [x])[0]]
    },
    opCase("lrn_strong_size3") { b in
      let x = b.input([2, 7, 3, 3], std: 3)
      return [b.graph.addNode(.localResponseNormalization(size: 3, alpha: 0.5, beta: 0.6, bias: 2), name: "lrn", inputs: [x])[0]]
    },
    opCase("softmax_axis1") { b in
      let x = b.input([2, 5, 3], std: 3)
      return [b.graph.softmax(x, axis: 1, name: "softmax")]
    },
    opCase("softmax_last_axis_1000") { b in
      let x = b.input([2, 1000], std: 3)
      return [b.graph.softmax(x, axis: -1, name: "softmax")]
    },
    opCase("dropout_inference", tolerance: .exact) { b in
      let x = b.input([2, 3, 4])
      return [b.graph.dropout(x, ratio: 0.3, name: "dropout")]
    },
    opCase("identity", tolerance: .exact) { b in
      let x = b.input([2, 3])
      return [b.graph.addNode(.identity, name: "identity", inputs: [x])[0]]
    },
    opCase("dropout_identity_inside_chain") { b in
      let x = b.input([1, 3, 4, 4])
      let c = b.conv(x, inChannels: 3, 4, .square(3), name: "conv")
      let d = b.graph.dropout(c, ratio: 0.5, name: "dropout")
      let i = b.graph.addNode(.identity, name: "identity", inputs: [d])[0]
      return [b.graph.activation(i, .relu, name: "relu")]
    },
  ]

  /// Patterns the inference passes rewrite; optimize on and off must both match ORT.
  static let fused: [OpCase] = [
    opCase("fused_conv_relu") { b in
      let x = b.input([1, 3, 6, 6])
      let c = b.conv(x, inChannels: 3, 4, .square(3), name: "conv")
      return [b.graph.activation(c, .relu, name: "relu")]
    },
    opCase("fused_conv_add_residual_relu") { b in
      let x = b.input([1, 4, 6, 6])
      let a = b.conv(x, inChannels: 4, 4, .square(3), name: "conv1")
      let r = b.graph.activation(a, .relu, name: "relu1")
      let c = b.conv(r, inChannels: 4, 4, .square(3), name: "conv2")
      let s = b.graph.add(c, r, name: "add")
      return [b.graph.activation(s, .relu, name: "relu2")]
    },
    // Residual on the left of the Add, and a graph input as the residual.
    opCase("fused_conv_add_input_residual") { b in
      let x = b.input([1, 4, 5, 5])
      let c = b.conv(x, inChannels: 4, 4, .square(3), name: "conv")
      return [b.graph.add(x, c, name: "add")]
    },
    opCase("fused_bn_folding_relu") { b in
      let x = b.input([2, 3, 6, 6])
      let c = b.conv(x, inChannels: 3, 5, .square(3), bias: false, name: "conv")
      let n = b.batchNorm(c, channels: 5, name: "bn")
      return [b.graph.activation(n, .relu, name: "relu")]
    },
    // Caffe2's SpatialBN then a scale layer, as the ONNX model zoo's Inception and DenseNet
    // are written: Mul and Add by [C, 1, 1] constants merge into the BatchNorm, which folds
    // into the convolution.
    opCase("fused_caffe2_bn_then_mul_add_relu") { b in
      let x = b.input([1, 3, 6, 6])
      let c = b.conv(x, inChannels: 3, 5, .square(3), bias: false, name: "conv")
      let n = b.batchNorm(c, channels: 5, name: "bn")
      let s = b.constant("s", b.normal([5, 1, 1], std: 0.5))
      let t = b.constant("t", b.normal([5, 1, 1], std: 0.2))
      let y = b.graph.add(b.graph.mul(n, s, name: "scale"), t, name: "shift")
      return [b.graph.activation(y, .relu, name: "relu")]
    },
    // A per-channel Mul then Add with no convolution before it (DenseNet's pre-activation after
    // a Concat): one BatchNormalization pass instead of two.
    // torchvision's squeeze-excitation writes scale · x, the broadcast operand first, after a
    // grouped convolution whose blocked layout oneDNN's JIT binary may not take (nChw8c on
    // AVX-512): either way no reference kernel, and the same values.
    opCase("mul_scale_first_after_grouped_conv") { b in
      let x = b.input([1, 48, 6, 6])
      let s = b.input([1, 48, 1, 1])
      let y = b.conv(x, inChannels: 48, 48, .square(3, groups: 6), name: "conv")
      return [b.graph.binary(.mul, s, y, name: "scale")]
    },
    // DenseNet: a block's input (plain) concatenated with a convolution's output (oneDNN's
    // layout): one layout for both, not the reference concat.
    // ShuffleNet V2's unit as torchvision exports it: Concat of a channel half and a branch's
    // convolution, Reshape → Transpose → Reshape (fused into one channel shuffle, run in the
    // convolutions' layout), then the split that feeds the next unit's convolution. 58
    // channels a half, as in ShuffleNet V2 1.0×: not a multiple of any block.
    opCase("channel_shuffle_between_convs") { b in
      let x = b.input([1, 116, 8, 8])
      let keep = b.graph.slice(x, SliceAttributes(starts: [0], ends: [58], axes: [1]), name: "keep")
      let rest = b.graph.slice(x, SliceAttributes(starts: [58], ends: [116], axes: [1]), name: "rest")
      let y = b.conv(rest, inChannels: 58, 58, .square(1), name: "branch")
      let cat = b.graph.concat([keep, y], axis: 1, name: "concat")
      let v = b.graph.addNode(.reshape(shape: [1, 2, 58, 8, 8]), name: "view", inputs: [cat])[0]
      let t = b.graph.addNode(.transpose(permutation: [0, 2, 1, 3, 4]), name: "swap", inputs: [v])[0]
      let s = b.graph.addNode(.reshape(shape: [1, 116, 8, 8]), name: "shuffled", inputs: [t])[0]
      let half = b.graph.slice(s, SliceAttributes(starts: [58], ends: [116], axes: [1]), name: "split")
      return [b.conv(half, inChannels: 58, 24, .square(1), name: "next")]
    },
    // The op itself, as the writer spells it for ONNX Runtime, at 3 groups on a 5-D tensor.
    opCase("channel_shuffle_op") { b in
      let x = b.input([2, 12, 3, 4, 2])
      return [b.graph.addNode(.channelShuffle(groups: 3), name: "shuffle", inputs: [x])[0]]
    },
    opCase("concat_input_with_conv_output") { b in
      let x = b.input([1, 64, 8, 8])
      let y = b.conv(x, inChannels: 64, 32, .square(3), bias: false, name: "conv")
      return [b.graph.concat([x, y], axis: 1, name: "concat")]
    },
    // PyTorch writes a Pad of nothing before every AvgPool2d: removed, so the pooling reads the
    // convolution's layout.
    opCase("pad_of_nothing_before_avgpool") { b in
      let x = b.input([1, 16, 8, 8])
      let y = b.conv(x, inChannels: 16, 16, .square(1), name: "conv")
      let p = b.graph.addNode(.pad(mode: .constant, pads: [0, 0, 0, 0, 0, 0, 0, 0], value: 0), name: "pad", inputs: [y])[0]
      return [b.graph.averagePool(p, PoolAttributes(kernel: [2, 2], strides: [2, 2]), name: "pool")]
    },
    // Inception v3's pooling branch as PyTorch exports it (AvgPool2d(3, 1, padding=1) counting
    // the padding): a zero Pad, then an unpadded AveragePool; and a Pad before a convolution.
    opCase("zero_pad_into_avgpool_and_conv") { b in
      let x = b.input([1, 8, 7, 7])
      let p = b.graph.addNode(.pad(mode: .constant, pads: [0, 0, 1, 1, 0, 0, 1, 1], value: 0), name: "pad", inputs: [x])[0]
      let pool = b.graph.averagePool(p, PoolAttributes(kernel: [3, 3]), name: "pool")
      let q = b.graph.addNode(.pad(mode: .constant, pads: [0, 0, 0, 2, 0, 0, 1, 0], value: 0), name: "pad2", inputs: [x])[0]
      let conv = b.conv(q, inChannels: 8, 8, .square(3), name: "conv")
      return [pool, conv]
    },
    opCase("fused_channel_affine_after_concat") { b in
      let x = b.input([1, 2, 5, 5])
      let y = b.input([1, 3, 5, 5])
      let cat = b.graph.concat([x, y], axis: 1, name: "concat")
      let s = b.constant("s", b.normal([1, 5, 1, 1], std: 0.5))
      let t = b.constant("t", b.normal([1, 1, 1, 1], std: 0.2))
      let z = b.graph.add(t, b.graph.mul(s, cat, name: "scale"), name: "shift")
      return [b.graph.activation(z, .relu, name: "relu")]
    },
    // Must not fuse: the Mul's result is read twice, and a constant varies along the width.
    opCase("unfused_mul_add_shared_or_not_per_channel") { b in
      let x = b.input([1, 3, 4, 4])
      let s = b.constant("s", b.normal([3, 1, 1], std: 0.5))
      let m = b.graph.mul(x, s, name: "scale")
      let t = b.constant("t", b.normal([1, 1, 4], std: 0.2))
      let shifted = b.graph.add(m, t, name: "shift")
      return [b.graph.add(shifted, m, name: "again")]
    },
    opCase("fused_bn_folding_with_bias_silu") { b in
      let x = b.input([1, 3, 6, 6])
      let c = b.conv(x, inChannels: 3, 4, .square(3, stride: 2), name: "conv")
      let n = b.batchNorm(c, channels: 4, epsilon: 1e-3, name: "bn")
      return [b.graph.activation(n, .silu, name: "silu")]
    },
    opCase("fused_depthwise_bn_relu6") { b in
      let x = b.input([1, 6, 7, 7])
      let c = b.conv(x, inChannels: 6, 6, .square(3, groups: 6), bias: false, name: "dw")
      let n = b.batchNorm(c, channels: 6, name: "bn")
      return [b.graph.activation(n, .clip(min: 0, max: 6), name: "relu6")]
    },
    opCase("fused_convtranspose_bn_relu") { b in
      let x = b.input([1, 4, 4, 4])
      let a = ConvAttributes(kernel: [4, 4], strides: [2, 2], padsBegin: [1, 1])
      let d = b.graph.convTranspose(x, weight: b.normal([4, 3, 4, 4], std: 0.3), bias: nil, a, name: "deconv")
      let n = b.batchNorm(d, channels: 3, name: "bn")
      return [b.graph.activation(n, .relu, name: "relu")]
    },
    // A node built fused: post-ops [LeakyRelu, sum, HardSwish] with a residual input. The
    // writer unfuses it for ORT; the executor runs it fused either way.
    opCase("fused_explicit_postops_chain") { b in
      let x = b.input([1, 3, 5, 5])
      let r = b.input([1, 4, 5, 5])
      let w = b.constant("conv.weight", b.normal([4, 3, 3, 3], std: 0.3))
      let bias = b.constant("conv.bias", b.normal([4], std: 0.1))
      return [
        b.graph.addNode(
          .conv(.square(3)), name: "conv", inputs: [x, w, bias, r],
          postOps: [.activation(.leakyRelu(alpha: 0.2)), .sum, .activation(.hardSwish)])[0]
      ]
    },
    // ResNet basic block: conv-bn-relu-conv-bn, identity shortcut, add, relu (≈ 72 terms).
    opCase("fused_resnet_basic_block") { b in
      let x = b.input([1, 8, 6, 6])
      var y = b.conv(x, inChannels: 8, 8, .square(3), bias: false, name: "conv1")
      y = b.batchNorm(y, channels: 8, name: "bn1")
      y = b.graph.activation(y, .relu, name: "relu1")
      y = b.conv(y, inChannels: 8, 8, .square(3), bias: false, name: "conv2")
      y = b.batchNorm(y, channels: 8, name: "bn2")
      y = b.graph.add(y, x, name: "add")
      return [b.graph.activation(y, .relu, name: "relu2")]
    },
    // Squeeze-and-excitation as EfficientNet builds it: GAP → 1×1 conv → SiLU → 1×1 conv →
    // Sigmoid → scale the input channels.
    opCase("fused_squeeze_excitation") { b in
      let x = b.input([1, 8, 5, 5])
      let p = b.graph.globalAveragePool(x, name: "gap")
      var s = b.conv(p, inChannels: 8, 2, .square(1), name: "reduce")
      s = b.graph.activation(s, .silu, name: "silu")
      s = b.conv(s, inChannels: 2, 8, .square(1), name: "expand")
      s = b.graph.activation(s, .sigmoid, name: "gate")
      return [b.graph.mul(x, s, name: "scale")]
    },
    // Two outputs, one of them an intermediate that fusion would otherwise swallow.
    opCase("fused_conv_output_also_read") { b in
      let x = b.input([1, 3, 5, 5])
      let c = b.conv(x, inChannels: 3, 4, .square(3), name: "conv")
      let r = b.graph.activation(c, .relu, name: "relu")
      return [r, c]
    },
    // Dense layers (a transformer's): activations and residual sums fuse into the Gemm, also
    // through the Reshape that views its [N·tokens, width] rows as [N, tokens, width].
    opCase("fused_gemm_gelu") { b in
      let x = b.input([5, 8])
      let y = b.graph.linear(x, weight: b.normal([6, 8], std: 0.4), bias: b.normal([6], std: 0.1), name: "fc")
      return [b.graph.activation(y, .gelu(tanh: false), name: "gelu")]
    },
    opCase("fused_gemm_single_row_add_relu") { b in
      let x = b.input([1, 8])
      let r = b.input([1, 6])
      let y = b.graph.linear(x, weight: b.normal([6, 8], std: 0.4), bias: b.normal([6], std: 0.1), name: "fc")
      return [b.graph.activation(b.graph.add(r, y, name: "add"), .relu, name: "relu")]
    },
    // x + fc2(gelu(fc1(x))) on [2, 3, 8] tokens, as the zoo's ViT writes its MLP block.
    opCase("fused_gemm_token_mlp_residual") { b in
      let x = b.input([2, 3, 8])
      var y = b.graph.reshape(x, to: [-1, 8], name: "fc1/rows")
      y = b.graph.linear(y, weight: b.normal([12, 8], std: 0.4), bias: b.normal([12], std: 0.1), name: "fc1")
      y = b.graph.reshape(y, to: [-1, 3, 12], name: "fc1/tokens")
      y = b.graph.activation(y, .gelu(tanh: false), name: "gelu")
      y = b.graph.reshape(y, to: [-1, 12], name: "fc2/rows")
      y = b.graph.linear(y, weight: b.normal([8, 12], std: 0.3), bias: b.normal([8], std: 0.1), name: "fc2")
      y = b.graph.reshape(y, to: [-1, 3, 8], name: "fc2/tokens")
      return [b.graph.add(x, y, name: "add")]
    },
    // Self-attention over a packed [N, T, 3·D] projection (2 heads of 4 on 5 tokens), as the
    // zoo's ViT writes it; the executor runs it as one Attention kernel.
    opCase("fused_attention_packed_qkv") { b in
      let x = b.input([2, 5, 24])
      return [attentionBlock(&b, x, kTranspose: .twoSteps, scale: .mul, perm: [0, 2, 1, 3])]
    },
    // ONNX exports' variants: K transposed in one step, the scale a divisor, Q/K/V out of order
    // in a wider projection.
    opCase("fused_attention_div_scale_one_transpose") { b in
      let x = b.input([1, 6, 30])
      return [attentionBlock(&b, x, kTranspose: .oneStep, scale: .div, perm: [0, 2, 1, 3], offsets: [16, 2, 9])]
    },
    // Must not fuse: the heads are merged in another order ([0, 1, 2, 3] keeps [N, h, T, d]).
    opCase("unfused_attention_other_merge") { b in
      let x = b.input([1, 5, 24])
      return [attentionBlock(&b, x, kTranspose: .twoSteps, scale: .mul, perm: [0, 1, 2, 3])]
    },
    // Must not fuse: the residual broadcasts ([1, 3, 8] against [2, 3, 8]), and the viewed
    // Gemm output is also a graph output.
    opCase("unfused_gemm_broadcast_residual_and_read_view") { b in
      let x = b.input([6, 8])
      let r = b.input([1, 3, 8])
      var y = b.graph.linear(x, weight: b.normal([8, 8], std: 0.4), bias: b.normal([8], std: 0.1), name: "fc1")
      y = b.graph.reshape(y, to: [2, 3, 8], name: "fc1/tokens")
      let s = b.graph.add(y, r, name: "add")
      var z = b.graph.linear(x, weight: b.normal([8, 8], std: 0.4), bias: nil, name: "fc2")
      z = b.graph.reshape(z, to: [2, 3, 8], name: "fc2/tokens")
      return [s, z, b.graph.activation(z, .relu, name: "relu")]
    },
  ]
}

enum KeyTranspose { case twoSteps, oneStep }
enum ScaleOp { case mul, div }

/// softmax(Q·Kᵀ/√d)·V on 2 heads of width `(width of a slice) / 2`, Q, K and V sliced from
/// the last axis of x [N, T, W] at `offsets`, heads merged with `perm`.
func attentionBlock(
  _ b: inout CaseBuilder, _ x: ValueID, kTranspose: KeyTranspose, scale: ScaleOp, perm: [Int], offsets: [Int]? = nil
) -> ValueID {
  let s = b.graph.shape(x)!
  let (t, h) = (s[1], 2)
  let d = offsets == nil ? s[2] / 3 : 4
  let at = offsets ?? [0, d, 2 * d]
  func heads(_ k: Int, _ label: String) -> ValueID {
    let part = b.graph.slice(x, SliceAttributes(starts: [at[k]], ends: [at[k] + d], axes: [-1]), name: label)
    return b.graph.reshape(part, to: [0, t, h, d / h], name: label + "_heads")
  }
  let q = b.graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: "q_t", inputs: [heads(0, "q")])[0]
  let kt: ValueID
  switch kTranspose {
  case .twoSteps:
    let k = b.graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: "k_t", inputs: [heads(1, "k")])[0]
    kt = b.graph.addNode(.transpose(permutation: [0, 1, 3, 2]), name: "k_tt", inputs: [k])[0]
  case .oneStep:
    kt = b.graph.addNode(.transpose(permutation: [0, 2, 3, 1]), name: "k_t", inputs: [heads(1, "k")])[0]
  }
  let v = b.graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: "v_t", inputs: [heads(2, "v")])[0]
  var y = b.graph.addNode(.matMul, name: "scores", inputs: [q, kt])[0]
  let root = Float(d / h).squareRoot()
  switch scale {
  case .mul: y = b.graph.mul(y, b.constant("scale", Tensor(shape: [1], repeating: 1 / root)), name: "scaled")
  case .div: y = b.graph.binary(.div, y, b.constant("root", Tensor(shape: [1], repeating: root)), name: "scaled")
  }
  y = b.graph.softmax(y, axis: -1, name: "weights")
  y = b.graph.addNode(.matMul, name: "mix", inputs: [y, v])[0]
  return b.graph.addNode(.transpose(permutation: perm), name: "merge", inputs: [y])[0]
}
