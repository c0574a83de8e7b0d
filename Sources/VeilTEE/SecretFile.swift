import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// A file that holds a secret (a head key, an opened head), readable and writable by its owner
/// only from the moment it exists.
///
/// `FileManager.createFile(atPath:contents:attributes:)` and `Data.write(to:)` create the file
/// with the default mode (0644 under the usual umask) and change it afterwards, so another user
/// can open it in between and keep reading it. Here the file is created by open(2) with
/// `O_CREAT | O_EXCL | O_WRONLY` and mode 0600 before any byte is written; O_EXCL also refuses
/// a file or a symbolic link planted at that name. Replacing an existing file writes a new 0600
/// file next to it the same way and renames it over the old one, so readers see the old bytes or
/// all of the new ones, never a mixture and never a wider mode.
///
///     let file = try SecretFile(key, existing: .refuse)
///     try file.write(bytes)
///     try file.commit()  // fsync, then rename into place when replacing
///
/// A `SecretFile` dropped before `commit()` removes what it wrote.
public final class SecretFile {
  /// What to do when the destination exists already.
  public enum Existing: Sendable {
    /// Fail and leave it untouched (a key that sealed a head is needed to open it again).
    case refuse
    /// Replace it atomically by rename(2).
    case replace
  }

  /// Where the bytes end up.
  public let destination: URL
  /// Where they are written until `commit()`: the destination itself, or a hidden temporary
  /// file in the same folder when replacing.
  public let writingPath: URL
  private var fd: Int32
  private var committed = false

  /// Creates the file (mode 0600, empty) at once; `write` then `commit` fill it.
  public init(_ destination: URL, existing: Existing = .refuse) throws {
    self.destination = destination
    switch existing {
    case .refuse:
      writingPath = destination
    case .replace:
      let folder = destination.deletingLastPathComponent()
      let random = (0..<8).map { _ in UInt8.random(in: 0...255) }.hex
      writingPath = folder.appendingPathComponent(".\(destination.lastPathComponent).\(random).tmp")
    }
    // `fd` is assigned last: a throw before it leaves the object uninitialized, so `deinit`
    // never runs and never unlinks a file this call did not create.
    let opened = open(writingPath.path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0o600)
    guard opened >= 0 else {
      let code = errno
      let hint =
        code == EEXIST
        ? "it already exists; remove it or choose another path (it is never overwritten in place)"
        : "cannot create it: \(Self.describe(code)); check that the folder exists and is writable"
      throw TEEError.io(path: writingPath.path, detail: hint)
    }
    fd = opened
  }

  deinit {
    if fd >= 0 { close(fd) }
    if !committed { unlink(writingPath.path) }
  }

  /// Appends `bytes`.
  public func write(_ bytes: some ContiguousBytes) throws {
    guard fd >= 0, !committed else {
      throw TEEError.io(path: destination.path, detail: "the secret file was already committed")
    }
    try bytes.withUnsafeBytes { raw in
      var done = 0
      while done < raw.count {
        guard let base = raw.baseAddress else { return }
        let n = systemWrite(fd, base + done, raw.count - done)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else {
          throw TEEError.io(
            path: writingPath.path,
            detail: "write failed after \(done) of \(raw.count) bytes: \(Self.describe(errno)); nothing was kept")
        }
        done += n
      }
    }
  }

  /// Flushes the bytes to disk and puts the file at `destination`.
  public func commit() throws {
    guard fd >= 0, !committed else { return }
    guard fsync(fd) == 0 else {
      throw TEEError.io(path: writingPath.path, detail: "fsync failed: \(Self.describe(errno)); nothing was kept")
    }
    close(fd)
    fd = -1
    if writingPath != destination {
      guard rename(writingPath.path, destination.path) == 0 else {
        throw TEEError.io(
          path: destination.path,
          detail: "cannot replace it: \(Self.describe(errno)); the previous file, if any, is unchanged")
      }
      // The rename itself is durable only once the folder is flushed.
      let folder = open(destination.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
      if folder >= 0 {
        _ = fsync(folder)
        close(folder)
      }
    }
    committed = true
  }

  /// Writes `bytes` as a new secret file at `url` in one call.
  public static func write(_ bytes: some ContiguousBytes, to url: URL, existing: Existing = .refuse) throws {
    let file = try SecretFile(url, existing: existing)
    try file.write(bytes)
    try file.commit()
  }

  static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }
}

private func systemWrite(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
  #if canImport(Glibc)
    Glibc.write(fd, bytes, count)
  #else
    Darwin.write(fd, bytes, count)
  #endif
}
