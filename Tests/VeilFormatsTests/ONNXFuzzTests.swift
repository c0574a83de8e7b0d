import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport

/// Thousands of mutated models through the reader: every case must end in a thrown error or a
/// valid graph (which must then compile and run or throw), never a crash or a hang.
final class ONNXFuzzTests: XCTestCase {
  /// Real architecture graphs shipped in the onnx wheel of the project's .venv.
  static func shippedModels() -> [[UInt8]] {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
    let lib = root.appendingPathComponent(".venv/lib")
    guard let py = try? FileManager.default.contentsOfDirectory(atPath: lib.path).first(where: { $0.hasPrefix("python") })
    else { return [] }
    let dir = lib.appendingPathComponent("\(py)/site-packages/onnx/backend/test/data/light")
    // The small ones: a mutated model that loads is also compiled and run.
    return ["light_squeezenet.onnx", "light_shufflenet.onnx"].compactMap {
      try? Array(Data(contentsOf: dir.appendingPathComponent($0)))
    }
  }

  func mutate(_ bytes: [UInt8], _ rng: inout SeededGenerator) -> [UInt8] {
    var b = bytes
    let edits = 1 + Int(rng.next() % 4)
    for _ in 0..<edits {
      guard !b.isEmpty else { break }
      let i = Int(rng.next() % UInt64(b.count))
      switch rng.next() % 6 {
      case 0: b[i] ^= UInt8(1 << (rng.next() % 8))
      case 1: b[i] = UInt8(truncatingIfNeeded: rng.next())
      case 2: b.removeSubrange(i..<min(b.count, i + 1 + Int(rng.next() % 16)))
      case 3: b.insert(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF, 0x0F], at: i)  // a huge varint
      case 4: b = Array(b.prefix(i))
      default: b[i] = [0x00, 0x7F, 0x80, 0xFF][Int(rng.next() % 4)]
      }
    }
    return b
  }

  /// The seeds of the op table's corners import, compile and run as they are: a seed that
  /// stopped importing would leave its corner unfuzzed without a word.
  func testOpCornerSeedsImportCompileAndRun() throws {
    for (name, bytes) in ONNXSeeds.opCorners() {
      let g = try ONNXReader.parse(bytes)
      let inputs = g.inputs.map { g.shape($0) ?? [] }
      var rng = SeededGenerator(seed: 5)
      let outputs = try Executor(graph: g).run(inputs.map { Tensor.randomNormal(shape: $0, generator: &rng) })
      XCTAssertEqual(outputs.count, 1, name)
      XCTAssertTrue(outputs.allSatisfy { $0.scalars.allSatisfy(\.isFinite) }, name)
    }
  }

  func testMutatedModelsThrowOrLoad() throws {
    let shipped = Self.shippedModels()
    XCTAssertFalse(shipped.isEmpty, "the onnx wheel's light_*.onnx files were not found in .venv")
    let corpus = [try ONNXSeeds.convNet(), ONNXSeeds.shapeFolding()] + ONNXSeeds.opCorners().map(\.bytes) + shipped
    var rng = SeededGenerator(seed: 2026)
    var loaded = 0
    var ran = 0
    var thrown = 0
    let cases = 20000
    for k in 0..<cases {
      let m = mutate(corpus[k % corpus.count], &rng)
      do {
        let g = try ONNXReader.parse(m)
        loaded += 1
        // A graph that loads must compile and run, or refuse with an error.
        let inputs = g.inputs.map { g.shape($0) ?? [] }
        guard inputs.allSatisfy({ $0.reduce(1, *) <= 1 << 20 }), g.totalFlops < 2_000_000_000 else { continue }
        do {
          let e = try Executor(graph: g)
          _ = try e.run(inputs.map { Tensor(zeros: $0) })
          ran += 1
        } catch {}
      } catch {
        thrown += 1
        XCTAssertFalse("\(error)".isEmpty)
        // The survey (`veil inspect`) goes on past what the import refused: it must not trap.
        if k % 4 == 0 { _ = try? ONNXReader.survey(m) }
      }
    }
    XCTAssertEqual(loaded + thrown, cases)
    XCTAssertGreaterThan(thrown, cases / 2, "most mutations should be refused")
    print("fuzz: \(cases) mutated models: \(thrown) refused, \(loaded) loaded, \(ran) of those compiled and ran")
  }
}
