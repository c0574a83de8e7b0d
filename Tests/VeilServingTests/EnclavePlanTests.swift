import Foundation
import VeilServing
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
    // A head that is not the one the plan names.
    let head = dir.appendingPathComponent("head.onnx")
    var bytes = try Data(contentsOf: head)
    bytes[bytes.count / 2] ^= 0xFF
    try bytes.write(to: head)
    expectError(dir, field: "head.sha256", "the file was changed or the plan is stale")
  }
}
