import CDNNL

/// How a tensor's elements sit in memory: its logical dimensions plus the backend's physical
/// arrangement (plain row-major, or a blocked layout such as 8-channel blocks that the
/// backend's convolutions prefer). The graph layer treats it as opaque: it reads the byte
/// size, the dimensions, and whether the layout is plain.
public struct Layout: @unchecked Sendable, Equatable, CustomStringConvertible {
  var md: dnnl_memory_desc_t

  init(md: dnnl_memory_desc_t) { self.md = md }

  /// The plain row-major layout of these dimensions.
  public static func plain(_ dims: [Int]) -> Layout {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    _ = d.withUnsafeBufferPointer { veil_md_plain(&md, Int32(dims.count), $0.baseAddress) }
    return Layout(md: md)
  }

  /// A layout with explicit element strides (for transposes).
  static func strided(_ dims: [Int], strides: [Int]) -> Layout {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    let s = strides.map { Int64($0) }
    _ = d.withUnsafeBufferPointer { dp in
      s.withUnsafeBufferPointer { veil_md_strided(&md, Int32(dims.count), dp.baseAddress, $0.baseAddress) }
    }
    return Layout(md: md)
  }

  /// `dims` in the same arrangement as this layout (dimension order, channel blocks), when
  /// there is one: how a broadcast operand is laid out to match a blocked tensor.
  public func matching(_ dims: [Int]) -> Layout? {
    var out = dnnl_memory_desc_t()
    var ref = md
    let d = dims.map { Int64($0) }
    guard dims.count == self.dims.count,
      d.withUnsafeBufferPointer({ veil_md_like(&out, &ref, $0.baseAddress) }) == dnnl_success
    else { return nil }
    return Layout(md: out)
  }

  static func any(_ dims: [Int]) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    _ = d.withUnsafeBufferPointer { veil_md_any(&md, Int32(dims.count), $0.baseAddress) }
    return md
  }

  public var dims: [Int] {
    var m = md
    let n = Int(veil_md_ndims(&m))
    var out = [Int64](repeating: 0, count: max(n, 1))
    out.withUnsafeMutableBufferPointer { veil_md_dims(&m, $0.baseAddress) }
    return out.prefix(n).map { Int($0) }
  }

  /// Bytes the layout occupies, padding included.
  public var byteCount: Int {
    var m = md
    return Int(veil_md_size(&m))
  }

  public var isPlain: Bool {
    var m = md
    return veil_md_is_plain(&m) != 0
  }

  /// True when N items of the batch are N equal consecutive slices (plain and most blocked
  /// layouts with the batch outermost).
  public var batchIsOutermost: Bool {
    var m = md
    return veil_md_batch_outer(&m) != 0
  }

  public var description: String {
    var m = md
    var buf = [CChar](repeating: 0, count: 256)
    buf.withUnsafeMutableBufferPointer { veil_md_describe(&m, $0.baseAddress, 256) }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  public static func == (a: Layout, b: Layout) -> Bool {
    var x = a.md
    var y = b.md
    return veil_md_equal(&x, &y) != 0
  }
}
