import Foundation

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
