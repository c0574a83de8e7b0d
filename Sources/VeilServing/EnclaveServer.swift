// The enclave server: the gRPC server of `EnclaveService` (and grpc.health.v1) on HTTP/2 (plaintext: the attested
// channel protects the records), its session sweeper, its optional Prometheus endpoint, the
// ceilings on connections, and its lifecycle as a swift-service-lifecycle `Service`: graceful
// shutdown stops taking new calls and lets the calls in flight finish. Configured and run the
// way `AcceleratorServer` is.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import VeilTensor
import VeilTEE

/// How the enclave server listens, and every limit it applies.
public struct EnclaveServerConfig: Sendable {
  public var host: String
  /// 0: any free port (read it back with `EnclaveServer.port()`).
  public var port: Int
  /// The Prometheus endpoint's port (0: any free port, `metricsPort()`); nil: no endpoint.
  public var metricsPort: Int?
  /// Sessions, records, rates and deadlines of the service.
  public var limits: EnclaveConfiguration
  /// Connections: how many, from one address, and how long they last.
  public var connections: ConnectionLimits

  public init(
    host: String = "127.0.0.1", port: Int = 7440, metricsPort: Int? = nil, limits: EnclaveConfiguration = .init(),
    connections: ConnectionLimits = .init()
  ) {
    self.host = host
    self.port = port
    self.metricsPort = metricsPort
    self.limits = limits
    self.connections = connections
  }
}

public final class EnclaveServer: Service, Sendable {
  public let config: EnclaveServerConfig
  public let service: EnclaveService
  public let metrics: EnclaveMetrics
  /// The standard gRPC health service, on the same port.
  public let health: HealthService
  /// The connections open now, and those refused at accept.
  public let connections: ConnectionCounter
  private let transport: HTTP2ServerTransport.Posix
  private let server: GRPCServer<HTTP2ServerTransport.Posix>
  private let logger: Logger
  private let metricsAddress = Announcement<Int>()

  public init(
    config: EnclaveServerConfig, engine: EnclaveEngine, provider: any EvidenceProvider, logger: Logger,
    clock: any ServiceClock = SystemClock()
  ) throws {
    self.config = config
    self.logger = logger
    metrics = EnclaveMetrics()
    service = try EnclaveService(
      engine: engine, provider: provider, configuration: config.limits, logger: logger, metrics: metrics, clock: clock)
    connections = ConnectionCounter(limits: config.connections)
    // Records over the service's limit reach it and get its clear refusal; far larger ones are
    // stopped by the transport.
    let tc = config.connections.transportConfig(
      maxRequestBytes: config.limits.maxRecordBytes * 2 + 4096, counter: connections)
    transport = HTTP2ServerTransport.Posix(
      address: .ipv4(host: config.host, port: config.port), transportSecurity: .plaintext, config: tc)
    // grpc.health.v1 beside the enclave service: Kubernetes' gRPC probes ask it.
    health = HealthService(services: [Veil_Enclave_V1_EnclaveService.descriptor.fullyQualifiedService], draining: service.draining)
    server = GRPCServer(transport: transport, services: [service, health])
    if config.metricsPort == nil {
      metricsAddress.publish(.failure(EnclaveError.invalidArgument("the enclave server has no metrics endpoint")))
    }
  }

  /// The port the gRPC server listens on, once it does.
  public func port() async throws -> Int {
    try await transport.listeningIPv4Port {
      EnclaveError.invalidArgument("the enclave server listens on \($0), not on an IPv4 port")
    }
  }

  /// The port of the Prometheus endpoint, once it listens (throws without one).
  public func metricsPort() async throws -> Int { try await metricsAddress.value() }

  /// Serves until a graceful shutdown (ServiceLifecycle's, or `beginGracefulShutdown()`), then
  /// waits for the calls in flight and stops the sweeper and the metrics endpoint.
  public func run() async throws {
    // Loaded and compiled: from here on request buffers are reused, not mapped afresh.
    allocateForSteadyState()
    let (metrics, host) = (self.metrics, config.host)
    let metricsServer = try await MetricsHTTPServer.start(
      host: host, port: config.metricsPort, publishingTo: metricsAddress,
      failure: { EnclaveError.invalidArgument("metrics endpoint: cannot listen on \(host):\($0) (\($1))") }
    ) { metrics.render() }
    let service = self.service
    let server = self.server
    do {
      try await withGracefulShutdownHandler {
        try await withThrowingDiscardingTaskGroup { group in
          group.addTask { await service.runSweeper() }
          try await server.serve()
          group.cancelAll()
        }
      } onGracefulShutdown: {
        self.logger.info("graceful shutdown: finishing calls in flight")
        self.beginGracefulShutdown()
      }
    } catch {
      await metricsServer?.close()
      throw error
    }
    await metricsServer?.close()
  }

  /// Stops taking new calls; `run()` returns once the calls in flight have finished.
  public func beginGracefulShutdown() {
    service.draining.set()
    server.beginGracefulShutdown()
  }
}
