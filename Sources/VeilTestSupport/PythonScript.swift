import Foundation
import VeilFormats
import VeilTensor
import XCTest

/// Runs one of the repository's Python scripts with the project's `.venv`, for tests whose
/// references come from a Python library (Pillow, NumPy). A missing environment is an error
/// that says how to make it, never a skip: a test that cannot run cannot fail.
public enum PythonScript {
  public struct Failure: Error, CustomStringConvertible {
    public var description: String
  }

  /// Debian's own Python, with its python3-torch and python3-torchvision (`make
  /// python-torchvision`): the one environment here where torchvision's models load.
  public static let debianPython = URL(fileURLWithPath: "/usr/bin/python3")

  /// `python scripts/<name> arguments...` (the project's .venv unless `python` is given);
  /// returns its output, throws unless it exits with 0.
  @discardableResult
  public static func run(_ name: String, _ arguments: [String], python: URL? = nil) throws -> String {
    let python = python ?? ONNXRuntimeReference.python
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

/// Models a PyTorch script of the repository exported to ONNX (scripts/*_export.py: one folder
/// per variant, named by the variant with ':' as '_', holding model.onnx, input_0.npy and
/// ONNX Runtime's expected_0.npy), for tests that import what exporters write.
public struct TorchExport {
  public let name: String
  public let model: URL
  public let input: Tensor
  public let expected: Tensor

  /// Runs `script` for `variants` into a fresh folder, prints its report and hands each export
  /// to `body`; the folder is removed afterwards. Skips, saying how to install it, when torch is
  /// not importable by `python` (the script exits with that message): .venv's PyTorch (`make
  /// python-torch`) by default, or Debian's (`PythonScript.debianPython`, `make
  /// python-torchvision`).
  public static func each(
    _ script: String, variants: [String], what: String, python: URL? = nil, _ body: (TorchExport) throws -> Void
  ) throws {
    let dir = try PythonScript.temporaryDirectory(script.replacingOccurrences(of: ".py", with: ""))
    defer { try? FileManager.default.removeItem(at: dir) }
    let report: String
    do {
      report = try PythonScript.run(script, [dir.path] + variants, python: python)
    } catch let failure as PythonScript.Failure where failure.description.contains("is not importable") {
      let install = python == nil ? "make python-torch" : "make python-torchvision"
      throw XCTSkip("PyTorch is not importable by \((python ?? ONNXRuntimeReference.python).path), so no \(what) was exported: run `\(install)`")
    }
    print(report.trimmingCharacters(in: .whitespacesAndNewlines))
    for variant in variants {
      let name = variant.replacingOccurrences(of: ":", with: "_").replacingOccurrences(of: "/", with: "_")
      let folder = dir.appendingPathComponent(name)
      try body(
        TorchExport(
          name: name, model: folder.appendingPathComponent("model.onnx"),
          input: try NPY.read(folder.appendingPathComponent("input_0.npy")),
          expected: try NPY.read(folder.appendingPathComponent("expected_0.npy"))))
    }
  }
}
