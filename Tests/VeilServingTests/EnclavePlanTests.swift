import Foundation
import VeilServing
import VeilTEE
import XCTest

/// The plan document: what `DeploymentPlan.write` produces reads back the same, and every bad
/// field is an error naming the file and the field.
final class EnclavePlanTests: XCTestCase {
  func copyOfPlan() throws -> URL {
    let plan = try EnclaveFixture.plan(.client)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-plan-\(UUID().uuidString)")
    try FileManager.default.copyItem(at: plan.directory, to: dir)
    return dir
  }

  func edit(_ dir: URL, _ change: (inout [String: Any]) -> Void) throws {
    let file = dir.appendingPathComponent("plan.json")
    var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any])
    change(&json)
    try JSONSerialization.data(withJSONObject: json).write(to: file)
  }

  func expectError(_ dir: URL, field: String, _ text: String, line: UInt = #line) {
    do {
      let loaded = try DeploymentPlan.load(dir.path)
      _ = try loaded.readPart(loaded.plan.head, field: "head")
      XCTFail("accepted a plan with a bad \(field)", line: line)
    } catch {
      let s = "\(error)"
      XCTAssertTrue(s.contains("'\(field)'") && s.contains(text) && s.contains("plan.json"), s, line: line)
    }
  }

  func testWrittenPlanReadsBack() throws {
    let plan = try EnclaveFixture.plan(.client)
    let again = try DeploymentPlan.load(plan.file.path)
    XCTAssertEqual(again.plan, plan.plan)
    XCTAssertEqual(plan.plan.cut.featureShape, [1, 64, 14, 14])
    XCTAssertEqual(plan.plan.input.shape, [1, 3, 224, 224])
    XCTAssertEqual(try again.labelNames()?.count, 1000)
    // The folder works as well as the file.
    XCTAssertEqual(try DeploymentPlan.load(plan.directory.path).plan, plan.plan)
  }

  func testBadFieldsAreNamed() throws {
    let dir = try copyOfPlan()
    defer { try? FileManager.default.removeItem(at: dir) }
    let original = try Data(contentsOf: dir.appendingPathComponent("plan.json"))
    func reset() throws { try original.write(to: dir.appendingPathComponent("plan.json")) }

    try edit(dir) { $0["preprocessing"] = ["preset": "torch", "appliedIn": "client"] }
    expectError(dir, field: "preprocessing.preset", "'torch' is not one of imagenet")
    try reset()
    try edit(dir) { $0["schemaVersion"] = 9 }
    expectError(dir, field: "schemaVersion", "not supported")
    try reset()
    try edit(dir) { $0["tee"] = ["preset": "sgx1", "evidenceMode": "hope"] }
    expectError(dir, field: "tee.evidenceMode", "'hope'")
    try reset()
    try edit(dir) { $0.removeValue(forKey: "cut") }
    expectError(dir, field: "cut", "missing")
    try reset()
    try edit(dir) { $0["input"] = ["width": 224, "height": 224, "layout": "nchw", "shape": [1, 3, 224, 225]] }
    expectError(dir, field: "input.shape", "does not match")
    try reset()
    // Sides whose product overflows what the enclave multiplies for every request (3 · 2^62).
    let side = 1 << 31
    try edit(dir) { $0["input"] = ["width": side, "height": side, "layout": "nchw", "shape": [1, 3, side, side]] }
    expectError(dir, field: "input", "not a model input Veil serves")
    try reset()
    try edit(dir) {
      var cut = $0["cut"] as? [String: Any] ?? [:]
      cut["featureShape"] = [1, 1 << 40, 1 << 40]
      $0["cut"] = cut
    }
    expectError(dir, field: "cut.featureShape", "is not a tensor shape")
    try reset()
    // A head that is not the one the plan names.
    let head = dir.appendingPathComponent("head.onnx")
    var bytes = try Data(contentsOf: head)
    bytes[bytes.count / 2] ^= 0xFF
    try bytes.write(to: head)
    expectError(dir, field: "head.sha256", "the file was changed or the plan is stale")
  }

  /// A plan whose input is not its head's (a consistent 112×112 in a plan whose head takes
  /// 224×224): the enclave refuses to start on it, instead of sizing requests by the plan and
  /// running the head on them.
  func testEnclaveRefusesAPlanWhoseInputIsNotItsHeads() throws {
    let dir = try copyOfPlan()
    defer { try? FileManager.default.removeItem(at: dir) }
    try edit(dir) { $0["input"] = ["width": 112, "height": 112, "layout": "nchw", "shape": [1, 3, 112, 112]] }
    let plan = try DeploymentPlan.load(dir.path)
    let tail = try LocalTailBackend(tail: try plan.readPart(plan.plan.tail, field: "tail"))
    XCTAssertThrowsError(try EnclaveEngine(plan: plan, backend: tail)) { error in
      let s = "\(error)"
      XCTAssertTrue(s.contains("'input.shape'") && s.contains("the head's input is [1, 3, 224, 224]"), s)
    }
  }

  /// The plan records the tail's output, which the enclave holds every accelerator answer to.
  func testPlanDeclaresTheTailOutput() throws {
    let plan = try EnclaveFixture.plan(.client)
    XCTAssertEqual(plan.plan.output?.shape, [1, 1000])
    let (inputs, output) = try plan.tailInterface()
    XCTAssertEqual(inputs.map(\.datatype), ["FP32"])
    XCTAssertFalse(inputs[0].name.isEmpty)
    XCTAssertEqual(output.shape, [1, 1000])
    XCTAssertEqual(output.datatype, "FP32")
  }

  /// The Gramine manifest's command line starts `veil enclave serve`: its arguments, with the
  /// plan's mount point mapped back to the plan folder and the accelerator filled in as
  /// `gramine-manifest -Daccelerator=…` would, bring up an enclave that answers a request.
  func testGramineManifestCommandLineStartsTheEnclave() async throws {
    let plan = try EnclaveFixture.plan(.client)
    let manifest = try GramineManifest(
      binary: Spawned.veil.path, libraries: [], head: plan.headURL.path, peakMemory: 1 << 28, kernelThreads: 2, fileBytes: 0)
    XCTAssertEqual(manifest.plan, plan.file.path)
    XCTAssertTrue(manifest.template.contains("\"file:\(plan.file.path)\""), "the plan is a trusted file")
    XCTAssertTrue(manifest.template.contains("\"file:\(plan.tailURL.path)\""), "the tail is a trusted file")
    XCTAssertTrue(manifest.template.contains("\"file:\(plan.directory.appendingPathComponent("labels.txt").path)\""))
    XCTAssertTrue(manifest.template.contains(manifest.argv.map { "\"\($0)\"" }.joined(separator: ", ")))
    XCTAssertEqual(Array(manifest.argv.prefix(3)), ["veil", "enclave", "serve"])

    let accelerator = try await RunningServer([
      KServeModelSpec(
        name: plan.plan.accelerator.modelName, version: plan.plan.accelerator.modelVersion,
        graph: try plan.readPart(plan.plan.tail, field: "tail"))
    ])
    let arguments = manifest.argv.dropFirst().map { a -> String in
      if a.hasPrefix(GramineManifest.planMount) { return plan.directory.path + a.dropFirst(GramineManifest.planMount.count) }
      switch a {
      case "{{ accelerator }}": return "127.0.0.1:\(accelerator.port)"
      case "0.0.0.0": return "127.0.0.1"
      case "7440": return "0"
      default: return a
      }
    }
    // Outside SGX the enclave presents simulated evidence, which needs the flag.
    let enclave = try Spawned.start(arguments + ["--allow-simulation"])
    defer { enclave.stop() }
    let port = try enclave.waitForPort()
    let mrenclave = try XCTUnwrap(enclave.value(after: "MRENCLAVE "), enclave.stderr)
    let x = try EnclaveFixture.input(try EnclaveFixture.photo(), plan: plan.plan)
    let answer = try await EnclaveClient.with(
      Endpoint(host: "127.0.0.1", port: port), verifier: try EnclaveFixture.verifier(mrEnclave: try XCTUnwrap(hexBytes(mrenclave)))
    ) { client in
      try await client.session().infer(EnclaveSession.request(tensor: x, top: 1))
    }
    XCTAssertEqual(answer.accelerator, "127.0.0.1:\(accelerator.port)")
    // The accelerator's account of the tail call reaches the client, within the call's time.
    let stages = try XCTUnwrap(answer.stages)
    XCTAssertTrue(stages.hasTailQueueMs && stages.hasTailComputeMs, "\(stages)")
    XCTAssertGreaterThan(stages.tailComputeMs, 0)
    XCTAssertLessThanOrEqual(stages.tailQueueMs + stages.tailComputeMs, stages.tailCallMs)
    try await accelerator.stop()
  }
}
