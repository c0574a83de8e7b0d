import Foundation
import XCTest

import VeilTEE

#if canImport(Glibc)
  import Glibc
#endif

/// Secrets are 0600 from the moment their file exists, are never written through an existing
/// file or link, and replace an older file atomically.
final class SecretFileTests: XCTestCase {
  var folder: URL!

  override func setUpWithError() throws {
    folder = FileManager.default.temporaryDirectory.appendingPathComponent("veil-secret-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws {
    try? FileManager.default.removeItem(at: folder)
  }

  func mode(_ url: URL) throws -> (mode: mode_t, size: Int) {
    var st = stat()
    guard lstat(url.path, &st) == 0 else { throw TEEError.io(path: url.path, detail: "stat failed: errno \(errno)") }
    return (st.st_mode & 0o7777, Int(st.st_size))
  }

  /// Under a umask that would leave a default-mode file world-readable and writable (0), the
  /// file is 0600 and empty before its first byte is written, and 0600 once committed.
  func testCreatedOwnerOnlyBeforeAnyByteIsWritten() throws {
    let old = umask(0)
    defer { umask(old) }
    let url = folder.appendingPathComponent("head.key")
    let file = try SecretFile(url, existing: .refuse)
    XCTAssertEqual(file.writingPath, url)
    let before = try mode(url)
    XCTAssertEqual(before.mode, 0o600, "the file must exist as 0600 before any byte is in it")
    XCTAssertEqual(before.size, 0)
    try file.write([UInt8](repeating: 0xA5, count: 32))
    try file.commit()
    let after = try mode(url)
    XCTAssertEqual(after.mode, 0o600)
    XCTAssertEqual(try Data(contentsOf: url), Data(repeating: 0xA5, count: 32))
  }

  func testRefusesAnExistingFileOrLinkAndLeavesItUntouched() throws {
    let url = folder.appendingPathComponent("head.key")
    try Data("old key".utf8).write(to: url)
    XCTAssertThrowsError(try SecretFile.write([1, 2, 3], to: url)) { error in
      XCTAssertTrue("\(error)".contains("already exists"), "\(error)")
      XCTAssertTrue("\(error)".contains(url.path), "\(error)")
    }
    XCTAssertEqual(try Data(contentsOf: url), Data("old key".utf8), "the existing file must not be touched")

    // A symbolic link planted at the name is not followed, even to a file that does not exist yet.
    let target = folder.appendingPathComponent("elsewhere")
    let link = folder.appendingPathComponent("planted.key")
    XCTAssertEqual(symlink(target.path, link.path), 0)
    XCTAssertThrowsError(try SecretFile.write([1, 2, 3], to: link))
    XCTAssertFalse(FileManager.default.fileExists(atPath: target.path), "nothing may be written through the link")
  }

  /// Replacing writes a hidden 0600 file beside the old one, then renames it into place.
  func testReplaceWritesATemporary0600FileThenRenames() throws {
    let url = folder.appendingPathComponent("head.onnx")
    try Data("public old bytes".utf8).write(to: url)
    XCTAssertEqual(chmod(url.path, 0o644), 0)
    let file = try SecretFile(url, existing: .replace)
    XCTAssertNotEqual(file.writingPath, url)
    XCTAssertEqual(file.writingPath.deletingLastPathComponent().path, folder.path, "same folder, so rename is atomic")
    XCTAssertEqual(try mode(file.writingPath).mode, 0o600)
    try file.write(Array("new secret".utf8))
    XCTAssertEqual(try Data(contentsOf: url), Data("public old bytes".utf8), "readers see the old file until commit")
    try file.commit()
    XCTAssertEqual(try Data(contentsOf: url), Data("new secret".utf8))
    XCTAssertEqual(try mode(url).mode, 0o600)
    XCTAssertFalse(FileManager.default.fileExists(atPath: file.writingPath.path))
  }

  func testUncommittedFileIsRemoved() throws {
    let url = folder.appendingPathComponent("partial.key")
    do {
      let file = try SecretFile(url)
      try file.write([1, 2, 3])
    }
    XCTAssertFalse(FileManager.default.fileExists(atPath: url.path), "an abandoned secret file must not remain")
  }

  func testMissingFolderNamesThePathAndWhatToDo() {
    let url = folder.appendingPathComponent("no/such/folder/head.key")
    XCTAssertThrowsError(try SecretFile.write([1], to: url)) { error in
      XCTAssertTrue("\(error)".contains(url.path) && "\(error)".contains("folder exists"), "\(error)")
    }
  }
}
