import Foundation
import VeilTensor

/// The tail on a KServe v2 / Triton gRPC server (`veil accelerator serve`, Triton, KServe,
/// MLServer), through the accelerator tier's `KServeClient`. Unreachable, overloaded or timed
/// out endpoints become `EnclaveError.acceleratorUnavailable` (a `FailoverBackend` moves on);
/// any other failure, or an answer that is not one FP32 tensor, `EnclaveError.accelerator`.
public final class KServeTailBackend: TailBackend {
  public let client: KServeClient
  public let model: String
  public let version: String
  /// The tail's input name: the tensor that crosses the cut.
  public let inputName: String
  public let timeout: Duration?
  public var endpoint: String { client.endpoint.description }

  public init(endpoint: KServeEndpoint, model: String, version: String, inputName: String, timeout: Duration? = .seconds(30))
    throws
  {
    client = try KServeClient(endpoint: endpoint, defaultTimeout: timeout)
    self.model = model
    self.version = version
    self.inputName = inputName
    self.timeout = timeout
  }

  /// The backend for a plan: its accelerator model name and version, its cut tensor.
  public convenience init(endpoint: KServeEndpoint, plan: DeploymentPlan, timeout: Duration? = .seconds(30)) throws {
    try self.init(
      endpoint: endpoint, model: plan.accelerator.modelName, version: plan.accelerator.modelVersion,
      inputName: plan.cut.tensor, timeout: timeout)
  }

  public func infer(_ features: Tensor) async throws -> Tensor {
    let result: KServeInferResult
    do {
      result = try await client.infer(
        model: model, version: version, inputs: [KServeTensor(name: inputName, tensor: features)], timeout: timeout)
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
    return out.tensor
  }
}
