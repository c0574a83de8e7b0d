import Foundation

/// The JSON of Veil's own files (results, plans, sweeps, checkpoint metadata): pretty, keys
/// sorted, slashes as they are, and the non-finite numbers statistics produce (an unknown
/// bound is infinite) written as the strings "inf", "-inf" and "nan", read back the same way.
public enum VeilJSON {
  public static func encoder() -> JSONEncoder {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    return e
  }

  public static func decoder() -> JSONDecoder {
    let d = JSONDecoder()
    d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    return d
  }
}

/// `s` as a double-quoted literal of JSON or YAML (which share the form): `"` and `\` always
/// escaped, the scalars of `named` written as their one-letter escapes (`"\n": "n"`), and any
/// other scalar escaped as `numeric` writes it, or kept where it returns nil.
func doubleQuotedLiteral(
  _ s: String, named: [Unicode.Scalar: String], numeric: (Unicode.Scalar) -> String?
) -> String {
  var out = "\""
  for u in s.unicodeScalars {
    if u == "\"" || u == "\\" {
      out += "\\" + String(u)
    } else if let letter = named[u] {
      out += "\\" + letter
    } else if let escaped = numeric(u) {
      out += escaped
    } else {
      out.unicodeScalars.append(u)
    }
  }
  return out + "\""
}
