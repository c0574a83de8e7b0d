import Foundation

/// Secrets on disk (keys, opened heads): created with O_EXCL and mode 0600 before any byte is
/// written, so no moment exists when another user can read them.
public enum SecretFile {
  /// Writes `bytes` to `url`: into a fresh temporary file beside it (O_CREAT | O_EXCL, 0600),
  /// flushed, then renamed over `url`.
  public static func write(_ bytes: [UInt8], to url: URL) throws {
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp")
    let fd = open(tmp.path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw TEEError.io(path: tmp.path, detail: String(cString: strerror(errno))) }
    var ok = false
    defer {
      close(fd)
      if !ok { unlink(tmp.path) }
    }
    var written = 0
    while written < bytes.count {
      let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) }
      guard n > 0 else { throw TEEError.io(path: tmp.path, detail: String(cString: strerror(errno))) }
      written += n
    }
    guard fsync(fd) == 0, rename(tmp.path, url.path) == 0 else {
      throw TEEError.io(path: url.path, detail: String(cString: strerror(errno)))
    }
    ok = true
  }
}
