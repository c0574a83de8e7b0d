import Foundation
import VeilFormats
import VeilGraph
import VeilServing
import VeilTEE

// `veil deploy`: a plan folder turned into what a cluster runs (issue 21). It lives in
// VeilPlanning because this is the layer that already turns a plan into deployable files
// (`PlanDeployment` writes the head, the tail, the sealed head, the Gramine manifest and the
// client policy) and the only one that sees both the plan reader of VeilServing and the Gramine
// manifest of VeilTEE. It writes files and checks what can be checked without a cluster (the
// tail re-batches, names, sizes, options); it never starts a server, talks to a cluster or
// reads a key.

/// What `veil deploy --target` writes.
public enum DeployTarget: String, CaseIterable, Sendable {
  /// A Triton model repository for the tail: `<model>/config.pbtxt` and `<model>/1/model.onnx`.
  case triton
  /// The repository and a KServe InferenceService on KServe's Triton runtime.
  case kserve
  /// The enclave tier as Kubernetes objects: ConfigMap, Secret, Deployment, Service.
  case kubernetes
  /// Both tiers on one machine with Docker Compose (simulated evidence).
  case compose
}

/// The TEE a Kubernetes enclave runs in.
public enum ClusterTEE: String, CaseIterable, Sendable {
  /// SGX under Gramine: Intel's SGX device plugin resources, the Gramine manifest.
  case sgx
  /// A TDX confidential VM (Confidential Containers, runtime class kata-qemu-tdx).
  case tdx
  /// An SEV-SNP confidential VM (Confidential Containers, runtime class kata-qemu-snp).
  case snp

  /// The TEE of a plan's cost-model preset (sgx1, sgx2, tdx, snp).
  public init?(preset: String) {
    switch preset {
    case "sgx1", "sgx2", "sgx": self = .sgx
    case "tdx": self = .tdx
    case "snp": self = .snp
    default: return nil
    }
  }

  /// The measurement a client's policy pins, its policy key and its length in bytes.
  var measurement: (name: String, key: String, bytes: Int) {
    switch self {
    case .sgx: return ("MRENCLAVE", "mrenclave", 32)
    case .tdx: return ("MRTD", "mrtd", 48)
    case .snp: return ("SNP MEASUREMENT", "snp_measurement", 48)
    }
  }
}

/// Errors of `veil deploy`: each names the file or the option and says what to do.
public enum DeployError: Error, CustomStringConvertible, Equatable {
  case plan(file: String, detail: String)
  case option(name: String, detail: String)
  case io(path: String, detail: String)

  public var description: String {
    switch self {
    case .plan(let file, let detail): return "plan \(file): \(detail)"
    case .option(let name, let detail): return "\(name): \(detail)"
    case .io(let path, let detail): return "\(path): \(detail)"
    }
  }
}

/// The settings of every target; each target reads the ones it needs.
public struct DeployOptions: Sendable {
  /// The container image of `veil` (enclave and compose targets).
  public var image = "veil:latest"
  /// Base name of the objects (a DNS label); nil: from the plan's model name.
  public var name: String?
  public var namespace = "default"

  // Triton
  /// Triton's max_batch_size; 0 turns batching off. A tail that does not re-batch gets 0.
  public var maxBatch = 8
  /// Preferred batch sizes of dynamic batching; nil: half of max and max.
  public var preferredBatchSizes: [Int]?
  public var maxQueueDelayMicroseconds = 500
  /// Model instances per GPU (instance_group count).
  public var instancesPerGPU = 1

  // KServe
  /// Where the model repository is uploaded (gs://, s3://, pvc://, https://).
  public var storageURI: String?
  public var gpus = 1
  public var acceleratorCPU = "2"
  public var acceleratorMemory = "8Gi"
  public var minReplicas = 1
  public var maxReplicas = 4

  // Kubernetes (enclave tier)
  /// nil: the plan's TEE preset.
  public var tee: ClusterTEE?
  public var replicas = 3
  /// HOST:PORT of the tail; nil: the KServe predictor Service this tool's kserve target names.
  public var accelerator: String?
  /// HOST:PORT of the owner's `veil keys serve` (TDX and SNP: the sealed head's key).
  public var keyServer: String?
  /// The measurement the client policy pins, in hex (MRENCLAVE, MRTD or SNP MEASUREMENT).
  public var measurement: String?
  /// The head's peak memory in bytes (SGX enclave size); nil: the plan's profile.
  public var peakMemory: Int?
  /// Cores of one enclave replica (its CPU request and the enclave's kernel threads).
  public var enclaveCPUs = 4
  public var enclaveMemory = "4Gi"
  /// The sealed head is in the image at /veil/sealed instead of a Secret (heads over 1 MiB).
  public var sealedHeadInImage = false
  public var enclavePort = 7440
  public var metricsPort = 9090

  // Compose
  public var acceleratorPort = 8001

  public init() {}
}

/// What a target wrote: the files (relative to the output folder) and what the user should know.
public struct DeployResult: Sendable {
  public var files: [String] = []
  public var notes: [String] = []
}

public struct ClusterDeployment {
  public let plan: LoadedPlan
  public var options: DeployOptions
  /// The `veil` binary whose libraries the Gramine manifest lists (this process's, by default).
  public var binary: String = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path

  /// Reads the plan folder (or plan.json); a missing or malformed plan is a `DeployError.plan`.
  public init(planPath: String, options: DeployOptions) throws {
    do { plan = try DeploymentPlan.load(planPath) } catch {
      throw DeployError.option(
        name: "--plan", detail: "\(error) (write a plan folder with `veil plan --out DIR` or `veil split --plan`)")
    }
    self.options = options
    try validate()
  }

  /// Where things live in the containers: the plan folder, the opened head, the sealed head.
  public static let planMount = GramineManifest.planMount
  public static let headMount = "/veil/head"
  public static let sealedMount = "/veil/sealed"
  public static let configMount = "/veil/config"

  /// The largest Secret or ConfigMap Kubernetes stores (etcd's object limit).
  public static let maxObjectBytes = 1 << 20

  // MARK: Names and checks

  /// A DNS-1123 label from `s`: lowercase letters, digits and '-', at most `max` characters.
  static func dnsLabel(_ s: String, max: Int = 63) -> String {
    let stem =
      s.hasSuffix(".onnx") || s.contains("/") ? URL(fileURLWithPath: s).deletingPathExtension().lastPathComponent : s
    var out = String(stem.lowercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "-" })
    while out.contains("--") { out = out.replacingOccurrences(of: "--", with: "-") }
    out = String(out.trimmingCharacters(in: CharacterSet(charactersIn: "-")).prefix(max))
    while out.hasSuffix("-") { out.removeLast() }
    return out.isEmpty ? "veil" : out
  }

  static func isDNSLabel(_ s: String, max: Int = 63) -> Bool {
    !s.isEmpty && s.count <= max && s.first?.isLetter == true && s.last.map { $0.isLetter || $0.isNumber } == true
      && s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
  }

  /// The base name of every object ("-enclave", "-predictor" are appended, so 45 at most).
  public var name: String { options.name ?? Self.dnsLabel(plan.plan.model.name, max: 45) }

  /// The tail's model name and version in the repository (what the enclave calls).
  public var modelName: String { plan.plan.accelerator.modelName }

  public var tee: ClusterTEE? { options.tee ?? ClusterTEE(preset: plan.plan.tee.preset) }

  /// Where the enclave sends feature maps: the option, or KServe's predictor Service of the
  /// InferenceService the kserve target writes (its gRPC port, 9000 on KServe's Triton runtime).
  public var acceleratorEndpoint: String {
    options.accelerator ?? "\(name)-predictor.\(options.namespace).svc.cluster.local:9000"
  }

  func validate() throws {
    let o = options
    func bad(_ flag: String, _ detail: String) -> DeployError { .option(name: flag, detail: detail) }
    if let n = o.name, !Self.isDNSLabel(n, max: 45) {
      throw bad(
        "--name",
        "'\(n)' is not a DNS label of at most 45 characters (lowercase letters, digits, '-', starting with a letter)")
    }
    guard Self.isDNSLabel(o.namespace) else { throw bad("--namespace", "'\(o.namespace)' is not a DNS label") }
    guard !o.image.isEmpty, !o.image.contains(where: { $0.isWhitespace }) else {
      throw bad("--image", "'\(o.image)' is not an image reference")
    }
    let ranges: [(String, Int, ClosedRange<Int>)] = [
      ("--max-batch", o.maxBatch, 0...4096), ("--max-queue-delay-us", o.maxQueueDelayMicroseconds, 0...10_000_000),
      ("--instances", o.instancesPerGPU, 1...64), ("--gpus", o.gpus, 0...64),
      ("--min-replicas", o.minReplicas, 0...1000),
      ("--max-replicas", o.maxReplicas, 1...1000), ("--replicas", o.replicas, 1...1000),
      ("--enclave-cpus", o.enclaveCPUs, 1...1024),
      ("--enclave-port", o.enclavePort, 1...65535), ("--metrics-port", o.metricsPort, 1...65535),
      ("--accelerator-port", o.acceleratorPort, 1...65535),
    ]
    for (flag, value, range) in ranges where !range.contains(value) {
      throw bad(flag, "\(value) is out of range: expected \(range.lowerBound)...\(range.upperBound)")
    }
    guard o.minReplicas <= o.maxReplicas else {
      throw bad("--min-replicas", "\(o.minReplicas) is above --max-replicas \(o.maxReplicas)")
    }
    guard o.enclavePort != o.metricsPort else {
      throw bad("--metrics-port", "must differ from --enclave-port \(o.enclavePort)")
    }
    if let p = o.preferredBatchSizes {
      for s in p where !(1...max(1, o.maxBatch)).contains(s) {
        throw bad("--preferred-batch", "\(s) is out of range: expected 1...\(o.maxBatch) (--max-batch)")
      }
    }
    if let peak = o.peakMemory, peak <= 0 {
      throw bad("--peak-memory", "expected a positive number of bytes, found \(peak)")
    }
    for (flag, q) in [
      ("--accelerator-memory", o.acceleratorMemory), ("--enclave-memory", o.enclaveMemory),
      ("--accelerator-cpu", o.acceleratorCPU),
    ]
    where !Self.isQuantity(q) {
      throw bad(flag, "'\(q)' is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")
    }
    for (flag, ep) in [("--accelerator", o.accelerator), ("--key-server", o.keyServer)] {
      if let ep { do { _ = try KServeEndpoint(parsing: ep) } catch { throw bad(flag, "\(error)") } }
    }
    guard let v = Int(plan.plan.accelerator.modelVersion), v >= 1 else {
      throw DeployError.plan(
        file: plan.file.path,
        detail:
          "accelerator.modelVersion '\(plan.plan.accelerator.modelVersion)' is not a positive integer (Triton's version folders are numbers)"
      )
    }
  }

  /// A Kubernetes resource quantity: a decimal number with an optional suffix.
  static func isQuantity(_ q: String) -> Bool {
    let suffixes = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", ""]
    for s in suffixes where q.hasSuffix(s) {
      let number = q.dropLast(s.count)
      if !number.isEmpty, Double(number) != nil, number.allSatisfy({ $0.isNumber || $0 == "." }) { return true }
    }
    return false
  }

  // MARK: Writing

  /// Writes the target's files into `out` (created when missing).
  public func write(_ target: DeployTarget, to out: URL) throws -> DeployResult {
    do { try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true) } catch {
      throw DeployError.io(path: out.path, detail: "cannot create the output folder: \(error.localizedDescription)")
    }
    switch target {
    case .triton: return try writeTriton(to: out)
    case .kserve: return try writeKServe(to: out)
    case .kubernetes: return try writeKubernetes(to: out)
    case .compose: return try writeCompose(to: out)
    }
  }

  func put(_ data: Data, _ relative: String, in out: URL, _ result: inout DeployResult) throws {
    let url = out.appendingPathComponent(relative)
    do {
      try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
      try data.write(to: url, options: .atomic)
    } catch {
      throw DeployError.io(path: url.path, detail: "cannot write: \(error.localizedDescription)")
    }
    result.files.append(relative)
  }

  func put(_ text: String, _ relative: String, in out: URL, _ result: inout DeployResult) throws {
    try put(Data(text.utf8), relative, in: out, &result)
  }
}

// MARK: - Triton

/// A Triton model configuration (`config.pbtxt`, protobuf text format of Triton's ModelConfig).
public struct TritonModelConfig: Sendable, Equatable {
  public struct Tensor: Sendable, Equatable {
    public var name: String
    /// Without the batch dimension when `maxBatchSize` > 0.
    public var dims: [Int]
    /// Triton's data type: TYPE_FP32, or TYPE_UINT8 / TYPE_UINT16 for a quantised map's codes.
    public var dataType = "TYPE_FP32"
  }
  public var name: String
  public var maxBatchSize: Int
  public var inputs: [Tensor]
  public var outputs: [Tensor]
  public var preferredBatchSizes: [Int]
  public var maxQueueDelayMicroseconds: Int
  public var instancesPerGPU: Int

  /// The text Triton reads: the ONNX Runtime backend, FP32 tensors (UINT8 / UINT16 codes of a
  /// quantised map), dynamic batching when
  /// batching, one instance group on the GPUs.
  public var text: String {
    func quoted(_ s: String) -> String {
      "\""
        + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        .replacingOccurrences(of: "\n", with: "\\n") + "\""
    }
    func tensors(_ key: String, _ ts: [Tensor]) -> String {
      let items = ts.map { t in
        "  {\n    name: \(quoted(t.name))\n    data_type: \(t.dataType)\n    dims: [ \(t.dims.map(String.init).joined(separator: ", ")) ]\n  }"
      }
      return "\(key) [\n\(items.joined(separator: ",\n"))\n]\n"
    }
    var s = "# Written by `veil deploy --target triton`: the tail of a Veil plan on Triton's ONNX Runtime backend.\n"
    s += "name: \(quoted(name))\nbackend: \"onnxruntime\"\nmax_batch_size: \(maxBatchSize)\n"
    s += tensors("input", inputs) + tensors("output", outputs)
    if maxBatchSize > 0 {
      s += "dynamic_batching {\n"
      if !preferredBatchSizes.isEmpty {
        s += "  preferred_batch_size: [ \(preferredBatchSizes.map(String.init).joined(separator: ", ")) ]\n"
      }
      s += "  max_queue_delay_microseconds: \(maxQueueDelayMicroseconds)\n}\n"
    }
    s += "instance_group [\n  {\n    count: \(instancesPerGPU)\n    kind: KIND_GPU\n  }\n]\n"
    return s
  }
}

extension ClusterDeployment {
  /// The symbolic batch dimension of the repository's model.onnx.
  public static let batchDimension = "N"

  /// The tail as the repository serves it: model.onnx (batch symbolic when it re-batches) and
  /// its config, both from the tail the plan pins (its digest checked); names and shapes are
  /// read back from the written model so the config describes that file exactly.
  public func tritonModel() throws -> (onnx: [UInt8], config: TritonModelConfig, note: String?) {
    let tail: Graph
    do { tail = try plan.readPart(plan.plan.tail, field: "tail") } catch {
      throw DeployError.plan(file: plan.file.path, detail: "\(error)")
    }
    var note: String?
    var bytes: [UInt8]
    var maxBatch = options.maxBatch
    if maxBatch > 0 {
      do { bytes = try ONNXWriter.serialize(tail, batchDimension: Self.batchDimension) } catch {
        note = "the tail does not re-batch (\(error)): max_batch_size 0, no dynamic batching"
        maxBatch = 0
        bytes = try ONNXWriter.serialize(tail)
      }
    } else {
      bytes = try ONNXWriter.serialize(tail)
    }
    var written: Graph
    do {
      written = try ONNXReader.parse(bytes)
      try written.inferShapes()
    } catch {
      throw DeployError.plan(file: plan.file.path, detail: "the written model.onnx does not read back: \(error)")
    }
    func tensors(_ values: [ValueID]) throws -> [TritonModelConfig.Tensor] {
      try values.map { v in
        guard let shape = written.shape(v), !shape.isEmpty else {
          throw DeployError.plan(file: plan.file.path, detail: "tail value '\(written[v].name)' has no known shape")
        }
        let type = try WireIntegerType.of(input: written[v].name, in: written).map { "TYPE_\($0.rawValue)" } ?? "TYPE_FP32"
        return .init(name: written[v].name, dims: maxBatch > 0 ? Array(shape.dropFirst()) : shape, dataType: type)
      }
    }
    let preferred =
      maxBatch == 0 ? [] : (options.preferredBatchSizes ?? Array(Set([max(1, maxBatch / 2), maxBatch])).sorted())
    let config = TritonModelConfig(
      name: modelName, maxBatchSize: maxBatch, inputs: try tensors(written.inputs),
      outputs: try tensors(written.outputs),
      preferredBatchSizes: preferred, maxQueueDelayMicroseconds: options.maxQueueDelayMicroseconds,
      instancesPerGPU: options.instancesPerGPU)
    return (bytes, config, note)
  }

  /// `<repository>/<model>/config.pbtxt` and `<repository>/<model>/1/model.onnx`.
  func writeRepository(to out: URL, under prefix: String, _ result: inout DeployResult) throws {
    let (onnx, config, note) = try tritonModel()
    let folder = (prefix.isEmpty ? "" : prefix + "/") + modelName
    try put(Data(onnx), "\(folder)/\(plan.plan.accelerator.modelVersion)/model.onnx", in: out, &result)
    try put(config.text, "\(folder)/config.pbtxt", in: out, &result)
    if let note { result.notes.append(note) }
    result.notes.append(
      "Triton model '\(modelName)' version \(plan.plan.accelerator.modelVersion): max_batch_size \(config.maxBatchSize), input \(config.inputs.map { "\($0.name) \($0.dims)" }.joined(separator: ", ")), output \(config.outputs.map { "\($0.name) \($0.dims)" }.joined(separator: ", "))"
    )
  }

  func writeTriton(to out: URL) throws -> DeployResult {
    var result = DeployResult()
    try writeRepository(to: out, under: "", &result)
    result.notes.append(
      "serve it with `tritonserver --model-repository=\(out.path)`; the enclave calls it with `veil enclave serve --plan \(plan.directory.path) --accelerator HOST:8001`"
    )
    return result
  }
}

// MARK: - KServe

extension ClusterDeployment {
  func writeKServe(to out: URL) throws -> DeployResult {
    guard let uri = options.storageURI else {
      throw DeployError.option(
        name: "--storage-uri",
        detail:
          "the kserve target needs where the model repository will be uploaded (gs://BUCKET/PATH, s3://BUCKET/PATH, pvc://CLAIM/PATH)"
      )
    }
    guard let scheme = uri.range(of: "://"), !uri[..<scheme.lowerBound].isEmpty, !uri[scheme.upperBound...].isEmpty,
      !uri.contains(where: { $0.isWhitespace })
    else {
      throw DeployError.option(name: "--storage-uri", detail: "'\(uri)' is not a URI (SCHEME://PATH)")
    }
    var result = DeployResult()
    try writeRepository(to: out, under: "model-repository", &result)
    let resources: YAMLNode = .object([
      (
        "requests", .object([("cpu", .string(options.acceleratorCPU)), ("memory", .string(options.acceleratorMemory))])
      ),
      (
        "limits",
        .object(
          [("cpu", .string(options.acceleratorCPU)), ("memory", .string(options.acceleratorMemory))]
            + (options.gpus > 0 ? [("nvidia.com/gpu", .int(options.gpus))] : []))
      ),
    ])
    let isvc: YAMLNode = .object([
      ("apiVersion", "serving.kserve.io/v1beta1"),
      ("kind", "InferenceService"),
      (
        "metadata",
        .object([
          ("name", .string(name)), ("namespace", .string(options.namespace)),
          ("labels", .object([("app.kubernetes.io/part-of", "veil"), ("app.kubernetes.io/component", "accelerator")])),
        ])
      ),
      (
        "spec",
        .object([
          (
            "predictor",
            .object([
              ("minReplicas", .int(options.minReplicas)),
              ("maxReplicas", .int(options.maxReplicas)),
              (
                "model",
                .object([
                  ("modelFormat", .object([("name", "triton")])),
                  ("protocolVersion", "v2"),
                  ("storageUri", .string(uri)),
                  ("resources", resources),
                  // KServe's Triton runtime serves gRPC on 9000 when the port is named h2c.
                  ("ports", .list([.object([("name", "h2c"), ("protocol", "TCP"), ("containerPort", 9000)])])),
                ])
              ),
            ])
          )
        ])
      ),
    ])
    let header = """
      The tail of Veil plan \(plan.file.path) (model \(plan.plan.model.name), cut \(plan.plan.cut.name)) on KServe's
      Triton runtime. Upload model-repository/ to \(uri) first. Written by `veil deploy --target kserve`.
      """
    try put(YAMLWriter.documents([isvc], header: header), "inferenceservice.yaml", in: out, &result)
    result.notes.append(
      "upload \(out.appendingPathComponent("model-repository").path)/ to \(uri), then `kubectl apply -f \(out.appendingPathComponent("inferenceservice.yaml").path)`; the enclave's --accelerator is then \(acceleratorEndpoint)"
    )
    return result
  }
}

// MARK: - Kubernetes (the enclave tier)

extension ClusterDeployment {
  /// The labels that tie the Deployment's pods to its selector and its Service.
  var enclaveLabels: YAMLNode {
    .object([("app.kubernetes.io/name", "veil-enclave"), ("app.kubernetes.io/instance", .string(name))])
  }

  func metadata(_ objectName: String, labels: YAMLNode? = nil) -> YAMLNode {
    .object(
      [("name", .string(objectName)), ("namespace", .string(options.namespace))]
        + (labels.map { [("labels", $0)] } ?? []))
  }

  /// The client policy for the cluster's enclaves: the given measurement pinned, genuine
  /// evidence of that TEE only (no simulation, no debug enclaves).
  func clusterPolicy(_ tee: ClusterTEE) throws -> Policy {
    let m = tee.measurement
    guard let hex = options.measurement else {
      throw DeployError.option(
        name: "--measurement",
        detail: "the kubernetes target needs the \(m.name) the client policy pins (\(m.bytes * 2) hex digits): "
          + (tee == .sgx
            ? "build and sign the enclave image with the written veil.manifest.template, then `gramine-sgx-sigstruct-view veil.sig` prints mr_enclave"
            : "the launch measurement of the confidential VM image (the Confidential Containers guest firmware, kernel and initrd) from your CoCo release or its reference values")
      )
    }
    let document: [String: Any] = [m.key: hex.lowercased(), "accepted_evidence": [tee.rawValue]]
    do { return try Policy(json: try JSONSerialization.data(withJSONObject: document)) } catch {
      throw DeployError.option(name: "--measurement", detail: "\(error)")
    }
  }

  /// The head's peak memory: the option, or the plan's own profile of its cut.
  func peakMemory() throws -> Int {
    if let p = options.peakMemory { return p }
    if let document = try? PlanDocument.read(plan.file),
      let peak = document.planning.row(plan.plan.cut.name)?.headPeakBytes
    {
      return peak
    }
    throw DeployError.option(
      name: "--peak-memory",
      detail:
        "plan \(plan.file.path) has no measured peak memory for cut \(plan.plan.cut.name) (a plan from `veil plan` has it); pass the head's peak memory in bytes (`veil bench --model head.onnx --json` reports peak_rss_bytes)"
    )
  }

  /// The Gramine manifest of the cluster's enclave image: the plan at /veil/plan in the image,
  /// `veil` at /usr/local/bin/veil, the tail endpoint and the ports on its command line.
  func clusterManifest() throws -> GramineManifest {
    let inImage = { (relative: String) in GramineManifest.planMount + "/" + relative }
    let p = plan.plan
    // The tail, the labels and the output part of a plan that keeps its answer in the enclave.
    let planFiles = [inImage(p.tail.path)] + (p.labels.map { [inImage($0)] } ?? []) + (p.privateOutput.map { [inImage($0.part.path)] } ?? [])
    let libraries = (try? sharedLibraries(of: binary)) ?? []
    let size: (String) -> Int = { (try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0 }
    let localFiles =
      [binary, plan.file.path, plan.headURL.path, plan.tailURL.path] + (plan.labelsURL.map { [$0.path] } ?? [])
      + (p.privateOutput.map { [plan.url($0.part.path).path] } ?? []) + libraries
    do {
      return try GramineManifest(
        binary: "/usr/local/bin/veil", libraries: libraries, head: inImage(p.head.path), peakMemory: try peakMemory(),
        kernelThreads: options.enclaveCPUs, fileBytes: localFiles.map(size).reduce(0, +),
        plan: inImage(DeploymentPlan.fileName),
        planFiles: planFiles,
        serveArguments: [
          "--accelerator", acceleratorEndpoint, "--host", "0.0.0.0", "--port", String(options.enclavePort),
          "--metrics-port",
          String(options.metricsPort),
        ])
    } catch let e as DeployError { throw e } catch {
      throw DeployError.option(name: "--peak-memory", detail: "\(error)")
    }
  }

  /// The plan the confidential VM's enclave reads: the plan's own document with the head where
  /// the init container opens it (memory, inside the VM) and the tail and labels in the image.
  func confidentialVMPlan() throws -> Data {
    var p = plan.plan
    p.head.path = Self.headMount + "/" + (p.head.path as NSString).lastPathComponent
    p.tail.path = Self.planMount + "/" + p.tail.path
    p.labels = p.labels.map { Self.planMount + "/" + $0 }
    if var output = p.privateOutput {
      output.part.path = Self.planMount + "/" + output.part.path
      p.privateOutput = output
    }
    p.sealedHead = Self.sealedMount + "/" + ((p.sealedHead ?? "head.onnx.sealed") as NSString).lastPathComponent
    return try p.encoded()
  }

  func writeKubernetes(to out: URL) throws -> DeployResult {
    guard let tee else {
      throw DeployError.option(
        name: "--tee",
        detail: "the plan's TEE preset '\(plan.plan.tee.preset)' names no TEE; pass --tee sgx, tdx or snp")
    }
    let policy = try clusterPolicy(tee)
    let policyText = String(decoding: try policy.json(), as: UTF8.self)
    var result = DeployResult()
    let enclaveName = "\(name)-enclave"
    let sealedName = ((plan.plan.sealedHead ?? "head.onnx.sealed") as NSString).lastPathComponent
    let serve = [
      "--accelerator", acceleratorEndpoint, "--host", "0.0.0.0", "--port", String(options.enclavePort),
      "--metrics-port",
      String(options.metricsPort),
    ]
    var configData: [(String, YAMLNode)] = [("client-policy.json", .string(policyText))]
    var volumes: [YAMLNode] = [
      .object([("name", "config"), ("configMap", .object([("name", .string(enclaveName))]))])
    ]
    var mounts: [YAMLNode] = [
      .object([("name", "config"), ("mountPath", .string(Self.configMount)), ("readOnly", true)])
    ]
    var documents: [YAMLNode] = []
    var podSpec: [YAMLEntry] = []
    var container: [YAMLEntry] = [YAMLEntry("name", "enclave"), YAMLEntry("image", .string(options.image))]
    var limits: [(String, YAMLNode)] = [
      ("cpu", .string(String(options.enclaveCPUs))), ("memory", .string(options.enclaveMemory)),
    ]
    switch tee {
    case .sgx:
      let manifest = try clusterManifest()
      try put(manifest.template, "veil.manifest.template", in: out, &result)
      configData.append(("veil.manifest.template", .string(manifest.template)))
      container.append(
        YAMLEntry(
          "command", .list(["gramine-sgx", "veil"]),
          comment:
            "Gramine runs `veil enclave serve` with the arguments of the signed manifest (veil.manifest.sgx in\nthe image's working directory): \(manifest.argv.dropFirst().joined(separator: " "))"
        ))
      container.append(YAMLEntry("workingDir", "/veil/enclave"))
      // Intel's SGX device plugin: EPC bytes, the enclave device, the provisioning device (DCAP quotes).
      limits += [
        ("sgx.intel.com/epc", .string("\(manifest.enclaveSize >> 20)Mi")),
        ("sgx.intel.com/enclave", 1), ("sgx.intel.com/provision", 1),
      ]
      result.notes.append(
        "SGX: build the image with /usr/local/bin/veil, the plan folder at \(Self.planMount) and, in /veil/enclave, the manifest made from veil.manifest.template (gramine-manifest, gramine-sgx-sign); the policy pins MRENCLAVE \(options.measurement ?? "")"
      )
    case .tdx, .snp:
      guard let keyServer = options.keyServer else {
        throw DeployError.option(
          name: "--key-server",
          detail:
            "a \(tee.rawValue.uppercased()) enclave opens the sealed head with the key the owner's `veil keys serve` releases to its evidence; pass its HOST:PORT"
        )
      }
      podSpec.append(
        YAMLEntry(
          "runtimeClassName", .string(tee == .tdx ? "kata-qemu-tdx" : "kata-qemu-snp"),
          comment: "Confidential Containers: the pod runs in its own \(tee.rawValue.uppercased()) confidential VM."))
      configData.append(("plan.json", .string(String(decoding: try confidentialVMPlan(), as: UTF8.self))))
      if !options.sealedHeadInImage {
        let sealed: Data
        do { sealed = try Data(contentsOf: plan.url(plan.plan.sealedHead ?? "head.onnx.sealed")) } catch {
          throw DeployError.plan(
            file: plan.file.path,
            detail:
              "no sealed head '\(plan.plan.sealedHead ?? "head.onnx.sealed")' (`veil plan` writes one; or `veil keys seal --head HEAD --out DIR/head.onnx.sealed --key-out KEY`)"
          )
        }
        guard sealed.count * 4 / 3 < Self.maxObjectBytes - 4096 else {
          throw DeployError.plan(
            file: plan.file.path,
            detail:
              "the sealed head is \(sealed.count) bytes, over what a Kubernetes Secret holds (1 MiB); put it in the image at \(Self.sealedMount)/\(sealedName) and pass --sealed-head-in-image"
          )
        }
        documents.append(
          .object([
            ("apiVersion", "v1"), ("kind", "Secret"), ("metadata", metadata("\(name)-sealed-head")), ("type", "Opaque"),
            ("data", .object([(sealedName, .string(sealed.base64EncodedString()))])),
          ]))
        volumes.append(
          .object([("name", "sealed-head"), ("secret", .object([("secretName", .string("\(name)-sealed-head"))]))]))
      }
      volumes.append(.object([("name", "head"), ("emptyDir", .object([("medium", "Memory")]))]))
      let sealedMounts: [YAMLNode] =
        options.sealedHeadInImage
        ? [] : [.object([("name", "sealed-head"), ("mountPath", .string(Self.sealedMount)), ("readOnly", true)])]
      podSpec.append(
        YAMLEntry(
          "initContainers",
          .list([
            .object([
              ("name", "open-head"), ("image", .string(options.image)),
              (
                "command",
                .list(
                  [
                    "veil", "keys", "fetch", "--server", .string(keyServer), "--sealed",
                    .string("\(Self.sealedMount)/\(sealedName)"), "--out",
                    .string("\(Self.headMount)/\((plan.plan.head.path as NSString).lastPathComponent)"),
                  ])
              ),
              (
                "volumeMounts",
                .list(sealedMounts + [.object([("name", "head"), ("mountPath", .string(Self.headMount))])])
              ),
            ])
          ]),
          comment:
            "Opens the sealed head with the key the owner's `veil keys serve` releases to this VM's evidence;\nthe plain head stays in the VM's encrypted memory (emptyDir medium Memory)."
        ))
      mounts.append(.object([("name", "head"), ("mountPath", .string(Self.headMount)), ("readOnly", true)]))
      container.append(
        YAMLEntry(
          "command",
          .list(
            (["veil", "enclave", "serve", "--plan", .string("\(Self.configMount)/plan.json")] as [YAMLNode])
              + serve.map { .string($0) })))
      result.notes.append(
        "\(tee.rawValue.uppercased()): the image carries /usr/local/bin/veil and the plan folder (without head.onnx and head.key) at \(Self.planMount); the policy pins \(tee.measurement.name) \(options.measurement ?? "")"
      )
    }
    container += [
      YAMLEntry(
        "ports",
        .list([
          .object([("name", "grpc"), ("containerPort", .int(options.enclavePort)), ("protocol", "TCP")]),
          .object([("name", "metrics"), ("containerPort", .int(options.metricsPort)), ("protocol", "TCP")]),
        ])),
      YAMLEntry(
        "readinessProbe",
        .object([
          ("grpc", .object([("port", .int(options.enclavePort))])), ("initialDelaySeconds", 2), ("periodSeconds", 5),
        ]),
        comment: "`veil enclave serve` serves grpc.health.v1 on its gRPC port: SERVING until it drains."),
      YAMLEntry(
        "livenessProbe",
        .object([
          ("grpc", .object([("port", .int(options.enclavePort))])), ("initialDelaySeconds", 10), ("periodSeconds", 10),
          ("failureThreshold", 3),
        ])),
      YAMLEntry(
        "resources",
        .object([
          (
            "requests",
            .object([("cpu", .string(String(options.enclaveCPUs))), ("memory", .string(options.enclaveMemory))])
          ),
          ("limits", .object(limits)),
        ])),
      YAMLEntry("volumeMounts", .list(mounts)),
    ]
    podSpec.append(YAMLEntry("containers", .list([.map(container)])))
    podSpec.append(YAMLEntry("volumes", .list(volumes)))
    documents.insert(
      .object([
        ("apiVersion", "v1"), ("kind", "ConfigMap"), ("metadata", metadata(enclaveName, labels: enclaveLabels)),
        ("data", .object(configData)),
      ]), at: 0)
    documents.append(
      .object([
        ("apiVersion", "apps/v1"), ("kind", "Deployment"), ("metadata", metadata(enclaveName, labels: enclaveLabels)),
        (
          "spec",
          .object([
            ("replicas", .int(options.replicas)),
            ("selector", .object([("matchLabels", enclaveLabels)])),
            (
              "template",
              .object([
                (
                  "metadata",
                  .object([
                    ("labels", enclaveLabels),
                    (
                      "annotations",
                      .object([
                        ("prometheus.io/scrape", "true"), ("prometheus.io/port", .string(String(options.metricsPort))),
                        ("prometheus.io/path", "/metrics"),
                      ])
                    ),
                  ])
                ),
                ("spec", .map(podSpec)),
              ])
            ),
          ])
        ),
      ]))
    documents.append(
      .object([
        ("apiVersion", "v1"), ("kind", "Service"), ("metadata", metadata(enclaveName, labels: enclaveLabels)),
        (
          "spec",
          .object([
            ("selector", enclaveLabels),
            (
              "ports",
              .list([
                .object([
                  ("name", "grpc"), ("port", .int(options.enclavePort)), ("targetPort", "grpc"), ("protocol", "TCP"),
                ])
              ])
            ),
          ])
        ),
      ]))
    let header = """
      The enclave tier of Veil plan \(plan.file.path) (model \(plan.plan.model.name), cut \(plan.plan.cut.name)) on \(tee == .sgx ? "SGX with Gramine" : "\(tee.rawValue.uppercased()) Confidential Containers"),
      \(options.replicas) replicas, tail on \(acceleratorEndpoint). Written by `veil deploy --target kubernetes`.
      Clients: `veil infer --enclave \(enclaveName).\(options.namespace).svc.cluster.local:\(options.enclavePort) --policy client-policy.json`.
      """
    try put(YAMLWriter.documents(documents, header: header), "enclave.yaml", in: out, &result)
    try put(policyText, "client-policy.json", in: out, &result)
    result.notes.append(
      "clients reach the enclaves at \(enclaveName).\(options.namespace).svc.cluster.local:\(options.enclavePort) with client-policy.json"
    )
    return result
  }
}

// MARK: - Docker Compose

extension ClusterDeployment {
  func writeCompose(to out: URL) throws -> DeployResult {
    var result = DeployResult()
    let planFolder = plan.directory.standardizedFileURL.path
    let mount: YAMLNode = .list([
      .object([
        ("type", "bind"), ("source", .string(planFolder)), ("target", .string(Self.planMount)), ("read_only", true),
      ])
    ])
    let p = plan.plan
    let accelerator: YAMLNode = .object([
      ("image", .string(options.image)),
      (
        "command",
        .list(
          [
            "veil", "accelerator", "serve", "--model",
            .string("\(modelName)=\(Self.planMount)/\(p.tail.path):\(p.accelerator.modelVersion)"),
            "--host", "0.0.0.0", "--port", .string(String(options.acceleratorPort)),
          ])
      ),
      ("volumes", mount),
    ])
    let enclave: YAMLNode = .map([
      YAMLEntry("image", .string(options.image)),
      YAMLEntry(
        "command",
        .list(
          [
            "veil", "enclave", "serve", "--plan", .string(Self.planMount), "--accelerator",
            .string("accelerator:\(options.acceleratorPort)"),
            "--host", "0.0.0.0", "--port", .string(String(options.enclavePort)), "--metrics-port",
            .string(String(options.metricsPort)),
            "--allow-simulation",
          ]),
        comment:
          "SIMULATION: --allow-simulation and VEIL_EVIDENCE_MODE=simulated serve SIMULATED evidence; no TEE\nprotects the inputs. Clients must allow simulation in their policy. For development only."
      ),
      YAMLEntry("environment", .object([("VEIL_EVIDENCE_MODE", "simulated")])),
      YAMLEntry(
        "ports",
        .list([
          .string("127.0.0.1:\(options.enclavePort):\(options.enclavePort)"),
          .string("127.0.0.1:\(options.metricsPort):\(options.metricsPort)"),
        ])),
      YAMLEntry("volumes", mount),
      YAMLEntry("depends_on", .list(["accelerator"])),
    ])
    let compose: YAMLNode = .object([
      ("name", .string("veil-\(name)")),
      ("services", .object([("accelerator", accelerator), ("enclave", enclave)])),
    ])
    let header = """
      Veil plan \(plan.file.path) (model \(p.model.name), cut \(p.cut.name)) on one machine: the accelerator runs the tail,
      the enclave the head with SIMULATED evidence (no TEE). Written by `veil deploy --target compose`.
      Start: docker compose -f docker-compose.yml up; then: veil infer --enclave 127.0.0.1:\(options.enclavePort) --policy POLICY PHOTO
      (the policy pins the MRENCLAVE the enclave prints at start, with allow_simulation and allow_debug).
      """
    try put(YAMLWriter.documents([compose], header: header), "docker-compose.yml", in: out, &result)
    result.notes.append(
      "SIMULATED evidence: the compose enclave is for development; `docker compose -f \(out.appendingPathComponent("docker-compose.yml").path) up`"
    )
    return result
  }
}
