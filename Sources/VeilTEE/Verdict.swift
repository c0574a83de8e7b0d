import Foundation

/// One thing a verifier checked, and what it found.
public struct Check: Codable, Sendable, Equatable {
  public var name: String
  public var passed: Bool
  public var detail: String

  public init(_ name: String, _ passed: Bool, _ detail: String) {
    self.name = name
    self.passed = passed
    self.detail = detail
  }
}

/// The outcome of verifying evidence (and, where given, a policy): every check, passed or not.
public struct Verdict: Codable, Sendable {
  public var evidenceKind: String
  public var simulated: Bool
  /// Intel's TCB status (UpToDate, SWHardeningNeeded, OutOfDate, ...) or "Simulated"; nil when
  /// it could not be evaluated (no collateral, or a check before it failed).
  public var tcbStatus: String?
  public var advisoryIDs: [String]
  public var checks: [Check]

  public var passed: Bool { !checks.isEmpty && checks.allSatisfy(\.passed) }
  public var failures: [Check] { checks.filter { !$0.passed } }

  public init(evidenceKind: String, simulated: Bool) {
    self.evidenceKind = evidenceKind
    self.simulated = simulated
    tcbStatus = nil
    advisoryIDs = []
    checks = []
  }

  mutating func check(_ name: String, _ passed: Bool, _ detail: String) {
    checks.append(Check(name, passed, detail))
  }

  /// A signature check: `verify` says whether the signature over `range` holds, and throws
  /// when the key or the signature bytes are not valid values of `algorithm` at all.
  /// `failureHint` says what a signature that does not verify usually means.
  mutating func checkSignature(
    _ name: String, algorithm: String, over range: String, by signer: String, failureHint: String = "",
    _ verify: () throws -> Bool
  ) {
    guard let ok = try? verify() else {
      check(name, false, "\(signer) or its signature is not a valid \(algorithm) value")
      return
    }
    check(name, ok, ok ? "\(algorithm) over \(range) by \(signer)" : "\(signer)'s signature over \(range) does not verify\(failureHint)")
  }

  /// What a signature check's closure throws when a certificate's key is of another kind.
  struct NotAKey: Error {}

  enum CodingKeys: String, CodingKey {
    case verdict, evidenceKind, simulated, tcbStatus, advisoryIDs, checks
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(passed ? "pass" : "fail", forKey: .verdict)
    try c.encode(evidenceKind, forKey: .evidenceKind)
    try c.encode(simulated, forKey: .simulated)
    try c.encode(tcbStatus, forKey: .tcbStatus)
    try c.encode(advisoryIDs, forKey: .advisoryIDs)
    try c.encode(checks, forKey: .checks)
  }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    evidenceKind = try c.decode(String.self, forKey: .evidenceKind)
    simulated = try c.decode(Bool.self, forKey: .simulated)
    tcbStatus = try c.decodeIfPresent(String.self, forKey: .tcbStatus)
    advisoryIDs = try c.decode([String].self, forKey: .advisoryIDs)
    checks = try c.decode([Check].self, forKey: .checks)
  }
}
