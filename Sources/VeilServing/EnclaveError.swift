import Foundation

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
  case remote(kind: String, message: String)
  case protocolViolation(String)
  /// The enclave has more requests waiting than it queues; retry later.
  case overloaded(String)

  public var description: String {
    switch self {
    case .plan(let file, let field, let detail): "plan \(file), field '\(field)': \(detail)"
    case .io(let path, let detail): "\(path): \(detail)"
    case .invalidArgument(let s): s
    case .invalidInput(let s): "invalid input: \(s)"
    case .session(let id, let detail): "session \(id): \(detail)"
    case .acceleratorUnavailable(let s): "accelerator unavailable: \(s)"
    case .accelerator(let endpoint, let detail): "accelerator \(endpoint): \(detail)"
    case .remote(let kind, let message): "the enclave answered \(kind): \(message)"
    case .protocolViolation(let s): "protocol violation: \(s)"
    case .overloaded(let s): "overloaded: \(s)"
    }
  }

  /// The short kind carried in sealed error records and metrics labels.
  public var kind: String {
    switch self {
    case .plan, .io, .invalidArgument: "configuration"
    case .invalidInput: "invalid-input"
    case .session: "session"
    case .acceleratorUnavailable: "accelerator-unavailable"
    case .accelerator: "accelerator-error"
    case .remote(let kind, _): kind
    case .protocolViolation: "protocol"
    case .overloaded: "overloaded"
    }
  }
}
