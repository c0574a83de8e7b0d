import Foundation
import VeilGraph
import VeilTensor
import XCTest

final class DefenceTests: XCTestCase {
  func testSpecsParseRoundTripAndOutOfRangeIsRefusedWithTheRange() throws {
    for (text, spec) in [("gaussian:0.5", "gaussian:0.5"), ("noise:2", "gaussian:2"), ("laplace:1", "laplace:1"), ("quant:4", "quant:4"), ("prune:0.75", "prune:0.75")] {
      let d = try CutDefence(parsing: text)
      XCTAssertEqual(d.spec, spec)
      XCTAssertEqual(try CutDefence(parsing: d.spec), d)
    }
    let refused: [(String, String)] = [
      ("gaussian:-1", "0…100"), ("laplace:nan", "0…100"), ("quant:1", "2…16"), ("quant:17", "2…16"), ("quant:4.5", "whole number"),
      ("prune:1", "[0, 1)"), ("prune:-0.1", "[0, 1)"), ("blur:3", "unknown defence"), ("gaussian", "KIND:VALUE"),
    ]
    for (text, range) in refused {
      XCTAssertThrowsError(try CutDefence(parsing: text), text) { e in
        XCTAssertTrue("\(e)".contains(range), "\(text): \(e)")
        XCTAssertTrue("\(e)".contains(text), "names the spec: \(e)")
      }
    }
  }

  /// A map whose channel k has mean k and standard deviation k + 1 (NCHW, 8 images of 4×4).
  func map(channels: Int = 4, seed: UInt64 = 1) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor(shape: [8, channels, 4, 4]) { p in
      for i in 0..<p.count {
        let c = (i / 16) % channels
        p[i] = Float(c) + Float(c + 1) * g.nextNormal()
      }
    }
  }

  func testFittingMeasuresChannelScaleAndKeepsTheMostActiveChannels() throws {
    let x = map()
    let noise = try CutDefence.noise(1).fitted(to: x)
    let scale = try XCTUnwrap(noise.channelScale)
    for c in 0..<4 { XCTAssertEqual(Double(scale[c]), Double(c + 1), accuracy: 0.35 * Double(c + 1), "channel \(c)") }
    XCTAssertLessThan(scale[0], scale[3])
    let pruned = try CutDefence.pruning(0.5).fitted(to: x)
    XCTAssertEqual(pruned.keptChannels, [2, 3], "the two channels of largest mean magnitude")
    XCTAssertEqual(try CutDefence.pruning(0.9).fitted(to: x).keptChannels, [3], "at least one channel stays")
    XCTAssertThrowsError(try CutDefence.noise(1).apply(to: x, using: &SeededGeneratorBox.one)) { e in
      XCTAssertTrue("\(e)".contains("not fitted"), "\(e)")
    }
  }

  func moments(_ x: [Double]) -> (mean: Double, sd: Double, kurtosis: Double) {
    let n = Double(x.count)
    var sum = 0.0
    for v in x { sum += v }
    let mean = sum / n
    var m2 = 0.0
    var m4 = 0.0
    for v in x {
      let d = v - mean
      m2 += d * d
      m4 += d * d * d * d
    }
    m2 /= n
    m4 /= n
    return (mean, m2.squareRoot(), m4 / (m2 * m2))
  }

  func testNoiseHasTheStatedDeviationPerChannel() throws {
    let zeros = Tensor(zeros: [64, 2, 16, 16])
    for laplace in [false, true] {
      var d = CutDefence.noise(0.5, laplace: laplace)
      d.channelScale = [1, 4]
      var g = SeededGenerator(seed: 7)
      let y = try d.apply(to: zeros, using: &g)
      let v = y.scalars
      for c in 0..<2 {
        var values: [Double] = []
        for i in 0..<64 {
          for k in 0..<256 { values.append(Double(v[(i * 2 + c) * 256 + k])) }
        }
        let (mean, sd, kurtosis) = moments(values)
        XCTAssertEqual(mean, 0, accuracy: 0.05 * Double(c * 3 + 1), "laplace \(laplace) channel \(c)")
        XCTAssertEqual(sd, 0.5 * Double(c == 0 ? 1 : 4), accuracy: 0.03 * Double(c == 0 ? 1 : 4), "laplace \(laplace) channel \(c)")
        // Gaussian kurtosis 3, Laplace 6.
        XCTAssertEqual(kurtosis, laplace ? 6 : 3, accuracy: laplace ? 0.8 : 0.2, "laplace \(laplace) channel \(c)")
      }
      // Channels last: the same scales on axis 3.
      var h = SeededGenerator(seed: 7)
      let nhwc = try d.apply(to: Tensor(zeros: [64, 16, 16, 2]), channelAxis: 3, using: &h).scalars
      var c1: [Double] = []
      for k in stride(from: 1, to: nhwc.count, by: 2) { c1.append(Double(nhwc[k])) }
      let sd1 = moments(c1).sd
      XCTAssertEqual(sd1, 2, accuracy: 0.1)
    }
    var zero = CutDefence.noise(0)
    zero.channelScale = [1, 4]
    XCTAssertEqual(try zero.apply(to: map(channels: 2), using: &SeededGeneratorBox.one).scalars, map(channels: 2).scalars, "σ = 0 changes nothing")
  }

  func testQuantisationKeepsTwoToTheBitsLevelsPerImageAndChannel() throws {
    let x = map()
    for bits in [2, 4, 8] {
      let y = try CutDefence.quantisation(bits: bits).apply(to: x, using: &SeededGeneratorBox.one)
      let (a, b) = (x.scalars, y.scalars)
      for i in 0..<8 {
        for c in 0..<4 {
          let range = (0..<16).map { (i * 4 + c) * 16 + $0 }
          let levels = Set(range.map { b[$0] })
          XCTAssertLessThanOrEqual(levels.count, 1 << bits)
          let low = range.map { a[$0] }.min()!
          let high = range.map { a[$0] }.max()!
          let step = (high - low) / Float((1 << bits) - 1)
          for k in range { XCTAssertLessThanOrEqual(abs(a[k] - b[k]), step / 2 + 1e-5) }
          XCTAssertEqual(range.map { b[$0] }.min()!, low, accuracy: 1e-5, "the minimum is a level")
        }
      }
    }
    XCTAssertEqual(CutDefence.quantisation(bits: 4).encodedBytes(shape: [1, 40, 28, 28]), 40 * 28 * 28 + 40 * 8)
    XCTAssertEqual(CutDefence.quantisation(bits: 12).encodedBytes(shape: [1, 40, 28, 28]), 40 * 28 * 28 * 2 + 40 * 8)
    XCTAssertEqual(CutDefence.pruning(0.5).encodedBytes(shape: [1, 40, 28, 28]), 40 * 28 * 28 * 4)
  }

  /// The encoded map (codes, minimum, step) is the quantised map, on either channel axis, in a
  /// byte a value up to 8 bits and two above; nothing else is encoded.
  func testTheEncodedMapIsTheQuantisedMap() throws {
    let x = map()
    for (bits, axis) in [(4, 1), (8, 3), (12, 1)] {
      let q = CutDefence.quantisation(bits: bits)
      let e = try q.encode(x, channelAxis: axis)
      XCTAssertEqual(e.type, bits <= 8 ? .uint8 : .uint16)
      XCTAssertEqual(e.low.shape, axis == 1 ? [8, 4, 1, 1] : [8, 1, 1, 4])
      let codes = e.codes.scalars
      XCTAssertTrue(codes.allSatisfy { $0 == $0.rounded() && $0 >= 0 && $0 <= Float((1 << bits) - 1) })
      XCTAssertTrue(codes.contains(0) && codes.contains(Float((1 << bits) - 1)), "each block's minimum and maximum are the end codes")
      let (low, step) = (e.low.scalars, e.step.scalars)
      let inner = axis == 1 ? 16 : 1
      let expected = try q.apply(to: x, channelAxis: axis, using: &SeededGeneratorBox.one).scalars
      for k in 0..<codes.count {
        let j = (k / 64) * 4 + (k / inner) % 4
        XCTAssertEqual(codes[k] * step[j] + low[j], expected[k], "value \(k), \(bits) bits, axis \(axis)")
      }
      XCTAssertEqual(e.wireBytes, x.count * e.type.bytes + 2 * 8 * 4 * 4)
    }
    XCTAssertThrowsError(try CutDefence.noise(1).encode(x)) { XCTAssertTrue("\($0)".contains("only quantisation"), "\($0)") }
    var bad = x
    bad.withUnsafeMutableBuffer { $0[5] = .nan }
    XCTAssertThrowsError(try CutDefence.quantisation(bits: 4).encode(bad)) { XCTAssertTrue("\($0)".contains("not finite"), "\($0)") }
  }

  func testPruningZeroesExactlyTheOtherChannelsOnEitherAxis() throws {
    let x = map()
    let d = try CutDefence.pruning(0.5).fitted(to: x)
    let y = try d.apply(to: x, using: &SeededGeneratorBox.one).scalars
    let a = x.scalars
    for k in 0..<a.count {
      let c = (k / 16) % 4
      XCTAssertEqual(y[k], [2, 3].contains(c) ? a[k] : 0)
    }
    let nhwc = Tensor(shape: [1, 2, 2, 4]) { p in for i in 0..<p.count { p[i] = Float(i + 1) } }
    let z = try d.apply(to: nhwc, channelAxis: 3, using: &SeededGeneratorBox.one).scalars
    for k in 0..<16 { XCTAssertEqual(z[k], k % 4 >= 2 ? Float(k + 1) : 0) }
    XCTAssertEqual(d.encodedBytes(shape: [1, 4, 4, 4]), 4 * 16 * 4, "pruned channels travel as zeros")
    // A map with other channels than the fit is refused, not indexed out of range.
    XCTAssertThrowsError(try d.apply(to: Tensor(zeros: [1, 2, 4, 4]), using: &SeededGeneratorBox.one)) { e in
      XCTAssertTrue("\(e)".contains("0..<2"), "\(e)")
    }
  }
}

/// A seeded generator the tests can pass inout without declaring one each time.
enum SeededGeneratorBox {
  nonisolated(unsafe) static var one = SeededGenerator(seed: 1)
}

final class PrivateOutputSplitTests: XCTestCase {
  /// Two convolutions, pooling and a classifier: the last layer with weights is the classifier.
  func model() -> Graph {
    var rng = SeededGenerator(seed: 4)
    var g = Graph(name: "classifier")
    var v = g.addInput(name: "x", shape: [1, 3, 16, 16])
    v = g.activation(g.conv(v, weight: .randomNormal(shape: [4, 3, 3, 3], generator: &rng), .square(3), name: "conv0"), .relu, name: "relu0")
    v = g.activation(g.conv(v, weight: .randomNormal(shape: [6, 4, 3, 3], generator: &rng), .square(3), name: "conv1"), .relu, name: "relu1")
    v = g.globalAveragePool(v, name: "pool")
    v = g.flatten(v, name: "flatten")
    v = g.linear(v, weight: .randomNormal(shape: [5, 6], generator: &rng), bias: Tensor(zeros: [5]), name: "fc")
    g.outputs = [v]
    return g
  }

  func testThreePartsRunInTurnGiveTheWholeModel() throws {
    let g = model()
    let last = try g.lastLayerCut()
    XCTAssertEqual(last.name, "flatten", "only the classifier stays after it")
    let cut = try g.cut(named: "relu0", all: true)
    let (head, middle, output) = try g.split(at: cut, outputAt: last)
    XCTAssertEqual(output.nodes.map(\.name), ["fc"])
    var rng = SeededGenerator(seed: 9)
    let x = Tensor.randomNormal(shape: [1, 3, 16, 16], generator: &rng)
    let whole = try Executor(graph: g).run([x])[0].scalars
    let h = try Executor(graph: head).run([x])[0]
    let m = try Executor(graph: middle).run([h])[0]
    XCTAssertEqual(m.shape, [1, 6])
    let y = try Executor(graph: output).run([m])[0].scalars
    for (a, b) in zip(y, whole) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    XCTAssertThrowsError(try g.split(at: last, outputAt: cut)) { e in XCTAssertTrue("\(e)".contains("not deeper"), "\(e)") }
  }

  /// The accelerator's tail for an encoded map: three inputs, the codes marked UINT8, and run on
  /// the encoded map it answers what the plain tail answers on the quantised map.
  func testTheDecodingTailAnswersAsTheTailOnTheQuantisedMap() throws {
    let g = model()
    let (head, tail) = try g.split(at: try g.cut(named: "relu0", all: true))
    let q = CutDefence.quantisation(bits: 4)
    let decoding = try q.decodingTail(tail)
    XCTAssertEqual(decoding.inputs.map { decoding[$0].name }, ["relu0_codes", "relu0_low", "relu0_step"])
    XCTAssertEqual(try WireIntegerType.of(input: "relu0_codes", in: decoding), .uint8)
    XCTAssertNil(try WireIntegerType.of(input: "relu0_low", in: decoding))
    var rng = SeededGenerator(seed: 3)
    let x = Tensor.randomNormal(shape: [1, 3, 16, 16], generator: &rng)
    let h = try Executor(graph: head).run([x])[0]
    let plain = try Executor(graph: tail).run([try q.apply(to: h, using: &SeededGeneratorBox.one)])[0].scalars
    let encoded = try Executor(graph: decoding).run(try q.encode(h).tensors)[0].scalars
    for (a, b) in zip(encoded, plain) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    XCTAssertThrowsError(try CutDefence.noise(0.1).decodingTail(tail))
  }
}
