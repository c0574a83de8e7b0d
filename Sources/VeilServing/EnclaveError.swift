import Foundation

/// The kinds of failure the enclave tier reports: the `kind` of a sealed error answer on the
/// wire, and the `kind` label of `veil_enclave_errors_total`. One list for both, so a kind the
/// service can answer is always counted under its own name.
public enum EnclaveErrorKind: String, Sendable, CaseIterable, Codable {
  /// The plan, a file or an argument of the enclave itself.
  case configuration
  /// The request's input cannot be used (shape, encoding, size).
  case invalidInput = "invalid-input"
  /// The session does not exist, has expired, is busy or used up.
  case session
  /// A record that does not open (forged, replayed, reordered, garbage).
  case record
  /// A record larger than the enclave accepts.
  case oversized
  /// The peer sent handshakes faster than the enclave generates evidence for it.
  case rateLimited = "rate-limited"
  /// The enclave has more sessions or waiting requests than it holds.
  case overloaded
  /// The request ran past the enclave's deadline for one request.
  case timeout
  /// No accelerator endpoint answered.
  case acceleratorUnavailable = "accelerator-unavailable"
  /// An accelerator answered with an error or with a tensor the tail does not declare.
  case acceleratorError = "accelerator-error"
  /// The other side broke the protocol.
  case `protocol`
  /// The client went away or cancelled.
  case cancelled
  /// Anything else: a bug.
  case `internal`

  /// The kind a client reads on the wire; an unknown one (a newer enclave) is `internal`.
  public init(wire: String) {
    self = EnclaveErrorKind(rawValue: wire) ?? .internal
  }
}

/// Errors of the enclave tier: the plan, the session, the request and the accelerator behind
/// it. Each says what failed, where, and what to do.
public enum EnclaveError: Error, CustomStringConvertible, Sendable, Equatable {
  /// A plan field is missing or wrong.
  case plan(file: String, field: String, detail: String)
  case io(path: String, detail: String)
  case invalidArgument(String)
  /// The request's input cannot be used (shape, encoding, size).
  case invalidInput(String)
  /// The session does not exist, has expired or was closed.
  case session(id: String, detail: String)
  /// No accelerator endpoint answered.
  case acceleratorUnavailable(String)
  /// An accelerator answered with an error or a wrong tensor.
  case accelerator(endpoint: String, detail: String)
  /// The enclave refused or failed the request (its kind and message as the client received it).
  case remote(kind: EnclaveErrorKind, message: String)
  case protocolViolation(String)
  /// The enclave has more requests waiting than it queues; retry later.
  case overloaded(String)
  /// The request took longer than the enclave allows one request.
  case timeout(String)
  /// Client side: no enclave replica opened a session or answered the request, after every
  /// attempt (each attempt's reason listed).
  case enclaveUnavailable(String)

  public var description: String {
    switch self {
    case .plan(let file, let field, let detail): "plan \(file), field '\(field)': \(detail)"
    case .io(let path, let detail): "\(path): \(detail)"
    case .invalidArgument(let s): s
    case .invalidInput(let s): "invalid input: \(s)"
    case .session(let id, let detail): "session \(id): \(detail)"
    case .acceleratorUnavailable(let s): "accelerator unavailable: \(s)"
    case .accelerator(let endpoint, let detail): "accelerator \(endpoint): \(detail)"
    case .remote(let kind, let message): "the enclave answered \(kind.rawValue): \(message)"
    case .protocolViolation(let s): "protocol violation: \(s)"
    case .overloaded(let s): "overloaded: \(s)"
    case .timeout(let s): "timed out: \(s)"
    case .enclaveUnavailable(let s): "no enclave replica answered: \(s)"
    }
  }

  /// The kind carried in sealed error records and metrics labels.
  public var kind: EnclaveErrorKind {
    switch self {
    case .plan, .io, .invalidArgument: .configuration
    case .invalidInput: .invalidInput
    case .session: .session
    case .acceleratorUnavailable: .acceleratorUnavailable
    case .accelerator: .acceleratorError
    case .remote(let kind, _): kind
    case .protocolViolation: .protocol
    case .overloaded: .overloaded
    case .timeout: .timeout
    // Never on the wire (a client's own conclusion); as a kind, the nearest: try again later.
    case .enclaveUnavailable: .overloaded
    }
  }
}
