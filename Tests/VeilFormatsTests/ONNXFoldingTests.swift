import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor

/// Constant folding of the ops an exporter uses to compute masks and tables from shapes (a Swin
/// block's shifted-window mask and relative-position bias): each result checked by running the
/// graph, and each hostile operand refused with the node's name.
extension ONNXReaderTests {
  /// ConstantOfShape, ScatterND, Equal and Not on floats, Where with float branches, a float
  /// Transpose: the attention-mask idiom, folded into one constant operand of the Add.
  func testMaskIdiomFoldsToAConstant() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.int64s("hw", dims: [2], [2, 2])
    m.int64s("at", dims: [2, 2], [0, 1, 1, 1])  // two index tuples: (0, 1) and (1, 1)
    m.floats("updates", dims: [2], [5, 0])
    m.floats("zero", dims: [], [0])
    m.floats("minus100", dims: [], [-100])
    m.int64s("flat", dims: [2], [1, 4])
    m.nodes = [
      ("zeros", "ConstantOfShape", ["hw"], ["z"], []),
      ("scatter", "ScatterND", ["z", "at", "updates"], ["mask"], []),
      ("eq", "Equal", ["mask", "zero"], ["isZero"], []),
      ("not", "Not", ["isZero"], ["nonZero"], []),
      ("where", "Where", ["nonZero", "minus100", "zero"], ["bias"], []),
      ("tr", "Transpose", ["bias"], ["biasT"], [("perm", .ints([1, 0]))]),
      ("reshape", "Reshape", ["biasT", "flat"], ["row"], []),
      ("add", "Add", ["x", "row"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.nodes.map(\.op), [.binary(.add)], "everything but the Add folds")
    // mask [[0, 5], [0, 0]] → non-zero at (0, 1) → bias [[0, −100], [0, 0]] → transposed.
    let y = try Executor(graph: g).run([Tensor(shape: [1, 4], repeating: 1)])[0]
    XCTAssertEqual(y.scalars, [1, 1, -99, 1])
  }

  /// Gather of a float table on an axis by 2-D indices, Concat of floats on axis 1, Pow, Range
  /// of floats and a Cast of floats to integers that then index: a relative-position bias.
  func testTableIdiomFoldsToAConstant() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 2, 3])]
    m.floats("table", dims: [3, 2], [1, 2, 3, 4, 5, 6])
    m.floats("start", dims: [], [2])
    m.floats("limit", dims: [], [-1])
    m.floats("delta", dims: [], [-2])
    m.floats("extra", dims: [2, 1], [9, 8])
    m.floats("two", dims: [], [2])
    m.int64s("shape", dims: [3], [1, 2, 3])
    m.nodes = [
      ("range", "Range", ["start", "limit", "delta"], ["r"], []),  // [2, 0]
      ("cast", "Cast", ["r"], ["idx"], [("to", .int(7))]),
      ("gather", "Gather", ["table", "idx"], ["rows"], [("axis", .int(0))]),  // [[5, 6], [1, 2]]
      ("cat", "Concat", ["rows", "extra"], ["wide"], [("axis", .int(1))]),  // [[5, 6, 9], [1, 2, 8]]
      ("pow", "Pow", ["wide", "two"], ["sq"], []),
      ("reshape", "Reshape", ["sq", "shape"], ["bias"], []),
      ("add", "Add", ["x", "bias"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.nodes.map(\.op), [.binary(.add)])
    let y = try Executor(graph: g).run([Tensor(shape: [1, 2, 3], repeating: 0)])[0]
    XCTAssertEqual(y.scalars, [25, 36, 81, 1, 4, 64])
  }

  /// Integer Expand, a Gather on axis 1 and a Concat of 2-D integers on axis 0: the integer
  /// path beyond 1-D shape lists.
  func testIntegerExpandGatherAndConcatOnAxes() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.int64s("row", dims: [1, 3], [1, 2, 3])
    m.int64s("to", dims: [2], [2, 3])
    m.int64s("pick", dims: [1], [2])
    m.int64s("other", dims: [2, 1], [7, 8])
    m.int64s("flat", dims: [2], [1, 4])
    m.nodes = [
      ("expand", "Expand", ["row", "to"], ["grid"], []),  // [[1, 2, 3], [1, 2, 3]]
      ("gather", "Gather", ["grid", "pick"], ["col"], [("axis", .int(1))]),  // [[3], [3]]
      ("cat", "Concat", ["col", "other"], ["both"], [("axis", .int(0))]),  // [[3], [3], [7], [8]]
      ("reshape", "Reshape", ["both", "flat"], ["r"], []),
      ("cast", "Cast", ["r"], ["f"], [("to", .int(1))]),
      ("add", "Add", ["x", "f"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.nodes.map(\.op), [.binary(.add)])
    let y = try Executor(graph: g).run([Tensor(shape: [1, 4], repeating: 0.5)])[0]
    XCTAssertEqual(y.scalars, [3.5, 3.5, 7.5, 8.5])
  }

  /// TensorFlow-style "same" padding as timm's tf_ models export it: the pad computed from the
  /// size with Div, Ceil (and Floor), Clip and a Cast to integers, all folded.
  func testSamePaddingArithmeticFolds() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 1, 4, 4])]
    m.floats("size", dims: [1], [7])
    m.floats("two", dims: [], [2])
    m.floats("zero", dims: [], [0])
    m.floats("ten", dims: [], [10])
    m.int64s("zeros", dims: [2], [0, 0])
    m.nodes = [
      ("div", "Div", ["size", "two"], ["half"], []),  // 3.5
      ("ceil", "Ceil", ["half"], ["up"], []),  // 4
      ("floor", "Floor", ["half"], ["down"], []),  // 3
      ("sub", "Sub", ["up", "down"], ["one"], []),  // 1
      ("add", "Add", ["one", "one"], ["p"], []),  // 2
      ("clip", "Clip", ["p", "zero", "ten"], ["pc"], []),
      ("cast", "Cast", ["pc"], ["pi"], [("to", .int(7))]),
      ("pads", "Concat", ["zeros", "pi", "pi", "zeros", "pi", "pi"], ["all"], [("axis", .int(0))]),
      ("pad", "Pad", ["x", "all"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.nodes.map(\.op), [.pad(mode: .constant, pads: [0, 0, 2, 2, 0, 0, 2, 2], value: 0)])
  }

  /// Split sizes bounded each and in sum, not by their product (MixNet: five parts of 144).
  func testSplitIntoManyLargeParts() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 6000])]
    m.int64s("sizes", dims: [3], [2000, 2000, 2000])
    m.nodes = [("split", "Split", ["x", "sizes"], ["a", "b", "c"], [("axis", .int(1))])]
    m.outputs = ["a", "b", "c"]
    let g = try ONNXReader.parse(m.bytes())
    XCTAssertEqual(g.outputs.map { g.shape($0) }, [[1, 2000], [1, 2000], [1, 2000]])
  }

  /// An integer Range whose elements fit although i·delta alone would not (start Int64.min,
  /// delta 2^62): folded exactly, not trapped.
  func testIntegerRangeNearTheLimits() throws {
    var m = HandModel()
    m.inputs = [("x", [1, 4])]
    m.int64s("start", dims: [], [Int64.min])
    m.int64s("limit", dims: [], [Int64.max])
    m.int64s("delta", dims: [], [1 << 62])
    m.nodes = [
      ("range", "Range", ["start", "limit", "delta"], ["r"], []),
      ("cast", "Cast", ["r"], ["f"], [("to", .int(1))]),
      ("add", "Add", ["x", "f"], ["y"], []),
    ]
    m.outputs = ["y"]
    let g = try ONNXReader.parse(m.bytes())
    let y = try Executor(graph: g).run([Tensor(shape: [1, 4], repeating: 0)])[0]
    XCTAssertEqual(y.scalars, [-0x1p63, -0x1p62, 0, 0x1p62])
  }

  /// A model of `nodes` on constants (made by `setup`) beside a Relu of its input must be
  /// refused with every one of `words` in the message.
  func refused(
    _ nodes: [HandModel.Node], opset: Int = 13, _ setup: (inout HandModel) -> Void, _ words: [String],
    file: StaticString = #filePath, line: UInt = #line
  ) {
    var m = HandModel()
    m.opset = opset
    m.inputs = [("x", [1, 2])]
    setup(&m)
    m.nodes = nodes + [("relu", "Relu", ["x"], ["y"], [])]
    m.outputs = ["y"]
    let text = message { try ONNXReader.parse(m.bytes()) }
    for w in words { XCTAssertTrue(text.contains(w), "\(words): \(text)", file: file, line: line) }
  }

  func testHostileFoldOperandsAreRefusedByName() {
    // 2^40 elements from three scalars.
    refused([("huge", "Range", ["a", "b", "c"], ["r"], [])], {
      $0.int64s("a", dims: [], [0]); $0.int64s("b", dims: [], [1 << 40]); $0.int64s("c", dims: [], [1])
    }, ["huge", "Range"])
    // A span of 2^64 − 1, and a float range over a tiny delta: the count itself would not fit.
    refused([("wide", "Range", ["a", "b", "c"], ["r"], [])], {
      $0.int64s("a", dims: [], [Int64.min]); $0.int64s("b", dims: [], [Int64.max]); $0.int64s("c", dims: [], [1])
    }, ["wide", "Range of"])
    refused([("fine", "Range", ["a", "b", "c"], ["r"], [])], {
      $0.floats("a", dims: [], [-3e38]); $0.floats("b", dims: [], [3e38]); $0.floats("c", dims: [], [1e-30])
    }, ["fine", "Range of"])
    refused([("zero", "Range", ["a", "b", "c"], ["r"], [])], {
      $0.int64s("a", dims: [], [0]); $0.int64s("b", dims: [], [4]); $0.int64s("c", dims: [], [0])
    }, ["zero", "delta is 0"])
    refused([("scatter", "ScatterND", ["d", "i", "u"], ["s"], [])], {
      $0.floats("d", dims: [2, 2], [0, 0, 0, 0]); $0.int64s("i", dims: [1, 2], [0, 5]); $0.floats("u", dims: [1], [1])
    }, ["scatter", "out of range"])
    refused([("scatter", "ScatterND", ["d", "i", "u"], ["s"], [])], {
      $0.floats("d", dims: [2, 2], [0, 0, 0, 0]); $0.int64s("i", dims: [1, 3], [0, 0, 0]); $0.floats("u", dims: [1], [1])
    }, ["scatter", "do not index"])
    refused([("gather", "Gather", ["t", "i"], ["g"], [("axis", .int(3))])], {
      $0.floats("t", dims: [2, 2], [0, 0, 0, 0]); $0.int64s("i", dims: [1], [0])
    }, ["gather", "axis 3 is out of range"])
    refused([("gather", "Gather", ["t", "i"], ["g"], [("axis", .int(1))])], {
      $0.floats("t", dims: [2, 2], [0, 0, 0, 0]); $0.int64s("i", dims: [1], [-3])
    }, ["gather", "index -3 is out of range"])
    refused([("cat", "Concat", ["a", "b"], ["c"], [("axis", .int(1))])], {
      $0.floats("a", dims: [2, 2], [0, 0, 0, 0]); $0.floats("b", dims: [3, 1], [0, 0, 0])
    }, ["cat", "do not concatenate"])
    refused([("cast", "Cast", ["f"], ["i"], [("to", .int(7))])], {
      $0.floats("f", dims: [1], [.infinity])
    }, ["cast", "out of integer range"])
  }

  /// Attributes within their own bounds that together blow a shape up (a Conv padded by
  /// 30,000 a side of an 8 × 8 input, a ConvTranspose striding 60,000) are refused at import
  /// by the node's name; before, the executor's allocation of the 58 GB output crashed the
  /// process.
  func testAttributesThatBlowAShapeUpAreRefusedAtImport() {
    for (op, attrs, weight) in [
      ("Conv", [("pads", Attr.ints([30_000, 30_000, 30_000, 30_000])), ("kernel_shape", .ints([3, 3]))], [4, 3, 3, 3]),
      ("ConvTranspose", [("strides", .ints([60_000, 60_000])), ("kernel_shape", .ints([3, 3]))], [3, 4, 3, 3]),
    ] {
      var m = HandModel()
      m.inputs = [("x", [1, 3, 8, 8])]
      m.floats("w", dims: weight, [Float](repeating: 0.1, count: weight.reduce(1, *)))
      m.nodes = [("huge", op, ["x", "w"], ["y"], attrs)]
      m.outputs = ["y"]
      let text = message { try ONNXReader.parse(m.bytes()) }
      for word in ["huge", op, "elements, the most one tensor may hold"] { XCTAssertTrue(text.contains(word), "\(op): \(text)") }
    }
  }

  /// torchvision's Swin writes Dropout(p = 0) in training mode: nothing is dropped, so it is
  /// taken; a training-mode Dropout that drops is refused.
  func testTrainingModeDropoutOfRatioZeroIsTheIdentity() throws {
    for (ratio, taken) in [(Float(0), true), (0.5, false)] {
      var m = HandModel()
      m.inputs = [("x", [1, 2])]
      m.floats("ratio", dims: [], [ratio])
      m.initializers.append(("train", [], [1], 9, []))
      m.nodes = [("drop", "Dropout", ["x", "ratio", "train"], ["y"], [])]
      m.outputs = ["y"]
      let text = message { try ONNXReader.parse(m.bytes()) }
      XCTAssertEqual(text == "no error", taken, "ratio \(ratio): \(text)")
    }
  }

  /// HardSigmoid(α = 1/6, β = ½) · x, as exporters before opset 14 write HardSwish, is one op;
  /// another α stays two.
  func testHardSigmoidTimesInputIsHardSwish() throws {
    for (alpha, fused) in [(Float(1) / 6, true), (0.2, false)] {
      var m = HandModel()
      m.inputs = [("x", [1, 4])]
      m.nodes = [
        ("gate", "HardSigmoid", ["x"], ["h"], [("alpha", .float(alpha)), ("beta", .float(0.5))]),
        ("mul", "Mul", ["x", "h"], ["y"], []),
      ]
      m.outputs = ["y"]
      let g = try ONNXReader.parse(m.bytes())
      XCTAssertEqual(g.nodes.map(\.op) == [.activation(.hardSwish)], fused, "α \(alpha): \(g.nodes.map(\.op))")
      let x = try Tensor(shape: [1, 4], values: [-4, -1, 0.5, 4])
      let y = try Executor(graph: g).run([x])[0]
      for (i, v) in x.scalars.enumerated() {
        XCTAssertEqual(y.scalars[i], v * min(max(alpha * v + 0.5, 0), 1), accuracy: 1e-6)
      }
    }
  }
}
