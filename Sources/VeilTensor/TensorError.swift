/// Errors of the tensor layer. Each case carries what a user needs to act on it.
public enum TensorError: Error, CustomStringConvertible, Equatable {
  case shapeMismatch(what: String, expected: String, found: String)
  case invalidArgument(String)
  /// oneDNN refused or failed a call; `operation` says what was being built or run.
  case backend(operation: String, status: Int32, detail: String)
  case unsupported(String)

  public var description: String {
    switch self {
    case .shapeMismatch(let what, let expected, let found):
      return "\(what): expected \(expected), found \(found)"
    case .invalidArgument(let s): return s
    case .backend(let op, let status, let detail):
      return "oneDNN failed in \(op) (status \(status): \(Self.statusName(status)))"
        + (detail.isEmpty ? "" : ": \(detail)")
    case .unsupported(let s): return "unsupported: \(s)"
    }
  }

  static func statusName(_ s: Int32) -> String {
    switch s {
    case 1: return "out of memory"
    case 2: return "invalid arguments"
    case 3: return "unimplemented for these arguments"
    case 4: return "iterator ends"
    case 5: return "runtime error"
    case 6: return "not required"
    default: return "unknown"
    }
  }
}
