/// VeilTEE: the trust path between a client and the enclave that runs a model's head.
///
/// It owns the attestation evidence formats (SGX DCAP quote v3, TDX quote v4/v5, SEV-SNP report
/// with its certificate table), the providers that obtain evidence (Gramine's
/// `/dev/attestation`, Linux configfs-tsm, and a clearly labelled simulation), DCAP verification
/// against Intel's collateral, SEV-SNP verification up to AMD's pinned root keys (with its own
/// reader of AMD's RSASSA-PSS certificates, `AMDCertificates.swift`), the verification policy,
/// the verdict it checks (`Verdict`: named checks, each with its evidence), the attested
/// encrypted channel, sealed model heads with their key request and reply, secret files (keys
/// written owner-only), the Gramine manifest, and the TEE cost model (`TEEPreset`,
/// `TEECostModel`: what a head would cost in an SGX enclave or a confidential VM, modeled from
/// native timings and the memory it touches; CostModel.swift).
///
/// It must not depend on the engine (tensor, graph, formats), nor on serving or planning code:
/// those layers call into it with bytes, never the other way round.
import Foundation

/// Every error this module raises, each with the context a user needs to act on it.
public enum TEEError: Error, CustomStringConvertible, Equatable, Sendable {
  /// The data ends before `field` is complete: it needs `needed` bytes at `offset`, `available` remain.
  case truncated(structure: String, field: String, offset: Int, needed: Int, available: Int)
  /// A field holds a value its format does not allow.
  case unexpectedValue(structure: String, field: String, offset: Int, expected: String, found: String)
  /// More bytes than the structure may hold.
  case oversized(structure: String, size: Int, limit: Int)
  /// Collateral (TCB info, QE identity, CRLs, issuer chains) that cannot be used.
  case collateral(field: String, detail: String)
  /// A certificate that cannot be parsed or does not chain: `index` counts from the leaf (0).
  case certificate(chain: String, index: Int, detail: String)
  /// A policy file or value that cannot be used.
  case policy(key: String, detail: String)
  /// An evidence provider that could not produce evidence.
  case provider(mode: String, path: String, detail: String)
  /// The attested channel was closed because of this; every later call fails.
  case channel(detail: String)
  /// A sealed head that cannot be opened or written.
  case sealed(offset: Int, detail: String)
  /// A file that cannot be read or written.
  case io(path: String, detail: String)
  /// An argument outside what the operation accepts.
  case invalidArgument(name: String, detail: String)

  public var description: String {
    switch self {
    case .truncated(let s, let f, let o, let n, let a):
      return "\(s): '\(f)' needs \(n) bytes at byte \(o), only \(a) remain (truncated)"
    case .unexpectedValue(let s, let f, let o, let e, let found):
      return "\(s): '\(f)' at byte \(o): expected \(e), found \(found)"
    case .oversized(let s, let size, let limit):
      return "\(s): \(size) bytes, more than the limit of \(limit)"
    case .collateral(let f, let d): return "collateral '\(f)': \(d)"
    case .certificate(let c, let i, let d): return "\(c), certificate \(i) (0 = leaf): \(d)"
    case .policy(let k, let d): return "policy '\(k)': \(d)"
    case .provider(let m, let p, let d): return "evidence provider \(m) (\(p)): \(d)"
    case .channel(let d): return "attested channel closed: \(d)"
    case .sealed(let o, let d): return "sealed head, byte \(o): \(d)"
    case .io(let p, let d): return "\(p): \(d)"
    case .invalidArgument(let n, let d): return "\(n): \(d)"
    }
  }
}

/// A file's bytes, at most `limit` of them, read with a bounded read rather than by the size
/// stat reports (configfs and sysfs pseudo-files report none). Throws when the file cannot be
/// read or holds more than `limit` bytes.
func readBoundedFile(_ url: URL, limit: Int) throws -> [UInt8] {
  let data: Data
  do {
    let handle = try FileHandle(forReadingFrom: url)
    defer { try? handle.close() }
    data = try handle.read(upToCount: limit + 1) ?? Data()
  } catch {
    throw TEEError.io(path: url.path, detail: "cannot read: \(error.localizedDescription)")
  }
  guard data.count <= limit else { throw TEEError.oversized(structure: url.path, size: data.count, limit: limit) }
  return Array(data)
}

/// Bounds-checked little-endian reads from evidence bytes; every read names its field.
struct ByteReader {
  let bytes: [UInt8]
  let structure: String

  func slice(_ field: String, at offset: Int, count: Int) throws -> [UInt8] {
    guard offset >= 0, count >= 0, offset <= bytes.count, bytes.count - offset >= count else {
      throw TEEError.truncated(
        structure: structure, field: field, offset: offset, needed: count,
        available: max(0, bytes.count - max(0, offset)))
    }
    return Array(bytes[offset..<offset + count])
  }

  /// A little-endian unsigned integer of `T`'s width.
  func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ field: String, at offset: Int, as _: T.Type = T.self) throws -> T {
    try slice(field, at: offset, count: T.bitWidth / 8).enumerated().reduce(0) { $0 | T($1.element) << (8 * $1.offset) }
  }

  func u16(_ field: String, at offset: Int) throws -> UInt16 { try unsigned(field, at: offset) }
  func u32(_ field: String, at offset: Int) throws -> UInt32 { try unsigned(field, at: offset) }
  func u64(_ field: String, at offset: Int) throws -> UInt64 { try unsigned(field, at: offset) }

  /// A field that must hold `expected`; `meaning` says what that value stands for.
  @discardableResult
  func constant<T: FixedWidthInteger & UnsignedInteger>(
    _ field: String, at offset: Int, _ expected: T, meaning: String? = nil
  ) throws -> T {
    let found: T = try unsigned(field, at: offset)
    guard found == expected else {
      throw TEEError.unexpectedValue(
        structure: structure, field: field, offset: offset, expected: "\(expected)\(meaning.map { " (\($0))" } ?? "")",
        found: "\(found)")
    }
    return found
  }
}

extension Array where Element == UInt8 {
  /// Lower-case hex, as measurements are written in policies and printed.
  public var hex: String { map { String(format: "%02x", $0) }.joined() }

  /// Parses hex (either case); nil for an odd length or a non-hex character.
  public init?(hex: String) {
    let chars = Array(hex.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out = [UInt8]()
    out.reserveCapacity(chars.count / 2)
    func nibble(_ c: UInt8) -> UInt8? {
      switch c {
      case 48...57: return c - 48
      case 65...70: return c - 55
      case 97...102: return c - 87
      default: return nil
      }
    }
    var i = 0
    while i < chars.count {
      guard let h = nibble(chars[i]), let l = nibble(chars[i + 1]) else { return nil }
      out.append(h << 4 | l)
      i += 2
    }
    self = out
  }
}

/// Little-endian encodings used when building evidence and containers.
func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * UInt32($0))) & 0xff) } }
func be32(_ v: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8((v >> (8 * UInt32($0))) & 0xff) } }
func be64(_ v: UInt64) -> [UInt8] { (0..<8).reversed().map { UInt8((v >> (8 * UInt64($0))) & 0xff) } }
func readBE(_ b: ArraySlice<UInt8>) -> UInt64 { b.reduce(0) { $0 << 8 | UInt64($1) } }
