import Foundation
import VeilData
import VeilTensor

/// Field recovery, the measure for tabular records turned into images (TON_IoT, `veil data
/// ton-iot`): SSIM of a padded record image says little, so the image is read back into the
/// record's fields through the data set's own transform, and a field counts as recovered when
/// the reconstruction gives it back (a categorical field: the same category; a numeric one:
/// within `tolerance` of its scaled range). Only the fields the trivial attacker (the mean
/// training image) does not already give back are counted: a field that is the same in most
/// records is no secret. The score of an image is the share of those fields recovered (0 when
/// there are none).
public struct FieldRecoveryMeasure: LeakageMeasure {
  public static let name = "fields"
  public var name: String { Self.name }
  public var binary: Bool { false }
  public let transform: TonIoTTransform
  /// A numeric field is recovered within this share of its scaled (log, min-max) range.
  public let tolerance: Double

  public init(transform: TonIoTTransform, tolerance: Double = 0.05) {
    self.transform = transform
    self.tolerance = tolerance
  }

  /// The transform of a data folder written by `veil data ton-iot` (its `transform.json`),
  /// or nil for a folder of photos.
  public static func forDataFolder(_ folder: URL) throws -> FieldRecoveryMeasure? {
    let file = folder.appendingPathComponent("transform.json")
    guard FileManager.default.fileExists(atPath: file.path) else { return nil }
    return FieldRecoveryMeasure(transform: try TonIoTTransform.load(from: file))
  }

  /// A field read back from an image: a category's slot, or a value in [0, 1].
  enum Field: Equatable {
    case category(Int)
    case value(Double)
  }

  /// The record's fields as image `i` of a [-1, 1] batch shows them: the image's grey level
  /// over the central half of each cell of the k×k grid the vector was laid out in.
  func fields(_ t: Tensor, _ i: Int) -> [Field] {
    let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3])
    let k = transform.side
    let slots: [Double] = t.withUnsafeBuffer { p in
      let base = i * c * h * w
      return (0..<(k * k)).map { cell in
        let (row, col) = (cell / k, cell % k)
        // The cell's central half, at least one pixel.
        let y0 = (4 * row + 1) * h / (4 * k)
        let y1 = max(y0 + 1, (4 * row + 3) * h / (4 * k))
        let x0 = (4 * col + 1) * w / (4 * k)
        let x1 = max(x0 + 1, (4 * col + 3) * w / (4 * k))
        var sum = 0.0
        var count = 0
        for y in y0..<min(y1, h) {
          for x in x0..<min(x1, w) {
            for ch in 0..<c { sum += Double(p[base + (ch * h + y) * w + x]) }
            count += c
          }
        }
        return min(max((sum / Double(max(count, 1)) + 1) / 2, 0), 1)
      }
    }
    var out: [Field] = []
    var slot = 0
    for column in transform.columns {
      if let vocabulary = column.vocabulary {
        if transform.options.encoding == .oneHot {
          let width = vocabulary.count + 1
          let values = slots[slot..<min(slot + width, slots.count)]
          out.append(.category((values.indices.max { values[$0] < values[$1] } ?? slot) - slot))
          slot += width
        } else {
          let v = slot < slots.count ? slots[slot] : 0
          out.append(.category(Int((v * Double(max(vocabulary.count, 1))).rounded())))
          slot += 1
        }
      } else {
        out.append(.value(slot < slots.count ? slots[slot] : 0))
        slot += 1
      }
    }
    return out
  }

  func same(_ a: Field, _ b: Field) -> Bool {
    switch (a, b) {
    case (.category(let x), .category(let y)): return x == y
    case (.value(let x), .value(let y)): return abs(x - y) <= tolerance
    default: return false
    }
  }

  public func scores(_ input: MeasureInput) throws -> [Double] {
    let s = input.originals.shape[2]
    guard transform.side <= s else {
      throw PrivacyError.measure(
        name: name, detail: "the records are \(transform.side)×\(transform.side) cells, more than the \(s)-pixel attack images can show; attack at a larger --image-size")
    }
    let trivial = fields(input.baseline, 0)
    return (0..<input.originals.shape[0]).map { i in
      let truth = fields(input.originals, i)
      let guess = fields(input.reconstructions, i)
      let informative = truth.indices.filter { !same(trivial[$0], truth[$0]) }
      guard !informative.isEmpty else { return 0 }
      return Double(informative.filter { same(guess[$0], truth[$0]) }.count) / Double(informative.count)
    }
  }
}
