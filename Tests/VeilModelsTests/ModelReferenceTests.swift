import Foundation
import VeilFormats
import VeilGraph
import VeilModels
import VeilTensor
import VeilTestSupport
import XCTest

/// Every zoo model, end to end, against ONNX Runtime on the same seeded weights and input.
///
/// Criterion, per tensor: max|veil − ort| ≤ 1e-4 · max|ort|, for Veil's executor both as
/// compiled by default (inference passes: BatchNorm folding, post-op fusion) and with
/// `optimize: false`. The bound is relative to the tensor's peak, not element-wise: dozens of
/// layers of float32 sums in different orders (oneDNN's blocked convolutions against ORT's
/// GEMMs) leave an error that scales with the activations, and a value near zero carries the
/// rounding of its large neighbours.
///
/// Two checks share one run of reference.py (all models, ResNet-50 also at batch 2):
/// - the logits, from the model compiled as `veil run` compiles it (no retained values);
/// - every cut point (`metadata["cuts"]`, the feature maps a split hands across), read through
///   `ExecutorOptions(retain:)` as a split reads them; ORT computes them as extra outputs.
/// The cut points are not a luxury: with the zoo's seeded weights (torchvision's fan-out init,
/// under which a depthwise convolution shrinks its input about tenfold, and BatchNorm running
/// means drawn from N(0, 0.1)) the image's influence fades through EfficientNet-B0,
/// EfficientNet-Lite0 and MobileNetV2, whose logits move by only ~3e-7 of their peak when the
/// image changes. A wrong kernel in an early block would leave their logits inside the bound;
/// checked at every block's output, it shows where it happens.
final class ModelReferenceTests: XCTestCase {
  static let relativeTolerance: Float = 1e-4

  func testLogitsMatchONNXRuntime() throws { try check(cutPoints: false) }

  func testCutPointsMatchONNXRuntime() throws { try check(cutPoints: true) }

  /// Builds each model once, runs it with optimize off then on, and compares the logits or the
  /// cut points with ORT's. Failures and the measured errors name the model and the tensor.
  func check(cutPoints: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
    let expected: [String: [Tensor]]
    switch Self.reference {
    case .success(let r): expected = r
    case .failure(let e):
      XCTFail("reference outputs unavailable: \(e)", file: file, line: line)
      return
    }
    let start = Date()
    var report: [String] = []
    for model in Self.plan {
      var source: Graph? = try model.build()
      let cuts = source.map(Model.cutPoints) ?? []
      let names = cutPoints ? cuts : ["logits"]
      guard let all = expected[model.label], all.count == 1 + cuts.count else {
        XCTFail(
          "\(model.label): ORT gave \(expected[model.label]?.count ?? 0) tensors, expected \(1 + cuts.count)",
          file: file, line: line)
        continue
      }
      let want = cutPoints ? Array(all.dropFirst()) : [all[0]]
      let input = model.input
      for optimize in [false, true] {
        let label = "\(model.label) [optimize: \(optimize)]"
        let got: [Tensor]
        do {
          let options = ExecutorOptions(optimize: optimize, retain: cutPoints ? cuts : [])
          // The optimized executor comes last and takes the graph itself, so the weights it
          // repacks are held once and freed with it.
          let g = source ?? Graph(name: "")
          if optimize { source = nil }
          let executor = try Executor(graph: g, options: options)
          let (outputs, retained) = try executor.runRetaining([input])
          got = try cutPoints
            ? cuts.map { try XCTUnwrap(retained[$0], "\(label): cut point '\($0)' not retained") } : outputs
        } catch {
          XCTFail("\(label): executor threw: \(error)", file: file, line: line)
          continue
        }
        Self.keep(got, of: model.label, from: cutPoints ? 1 : 0, optimize: optimize)
        guard got.count == want.count else {
          XCTFail("\(label): \(got.count) outputs, ORT gave \(want.count)", file: file, line: line)
          continue
        }
        let results = zip(names, zip(got, want)).map { name, pair in
          (name, Comparison(got: pair.0, want: pair.1, tolerance: .relativeToPeak(Self.relativeTolerance, of: pair.1)))
        }
        let failed = results.filter { !$0.1.passed }
        guard let worst = results.max(by: { $0.1.relativeToPeakError < $1.1.relativeToPeakError }) else { continue }
        let what = cutPoints ? "worst of \(cuts.count) cut points at '\(worst.0)'" : "logits"
        let summary =
          "\(label): max|veil − ort| / max|ort| = \(worst.1.relativeToPeakError) (\(what); max|err| "
          + "\(worst.1.maxAbsError), max|ort| \(worst.1.maxAbsWant); criterion ≤ \(Self.relativeTolerance))"
        report.append(summary)
        print("\(failed.isEmpty ? "ok  " : "FAIL") \(summary)")
        if !failed.isEmpty {
          let list = failed.map { "'\($0.0)' \($0.1.relativeToPeakError)" }.joined(separator: ", ")
          XCTFail(
            "\(summary); \(failed.count)/\(results.count) outside: \(list); worst: \(worst.1)", file: file, line: line)
        }
      }
    }
    XCTAssertEqual(report.count, 2 * Self.plan.count, "every model compared twice", file: file, line: line)
    print(
      String(
        format: "ModelReferenceTests (%@): Veil, models built and run twice, %.1f s",
        cutPoints ? "cut points" : "logits", Date().timeIntervalSince(start)))
  }

  // MARK: - The models and ORT's reference

  struct Model {
    var name: String
    var batch: Int

    var label: String { batch == 1 ? name : "\(name)_batch\(batch)" }

    /// The zoo model with seed 0: one output, the logits, and cut points in its metadata.
    func build() throws -> Graph {
      let graph = try ModelZoo.build(name, batch: batch, seed: 0)
      guard graph.outputs.count == 1, !Self.cutPoints(of: graph).isEmpty else {
        throw SetupError(description: "\(label): expected one output and cut points in the metadata")
      }
      return graph
    }

    /// The cut points, in graph order.
    static func cutPoints(of graph: Graph) -> [String] {
      (graph.metadata["cuts"] ?? "").split(separator: ",").map(String.init)
    }

    /// A seeded image as the model sees it: pixels uniform in [0, range], normalized by the
    /// model's own transform, so the first layer gets the range it was built for (about
    /// [−2.1, 2.6] with torchvision's ImageNet statistics, [−1, 1] with TF Lite's).
    var input: Tensor {
      let t = (try? ModelZoo.info(name).transform) ?? .imageNet()
      let side = (try? ModelZoo.info(name).inputShape[2]) ?? 224
      let shape = [batch, 3, side, side]
      var rng = SeededGenerator(label: label)
      let plane = side * side
      return Tensor(shape: shape) { buffer in
        for i in 0..<buffer.count {
          let c = (i / plane) % 3
          buffer[i] = (t.range * rng.nextUniform() - t.mean[c]) / t.std[c]
        }
      }
    }
  }

  /// Every zoo model at batch 1, and ResNet-50 at batch 2 (batched kernels and reorders).
  static let plan = ModelZoo.names.map { Model(name: $0, batch: 1) } + [Model(name: "resnet50", batch: 2)]

  /// ORT's tensors for every model, by label: the logits, then every cut point in order. One
  /// run of reference.py for all six, on first use; the graphs written for it are freed after.
  static let reference: Result<[String: [Tensor]], any Error> = Result {
    let start = Date()
    var cases: [ReferenceCase] = []
    for model in plan {
      var graph = try model.build()
      for name in Model.cutPoints(of: graph) {
        guard let v = graph.value(named: name) else {
          throw SetupError(description: "\(model.label): cut point '\(name)' names no value")
        }
        graph.outputs.append(v)
      }
      let input = model.input
      let shape = graph.inputs.first.flatMap { graph.shape($0) }
      guard shape == input.shape else {
        throw SetupError(description: "\(model.label): input shape \(shape ?? []), test images \(input.shape)")
      }
      cases.append(ReferenceCase(name: model.label, graph: graph, inputs: [input]))
    }
    let outputs = try ONNXRuntimeReference.outputs(for: cases, in: keptDirectory)
    print(
      String(
        format: "ModelReferenceTests: ONNX Runtime reference (build, write, reference.py) %.1f s",
        Date().timeIntervalSince(start)))
    return outputs
  }

  struct SetupError: Error, CustomStringConvertible {
    var description: String
  }

  /// With VEIL_MODELTESTS_DIR set, the ONNX models (VGG-16's is 553 MB), inputs and ORT's
  /// tensors stay in that folder, and Veil's go beside them (`veil_plain_K.npy`,
  /// `veil_optimized_K.npy` for `expected_K.npy`: 0 the logits, then the cut points in order),
  /// to look at a failure in NumPy. Otherwise the folder is deleted after the run.
  static let keptDirectory: URL? = ProcessInfo.processInfo.environment["VEIL_MODELTESTS_DIR"].map {
    URL(fileURLWithPath: $0, isDirectory: true)
  }

  static func keep(_ tensors: [Tensor], of label: String, from first: Int, optimize: Bool) {
    guard let dir = keptDirectory, let i = plan.firstIndex(where: { $0.label == label }) else { return }
    let folder = dir.appendingPathComponent(ONNXRuntimeReference.folderName(i, label))
    for (k, t) in tensors.enumerated() {
      try? NPY.write(t, to: folder.appendingPathComponent("veil_\(optimize ? "optimized" : "plain")_\(first + k).npy"))
    }
  }
}
