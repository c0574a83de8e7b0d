import Foundation
import VeilTensor
import VeilTestSupport
import XCTest

import VeilData

final class DataSetTests: XCTestCase {
  var root: URL!

  override func setUpWithError() throws {
    root = try PythonScript.temporaryDirectory("dataset")
  }

  override func tearDownWithError() throws {
    try? FileManager.default.removeItem(at: root)
  }

  /// A w×h RGB PNG whose every sample is `value`.
  @discardableResult
  func png(_ path: String, value: UInt8, width: Int = 9, height: Int = 6) throws -> URL {
    let url = root.appendingPathComponent(path)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    let img = try ByteImage(
      width: width, height: height, channels: 3, pixels: Array(repeating: value, count: width * height * 3))
    try ImageCodec.writePNG(img, to: url)
    return url
  }

  func testClassFoldersGiveSortedLabels() throws {
    try png("set/zebra/a.png", value: 1)
    try png("set/ant/deep/er/b.png", value: 2)
    try png("set/ant/c.png", value: 3)
    try Data("notes".utf8).write(to: root.appendingPathComponent("set/ant/readme.txt"))
    let d = try DataSet.folder(root.appendingPathComponent("set"))
    XCTAssertEqual(d.classNames, ["ant", "zebra"])
    XCTAssertEqual(d.samples.map(\.label), [0, 0, 1])
    XCTAssertEqual(d.classCounts, [2, 1])
    XCTAssertEqual(try d.load(2).pixels.first, 1)
    try png("set/loose.png", value: 4)
    XCTAssertThrowsError(try DataSet.folder(root.appendingPathComponent("set"))) { error in
      XCTAssertTrue("\(error)".contains("loose.png"), "\(error)")
    }
    try FileManager.default.createDirectory(
      at: root.appendingPathComponent("empty/cls"), withIntermediateDirectories: true)
    XCTAssertThrowsError(try DataSet.folder(root.appendingPathComponent("empty"))) { error in
      XCTAssertTrue("\(error)".contains("no PNG or JPEG"), "\(error)")
    }
  }

  /// A split or class folder linked in from elsewhere is followed; a link cycle ends.
  func testSymlinkedClassFoldersAreFollowedOnce() throws {
    try png("elsewhere/ant/a.png", value: 1)
    try png("elsewhere/ant/deep/b.png", value: 2)
    try png("set/zebra/c.png", value: 3)
    let fm = FileManager.default
    try fm.createSymbolicLink(
      at: root.appendingPathComponent("set/ant"), withDestinationURL: root.appendingPathComponent("elsewhere/ant"))
    try fm.createSymbolicLink(
      at: root.appendingPathComponent("elsewhere/ant/deep/loop"), withDestinationURL: root.appendingPathComponent("elsewhere"))
    try fm.createSymbolicLink(at: root.appendingPathComponent("linked-set"), withDestinationURL: root.appendingPathComponent("set"))
    for top in ["set", "linked-set"] {
      let d = try DataSet.folder(root.appendingPathComponent(top))
      XCTAssertEqual(d.classNames, ["ant", "zebra"], top)
      XCTAssertEqual(d.samples.map(\.label), [0, 0, 1], top)
      XCTAssertEqual(d.samples.map { URL(fileURLWithPath: $0.name).lastPathComponent }, ["a.png", "b.png", "c.png"], top)
    }
  }

  func testFlatFolderWithALabelsFile() throws {
    try png("val/img_2.png", value: 20)
    try png("val/img_1.png", value: 10)
    try png("val/img_3.png", value: 30)
    let named = root.appendingPathComponent("named.txt")
    try "img_1.png cat\nimg_3.png,dog\n\nimg_2.png cat\n".write(to: named, atomically: true, encoding: .utf8)
    let d = try DataSet.flatFolder(root.appendingPathComponent("val"), labels: named)
    XCTAssertEqual(d.classNames, ["cat", "dog"])
    XCTAssertEqual(
      d.samples.map { URL(fileURLWithPath: $0.name).lastPathComponent }, ["img_1.png", "img_3.png", "img_2.png"])
    XCTAssertEqual(d.samples.map(\.label), [0, 1, 0])
    // ImageNet's ground-truth style: one index per line, for the files in sorted order.
    let bare = root.appendingPathComponent("bare.txt")
    try "5\n0\n5\n".write(to: bare, atomically: true, encoding: .utf8)
    let b = try DataSet.flatFolder(root.appendingPathComponent("val"), labels: bare)
    XCTAssertEqual(b.classNames.count, 6)
    XCTAssertEqual(try b.samples.indices.map { try b.load($0).pixels[0] }, [10, 20, 30])
    XCTAssertEqual(b.samples.map(\.label), [5, 0, 5])
    try "5\n0\n".write(to: bare, atomically: true, encoding: .utf8)
    XCTAssertThrowsError(try DataSet.flatFolder(root.appendingPathComponent("val"), labels: bare)) { error in
      XCTAssertTrue("\(error)".contains("bare.txt:2: 2 labels for 3 images"), "\(error)")
    }
    try "img_1.png cat\nimg_9.png dog\n".write(to: named, atomically: true, encoding: .utf8)
    XCTAssertThrowsError(try DataSet.flatFolder(root.appendingPathComponent("val"), labels: named)) { error in
      XCTAssertTrue("\(error)".contains("named.txt:2: no image 'img_9.png'"), "\(error)")
    }
  }

  /// IDX files as MNIST ships them, plain and gzip-compressed.
  func testIDXImagesAndLabels() throws {
    let n = 5
    var images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, UInt8(n), 0, 0, 0, 4, 0, 0, 0, 3]
    for i in 0..<n { images += (0..<12).map { UInt8(i * 12 + $0) } }
    let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, UInt8(n), 3, 1, 4, 1, 5]
    let imgURL = root.appendingPathComponent("t10k-images-idx3-ubyte")
    let lblURL = root.appendingPathComponent("t10k-labels-idx1-ubyte")
    try Data(images).write(to: imgURL)
    try Data(labels).write(to: lblURL)
    let plain = try DataSet.idx(images: imgURL, labels: lblURL)
    XCTAssertEqual(plain.samples.map(\.label), [3, 1, 4, 1, 5])
    let third = try plain.load(2)
    XCTAssertEqual([third.width, third.height, third.channels], [3, 4, 1])
    XCTAssertEqual(third.pixels, (24..<36).map { UInt8($0) })
    // gzip, as Debian's dataset-fashion-mnist ships them.
    for url in [imgURL, lblURL] {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/bin/gzip")
      p.arguments = ["-k", url.path]
      try p.run()
      p.waitUntilExit()
      XCTAssertEqual(p.terminationStatus, 0)
    }
    let gz = try DataSet.idx(
      images: imgURL.appendingPathExtension("gz"), labels: lblURL.appendingPathExtension("gz"),
      classNames: ["a", "b", "c", "d", "e", "f"])
    XCTAssertEqual(try gz.load(4), try plain.load(4))
    XCTAssertEqual(gz.classNames.count, 6)
    // Written out as class folders (`veil data idx`), read back as a folder data set with the
    // same labels, in class order although "f" sorts after "b".
    let out = root.appendingPathComponent("written")
    let counts = try gz.writeClassFolders(to: out, limit: 4)
    XCTAssertEqual(counts, ["1-b": 2, "3-d": 1, "4-e": 1])
    let back = try DataSet.folder(out)
    XCTAssertEqual(back.classNames, ["1-b", "3-d", "4-e"])
    XCTAssertEqual(back.samples.map { DataSet.classIndex(ofFolder: back.classNames[$0.label]) }, [1, 1, 3, 4])
    XCTAssertEqual(try back.load(3).pixels, try plain.load(2).pixels, "sample 2 (class 4) is 4-e/2.png")
    try Data(images.dropLast(7)).write(to: imgURL)
    XCTAssertThrowsError(try DataSet.idx(images: imgURL, labels: lblURL)) { error in
      XCTAssertTrue("\(error)".contains("t10k-images-idx3-ubyte: IDX file, byte 69: truncated"), "\(error)")
    }
    XCTAssertThrowsError(try DataSet.idx(images: lblURL, labels: lblURL)) { error in
      XCTAssertTrue("\(error)".contains("byte 0: magic number 0x00000801, expected 0x00000803"), "\(error)")
    }
  }

  /// Class folders keep the class order when sorted (the index zero-padded), and the index
  /// reads back; a name that is not `<digits>-…` has none.
  func testClassFolderNamesSortInClassOrder() {
    let names = (0..<12).map { DataSet.classFolder($0, "c/\($0)", classes: 12) }
    XCTAssertEqual(names[3], "03-c_3")
    XCTAssertEqual(names.sorted(), names)
    XCTAssertEqual(names.map(DataSet.classIndex(ofFolder:)), (0..<12).map { $0 })
    XCTAssertEqual(DataSet.classFolder(3, "dos", classes: 10), "3-dos")
    for other in ["n01440764", "-3-x", "12", "1234567-x", "٣-x"] { XCTAssertNil(DataSet.classIndex(ofFolder: other), other) }
  }

  func testRandomCropsAreSeededAndSplitBySourcePhoto() throws {
    for i in 0..<12 {
      // Photos whose pixel (x, y) encodes x + 20·y, so a crop tells where it was cut.
      let url = root.appendingPathComponent("photos/\(i % 3 == 0 ? "a" : "b")/p\(i).png")
      try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
      let img = ByteImage(width: 20, height: 10, channels: 1, fill: { buf in for k in 0..<200 { buf[k] = UInt8(k) } })
      try ImageCodec.writePNG(img, to: url)
    }
    let photos = try DataSet.folder(root.appendingPathComponent("photos"))
    let crops = try photos.randomCrops(count: 4, width: 6, height: 5, seed: 11)
    XCTAssertEqual(crops.samples.count, 48)
    let again = try photos.randomCrops(count: 4, width: 6, height: 5, seed: 11)
    var origins = Set<UInt8>()
    for i in crops.samples.indices {
      let c = try crops.load(i)
      XCTAssertEqual(c, try again.load(i))
      XCTAssertEqual([c.width, c.height], [6, 5])
      XCTAssertLessThanOrEqual(Int(c[0, 0, 0]) % 20, 14)
      origins.insert(c[0, 0, 0])
    }
    XCTAssertGreaterThan(origins.count, 10, "crops should land in many places")
    let other = try photos.randomCrops(count: 4, width: 6, height: 5, seed: 12)
    XCTAssertNotEqual(try (0..<8).map { try crops.load($0) }, try (0..<8).map { try other.load($0) })
    let splits = crops.split(try SplitFractions(train: 0.5, validation: 0.25, test: 0.25), seed: 3)
    var splitOfGroup: [Int: Split] = [:]
    for (split, d) in splits {
      for s in d.samples {
        XCTAssertEqual(splitOfGroup[s.group] ?? split, split, "crops of photo \(s.group) in two splits")
        splitOfGroup[s.group] = split
      }
    }
    XCTAssertEqual(splits.values.map(\.samples.count).reduce(0, +), 48)
    XCTAssertEqual(Set(splitOfGroup.values).count, 3)
    let tooBig = try photos.randomCrops(count: 1, width: 30, height: 5, seed: 1)
    XCTAssertThrowsError(try tooBig.load(0)) { error in
      XCTAssertTrue("\(error)".contains("p0.png") && "\(error)".contains("smaller than the 30×5 crop"), "\(error)")
    }
  }

  func testPrefetchingLoaderKeepsOrderBoundsItsBufferAndReportsErrors() throws {
    for i in 0..<7 { try png("set/c\(i % 2)/\(i).png", value: UInt8(i * 10)) }
    try Data("broken".utf8).write(to: root.appendingPathComponent("set/c1/zz_broken.png"))
    let d = try DataSet.folder(root.appendingPathComponent("set"))
    var lines: [String] = []
    let bar = ProgressBar(total: 4, label: "test") { lines.append($0) }
    let made = Counter()
    let loader = PrefetchingLoader(count: 4, capacity: 2, progress: bar) { i in
      made.increment()
      return try d.batches(size: 2, prefetch: 1, transform: { try $0.tensor() }).next().map { _ in i } ?? -1
    }
    // Nothing is taken: the producer fills the buffer, makes one more item and waits for room.
    try waitFor("the producer waits for room") { loader.producerIsWaitingForRoom }
    XCTAssertEqual(loader.buffered, 2, "the producer may run at most `capacity` ahead")
    XCTAssertEqual(made.value, 3, "two buffered and the one it holds")
    var got: [Int] = []
    while let i = try loader.next() { got.append(i) }
    XCTAssertEqual(got, [0, 1, 2, 3])
    // A loader dropped half-way is freed, and its producer stops instead of waiting forever.
    let produced = Counter()
    let exited = Counter()
    var early: PrefetchingLoader<Int>? = PrefetchingLoader(
      count: 1000, capacity: 2, producerExited: { exited.increment() }
    ) { i in
      produced.increment()
      return i
    }
    XCTAssertEqual(try early?.next(), 0)
    weak let dropped = early
    early = nil
    XCTAssertNil(dropped, "the producer thread must not keep the loader alive")
    try waitFor("the producer of a dropped loader ends") { exited.value == 1 }
    XCTAssertLessThanOrEqual(produced.value, 5, "it stopped at the buffer's bound, not at 1000")
    XCTAssertEqual(lines.last?.hasPrefix("test [########################] 4/4 100%"), true, lines.description)

    let batches = try d.batches(size: 3, transform: { try $0.tensor() })
    let first = try XCTUnwrap(try batches.next())
    XCTAssertEqual(first.inputs.shape, [3, 3, 6, 9])
    XCTAssertEqual(first.labels, d.samples[0..<3].map(\.label))
    XCTAssertEqual(first.inputs.scalars[0], Float(try d.load(0).pixels[0]) / 255, accuracy: 1e-6)
    _ = try batches.next()
    // The third batch holds the broken file: its error names it.
    XCTAssertThrowsError(try batches.next()) { error in
      XCTAssertTrue("\(error)".contains("zz_broken.png"), "\(error)")
    }
    // Images of another size cannot share a batch: the error names the odd one.
    try FileManager.default.removeItem(at: root.appendingPathComponent("set/c1/zz_broken.png"))
    try png("set/c1/zz_wide.png", value: 1, width: 12)
    let mixed = try DataSet.folder(root.appendingPathComponent("set")).batches(size: 8, transform: { try $0.tensor() })
    XCTAssertThrowsError(try mixed.next()) { error in
      XCTAssertTrue("\(error)".contains("zz_wide.png") && "\(error)".contains("[1, 3, 6, 12]"), "\(error)")
    }
  }
}

/// Polls `condition` until it holds, failing after `seconds`: a wait for an event with a
/// deadline, never a fixed sleep.
func waitFor(_ what: String, seconds: Double = 30, _ condition: () -> Bool) throws {
  struct Timeout: Error, CustomStringConvertible { var description: String }
  let deadline = Date().addingTimeInterval(seconds)
  while !condition() {
    guard Date() < deadline else { throw Timeout(description: "\(what): not within \(seconds) s") }
    Thread.sleep(forTimeInterval: 0.002)
  }
}

/// A thread-safe tally for the producer side of a loader.
final class Counter: @unchecked Sendable {
  private let lock = NSLock()
  private var n = 0
  func increment() {
    lock.lock()
    n += 1
    lock.unlock()
  }
  var value: Int {
    lock.lock()
    defer { lock.unlock() }
    return n
  }
}
