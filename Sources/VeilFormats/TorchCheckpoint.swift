import Foundation
import VeilTensor

/// PyTorch checkpoints (`torch.save` of a state_dict) to `Tensor`s, without PyTorch and without
/// executing anything: the pickle is interpreted by `Unpickler` with a whitelist of globals.
///
/// Both layouts are read: the zip archive (`<name>/data.pkl` plus one STORED entry
/// `<name>/data/<key>` per storage) and the legacy stream (magic number, protocol version,
/// system info, main pickle, storage key list, then each storage as an 8-byte element count and
/// raw little-endian data). Storage offsets and strides are honoured (views are materialized
/// contiguous). float32 is taken as is; float16, bfloat16, float64, int64 and int32 are converted
/// to Float. Every size is checked against the file before anything is allocated.
public enum TorchCheckpoint {
  /// The state_dict's tensors by key.
  public static func read(_ url: URL) throws -> [String: Tensor] {
    Dictionary(try readOrdered(url).map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
  }

  /// The state_dict's tensors in file order.
  public static func readOrdered(_ url: URL) throws -> [(name: String, tensor: Tensor)] {
    try decode(FileIO.read(url), source: "torch checkpoint '\(url.path)'")
  }

  /// Decodes a checkpoint held in memory.
  public static func decode(_ bytes: [UInt8], source: String = "torch checkpoint") throws -> [(
    name: String, tensor: Tensor
  )] {
    if bytes.count >= 4, bytes[0] == 0x50, bytes[1] == 0x4B, bytes[2] == 0x03, bytes[3] == 0x04 {
      return try decodeZip(bytes, source: source)
    }
    return try decodeLegacy(bytes, source: source)
  }

  // MARK: - Storages

  enum DType: String {
    case float32 = "FloatStorage", float16 = "HalfStorage", bfloat16 = "BFloat16Storage"
    case float64 = "DoubleStorage", int64 = "LongStorage", int32 = "IntStorage"

    var size: Int {
      switch self {
      case .float16, .bfloat16: return 2
      case .float32, .int32: return 4
      case .float64, .int64: return 8
      }
    }
  }

  /// The most elements a tensor may have beyond its storage's element count (stride-0 views).
  public static let maxExpandedElements = 1 << 24

  /// A storage: `count` elements of `dtype` at `bytes[start...]`.
  struct Storage {
    var dtype: DType
    var start: Int
    var count: Int
  }

  /// What a persistent id names: a storage key, its dtype, its element count, and (legacy views)
  /// an element offset into the root storage.
  struct StorageRef {
    var key: String
    var dtype: DType
    var count: Int
    var viewOffset: Int
    var at: Int
  }

  static func storageRef(_ doc: PickleDocument, _ index: Int, source: String) throws -> StorageRef {
    let pid = doc.persistentIDs[index]
    let at = doc.endOffset
    guard let t = doc.sequence(pid), t.count == 5 || t.count == 6, t[0] == .string("storage") else {
      throw FormatError.malformed(
        format: source, offset: at, detail: "persistent id is not ('storage', type, key, location, size[, view])")
    }
    guard case .global(_, let typeName) = t[1], let dtype = DType(rawValue: typeName) else {
      throw FormatError.unsupported(format: source, detail: "storage type \(t[1])")
    }
    guard case .string(let key) = t[2], case .int(let count) = t[4], count >= 0 else {
      throw FormatError.malformed(format: source, offset: at, detail: "storage key or size has the wrong type")
    }
    var ref = StorageRef(key: key, dtype: dtype, count: count, viewOffset: 0, at: at)
    if t.count == 6, let view = doc.sequence(t[5]) {
      guard view.count == 3, case .int(let off) = view[1], case .int(let size) = view[2], off >= 0, size >= 0
      else { throw FormatError.malformed(format: source, offset: at, detail: "storage view metadata is malformed") }
      ref.viewOffset = off
      ref.count = size
    }
    guard ref.count <= Int.max - ref.viewOffset else {
      throw FormatError.malformed(
        format: source, offset: at, detail: "storage '\(key)' view offset \(ref.viewOffset) + size \(ref.count) overflows")
    }
    return ref
  }

  // MARK: - Tensors from the pickle

  /// Walks the root object (a state_dict, or a dict holding one under "state_dict"/"model") and
  /// turns every `_rebuild_tensor_v2` call into a Tensor, reading storages with `storage`.
  static func tensors(
    _ doc: PickleDocument, bytes: [UInt8], source: String, storage: (StorageRef) throws -> Storage
  ) throws -> [(name: String, tensor: Tensor)] {
    guard var entries = doc.entries(doc.root) else {
      throw FormatError.unsupported(format: source, detail: "the checkpoint's root object is not a dict")
    }
    for wrapper in ["state_dict", "model"] {
      if !entries.contains(where: { isTensor(doc, $0.value) }),
        let inner = entries.first(where: { $0.key == .string(wrapper) }), let e = doc.entries(inner.value)
      {
        entries = e
      }
    }
    var out: [(name: String, tensor: Tensor)] = []
    for (k, v) in entries {
      guard case .string(let name) = k, isTensor(doc, v) else { continue }
      out.append((name, try tensor(doc, v, bytes: bytes, source: source, storage: storage)))
    }
    return out
  }

  static func isTensor(_ doc: PickleDocument, _ v: PickleValue) -> Bool {
    guard case .call(let c) = v else { return false }
    return doc.calls[c].module == "torch._utils"
      && (doc.calls[c].name == "_rebuild_tensor_v2" || doc.calls[c].name == "_rebuild_parameter")
  }

  static func tensor(
    _ doc: PickleDocument, _ v: PickleValue, bytes: [UInt8], source: String,
    storage: (StorageRef) throws -> Storage, depth: Int = 0
  ) throws -> Tensor {
    let at = doc.endOffset
    func bad(_ detail: String) -> FormatError { .malformed(format: source, offset: at, detail: detail) }
    guard case .call(let c) = v, depth < 4, let args = doc.sequence(doc.calls[c].args) else {
      throw bad("tensor is not a _rebuild_tensor_v2 call")
    }
    if doc.calls[c].name == "_rebuild_parameter" {
      guard let data = args.first else { throw bad("_rebuild_parameter without data") }
      return try tensor(doc, data, bytes: bytes, source: source, storage: storage, depth: depth + 1)
    }
    guard args.count >= 4, case .persistent(let p) = args[0], case .int(let offset) = args[1],
      let sizeV = doc.sequence(args[2]), let strideV = doc.sequence(args[3])
    else { throw bad("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ...)") }
    var shape: [Int] = []
    var strides: [Int] = []
    for s in sizeV {
      guard case .int(let n) = s, n >= 0 else { throw bad("tensor size \(s) is not a non-negative int") }
      shape.append(n)
    }
    for s in strideV {
      guard case .int(let n) = s, n >= 0 else { throw bad("tensor stride \(s) is not a non-negative int") }
      strides.append(n)
    }
    guard shape.count == strides.count, offset >= 0 else { throw bad("size/stride ranks differ or offset < 0") }
    let count: Int
    do { count = try FormatLimits.elementCount(shape) } catch { throw bad("tensor size \(shape) \(error.detail)") }
    let ref = try storageRef(doc, p, source: source)
    let st = try storage(ref)
    // A view cannot hold more elements than its storage unless strides repeat elements (an
    // expanded tensor); bound those, or a few pickle bytes over a one-element storage would
    // ask for any amount of memory.
    guard count <= max(ref.count, Self.maxExpandedElements) else {
      throw bad(
        "tensor size \(shape) with strides \(strides) has \(count) elements from a \(ref.count)-element storage; "
          + "Veil reads repeated (expanded) views of at most \(Self.maxExpandedElements) elements: save t.contiguous()")
    }
    // The largest element index, overflow-checked.
    var last = offset
    for (n, s) in zip(shape, strides) {
      if n > 0 {
        let (d, o2) = (n - 1).multipliedReportingOverflow(by: s)
        let (l, o3) = last.addingReportingOverflow(d)
        guard !o2, !o3 else { throw bad("tensor strides \(strides) overflow") }
        last = l
      }
    }
    if count > 0 {
      guard last < ref.count else {
        throw bad("tensor \(shape) stride \(strides) offset \(offset) reaches element \(last) of a \(ref.count)-element storage")
      }
    }
    let base = st.start + ref.viewOffset * st.dtype.size
    let dtype = st.dtype
    return bytes.withUnsafeBytes { raw in
      Tensor(shape: shape) { out in
        guard count > 0 else { return }
        func element(_ i: Int) -> Float {
          let p = base + i * dtype.size
          switch dtype {
          case .float32: return Float(bitPattern: raw.loadUnaligned(fromByteOffset: p, as: UInt32.self).littleEndian)
          case .float16: return halfToFloat(raw.loadUnaligned(fromByteOffset: p, as: UInt16.self).littleEndian)
          case .bfloat16:
            return Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: p, as: UInt16.self).littleEndian) << 16)
          case .float64: return Float(Double(bitPattern: raw.loadUnaligned(fromByteOffset: p, as: UInt64.self).littleEndian))
          case .int64: return Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: p, as: Int64.self)))
          case .int32: return Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: p, as: Int32.self)))
          }
        }
        // Row-major walk of the output with a multi-index over the strided source.
        var src = StridedWalk(shape: shape, strides: strides, offset: offset)
        for o in 0..<count {
          out[o] = element(src.offset)
          src.advance()
        }
      }
    }
  }

  /// IEEE half → single, including subnormals, infinities and NaN.
  static func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = Int(h >> 10) & 0x1F
    let mant = UInt32(h & 0x3FF)
    if exp == 0 {
      let v = Float(mant) * Float(sign: .plus, exponent: -24, significand: 1)
      return sign != 0 ? -v : v
    }
    if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
    return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (mant << 13))
  }

  // MARK: - Legacy stream

  static let legacyMagic: [UInt8] = [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]

  static func decodeLegacy(_ bytes: [UInt8], source: String) throws -> [(name: String, tensor: Tensor)] {
    let unpickler = Unpickler(format: source)
    let magic = try unpickler.load(bytes, from: 0)
    guard magic.root == .bigInt(legacyMagic) else {
      throw FormatError.malformed(
        format: source, offset: 0, detail: "not a PyTorch checkpoint: neither a zip archive nor the legacy magic number")
    }
    let version = try unpickler.load(bytes, from: magic.endOffset)
    guard version.root == .int(1001) else {
      throw FormatError.unsupported(format: source, detail: "legacy protocol version \(version.root) (expected 1001)")
    }
    let sysInfo = try unpickler.load(bytes, from: version.endOffset)
    if let e = sysInfo.entries(sysInfo.root),
      let le = e.first(where: { $0.key == .string("little_endian") }), le.value == .bool(false)
    {
      throw FormatError.unsupported(format: source, detail: "big-endian checkpoint")
    }
    let main = try unpickler.load(bytes, from: sysInfo.endOffset)
    let keysDoc = try unpickler.load(bytes, from: main.endOffset)
    guard let keyValues = keysDoc.sequence(keysDoc.root) else {
      throw FormatError.malformed(format: source, offset: main.endOffset, detail: "storage key list is not a list")
    }
    // The element type and size of each storage, from the persistent ids of the main pickle.
    var dtypes: [String: (DType, Int)] = [:]
    for i in main.persistentIDs.indices {
      let ref = try storageRef(main, i, source: source)
      dtypes[ref.key] = (ref.dtype, ref.count + ref.viewOffset)
    }
    var storages: [String: Storage] = [:]
    var pos = keysDoc.endOffset
    for kv in keyValues {
      guard case .string(let key) = kv else {
        throw FormatError.malformed(format: source, offset: main.endOffset, detail: "storage key \(kv) is not a string")
      }
      guard let (dtype, _) = dtypes[key] else {
        throw FormatError.malformed(format: source, offset: pos, detail: "storage '\(key)' is not used by the pickle")
      }
      guard bytes.count - pos >= 8 else {
        throw FormatError.truncated(format: source, offset: pos, detail: "storage '\(key)' element count")
      }
      var n: UInt64 = 0
      for i in 0..<8 { n |= UInt64(bytes[pos + i]) << (8 * UInt64(i)) }
      pos += 8
      let left = bytes.count - pos
      guard n <= UInt64(left / dtype.size) else {
        throw FormatError.truncated(
          format: source, offset: pos, detail: "storage '\(key)' of \(n) \(dtype) element(s) needs more than the \(left) byte(s) left")
      }
      storages[key] = Storage(dtype: dtype, start: pos, count: Int(n))
      pos += Int(n) * dtype.size
    }
    return try tensors(main, bytes: bytes, source: source) { ref in
      guard let st = storages[ref.key] else {
        throw FormatError.malformed(format: source, offset: ref.at, detail: "storage '\(ref.key)' has no data")
      }
      guard ref.viewOffset + ref.count <= st.count else {
        throw FormatError.malformed(
          format: source, offset: st.start, detail: "storage '\(ref.key)' holds \(st.count) element(s), the pickle needs \(ref.viewOffset + ref.count)")
      }
      return st
    }
  }

  // MARK: - Zip archive

  static func decodeZip(_ bytes: [UInt8], source: String) throws -> [(name: String, tensor: Tensor)] {
    let entries = try ZipStore.entries(bytes, source: source)
    guard let pkl = entries.keys.filter({ $0 == "data.pkl" || $0.hasSuffix("/data.pkl") }).min(by: { $0.count < $1.count }),
      let pklRange = entries[pkl]
    else { throw FormatError.malformed(format: source, offset: 0, detail: "zip archive has no data.pkl") }
    let prefix = String(pkl.dropLast("data.pkl".count))
    if let bo = entries[prefix + "byteorder"], String(decoding: bytes[bo], as: UTF8.self) == "big" {
      throw FormatError.unsupported(format: source, detail: "big-endian checkpoint")
    }
    let doc = try Unpickler(format: source).load(Array(bytes[pklRange]))
    return try tensors(doc, bytes: bytes, source: source) { ref in
      guard let range = entries[prefix + "data/" + ref.key] else {
        throw FormatError.malformed(format: source, offset: 0, detail: "zip archive has no storage '\(prefix)data/\(ref.key)'")
      }
      let n = range.count / ref.dtype.size
      guard ref.viewOffset + ref.count <= n else {
        throw FormatError.malformed(
          format: source, offset: range.lowerBound,
          detail: "storage '\(ref.key)' holds \(n) element(s), the pickle needs \(ref.viewOffset + ref.count)")
      }
      return Storage(dtype: ref.dtype, start: range.lowerBound, count: n)
    }
  }
}

/// A reader for STORED (uncompressed) zip entries, as `torch.save` writes them: the central
/// directory gives each entry's local header, whose data range is checked against the file.
enum ZipStore {
  static func entries(_ b: [UInt8], source: String) throws -> [String: Range<Int>] {
    func u16(_ p: Int) -> Int { Int(b[p]) | Int(b[p + 1]) << 8 }
    func u32(_ p: Int) -> Int { u16(p) | u16(p + 2) << 16 }
    func u64(_ p: Int) -> UInt64 { UInt64(u32(p)) | UInt64(u32(p + 4)) << 32 }
    func bad(_ at: Int, _ d: String) -> FormatError { .malformed(format: source, offset: at, detail: d) }
    // End of central directory: the last signature within the final 64 KiB + 22 bytes.
    guard b.count >= 22 else { throw FormatError.truncated(format: source, offset: b.count, detail: "zip end record") }
    var eocd = -1
    var p = b.count - 22
    while p >= max(0, b.count - 22 - 65535) {
      if b[p] == 0x50, b[p + 1] == 0x4B, b[p + 2] == 0x05, b[p + 3] == 0x06 {
        eocd = p
        break
      }
      p -= 1
    }
    guard eocd >= 0 else {
      throw FormatError.truncated(format: source, offset: b.count, detail: "no zip end-of-central-directory record")
    }
    var total = u16(eocd + 10)
    var cdSize = UInt64(u32(eocd + 12))
    var cdOffset = UInt64(u32(eocd + 16))
    // Zip64 end record, located by the zip64 locator just before the end record.
    if eocd >= 20, u32(eocd - 20) == 0x0706_4B50 {
      let z = u64(eocd - 20 + 8)
      guard b.count >= 56, z <= UInt64(b.count - 56), u32(Int(z)) == 0x0606_4B50 else { throw bad(eocd - 20, "bad zip64 locator") }
      let zi = Int(z)
      let t = u64(zi + 32)
      guard t <= UInt64(b.count) else { throw bad(zi, "zip64 entry count \(t) exceeds the file") }
      total = Int(t)
      cdSize = u64(zi + 40)
      cdOffset = u64(zi + 48)
    }
    guard cdOffset <= UInt64(b.count), cdSize <= UInt64(b.count) - cdOffset else {
      throw FormatError.truncated(format: source, offset: b.count, detail: "zip central directory at \(cdOffset)+\(cdSize)")
    }
    var out: [String: Range<Int>] = [:]
    var c = Int(cdOffset)
    let cdEnd = Int(cdOffset + cdSize)
    for _ in 0..<total {
      guard cdEnd - c >= 46, u32(c) == 0x0201_4B50 else { throw bad(c, "bad zip central directory entry") }
      let method = u16(c + 10)
      var size = UInt64(u32(c + 24))
      let usize = UInt64(u32(c + 24))
      let compressed = UInt64(u32(c + 20))
      let nameLen = u16(c + 28)
      let extraLen = u16(c + 30)
      let commentLen = u16(c + 32)
      var local = UInt64(u32(c + 42))
      guard cdEnd - c - 46 >= nameLen + extraLen + commentLen else { throw bad(c, "zip central entry overruns") }
      let name = String(decoding: b[(c + 46)..<(c + 46 + nameLen)], as: UTF8.self)
      // Zip64 extended information: the 0xFFFFFFFF fields, in order, as 8-byte values.
      var e = c + 46 + nameLen
      let eEnd = e + extraLen
      while eEnd - e >= 4 {
        let id = u16(e)
        let len = u16(e + 2)
        guard eEnd - e - 4 >= len else { throw bad(e, "zip extra field overruns") }
        if id == 0x0001 {
          var q = e + 4
          func next() throws -> UInt64 {
            guard e + 4 + len - q >= 8 else { throw bad(q, "short zip64 extra field") }
            defer { q += 8 }
            return u64(q)
          }
          if usize == 0xFFFF_FFFF { size = try next() }
          if compressed == 0xFFFF_FFFF { _ = try next() }
          if local == 0xFFFF_FFFF { local = try next() }
        }
        e += 4 + len
      }
      c = eEnd + commentLen
      guard method == 0 else {
        throw FormatError.unsupported(format: source, detail: "zip entry '\(name)' is compressed (method \(method))")
      }
      guard local <= UInt64(b.count - 30), u32(Int(local)) == 0x0403_4B50 else {
        throw bad(Int(min(local, UInt64(b.count))), "bad zip local header for '\(name)'")
      }
      let l = Int(local)
      let start = l + 30 + u16(l + 26) + u16(l + 28)
      guard start <= b.count, size <= UInt64(b.count - start) else {
        throw FormatError.truncated(format: source, offset: min(start, b.count), detail: "zip entry '\(name)' of \(size) byte(s)")
      }
      out[name] = start..<(start + Int(size))
    }
    return out
  }
}
