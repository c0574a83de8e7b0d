import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor

/// What PyTorch 2's torch.export-based exporter (opsets 18 to 21) writes for torchvision's
/// models that its TorchScript exporter did not: Einsum for MaxViT's attention, an `as_strided`
/// view as a Gather of a run of indices shaped like the result (ConvNeXt), ScatterND with its
/// default reduction written out (Swin), and Swin V2's position-bias MLP on a constant table
/// (MatMul, Relu, Sigmoid, Exp and GatherND, all folded). Each result is checked by running it.
extension ONNXReaderTests {
  /// B·A for [.., i, d] × [.., j, d] in plain loops: the reference for the Einsum cases.
  private func products(_ a: Tensor, _ b: Tensor, transposeB: Bool) -> [Float] {
    let (i, d) = (a.shape[a.shape.count - 2], a.shape[a.shape.count - 1])
    let j = transposeB ? b.shape[b.shape.count - 2] : b.shape[b.shape.count - 1]
    let batches = a.count / (i * d)
    var out: [Float] = []
    for n in 0..<batches {
      for r in 0..<i {
        for c in 0..<j {
          var s: Float = 0
          for k in 0..<d {
            s += a.scalars[n * i * d + r * d + k] * (transposeB ? b.scalars[n * j * d + c * d + k] : b.scalars[n * d * j + k * j + c])
          }
          out.append(s)
        }
      }
    }
    return out
  }

  func testEinsumThatIsAMatrixProductImportsAsMatMul() throws {
    var rng = SeededGenerator(seed: 5)
    let a = Tensor.randomNormal(shape: [1, 2, 3, 4], generator: &rng)
    let b = Tensor.randomNormal(shape: [1, 2, 5, 4], generator: &rng)
    let v = Tensor.randomNormal(shape: [1, 2, 5, 4], generator: &rng)
    func run(_ equation: String, _ second: (String, [Int?]), _ inputs: [Tensor]) throws -> (Graph, Tensor) {
      var m = HandModel()
      m.opset = 18
      m.inputs = [("a", inputs[0].shape), (second.0, second.1)]
      m.nodes = [("einsum", "Einsum", ["a", second.0], ["y"], [("equation", .string(equation))])]
      m.outputs = ["y"]
      let g = try ONNXReader.parse(m.bytes())
      return (g, try Executor(graph: g).run(inputs)[0])
    }
    // MaxViT's scores, with its spaces: A·Bᵀ, one Transpose of B and a MatMul.
    let (g, scores) = try run("b h i d, b h j d -> b h i j", ("b", [1, 2, 5, 4]), [a, b])
    XCTAssertEqual(g.nodes.map(\.op), [.transpose(permutation: [0, 1, 3, 2]), .matMul])
    XCTAssertEqual(scores.shape, [1, 2, 3, 5])
    let want = products(a, b, transposeB: true)
    for (x, y) in zip(scores.scalars, want) { XCTAssertEqual(x, y, accuracy: 1e-5) }
    // MaxViT's mix, already in order: one MatMul.
    let p = try run("bhij,bhjd->bhid", ("v", [1, 2, 5, 4]), [scores, v]).1
    XCTAssertEqual(p.shape, [1, 2, 3, 4])
    for (x, y) in zip(p.scalars, products(scores, v, transposeB: false)) { XCTAssertEqual(x, y, accuracy: 1e-4) }
    // An output in another order: the product, then a Transpose.
    let (gt, t) = try run("bhid,bhjd->bhji", ("b", [1, 2, 5, 4]), [a, b])
    XCTAssertEqual(gt.nodes.map(\.op).last, .transpose(permutation: [0, 1, 3, 2]))
    XCTAssertEqual(t.shape, [1, 2, 5, 3])
    XCTAssertEqual(t.scalars[0 * 3 + 1], want[1 * 5 + 0], accuracy: 1e-5)  // t[0,0,0,1] = scores[0,0,1,0]
    // What is not a matrix product is refused with the node and the equation.
    for bad in ["bhid,bhjd->bhi", "bhid,bhjd", "...id,...jd->...ij", "bhii,bhjd->bhij", "bhid,bhjd->bhijd"] {
      let text = message { try run(bad, ("b", [1, 2, 5, 4]), [a, b]) }
      XCTAssertTrue(text.contains("einsum") && text.contains("equation"), "\(bad): \(text)")
    }
  }

  /// ConvNeXt's flatten before its classifier: Gather of a [N·C] tensor at indices [N, C, 1, 1]
  /// that run 0, 1, …: a Slice and a Reshape. Indices that do not run in order are refused.
  func testGatherOfARunOfIndicesShapedLikeTheResult() throws {
    for (indices, taken) in [([Int64](0..<6), true), ([0, 1, 2, 3, 5, 4], false)] {
      var m = HandModel()
      m.opset = 18
      m.inputs = [("x", [1, 6])]
      m.int64s("flat", dims: [1], [-1])
      m.int64s("at", dims: [1, 6, 1, 1], indices)
      m.nodes = [
        ("flatten", "Reshape", ["x", "flat"], ["f"], []),
        ("as_strided", "Gather", ["f", "at"], ["y"], [("axis", .int(0))]),
      ]
      m.outputs = ["y"]
      guard taken else {
        XCTAssertTrue(message { try ONNXReader.parse(m.bytes()) }.contains("as_strided"))
        continue
      }
      let g = try ONNXReader.parse(m.bytes())
      let x = try Tensor(shape: [1, 6], values: [1, 2, 3, 4, 5, 6])
      let y = try Executor(graph: g).run([x])[0]
      XCTAssertEqual(y.shape, [1, 6, 1, 1])
      XCTAssertEqual(y.scalars, x.scalars)
    }
  }

  /// Swin V2's cosine attention normalises queries and keys: ReduceL2 over the last axis (its
  /// axes an input from opset 18), a Clip at ε, an Expand of the norms back to the tokens'
  /// shape, a Div. An Expand to a shape that does not broadcast is refused by name.
  func testNormalisationByReduceL2AndExpand() throws {
    for opset in [13, 18] {
      var m = HandModel()
      m.opset = opset
      m.inputs = [("x", [1, 2, 3, 4])]
      m.int64s("last", dims: [1], [-1])
      m.floats("eps", dims: [], [1e-12])
      m.int64s("tokens", dims: [4], [1, 2, 3, 4])
      m.nodes = [
        ("norm", "ReduceL2", opset >= 18 ? ["x", "last"] : ["x"], ["n"], opset >= 18 ? [] : [("axes", .ints([-1]))]),
        ("clamp", "Clip", ["n", "eps"], ["c"], []),
        ("expand", "Expand", ["c", "tokens"], ["e"], []),
        ("div", "Div", ["x", "e"], ["y"], []),
      ]
      m.outputs = ["y"]
      let g = try ONNXReader.parse(m.bytes())
      var rng = SeededGenerator(seed: 9)
      let x = Tensor.randomNormal(shape: [1, 2, 3, 4], generator: &rng)
      let y = try Executor(graph: g).run([x])[0]
      for row in 0..<6 {
        let v = Array(x.scalars[(row * 4)..<(row * 4 + 4)])
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        for k in 0..<4 { XCTAssertEqual(y.scalars[row * 4 + k], v[k] / norm, accuracy: 1e-6, "opset \(opset) row \(row)") }
      }
    }
    var m = HandModel()
    m.inputs = [("x", [1, 2, 3, 4])]
    m.int64s("wrong", dims: [2], [2, 5])
    m.nodes = [("expand", "Expand", ["x", "wrong"], ["y"], [])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    XCTAssertTrue(text.contains("expand") && text.contains("does not broadcast"), text)
    // Small ones (16), a result of 2^34 elements: refused before anything is made.
    var huge = HandModel()
    huge.inputs = [("x", [1, 1 << 15, 1 << 15])]
    huge.int64s("wide", dims: [3], [16, 1, 1])
    huge.nodes = [("expand", "Expand", ["x", "wide"], ["y"], [])]
    huge.outputs = ["y"]
    let refusal = message { try ONNXReader.parse(huge.bytes()) }
    XCTAssertTrue(refusal.contains("expand") && refusal.contains("expanding"), refusal)
  }

  /// The new folds refuse hostile operands by the node's name: a GatherND index past its axis,
  /// and a product of constants whose work (2^30 multiply-adds) exceeds the folded budget.
  func testGatherNDAndConstantProductRefuseHostileOperands() {
    refused([("pick", "GatherND", ["t", "i"], ["p"], [])], opset: 18, {
      $0.floats("t", dims: [3, 2], [1, 2, 3, 4, 5, 6]); $0.int64s("i", dims: [1, 1], [3])
    }, ["pick", "index 3 is out of range"])
    refused([("pick", "GatherND", ["t", "i"], ["p"], [])], opset: 18, {
      $0.floats("t", dims: [3, 2], [1, 2, 3, 4, 5, 6]); $0.int64s("i", dims: [1, 3], [0, 0, 0])
    }, ["pick", "do not index"])
    let side = 1 << 10
    refused([("mlp", "MatMul", ["a", "b"], ["h"], [])], opset: 18, {
      $0.floats("a", dims: [side, side], [Float](repeating: 0.5, count: side * side))
      $0.floats("b", dims: [side, side], [Float](repeating: 0.5, count: side * side))
    }, ["mlp", "folded product"])
  }

  /// Swin V2's continuous position bias: an MLP on a constant coordinate table, picked by
  /// GatherND, squashed and scaled; and Swin's mask written by ScatterND with reduction "none".
  /// All of it folds into the Add's constant operand.
  func testPositionBiasMLPOnAConstantTableFolds() throws {
    var m = HandModel()
    m.opset = 18
    m.inputs = [("x", [1, 2, 3])]
    m.floats("table", dims: [2, 2], [1, -1, 0.5, 2])
    m.floats("w", dims: [2, 3], [1, 0, -1, 2, 1, 0])
    m.int64s("at", dims: [2, 1], [1, 0])
    m.floats("zeros", dims: [2, 3], [0, 0, 0, 0, 0, 0])
    m.int64s("cell", dims: [1, 2], [0, 2])
    m.floats("update", dims: [1], [1])
    m.floats("logit", dims: [], [0])
    m.int64s("shape", dims: [3], [1, 2, 3])
    m.nodes = [
      ("relu", "Relu", ["table"], ["r"], []),  // [[1, 0], [0.5, 2]]
      ("mlp", "MatMul", ["r", "w"], ["h"], []),  // [[1, 0, -1], [4.5, 2, -0.5]]
      ("pick", "GatherND", ["h", "at"], ["p"], []),  // rows swapped
      ("squash", "Sigmoid", ["p"], ["s"], []),
      ("scale", "Exp", ["logit"], ["one"], []),
      ("times", "Mul", ["s", "one"], ["bias0"], []),
      ("mask", "ScatterND", ["zeros", "cell", "update"], ["mk"], [("reduction", .string("none"))]),
      ("plus", "Add", ["bias0", "mk"], ["bias1"], []),
      ("reshape", "Reshape", ["bias1", "shape"], ["bias"], []),
      ("add", "Add", ["x", "bias"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.nodes.map(\.op), [.binary(.add)], "everything but the last Add folds")
    let y = try Executor(graph: g).run([Tensor(shape: [1, 2, 3], repeating: 0)])[0]
    let sigmoid = { (v: Float) in 1 / (1 + expf(-v)) }
    let want = [4.5, 2, -0.5, 1, 0, -1].map(sigmoid)
    for (k, (got, w)) in zip(y.scalars, want).enumerated() {
      XCTAssertEqual(got, w + (k == 2 ? 1 : 0), accuracy: 1e-6, "element \(k)")
    }
  }
}
