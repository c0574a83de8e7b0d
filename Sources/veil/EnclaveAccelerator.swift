import ArgumentParser
import VeilServing

/// The accelerator behind `veil enclave serve --accelerator`: a KServe v2 endpoint serving the
/// plan's tail under its accelerator model name and version.
/// The input name is the tail file's (the ONNX writer's form of the cut tensor's name).
func acceleratorBackend(_ endpoint: Endpoint, plan: DeploymentPlan, inputName: String) throws -> any TailBackend {
  do {
    return try KServeTailBackend(
      endpoint: KServeEndpoint(host: endpoint.host, port: endpoint.port), model: plan.accelerator.modelName,
      version: plan.accelerator.modelVersion, inputName: inputName)
  } catch {
    throw ValidationError("--accelerator \(endpoint): \(error)")
  }
}
