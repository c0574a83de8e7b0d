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
