import Foundation
import VeilGraph
import VeilModels
import VeilServing
import VeilTensor
import XCTest

/// A vision transformer split between encoder blocks and served as a CNN is: the head in the
/// (simulated) enclave, the [1, tokens, dim] tokens over KServe v2 to Veil's accelerator server
/// (a real gRPC server on loopback), the answer back through the attested channel; it equals the
/// whole model's.
final class TransformerServingTests: XCTestCase {
  func testAViTSplitBetweenBlocksIsServedThroughTheAccelerator() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-vit-serving-\(getpid())")
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = try ModelZoo.build("vit_ti_16", batch: 1, seed: 4)
    let plan = try DeploymentPlan.write(
      model: model, name: "vit_ti_16", cut: "encoder_layer_5", preprocessing: .init(preset: "imagenet", appliedIn: .client),
      to: dir)
    XCTAssertEqual(plan.plan.cut.featureShape, [1, 197, 192], "the tokens cross the cut")
    let (inputs, _) = try plan.tailInterface()
    XCTAssertEqual(inputs.map(\.shape), [[1, 197, 192]])

    let tail = try plan.readPart(plan.plan.tail, field: "tail")
    let running = try await RunningServer([KServeModelSpec(name: plan.plan.accelerator.modelName, graph: tail)])
    let backend = try KServeTailBackend.backends([KServeEndpoint(host: "127.0.0.1", port: running.port)], plan: plan)[0]
    let png = try EnclaveFixture.photo(seed: 8)
    let x = try EnclaveFixture.input(png, plan: plan.plan)
    let reference = try Executor(graph: model).run([x])[0].scalars
    let answer = try await withEnclave(plan: plan, backend: backend) { _, endpoint in
      try await EnclaveClient.with(endpoint, verifier: try EnclaveFixture.verifier()) { client in
        let session = try await client.session()
        let file = dir.appendingPathComponent("photo.png")
        try png.write(to: file)
        let a = try await session.infer(try session.request(photo: file, top: 3, logits: true))
        try await session.close()
        return a
      }
    }
    let logits = try XCTUnwrap(answer.logits).scalars
    XCTAssertLessThan(EnclaveFixture.relativeError(logits, reference), 1e-4)
    XCTAssertEqual(answer.top.map(\.index), topK(reference, 3).map(\.index))
  }
}
