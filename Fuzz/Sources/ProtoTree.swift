import VeilTestSupport

// A protobuf message as a tree, for the structure-aware mutator of the onnx and protobuf
// targets.

/// A protobuf message as a tree: each field's number, wire type and value; length-delimited
/// values that parse as messages keep their children, so a mutation deep inside a model can
/// be written back with every enclosing length right.
struct ProtoField {
  var number: UInt64
  var wireType: UInt8
  /// Varint or fixed value.
  var scalar: UInt64 = 0
  /// Length-delimited payload when it is not (taken as) a message.
  var bytes: [UInt8] = []
  var children: [ProtoField]?
}

enum ProtoTree {
  static func varint(_ b: [UInt8], _ i: inout Int) -> UInt64? {
    var v: UInt64 = 0
    var shift: UInt64 = 0
    while i < b.count, shift < 64 {
      let x = b[i]
      i += 1
      v |= UInt64(x & 0x7F) << shift
      if x < 0x80 { return v }
      shift += 7
    }
    return nil
  }

  static func encodeVarint(_ v: UInt64) -> [UInt8] {
    var v = v
    var out: [UInt8] = []
    repeat {
      var x = UInt8(v & 0x7F)
      v >>= 7
      if v != 0 { x |= 0x80 }
      out.append(x)
    } while v != 0
    return out
  }

  /// The fields of `b`; nil when it is not a well-formed message. Nesting stops at `depth`.
  static func parse(_ b: [UInt8], depth: Int = 8) -> [ProtoField]? {
    var out: [ProtoField] = []
    var i = 0
    while i < b.count {
      guard let tag = varint(b, &i), tag >> 3 >= 1 else { return nil }
      var f = ProtoField(number: tag >> 3, wireType: UInt8(tag & 7))
      switch f.wireType {
      case 0:
        guard let v = varint(b, &i) else { return nil }
        f.scalar = v
      case 1:
        guard i + 8 <= b.count else { return nil }
        f.scalar = b[i..<(i + 8)].reversed().reduce(0) { $0 << 8 | UInt64($1) }
        i += 8
      case 5:
        guard i + 4 <= b.count else { return nil }
        f.scalar = b[i..<(i + 4)].reversed().reduce(0) { $0 << 8 | UInt64($1) }
        i += 4
      case 2:
        guard let n = varint(b, &i), n <= UInt64(b.count - i) else { return nil }
        f.bytes = Array(b[i..<(i + Int(n))])
        i += Int(n)
        if depth > 0, !f.bytes.isEmpty, let children = parse(f.bytes, depth: depth - 1) { f.children = children }
      default:
        return nil
      }
      out.append(f)
    }
    return out
  }

  static func serialize(_ fields: [ProtoField]) -> [UInt8] {
    var out: [UInt8] = []
    for f in fields {
      out += encodeVarint(f.number << 3 | UInt64(f.wireType))
      switch f.wireType {
      case 0: out += encodeVarint(f.scalar)
      case 1: out += le64(f.scalar)
      case 5: out += le32(UInt32(truncatingIfNeeded: f.scalar))
      default:
        let payload = f.children.map(serialize) ?? f.bytes
        out += encodeVarint(UInt64(payload.count)) + payload
      }
    }
    return out
  }

  /// Every field of the tree, as an index path (for picking one at random).
  static func paths(_ fields: [ProtoField], prefix: [Int] = []) -> [[Int]] {
    var out: [[Int]] = []
    for (k, f) in fields.enumerated() {
      out.append(prefix + [k])
      if let c = f.children { out += paths(c, prefix: prefix + [k]) }
    }
    return out
  }

  /// Applies `change` to the list that holds the field at `path` (with the field's index).
  static func modify(_ fields: inout [ProtoField], at path: [Int], _ change: (inout [ProtoField], Int) -> Void) {
    guard let first = path.first, first < fields.count else { return }
    if path.count == 1 {
      change(&fields, first)
    } else if var c = fields[first].children {
      modify(&c, at: Array(path.dropFirst()), change)
      fields[first].children = c
    }
  }
}
