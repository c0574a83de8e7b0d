import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilTensor
import XCTest

/// `veil train` on TON_IoT records turned into images, as a user runs it.
extension CLITests {
  /// 240 rows in the TON_IoT schema, 60 of each of four attack types, whose duration, byte
  /// counts and protocol depend on the type (with noise), so a classifier can learn them.
  func learnableTonIoTCSV() throws -> URL {
    var lines = [Self.tonIoTHeader]
    let types = ["normal", "backdoor", "ddos", "scanning"]
    var g = SeededGenerator(seed: 11)
    for i in 0..<240 {
      let t = i % 4
      var f = Self.tonIoTRealRow.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
      f[5] = t == 2 ? "udp" : "tcp"
      f[7] = String(format: "%.4f", Double(t) * 2 + Double(g.nextUniform()))
      f[8] = String(Int(pow(10, Double(t) + 1 + Double(g.nextUniform()))))
      f[9] = String(t == 3 ? 0 : Int(g.nextUniform() * 5000))
      f[44] = t == 0 ? "0" : "1"
      f[45] = types[t]
      lines.append(f.joined(separator: ","))
    }
    let url = temp("learnable.csv")
    try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
    return url
  }

  func testTrainSmallCNNOnTonIoTImagesResumesAndExports() throws {
    let csv = try learnableTonIoTCSV()
    let data = temp("ton-train")
    let out = temp("train-out")
    defer { for f in [csv, data, out] { try? FileManager.default.removeItem(at: f) } }
    let converted = try veil(["data", "ton-iot", "--csv", csv.path, "--out", data.path, "--size", "12"])
    XCTAssertEqual(converted.status, 0, converted.stderr)
    let args = [
      "train", "--model", "small-cnn", "--data", data.path, "--epochs", "12", "--batch", "16", "--lr", "0.01", "--out", out.path,
      "--json",
    ]
    let r = try veil(args)
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertTrue(r.stderr.contains("epoch 12/12 [####################] step ") && r.stderr.contains(" ETA "), r.stderr)
    let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
    let heldOut = try XCTUnwrap(doc["heldOut"] as? [String: Any])
    let accuracy = try XCTUnwrap(heldOut["accuracy"] as? Double)
    let confusion = try XCTUnwrap(heldOut["confusion"] as? [[Int]])
    let classes = try XCTUnwrap(doc["classes"] as? [String])
    print("veil train small-cnn on 240 TON_IoT-schema rows: held-out accuracy \(accuracy), macro-F1 \(heldOut["macroF1"] ?? 0), losses \(doc["epochLosses"] ?? [])")
    // Four classes occur: chance is 0.25.
    XCTAssertGreaterThan(accuracy, 0.6, r.stdout)
    XCTAssertEqual(confusion.count, classes.count)
    XCTAssertEqual(confusion.flatMap { $0 }.reduce(0, +), doc["heldOutSamples"] as? Int)

    // The exported ONNX model, run by the inference executor, predicts what training reported.
    var graph = try ONNXReader.read(out.appendingPathComponent("model.onnx"))
    let test = try DataSet.folder(data.appendingPathComponent("test"))
    graph = try graph.withBatch(test.samples.count)
    let images = try (0..<test.samples.count).map { i -> Tensor in
      let t = try test.load(i).tensor(normalization: .unit)
      return t.withUnsafeBuffer { s in Tensor(shape: [1, 1, 12, 12]) { d in for k in 0..<d.count { d[k] = s[k] } } }
    }
    let logits = try Executor(graph: graph).run([try Tensor.concatenateBatch(images)])[0]
    let k = logits.shape[1]
    let predictions = (0..<test.samples.count).map { i in (0..<k).max { logits.scalars[i * k + $0] < logits.scalars[i * k + $1] }! }
    let correct = zip(predictions, test.samples.map(\.label)).filter { $0 == $1 }.count
    XCTAssertEqual(Double(correct) / Double(test.samples.count), accuracy, accuracy: 1e-9)
    XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.safetensors").path))

    // A second run with more epochs resumes from the checkpoint instead of starting over.
    var more = args
    more[more.firstIndex(of: "12")!] = "13"
    let resumed = try veil(more)
    XCTAssertEqual(resumed.status, 0, resumed.stderr)
    XCTAssertTrue(resumed.stderr.contains("after epoch 12"), resumed.stderr)
    XCTAssertFalse(resumed.stderr.contains("epoch 12/13"), resumed.stderr)
    let again = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(resumed.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(again["resumedAfterEpoch"] as? Int, 12)
    XCTAssertEqual((again["epochLosses"] as? [Double])?.count, 13)

    // The privacy attack runs on the trained classifier and the TON_IoT images (as the paper's
    // sweep on its fine-tuned models): c-GAN at the first pooling cut, images 16×16.
    let attackOut = temp("attack-out")
    defer { try? FileManager.default.removeItem(at: attackOut) }
    let attacked = try veil([
      "attack", "--model", out.appendingPathComponent("model.onnx").path, "--data", data.path, "--cut", "pool1",
      "--attacker", "cgan", "--image-size", "16", "--epochs", "2", "--batch", "16", "--preprocess", "unit", "--no-cache",
      "--out", attackOut.path, "--json",
    ])
    XCTAssertEqual(attacked.status, 0, attacked.stderr)
    let result = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(attacked.stdout.utf8)) as? [String: Any], attacked.stdout)
    print("veil attack on small-cnn/pool1 over TON_IoT images: \(result["ssim"] ?? "?") held-out \(result["heldOutCount"] ?? "?")")
    // One sample per record (240 rows: 25 % of them held out, 10 % of the rest for validation),
    // none mirrored or cropped; the records are scored by the fields they give back.
    let counts = ["heldOutCount", "trainCount", "validationCount"].compactMap { result[$0] as? Int }
    XCTAssertEqual(counts.reduce(0, +), 240, attacked.stdout)
    let measures = (result["measures"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
    XCTAssertEqual(measures, ["ssim", "psnr", "fields"], attacked.stdout)
    XCTAssertTrue(FileManager.default.fileExists(atPath: attackOut.appendingPathComponent("grid.png").path))

    // Bad input: a folder without class sub-folders, a node that does not exist.
    let empty = try veil(["train", "--model", "small-cnn", "--data", csv.path, "--out", out.path])
    XCTAssertNotEqual(empty.status, 0)
    XCTAssertTrue(empty.stderr.contains("is not a folder"), empty.stderr)
    let frozen = try veil(["train", "--model", "small-cnn", "--data", data.path, "--freeze-until", "nope", "--out", temp("x").path])
    XCTAssertNotEqual(frozen.status, 0)
    XCTAssertTrue(frozen.stderr.contains("no node or value named 'nope'"), frozen.stderr)
    let help = try veil(["train", "--help"])
    XCTAssertTrue(help.stdout.contains("--freeze-until") && help.stdout.contains("checkpoint.safetensors"), help.stdout)
  }
}
