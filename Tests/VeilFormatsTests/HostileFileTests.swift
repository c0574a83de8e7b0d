import Foundation
import XCTest

import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport

/// Files that declare more than they hold: every size is checked before anything is allocated
/// and refused with an error that names the place, never a trap or a huge allocation.
final class HostileFileTests: XCTestCase {
  func npy(_ dict: String, data: [UInt8] = []) -> [UInt8] {
    var header = Array(dict.utf8)
    while (10 + header.count + 1) % 64 != 0 { header.append(0x20) }
    header.append(0x0A)
    return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count & 0xFF), UInt8(header.count >> 8)] + header + data
  }

  func assertRefused(
    _ body: @autoclosure () throws -> some Any, _ fragments: [String], file: StaticString = #filePath,
    line: UInt = #line
  ) {
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
      for f in fragments {
        XCTAssertTrue("\(error)".contains(f), "'\(f)' missing from: \(error)", file: file, line: line)
      }
    }
  }

  // MARK: NumPy

  /// (2^61,) of 8-byte elements: the element count fits in Int, the byte count does not (this
  /// multiplication trapped before).
  func testNPYShapeWhoseByteCountOverflows() {
    assertRefused(
      try NPY.decode(npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }")),
      ["malformed at byte 10", "more than 2147483647 elements"])
  }

  func testNPYEmptyTensorWithHugeDimensionsAndRank() {
    // No elements, but strides of 2^93 bytes for whoever uses the shape next.
    assertRefused(
      try NPY.decode(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2147483648, 2147483648, 4), }")),
      ["more than 2147483647 elements"])
    let rank40 = "(" + String(repeating: "1, ", count: 40) + ")"
    assertRefused(
      try NPY.decode(npy("{'descr': '<f4', 'fortran_order': False, 'shape': \(rank40), }", data: [0, 0, 0, 0])),
      ["rank 40"])
  }

  // MARK: Pickles and checkpoints

  /// SETITEMS with 200 000 distinct keys: a hash index per dict makes this linear (a scan per
  /// key took minutes); replaced keys keep their place.
  func testPickleDictBuildingIsLinear() throws {
    var p = PickleBuilder()
    p.bytes += [0x7D, 0x28]
    let n = 200_000
    for i in 0..<n {
      p.str("k\(i)")
      p.int(i)
    }
    p.str("k7")
    p.int(-7)
    p.bytes += [0x75]
    p.stop()
    let start = Date()
    let doc = try Unpickler().load(p.bytes)
    let seconds = Date().timeIntervalSince(start)
    let entries = try XCTUnwrap(doc.entries(doc.root))
    XCTAssertEqual(entries.count, n)
    XCTAssertEqual(entries[7].key, .string("k7"))
    XCTAssertEqual(entries[7].value, .int(-7), "a repeated key replaces the value in place")
    XCTAssertLessThan(seconds, 20, "200 000 keys should take well under a second; a quadratic scan takes minutes")
  }

  /// One DUP + APPEND pair adds an element for two bytes: the element budget stops the growth.
  func testPickleElementBudget() {
    var p = PickleBuilder()
    p.bytes += [0x5D]
    for _ in 0..<1000 { p.bytes += [0x32, 0x61] }
    p.stop()
    var u = Unpickler()
    u.maxElements = 500
    assertRefused(try u.load(p.bytes), ["more than 500 elements"])
  }

  /// A [2^15, 2^15] view with zero strides over a one-element storage: 4 GiB asked for by a
  /// few pickle bytes (within the per-tensor element limit, so only the storage rule stops it).
  func testCheckpointExpandedViewIsBounded() {
    var q = PickleBuilder()
    q.bytes.append(0x7D)
    q.str("w")
    q.tensor(
      type: "FloatStorage", key: "0", storageSize: 1, offset: 0, size: [1 << 15, 1 << 15], stride: [0, 0], legacy: false
    )
    q.bytes.append(0x73)
    q.stop()
    let zip = storedZip([("archive/data.pkl", q.bytes), ("archive/data/0", floatBytes([1]))])
    assertRefused(try TorchCheckpoint.decode(zip), ["1-element storage", "t.contiguous()"])
  }

  /// A legacy view whose offset plus size overflows (these additions trapped before).
  func testCheckpointViewOffsetOverflow() {
    var main = PickleBuilder()
    main.bytes.append(0x7D)
    main.str("t")
    main.tensor(
      type: "FloatStorage", key: "s", storageSize: 2, offset: 0, size: [1], stride: [1], legacy: true,
      view: (offset: Int.max, count: 2))
    main.bytes.append(0x73)
    main.stop()
    var file = legacyCheckpoint([], storages: [])
    // Swap the empty main pickle of the helper for this one: magic, version, sys info, main, keys.
    let magic = try? Unpickler().load(file)
    XCTAssertNotNil(magic)
    var sys = PickleBuilder()
    sys.bytes.append(0x7D)
    sys.stop()
    var keys = PickleBuilder()
    keys.bytes += [0x28]
    keys.str("s")
    keys.bytes += [0x6C]
    keys.stop()
    file = Array(file.prefix(21)) + sys.bytes + main.bytes + keys.bytes + Array(repeating: 0, count: 8)
    assertRefused(try TorchCheckpoint.decode(file), ["overflows"])
  }

  // MARK: safetensors

  func testSafetensorsHugeEmptyShapeAndRank() {
    func file(_ shape: String) -> [UInt8] {
      let header = Array(#"{"t":{"dtype":"F32","shape":\#(shape),"data_offsets":[0,0]}}"#.utf8)
      return withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header
    }
    assertRefused(try Safetensors.decode(file("[0,4294967296,4294967296,4294967296]")), ["tensor 't'", "more than"])
    assertRefused(
      try Safetensors.decode(file("[" + Array(repeating: "1", count: 33).joined(separator: ",") + "]")), ["rank 33"])
  }

  // MARK: ONNX and protobuf

  /// An empty int64 constant with dims [0, 2^31−1, 2^31−1, 2^31−1], transposed: the strides of
  /// the transpose overflowed before.
  func testONNXEmptyConstantWithHugeDimensions() {
    var m = ONNXModelBuilder()
    m.ints("e", dims: [0, 2_147_483_647, 2_147_483_647, 2_147_483_647], [])
    m.node("Transpose", ["e"], ["t"])
    m.reluGraph()
    assertRefused(try ONNXReader.parse(m.model()), ["tensor 'e'", "more than 2147483647 elements"])
  }

  /// The transformer ops' operands from a file: Unsqueeze to a huge rank or naming an axis
  /// twice, Gather at an index out of range or at jumping indices, Expand of a constant to a
  /// huge shape: each refused with the node, nothing allocated for it.
  func testTransformerOpsWithHostileOperands() throws {
    func model(_ body: (inout ONNXModelBuilder) -> Void) -> [UInt8] {
      var m = ONNXModelBuilder()
      m.input("x", dims: [1, 4, 3])
      body(&m)
      return m.model(opset: 13)
    }
    let cases: [(String, [String], (inout ONNXModelBuilder) -> Void)] = [
      ("unsqueeze_huge_rank", ["exceeds"], { m in
        m.ints("axes", dims: [40], Array(repeating: 1, count: 40))
        m.node("Unsqueeze", ["x", "axes"], ["y"])
        m.output("y", dims: [1])
      }),
      ("unsqueeze_axis_twice", ["twice"], { m in
        m.ints("axes", dims: [2], [0, 0])
        m.node("Unsqueeze", ["x", "axes"], ["y"])
        m.output("y", dims: [1])
      }),
      ("gather_out_of_range", ["out of range"], { m in
        m.ints("i", dims: [], [7])
        m.node("Gather", ["x", "i"], ["y"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
        m.output("y", dims: [1])
      }),
      ("gather_jumping", ["consecutive"], { m in
        m.ints("i", dims: [2], [0, 2])
        m.node("Gather", ["x", "i"], ["y"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
        m.output("y", dims: [1])
      }),
      ("expand_huge", ["e"], { m in
        m.tensor("c", dims: [1], type: 1) { $0.packedFloat(4, [1]) }
        m.ints("shape", dims: [3], [1 << 20, 1 << 20, 1 << 20])
        m.node("Expand", ["c", "shape"], ["big"])
        m.node("Add", ["x", "big"], ["y"])
        m.output("y", dims: [1])
      }),
    ]
    for (name, words, body) in cases {
      XCTAssertThrowsError(try ONNXReader.parse(model(body)), name) { error in
        let text = "\(error)"
        for w in words { XCTAssertTrue(text.contains(w), "\(name): \(text)") }
      }
    }
  }

  /// LayerNormalization as exporters wrote it before opset 17, but reducing over a positive
  /// axis or Int64.min: the fusion built the range `first...(-1)` from the file's axis, which
  /// trapped for any axis above −1 and overflowed for Int64.min. Such a pattern is not fused
  /// now (its Pow alone is not an op Veil takes, and Int64.min is no axis of any input); over
  /// the last axis (−1) it still fuses.
  func testLayerNormPatternWithPositiveOrExtremeAxes() throws {
    for axis in [Int64(-1), 1, 2, Int64.min] {
      var m = ONNXModelBuilder()
      m.input("x", dims: [1, 4, 3])
      m.tensor("two", dims: [], type: 1) { $0.packedFloat(4, [2]) }
      m.tensor("eps", dims: [], type: 1) { $0.packedFloat(4, [1e-5]) }
      m.tensor("gamma", dims: [3], type: 1) { $0.packedFloat(4, [1, 2, 3]) }
      let axes = { (e: inout ProtobufEncoder) in ONNXModelBuilder.ints(&e, "axes", [Int(axis)]) }
      m.node("ReduceMean", ["x"], ["m"], attributes: axes)
      m.node("Sub", ["x", "m"], ["d"])
      m.node("Pow", ["d", "two"], ["p"])
      m.node("ReduceMean", ["p"], ["v"], attributes: axes)
      m.node("Add", ["v", "eps"], ["a"])
      m.node("Sqrt", ["a"], ["q"])
      m.node("Div", ["d", "q"], ["n"])
      m.node("Mul", ["n", "gamma"], ["y"])
      m.output("y", dims: [1, 4, 3])
      if axis == -1 {
        let g = try ONNXReader.parse(m.model(opset: 13))
        XCTAssertTrue(g.nodes.contains { $0.op.typeName == "LayerNormalization" }, "the trailing axis fuses")
      } else {
        // Int64.min is no axis at all: its ReduceMean is refused before the Pow.
        let expected = axis == Int64.min ? ["ReduceMean", "out of range"] : ["unknown op 'Pow'"]
        assertRefused(try ONNXReader.parse(m.model(opset: 13)), expected)
      }
    }
  }

  /// MaxPool with `auto_pad` SAME_UPPER and fewer dilations than kernel axes: the padding was
  /// computed from `dilations[i]` for every kernel axis, past the end of the list.
  func testPoolWithSamePaddingAndShortDilations() {
    for dilations in [[Int](), [1]] {
      var m = ONNXModelBuilder()
      m.input("x", dims: [1, 1, 4, 4])
      m.node("MaxPool", ["x"], ["y"]) {
        ONNXModelBuilder.ints(&$0, "kernel_shape", [2, 2])
        ONNXModelBuilder.string(&$0, "auto_pad", "SAME_UPPER")
        ONNXModelBuilder.ints(&$0, "dilations", dilations)
      }
      m.output("y", dims: [1, 1, 4, 4])
      assertRefused(try ONNXReader.parse(m.model()), ["MaxPool", "dilations"])
    }
  }

  /// Range folded over a span that is negative and huge (a delta of 1e-30 below the start, or
  /// Int64.max down to Int64.min by +1): the element count, −1e30 and −1.8e19, was converted to
  /// Int before it was clamped to 0, and trapped. It is empty, as ONNX Runtime makes it.
  func testRangeWithAHugeNegativeSpanIsEmpty() throws {
    let cases: [(Int, (inout ONNXModelBuilder) -> Void)] = [
      (1, { m in
        m.tensor("s", dims: [], type: 1) { $0.packedFloat(4, [0]) }
        m.tensor("l", dims: [], type: 1) { $0.packedFloat(4, [-1]) }
        m.tensor("d", dims: [], type: 1) { $0.packedFloat(4, [1e-30]) }
      }),
      (7, { m in
        m.ints("s", dims: [], [Int64.max])
        m.ints("l", dims: [], [Int64.min])
        m.ints("d", dims: [], [1])
      }),
    ]
    for (type, constants) in cases {
      var m = ONNXModelBuilder()
      constants(&m)
      m.node("Range", ["s", "l", "d"], ["r"])
      m.node("Shape", ["r"], ["n"])
      m.reluGraph()
      XCTAssertNoThrow(try ONNXReader.parse(m.model()), "type \(type)")
    }
  }

  /// Pads that make a [1, 1, 1, 1] input [1, 2^31−1, 2^31−1, 2^31−1], then a Flatten that
  /// multiplies those extents: the importer kept each node's shape without bounding it, and the
  /// Flatten's product overflowed. The Pad is refused where its shape is derived.
  func testPadThatGrowsPastOneTensorIsRefusedWhereItIsDerived() {
    var m = ONNXModelBuilder()
    m.input("x", dims: [1, 1, 1, 1])
    m.node("Pad", ["x"], ["p"]) { ONNXModelBuilder.ints(&$0, "pads", [0, 0, 0, 0, 0, 2_147_483_646, 2_147_483_646, 2_147_483_646]) }
    m.node("Flatten", ["p"], ["y"]) { ONNXModelBuilder.int(&$0, "axis", 1) }
    m.output("y", dims: [1, 1])
    assertRefused(try ONNXReader.parse(m.model(opset: 10)), ["Pad", "more than 2147483647 elements"])
  }

  /// An integer constant squeezed on an axis whose extent is not 1 ([0, 5] and [1000, 1000] on
  /// axis 0): the fold kept the values and dropped the axis, so dims and values disagreed, and
  /// the Add indexed past the values (a trap) while the Cast to float wrote 10^6 floats into a
  /// tensor of 1000 (a heap overflow in release builds).
  func testSqueezeOfAnAxisThatIsNotOneIsRefused() {
    for (dims, values, then) in [([0, 5], [Int64](), "Add"), ([1000, 1000], [Int64](repeating: 1, count: 1_000_000), "Cast")] {
      var m = ONNXModelBuilder()
      m.ints("c", dims: dims, values)
      m.node("Squeeze", ["c"], ["s"]) { ONNXModelBuilder.ints(&$0, "axes", [0]) }
      if then == "Add" {
        m.node("Add", ["s", "s"], ["t"])
      } else {
        m.node("Cast", ["s"], ["t"]) { ONNXModelBuilder.int(&$0, "to", 1) }
      }
      m.reluGraph()
      assertRefused(try ONNXReader.parse(m.model(opset: 11)), ["Squeeze", "extent 1"])
    }
  }

  /// A Div (or Add, Sub, Mul) of one float constant (found by the onnx fuzz target,
  /// Fuzz/corpus/onnx/regress-div-of-one-float-constant.onnx): the fold read the second
  /// operand past the list of one. A float unary op with two operands is refused too.
  func testFloatConstantArithmeticWithTheWrongNumberOfOperandsIsRefused() {
    for (op, ins) in [("Div", ["a"]), ("Mul", ["a"]), ("Sqrt", ["a", "a"]), ("Add", ["a", "a", "a"])] {
      var m = ONNXModelBuilder()
      m.floats("a", dims: [2], [1, 2])
      m.node(op, ins, ["b"])
      m.node("Shape", ["b"], ["n"])
      m.reluGraph()
      assertRefused(try ONNXReader.parse(m.model()), [op, "takes \(op == "Sqrt" ? 1 : 2) input(s)"])
    }
  }

  /// A graph input of rank 35 (the onnx fuzz target's model, whose Add then overflowed a stack
  /// array in the oneDNN helper at compile time): refused at import like any tensor of the file
  /// past `FormatLimits.maxRank`, naming the input.
  func testGraphInputBeyondTheRankVeilReadsIsRefused() {
    var m = ONNXModelBuilder()
    m.input("x", dims: [Int?](repeating: 1, count: 34) + [6])
    m.node("Add", ["x", "x"], ["y"])
    m.output("y", dims: [1, 6])
    assertRefused(try ONNXReader.parse(m.model()), ["input 'x'", "rank 35", "more than the \(FormatLimits.maxRank)"])
  }

  /// Slice steps of ±2^63−1 and Int64.min: the extent arithmetic overflowed before.
  func testONNXSliceWithExtremeSteps() throws {
    for step in [Int64.max, Int64.min, Int64.min + 1] {
      var m = ONNXModelBuilder()
      m.ints("seq", dims: [6], [1, 2, 3, 4, 5, 6])
      m.ints("starts", dims: [1], [step < 0 ? -1 : 0])
      m.ints("ends", dims: [1], [step < 0 ? Int64.min : Int64.max])
      m.ints("axes", dims: [1], [0])
      m.ints("steps", dims: [1], [step])
      m.node("Slice", ["seq", "starts", "ends", "axes", "steps"], ["s"])
      m.reluGraph()
      XCTAssertNoThrow(try ONNXReader.parse(m.model()), "step \(step): one element, as ONNX Runtime slices it")
    }
  }

  /// A float constant reshaped to [2^40, 2^40]: the element product overflowed before.
  func testONNXReshapeTargetOverflow() {
    var m = ONNXModelBuilder()
    m.tensor("f", dims: [2, 2], type: 1) { $0.packedFloat(4, [1, 2, 3, 4]) }
    m.ints("shape", dims: [2], [1 << 40, 1 << 40])
    m.node("Reshape", ["f", "shape"], ["r"])
    m.reluGraph()
    assertRefused(try ONNXReader.parse(m.model()), ["Reshape", "cannot reshape"])
  }

  func testONNXConstantOfShapeAndUnsqueezeAreBounded() {
    var m = ONNXModelBuilder()
    m.ints("shape", dims: [4], [0, 65536, 65536, 65536])
    m.node("ConstantOfShape", ["shape"], ["c"])
    m.reluGraph()
    assertRefused(try ONNXReader.parse(m.model()), ["ConstantOfShape", "more than 268435456 elements"])

    // Each within the budget, together over it: 5 × 2^26 elements from a few bytes each.
    var many = ONNXModelBuilder()
    many.ints("shape", dims: [2], [1 << 13, 1 << 13])
    for i in 0..<5 { many.node("ConstantOfShape", ["shape"], ["c\(i)"]) }
    many.reluGraph()
    assertRefused(try ONNXReader.parse(many.model()), ["ConstantOfShape_c4", "all folded constants"])

    var u = ONNXModelBuilder()
    u.ints("one", dims: [1], [1])
    u.ints("axes", dims: [40], Array(repeating: 0, count: 40))
    u.node("Unsqueeze", ["one", "axes"], ["u"])
    u.reluGraph()
    assertRefused(try ONNXReader.parse(u.model()), ["rank 41"])
  }

  /// External data at an offset past the end of its file (the error message itself added
  /// offset + length and trapped before).
  func testONNXExternalDataOffsetOverflow() throws {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("veil-external-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: folder) }
    try Data([0, 0, 0, 0]).write(to: folder.appendingPathComponent("w.bin"))
    var m = ONNXModelBuilder()
    m.tensor("w", dims: [2], type: 1) { e in
      for (k, v) in [("location", "w.bin"), ("offset", "\(Int.max)")] {
        e.message(13) { entry in
          entry.string(1, k)
          entry.string(2, v)
        }
      }
      e.int(14, 1)
    }
    m.input("x", dims: [1, 2])
    m.node("Add", ["x", "w"], ["y"])
    m.output("y", dims: [1, 2])
    assertRefused(
      try ONNXReader.parse(m.model(), baseDirectory: folder), ["external tensor 'w'", "from byte \(Int.max)"])
  }

  /// Messages nested 100 deep: refused at the decoder's depth limit with the offset.
  func testProtobufNestingIsBounded() throws {
    var inner: [UInt8] = []
    for _ in 0..<100 { inner = [0x0A] + ProtobufEncoder.varintBytes(UInt64(inner.count)) + inner }
    var d = ProtobufDecoder(inner, format: "test")
    var depth = 0
    XCTAssertThrowsError(
      try {
        while let (f, wt) = try d.nextField() {
          d = try d.readMessage(field: f, wt)
          depth += 1
        }
      }()
    ) { error in
      XCTAssertTrue("\(error)".contains("nested more than \(ProtobufDecoder.maxDepth) deep"), "\(error)")
    }
    XCTAssertEqual(depth, ProtobufDecoder.maxDepth)
  }
}

extension ONNXModelBuilder {
  /// The graph the constants under test sit beside: x [1, 2] → Relu → y. Folding runs on
  /// every constant node, read or not.
  mutating func reluGraph() {
    input("x", dims: [1, 2])
    node("Relu", ["x"], ["y"])
    output("y", dims: [1, 2])
  }
}
