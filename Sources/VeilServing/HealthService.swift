import GRPCCore

/// gRPC's standard health service (`grpc.health.v1.Health`, Protos/grpc_health_v1.proto) for a
/// server's own services, so that Kubernetes' gRPC probes and `grpc_health_probe` can ask it:
/// SERVING until the server begins its graceful shutdown, NOT_SERVING from then on. The empty
/// name asks about the server as a whole; a name it does not serve is NOT_FOUND, as the
/// standard says. It answers from the server's own state and never touches a session.
public final class HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
  /// The names Check answers for: "" and each service's full name.
  public let services: Set<String>
  private let draining: DrainFlag

  public init(services: [String], draining: DrainFlag) {
    self.services = Set(services + [""])
    self.draining = draining
  }

  var status: Grpc_Health_V1_HealthCheckResponse.ServingStatus { draining.isSet ? .notServing : .serving }

  func response(_ status: Grpc_Health_V1_HealthCheckResponse.ServingStatus) -> Grpc_Health_V1_HealthCheckResponse {
    var r = Grpc_Health_V1_HealthCheckResponse()
    r.status = status
    return r
  }

  public func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) async throws
    -> Grpc_Health_V1_HealthCheckResponse
  {
    guard services.contains(request.service) else {
      throw RPCError(
        code: .notFound, message: "no service '\(request.service)' here; this server serves \(services.sorted())")
    }
    return response(status)
  }

  /// The status now, then each change (here only the one to NOT_SERVING), until the call ends;
  /// an unknown name is SERVICE_UNKNOWN, as the standard says. The change is looked for every
  /// half second: a watcher learns of a shutdown within that.
  public func watch(
    request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
    context: ServerContext
  ) async throws {
    guard services.contains(request.service) else {
      try await response.write(self.response(.serviceUnknown))
      return
    }
    var sent = status
    try await response.write(self.response(sent))
    while !context.cancellation.isCancelled, !Task.isCancelled, sent == .serving {
      try await Task.sleep(for: .milliseconds(500))
      if status != sent {
        sent = status
        try await response.write(self.response(sent))
      }
    }
  }
}
