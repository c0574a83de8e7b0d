import ArgumentParser
import VeilServing

/// The accelerator behind `veil enclave serve --accelerator`: a KServe v2 endpoint.
func acceleratorBackend(_ endpoint: Endpoint, plan: DeploymentPlan) throws -> any TailBackend {
  throw ValidationError(
    "--accelerator \(endpoint): this build has no KServe v2 client yet (it comes with the accelerator tier); use --local-tail")
}
