import Foundation
import Logging
import VeilGraph
import VeilServing
import VeilTensor

/// Small models and an in-process accelerator server on a free loopback port, for the tests.
enum KServeFixtures {
  /// conv 3→8 (3×3) + ReLU → global average pool → flatten → linear 8→4, batch 1 (re-batches).
  static func tinyModel(seed: UInt64 = 1) -> Graph {
    var rng = SeededGenerator(seed: seed)
    var g = Graph(name: "tiny")
    let x = g.addInput(name: "features", shape: [1, 3, 8, 8])
    var v = g.conv(x, weight: .randomNormal(shape: [8, 3, 3, 3], std: 0.3, generator: &rng), bias: .randomNormal(shape: [8], generator: &rng), .square(3), name: "conv")
    v = g.activation(v, .relu, name: "relu")
    v = g.globalAveragePool(v, name: "pool")
    v = g.flatten(v, name: "flat")
    v = g.linear(v, weight: .randomNormal(shape: [4, 8], std: 0.5, generator: &rng), bias: .randomNormal(shape: [4], generator: &rng), name: "fc")
    g.outputs = [v]
    return g
  }

  /// Four 32-channel 3×3 convolutions at 64×64 (≈0.3 GFLOP): slow enough that requests queue.
  static func slowModel() -> Graph {
    var rng = SeededGenerator(seed: 3)
    var g = Graph(name: "slow")
    var v = g.addInput(name: "x", shape: [1, 32, 64, 64])
    for i in 0..<4 {
      v = g.conv(v, weight: .randomNormal(shape: [32, 32, 3, 3], std: 0.05, generator: &rng), .square(3), name: "c\(i)")
      v = g.activation(v, .relu, name: "r\(i)")
    }
    g.outputs = [v]
    return g
  }

  static func input(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = SeededGenerator(seed: seed)
    return .randomNormal(shape: shape, generator: &rng)
  }

  static func maxDifference(_ a: Tensor, _ b: Tensor) -> Float {
    guard a.shape == b.shape else { return .infinity }
    return zip(a.scalars, b.scalars).map { abs($0 - $1) }.max() ?? 0
  }
}

/// A running accelerator server and one client connected to it.
final class RunningServer: Sendable {
  let server: AcceleratorServer
  let serving: Task<Void, any Error>
  let port: Int
  let client: KServeClient
  let metrics: AcceleratorMetrics
  let models: [KServeModel]

  init(_ specs: [KServeModelSpec], metricsPort: Int? = nil) async throws {
    let metrics = AcceleratorMetrics()
    var repo = KServeModelRepository()
    var models: [KServeModel] = []
    for s in specs {
      let m = try KServeModel(s, metrics: metrics)
      try repo.add(m)
      models.append(m)
    }
    var logger = Logger(label: "veil.accelerator.test")
    logger.logLevel = .warning
    let server = AcceleratorServer(
      config: AcceleratorServerConfig(host: "127.0.0.1", port: 0, metricsPort: metricsPort), repository: repo, metrics: metrics,
      logger: logger)
    self.server = server
    self.metrics = metrics
    self.models = models
    serving = Task { try await server.run() }
    port = try await server.port()
    client = try KServeClient(endpoint: KServeEndpoint(host: "127.0.0.1", port: port), defaultTimeout: .seconds(60))
  }

  func stop() async throws {
    await client.close()
    server.beginGracefulShutdown()
    try await serving.value
  }
}

/// Runs blocking work (a subprocess, a socket read) off the Swift concurrency pool.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { c in
    DispatchQueue.global().async { c.resume(with: Result { try body() }) }
  }
}
