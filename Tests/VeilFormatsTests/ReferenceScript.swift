import Foundation
import XCTest

/// Runs scripts/reference.py with the project's Python environment. A missing environment is a
/// failure with the command that fixes it, never a skip: a test that cannot run cannot fail.
enum ReferenceScript {
  /// The repository root, three levels above this file (Tests/<target>/<file>).
  static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
  static let python = repoRoot.appendingPathComponent(".venv/bin/python")
  static let script = repoRoot.appendingPathComponent("scripts/reference.py")

  struct Failure: Error, CustomStringConvertible {
    var description: String
  }

  /// Runs `python args...` and returns its exit status and combined stdout/stderr.
  static func python(_ arguments: [String]) throws -> (status: Int32, output: String) {
    guard FileManager.default.isExecutableFile(atPath: python.path) else {
      throw Failure(
        description: "\(python.path) is missing: the reference tests need the project's Python environment. "
          + "Run `make test` or `scripts/setup-python.sh` from \(repoRoot.path) first.")
    }
    let process = Process()
    process.executableURL = python
    process.arguments = arguments
    process.currentDirectoryURL = repoRoot
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    // Read to the end before waiting, so a chatty child never blocks on a full pipe.
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
  }

  /// `reference.py run DIR`; throws with the script's output unless every case passed.
  @discardableResult
  static func run(_ directory: URL) throws -> String {
    let (status, output) = try python([script.path, "run", directory.path])
    guard status == 0 else {
      throw Failure(description: "reference.py run \(directory.path) exited with \(status):\n\(output)")
    }
    return output
  }

  static func temporaryDirectory(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
  }
}
