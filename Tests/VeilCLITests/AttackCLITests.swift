import Foundation
import VeilData
import XCTest

/// `veil attack`, `veil privacy` and `veil attack-bench`: the errors a user meets first.
extension CLITests {
  func testAttackUnknownCutListsTheValidOnes() throws {
    let r = try veil(["attack", "--model", "mobilenet_v2", "--cut", "block9", "--data", "/nonexistent"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("cut 'block9'") && r.stderr.contains("Cut points: features."), r.stderr)
  }

  func testAttackRefusesAMissingOrTooSmallPhotoFolder() throws {
    let missing = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "/nonexistent/photos"])
    XCTAssertNotEqual(missing.status, 0)
    XCTAssertTrue(missing.stderr.contains("/nonexistent/photos") && missing.stderr.contains("no such folder"), missing.stderr)

    let dir = temp("one-photo")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    try ImageCodec.writePNG(ByteImage(width: 80, height: 80, channels: 3), to: dir.appendingPathComponent("a.png"))
    let one = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", dir.path, "--attacker", "inverse", "--pixel-measures-only"])
    XCTAssertNotEqual(one.status, 0)
    XCTAssertTrue(one.stderr.contains("1 photo(s) found") && one.stderr.contains("at least 2"), one.stderr)
  }

  func testAttackOptionsAreValidated() throws {
    let r = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--epochs", "0"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("epochs must be ≥ 1, found 0"), r.stderr)
    let b = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--batch", "1"])
    XCTAssertTrue(b.stderr.contains("batch must be ≥ 2"), b.stderr)
    let a = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--attacker", "gan"])
    XCTAssertNotEqual(a.status, 0)
    XCTAssertTrue(a.stderr.contains("cgan") && a.stderr.contains("inverse") && a.stderr.contains("optimisation") && a.stderr.contains("hybrid"), a.stderr)
    let from = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--attacker", "inverse", "--inverse-from", "out/inverse"])
    XCTAssertNotEqual(from.status, 0)
    XCTAssertTrue(from.stderr.contains("--inverse-from goes with --attacker hybrid or substitute-hybrid"), from.stderr)
    let substitute = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--attacker", "hybrid", "--substitute-from", "out/substitute"])
    XCTAssertNotEqual(substitute.status, 0)
    XCTAssertTrue(substitute.stderr.contains("--substitute-from goes with --attacker substitute-hybrid"), substitute.stderr)
    let empty = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--attacker", "hybrid", "--inverse-from", "/nonexistent/inverse"])
    XCTAssertNotEqual(empty.status, 0)
    XCTAssertTrue(empty.stderr.contains("--inverse-from /nonexistent/inverse: no checkpoint-g.safetensors there"), empty.stderr)
    let all = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--attacker", "cgan", "--test-fraction", "1"])
    XCTAssertNotEqual(all.status, 0)
    XCTAssertTrue(all.stderr.contains("only the optimisation attacker learns from nothing"), all.stderr)
    let tm = try veil(["attack", "--model", "mobilenet_v2", "--cut", "features.3", "--data", "x", "--threat-model", "grey-box"])
    XCTAssertNotEqual(tm.status, 0)
    XCTAssertTrue(tm.stderr.contains("white-box") && tm.stderr.contains("black-box"), tm.stderr)
  }

  func testPrivacyThresholdAndCutListAreChecked() throws {
    let t = try veil(["privacy", "--model", "mobilenet_v2", "--data", "x", "--threshold", "1.5"])
    XCTAssertNotEqual(t.status, 0)
    XCTAssertTrue(t.stderr.contains("the ssim threshold must be in (0, 1), found 1.5"), t.stderr)
    let r = try veil(["privacy", "--model", "mobilenet_v2", "--data", "x", "--recognition-threshold", "0"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("the recognition threshold must be in (0, 1), found 0"), r.stderr)
    let c = try veil(["privacy", "--model", "mobilenet_v2", "--data", "x", "--cuts", "features.3,nope"])
    XCTAssertNotEqual(c.status, 0)
    XCTAssertTrue(c.stderr.contains("--cuts") && c.stderr.contains("cut 'nope'"), c.stderr)
  }

  func testAttackBenchReportsThroughput() throws {
    let r = try veil([
      "attack-bench", "--feature-shape", "8x8x8", "--image-size", "16", "--batch", "4", "--steps", "2", "--warmup", "1",
      "--width", "4", "--discriminator-width", "4", "--json",
    ])
    XCTAssertEqual(r.status, 0, r.stderr)
    let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    XCTAssertGreaterThan(try XCTUnwrap(doc?["imagesPerSecond"] as? Double), 0)
    let bad = try veil(["attack-bench", "--feature-shape", "8x8"])
    XCTAssertTrue(bad.stderr.contains("expected C×h×w"), bad.stderr)
  }
}
