import Foundation
import VeilFormats
import VeilTestSupport
import XCTest

/// The YAML writer read back by PyYAML (the reader behind most Kubernetes tooling's Python side):
/// every scalar a YAML 1.1 or 1.2 reader could take for something else comes back as the string
/// it was.
final class YAMLWriterTests: XCTestCase {
  static let awkward = [
    "yes", "No", "on", "OFF", "y", "true", "False", "null", "NULL", "~", "", "1", "0x1F", "0o17", "1.0", "1e3", ".inf",
    "-.inf",
    ".NaN", "12:30", "2001-12-14", "- a", "a: b", "a:b", "#comment", "x #y", "@at", "`tick", "key with space", "[x]",
    "{x}", "*alias",
    "&anchor", "!tag", "%dir", "|", ">", "'single'", "\"double\"", "back\\slash", "tab\tin", "multi\nline\n",
    "no newline\nat end",
    "two\n\n", "  leading spaces\nsecond", "\nleading newline", "blank line\n   \nafter", "ünïcödé ✓",
    "line\u{2028}separator",
    "nel\u{85}x", "bell\u{07}", "veil:latest", "127.0.0.1:7440:7440", "/veil/plan", "nvidia.com/gpu", "-", "?", ",",
    "=",
  ]

  func testAwkwardScalarsAndKeysReadBackAsTheStringsTheyWere() throws {
    let values: YAMLNode = .object(Self.awkward.enumerated().map { ("k\($0.offset)", .string($0.element)) })
    let keys: YAMLNode = .object(Self.awkward.enumerated().map { ($0.element, .int($0.offset)) })
    let nested: YAMLNode = .object([
      ("list", .list(Self.awkward.map { .string($0) })),
      (
        "maps",
        .list([
          .object([("a", "x"), ("b", .list([1, 2]))]), .map([YAMLEntry("c", "y", comment: "a comment\nof two lines")]),
        ])
      ),
      ("lists", .list([.list(["p", "q"]), .list([])])),
      ("empty", .object([])),
      ("flags", .list([true, false, 0, -7])),
    ])
    let text = YAMLWriter.documents([values, keys, nested], header: "written by YAMLWriterTests\nsecond line")
    let dir = try PythonScript.temporaryDirectory("yaml")
    defer { try? FileManager.default.removeItem(at: dir) }
    let file = dir.appendingPathComponent("doc.yaml")
    try Data(text.utf8).write(to: file)
    let out = try PythonScript.run("check_deploy.py", ["yaml", file.path])
    let docs = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [Any], out)
    XCTAssertEqual(docs.count, 3, text)
    let v = try XCTUnwrap(docs[0] as? [String: Any])
    for (i, s) in Self.awkward.enumerated() {
      XCTAssertEqual(
        v["k\(i)"] as? String, s, "value \(s.debugDescription) came back as \(String(describing: v["k\(i)"]))\n\(text)")
    }
    let k = try XCTUnwrap(docs[1] as? [String: Any])
    for (i, s) in Self.awkward.enumerated() {
      XCTAssertEqual(k[s] as? Int, i, "key \(s.debugDescription) did not come back")
    }
    let n = try XCTUnwrap(docs[2] as? [String: Any])
    XCTAssertEqual(n["list"] as? [String], Self.awkward)
    let maps = try XCTUnwrap(n["maps"] as? [[String: Any]])
    XCTAssertEqual(maps[0]["a"] as? String, "x")
    XCTAssertEqual(maps[0]["b"] as? [Int], [1, 2])
    XCTAssertEqual(maps[1]["c"] as? String, "y")
    XCTAssertEqual(n["lists"] as? [[String]], [["p", "q"], []])
    XCTAssertEqual((n["empty"] as? [String: Any])?.count, 0)
    // Booleans stay booleans and integers integers (JSON keeps the difference NSNumber hides).
    XCTAssertTrue(out.contains(#""flags": [true, false, 0, -7]"#), out)
    XCTAssertTrue(text.hasPrefix("# written by YAMLWriterTests\n# second line\n---\n"), text)
    XCTAssertTrue(text.contains("  # a comment\n  # of two lines\n  - c: y\n") || text.contains("# a comment"), text)
  }

  func testPlainWordsStayPlainAndMultiLineTextIsALiteralBlock() {
    let text = YAMLWriter.documents([.object([("image", "nginx"), ("path", "/veil/plan"), ("text", "a\nb\n")])])
    XCTAssertEqual(text, "---\nimage: nginx\npath: /veil/plan\ntext: |\n  a\n  b\n")
  }
}
