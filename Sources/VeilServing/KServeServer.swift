// The accelerator server: the gRPC server of `AcceleratorService` on HTTP/2 (plaintext), its
// optional Prometheus endpoint, and its lifecycle as a swift-service-lifecycle `Service`:
// graceful shutdown stops taking new calls, lets the calls in flight finish, then stops the
// model workers.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import VeilTensor

/// How the accelerator server listens.
public struct AcceleratorServerConfig: Sendable {
  public var host: String
  /// 0: any free port (read it back with `AcceleratorServer.port()`).
  public var port: Int
  /// The Prometheus endpoint's port; nil: no endpoint.
  public var metricsPort: Int?
  /// The largest request message accepted (feature maps exceed gRPC's 4 MiB default).
  public var maxRequestBytes: Int
  /// Connections: how many, from one address, and how long they last. The enclave holds one
  /// connection per accelerator; the ceiling per address leaves room for benchmarks' clients.
  public var connections: ConnectionLimits

  public init(
    host: String = "127.0.0.1", port: Int = 8001, metricsPort: Int? = nil, maxRequestBytes: Int = 256 << 20,
    connections: ConnectionLimits = ConnectionLimits(maxConnections: 1024, maxConnectionsPerPeer: 256)
  ) {
    self.host = host
    self.port = port
    self.metricsPort = metricsPort
    self.maxRequestBytes = maxRequestBytes
    self.connections = connections
  }
}

public final class AcceleratorServer: Service, Sendable {
  public let config: AcceleratorServerConfig
  public let service: AcceleratorService
  private let transport: HTTP2ServerTransport.Posix
  private let server: GRPCServer<HTTP2ServerTransport.Posix>
  private let logger: Logger
  private let metricsAddress = Announcement<Int>()
  /// The connections open now, and those refused at accept.
  public let connections: ConnectionCounter

  public init(config: AcceleratorServerConfig, repository: KServeModelRepository, metrics: AcceleratorMetrics, logger: Logger) {
    self.config = config
    self.logger = logger
    service = AcceleratorService(
      repository: repository, metrics: metrics, logger: logger, streamIdleSeconds: config.connections.maxIdleTime.seconds)
    connections = ConnectionCounter(limits: config.connections)
    let tc = config.connections.transportConfig(maxRequestBytes: config.maxRequestBytes, counter: connections)
    if config.metricsPort == nil {
      metricsAddress.publish(.failure(AcceleratorError.badOption("the accelerator server has no metrics endpoint")))
    }
    transport = HTTP2ServerTransport.Posix(
      address: .ipv4(host: config.host, port: config.port), transportSecurity: .plaintext, config: tc)
    server = GRPCServer(transport: transport, services: [service])
  }

  /// The port the gRPC server listens on, once it does.
  public func port() async throws -> Int {
    try await transport.listeningIPv4Port { AcceleratorError.badOption("the server listens on \($0), not on an IPv4 port") }
  }

  /// The port of the Prometheus endpoint, once it listens (throws without one).
  public func metricsPort() async throws -> Int { try await metricsAddress.value() }

  /// Serves until a graceful shutdown (ServiceLifecycle's, or `beginGracefulShutdown()`), then
  /// waits for calls in flight and stops the model workers.
  public func run() async throws {
    // Loaded and compiled: from here on request buffers are reused, not mapped afresh.
    allocateForSteadyState()
    let metrics = service.metrics
    let metricsServer = try await MetricsHTTPServer.start(
      host: config.host, port: config.metricsPort, publishingTo: metricsAddress
    ) { metrics.render() }
    if let metricsServer { logger.info("metrics at http://\(config.host):\(metricsServer.port)/metrics") }
    try await withGracefulShutdownHandler {
      try await server.serve()
    } onGracefulShutdown: {
      self.logger.info("graceful shutdown: finishing calls in flight")
      self.beginGracefulShutdown()
    }
    for m in service.repository.all { m.shutdown() }
    await metricsServer?.close()
    logger.info("stopped")
  }

  /// Stops taking new calls; `run()` returns once the calls in flight have finished.
  public func beginGracefulShutdown() {
    service.draining.set()
    server.beginGracefulShutdown()
  }
}
