import Foundation

/// A Gramine manifest template for running `veil enclave serve` under gramine-sgx.
///
/// The template keeps Gramine's Jinja placeholders (`{{ gramine.libos }}`,
/// `{{ gramine.runtimedir() }}`, `{{ accelerator }}`) for `gramine-manifest` to fill in, and is
/// valid TOML as it stands. Everything the enclave loads is a trusted file, so MRENCLAVE covers
/// the binary, its libraries, the plan and the head it serves. The plan's folder is mounted at
/// `/veil/plan`, so the plan's relative paths (head, labels) resolve inside the enclave as they
/// do outside.
public struct GramineManifest: Sendable {
  public var binary: String
  public var libraries: [String]
  public var head: String
  /// The plan file `veil enclave serve --plan` reads, in the head's folder.
  public var plan: String
  /// The other files of the plan folder the enclave reads (the tail, for its input name and
  /// output shape; the labels), trusted like the head.
  public var planFiles: [String]
  /// What follows `--plan` on the enclave's command line: where the tail runs and where to
  /// listen. The default leaves the accelerator to `gramine-manifest -Daccelerator=HOST:PORT`.
  public var serveArguments: [String]
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

  /// `veil enclave serve` listens on every interface inside the enclave: the host forwards the
  /// port, and the attested channel, not the network, protects the requests.
  public static let defaultServeArguments = ["--accelerator", "{{ accelerator }}", "--host", "0.0.0.0", "--port", "7440"]

  /// `plan` defaults to `plan.json` beside the head, `planFiles` to what that plan names besides
  /// the head (read from it when it exists).
  public init(
    binary: String, libraries: [String], head: String, peakMemory: Int, kernelThreads: Int, fileBytes: Int,
    plan: String? = nil, planFiles: [String]? = nil, serveArguments: [String] = defaultServeArguments
  ) throws {
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
    let folder = (head as NSString).deletingLastPathComponent
    let planFile = plan ?? (folder as NSString).appendingPathComponent("plan.json")
    guard (planFile as NSString).deletingLastPathComponent == folder else {
      throw TEEError.invalidArgument(
        name: "--plan", detail: "the plan '\(planFile)' must sit in the head's folder '\(folder)' (its paths are relative to it)")
    }
    self.plan = planFile
    self.planFiles = try planFiles ?? Self.filesNamed(byPlan: planFile)
    self.serveArguments = serveArguments
  }

  /// The files a plan names that the enclave reads besides the head: its tail, its labels and
  /// its output part.
  /// None when the plan file does not exist yet.
  static func filesNamed(byPlan planFile: String) throws -> [String] {
    guard let data = FileManager.default.contents(atPath: planFile) else { return [] }
    guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
      throw TEEError.io(path: planFile, detail: "not a plan document (a JSON object)")
    }
    // `veil plan` nests the deployment under "deployment"; a plain plan is the deployment.
    let plan = object["deployment"] as? [String: Any] ?? object
    let folder = (planFile as NSString).deletingLastPathComponent
    var names: [String] = []
    if let tail = (plan["tail"] as? [String: Any])?["path"] as? String { names.append(tail) }
    if let labels = plan["labels"] as? String { names.append(labels) }
    // The output part a plan with a private output runs in the enclave.
    if let output = ((plan["privateOutput"] as? [String: Any])?["part"] as? [String: Any])?["path"] as? String { names.append(output) }
    return names.map { $0.hasPrefix("/") ? $0 : (folder as NSString).appendingPathComponent($0) }
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
  /// Where the plan's folder is mounted inside the enclave.
  public static let planMount = "/veil/plan"

  /// The enclave's command line: `veil enclave serve --plan /veil/plan/PLAN` and the serve
  /// arguments.
  public var argv: [String] {
    ["veil", "enclave", "serve", "--plan", Self.planMount + "/" + (plan as NSString).lastPathComponent] + serveArguments
  }

  public var template: String {
    let folder = (plan as NSString).deletingLastPathComponent
    let libDirs = Array(Set(libraries.map { ($0 as NSString).deletingLastPathComponent })).sorted()
    var mounts = [
      "  { path = \"/lib\", uri = \"file:{{ gramine.runtimedir() }}\" },",
      "  { path = \"/veil/bin/veil\", uri = \(Self.quoted("file:" + binary)) },",
      "  { path = \(Self.quoted(Self.planMount)), uri = \(Self.quoted("file:" + folder)) },",
      "  { type = \"tmpfs\", path = \"/tmp\" },",
    ]
    mounts += libDirs.map { "  { path = \(Self.quoted($0)), uri = \(Self.quoted("file:" + $0)) }," }
    let trusted =
      ["  \"file:{{ gramine.libos }}\",", "  \"file:{{ gramine.runtimedir() }}/\","]
      + ([binary] + libraries + [plan, head] + planFiles).map { "  \(Self.quoted("file:" + $0))," }
    // The accelerator is a Jinja variable unless the serve arguments already name it.
    let define = serveArguments.contains("{{ accelerator }}") ? "-Daccelerator=HOST:PORT " : ""
    return """
      # Gramine manifest template for `veil enclave serve`, written by Veil (`veil enclave manifest`,
      # `veil plan`, `veil deploy`). Fill it in and sign it:
      #   gramine-manifest \(define)veil.manifest.template veil.manifest
      #   gramine-sgx-sign --manifest veil.manifest --output veil.manifest.sgx
      #   gramine-sgx-sigstruct-view veil.sig    # prints mr_enclave for the client's policy
      # Enclave size: peak memory \(peakMemory) B + files \(fileBytes) B + LibOS \(Self.libOSBytes) B,
      # rounded up to a power of two. Threads: \(kernelThreads) oneDNN + \(kernelThreads) Swift
      # cooperative + 4 Dispatch + 1 main + \(Self.gramineThreads) Gramine.

      libos.entrypoint = "/veil/bin/veil"
      loader.entrypoint.uri = "file:{{ gramine.libos }}"
      loader.log_level = "error"
      loader.argv = [\(argv.map(Self.quoted).joined(separator: ", "))]

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
