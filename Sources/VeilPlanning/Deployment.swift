import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilServing
import VeilTEE
import VeilTensor

/// The plan's last stage: the chosen cut turned into what the two tiers run and what a client
/// pins. Writes into the plan's folder head.onnx and tail.onnx (with the deployment part of
/// plan.json, `DeploymentPlan`), the head sealed with AES-256-GCM (head.onnx.sealed) and its
/// key (head.key, created 0600, for the model owner's `veil keys serve`), the Gramine manifest
/// template sized from the head's measured peak memory, and the client policy for the
/// simulated enclave this machine can run (client-policy.json).
public struct PlanDeployment {
  public var graph: Graph
  public var name: String
  public var cut: CutPoint
  public var folder: URL
  public var profile: ProfileReport
  /// Class names shipped with the plan (labels.txt); nil: ImageNet's for a zoo model with
  /// 1000 outputs, else none.
  public var labels: [String]?
  /// The client-side preprocessing preset; nil: the preset nearest the model's own.
  public var preset: VeilData.Preprocessing.Preset?
  public var teePreset: String
  /// The defence the enclave applies (fitted), recorded in plan.json.
  public var defence: DeploymentPlan.Defence?
  /// Keep the answer in the enclave: the layers after this cut ("auto": before the last layer
  /// with weights) run there on the accelerator's answer (nil: the accelerator answers).
  public var outputCut: String?

  public init(
    graph: Graph, name: String, cut: CutPoint, folder: URL, profile: ProfileReport, labels: [String]? = nil,
    preset: VeilData.Preprocessing.Preset? = nil, teePreset: String = "sgx1", outputCut: String? = nil,
    defence: DeploymentPlan.Defence? = nil
  ) {
    self.defence = defence
    self.outputCut = outputCut
    self.graph = graph
    self.name = name
    self.cut = cut
    self.folder = folder
    self.profile = profile
    self.labels = labels
    self.preset = preset
    self.teePreset = teePreset
  }

  /// The files written, the deployment document and the summary plan.json's planning keeps.
  public struct Written: Sendable {
    public var plan: DeploymentPlan
    public var summary: PlanRecord.Deployment
    public var policy: Policy
    /// What keeping the answer in the enclave costs, when the plan does.
    public var privateOutput: PrivateOutputRecord?
  }

  public func write() throws -> Written {
    var labelNames = labels
    if labelNames == nil, ModelZoo.names.contains(graph.metadata["architecture"] ?? name),
      let shape = graph.outputs.first.flatMap(graph.shape), shape.last == 1000
    {
      labelNames = try AssetCache.imageNetClasses()
    }
    let presetName = (preset ?? Self.closestPreset(graph: graph, name: name)).rawValue
    let loaded = try DeploymentPlan.write(
      model: graph, name: name, cut: cut.name, preprocessing: .init(preset: presetName, appliedIn: .client), labels: labelNames,
      teePreset: teePreset, evidenceMode: "simulated", defence: defence, outputCut: outputCut, to: folder)
    // The sealed head: only an enclave that satisfies the owner's policy gets the key.
    let key = SealedHead.newKey()
    let sealed = try SealedHead.seal(Array(try Data(contentsOf: loaded.headURL)), key: key)
    try Data(sealed).write(to: folder.appendingPathComponent("head.onnx.sealed"))
    // A rerun replaces the key with the one that sealed this head.
    try SecretFile.write(key.withUnsafeBytes { Array($0) }, to: folder.appendingPathComponent("head.key"), existing: .replace)
    var plan = loaded.plan
    plan.sealedHead = "head.onnx.sealed"
    // The manifest template for gramine-sgx, sized from the head's measured peak memory.
    let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    let peak = profile.cuts.first { $0.cut.name == cut.name }?.headPeakBytes ?? cut.headParameterBytes
    let libs = (try? sharedLibraries(of: binary)) ?? []
    let size: (String) -> Int = { (try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0 }
    let manifest = try GramineManifest(
      binary: binary, libraries: libs, head: loaded.headURL.path, peakMemory: max(peak, 1),
      kernelThreads: ProcessInfo.processInfo.activeProcessorCount, fileBytes: ([binary, loaded.headURL.path] + libs).map(size).reduce(0, +))
    try Data(manifest.template.utf8).write(to: folder.appendingPathComponent("veil.manifest.template"))
    // The policy a client pins for the simulated enclave this machine can run; under SGX the
    // MRENCLAVE comes from gramine-sgx-sigstruct-view instead.
    var policy = Policy()
    policy.mrEnclave = SimulatedEnclave.measurement(
      binaryDigest: try fileDigest(URL(fileURLWithPath: binary)), headDigest: try fileDigest(loaded.headURL))
    policy.allowSimulation = true
    policy.allowDebug = true
    let policyText = String(decoding: try policy.json(), as: UTF8.self)
    try Data(policyText.utf8).write(to: folder.appendingPathComponent("client-policy.json"))
    let summary = PlanRecord.Deployment(
      enclave: "the head up to \(cut.name) (\(cut.headFlops / 1_000_000) MFLOP, \(cut.headParameterBytes >> 10) KiB of weights), `veil enclave serve --plan \(folder.path)`; Gramine manifest veil.manifest.template (\(manifest.enclaveSize >> 20) MiB enclave)",
      accelerator: "the tail after \(cut.name) as KServe v2 model '\(plan.accelerator.modelName)' (`veil accelerator serve --model \(plan.accelerator.modelName)=\(folder.appendingPathComponent("tail.onnx").path)`, or Triton)",
      evidenceMode: "simulated on this machine (no TEE); gramine-sgx, configfs-tsm where present", clientPolicy: policyText,
      files: [
        "head": "head.onnx", "tail": "tail.onnx", "sealed head": "head.onnx.sealed", "head key (owner only)": "head.key",
        "Gramine manifest": "veil.manifest.template", "client policy (simulated enclave)": "client-policy.json",
      ].merging(labelNames == nil ? [:] : ["labels": "labels.txt"]) { a, _ in a }
        .merging(plan.privateOutput.map { ["output part (runs in the enclave)": $0.part.path] } ?? [:]) { a, _ in a })
    let output = try plan.privateOutput.map { try PrivateOutputRecord.measure($0, plan: loaded, teePreset: teePreset) }
    return Written(plan: plan, summary: summary, policy: policy, privateOutput: output)
  }

  /// The VeilData preset nearest to a zoo model's own normalisation, for the client's side.
  public static func closestPreset(graph: Graph, name: String) -> VeilData.Preprocessing.Preset {
    let architecture = graph.metadata["architecture"] ?? name
    guard let t = try? ModelZoo.info(architecture).transform else { return .imagenet }
    let mean = t.pixelMean
    func distance(_ preset: VeilData.Preprocessing.Preset) -> Float {
      let m = VeilData.Preprocessing(preset: preset).normalization.mean
      return zip(mean, m.count == 1 ? Array(repeating: m[0], count: mean.count) : m).map { abs($0 - $1) }.reduce(0, +)
    }
    return VeilData.Preprocessing.Preset.allCases.min { distance($0) < distance($1) } ?? .imagenet
  }
}

/// What keeping the answer in the enclave costs: the output part's time (natively measured, in
/// the TEE modeled as the head's is) and its weights, and what it protects.
public struct PrivateOutputRecord: Codable, Sendable, Equatable {
  /// The cut after which the enclave runs the rest, and the tensor the accelerator now returns.
  public var cut: String
  public var acceleratorAnswer: [Int]
  public var nativeMs: Double
  /// In the TEE: modeled by the cost model's preset (measured inside a real TEE).
  public var teeMs: Double
  public var teeTime: String
  public var parameterBytes: Int
  public var note: String

  static func measure(_ output: DeploymentPlan.PrivateOutput, plan: LoadedPlan, teePreset: String) throws -> PrivateOutputRecord {
    let graph = try plan.readPart(output.part, field: "privateOutput.part")
    let executor = try Executor(graph: graph)
    var rng = SeededGenerator(seed: 0)
    let x = Tensor.randomNormal(shape: output.cut.featureShape, generator: &rng)
    var timing = ProfileOptions()
    timing.runs = 21
    let native = try Profiler.median(timing) { _ = try executor.run([x]) }
    let inTEE = TEEEnvironment.detect()
    let cost = inTEE != nil
      ? TEECost.measured(native)
      : TEECostModel.cost(nativeSeconds: native, trace: executor.memoryTrace.teeTrace, preset: try TEEPreset.named(teePreset), ioOperations: 0)
    let weights = graph.initializers.values.reduce(0) { $0 + $1.count * 4 }
    return PrivateOutputRecord(
      cut: output.cut.name, acceleratorAnswer: output.cut.featureShape, nativeMs: native * 1e3, teeMs: cost.totalSeconds * 1e3,
      teeTime: inTEE == nil ? "modeled (preset \(teePreset))" : "measured in \(inTEE!)", parameterBytes: weights,
      note: "the accelerator computes the map up to \(output.cut.name) \(output.cut.featureShape) and never sees the logits; an attacker who holds the last layer's weights (a public classifier) still computes the answer from that map, so this protects a private last layer (a fine-tuned classifier on a public backbone), not a public one")
  }
}
