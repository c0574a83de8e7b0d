import Foundation
import SwiftProtobuf
import VeilTestSupport
import XCTest

import VeilServing
import VeilTensor

/// The serving targets' corpus (Fuzz/corpus/plan, kserve-request, kserve-answer, enclave-request)
/// through the decoders the fuzzer drives: every seed decodes and passes the checks, every
/// regression input is refused or decodes, none traps.
final class ServingFuzzCorpusTests: XCTestCase {
  func replay(_ target: String, _ parse: ([UInt8]) throws -> Void) throws {
    for (name, bytes) in try FuzzCorpus.files(target) {
      if name.hasPrefix("seed-") {
        XCTAssertNoThrow(try parse(bytes), "\(target)/\(name) is a seed: it must decode")
      } else {
        _ = try? parse(bytes)
      }
    }
  }

  /// The fuzz harness's models: the tiny convolution, unbatched and batching up to 8 rows.
  func testKServeRequests() throws {
    let g = FuzzServingModel.graph()
    let one = try KServeModel(KServeModelSpec(name: "one", graph: g))
    let many = try KServeModel(
      KServeModelSpec(name: "many", graph: g, batching: KServeBatching(maxBatchSize: 8, maxQueueDelay: .zero)))
    defer { one.shutdown(); many.shutdown() }
    try replay("kserve-request") { bytes in
      let q = try Inference_ModelInferRequest(serializedBytes: bytes)
      let m = q.modelName == "many" ? many : one
      let (inputs, _) = try AcceleratorService.decodeInputs(q, for: m)
      XCTAssertEqual(inputs.first?.shape.dropFirst(), [3, 8, 8])
      _ = try AcceleratorService.requestedOutputs(q, for: m)
    }
  }

  /// plan.json: the seeds (each defence, a private output) decode and validate; the rest are
  /// refused or decode, and a valid plan's defence applies to a map of its cut's shape.
  func testPlans() throws {
    var kinds: Set<String> = []
    try replay("plan") { bytes in
      let plan = try DeploymentPlan.decode(Data(bytes), file: "corpus")
      guard let d = plan.defence, let n = KServeCodec.elementCount(plan.cut.featureShape), n <= 1 << 16 else { return }
      kinds.insert(d.defence.kind.rawValue)
      let map = Tensor(shape: plan.cut.featureShape) { o in for k in o.indices { o[k] = Float(k % 17) - 8 } }
      if d.wire != nil {
        XCTAssertEqual(try d.defence.encode(map, channelAxis: d.channelAxis).decoded().shape, map.shape)
      } else {
        var random = SeededGenerator(seed: 1)
        XCTAssertEqual(try d.defence.apply(to: map, channelAxis: d.channelAxis, using: &random).shape, map.shape)
      }
    }
    XCTAssertEqual(kinds, ["gaussian", "laplace", "quantise", "prune"], "the seeds cover every defence")
  }

  func testKServeAnswers() throws {
    let logits = KServeTensorMetadata(name: "logits", datatype: KServeCodec.fp32, shape: [1, 1000])
    try replay("kserve-answer") { bytes in
      let r = try Inference_ModelInferResponse(serializedBytes: bytes)
      let decoded = try KServeClient.decode(r, expecting: [logits])
      XCTAssertEqual(decoded.outputs.map(\.tensor.shape), [[1, 1000]])
    }
  }

  func testEnclaveRequests() throws {
    try replay("enclave-request") { bytes in
      let q = try EnclaveRequestMessage(serializedBytes: bytes)
      switch q.input {
      case .tensor(let t): _ = try t.tensor(maxElements: 3 * 224 * 224)
      case .image(let data):
        guard case .size = encodedImageSize(data) else { throw CocoaError(.fileReadCorruptFile) }
      case .pixels(let p): _ = try p.image(width: Int(p.width), height: Int(p.height))
      case nil: throw CocoaError(.fileReadCorruptFile)
      }
    }
  }
}
