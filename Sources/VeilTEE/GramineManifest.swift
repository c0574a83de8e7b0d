import Foundation

/// A Gramine manifest template for running `veil enclave serve` under gramine-sgx.
///
/// The template keeps Gramine's Jinja placeholders (`{{ gramine.libos }}`,
/// `{{ gramine.runtimedir() }}`) for `gramine-manifest` to fill in, and is valid TOML as it
/// stands. Everything the enclave loads is a trusted file, so MRENCLAVE covers the binary, its
/// libraries and the head it serves.
public struct GramineManifest: Sendable {
  public var binary: String
  public var libraries: [String]
  public var head: String
  /// The head's measured peak memory while it runs, in bytes.
  public var peakMemory: Int
  /// Kernel threads (oneDNN's OpenMP pool) the enclave will use.
  public var kernelThreads: Int
  /// Bytes of the binary, libraries and head, which the enclave maps as well.
  public var fileBytes: Int

  /// Threads Gramine itself starts (IPC, async events, TLS handshake helpers) beside the app's.
  public static let gramineThreads = 4
  /// The LibOS, its heap bookkeeping and thread stacks.
  public static let libOSBytes = 128 << 20

  public init(binary: String, libraries: [String], head: String, peakMemory: Int, kernelThreads: Int, fileBytes: Int)
    throws
  {
    guard peakMemory > 0 else {
      throw TEEError.invalidArgument(
        name: "--peak-memory", detail: "expected a positive number of bytes, found \(peakMemory)")
    }
    guard (1...1024).contains(kernelThreads) else {
      throw TEEError.invalidArgument(name: "--threads", detail: "expected 1...1024, found \(kernelThreads)")
    }
    self.binary = binary
    self.libraries = libraries
    self.head = head
    self.peakMemory = peakMemory
    self.kernelThreads = kernelThreads
    self.fileBytes = fileBytes
  }

  /// The enclave size: peak memory, the mapped files and the LibOS, rounded up to a power of
  /// two (SGX enclave sizes must be one).
  public var enclaveSize: Int {
    let needed = peakMemory + fileBytes + Self.libOSBytes
    var size = 256 << 20
    while size < needed { size <<= 1 }
    return size
  }

  /// oneDNN's OpenMP threads, Swift's cooperative pool (one per core) and Dispatch's workers,
  /// the main thread, and Gramine's own helpers.
  public var maxThreads: Int { kernelThreads + kernelThreads + 4 + 1 + Self.gramineThreads }

  static func sizeString(_ bytes: Int) -> String {
    bytes % (1 << 30) == 0 ? "\(bytes >> 30)G" : "\(bytes >> 20)M"
  }

  private static func quoted(_ s: String) -> String {
    var out = "\""
    for c in s.unicodeScalars {
      switch c {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      default:
        if c.value < 0x20 { out += String(format: "\\u%04X", c.value) } else { out.unicodeScalars.append(c) }
      }
    }
    return out + "\""
  }

  /// The manifest template's text.
  public var template: String {
    let headName = (head as NSString).lastPathComponent
    let libDirs = Array(Set(libraries.map { ($0 as NSString).deletingLastPathComponent })).sorted()
    var mounts = [
      "  { path = \"/lib\", uri = \"file:{{ gramine.runtimedir() }}\" },",
      "  { path = \"/veil/bin/veil\", uri = \(Self.quoted("file:" + binary)) },",
      "  { path = \(Self.quoted("/veil/head/" + headName)), uri = \(Self.quoted("file:" + head)) },",
      "  { type = \"tmpfs\", path = \"/tmp\" },",
    ]
    mounts += libDirs.map { "  { path = \(Self.quoted($0)), uri = \(Self.quoted("file:" + $0)) }," }
    let trusted =
      ["  \"file:{{ gramine.libos }}\",", "  \"file:{{ gramine.runtimedir() }}/\","]
      + ([binary] + libraries + [head]).map { "  \(Self.quoted("file:" + $0))," }
    return """
      # Gramine manifest template for `veil enclave serve`, written by `veil enclave manifest`.
      # Fill it in and sign it:
      #   gramine-manifest veil.manifest.template veil.manifest
      #   gramine-sgx-sign --manifest veil.manifest --output veil.manifest.sgx
      #   gramine-sgx-sigstruct-view veil.sig    # prints mr_enclave for the client's policy
      # Enclave size: peak memory \(peakMemory) B + files \(fileBytes) B + LibOS \(Self.libOSBytes) B,
      # rounded up to a power of two. Threads: \(kernelThreads) oneDNN + \(kernelThreads) Swift
      # cooperative + 4 Dispatch + 1 main + \(Self.gramineThreads) Gramine.

      libos.entrypoint = "/veil/bin/veil"
      loader.entrypoint.uri = "file:{{ gramine.libos }}"
      loader.log_level = "error"
      loader.argv = ["veil", "enclave", "serve", "--head", \(Self.quoted("/veil/head/" + headName))]

      loader.env.LD_LIBRARY_PATH = \(Self.quoted((["/lib"] + libDirs).joined(separator: ":")))
      loader.env.OMP_NUM_THREADS = "\(kernelThreads)"
      loader.env.SWIFT_BACKTRACE = "enable=no"
      loader.env.VEIL_EVIDENCE_MODE = "gramine-sgx"

      fs.mounts = [
      \(mounts.joined(separator: "\n"))
      ]

      sgx.debug = false
      sgx.edmm_enable = false
      sgx.remote_attestation = "dcap"
      sgx.enclave_size = "\(Self.sizeString(enclaveSize))"
      sgx.max_threads = \(maxThreads)
      sgx.isvprodid = 1
      sgx.isvsvn = 1

      sgx.trusted_files = [
      \(trusted.joined(separator: "\n"))
      ]

      """
  }
}

/// glibc's own libraries: Gramine ships patched copies in its runtime directory.
let glibcPrefixes = ["libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libutil.so", "ld-linux"]

/// The shared libraries a binary loads, as the dynamic linker resolves them (`ldd`), less
/// glibc's, which Gramine provides.
public func sharedLibraries(of binary: String) throws -> [String] {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
  p.arguments = [binary]
  let out = Pipe()
  p.standardOutput = out
  p.standardError = Pipe()
  do {
    try p.run()
  } catch {
    throw TEEError.io(path: "/usr/bin/ldd", detail: "cannot run: \(error.localizedDescription)")
  }
  let data = out.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  guard p.terminationStatus == 0 else {
    throw TEEError.io(path: binary, detail: "ldd exited with \(p.terminationStatus): not a dynamic executable?")
  }
  var libs: [String] = []
  for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
    // "libx.so => /path/libx.so (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    let parts = line.split(separator: " ").map(String.init)
    if let arrow = parts.firstIndex(of: "=>"), arrow + 1 < parts.count, parts[arrow + 1].hasPrefix("/") {
      libs.append(parts[arrow + 1])
    } else if let first = parts.first, first.hasPrefix("/") {
      libs.append(first)
    }
  }
  return libs.filter { lib in
    let name = (lib as NSString).lastPathComponent
    return !glibcPrefixes.contains { name.hasPrefix($0) }
  }
}
