import Foundation
import XCTest

/// The repository's own map agrees with the tree: README's Layout table names every module once,
/// every module opens with its note, and every module a source file imports is one its target
/// declares in Package.swift (so a build never relies on a dependency pulled in by another).
final class RepositoryLayoutTests: XCTestCase {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

  /// Modules of the toolchain and the C library, which no target declares.
  static let toolchain: Set<String> = ["Foundation", "FoundationEssentials", "Dispatch", "Synchronization", "Glibc", "Darwin", "XCTest"]

  var modules: [String] {
    get throws {
      try FileManager.default.contentsOfDirectory(atPath: Self.root.appendingPathComponent("Sources").path)
        .filter { !$0.hasPrefix(".") }.sorted()
    }
  }

  func testReadmeLayoutNamesEveryModuleOnce() throws {
    let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
    let section = try XCTUnwrap(readme.components(separatedBy: "\n## Layout\n").dropFirst().first, "README has a Layout section")
    let table = section.components(separatedBy: "\n## ")[0]
    let listed = table.split(separator: "\n").compactMap { line -> String? in
      guard line.hasPrefix("| `Sources/") else { return nil }
      return String(line.dropFirst("| `Sources/".count).prefix { $0 != "`" })
    }
    XCTAssertEqual(listed.sorted(), try modules, "README's Layout table against Sources/ (each module once)")
  }

  func testEveryModuleOpensWithItsNote() throws {
    for module in try modules {
      let dir = Self.root.appendingPathComponent("Sources").appendingPathComponent(module)
      let files = try FileManager.default.subpathsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".swift") || $0.hasSuffix(".h") }
      let noted = try files.contains { path in
        try String(contentsOf: dir.appendingPathComponent(path), encoding: .utf8).hasPrefix("/// \(module): ")
      }
      XCTAssertTrue(noted, "no file of Sources/\(module) opens with '/// \(module): ' (what it owns, what it must not depend on)")
    }
  }

  func testEveryImportIsDeclaredByItsTarget() throws {
    let manifest = try String(contentsOf: Self.root.appendingPathComponent("Package.swift"), encoding: .utf8)
    let declaration = try Regex(#"\.(?:target|executableTarget|testTarget)\(\s*name:\s*"([^"]+)""#)
    let matches = manifest.matches(of: declaration)
    var declared: [String: Set<String>] = [:]
    for (i, m) in matches.enumerated() {
      let end = i + 1 < matches.count ? matches[i + 1].range.lowerBound : manifest.endIndex
      let body = manifest[m.range.upperBound..<end]
      let name = String(m.output[1].substring ?? "")
      // Plain names ("VeilGraph") and products' names (.product(name: "Crypto", ...)).
      declared[name] = Set(body.matches(of: try Regex(#""([A-Za-z_][A-Za-z0-9_]*)""#)).compactMap { $0.output[1].substring.map(String.init) })
    }
    let importLine = try Regex(#"(?m)^\s*(?:@testable\s+)?import\s+([A-Za-z_][A-Za-z0-9_]*)"#)
    var checked = 0
    for module in try modules {
      let deps = try XCTUnwrap(declared[module], "Package.swift declares no target \(module)")
      let dir = Self.root.appendingPathComponent("Sources").appendingPathComponent(module)
      for path in try FileManager.default.subpathsOfDirectory(atPath: dir.path) where path.hasSuffix(".swift") {
        let text = try String(contentsOf: dir.appendingPathComponent(path), encoding: .utf8)
        for m in text.matches(of: importLine) {
          let imported = String(m.output[1].substring ?? "")
          checked += 1
          XCTAssertTrue(
            Self.toolchain.contains(imported) || deps.contains(imported),
            "Sources/\(module)/\(path) imports \(imported), which Package.swift does not declare for \(module)")
        }
      }
    }
    XCTAssertGreaterThan(checked, 100, "the imports were found")
  }
}
