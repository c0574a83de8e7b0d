import CDNNL

/// A oneDNN memory descriptor as a `Layout` token: the arrangement a primitive chose. Layouts
/// whose descriptor is the plain row-major one carry no token, so they compare equal to
/// `Layout.plain` and to another backend's plain layouts.
struct DNNLLayout: LayoutToken, @unchecked Sendable {
  let md: dnnl_memory_desc_t

  var byteCount: Int {
    var m = md
    return Int(veil_md_size(&m))
  }

  var isRowMajor: Bool {
    var m = md
    return veil_md_is_plain(&m) != 0
  }

  var batchIsOutermost: Bool {
    var m = md
    return veil_md_batch_outer(&m) != 0
  }

  func matching(_ dims: [Int]) -> Layout? {
    var out = dnnl_memory_desc_t()
    var ref = md
    let d = dims.map { Int64($0) }
    guard d.withUnsafeBufferPointer({ veil_md_like(&out, &ref, $0.baseAddress) }) == dnnl_success else { return nil }
    return Layout(md: out)
  }

  func isEqual(to other: any LayoutToken) -> Bool {
    guard let o = other as? DNNLLayout else { return false }
    var x = md
    var y = o.md
    return veil_md_equal(&x, &y) != 0
  }

  var description: String {
    var m = md
    var buf = [CChar](repeating: 0, count: 256)
    buf.withUnsafeMutableBufferPointer { veil_md_describe(&m, $0.baseAddress, 256) }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  static func plainMD(_ dims: [Int]) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    _ = d.withUnsafeBufferPointer { veil_md_plain(&md, Int32(dims.count), $0.baseAddress) }
    return md
  }

  /// Dense, in the layout a oneDNN format tag names (nChw16c: `dnnl_aBcd16b`).
  static func taggedMD(_ dims: [Int], _ tag: dnnl_format_tag_t) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    _ = d.withUnsafeBufferPointer { veil_md_tag(&md, Int32(dims.count), $0.baseAddress, tag) }
    return md
  }

  /// Format `any`: the primitive picks the layout.
  static func anyMD(_ dims: [Int]) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    _ = d.withUnsafeBufferPointer { veil_md_any(&md, Int32(dims.count), $0.baseAddress) }
    return md
  }
}

extension Layout {
  /// The layout of a oneDNN descriptor; the plain row-major descriptor gives `.plain`.
  init(md: dnnl_memory_desc_t) {
    var m = md
    let n = Int(veil_md_ndims(&m))
    var out = [Int64](repeating: 0, count: max(n, 1))
    out.withUnsafeMutableBufferPointer { veil_md_dims(&m, $0.baseAddress) }
    let dims = out.prefix(n).map { Int($0) }
    var plain = DNNLLayout.plainMD(dims)
    self.init(dims: dims, token: veil_md_equal(&m, &plain) != 0 ? nil : DNNLLayout(md: md))
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

  /// The oneDNN descriptor of this layout; throws for another backend's token.
  func dnnlMD() throws -> dnnl_memory_desc_t {
    guard let token else { return DNNLLayout.plainMD(dims) }
    guard let t = token as? DNNLLayout else {
      throw TensorError.invalidArgument("layout \(self) was made by another backend, not oneDNN")
    }
    return t.md
  }
}
