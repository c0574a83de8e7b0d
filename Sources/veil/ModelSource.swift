import ArgumentParser
import Foundation
import VeilGraph
import VeilModels

/// The library's `ModelLoader`, with its errors as the command line shows them.
enum ModelSource {
  static func load(_ spec: String, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    do { return try ModelLoader.load(spec, batch: batch, seed: seed) } catch let e as ModelLoadError { throw ValidationError("\(e)") }
  }

  static func check(_ spec: String) throws {
    do { try ModelLoader.check(spec) } catch let e as ModelLoadError { throw ValidationError("\(e)") }
  }

  static func inputShape(_ g: Graph) -> [Int] { ModelLoader.inputShape(g) }
}
