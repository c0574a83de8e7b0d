import Foundation
import Synchronization
import VeilGraph
import VeilModels
import VeilServing
import VeilTEE
import VeilTensor
import XCTest

/// The enclave applies the plan's defence to the map before it leaves.
final class DefenceServingTests: XCTestCase {
  /// A tail backend that keeps the maps it is sent and answers zeros of the tail's output.
  final class RecordingBackend: TailBackend {
    let endpoint = "recording"
    let maps = Mutex<[Tensor]>([])
    let output: [Int]
    init(output: [Int]) { self.output = output }
    func infer(_ inputs: [Tensor]) async throws -> TailAnswer {
      maps.withLock { $0.append(contentsOf: inputs) }
      return TailAnswer(output: Tensor(zeros: output), endpoint: endpoint)
    }
  }

  func defendedPlan(_ defence: CutDefence, name: String) throws -> LoadedPlan {
    let base = try EnclaveFixture.plan(.client)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-defended-plan-\(getpid())-\(name)")
    var plan = base.plan
    plan.defence = DeploymentPlan.Defence(defence: defence, channelAxis: 1, utility: "test")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    for file in ["head.onnx", "tail.onnx", "labels.txt"] {
      let target = dir.appendingPathComponent(file)
      if !FileManager.default.fileExists(atPath: target.path) {
        try FileManager.default.createSymbolicLink(at: target, withDestinationURL: base.directory.appendingPathComponent(file))
      }
    }
    let file = dir.appendingPathComponent(DeploymentPlan.fileName)
    try DeploymentPlan.writeFile(plan, to: file)
    return try DeploymentPlan.load(file.path)
  }

  func testTheEnclaveSendsOnlyTheDefendedMap() async throws {
    let base = try EnclaveFixture.plan(.client)
    let channels = base.plan.cut.featureShape[1]
    var prune = CutDefence.pruning(0.5)
    prune.keptChannels = Array(stride(from: 0, to: channels, by: 2))
    let plan = try defendedPlan(prune, name: "prune")
    XCTAssertEqual(plan.plan.schemaVersion, 2, "a Veil that cannot apply a defence refuses the plan")
    XCTAssertEqual(plan.plan.defence?.defence, prune)
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 1), plan: plan.plan)
    let clean = try Executor(graph: try plan.readPart(plan.plan.head, field: "head")).run([x])[0].scalars
    let backend = RecordingBackend(output: plan.plan.output!.shape)
    let engine = try EnclaveEngine(plan: plan, backend: backend)
    _ = try await engine.run(x)
    let sent = try XCTUnwrap(backend.maps.withLock { $0.first }).scalars
    let plane = base.plan.cut.featureShape[2] * base.plan.cut.featureShape[3]
    XCTAssertEqual(sent.count, clean.count)
    var zeroed = 0
    for k in 0..<sent.count {
      let c = k / plane
      if c % 2 == 0 { XCTAssertEqual(sent[k], clean[k]) } else { XCTAssertEqual(sent[k], 0); if clean[k] != 0 { zeroed += 1 } }
    }
    XCTAssertGreaterThan(zeroed, 0, "the pruned channels carried something before")

    var noise = CutDefence.noise(1)
    noise.channelScale = [Float](repeating: 0.5, count: channels)
    let noisy = try defendedPlan(noise, name: "noise")
    let recorder = RecordingBackend(output: noisy.plan.output!.shape)
    let noisyEngine = try EnclaveEngine(plan: noisy, backend: recorder)
    _ = try await noisyEngine.run(x)
    _ = try await noisyEngine.run(x)
    let twice = recorder.maps.withLock { $0.map(\.scalars) }
    XCTAssertNotEqual(twice[0], twice[1], "fresh noise per request, never a fixed seed")
    let residual = zip(twice[0], clean).map { Double($0 - $1) }
    let sd = (residual.map { $0 * $0 }.reduce(0, +) / Double(residual.count)).squareRoot()
    XCTAssertEqual(sd, 0.5, accuracy: 0.02, "σ × channel scale")
  }

  /// A quantised plan sends the map as its codes: the tail file takes codes (UINT8), minimum
  /// and step; Veil's KServe server, serving that file as a deployment does, declares the codes
  /// UINT8; the request carries one byte a value; and the answer is the one the FP32 path gives
  /// (the quantised map through the plain tail).
  func testAQuantisedMapCrossesTheCutAsItsCodes() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-encoded-map-\(getpid())")
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = try ModelZoo.build(EnclaveFixture.model, batch: 1, seed: 0)
    let quant = CutDefence.quantisation(bits: 6)
    let plan = try DeploymentPlan.write(
      model: model, name: EnclaveFixture.model, cut: EnclaveFixture.cut, preprocessing: .init(preset: "imagenet", appliedIn: .client),
      defence: .init(defence: quant, channelAxis: 1), to: dir)
    XCTAssertEqual(plan.plan.defence?.wire, .uint8)
    let (inputs, _) = try plan.tailInterface()
    XCTAssertEqual(inputs.map(\.datatype), ["UINT8", "FP32", "FP32"])
    let channels = plan.plan.cut.featureShape[1]
    XCTAssertEqual(inputs.map(\.shape), [plan.plan.cut.featureShape, [1, channels, 1, 1], [1, channels, 1, 1]])

    let tail = try plan.readPart(plan.plan.tail, field: "tail")
    let running = try await RunningServer([KServeModelSpec(name: plan.plan.accelerator.modelName, graph: tail)])
    XCTAssertEqual(running.models[0].inputs.map(\.datatype), ["UINT8", "FP32", "FP32"], "what ModelMetadata declares")
    let backend = try KServeTailBackend.backends([KServeEndpoint(host: "127.0.0.1", port: running.port)], plan: plan)[0]
    let engine = try EnclaveEngine(plan: plan, backend: backend)
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 3), plan: plan.plan)
    let run = try await engine.run(x)
    let served = run.logits.scalars
    XCTAssertGreaterThan(run.defenceMs, 0, "the quantisation is timed on its own")
    XCTAssertLessThanOrEqual(run.defenceMs, run.headMs, "and within the head's time")

    let (head, plain) = try model.split(at: try model.cut(named: EnclaveFixture.cut))
    let map = try Executor(graph: head).run([x])[0]
    var unused = SystemRandomNumberGenerator()
    let quantised = try quant.apply(to: map, using: &unused)
    let expected = try Executor(graph: plain).run([quantised])[0].scalars
    XCTAssertLessThan(EnclaveFixture.relativeError(served, expected), 1e-4)

    let encoded = try quant.encode(map)
    let request = KServeClient.makeRequest(
      model: "tail", inputs: zip(inputs, encoded.tensors).map { KServeTensor(name: $0.name, tensor: $1, datatype: $0.datatype) })
    XCTAssertEqual(request.rawInputContents.map(\.count), [map.count, channels * 4, channels * 4], "a byte a code")
    XCTAssertEqual(request.rawInputContents.map(\.count).reduce(0, +), encoded.wireBytes)
    XCTAssertLessThan(encoded.wireBytes * 3, map.count * 4, "under a third of the FP32 map")

    // The typed form (uint_contents) answers the same; codes out of UINT8's range, or sent in
    // fp32_contents, are refused with what to do, and the server goes on serving.
    let tailName = plan.plan.accelerator.modelName
    let tensors = zip(inputs, encoded.tensors).map { KServeTensor(name: $0.name, tensor: $1, datatype: $0.datatype) }
    let typed = try await running.client.infer(model: tailName, inputs: tensors, encoding: .typed)
    let raw = try await running.client.infer(model: tailName, inputs: tensors)
    XCTAssertLessThan(EnclaveFixture.relativeError(typed.outputs[0].tensor.scalars, raw.outputs[0].tensor.scalars), 1e-4)
    var over = KServeClient.makeRequest(model: tailName, inputs: tensors, encoding: .typed)
    over.inputs[0].contents.uintContents[0] = 300
    var asFloats = KServeClient.makeRequest(model: tailName, inputs: tensors, encoding: .typed)
    asFloats.inputs[0].contents.uintContents = []
    asFloats.inputs[0].contents.fp32Contents = encoded.codes.scalars
    for (request, needle) in [(over, "carries 300, above 255"), (asFloats, "carries fp32_contents")] {
      do {
        _ = try await running.client.modelInfer(request)
        XCTFail("\(needle): accepted")
      } catch let e as KServeError {
        XCTAssertTrue(e.message.contains(needle), e.message)
      }
    }
    let after = try await running.client.infer(model: tailName, inputs: tensors)
    XCTAssertLessThan(EnclaveFixture.relativeError(after.outputs[0].tensor.scalars, raw.outputs[0].tensor.scalars), 1e-4, "still serving")
    try await running.stop()
  }

  func testPlansWithABadDefenceAreRefusedNamingTheField() throws {
    let base = try EnclaveFixture.plan(.client)
    let channels = base.plan.cut.featureShape[1]
    var wrong = CutDefence.noise(1)
    wrong.channelScale = [1, 2]
    var plan = base.plan
    plan.defence = DeploymentPlan.Defence(defence: wrong, channelAxis: 1)
    let encoded = try JSONEncoder().encode(plan)
    XCTAssertThrowsError(try DeploymentPlan.decode(encoded, file: "plan.json")) { e in
      XCTAssertTrue("\(e)".contains("defence") && "\(e)".contains("\(channels) channels"), "\(e)")
    }
    var unfitted = plan
    unfitted.defence = DeploymentPlan.Defence(defence: .pruning(0.5), channelAxis: 1)
    XCTAssertThrowsError(try DeploymentPlan.decode(try JSONEncoder().encode(unfitted), file: "plan.json")) { e in
      XCTAssertTrue("\(e)".contains("not fitted"), "\(e)")
    }
    var axis = plan
    var fitted = CutDefence.quantisation(bits: 4)
    fitted.bits = 4
    axis.defence = DeploymentPlan.Defence(defence: fitted, channelAxis: 7)
    XCTAssertThrowsError(try DeploymentPlan.decode(try JSONEncoder().encode(axis), file: "plan.json")) { e in
      XCTAssertTrue("\(e)".contains("defence.channelAxis"), "\(e)")
    }
    // Schema 2 promises a defence: one without it is refused rather than served undefended.
    var json = try XCTUnwrap(JSONSerialization.jsonObject(with: try JSONEncoder().encode(base.plan)) as? [String: Any])
    json["schemaVersion"] = 2
    XCTAssertThrowsError(try DeploymentPlan.decode(try JSONSerialization.data(withJSONObject: json), file: "plan.json")) { e in
      XCTAssertTrue("\(e)".contains("defence") && "\(e)".contains("missing"), "\(e)")
    }
    json["schemaVersion"] = 3
    XCTAssertThrowsError(try DeploymentPlan.decode(try JSONSerialization.data(withJSONObject: json), file: "plan.json")) { e in
      XCTAssertTrue("\(e)".contains("not supported"), "\(e)")
    }
  }
}

/// A plan that keeps its answer in the enclave: the accelerator returns the map before the last
/// layer, the enclave computes the logits.
final class PrivateOutputServingTests: XCTestCase {
  func testTheAcceleratorNeverSeesTheLogits() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-private-output-\(getpid())")
    let plan = try DeploymentPlan.write(
      model: try ModelZoo.build(EnclaveFixture.model, batch: 1, seed: 0), name: EnclaveFixture.model, cut: EnclaveFixture.cut,
      preprocessing: .init(preset: "imagenet", appliedIn: .client), outputCut: "auto", to: dir)
    let po = try XCTUnwrap(plan.plan.privateOutput)
    XCTAssertEqual(po.cut.name, "flatten")
    XCTAssertEqual(po.cut.featureShape, [1, 1280])
    XCTAssertEqual(plan.plan.output?.shape, [1, 1000], "the answer the client gets")
    XCTAssertEqual(plan.plan.schemaVersion, 2)
    XCTAssertEqual(try plan.tailInterface().output.shape, [1, 1280], "what the accelerator is asked for")
    let manifest = try GramineManifest(
      binary: "/bin/true", libraries: [], head: plan.headURL.path, peakMemory: 1 << 20, kernelThreads: 2, fileBytes: 0)
    XCTAssertTrue(manifest.planFiles.contains { $0.hasSuffix("output.onnx") }, "the enclave's output part is a trusted file")

    let x = try EnclaveFixture.input(try EnclaveFixture.photo(seed: 2), plan: plan.plan)
    let reference = try EnclaveFixture.reference(x)
    let engine = try EnclaveEngine(plan: plan, backend: try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail")))
    let logits = try await engine.run(x).logits
    XCTAssertEqual(logits.shape, [1, 1000])
    XCTAssertLessThan(EnclaveFixture.relativeError(logits.scalars, reference), 1e-4)
    // An accelerator answering the logits' shape (an old tail) is refused, not passed on.
    let wrong = DefenceServingTests.RecordingBackend(output: [1, 1000])
    do {
      _ = try await EnclaveEngine(plan: plan, backend: wrong).run(x)
      XCTFail("a [1, 1000] answer where [1, 1280] is due must be refused")
    } catch {
      XCTAssertTrue("\(error)".contains("[1, 1280]"), "\(error)")
    }
  }
}
