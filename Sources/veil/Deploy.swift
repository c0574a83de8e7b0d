import ArgumentParser
import Foundation
import VeilPlanning

extension DeployTarget: ExpressibleByArgument {}
extension ClusterTEE: ExpressibleByArgument {}

/// `veil deploy`: argument parsing and printing; `ClusterDeployment` (VeilPlanning) writes.
struct Deploy: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Turn a plan folder into what a cluster runs: a Triton repository, a KServe InferenceService, Kubernetes objects for the enclave tier, or a Docker Compose file.",
    discussion: """
      triton: OUT/<model>/config.pbtxt and OUT/<model>/1/model.onnx, the plan's
      tail for `tritonserver --model-repository=OUT`; a symbolic batch dimension
      and dynamic batching when the tail re-batches (max_batch_size 0 otherwise),
      one instance group on the GPUs.

      kserve: OUT/model-repository/ (as triton) and OUT/inferenceservice.yaml on
      KServe's Triton runtime (needs --storage-uri).

      kubernetes: OUT/enclave.yaml (ConfigMap, Secret for TDX/SNP, Deployment and
      Service of the enclave tier), OUT/client-policy.json and, for SGX,
      OUT/veil.manifest.template. Needs --measurement (the MRENCLAVE, MRTD or SNP
      MEASUREMENT clients pin) and, for TDX/SNP, --key-server.

      compose: OUT/docker-compose.yml, both tiers on one machine with SIMULATED
      evidence.

      --image (default veil:latest) names an image you build: it holds veil at
      /usr/local/bin/veil and, for kubernetes, the plan folder at /veil/plan.
      Veil checks what it writes (config.pbtxt parses with Triton's protobuf,
      every YAML document reads back) but runs no cluster. See docs/deploy.md.
      """)

  @Option(help: "The plan: its folder or plan.json (`veil plan`, `veil split --plan`).")
  var plan: String
  @Option(help: "What to write: triton, kserve, kubernetes, compose.")
  var target: DeployTarget
  @Option(help: "Output folder (created if missing).")
  var out: String
  @Option(help: "Container image of veil (kubernetes, compose).")
  var image = "veil:latest"
  @Option(help: "Base name of the objects, a DNS label (default: from the plan's model name).")
  var name: String?
  @Option(help: "Kubernetes namespace.")
  var namespace = "default"

  @Option(help: "Triton max_batch_size (0: no batching; a tail that does not re-batch gets 0).")
  var maxBatch = 8
  @Option(
    help: ArgumentHelp(
      "Triton's preferred batch sizes (default: half of --max-batch and --max-batch).", valueName: "n,n"))
  var preferredBatch: String?
  @Option(help: "Triton's dynamic batching queue delay in microseconds.")
  var maxQueueDelayUs = 500
  @Option(help: "Tail instances per GPU (Triton instance_group count).")
  var instances = 1

  @Option(help: "kserve: where the model repository is uploaded (gs://…, s3://…, pvc://…).")
  var storageUri: String?
  @Option(help: "kserve: GPUs per predictor replica (nvidia.com/gpu).")
  var gpus = 1
  @Option(help: "kserve: CPU of a predictor replica (Kubernetes quantity).")
  var acceleratorCpu = "2"
  @Option(help: "kserve: memory of a predictor replica (Kubernetes quantity).")
  var acceleratorMemory = "8Gi"
  @Option(help: "kserve: fewest predictor replicas.")
  var minReplicas = 1
  @Option(help: "kserve: most predictor replicas.")
  var maxReplicas = 4

  @Option(help: "kubernetes: sgx, tdx or snp (default: the plan's TEE preset).")
  var tee: ClusterTEE?
  @Option(help: "kubernetes: enclave replicas.")
  var replicas = 3
  @Option(
    help: ArgumentHelp(
      "kubernetes: the tail's endpoint (default: the kserve target's predictor Service, NAME-predictor.NAMESPACE.svc.cluster.local:9000).",
      valueName: "host:port"))
  var accelerator: String?
  @Option(help: ArgumentHelp("kubernetes, TDX/SNP: the owner's `veil keys serve`.", valueName: "host:port"))
  var keyServer: String?
  @Option(help: "kubernetes: the measurement clients pin, in hex: MRENCLAVE (SGX), MRTD (TDX) or SNP MEASUREMENT.")
  var measurement: String?
  @Option(help: "kubernetes, SGX: the head's peak memory in bytes (default: the plan's profile).")
  var peakMemory: Int?
  @Option(help: "kubernetes: cores of one enclave replica (its kernel threads).")
  var enclaveCpus = 4
  @Option(help: "kubernetes: memory of one enclave replica (Kubernetes quantity).")
  var enclaveMemory = "4Gi"
  @Flag(
    help: "kubernetes, TDX/SNP: the sealed head is in the image at /veil/sealed, not in a Secret (heads over 1 MiB).")
  var sealedHeadInImage = false
  @Option(help: "The enclave's gRPC port.")
  var enclavePort = 7440
  @Option(help: "The enclave's Prometheus port.")
  var metricsPort = 9090
  @Option(help: "compose: the accelerator's gRPC port.")
  var acceleratorPort = 8001

  var options: DeployOptions {
    get throws {
      var o = DeployOptions()
      o.image = image
      o.name = name
      o.namespace = namespace
      o.maxBatch = maxBatch
      if let preferredBatch {
        let parts = preferredBatch.split(separator: ",", omittingEmptySubsequences: false)
        let sizes = parts.compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard sizes.count == parts.count, !sizes.isEmpty else {
          throw ValidationError("--preferred-batch '\(preferredBatch)': expected sizes separated by commas, e.g. 4,8")
        }
        o.preferredBatchSizes = sizes
      }
      o.maxQueueDelayMicroseconds = maxQueueDelayUs
      o.instancesPerGPU = instances
      o.storageURI = storageUri
      o.gpus = gpus
      o.acceleratorCPU = acceleratorCpu
      o.acceleratorMemory = acceleratorMemory
      o.minReplicas = minReplicas
      o.maxReplicas = maxReplicas
      o.tee = tee
      o.replicas = replicas
      o.accelerator = accelerator
      o.keyServer = keyServer
      o.measurement = measurement
      o.peakMemory = peakMemory
      o.enclaveCPUs = enclaveCpus
      o.enclaveMemory = enclaveMemory
      o.sealedHeadInImage = sealedHeadInImage
      o.enclavePort = enclavePort
      o.metricsPort = metricsPort
      o.acceleratorPort = acceleratorPort
      return o
    }
  }

  func run() throws {
    let deployment: ClusterDeployment
    let result: DeployResult
    do {
      deployment = try ClusterDeployment(planPath: plan, options: try options)
      result = try deployment.write(target, to: URL(fileURLWithPath: out))
    } catch let e as DeployError {
      throw ValidationError("\(e)")
    }
    for f in result.files { print(URL(fileURLWithPath: out).appendingPathComponent(f).path) }
    for n in result.notes { note(n) }
  }
}
