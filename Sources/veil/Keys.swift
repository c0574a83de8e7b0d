import ArgumentParser
import Crypto
import Foundation
import VeilTEE

#if canImport(Glibc)
  import Glibc
#endif

struct Keys: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Seal model heads and release their keys only to attested enclaves.",
    subcommands: [KeysSeal.self, KeysServe.self, KeysFetch.self])
}

struct KeysSeal: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "seal", abstract: "Encrypt a head file (AES-256-GCM) under a fresh key.")

  @Option(help: "The head file to encrypt.")
  var head: String
  @Option(help: "Where to write the sealed head.")
  var out: String
  @Option(help: "Where to write the 32-byte key (readable by the owner only).")
  var keyOut: String

  func run() throws {
    let key = SealedHead.newKey()
    let sealed = try SealedHead.seal(try readFileBytes(head, what: "head"), key: key)
    // 0600 from creation, and never over an existing key: heads sealed under it need it.
    try key.withUnsafeBytes { try SecretFile.write(Array($0), to: URL(fileURLWithPath: keyOut), existing: .refuse) }
    guard FileManager.default.createFile(atPath: out, contents: Data(sealed)) else {
      throw ValidationError("--out '\(out)': cannot be written")
    }
    note("sealed \(head) into \(out) (key id \(SealedHead.keyID(key).hex.prefix(16))…); key in \(keyOut)")
  }
}

/// A blocking TCP connection with a deadline on every read and write.
struct Connection {
  let fd: Int32

  init(fd: Int32, timeoutSeconds: Int) {
    self.fd = fd
    var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
  }

  func read(_ count: Int) throws -> [UInt8] {
    var buf = [UInt8](repeating: 0, count: count)
    var got = 0
    while got < count {
      let n = buf.withUnsafeMutableBytes { b in b.baseAddress.map { Glibc.read(fd, $0 + got, count - got) } ?? -1 }
      guard n > 0 else { throw RuntimeFailure("connection closed or timed out after \(got) of \(count) bytes") }
      got += n
    }
    return buf
  }

  func write(_ bytes: [UInt8]) throws {
    var sent = 0
    while sent < bytes.count {
      let n = bytes.withUnsafeBytes { b in b.baseAddress.map { Glibc.write(fd, $0 + sent, bytes.count - sent) } ?? -1 }
      guard n > 0 else { throw RuntimeFailure("connection closed or timed out while sending") }
      sent += n
    }
  }

  func readFrame(limit: Int) throws -> [UInt8] {
    let len = try read(4).reduce(0) { $0 << 8 | Int($1) }
    guard len <= limit else { throw RuntimeFailure("peer announced \(len) bytes, more than the limit of \(limit)") }
    return try read(len)
  }
}

func inetAddress(_ host: String, _ port: Int) throws -> sockaddr_in {
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_port = in_port_t(UInt16(truncatingIfNeeded: port)).bigEndian
  guard (0...65535).contains(port), inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
    throw ValidationError("'\(host):\(port)' is not an IPv4 address and port")
  }
  return addr
}

struct KeysServe: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Release a head key to enclaves whose evidence satisfies the owner's policy (TCP).",
    discussion: """
      Each connection gets a fresh 32-byte challenge and must answer with a key request whose
      evidence binds it (docs/tee.md, "Sealed heads"). Every decision is logged to standard error.
      The exchange is not encrypted beyond the key wrap: the key itself only travels wrapped.
      """)

  @Option(help: "The head key written by `veil keys seal`.")
  var key: String
  @Option(help: "The owner's policy (JSON).")
  var policy: String
  @Option(help: "Collateral for DCAP evidence (JSON).")
  var collateral: String?
  @Option(help: "Address to listen on.")
  var host = "127.0.0.1"
  @Option(help: "Port (0: any free port, printed on standard error).")
  var port = 7430
  @Option(help: "Stop after this many requests (default: serve until killed).")
  var maxRequests: Int?
  @Option(help: "Verification time, ISO 8601 (default: the time of each request).")
  var time: String?

  func run() throws {
    let raw = try readFileBytes(key, what: "key")
    guard raw.count == 32 else {
      throw ValidationError("--key '\(key)': expected a 32-byte key, found \(raw.count) bytes")
    }
    let headKey = SymmetricKey(data: raw)
    let pol = try Policy(json: Data(try readFileBytes(policy, what: "policy")))
    let coll = try collateral.map { try Collateral(json: Data(try readFileBytes($0, what: "collateral"))) }
    var fixedTime: Date?
    if let time {
      guard let t = parseInstant(time) else { throw ValidationError("--time '\(time)': expected ISO 8601") }
      fixedTime = t
    }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RuntimeFailure("cannot create a socket: errno \(errno)") }
    defer { close(fd) }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = try inetAddress(host, port)
    let bound = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, 16) == 0 else {
      throw RuntimeFailure("cannot listen on \(host):\(port): errno \(errno)")
    }
    var actual = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &actual) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    note("listening on \(host):\(UInt16(bigEndian: actual.sin_port))")
    var served = 0
    while maxRequests.map({ served < $0 }) ?? true {
      let client = accept(fd, nil, nil)
      guard client >= 0 else { continue }
      defer { close(client) }
      served += 1
      let verifier = AttestationVerifier(
        dcap: try DCAPVerifier(collateral: coll, time: fixedTime ?? Date()), policy: pol)
      let conn = Connection(fd: client, timeoutSeconds: 10)
      let challenge = KeyReleaser.challenge()
      do {
        try conn.write(challenge)
        let request = try conn.readFrame(limit: maxEvidenceBytes + 128)
        let (reply, verdict) = KeyReleaser(verifier: verifier).answer(request, headKey: headKey, challenge: challenge)
        try conn.write(reply.bytes)
        switch reply {
        case .released:
          note("request \(served): key released (\(verdict?.evidenceKind ?? "?"), TCB \(verdict?.tcbStatus ?? "?"))")
        case .refused(let why): note("request \(served): refused: \(why)")
        }
      } catch {
        note("request \(served): \(error)")
      }
    }
  }
}

struct KeysFetch: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fetch",
    abstract:
      "Enclave side: obtain a sealed head's key from `veil keys serve` with this TEE's evidence, and open the head.",
    discussion: """
      Evidence comes from the TEE found at run time (Gramine, configfs-tsm), or from the
      simulation when --simulate is given (its MRENCLAVE covers this binary and the sealed head).
      Inside an enclave, --out should be on an encrypted or in-enclave file system.
      """)

  @Option(help: "The key server, IPv4:port.")
  var server: String
  @Option(help: "The sealed head.")
  var sealed: String
  @Option(help: "Where to write the opened head.")
  var out: String
  @Flag(help: "Use SIMULATED evidence when no TEE is found.")
  var simulate = false

  func run() throws {
    let parts = server.split(separator: ":")
    guard parts.count == 2, let port = Int(parts[1]) else {
      throw ValidationError("--server '\(server)': expected IPv4:port")
    }
    var addr = try inetAddress(String(parts[0]), port)
    let sealedBytes = try readFileBytes(sealed, what: "sealed head")
    let simulation =
      try simulate
      ? SimulatedEnclave(binary: URL(fileURLWithPath: CommandLine.arguments[0]), head: URL(fileURLWithPath: sealed))
      : nil
    let provider = try detectEvidenceProvider(simulation: simulation)
    if provider.mode == .simulated { note("using SIMULATED evidence: no TEE protects this head") }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RuntimeFailure("cannot create a socket: errno \(errno)") }
    defer { close(fd) }
    let connected = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard connected == 0 else { throw RuntimeFailure("cannot connect to \(server): errno \(errno)") }
    let conn = Connection(fd: fd, timeoutSeconds: 30)
    let challenge = try conn.read(32)
    let requester = KeyRequester()
    let request = try requester.request(challenge: challenge, provider: provider)
    try conn.write(be32Bytes(request.bytes.count) + request.bytes)
    let head = try conn.read(5)
    let len = head[1...4].reduce(0) { $0 << 8 | Int($1) }
    guard len <= KeyReleaseReply.maxPayload else {
      throw RuntimeFailure("the key server announced a \(len)-byte reply")
    }
    switch try KeyReleaseReply(head + (try conn.read(len))) {
    case .refused(let why): throw RuntimeFailure("the key server refused: \(why)")
    case .released(let wrapped):
      let key = try requester.unwrap(wrapped, for: request)
      // The opened head is the secret the enclave protects: 0600 from creation, swapped in whole.
      try SecretFile.write(try SealedHead.open(sealedBytes, key: key), to: URL(fileURLWithPath: out), existing: .replace)
      note("key released; opened head written to \(out)")
    }
  }
}

/// A failure while running (network, a refusal), as opposed to a bad argument: no usage text.
struct RuntimeFailure: Error, CustomStringConvertible {
  var description: String
  init(_ d: String) { description = d }
}

func be32Bytes(_ n: Int) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: n >> (8 * $0)) } }
