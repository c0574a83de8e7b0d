import Foundation

/// Hand-built PyTorch checkpoints, laid out the way `torch.save` writes them: the checkpoint
/// tests and the fuzzing harness's seeds (Fuzz/) both start from these bytes.

/// Builds protocol-2 pickles by hand, opcode by opcode.
public struct PickleBuilder {
  public var bytes: [UInt8] = [0x80, 0x02]

  public init() {}

  public mutating func str(_ s: String) {
    bytes.append(0x58)
    withUnsafeBytes(of: UInt32(s.utf8.count).littleEndian) { bytes += $0 }
    bytes += Array(s.utf8)
  }
  public mutating func int(_ n: Int) {
    bytes.append(0x4A)
    withUnsafeBytes(of: Int32(truncatingIfNeeded: n).littleEndian) { bytes += $0 }
  }
  /// Any 64-bit integer (LONG1 with 8 bytes).
  public mutating func long(_ n: Int) {
    bytes += [0x8A, 8]
    withUnsafeBytes(of: Int64(n).littleEndian) { bytes += $0 }
  }
  public mutating func global(_ module: String, _ name: String) {
    bytes += [0x63] + Array("\(module)\n\(name)\n".utf8)
  }
  public mutating func ints(_ xs: [Int]) {
    bytes.append(0x28)
    for x in xs { int(x) }
    bytes.append(0x74)
  }
  /// `_rebuild_tensor_v2(persid(('storage', Type, key, 'cpu', size[, None])), offset, size, stride, False, OrderedDict())`
  /// A legacy checkpoint's view is `(root key, element offset, element count)` in place of None.
  public mutating func tensor(
    type: String, key: String, storageSize: Int, offset: Int, size: [Int], stride: [Int], legacy: Bool,
    view: (offset: Int, count: Int)? = nil
  ) {
    global("torch._utils", "_rebuild_tensor_v2")
    bytes.append(0x28)  // MARK args
    bytes.append(0x28)  // MARK pid
    str("storage")
    global("torch", type)
    str(key)
    str("cpu")
    int(storageSize)
    if let view {
      bytes.append(0x28)
      str(key)
      long(view.offset)
      long(view.count)
      bytes.append(0x74)
    } else if legacy {
      bytes.append(0x4E)
    }
    bytes.append(0x74)  // TUPLE
    bytes.append(0x51)  // BINPERSID
    int(offset)
    ints(size)
    ints(stride)
    bytes.append(0x89)  // False
    global("collections", "OrderedDict")
    bytes.append(0x29)
    bytes.append(0x52)
    bytes.append(0x74)  // TUPLE args
    bytes.append(0x52)  // REDUCE
  }
  public mutating func stop() { bytes.append(0x2E) }

  /// A whole state_dict pickle as a zip checkpoint holds it: a dict (or an `OrderedDict()`) of
  /// `name → _rebuild_tensor_v2(...)`, each over its storage of `storageSize` elements.
  public static func stateDict(
    _ tensors: [(tensor: CheckpointTensor, storageSize: Int)], orderedDict: Bool = false
  ) -> [UInt8] {
    var p = PickleBuilder()
    if orderedDict {
      p.global("collections", "OrderedDict")
      p.bytes += [0x29, 0x52]
    } else {
      p.bytes.append(0x7D)
    }
    for (t, n) in tensors {
      p.str(t.name)
      p.tensor(
        type: t.type, key: t.key, storageSize: n, offset: t.offset, size: t.size, stride: t.stride, legacy: false)
      p.bytes.append(0x73)
    }
    p.stop()
    return p.bytes
  }
}

/// One tensor of a hand-built checkpoint: a view of storage `key`.
public struct CheckpointTensor {
  public var name: String
  public var type: String
  public var key: String
  public var offset: Int
  public var size: [Int]
  public var stride: [Int]

  public init(name: String, type: String, key: String, offset: Int, size: [Int], stride: [Int]) {
    self.name = name
    self.type = type
    self.key = key
    self.offset = offset
    self.size = size
    self.stride = stride
  }
}

/// A legacy-format checkpoint: `storages` maps key → (element count, raw bytes).
public func legacyCheckpoint(_ tensors: [CheckpointTensor], storages: [(String, Int, [UInt8])]) -> [UInt8] {
  var out: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E]
  out += [0x80, 0x02, 0x4D, 0xE9, 0x03, 0x2E]
  var sys = PickleBuilder()
  sys.bytes.append(0x7D)
  sys.str("little_endian")
  sys.bytes.append(0x88)
  sys.bytes.append(0x73)
  sys.stop()
  out += sys.bytes
  var main = PickleBuilder()
  main.global("collections", "OrderedDict")
  main.bytes += [0x29, 0x52]
  for t in tensors {
    let count = storages.first { $0.0 == t.key }?.1 ?? 0
    main.str(t.name)
    main.tensor(
      type: t.type, key: t.key, storageSize: count, offset: t.offset, size: t.size, stride: t.stride, legacy: true)
    main.bytes.append(0x73)
  }
  main.stop()
  out += main.bytes
  var keys = PickleBuilder()
  keys.bytes.append(0x28)
  for s in storages { keys.str(s.0) }
  keys.bytes.append(0x6C)
  keys.stop()
  out += keys.bytes
  for (_, n, data) in storages {
    withUnsafeBytes(of: UInt64(n).littleEndian) { out += $0 }
    out += data
  }
  return out
}

/// Little-endian float32 bytes.
public func floatBytes(_ xs: [Float]) -> [UInt8] {
  var out: [UInt8] = []
  for x in xs { withUnsafeBytes(of: x.bitPattern.littleEndian) { out += $0 } }
  return out
}

/// A zip archive of STORED entries, as torch.save writes (CRCs left zero: not checked here).
public func storedZip(_ files: [(String, [UInt8])]) -> [UInt8] {
  var out: [UInt8] = []
  var central: [UInt8] = []
  func u16(_ v: Int, _ a: inout [UInt8]) { withUnsafeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian) { a += $0 } }
  func u32(_ v: Int, _ a: inout [UInt8]) { withUnsafeBytes(of: UInt32(truncatingIfNeeded: v).littleEndian) { a += $0 } }
  for (name, data) in files {
    let offset = out.count
    let n = Array(name.utf8)
    u32(0x0403_4B50, &out)
    for v in [20, 0, 0, 0, 0] { u16(v, &out) }
    u32(0, &out)
    u32(data.count, &out)
    u32(data.count, &out)
    u16(n.count, &out)
    u16(0, &out)
    out += n + data
    u32(0x0201_4B50, &central)
    for v in [20, 20, 0, 0, 0, 0] { u16(v, &central) }
    u32(0, &central)
    u32(data.count, &central)
    u32(data.count, &central)
    for v in [n.count, 0, 0, 0, 0] { u16(v, &central) }
    u32(0, &central)
    u32(offset, &central)
    central += n
  }
  let cdOffset = out.count
  out += central
  u32(0x0605_4B50, &out)
  for v in [0, 0, files.count, files.count] { u16(v, &out) }
  u32(central.count, &out)
  u32(cdOffset, &out)
  u16(0, &out)
  return out
}
