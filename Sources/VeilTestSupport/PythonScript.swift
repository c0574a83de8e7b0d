import Foundation
import VeilFormats

/// Runs one of the repository's Python scripts with the project's `.venv`, for tests whose
/// references come from a Python library (Pillow, NumPy). A missing environment is an error
/// that says how to make it, never a skip: a test that cannot run cannot fail.
public enum PythonScript {
  public struct Failure: Error, CustomStringConvertible {
    public var description: String
  }

  /// `python scripts/<name> arguments...`; returns its output, throws unless it exits with 0.
  @discardableResult
  public static func run(_ name: String, _ arguments: [String]) throws -> String {
    let python = ONNXRuntimeReference.python
    let root = ONNXRuntimeReference.repoRoot
    guard FileManager.default.isExecutableFile(atPath: python.path) else {
      throw Failure(
        description: "\(python.path) is missing: run `make test` or `scripts/setup-python.sh` from \(root.path) first")
    }
    let process = Process()
    process.executableURL = python
    process.arguments = [root.appendingPathComponent("scripts/\(name)").path] + arguments
    process.currentDirectoryURL = root
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    // Read to the end before waiting, so a chatty child never blocks on a full pipe.
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      throw Failure(
        description:
          "scripts/\(name) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus):\n\(output)")
    }
    return output
  }

  /// A fresh folder under the temporary directory.
  public static func temporaryDirectory(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
  }
}

/// The checksummed real assets that `scripts/fetch_assets.py` caches (`make test` runs it).
public enum TestAssets {
  /// The cache `scripts/fetch_assets.py` fills (see `AssetCache`).
  public static var folder: URL { AssetCache.directory }

  /// The cached file, or an error that says how to fetch it.
  public static func url(_ file: String) throws -> URL {
    guard let url = AssetCache.file(file) else { throw PythonScript.Failure(description: AssetCache.missingAdvice(file)) }
    return url
  }
}
