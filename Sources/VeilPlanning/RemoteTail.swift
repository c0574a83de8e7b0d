import Dispatch
import Foundation
import VeilGraph
import VeilServing
import VeilTensor

/// Times tails on a KServe v2 / Triton gRPC server: the one the tail will run on. The server
/// serves the tail of every cut under `DeploymentPlan.profilingTailName` (`veil accelerator
/// serve --every-cut MODEL` does); each cut's time is the median round trip of a real
/// ModelInfer call carrying the feature map, so the wire, gRPC and the server's queue are in it.
public struct KServeTailTimer: TailTimer {
  public let endpoint: KServeEndpoint
  /// The model's name as the server was given it (a file path or a zoo name; its stem counts).
  public let model: String
  public let timeout: Duration

  public init(endpoint: KServeEndpoint, model: String, timeout: Duration = .seconds(120)) {
    self.endpoint = endpoint
    self.model = model
    self.timeout = timeout
  }

  public var label: String { "remote: KServe v2 server at \(endpoint) (measured round trip, wire included)" }

  public func seconds(cut: CutPoint, feature: Tensor, runs: Int, warmup: Int) throws -> Double {
    let name = DeploymentPlan.profilingTailName(model: model, cut: cut.name)
    let endpoint = endpoint
    let timeout = timeout
    let times = try waitFor { () async throws -> [Double] in
      let client = try KServeClient(endpoint: endpoint, defaultTimeout: timeout)
      do {
        let meta: KServeModelMetadata
        do { meta = try await client.modelMetadata(name: name) } catch let e as KServeError where e.kind == .notFound {
          throw ProfileRemoteError.missingTail(endpoint: endpoint.description, name: name, model: model)
        }
        guard meta.inputs.count == 1, let declared = meta.inputs.first?.shape, declared.count == feature.shape.count,
          zip(declared, feature.shape).allSatisfy({ $0 == -1 || $0 == $1 })
        else {
          throw ProfileRemoteError.wrongTail(
            endpoint: endpoint.description, name: name, declared: meta.inputs.map { "\($0.name) \($0.shape)" }.joined(separator: ", "),
            expected: feature.shape)
        }
        let input = KServeTensor(name: meta.inputs[0].name, tensor: feature)
        for _ in 0..<warmup { _ = try await client.infer(model: name, inputs: [input]) }
        var times: [Double] = []
        for _ in 0..<runs {
          let t0 = DispatchTime.now().uptimeNanoseconds
          _ = try await client.infer(model: name, inputs: [input])
          times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        await client.close()
        return times
      } catch {
        await client.close()
        throw error
      }
    }
    return times.median
  }
}

public enum ProfileRemoteError: Error, CustomStringConvertible {
  case missingTail(endpoint: String, name: String, model: String)
  case wrongTail(endpoint: String, name: String, declared: String, expected: [Int])

  public var description: String {
    switch self {
    case .missingTail(let endpoint, let name, let model):
      return "the accelerator at \(endpoint) serves no model '\(name)': start it with `veil accelerator serve --every-cut \(model)` (it serves the tail of every cut under such names)"
    case .wrongTail(let endpoint, let name, let declared, let expected):
      return "the accelerator at \(endpoint) serves '\(name)' with input \(declared), but this cut's feature map is \(expected): it was started with another model; restart it with this one"
    }
  }
}

/// Runs async work to completion from synchronous code (the profiler is synchronous; the
/// KServe client is not). Must not be called from a task of the cooperative pool.
func waitFor<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
  let box = WaitBox<T>()
  Task {
    do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
    box.done.signal()
  }
  box.done.wait()
  return try box.result!.get()
}

/// The result `waitFor` hands from its task to the waiting thread (the semaphore orders the
/// write before the read).
private final class WaitBox<T: Sendable>: @unchecked Sendable {
  var result: Result<T, any Error>?
  let done = DispatchSemaphore(value: 0)
}
