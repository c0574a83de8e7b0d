import XCTest

extension XCTestCase {
  /// What `body` throws, as its description, or "no error": for assertions on an error's words
  /// (the node, the field, the bound) that hold whichever error type carries them.
  public func message<T>(_ body: () throws -> T) -> String {
    do {
      _ = try body()
      return "no error"
    } catch {
      return "\(error)"
    }
  }
}
