import Foundation
import XCTest

import VeilGraph
import VeilTensor
import VeilTestSupport

/// Executor behaviour that needs no reference runtime: memory planning, in-place reuse,
/// errors. Numerical agreement with ONNX Runtime is in OpTests.
final class ExecutorTests: XCTestCase {
  /// A direct convolution in plain loops, for a hand check of the oneDNN path.
  func naiveConv(_ x: Tensor, _ w: Tensor, _ b: Tensor, pad: Int) -> Tensor {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (o, k) = (w.shape[0], w.shape[2])
    let oh = h + 2 * pad - k + 1
    let ow = wd + 2 * pad - k + 1
    return Tensor(shape: [n, o, oh, ow]) { out in
      let xp = x.storage.pointer
      let wp = w.storage.pointer
      for ni in 0..<n {
        for oi in 0..<o {
          for y in 0..<oh {
            for xx in 0..<ow {
              var s = b.storage.pointer[oi]
              for ci in 0..<c {
                for ky in 0..<k {
                  for kx in 0..<k {
                    let iy = y + ky - pad
                    let ix = xx + kx - pad
                    if iy < 0 || iy >= h || ix < 0 || ix >= wd { continue }
                    s += xp[((ni * c + ci) * h + iy) * wd + ix] * wp[((oi * c + ci) * k + ky) * k + kx]
                  }
                }
              }
              out[((ni * o + oi) * oh + y) * ow + xx] = s
            }
          }
        }
      }
    }
  }

  func testConvReluMatchesNaiveLoops() throws {
    var rng = SeededGenerator(seed: 1)
    let x = Tensor.randomNormal(shape: [2, 5, 9, 9], generator: &rng)
    let w = Tensor.randomNormal(shape: [16, 5, 3, 3], std: 0.3, generator: &rng)
    let b = Tensor.randomNormal(shape: [16], generator: &rng)
    var g = Graph(name: "t")
    let i = g.addInput(name: "x", shape: x.shape)
    let c = g.conv(i, weight: w, bias: b, .square(3), name: "conv")
    g.outputs = [g.activation(c, .relu, name: "relu")]
    let y = try Executor(graph: g).run([x])[0]
    let ref = naiveConv(x, w, b, pad: 1).scalars.map { max($0, 0) }
    XCTAssertEqual(y.shape, [2, 16, 9, 9])
    let err = zip(y.scalars, ref).map { abs($0 - $1) }.max() ?? 1
    XCTAssertLessThan(err, 1e-4)
  }

  /// Steps too small to pay for waking the backend's other threads run on the calling thread
  /// alone, and compute the same: a tiny ReLU is serial, a 0.2-GFLOP convolution is not.
  func testSmallStepsRunSeriallyAndAgree() throws {
    var rng = SeededGenerator(seed: 4)
    var g = Graph(name: "t")
    let x = g.addInput(name: "x", shape: [1, 64, 56, 56])
    let c = g.conv(x, weight: Tensor.randomNormal(shape: [64, 64, 3, 3], std: 0.05, generator: &rng), bias: nil, .square(3), name: "big")
    let p = g.globalAveragePool(c, name: "gap")
    g.outputs = [g.activation(p, .tanh, name: "tiny")]
    let input = Tensor.randomNormal(shape: [1, 64, 56, 56], generator: &rng)
    // The threshold of a team that waits passively (Veil's servers).
    let dnnl = try Executor(graph: g, backend: DNNLBackend(serialStepNanoseconds: 40_000))
    XCTAssertGreaterThanOrEqual(dnnl.serialStepCount, 1, "the tanh on 64 values: \(dnnl.kernelNames)")
    XCTAssertLessThan(dnnl.serialStepCount, dnnl.stepCount, "the convolution: \(dnnl.kernelNames)")
    let reference = try Executor(graph: g, backend: ReferenceBackend())
    XCTAssertEqual(reference.serialStepCount, 0, "a backend without a thread team runs nothing serially")
    let team = try Executor(graph: g, backend: DNNLBackend(serialStepNanoseconds: 0))
    XCTAssertEqual(team.serialStepCount, 0, "a threshold of 0: every step on the team")
    XCTAssertLessThan(zip(try team.run([input])[0].scalars, try reference.run([input])[0].scalars).map { abs($0 - $1) }.max() ?? 1, 1e-4)
    let got = try dnnl.run([input])[0]
    let want = try reference.run([input])[0]
    XCTAssertLessThan(zip(got.scalars, want.scalars).map { abs($0 - $1) }.max() ?? 1, 1e-4)
    // Twice: a serial step leaves the team's size as it found it for the next run.
    XCTAssertEqual(try dnnl.run([input])[0].scalars, got.scalars)
  }

  /// A chain of convolutions reuses memory: the arena is far smaller than all activations.
  func testArenaReusesBuffersAlongAChain() throws {
    var rng = SeededGenerator(seed: 2)
    var g = Graph(name: "chain")
    var v = g.addInput(name: "x", shape: [1, 16, 32, 32])
    for i in 0..<8 {
      v = g.conv(v, weight: .randomNormal(shape: [16, 16, 3, 3], std: 0.1, generator: &rng), .square(3), name: "c\(i)")
      v = g.activation(v, .relu, name: "r\(i)")
    }
    g.outputs = [v]
    let e = try Executor(graph: g, options: .init(optimize: false))
    let one = 16 * 32 * 32 * 4
    XCTAssertGreaterThanOrEqual(e.unplannedActivationBytes, 9 * one)
    XCTAssertLessThanOrEqual(e.peakActivationBytes, 3 * one + 4096)
    // The same graph optimized fuses the ReLUs and still computes the same values.
    let x = Tensor.randomNormal(shape: [1, 16, 32, 32], generator: &rng)
    let a = try e.run([x])[0]
    let b = try Executor(graph: g).run([x])[0]
    XCTAssertEqual(a.shape, b.shape)
    XCTAssertLessThan(zip(a.scalars, b.scalars).map { abs($0 - $1) }.max()!, 1e-4)
  }

  func testWrongInputShapeIsAClearError() throws {
    var g = Graph(name: "t")
    let i = g.addInput(name: "image", shape: [1, 3, 8, 8])
    g.outputs = [g.activation(i, .relu, name: "r")]
    let e = try Executor(graph: g)
    XCTAssertThrowsError(try e.run([Tensor(zeros: [1, 3, 9, 8])])) { err in
      XCTAssertTrue("\(err)".contains("image") && "\(err)".contains("[1, 3, 8, 8]") && "\(err)".contains("[1, 3, 9, 8]"), "\(err)")
    }
    XCTAssertThrowsError(try e.run([])) { err in XCTAssertTrue("\(err)".contains("1 input"), "\(err)") }
  }

  func testCycleIsRejected() throws {
    var g = Graph(name: "cyc")
    let i = g.addInput(name: "x", shape: [1, 4])
    let a = g.addValue(name: "a")
    let b = g.addValue(name: "b")
    g.nodes.append(Node(name: "n1", op: .binary(.add), inputs: [i, b], outputs: [a]))
    g.nodes.append(Node(name: "n2", op: .activation(.relu), inputs: [a], outputs: [b]))
    g.outputs = [b]
    XCTAssertThrowsError(try Executor(graph: g)) { err in XCTAssertTrue("\(err)".contains("cycle"), "\(err)") }
  }

  func testRetainedValuesAreReadable() throws {
    var g = Graph(name: "t")
    let i = g.addInput(name: "x", shape: [1, 2, 4, 4])
    let r = g.activation(i, .relu, name: "mid")
    g.outputs = [g.activation(r, .sigmoid, name: "out")]
    let e = try Executor(graph: g, options: .init(retain: ["mid"]))
    var rng = SeededGenerator(seed: 3)
    let x = Tensor.randomNormal(shape: [1, 2, 4, 4], generator: &rng)
    let (outs, kept) = try e.runRetaining([x])
    XCTAssertEqual(kept["mid"]?.scalars, x.scalars.map { max($0, 0) })
    XCTAssertEqual(outs[0].shape, [1, 2, 4, 4])
    XCTAssertThrowsError(try Executor(graph: g, options: .init(retain: ["nope"])))
  }

  /// A channel split of a convolution's output reads the tensor in the layout the convolution
  /// wrote (channels-last, or channel blocks whose bounds the split falls on): two slices and a
  /// concat add no reorder to what the convolution alone needs. With blocks of 8 or 16 a
  /// split at 20 falls inside one and reads the plain layout instead; the numbers agree either
  /// way.
  /// ShuffleNet's Reshape → Transpose → Reshape becomes one channel shuffle in the
  /// convolutions' layout: no Transpose runs, and the unit needs no more reorders than the
  /// same graph without the shuffle; the values are the unfused graph's.
  func testChannelShuffleIsFusedAndRunsInTheConvolutionsLayout() throws {
    func graph(shuffled: Bool) -> Graph {
      var g = Graph(name: "unit")
      var r = SeededGenerator(seed: 8)
      let x = g.addInput(name: "x", shape: [1, 48, 6, 6])
      let a = g.conv(x, weight: .randomNormal(shape: [48, 48, 1, 1], std: 0.2, generator: &r), .square(1), name: "a")
      var s = a
      if shuffled {
        let v = g.addNode(.reshape(shape: [1, 2, 24, 6, 6]), name: "view", inputs: [a])[0]
        let t = g.addNode(.transpose(permutation: [0, 2, 1, 3, 4]), name: "swap", inputs: [v])[0]
        s = g.addNode(.reshape(shape: [1, 48, 6, 6]), name: "back", inputs: [t])[0]
      }
      let half = g.slice(s, SliceAttributes(starts: [24], ends: [48], axes: [1]), name: "half")
      g.outputs = [g.conv(half, weight: .randomNormal(shape: [16, 24, 1, 1], std: 0.2, generator: &r), .square(1), name: "b")]
      return g
    }
    var rng = SeededGenerator(seed: 9)
    let x = Tensor.randomNormal(shape: [1, 48, 6, 6], generator: &rng)
    let fused = try Executor(graph: graph(shuffled: true))
    let plain = try Executor(graph: graph(shuffled: true), options: ExecutorOptions(optimize: false))
    XCTAssertTrue(fused.kernelNames.contains { $0.contains("ChannelShuffle") }, "\(fused.kernelNames)")
    XCTAssertFalse(fused.kernelNames.contains { $0.contains("Transpose") }, "\(fused.kernelNames)")
    XCTAssertLessThanOrEqual(fused.reorderCount, try Executor(graph: graph(shuffled: false)).reorderCount)
    let (got, want) = (try fused.run([x])[0].scalars, try plain.run([x])[0].scalars)
    for (g, w) in zip(got, want) { XCTAssertEqual(g, w, accuracy: 1e-5) }
  }

  func testChannelSliceReadsTheConvolutionsLayout() throws {
    func graph(splitAt k: Int?) -> Graph {
      var g = Graph(name: "split")
      var r = SeededGenerator(seed: 4)
      let x = g.addInput(name: "x", shape: [1, 32, 6, 6])
      let c = g.conv(x, weight: .randomNormal(shape: [64, 32, 3, 3], std: 0.1, generator: &r), .square(3), name: "conv")
      guard let k else {
        g.outputs = [c]
        return g
      }
      let a = g.slice(c, SliceAttributes(starts: [0], ends: [k], axes: [1]), name: "a")
      let b = g.slice(c, SliceAttributes(starts: [k], ends: [64], axes: [1]), name: "b")
      g.outputs = [g.concat([b, a], axis: 1, name: "swap")]
      return g
    }
    var rng = SeededGenerator(seed: 5)
    let x = Tensor.randomNormal(shape: [1, 32, 6, 6], generator: &rng)
    let conv = try Executor(graph: graph(splitAt: nil))
    let whole = try conv.run([x])[0].scalars
    for k in [32, 20] {
      let e = try Executor(graph: graph(splitAt: k))
      if k == 32 { XCTAssertEqual(e.reorderCount, conv.reorderCount, "\(e.kernelNames)") }
      // Channels k..<64, then 0..<k, of the convolution's output: 36 elements a channel.
      XCTAssertEqual(try e.run([x])[0].scalars, Array(whole[(k * 36)...] + whole[..<(k * 36)]), "split at \(k)")
    }
  }

  /// A tensor of more dimensions than the backend holds (found by the onnx fuzz target: a file
  /// declaring an input of rank 35, then an Add) is refused at compile time, naming the node;
  /// oneDNN's descriptor code wrote the rank's strides past a stack array of 12 before. Rank 12
  /// still runs, on both backends.
  func testTensorsBeyondTheBackendsRankAreRefusedByNode() throws {
    for backend in [DNNLBackend.shared, ReferenceBackend()] as [any ComputeBackend] {
      for rank in [12, 13, 35] {
        var g = Graph(name: "deep")
        let shape = [Int](repeating: 1, count: rank - 1) + [6]
        let x = g.addInput(name: "x", shape: shape)
        g.outputs = [g.add(x, x, name: "twice")]
        if rank <= backend.maxRank {
          let y = try Executor(graph: g, backend: backend).run([Tensor(shape: shape, values: (0..<6).map { Float($0) })])[0]
          XCTAssertEqual(y.scalars, (0..<6).map { 2 * Float($0) }, backend.name)
        } else {
          let m = message { try Executor(graph: g, backend: backend) }
          for word in ["twice", "rank \(rank)", "at most 12 dimensions"] { XCTAssertTrue(m.contains(word), "\(backend.name): \(m)") }
        }
      }
    }
  }

  /// Shapes that attributes or a batch size blow up are refused at the node that makes them,
  /// before anything is allocated: a Conv padded by 30,000 a side (14.4 G elements from an
  /// 8 × 8 input), a ConvTranspose striding 60,000, a batch of a million through a small conv.
  func testInferredShapesBeyondOneTensorAreRefusedByNode() throws {
    var rng = SeededGenerator(seed: 4)
    let w = Tensor.randomNormal(shape: [4, 3, 3, 3], std: 0.1, generator: &rng)
    var padded = Graph(name: "padded")
    let x = padded.addInput(name: "x", shape: [1, 3, 8, 8])
    var a = ConvAttributes.square(3)
    a.padsBegin = [30_000, 30_000]
    a.padsEnd = [30_000, 30_000]
    padded.outputs = [padded.conv(x, weight: w, a, name: "wide")]
    let m1 = message { try Executor(graph: padded) }
    for word in ["wide", "[1, 4, 60006, 60006]", "\(Graph.maxTensorElements) elements"] { XCTAssertTrue(m1.contains(word), m1) }

    var strided = Graph(name: "strided")
    let y = strided.addInput(name: "x", shape: [1, 4, 8, 8])
    strided.outputs = [
      strided.convTranspose(
        y, weight: .randomNormal(shape: [4, 3, 3, 3], std: 0.1, generator: &rng), .square(3, stride: 60_000), name: "up")
    ]
    let m2 = message { try Executor(graph: strided) }
    XCTAssertTrue(m2.contains("up") && m2.contains("elements"), m2)

    var small = Graph(name: "small")
    let z = small.addInput(name: "x", shape: [1, 3, 64, 64])
    small.outputs = [small.conv(z, weight: w, .square(3, padding: 1), name: "c")]
    let m3 = message { try small.withBatch(1_000_000) }
    XCTAssertTrue(m3.contains("'c'") && m3.contains("[1000000, 4, 64, 64]"), m3)
    // The same graph at a sane batch is fine.
    let two = try small.withBatch(2)
    XCTAssertEqual(two.outputs.map { two[$0].shape }, [[2, 4, 64, 64]])
  }

  /// Activations alive at once that exceed the machine's memory are refused when the executor
  /// is made, with the size and the input: each tensor within its bound, together beyond it.
  func testActivationsBeyondTheMachinesMemoryAreRefused() throws {
    // Activations of the most elements one tensor may hold, enough of them alive at once to
    // exceed the machine whatever its memory.
    let elements = Graph.maxTensorElements
    let live = Int(ProcessInfo.processInfo.physicalMemory / UInt64(elements * 4)) + 2
    var g = Graph(name: "wide")
    let x = g.addInput(name: "x", shape: [1, elements])
    let kinds: [Activation] = [.relu, .sigmoid, .tanh, .hardSwish, .silu, .sqrt, .gelu(tanh: false), .gelu(tanh: true)]
    let branches = (0..<live).map { g.activation(x, kinds[$0 % kinds.count], name: "a\($0)") }
    var sum = branches[0]
    for (i, b) in branches.enumerated().dropFirst() { sum = g.add(sum, b, name: "s\(i)") }
    g.outputs = [sum]
    let m = message { try Executor(graph: g) }
    XCTAssertTrue(m.contains("activation memory") && m.contains("GiB") && m.contains("smaller batch"), m)
  }
}
