import XCTest

import VeilTensor

final class TensorTests: XCTestCase {
  func testSeededGeneratorIsDeterministicAndRoughlyNormal() {
    var a = SeededGenerator(seed: 42)
    var b = SeededGenerator(seed: 42)
    let x = Tensor.randomNormal(shape: [10000], generator: &a)
    let y = Tensor.randomNormal(shape: [10000], generator: &b)
    XCTAssertEqual(x.scalars, y.scalars)
    let mean = x.scalars.reduce(0, +) / 10000
    let variance = x.scalars.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / 10000
    XCTAssertEqual(mean, 0, accuracy: 0.05)
    XCTAssertEqual(variance, 1, accuracy: 0.05)
  }

  func testValuesInitializerChecksCount() {
    XCTAssertThrowsError(try Tensor(shape: [2, 3], values: [1, 2, 3])) { e in
      XCTAssertTrue("\(e)".contains("6 values"), "\(e)")
    }
  }

  func testCopyOnWrite() throws {
    let a = try Tensor(shape: [3], values: [1, 2, 3])
    var b = a
    b.withUnsafeMutableBuffer { $0[0] = 9 }
    XCTAssertEqual(a.scalars, [1, 2, 3])
    XCTAssertEqual(b.scalars, [9, 2, 3])
  }

  func testPlainLayoutFacts() {
    let l = Layout.plain([2, 3, 4, 5])
    XCTAssertTrue(l.isPlain)
    XCTAssertEqual(l.dims, [2, 3, 4, 5])
    XCTAssertEqual(l.byteCount, 2 * 3 * 4 * 5 * 4)
    XCTAssertTrue(l.batchIsOutermost)
  }

  /// A convolution picks a blocked layout; reordering there and back restores the data.
  func testReorderRoundTripThroughAConvolutionLayout() throws {
    var rng = SeededGenerator(seed: 7)
    let w = Tensor.randomNormal(shape: [32, 32, 3, 3], generator: &rng)
    let spec = ConvolutionSpec(strides: [1, 1], dilations: [1, 1], padsBegin: [1, 1], padsEnd: [1, 1], groups: 1)
    let conv = try DNNLBackend.shared.convolution(
      spec, inputDims: [1, 32, 14, 14], weights: w, bias: nil, postOps: [], outputDims: [1, 32, 14, 14])
    let blocked = conv.inputLayouts[0]
    let x = Tensor.randomNormal(shape: [1, 32, 14, 14], generator: &rng)
    let there = try DNNLBackend.shared.reorder(from: .plain(x.shape), to: blocked)
    let back = try DNNLBackend.shared.reorder(from: blocked, to: .plain(x.shape))
    let mid = TensorStorage(count: blocked.byteCount / 4)
    var y = Tensor(zeros: x.shape)
    try there.run(inputs: [UnsafeMutableRawPointer(x.storage.pointer)], output: UnsafeMutableRawPointer(mid.pointer))
    try y.withUnsafeMutableBuffer { out in
      try back.run(inputs: [UnsafeMutableRawPointer(mid.pointer)], output: UnsafeMutableRawPointer(out.baseAddress!))
    }
    XCTAssertEqual(x.scalars, y.scalars)
  }

  /// The primitive cache keeps at most its capacity, dropping the least recently used; a
  /// kernel whose primitive was dropped still runs, and asking again builds it anew.
  func testPrimitiveCacheEvictsTheLeastRecentlyUsedBeyondItsCapacity() throws {
    let backend = DNNLBackend(primitiveCacheCapacity: 2)
    let (a, b, c) = ([1, 3, 4, 4], [1, 3, 5, 5], [1, 3, 6, 6])
    _ = try backend.activation(.relu, input: .plain(a))
    let evicted = try backend.activation(.relu, input: .plain(b))
    _ = try backend.activation(.relu, input: .plain(a))
    XCTAssertEqual(backend.cacheHits, 1, "a second kernel of the same shape shares the primitive")
    _ = try backend.activation(.relu, input: .plain(c))
    XCTAssertEqual(backend.cachedPrimitives, 2)
    XCTAssertEqual(backend.cacheEvictions, 1)
    _ = try backend.activation(.relu, input: .plain(a))
    XCTAssertEqual(backend.cacheHits, 2, "the recently used one stayed")
    let misses = backend.cacheMisses
    _ = try backend.activation(.relu, input: .plain(b))
    XCTAssertEqual(backend.cacheMisses, misses + 1, "the least recently used one was dropped")
    XCTAssertEqual(backend.cachedPrimitives, 2)

    let x = try Tensor(shape: b, values: (0..<75).map { Float($0) - 37 })
    var y = Tensor(zeros: b)
    try y.withUnsafeMutableBuffer { out in
      try evicted.run(inputs: [UnsafeMutableRawPointer(x.storage.pointer)], output: UnsafeMutableRawPointer(out.baseAddress!))
    }
    XCTAssertEqual(y.scalars, x.scalars.map { max($0, 0) })
  }

  func testInvalidThreadCountIsRejected() {
    XCTAssertThrowsError(try Engine.shared.setThreads(0)) { e in
      XCTAssertTrue("\(e)".contains("thread count"), "\(e)")
    }
    XCTAssertNoThrow(try Engine.shared.setThreads(1))
    XCTAssertEqual(Engine.shared.threads, 1)
    XCTAssertNoThrow(try Engine.shared.setThreads(Engine.availableCores))
  }
}
