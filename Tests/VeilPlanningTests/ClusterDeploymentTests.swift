import Foundation
import VeilFormats
import VeilGraph
import VeilPlanning
import VeilServing
import VeilTEE
import VeilTensor
import VeilTestSupport
import XCTest

/// `veil deploy`'s files read back by what consumes them: config.pbtxt by Triton's own
/// ModelConfig protobuf, model.onnx by ONNX Runtime at batch 1 and 4, every YAML document by
/// PyYAML with the fields its API version requires. No cluster and no Triton run here.
final class ClusterDeploymentTests: XCTestCase {
  /// A small image classifier: conv stages, global pool, flatten, linear (10 classes);
  /// `fixedBatch` ends the tail with a Reshape that pins the batch at 1.
  static func classifier(fixedBatch: Bool = false) -> Graph {
    var rng = SeededGenerator(seed: 21)
    var g = Graph(name: "classifier")
    var v = g.addInput(name: "x", shape: [1, 3, 16, 16])
    var c = 3
    for i in 0..<3 {
      v = g.conv(
        v, weight: .randomNormal(shape: [8, c, 3, 3], std: 0.3, generator: &rng),
        bias: .randomNormal(shape: [8], std: 0.1, generator: &rng), .square(3), name: "conv\(i)")
      v = g.activation(v, .relu, name: "relu\(i)")
      c = 8
    }
    v = g.globalAveragePool(v, name: "pool")
    v = fixedBatch ? g.reshape(v, to: [1, 8], name: "flatten") : g.flatten(v, name: "flatten")
    v = g.linear(
      v, weight: .randomNormal(shape: [10, 8], std: 0.3, generator: &rng),
      bias: .randomNormal(shape: [10], std: 0.1, generator: &rng),
      name: "fc")
    g.outputs = [v]
    return g
  }

  /// A fresh folder, removed when the test ends.
  func temporary(_ label: String) throws -> URL {
    let url = try PythonScript.temporaryDirectory(label)
    addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
  }

  /// A plan folder cut at relu0, with a sealed head as `veil plan` writes one.
  func planFolder(fixedBatch: Bool = false, defence: DeploymentPlan.Defence? = nil) throws -> LoadedPlan {
    let folder = try temporary("deploy-plan")
    var loaded = try DeploymentPlan.write(
      model: Self.classifier(fixedBatch: fixedBatch), name: "tiny_classifier", cut: "relu0",
      preprocessing: .init(preset: "imagenet", appliedIn: .client), labels: (0..<10).map { "class \($0)" },
      teePreset: "sgx2", defence: defence,
      to: folder)
    let sealed = try SealedHead.seal(Array(try Data(contentsOf: loaded.headURL)), key: SealedHead.newKey())
    try Data(sealed).write(to: folder.appendingPathComponent("head.onnx.sealed"))
    loaded.plan.sealedHead = "head.onnx.sealed"
    try DeploymentPlan.writeFile(loaded.plan, to: loaded.file)
    return loaded
  }

  static let mrenclave = String(repeating: "5a", count: 32)
  static let mrtd = String(repeating: "c3", count: 48)

  func deploy(_ plan: LoadedPlan, _ target: DeployTarget, _ configure: (inout DeployOptions) -> Void = { _ in }) throws
    -> (URL, DeployResult)
  {
    var options = DeployOptions()
    configure(&options)
    let out = try temporary("deploy-\(target.rawValue)")
    let result = try ClusterDeployment(planPath: plan.directory.path, options: options).write(target, to: out)
    for file in result.files { try Self.assertNoPlaceholder(out.appendingPathComponent(file)) }
    return (out, result)
  }

  /// Nothing left for a person to fill in: no `<...>`, TODO or `${` (Gramine's own `{{ }}`
  /// placeholders in the manifest template are filled by gramine-manifest, by design).
  static func assertNoPlaceholder(_ url: URL, file: StaticString = #filePath, line: UInt = #line) throws {
    guard url.pathExtension != "onnx" else { return }
    let text = try String(contentsOf: url, encoding: .utf8)
    XCTAssertNil(
      text.range(of: #"<[A-Za-z_ .-]+>"#, options: .regularExpression), "\(url.lastPathComponent): a <placeholder>",
      file: file, line: line)
    XCTAssertFalse(text.contains("TODO"), "\(url.lastPathComponent): TODO", file: file, line: line)
    XCTAssertFalse(text.contains("${"), "\(url.lastPathComponent): ${...}", file: file, line: line)
  }

  static func yaml(_ url: URL) throws -> [[String: Any]] {
    let out = try PythonScript.run("check_deploy.py", ["yaml", url.path])
    return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]], out)
  }

  // MARK: Triton

  /// A quantised plan's tail takes the codes as UINT8: Triton's config says so, with the
  /// minimum and step in FP32, and the batch stays symbolic.
  func testTritonTakesAQuantisedMapAsUINT8Codes() throws {
    let plan = try planFolder(defence: .init(defence: .quantisation(bits: 8), channelAxis: 1))
    let (out, _) = try deploy(plan, .triton)
    let model = plan.plan.accelerator.modelName
    let text = try PythonScript.run("check_deploy.py", ["pbtxt", out.appendingPathComponent("\(model)/config.pbtxt").path])
    let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    let inputs = try XCTUnwrap(config["input"] as? [[String: Any]])
    XCTAssertEqual(inputs.map { $0["name"] as? String }, ["relu0_codes", "relu0_low", "relu0_step"])
    XCTAssertEqual(inputs.map { $0["data_type"] as? String }, ["TYPE_UINT8", "TYPE_FP32", "TYPE_FP32"])
    XCTAssertEqual(inputs.map { $0["dims"] as? [Int] }, [[8, 16, 16], [8, 1, 1], [8, 1, 1]])
    XCTAssertEqual(config["max_batch_size"] as? Int, 8)
  }

  func testTritonConfigParsesWithTritonsProtobufAndModelRunsAtBatchOneAndFour() throws {
    let plan = try planFolder()
    let (out, result) = try deploy(plan, .triton)
    let model = plan.plan.accelerator.modelName
    XCTAssertEqual(result.files.sorted(), ["\(model)/1/model.onnx", "\(model)/config.pbtxt"])
    let text = try PythonScript.run(
      "check_deploy.py", ["pbtxt", out.appendingPathComponent("\(model)/config.pbtxt").path])
    let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    let (tailInputs, output) = try plan.tailInterface()
    let inputName = tailInputs[0].name
    XCTAssertEqual(config["name"] as? String, model)
    XCTAssertEqual(config["backend"] as? String, "onnxruntime")
    XCTAssertEqual(config["max_batch_size"] as? Int, 8)
    let inputs = try XCTUnwrap(config["input"] as? [[String: Any]])
    XCTAssertEqual(inputs.count, 1)
    XCTAssertEqual(inputs[0]["name"] as? String, inputName)
    XCTAssertEqual(inputs[0]["data_type"] as? String, "TYPE_FP32")
    XCTAssertEqual(inputs[0]["dims"] as? [Int], Array(plan.plan.cut.featureShape.dropFirst()), "dims without the batch")
    let outputs = try XCTUnwrap(config["output"] as? [[String: Any]])
    XCTAssertEqual(outputs.map { $0["name"] as? String }, [output.name])
    XCTAssertEqual(outputs[0]["data_type"] as? String, "TYPE_FP32")
    XCTAssertEqual(outputs[0]["dims"] as? [Int], [10])
    XCTAssertEqual(config["has_dynamic_batching"] as? Bool, true)
    XCTAssertEqual(config["preferred_batch_size"] as? [Int], [4, 8])
    XCTAssertEqual(config["max_queue_delay_microseconds"] as? Int, 500)
    let groups = try XCTUnwrap(config["instance_group"] as? [[String: Any]])
    XCTAssertEqual(groups.map { $0["kind"] as? String }, ["KIND_GPU"])
    XCTAssertEqual(groups.first?["count"] as? Int, 1)

    // The repository's model.onnx under ONNX Runtime at batch 1 and 4 answers what Veil's tail does.
    let tail = try plan.readPart(plan.plan.tail, field: "tail")
    var rng = SeededGenerator(seed: 5)
    let x1 = Tensor.randomNormal(shape: plan.plan.cut.featureShape, generator: &rng)
    var shape4 = plan.plan.cut.featureShape
    shape4[0] = 4
    let x4 = Tensor.randomNormal(shape: shape4, generator: &rng)
    let dir = try temporary("deploy-ort")
    try NPY.write(x1, to: dir.appendingPathComponent("x1.npy"))
    try NPY.write(x4, to: dir.appendingPathComponent("x4.npy"))
    let ran = try PythonScript.run(
      "check_deploy.py",
      [
        "onnx", out.appendingPathComponent("\(model)/1/model.onnx").path, dir.path,
        dir.appendingPathComponent("x1.npy").path,
        dir.appendingPathComponent("x4.npy").path,
      ])
    XCTAssertTrue(ran.contains(#""\#(inputName)": "N""#), ran)
    let veil1 = try Executor(graph: tail).run([x1])[0]
    let veil4 = try Executor(graph: try tail.withBatch(4)).run([x4])[0]
    for (k, veil) in [veil1, veil4].enumerated() {
      let ort = try NPY.read(dir.appendingPathComponent("output_\(k).npy"))
      XCTAssertEqual(ort.shape, veil.shape)
      let c = Comparison(got: veil, want: ort, tolerance: .standard)
      XCTAssertTrue(c.passed, "batch \(veil.shape[0]): \(c)")
    }
  }

  func testATailThatDoesNotRebatchIsServedWithoutBatching() throws {
    let plan = try planFolder(fixedBatch: true)
    let (out, result) = try deploy(plan, .triton)
    XCTAssertTrue(result.notes.contains { $0.contains("does not re-batch") }, "\(result.notes)")
    let text = try PythonScript.run(
      "check_deploy.py", ["pbtxt", out.appendingPathComponent("\(plan.plan.accelerator.modelName)/config.pbtxt").path])
    let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    XCTAssertEqual(config["max_batch_size"] as? Int, 0)
    XCTAssertEqual(config["has_dynamic_batching"] as? Bool, false)
    XCTAssertEqual(
      (config["input"] as? [[String: Any]])?.first?["dims"] as? [Int], plan.plan.cut.featureShape, "the full shape")
    XCTAssertEqual((config["output"] as? [[String: Any]])?.first?["dims"] as? [Int], [1, 10])
  }

  // MARK: KServe

  func testKServeInferenceServiceCarriesTheRuntimeStorageResourcesAndBounds() throws {
    let plan = try planFolder()
    XCTAssertThrowsError(try deploy(plan, .kserve)) { e in XCTAssertTrue("\(e)".contains("--storage-uri"), "\(e)") }
    let (out, result) = try deploy(plan, .kserve) {
      $0.storageURI = "s3://models/veil"
      $0.gpus = 2
      $0.minReplicas = 2
      $0.maxReplicas = 6
    }
    XCTAssertTrue(result.files.contains("model-repository/\(plan.plan.accelerator.modelName)/config.pbtxt"))
    let docs = try Self.yaml(out.appendingPathComponent("inferenceservice.yaml"))
    XCTAssertEqual(docs.count, 1)
    let isvc = docs[0]
    XCTAssertEqual(isvc["apiVersion"] as? String, "serving.kserve.io/v1beta1")
    XCTAssertEqual(isvc["kind"] as? String, "InferenceService")
    XCTAssertEqual((isvc["metadata"] as? [String: Any])?["name"] as? String, "tiny-classifier")
    let predictor = try XCTUnwrap((isvc["spec"] as? [String: Any])?["predictor"] as? [String: Any])
    XCTAssertEqual(predictor["minReplicas"] as? Int, 2)
    XCTAssertEqual(predictor["maxReplicas"] as? Int, 6)
    let model = try XCTUnwrap(predictor["model"] as? [String: Any])
    XCTAssertEqual((model["modelFormat"] as? [String: Any])?["name"] as? String, "triton")
    XCTAssertEqual(model["protocolVersion"] as? String, "v2")
    XCTAssertEqual(model["storageUri"] as? String, "s3://models/veil")
    let limits = try XCTUnwrap((model["resources"] as? [String: Any])?["limits"] as? [String: Any])
    XCTAssertEqual(limits["nvidia.com/gpu"] as? Int, 2)
    XCTAssertEqual(((model["ports"] as? [[String: Any]])?.first)?["containerPort"] as? Int, 9000)
  }

  // MARK: Kubernetes

  /// The fields apps/v1 and v1 require, and the links between the objects: selector ⊆ pod
  /// labels, probes and Service on ports the container declares, volumes that exist.
  func checkEnclaveObjects(_ docs: [[String: Any]], replicas: Int) throws -> (
    deployment: [String: Any], pod: [String: Any], container: [String: Any]
  ) {
    for d in docs {
      XCTAssertNotNil(d["apiVersion"] as? String)
      XCTAssertNotNil(d["kind"] as? String)
      XCTAssertNotNil((d["metadata"] as? [String: Any])?["name"] as? String, "\(d)")
    }
    let deployment = try XCTUnwrap(docs.first { $0["kind"] as? String == "Deployment" })
    XCTAssertEqual(deployment["apiVersion"] as? String, "apps/v1")
    let spec = try XCTUnwrap(deployment["spec"] as? [String: Any])
    XCTAssertEqual(spec["replicas"] as? Int, replicas)
    let selector = try XCTUnwrap((spec["selector"] as? [String: Any])?["matchLabels"] as? [String: String])
    let template = try XCTUnwrap(spec["template"] as? [String: Any])
    let templateMeta = try XCTUnwrap(template["metadata"] as? [String: Any])
    let labels = try XCTUnwrap(templateMeta["labels"] as? [String: String])
    XCTAssertFalse(selector.isEmpty)
    for (k, v) in selector { XCTAssertEqual(labels[k], v, "selector \(k) matches the pod template") }
    let annotations = try XCTUnwrap(templateMeta["annotations"] as? [String: String])
    XCTAssertEqual(annotations["prometheus.io/scrape"], "true")
    let pod = try XCTUnwrap(template["spec"] as? [String: Any])
    let containers = try XCTUnwrap(pod["containers"] as? [[String: Any]])
    XCTAssertEqual(containers.count, 1)
    let container = containers[0]
    XCTAssertNotNil(container["image"] as? String)
    let ports = try XCTUnwrap(container["ports"] as? [[String: Any]])
    let portNames = Dictionary(
      uniqueKeysWithValues: ports.map { ($0["name"] as? String ?? "", $0["containerPort"] as? Int ?? 0) })
    XCTAssertEqual(
      annotations["prometheus.io/port"], portNames["metrics"].map(String.init), "scraped on the metrics port")
    // gRPC probes (grpc.health.v1, which the enclave serves) on the declared gRPC port.
    for probe in ["readinessProbe", "livenessProbe"] {
      let p = try XCTUnwrap(container[probe] as? [String: Any], probe)
      XCTAssertEqual((p["grpc"] as? [String: Any])?["port"] as? Int, portNames["grpc"], "\(probe) on the gRPC port")
    }
    let volumes = Set(((pod["volumes"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String })
    let allContainers = containers + ((pod["initContainers"] as? [[String: Any]]) ?? [])
    for c in allContainers {
      for m in (c["volumeMounts"] as? [[String: Any]]) ?? [] {
        XCTAssertTrue(volumes.contains(m["name"] as? String ?? ""), "mount \(m) names a volume of the pod")
      }
    }
    let service = try XCTUnwrap(docs.first { $0["kind"] as? String == "Service" })
    XCTAssertEqual(service["apiVersion"] as? String, "v1")
    let serviceSpec = try XCTUnwrap(service["spec"] as? [String: Any])
    for (k, v) in try XCTUnwrap(serviceSpec["selector"] as? [String: String]) { XCTAssertEqual(labels[k], v) }
    let servicePorts = try XCTUnwrap(serviceSpec["ports"] as? [[String: Any]])
    XCTAssertEqual(servicePorts.first?["port"] as? Int, portNames["grpc"])
    XCTAssertNotNil(portNames[servicePorts.first?["targetPort"] as? String ?? ""])
    return (deployment, pod, container)
  }

  func testKubernetesSGXEnclaveWithGramineAndIntelsDevicePlugin() throws {
    let plan = try planFolder()
    XCTAssertThrowsError(try deploy(plan, .kubernetes)) { e in XCTAssertTrue("\(e)".contains("--measurement"), "\(e)") }
    XCTAssertThrowsError(try deploy(plan, .kubernetes) { $0.measurement = Self.mrenclave }) { e in
      XCTAssertTrue("\(e)".contains("--peak-memory"), "a plan without a profile needs the head's peak memory: \(e)")
    }
    let (out, _) = try deploy(plan, .kubernetes) {
      $0.measurement = Self.mrenclave
      $0.peakMemory = 64 << 20
      $0.replicas = 5
      $0.image = "registry.example/veil-enclave:1.0"
    }
    let docs = try Self.yaml(out.appendingPathComponent("enclave.yaml"))
    XCTAssertEqual(docs.map { $0["kind"] as? String }, ["ConfigMap", "Deployment", "Service"])
    let (_, pod, container) = try checkEnclaveObjects(docs, replicas: 5)
    XCTAssertNil(pod["runtimeClassName"])
    XCTAssertEqual(container["image"] as? String, "registry.example/veil-enclave:1.0")
    XCTAssertEqual(container["command"] as? [String], ["gramine-sgx", "veil"])
    let limits = try XCTUnwrap((container["resources"] as? [String: Any])?["limits"] as? [String: Any])
    XCTAssertEqual(limits["sgx.intel.com/enclave"] as? Int, 1)
    XCTAssertEqual(limits["sgx.intel.com/provision"] as? Int, 1)
    let manifestText = try String(contentsOf: out.appendingPathComponent("veil.manifest.template"), encoding: .utf8)
    let size = try XCTUnwrap(
      manifestText.range(of: #"sgx.enclave_size = "(\d+)M""#, options: .regularExpression).map { manifestText[$0] })
    XCTAssertEqual(
      limits["sgx.intel.com/epc"] as? String, size.filter(\.isNumber) + "Mi", "EPC request = the enclave's size")
    // The manifest the ConfigMap carries is the file written, and runs the enclave with the
    // tail endpoint and the metrics port the probes and annotations use.
    let data = try XCTUnwrap(docs[0]["data"] as? [String: String])
    XCTAssertEqual(data["veil.manifest.template"], manifestText)
    XCTAssertTrue(
      manifestText.contains(#""--accelerator", "tiny-classifier-predictor.default.svc.cluster.local:9000""#),
      manifestText)
    XCTAssertTrue(manifestText.contains(#""--metrics-port", "9090""#), manifestText)
    XCTAssertTrue(manifestText.contains(#""file:/veil/plan/head.onnx""#), "the head is measured")
    XCTAssertFalse(
      manifestText.contains("{{ accelerator }}") || manifestText.contains("-Daccelerator"), "the endpoint is filled in")
    // The client policy pins the MRENCLAVE and accepts only genuine SGX evidence.
    let policy = try Policy(json: try Data(contentsOf: out.appendingPathComponent("client-policy.json")))
    XCTAssertEqual(policy.mrEnclave?.hex, Self.mrenclave)
    XCTAssertFalse(policy.allowSimulation)
    XCTAssertFalse(policy.allowDebug)
    XCTAssertEqual(policy.acceptedEvidence, ["sgx"])
    XCTAssertEqual(
      data["client-policy.json"],
      try String(contentsOf: out.appendingPathComponent("client-policy.json"), encoding: .utf8))
  }

  /// A plan that keeps its answer in the enclave: the output part is a trusted file of the
  /// cluster's manifest and sits beside the tail in the confidential VM's plan.
  func testAPrivateOutputPlanShipsItsOutputPartToTheEnclave() throws {
    let folder = try temporary("deploy-private-output")
    var plan = try DeploymentPlan.write(
      model: Self.classifier(fixedBatch: false), name: "tiny_classifier", cut: "relu0",
      preprocessing: .init(preset: "imagenet", appliedIn: .client), teePreset: "sgx2", outputCut: "auto", to: folder)
    XCTAssertNotNil(plan.plan.privateOutput)
    let sealed = try SealedHead.seal(Array(try Data(contentsOf: plan.headURL)), key: SealedHead.newKey())
    try Data(sealed).write(to: folder.appendingPathComponent("head.onnx.sealed"))
    plan.plan.sealedHead = "head.onnx.sealed"
    try DeploymentPlan.writeFile(plan.plan, to: plan.file)
    let (out, _) = try deploy(plan, .kubernetes) {
      $0.measurement = Self.mrenclave
      $0.peakMemory = 64 << 20
    }
    let manifest = try String(contentsOf: out.appendingPathComponent("veil.manifest.template"), encoding: .utf8)
    XCTAssertTrue(manifest.contains(#""file:/veil/plan/output.onnx""#), manifest)
    let (tdx, _) = try deploy(plan, .kubernetes) {
      $0.measurement = Self.mrtd
      $0.tee = .tdx
      $0.keyServer = "keys.example:7443"
    }
    let docs = try Self.yaml(tdx.appendingPathComponent("enclave.yaml"))
    let config = try XCTUnwrap(docs.first { $0["kind"] as? String == "ConfigMap" }?["data"] as? [String: String])
    let vmPlan = try DeploymentPlan.decode(Data(try XCTUnwrap(config["plan.json"]).utf8), file: "plan.json")
    XCTAssertEqual(vmPlan.privateOutput?.part.path, "/veil/plan/output.onnx")
  }

  func testKubernetesTDXEnclaveOpensTheSealedHeadFromASecret() throws {
    let plan = try planFolder()
    XCTAssertThrowsError(
      try deploy(plan, .kubernetes) {
        $0.tee = .tdx; $0.measurement = Self.mrtd
      }
    ) { e in
      XCTAssertTrue("\(e)".contains("--key-server"), "\(e)")
    }
    XCTAssertThrowsError(
      try deploy(plan, .kubernetes) {
        $0.tee = .tdx; $0.measurement = Self.mrenclave; $0.keyServer = "keys.example:7430"
      }
    ) {
      e in XCTAssertTrue("\(e)".contains("mrtd"), "an MRTD is 48 bytes: \(e)")
    }
    let (out, _) = try deploy(plan, .kubernetes) {
      $0.tee = .tdx
      $0.measurement = Self.mrtd
      $0.keyServer = "keys.example:7430"
      $0.accelerator = "triton.gpu.svc.cluster.local:8001"
    }
    let docs = try Self.yaml(out.appendingPathComponent("enclave.yaml"))
    XCTAssertEqual(docs.map { $0["kind"] as? String }, ["ConfigMap", "Secret", "Deployment", "Service"])
    let (_, pod, container) = try checkEnclaveObjects(docs, replicas: 3)
    XCTAssertEqual(pod["runtimeClassName"] as? String, "kata-qemu-tdx")
    let secret = docs[1]
    let sealed = try XCTUnwrap((secret["data"] as? [String: String])?["head.onnx.sealed"])
    XCTAssertEqual(
      Data(base64Encoded: sealed), try Data(contentsOf: plan.url("head.onnx.sealed")),
      "the Secret carries the sealed head")
    let initContainer = try XCTUnwrap((pod["initContainers"] as? [[String: Any]])?.first)
    let fetch = try XCTUnwrap(initContainer["command"] as? [String])
    XCTAssertEqual(Array(fetch.prefix(3)), ["veil", "keys", "fetch"])
    XCTAssertEqual(fetch[fetch.firstIndex(of: "--server")! + 1], "keys.example:7430")
    let command = try XCTUnwrap(container["command"] as? [String])
    XCTAssertEqual(command[command.firstIndex(of: "--accelerator")! + 1], "triton.gpu.svc.cluster.local:8001")
    XCTAssertEqual(command[command.firstIndex(of: "--metrics-port")! + 1], "9090")
    // The plan the enclave reads is the plan, with the head where the init container opens it.
    let data = try XCTUnwrap(docs[0]["data"] as? [String: String])
    let served = try DeploymentPlan.decode(Data(try XCTUnwrap(data["plan.json"]).utf8), file: "ConfigMap plan.json")
    XCTAssertEqual(served.head.path, fetch[fetch.firstIndex(of: "--out")! + 1])
    XCTAssertEqual(served.head.sha256, plan.plan.head.sha256)
    XCTAssertEqual(served.tail.path, "/veil/plan/tail.onnx")
    XCTAssertEqual(served.cut, plan.plan.cut)
    let policy = try Policy(json: try Data(contentsOf: out.appendingPathComponent("client-policy.json")))
    XCTAssertEqual(policy.mrTD?.hex, Self.mrtd)
    XCTAssertEqual(policy.acceptedEvidence, ["tdx"])
  }

  // MARK: Compose

  func testComposeRunsBothTiersOnTheMachineWithSimulationMarked() throws {
    let plan = try planFolder()
    let (out, _) = try deploy(plan, .compose)
    let url = out.appendingPathComponent("docker-compose.yml")
    let docs = try Self.yaml(url)
    XCTAssertEqual(docs.count, 1)
    let services = try XCTUnwrap(docs[0]["services"] as? [String: [String: Any]])
    XCTAssertEqual(Set(services.keys), ["accelerator", "enclave"])
    let accelerator = try XCTUnwrap(services["accelerator"]?["command"] as? [String])
    XCTAssertEqual(
      accelerator[accelerator.firstIndex(of: "--model")! + 1],
      "\(plan.plan.accelerator.modelName)=/veil/plan/tail.onnx:1")
    let enclave = try XCTUnwrap(services["enclave"])
    let command = try XCTUnwrap(enclave["command"] as? [String])
    XCTAssertTrue(command.contains("--allow-simulation"))
    XCTAssertEqual(command[command.firstIndex(of: "--accelerator")! + 1], "accelerator:8001")
    XCTAssertEqual((enclave["environment"] as? [String: String])?["VEIL_EVIDENCE_MODE"], "simulated")
    XCTAssertEqual(enclave["ports"] as? [String], ["127.0.0.1:7440:7440", "127.0.0.1:9090:9090"])
    XCTAssertEqual(enclave["depends_on"] as? [String], ["accelerator"])
    for service in services.values {
      let mount = try XCTUnwrap((service["volumes"] as? [[String: Any]])?.first)
      XCTAssertEqual(mount["source"] as? String, plan.directory.standardizedFileURL.path)
      XCTAssertEqual(mount["target"] as? String, "/veil/plan")
    }
    let text = try String(contentsOf: url, encoding: .utf8)
    XCTAssertTrue(text.contains("# SIMULATION: --allow-simulation"), text)
  }

  // MARK: Bad input

  func testBadPlansAndOptionsAreClearErrors() throws {
    let empty = try temporary("deploy-empty")
    XCTAssertThrowsError(try ClusterDeployment(planPath: empty.path, options: DeployOptions())) { e in
      XCTAssertTrue("\(e)".contains("--plan") && "\(e)".contains("plan.json"), "\(e)")
    }
    let malformed = empty.appendingPathComponent("plan.json")
    try Data(#"{"schemaVersion": 1, "model": {"name": "m"}}"#.utf8).write(to: malformed)
    XCTAssertThrowsError(try ClusterDeployment(planPath: malformed.path, options: DeployOptions())) { e in
      XCTAssertTrue("\(e)".contains(malformed.path) && "\(e)".contains("model.sha256"), "\(e)")
    }
    let plan = try planFolder()
    let cases: [(String, (inout DeployOptions) -> Void)] = [
      ("--max-batch", { $0.maxBatch = 5000 }), ("--max-batch", { $0.maxBatch = -1 }),
      ("--replicas", { $0.replicas = 0 }),
      (
        "--min-replicas",
        {
          $0.minReplicas = 5; $0.maxReplicas = 2
        }
      ), ("--enclave-port", { $0.enclavePort = 70000 }),
      ("--preferred-batch", { $0.preferredBatchSizes = [16] }), ("--name", { $0.name = "Not_A_Label" }),
      ("--accelerator-memory", { $0.acceleratorMemory = "lots" }), ("--accelerator", { $0.accelerator = "no-port" }),
      ("--metrics-port", { $0.metricsPort = 7440 }),
    ]
    for (flag, configure) in cases {
      var o = DeployOptions()
      configure(&o)
      XCTAssertThrowsError(try ClusterDeployment(planPath: plan.directory.path, options: o), flag) { e in
        XCTAssertTrue("\(e)".hasPrefix(flag), "\(flag): \(e)")
      }
    }
    // A tail that does not match the plan's digest is named.
    try Data("not onnx".utf8).write(to: plan.tailURL)
    XCTAssertThrowsError(try deploy(plan, .triton)) { e in XCTAssertTrue("\(e)".contains("tail.sha256"), "\(e)") }
  }
}
