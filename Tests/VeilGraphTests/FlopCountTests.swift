import VeilGraph
import XCTest

/// FLOP counts are figures a report prints, from shapes a file declares: one past `Int.max`
/// saturates there instead of trapping.
final class FlopCountTests: XCTestCase {
  /// Two convolutions whose outputs are each within one tensor's bound (46,340² elements, from a
  /// 1×1 input padded by 46,339 and a 46,340² kernel): each counts 9.2226e18 FLOPs, under
  /// `Int.max`, and their sum overflowed in `totalFlops` and the cut list's running sums.
  func testCountsPastIntMaxSaturate() throws {
    var g = Graph(name: "huge")
    let x = g.addInput(name: "x", shape: [1, 1, 1, 1])
    // Declared, never allocated: the count reads shapes only.
    let w = g.addValue(name: "w", shape: [1, 1, 46_340, 46_340])
    let a = ConvAttributes(kernel: [46_340, 46_340], padsBegin: [46_339, 46_339], padsEnd: [46_339, 46_339])
    var outs: [ValueID] = []
    for name in ["c1", "c2"] {
      let out = g.addNode(.conv(a), name: name, inputs: [x, w])[0]
      g[out].shape = [1, 1, 46_340, 46_340]
      outs.append(out)
    }
    let one = g.flops(of: g.nodes[0])
    XCTAssertEqual(one, 2 * 46_340 * 46_340 * 46_340 * 46_340, "one node still counts exactly")
    XCTAssertEqual(g.totalFlops, Int.max)
    // A single node past Int.max saturates too: its kernel doubled on one side.
    var wide = a
    wide.kernel = [46_340, 92_680]
    let big = g.addNode(.conv(wide), name: "c3", inputs: [x, w])[0]
    g[big].shape = [1, 1, 46_340, 46_340]
    XCTAssertEqual(g.flops(of: g.nodes[2]), Int.max)
  }
}
