import Foundation
import VeilGraph
import VeilTensor

/// The fuzzing harness's committed corpus (Fuzz/corpus/<target>/): seeds written by
/// `veil-fuzz seeds` (`seed-*`) and every input a fuzzer found that crashed, hung or allocated
/// too much (`regress-*`, kept after the fix). The module tests replay them through the same
/// decoders, so a regression fails the normal test suite, not only `make fuzz`.
public enum FuzzCorpus {
  public static let root: URL = {
    var d = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { d = d.deletingLastPathComponent() }
    return d.appendingPathComponent("Fuzz/corpus")
  }()

  /// The files of one target's corpus, sorted by name. An empty or missing folder is an
  /// error: a replay of nothing would pass without checking anything.
  public static func files(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
    let folder = root.appendingPathComponent(target)
    let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { !$0.hasPrefix(".") }.sorted()
    guard !names.isEmpty else {
      throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: folder.path])
    }
    return try names.map { ($0, Array(try Data(contentsOf: folder.appendingPathComponent($0)))) }
  }
}

/// The model the `kserve-request` fuzz target decodes requests for (input `features`
/// 1×3×8×8, output `flat` 1×4), shared with the test that replays that target's corpus.
public enum FuzzServingModel {
  public static func graph() -> Graph {
    var rng = SeededGenerator(seed: 1)
    var g = Graph(name: "tiny")
    let x = g.addInput(name: "features", shape: [1, 3, 8, 8])
    var v = g.conv(
      x, weight: .randomNormal(shape: [4, 3, 3, 3], std: 0.3, generator: &rng), bias: .randomNormal(shape: [4], generator: &rng),
      .square(3), name: "conv")
    v = g.globalAveragePool(v, name: "pool")
    v = g.flatten(v, name: "flat")
    g.outputs = [v]
    return g
  }
}
