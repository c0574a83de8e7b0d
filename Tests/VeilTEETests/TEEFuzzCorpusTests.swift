import Crypto
import Foundation
import XCTest

import VeilTEE

/// The fuzzing corpus (Fuzz/corpus) through this module's parsers: every seed parses, every
/// regression input is refused or parses, none traps. (The channel target's programs drive a
/// session pair; they are replayed by `make fuzz`, which runs the corpus first.)
final class TEEFuzzCorpusTests: XCTestCase {
  static let corpus: URL = {
    var d = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { d = d.deletingLastPathComponent() }
    return d.appendingPathComponent("Fuzz/corpus")
  }()

  func replay(_ target: String, _ parse: ([UInt8]) throws -> Void) throws {
    let folder = Self.corpus.appendingPathComponent(target)
    let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
    XCTAssertFalse(names.isEmpty, "no corpus in \(folder.path)")
    for name in names {
      let bytes = Array(try Data(contentsOf: folder.appendingPathComponent(name)))
      if name.hasPrefix("seed-") {
        XCTAssertNoThrow(try parse(bytes), "\(target)/\(name) is a seed: it must parse")
      } else {
        _ = try? parse(bytes)
      }
    }
  }

  func testEvidence() throws {
    let verifier = AttestationVerifier(
      dcap: try DCAPVerifier(collateral: nil, time: Date(timeIntervalSince1970: 1_750_000_000)), policy: Policy())
    try replay("evidence") { bytes in
      _ = try Evidence(bytes).fields
      _ = verifier.verify(bytes)
    }
  }

  /// The seeds carry a chain of a test authority; the verifier here trusts AMD's roots only, so
  /// the seeds parse and every check runs, and the verdict fails at the root.
  func testSNPEvidence() throws {
    let verifier = AttestationVerifier(
      dcap: try DCAPVerifier(collateral: nil, time: Date(timeIntervalSince1970: 1_750_000_000)), policy: Policy())
    try replay("snp-evidence") { bytes in
      guard case .snp(let r) = try Evidence(bytes) else { throw TEEError.invalidArgument(name: "seed", detail: "not SNP") }
      _ = Evidence.snp(r).fields
      XCTAssertFalse(verifier.verify(bytes).passed)
    }
  }

  func testAMDCertificates() throws {
    try replay("amd-certificate") { bytes in
      if let cert = try? AMDCertificate(bytes: bytes, name: "seed") {
        _ = cert.vcekExtensions
        return
      }
      _ = try SNPCollateral.crlDER(bytes, name: "seed")
    }
  }

  func testPolicy() throws { try replay("policy") { _ = try Policy(json: Data($0)) } }
  func testCollateral() throws { try replay("collateral") { _ = try Collateral(json: Data($0)) } }

  /// The harness opens sealed heads with a fixed key of 32 bytes 0x5A.
  func testSealedHead() throws {
    let key = SymmetricKey(data: [UInt8](repeating: 0x5A, count: 32))
    try replay("sealed-head") { _ = try SealedHead.open($0, key: key) }
  }
}
