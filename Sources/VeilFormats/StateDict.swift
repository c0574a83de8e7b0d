import Foundation
import VeilGraph
import VeilTensor

/// What `StateDict.load` did: which weights were taken, which graph initializers got none,
/// which weights had no initializer, and which had the wrong shape.
public struct StateDictReport: CustomStringConvertible, Sendable, Equatable {
  public struct ShapeMismatch: Sendable, Equatable {
    public var name: String
    public var expected: [Int]
    public var found: [Int]

    public init(name: String, expected: [Int], found: [Int]) {
      self.name = name
      self.expected = expected
      self.found = found
    }
  }

  /// Initializers replaced by a weight.
  public var loaded: [String] = []
  /// Graph initializers no weight named.
  public var missing: [String] = []
  /// Weights that name no graph initializer (`num_batches_tracked` is ignored, never listed).
  public var unexpected: [String] = []
  /// Weights whose shape differs from their initializer's. When any exist the graph is unchanged.
  public var shapeMismatches: [ShapeMismatch] = []

  /// True when every initializer was loaded and every weight was used.
  public var isComplete: Bool { missing.isEmpty && unexpected.isEmpty && shapeMismatches.isEmpty }

  public var description: String {
    var lines = ["state_dict: \(loaded.count) loaded, \(missing.count) missing, \(unexpected.count) unexpected, \(shapeMismatches.count) shape mismatch(es)"]
    for m in shapeMismatches { lines.append("  shape mismatch '\(m.name)': graph \(m.expected), weights \(m.found)") }
    if !shapeMismatches.isEmpty { lines.append("  nothing was loaded because of the shape mismatches") }
    for m in missing { lines.append("  missing '\(m)'") }
    for u in unexpected { lines.append("  unexpected '\(u)'") }
    return lines.joined(separator: "\n")
  }
}

/// Loading named weights (a PyTorch state_dict, safetensors) into a graph's initializers.
public enum StateDict {
  /// Replaces each initializer whose value name is a key of `weights`. Keys ending in
  /// `num_batches_tracked` are ignored, and so are initializers named with a '/' (constants of
  /// the computation, which no state_dict key names) when missing. If any shape differs the graph is left unmodified and
  /// the report lists the mismatches.
  public static func load(_ weights: [String: Tensor], into graph: inout Graph) -> StateDictReport {
    var report = StateDictReport()
    var byName: [String: ValueID] = [:]
    for v in graph.initializers.keys.sorted() { byName[graph[v].name] = v }
    var updates: [(ValueID, Tensor)] = []
    for name in weights.keys.sorted() {
      if name.hasSuffix("num_batches_tracked") { continue }
      let t = weights[name]!
      guard let v = byName[name] else {
        report.unexpected.append(name)
        continue
      }
      let expected = graph.initializers[v]!.shape
      if expected != t.shape {
        report.shapeMismatches.append(.init(name: name, expected: expected, found: t.shape))
      } else {
        updates.append((v, t))
        report.loaded.append(name)
      }
    }
    report.missing = byName.keys.filter { weights[$0] == nil && !$0.contains("/") }.sorted()
    if report.shapeMismatches.isEmpty {
      for (v, t) in updates { graph.initializers[v] = t }
    } else {
      report.loaded = []
    }
    return report
  }
}
