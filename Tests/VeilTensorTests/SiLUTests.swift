import CDNNL
import Foundation
import VeilTensor
import XCTest

/// Veil's SiLU kernel (silu.c), which replaced oneDNN's swish: each instruction set's path
/// against x / (1 + e^−x) in double precision, over lengths that leave partial vectors, values
/// from deep in both tails to the middle, and the special values.
final class SiLUTests: XCTestCase {
  private func exact(_ x: Float) -> Double { Double(x) / (1 + Foundation.exp(-Double(x))) }

  private func values(_ n: Int) -> [Float] {
    var g = SeededGenerator(seed: UInt64(n))
    return (0..<n).map { i in
      switch i % 7 {
      case 0: Float.random(in: -120...120, using: &g)
      case 1: Float.random(in: -1e-3...1e-3, using: &g)
      default: Float.random(in: -12...12, using: &g)
      }
    }
  }

  private func check(_ x: [Float], isa: Int32?, file: StaticString = #filePath, line: UInt = #line) {
    var y = [Float](repeating: .nan, count: x.count)
    x.withUnsafeBufferPointer { src in
      y.withUnsafeMutableBufferPointer { dst in
        if let isa {
          veil_silu_f32_with(dst.baseAddress, src.baseAddress, Int64(x.count), isa)
        } else {
          veil_silu_f32(dst.baseAddress, src.baseAddress, Int64(x.count))
        }
      }
    }
    var worst = (error: 0.0, at: 0)
    for i in x.indices {
      let want = exact(x[i])
      // Relative to the value, or absolute where the value is tiny (the far negative tail).
      let error = abs(Double(y[i]) - want) / max(abs(want), 1e-6)
      if !(error <= worst.error) { worst = (error, i) }
    }
    XCTAssertLessThan(
      worst.error, 1e-6, "isa \(isa.map(String.init) ?? "team"), n \(x.count): SiLU(\(x[worst.at])) = \(y[worst.at]), exact \(exact(x[worst.at]))",
      file: file, line: line)
  }

  func testEachPathMatchesDoublePrecision() {
    for n in [1, 15, 17, 33, 1000, 20_011] {
      let x = values(n)
      check(x, isa: 1)
      check(x, isa: 2)
      check(x, isa: 0)
      check(x, isa: nil)
    }
  }

  /// In place (dst == src), and split across the team above the size where it wakes the team.
  func testInPlaceAcrossTheTeam() {
    let x = values(100_003)
    var y = x
    y.withUnsafeMutableBufferPointer { veil_silu_f32($0.baseAddress, $0.baseAddress, Int64(x.count)) }
    let worst = x.indices.map { abs(Double(y[$0]) - exact(x[$0])) / max(abs(exact(x[$0])), 1e-6) }.max() ?? 0
    XCTAssertLessThan(worst, 1e-6)
  }

  func testSpecialValues() {
    let x: [Float] = [0, -0.0, .infinity, .nan, 88.8, -88.8, 1e-30, -1e-30, .greatestFiniteMagnitude]
    for isa: Int32 in [1, 2] {
      var y = [Float](repeating: 7, count: x.count)
      x.withUnsafeBufferPointer { src in
        y.withUnsafeMutableBufferPointer { veil_silu_f32_with($0.baseAddress, src.baseAddress, Int64(x.count), isa) }
      }
      XCTAssertEqual(y[0], 0, "isa \(isa)")
      XCTAssertEqual(y[2], .infinity, "isa \(isa)")
      XCTAssertTrue(y[3].isNaN, "NaN stays NaN, isa \(isa)")
      XCTAssertEqual(Double(y[4]), 88.8, accuracy: 1e-4, "isa \(isa)")
      XCTAssertEqual(Double(y[5]), 0, accuracy: 1e-30, "isa \(isa)")
      XCTAssertEqual(y[8], .greatestFiniteMagnitude, "isa \(isa)")
    }
  }
}
