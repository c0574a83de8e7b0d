import Foundation

/// A YAML document as Veil writes them (Kubernetes objects, Compose files): block style, keys in
/// the order given, and every scalar quoted wherever YAML 1.1 or 1.2 could read it as something
/// other than the string it is (`yes`, `on`, `1.0`, `0x1F`, `~`, a leading `*` or `-`, a `: `
/// inside). Multi-line strings are written as literal blocks (`|`), or double-quoted where a
/// block cannot carry them exactly (leading spaces, control characters).
public indirect enum YAMLNode: Sendable, Equatable {
  case string(String)
  case int(Int)
  case bool(Bool)
  case list([YAMLNode])
  /// Keys in order; a key may carry a comment, written on the lines above it.
  case map([YAMLEntry])

  /// A map from `(key, value)` pairs in order.
  public static func object(_ entries: [(String, YAMLNode)]) -> YAMLNode {
    .map(entries.map { YAMLEntry($0.0, $0.1) })
  }
}

public struct YAMLEntry: Sendable, Equatable {
  public var key: String
  public var value: YAMLNode
  /// Written as `# ...` lines above the key.
  public var comment: String?
  public init(_ key: String, _ value: YAMLNode, comment: String? = nil) {
    self.key = key
    self.value = value
    self.comment = comment
  }
}

extension YAMLNode: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
  public init(stringLiteral value: String) { self = .string(value) }
  public init(integerLiteral value: Int) { self = .int(value) }
  public init(booleanLiteral value: Bool) { self = .bool(value) }
}

public enum YAMLWriter {
  /// One or more documents, each opened by `---`, with `header` as comment lines on top.
  public static func documents(_ docs: [YAMLNode], header: String? = nil) -> String {
    var out = header.map { comment($0, indent: "") } ?? ""
    for d in docs {
      out += "---\n"
      out += block(d, indent: "")
    }
    return out
  }

  static func comment(_ text: String, indent: String) -> String {
    text.split(separator: "\n", omittingEmptySubsequences: false).map { "\(indent)# \($0)\n" }.joined()
  }

  /// A node at the start of a line, indented by `indent`.
  static func block(_ node: YAMLNode, indent: String) -> String {
    switch node {
    case .map(let entries) where !entries.isEmpty:
      var out = ""
      for e in entries {
        if let c = e.comment { out += comment(c, indent: indent) }
        out += indent + scalar(e.key, indent: indent) + ":" + afterKey(e.value, indent: indent)
      }
      return out
    case .list(let items) where !items.isEmpty:
      var out = ""
      for item in items {
        switch item {
        case .map(var entries) where !entries.isEmpty:
          // The first key on the dash's line (its comment above the dash), the rest under it.
          if let c = entries[0].comment { out += comment(c, indent: indent) }
          entries[0].comment = nil
          let inner = block(.map(entries), indent: indent + "  ")
          out += indent + "- " + inner.dropFirst(indent.count + 2)
        case .list(let l) where !l.isEmpty:
          out += indent + "-\n" + block(item, indent: indent + "  ")
        default:
          out += indent + "- " + inline(item, indent: indent + "  ") + "\n"
        }
      }
      return out
    default:
      return indent + inline(node, indent: indent) + "\n"
    }
  }

  /// What follows `key:`: a scalar on the same line, or a nested block on the next lines.
  static func afterKey(_ value: YAMLNode, indent: String) -> String {
    switch value {
    case .map(let e) where !e.isEmpty: return "\n" + block(value, indent: indent + "  ")
    case .list(let l) where !l.isEmpty: return "\n" + block(value, indent: indent + "  ")
    default: return " " + inline(value, indent: indent + "  ") + "\n"
    }
  }

  /// A scalar or an empty collection; `indent` is where a literal block's lines go.
  static func inline(_ node: YAMLNode, indent: String) -> String {
    switch node {
    case .string(let s): return scalar(s, indent: indent, allowBlock: true)
    case .int(let i): return String(i)
    case .bool(let b): return b ? "true" : "false"
    case .list: return "[]"
    case .map: return "{}"
    }
  }

  /// Words YAML 1.1 (which many Kubernetes tools still follow) reads as booleans or null.
  static let reserved: Set<String> = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "",
  ]

  /// Whether `s` can stand unquoted and still read back as this string.
  static func isPlain(_ s: String) -> Bool {
    guard !reserved.contains(s.lowercased()) else { return false }
    guard let first = s.unicodeScalars.first else { return false }
    // Letters, digits and a few separators only; must not start like a number or an indicator.
    let allowed = s.unicodeScalars.allSatisfy { c in
      c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || "_-./".unicodeScalars.contains(c))
    }
    guard allowed, first.properties.isAlphabetic || first == "_" || first == "/" else { return false }
    // `.inf`, `.nan` start with '.', excluded above; hex, octal and floats start with a digit.
    return true
  }

  static func scalar(_ s: String, indent: String, allowBlock: Bool = false) -> String {
    if isPlain(s) { return s }
    if allowBlock, s.contains("\n"), let b = literalBlock(s, indent: indent) { return b }
    return doubleQuoted(s)
  }

  /// `|` (one trailing newline), `|-` (none) or `|+` (several), when every line can be kept as
  /// it is: printable characters and tabs only, no leading space on the first line.
  static func literalBlock(_ s: String, indent: String) -> String? {
    guard !s.hasPrefix(" "), !s.hasPrefix("\t"), !s.hasPrefix("\n"),
      s.unicodeScalars.allSatisfy({
        $0 == "\n" || $0 == "\t"
          || ($0.value >= 0x20 && $0.value != 0x7F && ![0x85, 0x2028, 0x2029, 0xFEFF].contains($0.value))
      }),
      // A line of blanks alone would read back as an empty line.
      !s.split(separator: "\n").contains(where: { !$0.isEmpty && $0.allSatisfy { $0 == " " || $0 == "\t" } })
    else { return nil }
    var body = Substring(s)
    var trailing = 0
    while body.hasSuffix("\n") {
      body = body.dropLast()
      trailing += 1
    }
    let chomp = trailing == 0 ? "-" : trailing == 1 ? "" : "+"
    var out = "|" + chomp
    for line in body.split(separator: "\n", omittingEmptySubsequences: false) {
      out += "\n" + (line.isEmpty ? "" : indent + line)
    }
    if trailing > 1 { out += String(repeating: "\n", count: trailing - 1) }
    return out
  }

  /// A double-quoted scalar: `"`, `\` and control characters escaped.
  static func doubleQuoted(_ s: String) -> String {
    doubleQuotedLiteral(s, named: ["\n": "n", "\t": "t"]) { c in
      if c.value < 0x20 || c.value == 0x7F { return String(format: "\\x%02X", c.value) }
      // YAML 1.1 line breaks (NEL, LS, PS) and the byte-order mark, escaped so they stay characters.
      if [0x85, 0x2028, 0x2029, 0xFEFF].contains(c.value) { return String(format: "\\u%04X", c.value) }
      return nil
    }
  }
}
