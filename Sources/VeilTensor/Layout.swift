/// How a tensor's elements sit in memory: its logical dimensions, plus, when they are not plain
/// row-major, the arrangement a backend chose (an 8-channel-blocked layout that oneDNN's
/// convolutions prefer, say), carried as that backend's opaque token. The graph layer reads
/// the dimensions, the byte size and whether the layout is plain, compares layouts, and hands
/// them back to the backend that made them; it never looks inside a token. A backend that
/// only computes on plain tensors never makes one.
public struct Layout: Sendable, Equatable, CustomStringConvertible {
  public let dims: [Int]
  /// The backend's arrangement; nil for plain row-major.
  public let token: (any LayoutToken)?

  /// A layout of `dims` in a backend's arrangement (nil: plain row-major).
  public init(dims: [Int], token: (any LayoutToken)?) {
    self.dims = dims
    self.token = token
  }

  /// The plain row-major layout of these dimensions.
  public static func plain(_ dims: [Int]) -> Layout { Layout(dims: dims, token: nil) }

  /// Bytes the layout occupies, padding included.
  public var byteCount: Int { token?.byteCount ?? dims.reduce(1, *) * MemoryLayout<Float>.stride }

  /// True when the bytes are those of the plain row-major layout.
  public var isPlain: Bool { token?.isRowMajor ?? true }

  /// True when N items of the batch are N equal consecutive slices (plain and most blocked
  /// layouts with the batch outermost).
  public var batchIsOutermost: Bool { token?.batchIsOutermost ?? true }

  /// `dims` in the same arrangement as this layout (dimension order, channel blocks), when
  /// there is one: how a broadcast operand is laid out to match a blocked tensor.
  public func matching(_ dims: [Int]) -> Layout? {
    guard dims.count == self.dims.count else { return nil }
    guard let token else { return .plain(dims) }
    return token.matching(dims)
  }

  public var description: String {
    token?.description ?? dims.map(String.init).joined(separator: "x") + " plain"
  }

  public static func == (a: Layout, b: Layout) -> Bool {
    guard a.dims == b.dims else { return false }
    switch (a.token, b.token) {
    case (nil, nil): return true
    case (let x?, let y?): return x.isEqual(to: y)
    default: return false
    }
  }
}

/// A backend's private description of a non-plain arrangement. Only the backend that made a
/// token reads it; the rest of Veil asks it these questions and nothing else.
public protocol LayoutToken: Sendable, CustomStringConvertible {
  /// Bytes a tensor takes in this arrangement, padding included.
  var byteCount: Int { get }
  /// True when the bytes are nonetheless those of the plain row-major layout.
  var isRowMajor: Bool { get }
  var batchIsOutermost: Bool { get }
  /// Other dimensions (same rank) in this arrangement, when the backend has one.
  func matching(_ dims: [Int]) -> Layout?
  /// Same arrangement; false for another backend's token.
  func isEqual(to other: any LayoutToken) -> Bool
}
