import Foundation
import SwiftProtobuf
import VeilData
import VeilGraph
import VeilServing
import VeilTensor
import VeilTestSupport

/// The network entry points of the serving tiers, each from the bytes a peer controls:
///
/// - `kserve-request`: a ModelInferRequest as the accelerator reads it (protobuf, then the
///   inputs checked against a model's declared shapes and decoded, the requested outputs, and a
///   `grpc-timeout` value taken from the request's id field);
/// - `kserve-answer`: a ModelInferResponse as the enclave reads the accelerator's answer
///   (checked against the tail's declared output, and decoded without a declaration as
///   `veil infer --accelerator` does);
/// - `plan`: plan.json as `veil enclave serve` reads it, and the defence it names applied as
///   the enclave applies it;
/// - `enclave-request`: the plaintext of a client's record as the enclave reads it (the
///   EnclaveRequest message, the tensor it carries checked against the head's input size, the
///   photo's size read from its header).
enum ServingTargets {
  static let all: [FuzzTarget] = [
    FuzzTarget(
      name: "kserve-request", summary: "ModelInferRequest as the accelerator decodes it, against two models",
      run: { bytes in
        guard let q = try? Inference_ModelInferRequest(serializedBytes: bytes) else { return }
        for m in models {
          if let (inputs, _) = try? AcceleratorService.decodeInputs(q, for: m) {
            // What the decoder returns is what the scheduler runs: it must match the declaration.
            for (t, d) in zip(inputs, m.inputs) where t.shape.count != d.shape.count {
              fatalError("decoded input \(t.shape) does not have the declared rank \(d.shape)")
            }
          }
          _ = try? AcceleratorService.requestedOutputs(q, for: m)
        }
        _ = AcceleratorService.parseTimeout(q.id)
      }, mutate: Mutators.protobuf),
    FuzzTarget(
      name: "kserve-answer", summary: "ModelInferResponse as the enclave decodes the accelerator's answer",
      run: { bytes in
        guard let r = try? Inference_ModelInferResponse(serializedBytes: bytes) else { return }
        if let checked = try? KServeClient.decode(r, expecting: [tailOutput]) {
          guard checked.outputs.count == 1, checked.outputs[0].tensor.shape == tailOutput.shape else {
            fatalError("an answer passed the check with outputs \(checked.outputs.map(\.tensor.shape))")
          }
        }
        _ = try? KServeClient.decode(r)
        // The accelerator's account of its time, as the client reads it with the call it timed.
        if let t = KServeServerTiming(parameters: r.parameters, withinMs: 1000) {
          guard t.queueMs.isFinite, t.computeMs.isFinite, t.queueMs >= 0, t.computeMs >= 0, t.queueMs + t.computeMs <= 1000 else {
            fatalError("a server timing that cannot be true was kept: \(t)")
          }
        }
      }, mutate: Mutators.protobuf),
    FuzzTarget(
      name: "enclave-request", summary: "EnclaveRequest plaintext: the tensor, the pixels or the photo's header",
      run: { bytes in
        guard let q = try? EnclaveRequestMessage(serializedBytes: bytes) else { return }
        switch q.input {
        case .tensor(let t):
          if let x = try? t.tensor(maxElements: 3 * 224 * 224), x.count > 3 * 224 * 224 {
            fatalError("a tensor of \(x.count) elements passed a limit of \(3 * 224 * 224)")
          }
        case .image(let data): _ = encodedImageSize(data)
        case .pixels(let p):
          if let image = try? p.image(width: 224, height: 224), image.pixels.count != 224 * 224 * 3 {
            fatalError("pixels of \(image.pixels.count) bytes passed the check for 224×224 RGB")
          }
        case nil: break
        }
      }, mutate: Mutators.protobuf),
    FuzzTarget(
      name: "plan", summary: "plan.json as the enclave reads it: decoded, validated, its defence applied to a map of the cut's shape",
      run: { bytes in
        guard let plan = try? DeploymentPlan.decode(Data(bytes), file: "fuzz") else { return }
        _ = try? plan.imagePreprocessing
        // What the enclave does with a valid plan's defence, on every map it sends; only small
        // maps, so that an input stays well inside the timeout.
        guard let d = plan.defence, let n = KServeCodec.elementCount(plan.cut.featureShape), n <= 1 << 16 else { return }
        let map = Tensor(shape: plan.cut.featureShape) { o in for k in o.indices { o[k] = Float(k % 17) - 8 } }
        if d.wire != nil {
          guard let sent = try? d.defence.encode(map, channelAxis: d.channelAxis) else { return }
          guard sent.decoded().shape == map.shape else { fatalError("a quantised map came back as \(sent.decoded().shape)") }
        } else {
          var random = SeededGenerator(seed: 1)
          if let sent = try? d.defence.apply(to: map, channelAxis: d.channelAxis, using: &random), sent.shape != map.shape {
            fatalError("the defence turned a map \(map.shape) into \(sent.shape)")
          }
        }
      }),
  ]

  /// The tail's output the enclave expects: 1×1000 FP32 logits.
  static let tailOutput = KServeTensorMetadata(name: "logits", datatype: KServeCodec.fp32, shape: [1, 1000])

  /// A small convolutional model, once without batching (input 1×3×8×8) and once batching up to
  /// 8 rows (the declared batch dimension is then -1).
  static let models: [KServeModel] = {
    let g = FuzzServingModel.graph()
    do {
      return [
        try KServeModel(KServeModelSpec(name: "one", graph: g)),
        try KServeModel(
          KServeModelSpec(name: "many", graph: g, batching: KServeBatching(maxBatchSize: 8, maxQueueDelay: .zero))),
      ]
    } catch {
      fatalError("the fuzz fixture's model does not load: \(error)")
    }
  }()

  // MARK: Seeds

  /// plan.json as the planner writes it: no defence, each fitted defence (noise with its
  /// channel scales, quantisation with its codes on the wire, pruning with its kept channels),
  /// and a private output.
  static func plans() throws -> [(String, [UInt8])] {
    let hex = String(repeating: "0f", count: 32)
    let base = DeploymentPlan(
      model: .init(name: "resnet50", sha256: hex), cut: .init(name: "layer2", tensor: "t", featureShape: [1, 8, 4, 4]),
      head: .init(path: "head.onnx", sha256: hex), tail: .init(path: "tail.onnx", sha256: hex),
      preprocessing: .init(preset: "imagenet", appliedIn: .client),
      input: .init(width: 32, height: 32, layout: "nchw", shape: [1, 3, 32, 32]),
      output: .init(name: "logits", shape: [1, 10]), labels: "labels.txt",
      accelerator: .init(modelName: "tail", modelVersion: "1"), tee: .init(preset: "sgx2", evidenceMode: "simulated"))
    var rng = SeededGenerator(seed: 4)
    let sample = Tensor.randomNormal(shape: [2, 8, 4, 4], generator: &rng)
    var plans = [("plain.json", base)]
    for (name, defence) in [
      ("gaussian", CutDefence.noise(0.5)), ("laplace", .noise(1, laplace: true)), ("quant", .quantisation(bits: 4)),
      ("prune", .pruning(0.5)),
    ] {
      var p = base
      p.defence = .init(defence: try defence.fitted(to: sample), channelAxis: 1, utility: "top-1 agreement 1.00")
      plans.append(("defence-\(name).json", p))
    }
    var p = base
    p.privateOutput = .init(cut: .init(name: "avgpool", tensor: "pooled", featureShape: [1, 8]), part: .init(path: "last.onnx", sha256: hex))
    p.defence = .init(defence: .quantisation(bits: 8), channelAxis: 1, encoded: false)
    plans.append(("private-output.json", p))
    return try plans.map { ($0.0, Array(try $0.1.encoded())) }
  }

  static func seeds() throws -> [(String, [(String, [UInt8])])] {
    var rng = SeededGenerator(seed: 9)
    let x = Tensor.randomNormal(shape: [1, 3, 8, 8], generator: &rng)
    var requests: [(String, [UInt8])] = []
    for encoding in KServeEncoding.allCases {
      var q = KServeClient.makeRequest(
        model: "one", inputs: [KServeTensor(name: "features", tensor: x)], outputs: ["flat"], id: "100m",
        encoding: encoding)
      requests.append(("one-\(encoding.rawValue).pb", try q.serializedBytes()))
      let x2 = Tensor.randomNormal(shape: [2, 3, 8, 8], generator: &rng)
      q = KServeClient.makeRequest(model: "many", inputs: [KServeTensor(name: "features", tensor: x2)], encoding: encoding)
      requests.append(("batch2-\(encoding.rawValue).pb", try q.serializedBytes()))
    }
    var answers: [(String, [UInt8])] = []
    let logits = Tensor.randomNormal(shape: [1, 1000], generator: &rng)
    for raw in [true, false] {
      var r = Inference_ModelInferResponse()
      r.modelName = "tail"
      r.modelVersion = "1"
      var o = Inference_ModelInferResponse.InferOutputTensor()
      o.name = "logits"
      o.datatype = KServeCodec.fp32
      o.shape = [1, 1000]
      if raw { r.rawOutputContents = [KServeCodec.rawBytes(logits)] } else { o.contents.fp32Contents = logits.scalars }
      r.outputs = [o]
      answers.append(("logits-\(raw ? "raw" : "typed").pb", try r.serializedBytes()))
    }
    var tensorRequest = EnclaveRequestMessage()
    tensorRequest.input = .tensor(TensorMessage(Tensor.randomNormal(shape: [1, 3, 16, 16], generator: &rng)))
    tensorRequest.topK = 5
    var pixelsRequest = EnclaveRequestMessage()
    pixelsRequest.input = .pixels(PixelsMessage(try ByteImage(width: 16, height: 16, channels: 3, pixels: (0..<768).map { UInt8($0 % 251) })))
    pixelsRequest.topK = 1
    var photoRequest = EnclaveRequestMessage()
    photoRequest.input = .image(Data(try Seeds.pngs().first?.1 ?? []))
    photoRequest.topK = 1
    photoRequest.wantLogits = true
    return [
      ("plan", try plans()),
      ("kserve-request", requests),
      ("kserve-answer", answers),
      (
        "enclave-request",
        [
          ("tensor.pb", try tensorRequest.serializedBytes()), ("pixels.pb", try pixelsRequest.serializedBytes()),
          ("photo.pb", try photoRequest.serializedBytes()),
        ]
      ),
    ]
  }
}
