import ArgumentParser
import Crypto
import Foundation
import Logging
import ServiceLifecycle
import VeilServing
import VeilTEE

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

struct KeysServe: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Release a head key to enclaves whose evidence satisfies the owner's policy (TCP).",
    discussion: """
      Each connection gets a fresh 32-byte challenge and must answer with a key request whose
      evidence binds it (docs/tee.md, "Sealed heads"). Connections are served concurrently, each
      within one deadline for the whole exchange; docs/security.md lists every limit. A requester
      that is refused learns only a reference; every decision, with its reasons, is logged to
      standard error. The policy must pin a measurement unless --allow-unpinned-policy says
      otherwise. The exchange is not encrypted beyond the key wrap: the key only travels wrapped.
      """)

  @Option(help: "The head key written by `veil keys seal`.")
  var key: String
  @Option(help: "The owner's policy (JSON).")
  var policy: String
  @Option(
    help: ArgumentHelp(
      "DCAP collateral (JSON), or a folder of SEV-SNP collateral (vcek.der, ask.pem, ark.pem, crl.pem). SEV-SNP evidence may also carry its certificates.",
      valueName: "file-or-dir"))
  var collateral: String?
  @Flag(help: "SEV-SNP: accept collateral without a CRL (the ASK's revocation then goes unchecked).")
  var allowMissingCRL = false
  @Option(help: "Address to listen on.")
  var host = "127.0.0.1"
  @Option(help: "Port (0: any free port, printed on standard error).")
  var port = 7430
  @Option(help: "Stop after this many requests (default: serve until killed).")
  var maxRequests: Int?
  @Option(help: "Verification time, ISO 8601 (default: the time of each request).")
  var time: String?
  @Flag(help: "Serve under a policy that pins no measurement: any enclave with genuine evidence gets the key.")
  var allowUnpinnedPolicy = false
  @Option(help: "Connections open at once.")
  var maxConnections = 64
  @Option(help: "Connections open at once from one address.")
  var maxConnectionsPerPeer = 4
  @Option(help: "Seconds one exchange may take, from the challenge to the reply.")
  var exchangeTimeout: Double = 10
  @Option(help: "Key requests one address may have verified per second.")
  var requestsPerSecondPerPeer: Double = 2

  func validate() throws {
    guard (0...65535).contains(port) else { throw ValidationError("--port \(port): expected 0...65535") }
    guard maxConnections > 0, maxConnectionsPerPeer > 0, exchangeTimeout > 0, requestsPerSecondPerPeer > 0 else {
      throw ValidationError(
        "--max-connections, --max-connections-per-peer, --exchange-timeout and --requests-per-second-per-peer must be positive")
    }
  }

  func run() async throws {
    let raw = try readFileBytes(key, what: "key")
    guard raw.count == 32 else {
      throw ValidationError("--key '\(key)': expected a 32-byte key, found \(raw.count) bytes")
    }
    let pol = try Policy(json: Data(try readFileBytes(policy, what: "policy")))
    let coll = try RelyingPartyCollateral(path: collateral)
    // The server judges each request at its own time; this one only carries the settings.
    let verifier = try coll.verifier(policy: pol, time: Date(), allowMissingCRL: allowMissingCRL)
    var fixedTime: Date?
    if let time {
      guard let t = parseInstant(time) else { throw ValidationError("--time '\(time)': expected ISO 8601") }
      fixedTime = t
    }
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    let config = KeyReleaseConfig(
      host: host, port: port, maxConnections: maxConnections, maxConnectionsPerPeer: maxConnectionsPerPeer,
      exchangeTimeout: exchangeTimeout, requestsPerSecondPerPeer: requestsPerSecondPerPeer,
      allowUnpinnedPolicy: allowUnpinnedPolicy, maxRequests: maxRequests, verificationTime: fixedTime)
    let server: KeyReleaseServer
    do {
      server = try KeyReleaseServer(
        config: config, headKey: SymmetricKey(data: raw), policy: pol, collateral: coll.dcap, snp: verifier.snp,
        logger: Logger(label: "veil.keys"))
    } catch {
      throw ValidationError("--policy '\(policy)': \(error); pass --allow-unpinned-policy to serve under it anyway")
    }
    let group = ServiceGroup(
      configuration: .init(
        // The server returns by itself after --max-requests: that ends the group, not as an error.
        services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: Logger(label: "veil.keys.lifecycle")))
    try await withThrowingDiscardingTaskGroup { tasks in
      tasks.addTask { try await group.run() }
      note("listening on \(host):\(try await server.port())")
      if pol.pinnedMeasurements.isEmpty {
        note("WARNING: the policy pins no measurement (--allow-unpinned-policy): any enclave with genuine evidence gets the key")
      }
    }
  }
}

struct KeysFetch: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fetch",
    abstract:
      "Enclave side: obtain a sealed head's key from `veil keys serve` with this TEE's evidence, and open the head.",
    discussion: """
      Evidence comes from the TEE found at run time (Gramine, configfs-tsm), or from the
      simulation when --simulate is given (its MRENCLAVE covers this binary and the sealed head).
      Inside an enclave, --out should be on an encrypted or in-enclave file system.
      """)

  @Option(help: "The key server, HOST:PORT.")
  var server: String
  @Option(help: "The sealed head.")
  var sealed: String
  @Option(help: "Where to write the opened head.")
  var out: String
  @Flag(help: "Use SIMULATED evidence when no TEE is found.")
  var simulate = false
  @Option(help: "Seconds the whole exchange may take.")
  var timeout: Double = 30

  func run() async throws {
    let endpoint: KServeEndpoint
    do { endpoint = try KServeEndpoint(parsing: server) } catch { throw ValidationError("--server '\(server)': expected HOST:PORT") }
    let sealedBytes = try readFileBytes(sealed, what: "sealed head")
    let simulation =
      try simulate
      ? SimulatedEnclave(binary: URL(fileURLWithPath: CommandLine.arguments[0]), head: URL(fileURLWithPath: sealed))
      : nil
    let provider = try detectEvidenceProvider(simulation: simulation)
    if provider.mode == .simulated { note("using SIMULATED evidence: no TEE protects this head") }
    let key: SymmetricKey
    do { key = try await KeyReleaseClient.fetchKey(from: endpoint, provider: provider, timeout: timeout) } catch {
      throw RuntimeFailure("\(error)")
    }
    // The opened head is the secret the enclave protects: 0600 from creation, swapped in whole.
    try SecretFile.write(try SealedHead.open(sealedBytes, key: key), to: URL(fileURLWithPath: out), existing: .replace)
    note("key released; opened head written to \(out)")
  }
}
