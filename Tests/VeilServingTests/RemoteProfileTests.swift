import Foundation
import XCTest

/// `veil profile --accelerator HOST:PORT` against `veil accelerator serve --every-cut`: the
/// tails run in the other process and their round trips replace the modeled wire.
final class RemoteProfileTests: XCTestCase {
  func testProfileTimesEveryTailOnTheAcceleratorProcess() throws {
    let server = try Spawned.start(["accelerator", "serve", "--every-cut", "mobilenet_v2", "--port", "0"])
    defer { server.stop() }
    let port = try server.waitForPort(after: "GRPCInferenceService on ")
    XCTAssertTrue(server.stderr.contains("mobilenet_v2.features.7"), server.stderr)

    let r = try Spawned.run(["profile", "--model", "mobilenet_v2", "--runs", "1", "--accelerator", "127.0.0.1:\(port)", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    XCTAssertTrue((report["accelerator"] as? String ?? "").contains("remote: KServe v2 server at 127.0.0.1:\(port)"), "\(report["accelerator"] ?? "")")
    XCTAssertFalse((report["modeled"] as? [String] ?? ["?"]).contains("transferWireMs"))
    let cuts = try XCTUnwrap(report["cuts"] as? [[String: Any]])
    XCTAssertEqual(cuts.count, 20)
    for c in cuts {
      XCTAssertGreaterThan(c["tailMs"] as? Double ?? 0, 0)
      XCTAssertEqual(c["transferWireMs"] as? Double, 0)
    }

    // Another model's tails are not there: the message says how to start the server for it.
    let other = try Spawned.run(["profile", "--model", "resnet50", "--runs", "1", "--accelerator", "127.0.0.1:\(port)"])
    XCTAssertNotEqual(other.status, 0)
    XCTAssertTrue(other.stderr.contains("serves no model 'resnet50.stem'") && other.stderr.contains("--every-cut resnet50"), other.stderr)
  }

  func testNoServerThereIsAnErrorNamingTheEndpoint() throws {
    let r = try Spawned.run(["profile", "--model", "mobilenet_v2", "--runs", "1", "--accelerator", "127.0.0.1:1"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("127.0.0.1:1") && r.stderr.contains("UNAVAILABLE"), r.stderr)
  }
}
