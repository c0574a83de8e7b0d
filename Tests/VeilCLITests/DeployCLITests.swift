import Foundation
import XCTest

/// `veil deploy` as a user runs it: the files it lists, and clear errors (exit status 64,
/// the flag or file named, never a trap) for a missing or malformed plan, an unknown target
/// and out-of-range numbers.
extension CLITests {
  func testDeployWritesEachTargetAndRefusesBadInputByName() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-deploy-cli-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: dir) }
    let plan = dir.appendingPathComponent("plan")
    let split = try veil(["split", "--model", "mobilenet_v2", "--cut", "features.7", "--out", plan.path, "--plan"])
    XCTAssertEqual(split.status, 0, split.stderr)

    let triton = try veil([
      "deploy", "--plan", plan.path, "--target", "triton", "--out", dir.appendingPathComponent("t").path,
    ])
    XCTAssertEqual(triton.status, 0, triton.stderr)
    XCTAssertTrue(triton.stdout.contains("mobilenet_v2.tail/config.pbtxt"), triton.stdout)
    XCTAssertTrue(triton.stdout.contains("mobilenet_v2.tail/1/model.onnx"), triton.stdout)
    XCTAssertTrue(triton.stderr.contains("max_batch_size 8"), triton.stderr)
    let compose = try veil([
      "deploy", "--plan", plan.path, "--target", "compose", "--out", dir.appendingPathComponent("c").path,
    ])
    XCTAssertEqual(compose.status, 0, compose.stderr)
    XCTAssertTrue(compose.stderr.contains("SIMULATED"), compose.stderr)

    let bad: [([String], String)] = [
      (["--plan", dir.appendingPathComponent("nowhere").path, "--target", "triton"], "--plan"),
      (["--plan", plan.path, "--target", "helm"], "--target"),
      (["--plan", plan.path, "--target", "triton", "--max-batch", "100000"], "--max-batch"),
      (
        [
          "--plan", plan.path, "--target", "kubernetes", "--replicas", "0", "--measurement",
          String(repeating: "ab", count: 32),
        ], "--replicas"
      ),
      (["--plan", plan.path, "--target", "kserve", "--storage-uri", "not a uri"], "--storage-uri"),
      (["--plan", plan.path, "--target", "triton", "--preferred-batch", "4,x"], "--preferred-batch"),
      (["--plan", plan.path, "--target", "kubernetes"], "--measurement"),
    ]
    for (args, flag) in bad {
      let r = try veil(["deploy"] + args + ["--out", dir.appendingPathComponent("bad").path])
      XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
      XCTAssertTrue(r.stderr.contains(flag), "\(args): \(r.stderr)")
    }
    // A malformed plan.json names the file and the field.
    try Data("{\"schemaVersion\": 1}".utf8).write(to: plan.appendingPathComponent("plan.json"))
    let malformed = try veil([
      "deploy", "--plan", plan.path, "--target", "triton", "--out", dir.appendingPathComponent("m").path,
    ])
    XCTAssertEqual(malformed.status, 64, malformed.stderr)
    XCTAssertTrue(malformed.stderr.contains("plan.json") && malformed.stderr.contains("'model'"), malformed.stderr)
  }
}
