import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import VeilServing
import XCTest

/// grpc.health.v1 on the enclave's port, as Kubernetes' gRPC probe calls it: SERVING for the
/// server and its service, NOT_FOUND for another name, NOT_SERVING once it drains.
final class HealthServiceTests: XCTestCase {
  func testEnclaveAnswersTheStandardHealthCheck() async throws {
    let plan = try EnclaveFixture.plan(.client)
    try await withEnclave(plan: plan) { server, endpoint in
      let transport = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: endpoint.host, port: endpoint.port), transportSecurity: .plaintext)
      try await withGRPCClient(transport: transport) { grpc in
        let health = Grpc_Health_V1_Health.Client(wrapping: grpc)
        func check(_ name: String) async throws -> Grpc_Health_V1_HealthCheckResponse.ServingStatus {
          var request = Grpc_Health_V1_HealthCheckRequest()
          request.service = name
          return try await health.check(request).status
        }
        let first = try await check("")
        XCTAssertEqual(first, .serving)
        let named = try await check("veil.enclave.v1.EnclaveService")
        XCTAssertEqual(named, .serving)
        do {
          _ = try await check("inference.GRPCInferenceService")
          XCTFail("a service the enclave does not serve was answered")
        } catch let e as RPCError {
          XCTAssertEqual(e.code, .notFound)
        }
        // Watch: the status now, then NOT_SERVING once the server drains.
        var request = Grpc_Health_V1_HealthCheckRequest()
        request.service = ""
        let seen = try await health.watch(request) { response in
          var statuses: [Grpc_Health_V1_HealthCheckResponse.ServingStatus] = []
          for try await message in response.messages {
            statuses.append(message.status)
            if statuses.count == 1 { server.service.draining.set() }
            if message.status == .notServing { break }
          }
          return statuses
        }
        XCTAssertEqual(seen, [.serving, .notServing])
        let drained = try await check("")
        XCTAssertEqual(drained, .notServing)
      }
    }
  }
}
