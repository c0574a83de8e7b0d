import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import VeilTEE

/// Runs the enclave service on a port: the gRPC server plus the session sweeper, until the
/// task is cancelled or the server stops. A swift-service-lifecycle `Service`: on graceful
/// shutdown (SIGTERM/SIGINT in a `ServiceGroup`) it stops accepting calls and finishes those
/// in flight.
public struct EnclaveServer: Service, Sendable {
  public let service: EnclaveService
  public let server: GRPCServer<HTTP2ServerTransport.Posix>

  /// `port` 0 picks a free port (see `listeningPort`).
  public init(service: EnclaveService, host: String = "127.0.0.1", port: Int) {
    self.service = service
    var config = HTTP2ServerTransport.Posix.Config.defaults
    // Records over the service's limit reach it and get its clear refusal; far larger ones are
    // stopped by the transport.
    config.rpc.maxRequestPayloadSize = service.configuration.maxRecordBytes * 2 + 4096
    server = GRPCServer(
      transport: .http2NIOPosix(address: .ipv4(host: host, port: port), transportSecurity: .plaintext, config: config),
      services: [service])
  }

  /// Serves until cancelled, `server.beginGracefulShutdown()`, or a graceful shutdown of its
  /// service group.
  public func run() async throws {
    let server = self.server
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { await service.runSweeper() }
        try await server.serve()
        group.cancelAll()
      }
    } onGracefulShutdown: {
      server.beginGracefulShutdown()
    }
  }

  /// The port the server listens on, once it does.
  public var listeningPort: Int {
    get async throws {
      guard let address = try await server.listeningAddress, let ip = address.ipv4 else {
        throw EnclaveError.invalidArgument("the enclave server has no IPv4 listening address")
      }
      return ip.port
    }
  }
}
