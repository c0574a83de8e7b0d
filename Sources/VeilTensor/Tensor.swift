/// VeilTensor: tensors and the numerical backend.
///
/// Owns `Tensor` (float32, logical NCHW at the API), aligned storage with its scoped reuse of
/// freed blocks (`withBlockReuse`) and the allocator's switch to a process's steady state
/// (`allocateForSteadyState`), `StridedWalk` for copies out of strided views, the backend
/// seams (`ComputeBackend` for inference, `TrainingBackend` for training, `Layout` as
/// dimensions plus a backend's opaque token, and the `Backends` defaults), and oneDNN 2.6
/// behind both seams (engine, stream, a bounded primitive cache, its memory descriptors as
/// layout tokens, kernels, Winograd for batched convolutions, reordered weights held once per
/// backend in `SharedConstants`), plus the few plain-layout kernels oneDNN lacks and a SiLU of
/// Veil's own (CDNNL's silu.c, faster than oneDNN's swish, also as a convolution's epilogue).
/// oneDNN's parallel regions run on Veil's own thread team: CDNNL's team.c defines the OpenMP
/// entry points oneDNN calls, for the whole process, so that Veil decides how the threads wait
/// (`Engine.threadWaiting`; they spin only within a pass, `Engine.onTeam`, and a pass that starts
/// after idleness runs with its threads pinned, one to a CPU). A kernel states the
/// working memory it needs (`Kernel.scratchpadBytes`) and runs in the buffer its executor binds
/// (`bindScratchpad`), so that an executor holds one for all its kernels. The order statistics
/// every module reports timings and scores with (`percentile`, `[Double].median`) live here,
/// the layer all others build on, so that none defines its own. It knows nothing of
/// graphs, file formats or models, and must not import any other Veil module. Callers describe
/// *what* to compute (a convolution with these attributes and this post-op chain); which
/// library computes it, and in which memory layout, stays behind the seams: nothing outside
/// this module sees a oneDNN type.
import CDNNL
import Foundation

/// Aligned, owned float32 storage. A class because it owns memory; shared between tensor
/// values, so writers copy first (`Tensor.withUnsafeMutableBuffer` does that).
public final class TensorStorage: @unchecked Sendable {
  public let count: Int
  public let pointer: UnsafeMutablePointer<Float>

  /// Set once, before the first tensor: see `veil_tune_malloc`.
  static let tuneMalloc: Bool = {
    veil_tune_malloc()
    return true
  }()

  public init(count: Int) {
    _ = Self.tuneMalloc
    self.count = count
    let bytes = Self.byteCount(count)
    if let recycled = StorageRecycler.shared.take(bytes: bytes) {
      pointer = recycled.bindMemory(to: Float.self, capacity: max(count, 1))
      return
    }
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
      fatalError("out of memory allocating \(bytes) bytes")
    }
    pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
  }

  deinit {
    if !StorageRecycler.shared.give(UnsafeMutableRawPointer(pointer), bytes: Self.byteCount(count)) { free(pointer) }
  }

  private static func byteCount(_ count: Int) -> Int { max(count, 1) * MemoryLayout<Float>.stride }

  /// Bytes of freed blocks kept for reuse now.
  public static var recycledBytes: Int { StorageRecycler.shared.heldBytes }
}

/// Runs `body` with freed tensor blocks (those of 64 KiB and more) kept, up to `limitBytes`,
/// for tensors of the same size to reuse, instead of returning each to the operating system.
/// When the last such scope ends, what is kept is released: outside every scope (inference,
/// serving) freed blocks always go back, so freed weights leave the resident set. Scopes
/// nest, on one thread or several (two trainers at once); the largest active limit applies.
///
/// Training allocates the same activations and gradients on every step. With the fixed
/// mmap threshold of `veil_tune_malloc` (which keeps a served model's resident memory
/// honest) each of those blocks is a fresh mapping, so every step pays page faults and the
/// kernel's zeroing for them: about an eighth of the attacker's step (docs/benchmarks.md).
/// Training loops run inside this scope; it also holds the thread team (`veil_team_hold`, as
/// an executor's pass does), since a training step is parallel regions microseconds apart
/// whose threads would otherwise sleep and be woken at each.
public func withBlockReuse<R>(upTo limitBytes: Int = blockReuseDefaultLimit, _ body: () throws -> R) rethrows -> R {
  StorageRecycler.shared.enter(limit: max(0, limitBytes))
  veil_team_hold(1)
  defer {
    veil_team_hold(0)
    StorageRecycler.shared.leave(limit: max(0, limitBytes))
  }
  return try body()
}

/// Tells the allocator that the process has reached its steady state: what it serves is loaded
/// and compiled, and from now on it allocates and frees blocks of the same sizes again and again
/// (a server's requests, a benchmark's timed runs). Until this call every block of 1 MiB or more
/// is its own mapping, returned to the operating system when freed, so that weights freed while
/// a model is compiled leave the resident set (`veil_tune_malloc`). After it, blocks up to
/// 32 MiB come from the heap and stay there once freed, for the next request of that size:
/// without it a request carrying a 1.6 MiB feature map paid about 400 page faults and the
/// kernel's zeroing for every copy of it (docs/benchmarks.md, "Steady-state allocation").
/// Memory freed later (an executor evicted from a cache) stays in the process for reuse rather
/// than going back. Idempotent; servers call it when they start serving.
public func allocateForSteadyState() {
  _ = TensorStorage.tuneMalloc
  veil_malloc_keep_freed()
}

/// The default bound of `withBlockReuse`: 1 GiB of freed blocks.
public let blockReuseDefaultLimit = 1 << 30

/// Free lists of 64-byte-aligned blocks by exact byte count, bounded by the largest limit of
/// the active `withBlockReuse` scopes (none: nothing is kept).
private final class StorageRecycler: @unchecked Sendable {
  static let shared = StorageRecycler()
  private static let smallest = 64 << 10
  private var lists: [Int: [UnsafeMutableRawPointer]] = [:]
  private var limit = 0
  private var held = 0
  private var lock = pthread_mutex_t()

  private init() { pthread_mutex_init(&lock, nil) }

  private func locked<R>(_ body: () -> R) -> R {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    return body()
  }

  var heldBytes: Int { locked { held } }

  /// The limits of the active scopes, with how many scopes use each.
  private var active: [Int: Int] = [:]

  func enter(limit bytes: Int) {
    locked {
      active[bytes, default: 0] += 1
      limit = active.keys.max() ?? 0
    }
  }

  /// Ends a scope; when more is kept than the new limit allows (anything, after the last
  /// scope), every kept block is freed.
  func leave(limit bytes: Int) {
    let released: [UnsafeMutableRawPointer] = locked {
      active[bytes, default: 1] -= 1
      if active[bytes] == 0 { active[bytes] = nil }
      limit = active.keys.max() ?? 0
      guard held > limit else { return [] }
      let all = lists.values.flatMap { $0 }
      lists = [:]
      held = 0
      return all
    }
    for p in released { free(p) }
  }

  func take(bytes: Int) -> UnsafeMutableRawPointer? {
    guard bytes >= Self.smallest else { return nil }
    return locked {
      guard let p = lists[bytes]?.popLast() else { return nil }
      held -= bytes
      return p
    }
  }

  /// Keeps the block when there is room; false means the caller frees it.
  func give(_ p: UnsafeMutableRawPointer, bytes: Int) -> Bool {
    guard bytes >= Self.smallest else { return false }
    return locked {
      guard held + bytes <= limit else { return false }
      lists[bytes, default: []].append(p)
      held += bytes
      return true
    }
  }
}

/// A dense float32 tensor in plain row-major (NCHW for images) layout.
public struct Tensor: Sendable {
  public let shape: [Int]
  public private(set) var storage: TensorStorage

  public var count: Int { shape.reduce(1, *) }
  public var rank: Int { shape.count }

  /// A zero-filled tensor.
  public init(zeros shape: [Int]) {
    self.shape = shape
    let n = shape.reduce(1, *)
    storage = TensorStorage(count: n)
    storage.pointer.initialize(repeating: 0, count: n)
  }

  public init(shape: [Int], repeating value: Float) {
    self.shape = shape
    let n = shape.reduce(1, *)
    storage = TensorStorage(count: n)
    storage.pointer.initialize(repeating: value, count: n)
  }

  public init(shape: [Int], storage: TensorStorage) {
    precondition(storage.count >= shape.reduce(1, *), "storage smaller than shape")
    self.shape = shape
    self.storage = storage
  }

  /// A tensor holding `values` (row-major). Throws when the count does not match the shape.
  public init(shape: [Int], values: [Float]) throws {
    let n = shape.reduce(1, *)
    guard values.count == n else {
      throw TensorError.shapeMismatch(
        what: "tensor values", expected: "\(n) values for shape \(shape)", found: "\(values.count)")
    }
    self.shape = shape
    storage = TensorStorage(count: n)
    values.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: n) }
  }

  /// A tensor filled by a closure that receives the whole buffer once.
  public init(shape: [Int], fill: (UnsafeMutableBufferPointer<Float>) -> Void) {
    self.shape = shape
    let n = shape.reduce(1, *)
    storage = TensorStorage(count: n)
    storage.pointer.initialize(repeating: 0, count: n)
    fill(UnsafeMutableBufferPointer(start: storage.pointer, count: n))
  }

  /// A tensor whose buffer starts uninitialised (no zeroing pass): `fill`, or the caller right
  /// after (a oneDNN primitive's output), must write every element before any is read.
  public init(uninitialized shape: [Int], fill: (UnsafeMutableBufferPointer<Float>) -> Void = { _ in }) {
    self.shape = shape
    let n = shape.reduce(1, *)
    storage = TensorStorage(count: n)
    fill(UnsafeMutableBufferPointer(start: storage.pointer, count: n))
  }

  public var scalars: [Float] {
    Array(UnsafeBufferPointer(start: storage.pointer, count: count))
  }

  public func withUnsafeBuffer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
    try body(UnsafeBufferPointer(start: storage.pointer, count: count))
  }

  public mutating func withUnsafeMutableBuffer<R>(
    _ body: (UnsafeMutableBufferPointer<Float>) throws -> R
  ) rethrows -> R {
    if !isKnownUniquelyReferenced(&storage) {
      let copy = TensorStorage(count: count)
      copy.pointer.update(from: storage.pointer, count: count)
      storage = copy
    }
    return try body(UnsafeMutableBufferPointer(start: storage.pointer, count: count))
  }

  /// The same elements under another shape with the same element count.
  public func reshaped(_ newShape: [Int]) throws -> Tensor {
    guard newShape.reduce(1, *) == count else {
      throw TensorError.shapeMismatch(
        what: "reshape", expected: "\(count) elements", found: "\(newShape) (\(newShape.reduce(1, *)))")
    }
    return Tensor(shape: newShape, storage: storage)
  }

  /// The elements repeated to `target` by numpy's broadcasting (an axis of extent 1, or a
  /// missing leading one, repeats). Throws when the shapes do not broadcast that way.
  public func broadcast(to target: [Int]) throws -> Tensor {
    if shape == target { return self }
    let padded = Array(repeating: 1, count: max(0, target.count - rank)) + shape
    guard padded.count == target.count, zip(padded, target).allSatisfy({ $0 == $1 || $0 == 1 }) else {
      throw TensorError.shapeMismatch(what: "broadcast", expected: "a shape that broadcasts to \(target)", found: "\(shape)")
    }
    var strides = [Int](repeating: 0, count: target.count)
    var step = 1
    for d in stride(from: target.count - 1, through: 0, by: -1) {
      strides[d] = padded[d] == 1 ? 0 : step
      step *= padded[d]
    }
    let src = storage.pointer
    return Tensor(uninitialized: target) { out in
      for k in out.indices {
        var (rest, at) = (k, 0)
        for d in stride(from: target.count - 1, through: 0, by: -1) {
          at += (rest % target[d]) * strides[d]
          rest /= target[d]
        }
        out[k] = src[at]
      }
    }
  }

  /// Item `index` of the batch (first axis), keeping the rank with a leading 1 as models expect.
  public func batchItem(_ index: Int) -> Tensor {
    let per = count / max(shape[0], 1)
    var s = shape
    s[0] = 1
    return Tensor(shape: s) { buf in
      buf.baseAddress!.update(from: storage.pointer + index * per, count: per)
    }
  }

  /// Stacks tensors of equal shape [1, ...] (or [...]) along a new or existing batch axis.
  public static func concatenateBatch(_ items: [Tensor]) throws -> Tensor {
    guard let first = items.first else {
      throw TensorError.invalidArgument("cannot stack an empty list of tensors")
    }
    for (i, t) in items.enumerated() where t.shape != first.shape {
      throw TensorError.shapeMismatch(
        what: "batch item \(i)", expected: "\(first.shape)", found: "\(t.shape)")
    }
    var shape = first.shape
    shape[0] *= items.count
    let per = first.count
    return Tensor(shape: shape) { buf in
      for (i, t) in items.enumerated() {
        (buf.baseAddress! + i * per).update(from: t.storage.pointer, count: per)
      }
    }
  }
}

/// Deterministic random numbers (SplitMix64 seeding a xoshiro256**), so seeded initialisation
/// gives the same weights on every machine.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
  private var s: (UInt64, UInt64, UInt64, UInt64)

  public init(seed: UInt64) {
    var x = seed
    func next() -> UInt64 {
      x &+= 0x9E37_79B9_7F4A_7C15
      var z = x
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    s = (next(), next(), next(), next())
  }

  public mutating func next() -> UInt64 {
    let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
    let t = s.1 << 17
    s.2 ^= s.0
    s.3 ^= s.1
    s.1 ^= s.2
    s.0 ^= s.3
    s.2 ^= t
    s.3 = (s.3 << 45) | (s.3 >> 19)
    return result
  }

  /// Uniform in [0, 1).
  public mutating func nextUniform() -> Float {
    Float(next() >> 40) * (1.0 / Float(1 << 24))
  }

  /// Standard normal (Box–Muller).
  public mutating func nextNormal() -> Float {
    let u1 = max(nextUniform(), 1e-7)
    let u2 = nextUniform()
    return (-2 * logf(u1)).squareRoot() * cosf(2 * Float.pi * u2)
  }
}

extension Tensor {
  /// Normal(mean, std) entries from a seeded generator.
  public static func randomNormal(
    shape: [Int], mean: Float = 0, std: Float = 1, generator: inout SeededGenerator
  ) -> Tensor {
    Tensor(shape: shape) { buf in
      for i in 0..<buf.count { buf[i] = mean + std * generator.nextNormal() }
    }
  }

  /// Uniform[low, high) entries from a seeded generator.
  public static func randomUniform(
    shape: [Int], low: Float, high: Float, generator: inout SeededGenerator
  ) -> Tensor {
    Tensor(shape: shape) { buf in
      for i in 0..<buf.count { buf[i] = low + (high - low) * generator.nextUniform() }
    }
  }
}

/// A multi-index over `shape` walked in row-major order, carrying the matching offset into a
/// buffer laid out with `strides` (a transposed or sliced view): `advance()` steps to the next
/// index like an odometer, so a copy out of a strided source costs an add per element.
public struct StridedWalk {
  /// The offset of the current index in the strided buffer.
  @inlinable public var offset: Int { position }
  @usableFromInline var position: Int
  @usableFromInline var index: [Int]
  @usableFromInline let shape: [Int]
  @usableFromInline let strides: [Int]

  @inlinable public init(shape: [Int], strides: [Int], offset: Int = 0) {
    precondition(shape.count == strides.count, "StridedWalk: shape \(shape) and strides \(strides) differ in rank")
    self.position = offset
    self.index = [Int](repeating: 0, count: shape.count)
    self.shape = shape
    self.strides = strides
  }

  /// The next index in row-major order; past the last one, the walk is back at the first.
  @inlinable public mutating func advance() {
    var d = shape.count - 1
    while d >= 0 {
      index[d] += 1
      position += strides[d]
      if index[d] < shape[d] { return }
      position -= strides[d] * shape[d]
      index[d] = 0
      d -= 1
    }
  }
}

/// Throws unless a resolved slice fits: every list of the input's rank, each output extent at
/// least 1, each step non-zero, and the first and last element taken on every axis inside
/// the input.
public func validateSlice(starts: [Int], steps: [Int], inputDims: [Int], outputDims: [Int]) throws {
  let r = inputDims.count
  guard starts.count == r, steps.count == r, outputDims.count == r else {
    throw TensorError.invalidArgument(
      "Slice: starts \(starts), steps \(steps) and output \(outputDims) must each have the input's rank \(r)")
  }
  for d in 0..<r {
    let last = starts[d] + (outputDims[d] - 1) * steps[d]
    guard outputDims[d] >= 1, steps[d] != 0, (0..<inputDims[d]).contains(starts[d]), (0..<inputDims[d]).contains(last)
    else {
      throw TensorError.invalidArgument(
        "Slice: \(outputDims[d]) elements from \(starts[d]) every \(steps[d]) do not fit axis \(d) of \(inputDims)")
    }
  }
}

/// The elements of a tensor of `inputDims` that a slice takes (`starts[d] + i·steps[d]` on
/// every axis d, steps possibly negative) as a strided view: the offset of its first element
/// and its element strides. Gathering the view (`StridedCopy`) is the slice; scattering into
/// it is the slice's gradient.
public func sliceView(inputDims: [Int], starts: [Int], steps: [Int]) -> (offset: Int, strides: [Int]) {
  var unit = 1
  var offset = 0
  var strides = [Int](repeating: 0, count: inputDims.count)
  for d in stride(from: inputDims.count - 1, through: 0, by: -1) {
    offset += starts[d] * unit
    strides[d] = steps[d] * unit
    unit *= inputDims[d]
  }
  return (offset, strides)
}

/// Copies between a dense row-major tensor of `shape` and a strided view of another buffer
/// (element `strides`, possibly negative, first element at `offset`). The innermost axis is the
/// loop; the outer ones walk like an odometer (`StridedWalk`), one step a row.
public enum StridedCopy {
  /// dense ← view.
  public static func gather(
    _ view: UnsafePointer<Float>, offset: Int, strides: [Int], shape: [Int], into dense: UnsafeMutablePointer<Float>
  ) {
    forEachRow(offset: offset, strides: strides, shape: shape) { row, at, inner, step in
      for j in 0..<inner { dense[row + j] = view[at + j * step] }
    }
  }

  /// view ← dense; elements of the view's buffer outside the view are left as they are.
  public static func scatter(
    _ dense: UnsafePointer<Float>, shape: [Int], into view: UnsafeMutablePointer<Float>, offset: Int, strides: [Int]
  ) {
    forEachRow(offset: offset, strides: strides, shape: shape) { row, at, inner, step in
      for j in 0..<inner { view[at + j * step] = dense[row + j] }
    }
  }

  /// body(dense row start, view offset of that row, row length, view step along the row).
  private static func forEachRow(
    offset: Int, strides: [Int], shape: [Int], _ body: (Int, Int, Int, Int) -> Void
  ) {
    guard let inner = shape.last, let step = strides.last else { return body(0, offset, 1, 0) }
    let rows = shape.dropLast().reduce(1, *)
    guard inner > 0, rows > 0 else { return }
    var outer = StridedWalk(shape: Array(shape.dropLast()), strides: Array(strides.dropLast()), offset: offset)
    for r in 0..<rows {
      body(r * inner, outer.offset, inner, step)
      outer.advance()
    }
  }
}
