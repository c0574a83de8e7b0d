import Foundation
import VeilTensor

#if canImport(Glibc)
  import Glibc
#endif

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
  _ argc: UnsafeMutablePointer<CInt>,
  _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
  _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// libFuzzer's own mutations (bit flips, inserted bytes, dictionary words, cross-over).
@_silgen_name("LLVMFuzzerMutate")
func LLVMFuzzerMutate(_ data: UnsafeMutablePointer<UInt8>?, _ size: Int, _ maxSize: Int) -> Int

/// The target libFuzzer drives; set once, before the driver starts, and read by its callbacks
/// on libFuzzer's single thread.
enum Harness {
  nonisolated(unsafe) static var target: FuzzTarget?

  static func run(arguments: [String]) -> Int32 {
    // The targets that read files write them under /dev/shm (or the temporary folder) with
    // this process's id in their names: removed when libFuzzer exits.
    atexit {
      let folder = FuzzFixtures.scratch("").deletingLastPathComponent()
      let prefix = FuzzFixtures.scratch("").lastPathComponent
      for name in (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [] where name.hasPrefix(prefix)
      {
        try? FileManager.default.removeItem(at: folder.appendingPathComponent(name))
      }
    }
    var argc = CInt(arguments.count)
    var pointers: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    return pointers.withUnsafeMutableBufferPointer { buffer in
      guard var argv = buffer.baseAddress else { return 2 }
      return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        guard let target = Harness.target else { return 0 }
        target.run(Array(UnsafeBufferPointer(start: data, count: size)))
        return 0
      }
    }
  }
}

/// Structure-aware targets mutate what they understand and leave the rest to libFuzzer; the
/// others get libFuzzer's mutations unchanged.
@_cdecl("LLVMFuzzerCustomMutator")
public func veilCustomMutator(_ data: UnsafeMutablePointer<UInt8>?, _ size: Int, _ maxSize: Int, _ seed: CUnsignedInt)
  -> Int
{
  guard let data, let mutate = Harness.target?.mutate else { return LLVMFuzzerMutate(data, size, maxSize) }
  var rng = MutationRandom(seed: UInt64(seed))
  var bytes = Array(UnsafeBufferPointer(start: data, count: size))
  // One time in four a plain byte-level mutation, so the structure-aware ones never stop the
  // fuzzer from reaching what they do not model.
  if rng.below(4) == 0 {
    return LLVMFuzzerMutate(data, size, maxSize)
  }
  mutate(&bytes, maxSize, &rng)
  if bytes.count > maxSize { bytes.removeLast(bytes.count - maxSize) }
  bytes.withUnsafeBufferPointer { src in
    if let base = src.baseAddress { data.update(from: base, count: src.count) }
  }
  return bytes.count
}

/// The mutators' random choices, seeded by libFuzzer so that runs reproduce.
struct MutationRandom {
  var generator: SeededGenerator

  init(seed: UInt64) { generator = SeededGenerator(seed: seed) }

  mutating func next() -> UInt64 { generator.next() }

  /// Uniform in 0..<n (n > 0).
  mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }

  /// Values that sit on the edges sizes and counts are checked against.
  mutating func interesting() -> UInt64 {
    let edges: [UInt64] = [
      0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFF_FFFF, 0x8000_0000,
      0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF,
      40_000_000, 40_000_001, 150_000, 65_500, 65_535, 1_000_000, 1_000_001,
    ]
    return below(3) == 0 ? next() >> UInt64(below(64)) : edges[below(edges.count)]
  }

  /// Duplicates, removes or swaps (`op` 0, 1, 2) the element at `k` of a non-empty list.
  mutating func edit<T>(_ list: inout [T], at k: Int, _ op: Int) {
    switch op {
    case 0: list.insert(list[k], at: k)
    case 1: list.remove(at: k)
    default: list.swapAt(k, below(list.count))
    }
  }

  /// libFuzzer's byte mutations on `bytes`, grown to at most `maxSize`.
  mutating func mutateBytes(_ bytes: inout [UInt8], maxSize: Int) {
    let room = max(1, bytes.count, min(maxSize, bytes.count + 64))
    var buffer = bytes + [UInt8](repeating: 0, count: room - bytes.count)
    let n = buffer.withUnsafeMutableBufferPointer { LLVMFuzzerMutate($0.baseAddress, bytes.count, room) }
    bytes = Array(buffer.prefix(n))
  }
}
