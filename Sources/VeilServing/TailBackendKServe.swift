import Foundation
import VeilGraph
import VeilTensor

/// The tail on a KServe v2 / Triton gRPC server (`veil accelerator serve`, Triton, KServe,
/// MLServer), through the accelerator tier's `KServeClient`. Unreachable, overloaded or timed
/// out endpoints become `EnclaveError.acceleratorUnavailable` (a `FailoverBackend` moves on);
/// any other failure, or an answer that is not the tail's declared output, `EnclaveError.accelerator`.
///
/// The accelerator is not trusted: its answer is checked against the output the plan's tail
/// declares (datatype and shape at batch 1), never read by the shape it claims, and answers
/// larger than that output (plus room for the protocol's fields) are refused by the transport
/// before they are decoded.
public final class KServeTailBackend: TailBackend {
  public let client: KServeClient
  public let model: String
  public let version: String
  /// The tail's inputs: the tensor that crosses the cut (FP32), or a quantised map's codes
  /// (UINT8 / UINT16), minimum and step.
  public let inputs: [KServeTensorMetadata]
  /// The tail's output as the plan declares it: what every answer must be.
  public let output: KServeTensorMetadata
  public let timeout: Duration?
  public var endpoint: String { client.endpoint.description }

  /// The largest answer read for an output of `elements` FP32 values: the values, twice over (raw
  /// or typed), and 64 KiB for names, shapes and framing.
  static func maxResponseBytes(outputElements elements: Int) -> Int { 2 * 4 * elements + (64 << 10) }

  public init(
    endpoint: KServeEndpoint, model: String, version: String, inputs: [KServeTensorMetadata], output: KServeTensorMetadata,
    timeout: Duration? = .seconds(30), streaming: Bool = true
  ) throws {
    guard let elements = KServeCodec.elementCount(output.shape), output.shape.allSatisfy({ $0 > 0 }) else {
      throw EnclaveError.invalidArgument("the tail's output shape \(output.shape) is not a bounded batch-1 shape")
    }
    client = try KServeClient(
      endpoint: endpoint, defaultTimeout: timeout, maxResponseBytes: Self.maxResponseBytes(outputElements: elements),
      streaming: streaming)
    self.model = model
    self.version = version
    self.inputs = inputs
    self.output = output
    self.timeout = timeout
  }

  /// The backends for a plan on each of `endpoints`: its accelerator model name and version, the
  /// tail file's inputs (the ONNX writer's form of the cut tensor's name, or the encoded map's
  /// three) and the tail's output, read once from the tail (checked against the plan's digest).
  public static func backends(
    _ endpoints: [KServeEndpoint], plan: LoadedPlan, timeout: Duration? = .seconds(30), streaming: Bool = true
  ) throws -> [KServeTailBackend]
  {
    let (inputs, output) = try plan.tailInterface()
    let p = plan.plan
    return try endpoints.map {
      try KServeTailBackend(
        endpoint: $0, model: p.accelerator.modelName, version: p.accelerator.modelVersion, inputs: inputs, output: output,
        timeout: timeout, streaming: streaming)
    }
  }

  public func infer(_ tensors: [Tensor]) async throws -> TailAnswer {
    guard tensors.count == inputs.count else {
      throw EnclaveError.accelerator(endpoint: endpoint, detail: "the tail takes \(inputs.count) input(s), \(tensors.count) given")
    }
    let result: KServeInferResult
    do {
      result = try await client.infer(
        model: model, version: version,
        inputs: zip(inputs, tensors).map { KServeTensor(name: $0.name, tensor: $1, datatype: $0.datatype) }, timeout: timeout,
        expecting: [output])
    } catch let e as KServeError {
      switch e.kind {
      case .unavailable, .deadlineExceeded, .resourceExhausted, .cancelled:
        throw EnclaveError.acceleratorUnavailable("\(endpoint): \(e.kind.rawValue): \(e.message)")
      default:
        throw EnclaveError.accelerator(endpoint: endpoint, detail: "\(e)")
      }
    }
    guard result.outputs.count == 1, let out = result.outputs.first else {
      throw EnclaveError.accelerator(
        endpoint: endpoint, detail: "model \(model) answered \(result.outputs.count) outputs, the tail has one")
    }
    return TailAnswer(output: out.tensor, endpoint: endpoint, timing: result.timing)
  }
}

extension LoadedPlan {
  /// The tail's inputs (the map in FP32, or with `defence.wire` its codes, minimum and step) and
  /// its output at batch 1 (FP32), from the tail file; the output's shape is the plan's where the
  /// plan declares it (the output part's input when the plan keeps its answer in the enclave).
  public func tailInterface() throws -> (inputs: [KServeTensorMetadata], output: KServeTensorMetadata) {
    var tail = try readPart(plan.tail, field: "tail")
    try tail.inferShapes()
    let expected = plan.defence?.wire == nil ? 1 : 3
    guard tail.inputs.count == expected, tail.outputs.count == 1, let o = tail.outputs.first,
      let shape = plan.privateOutput?.cut.featureShape ?? plan.output?.shape ?? tail.shape(o)
    else {
      throw EnclaveError.plan(
        file: file.path, field: "tail",
        detail: expected == 1
          ? "the tail needs one input and one output of known shape"
          : "the map crosses the cut encoded (defence.wire): the tail needs three inputs (codes, minimum, step) and one output of known shape")
    }
    let inputs = try tail.inputs.map { v in
      KServeTensorMetadata(
        name: tail[v].name, datatype: try WireIntegerType.of(input: tail[v].name, in: tail)?.rawValue ?? KServeCodec.fp32,
        shape: tail.shape(v) ?? [])
    }
    if let wire = plan.defence?.wire, inputs[0].datatype != wire.rawValue {
      throw EnclaveError.plan(
        file: file.path, field: "tail", detail: "its first input is \(inputs[0].datatype); plan.json's defence.wire says \(wire.rawValue)")
    }
    return (inputs, KServeTensorMetadata(name: tail[o].name, datatype: KServeCodec.fp32, shape: shape))
  }
}
