import Foundation
import VeilTensor

/// Where a sample's pixels come from.
public enum SampleSource: Sendable {
  /// A whole image file.
  case file(URL)
  /// Crop number `index` of an image file, at a position drawn from `seed` and `index`.
  case randomCrop(URL, index: Int, width: Int, height: Int, seed: UInt64)
  /// Image `index` of an IDX file.
  case idx(IDXImages, index: Int)
}

public struct Sample: Sendable {
  public var source: SampleSource
  public var label: Int
  /// The source image it was cut from: samples of one group always land in the same split.
  public var group: Int
  /// What errors and listings call it (a path, or "file.idx#123").
  public var name: String
}

/// The three splits.
public enum Split: String, Codable, Sendable, CaseIterable {
  case train
  case validation
  case test
}

/// Shares of train / validation / test; they need not sum to one (they are normalised).
public struct SplitFractions: Codable, Sendable, Equatable {
  public var train: Double
  public var validation: Double
  public var test: Double

  public init(train: Double, validation: Double, test: Double) throws {
    guard train >= 0, validation >= 0, test >= 0, train + validation + test > 0 else {
      throw DataError.invalidArgument(
        "split fractions must be ≥ 0 and not all 0, found \(train), \(validation), \(test)")
    }
    self.train = train
    self.validation = validation
    self.test = test
  }

  /// Parses "0.8,0.1,0.1".
  public init(parsing text: String) throws {
    let parts = text.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
    guard parts.count == 3, let a = parts[0], let b = parts[1], let c = parts[2] else {
      throw DataError.invalidArgument("split '\(text)': expected three numbers TRAIN,VAL,TEST such as 0.8,0.1,0.1")
    }
    try self.init(train: a, validation: b, test: c)
  }

  /// Assigns each group to a split: the groups of each bucket (each class when stratified,
  /// else all) are shuffled with a generator seeded by `seed` and the bucket's label, then cut
  /// in the given proportions (train rounded, validation rounded, test the rest).
  public func assign(groupLabels: [Int], seed: UInt64, stratified: Bool) -> [Split] {
    var buckets: [Int: [Int]] = [:]
    for (g, label) in groupLabels.enumerated() { buckets[stratified ? label : 0, default: []].append(g) }
    var out = [Split](repeating: .train, count: groupLabels.count)
    let total = train + validation + test
    for (key, groups) in buckets {
      var rng = SeededGenerator(seed: seed ^ (UInt64(bitPattern: Int64(key)) &* 0x9E37_79B9_7F4A_7C15))
      var order = groups
      for i in stride(from: order.count - 1, to: 0, by: -1) {
        order.swapAt(i, Int(rng.next() % UInt64(i + 1)))
      }
      let n = Double(order.count)
      let nTrain = Int((n * train / total).rounded())
      let nVal = min(Int((n * validation / total).rounded()), order.count - nTrain)
      for (i, g) in order.enumerated() {
        out[g] = i < nTrain ? .train : i < nTrain + nVal ? .validation : .test
      }
    }
    return out
  }
}

/// A labelled list of image samples; pixels are read when a sample is loaded.
public struct DataSet: Sendable {
  public var classNames: [String]
  public var samples: [Sample]

  public init(classNames: [String], samples: [Sample]) {
    self.classNames = classNames
    self.samples = samples
  }

  static let imageExtensions: Set<String> = ["png", "jpg", "jpeg"]

  /// Every PNG/JPEG file under `url`, at any depth, sorted by path. Symbolic links to folders
  /// are followed (a split folder linked in from elsewhere counts), each real folder once, so a
  /// link cycle ends; hidden entries (".name") are skipped.
  public static func imageFiles(under url: URL) throws -> [URL] {
    guard isDirectory(url) else { throw DataError.io(file: url.path, detail: "no such folder") }
    var files: [URL] = []
    var seen: Set<String> = []
    func walk(_ dir: URL) throws {
      guard seen.insert(dir.resolvingSymlinksInPath().path).inserted else { return }
      let names: [String]
      do { names = try FileManager.default.contentsOfDirectory(atPath: dir.resolvingSymlinksInPath().path) } catch {
        throw DataError.io(file: dir.path, detail: "cannot list the folder (\(error.localizedDescription))")
      }
      for e in names.sorted().map({ dir.appendingPathComponent($0) }) where !e.lastPathComponent.hasPrefix(".") {
        if isDirectory(e) {
          try walk(e)
        } else if imageExtensions.contains(e.pathExtension.lowercased()) {
          files.append(e)
        }
      }
    }
    try walk(url)
    return files.sorted { $0.path < $1.path }
  }

  /// Whether `url` is a folder, or a symbolic link to one.
  static func isDirectory(_ url: URL) -> Bool {
    var dir: ObjCBool = false
    return FileManager.default.fileExists(atPath: url.resolvingSymlinksInPath().path, isDirectory: &dir) && dir.boolValue
  }

  /// ImageNet's train layout: each sub-folder of `url` is a class (labels follow the sorted
  /// folder names), holding PNG/JPEG files at any depth. Files directly under `url` are an
  /// error: they have no class.
  public static func folder(_ url: URL) throws -> DataSet {
    guard isDirectory(url) else { throw DataError.io(file: url.path, detail: "no such folder") }
    let entries = try FileManager.default.contentsOfDirectory(atPath: url.resolvingSymlinksInPath().path)
      .filter { !$0.hasPrefix(".") }.map { url.appendingPathComponent($0) }
    let loose = entries.filter { !isDirectory($0) && imageExtensions.contains($0.pathExtension.lowercased()) }
    if let first = loose.first {
      throw DataError.invalidArgument(
        "\(first.path) lies directly in \(url.path): a class-folder data set keeps each image in its class's sub-folder (use a labels file for a flat folder)"
      )
    }
    let classes = entries.filter(isDirectory).map(\.lastPathComponent).sorted()
    var samples: [Sample] = []
    for (label, name) in classes.enumerated() {
      for f in try imageFiles(under: url.appendingPathComponent(name)) {
        samples.append(Sample(source: .file(f), label: label, group: samples.count, name: f.path))
      }
    }
    guard !samples.isEmpty else {
      throw DataError.empty(
        path: url.path, detail: "no PNG or JPEG files in class sub-folders (\(classes.count) sub-folders)")
    }
    return DataSet(classNames: classes, samples: samples)
  }

  /// The largest class index a labels file may give (ImageNet-21k has 21 841 classes).
  public static let maxClassIndex = 65_535

  /// ImageNet's validation layout: the images lie in `url`, and `labels` says their classes,
  /// one line per image: `FILE LABEL` (or `FILE,LABEL`), or just `LABEL` for each image in
  /// sorted file-name order. Labels are class indices or class names (sorted to indices).
  public static func flatFolder(_ url: URL, labels: URL) throws -> DataSet {
    let files = try imageFiles(under: url).filter {
      $0.deletingLastPathComponent().standardizedFileURL == url.standardizedFileURL
    }
    guard !files.isEmpty else { throw DataError.empty(path: url.path, detail: "no PNG or JPEG files") }
    let text: String
    do { text = try String(contentsOf: labels, encoding: .utf8) } catch {
      throw DataError.io(file: labels.path, detail: "cannot read: \(error.localizedDescription)")
    }
    var pairs: [(file: URL, label: String, line: Int)] = []
    var bare: [(String, Int)] = []
    for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
      if line.isEmpty || line.hasPrefix("#") { continue }
      let parts = line.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }).map(String.init)
      switch parts.count {
      case 1: bare.append((parts[0], i + 1))
      case 2: pairs.append((url.appendingPathComponent(parts[0]), parts[1], i + 1))
      default:
        throw DataError.labels(
          file: labels.path, line: i + 1, detail: "expected `FILE LABEL` or `LABEL`, found '\(line)'")
      }
    }
    if !bare.isEmpty && !pairs.isEmpty {
      throw DataError.labels(file: labels.path, line: bare[0].1, detail: "mixes `LABEL` lines with `FILE LABEL` lines")
    }
    if let last = bare.last {
      guard bare.count == files.count else {
        throw DataError.labels(
          file: labels.path, line: last.1, detail: "\(bare.count) labels for \(files.count) images in \(url.path)")
      }
      pairs = zip(files, bare).map { ($0, $1.0, $1.1) }
    } else {
      let present = Set(files.map(\.standardizedFileURL.path))
      for p in pairs where !present.contains(p.file.standardizedFileURL.path) {
        throw DataError.labels(
          file: labels.path, line: p.line, detail: "no image '\(p.file.lastPathComponent)' in \(url.path)")
      }
    }
    let indices = pairs.compactMap { Int($0.label) }
    let classNames: [String]
    let label: [Int]
    if indices.count == pairs.count {
      // Class indices make a class list 0...max: bounded, so a label of 10^18 is an error, not
      // a list of 10^18 names.
      for (p, k) in zip(pairs, indices) where k < 0 || k > Self.maxClassIndex {
        throw DataError.labels(
          file: labels.path, line: p.line,
          detail: k < 0
            ? "negative class index \(p.label)"
            : "class index \(p.label) is larger than \(Self.maxClassIndex), the most Veil reads; use class names")
      }
      classNames = (0...(indices.max() ?? 0)).map(String.init)
      label = indices
    } else {
      classNames = Set(pairs.map(\.label)).sorted()
      let index = Dictionary(uniqueKeysWithValues: classNames.enumerated().map { ($1, $0) })
      label = pairs.map { index[$0.label] ?? 0 }
    }
    let samples = pairs.enumerated().map { g, p in
      Sample(source: .file(p.file), label: label[g], group: g, name: p.file.path)
    }
    return DataSet(classNames: classNames, samples: samples)
  }

  /// MNIST / Fashion-MNIST: an IDX image file (magic 0x803, N×rows×cols bytes) and its IDX
  /// label file (0x801), plain or gzip-compressed.
  public static func idx(images: URL, labels: URL, classNames: [String]? = nil) throws -> DataSet {
    let imgs = try IDXImages(url: images)
    let labelBytes = try ImageCodec.readMaybeGzip(labels)
    let header = try IDXImages.header(labelBytes, file: labels.path, expectedMagic: 0x801)
    guard header.dims.count == 1, header.dims[0] == imgs.count else {
      throw DataError.idx(
        file: labels.path, offset: 4,
        detail: "label file holds \(header.dims) entries, the image file \(imgs.count) images")
    }
    guard labelBytes.count >= header.dataStart + imgs.count else {
      throw DataError.idx(
        file: labels.path, offset: labelBytes.count,
        detail: "truncated: \(imgs.count) labels need \(header.dataStart + imgs.count) bytes")
    }
    let values = labelBytes[header.dataStart..<(header.dataStart + imgs.count)].map(Int.init)
    let names = classNames ?? (0...(values.max() ?? 0)).map(String.init)
    if let bad = values.firstIndex(where: { $0 >= names.count }) {
      throw DataError.idx(
        file: labels.path, offset: header.dataStart + bad,
        detail: "label \(values[bad]) has no class name (\(names.count) given)")
    }
    let base = images.lastPathComponent
    let samples = values.enumerated().map { i, label in
      Sample(source: .idx(imgs, index: i), label: label, group: i, name: "\(base)#\(i)")
    }
    return DataSet(classNames: names, samples: samples)
  }

  /// `count` crops of `width × height` from every sample image, at seeded positions: crop `k`
  /// of an image is the same on every run. Crops keep their image's group, so a split never
  /// puts crops of one photo on both sides.
  public func randomCrops(count: Int, width: Int, height: Int, seed: UInt64) throws -> DataSet {
    guard count >= 1, width >= 1, height >= 1 else {
      throw DataError.invalidArgument("random crops need count, width and height ≥ 1")
    }
    var out: [Sample] = []
    for s in samples {
      guard case .file(let url) = s.source else {
        throw DataError.invalidArgument("random crops are cut from image files; \(s.name) is not one")
      }
      for k in 0..<count {
        out.append(
          Sample(
            source: .randomCrop(url, index: k, width: width, height: height, seed: seed), label: s.label,
            group: s.group,
            name: "\(s.name)#crop\(k)"))
      }
    }
    return DataSet(classNames: classNames, samples: out)
  }

  /// Train / validation / test, deterministic for a seed: whole groups (source images) are
  /// assigned, stratified by class if asked.
  public func split(_ fractions: SplitFractions, seed: UInt64, stratified: Bool = true) -> [Split: DataSet] {
    var groupLabel: [Int: Int] = [:]
    for s in samples where groupLabel[s.group] == nil { groupLabel[s.group] = s.label }
    let groups = groupLabel.keys.sorted()
    let assigned = fractions.assign(groupLabels: groups.map { groupLabel[$0]! }, seed: seed, stratified: stratified)
    var splitOf: [Int: Split] = [:]
    for (i, g) in groups.enumerated() { splitOf[g] = assigned[i] }
    var out: [Split: DataSet] = [:]
    for split in Split.allCases {
      out[split] = DataSet(classNames: classNames, samples: samples.filter { splitOf[$0.group] == split })
    }
    return out
  }

  /// Sample `i`'s pixels (8-bit, upright).
  public func load(_ i: Int) throws -> ByteImage {
    let s = samples[i]
    switch s.source {
    case .file(let url):
      return try ImageCodec.readUpright(url)
    case .randomCrop(let url, let index, let w, let h, let seed):
      let img = try ImageCodec.readUpright(url)
      guard img.width >= w, img.height >= h else {
        throw DataError.unsupportedImage(
          file: url.path, detail: "\(img.width)×\(img.height) is smaller than the \(w)×\(h) crop")
      }
      var rng = SeededGenerator(seed: seed ^ (UInt64(s.group) &* 0x9E37_79B9_7F4A_7C15) ^ UInt64(index))
      return try img.randomCropped(width: w, height: h, generator: &rng)
    case .idx(let file, let index):
      return file.image(index)
    }
  }

  /// The folder of class `index` among `classes`: `<index>-<name>` with the index zero-padded
  /// to the digits of the largest (`03-dos` of 12), so that the sorted folders keep the class
  /// order and `classIndex(ofFolder:)` reads it back. Characters a path cannot hold become `_`.
  public static func classFolder(_ index: Int, _ name: String, classes: Int) -> String {
    let digits = String(max(classes - 1, 0)).count
    let number = String(index)
    let safe = String(name.map { $0 == "/" || $0 == "\\" || $0 == "\0" || $0.isNewline ? "_" : $0 })
    return String(repeating: "0", count: max(0, digits - number.count)) + number + "-" + safe
  }

  /// The class index a `classFolder` name starts with (`3-dos` → 3), nil for other names.
  public static func classIndex(ofFolder name: String) -> Int? {
    let digits = name.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty, digits.count <= 6, name.dropFirst(digits.count).first == "-" else { return nil }
    return Int(digits)
  }

  /// Writes the first `limit` samples (all when nil) as PNG files under `out`, one folder a
  /// class (`classFolder`), `<k>.png` for sample k: the layout `DataSet.folder`, `veil train`
  /// and `veil plan`'s utility measures read. Returns the images written per class folder.
  @discardableResult
  public func writeClassFolders(to out: URL, limit: Int? = nil, progress: ProgressBar? = nil) throws -> [String: Int] {
    let folders = classNames.enumerated().map { DataSet.classFolder($0, $1, classes: classNames.count) }
    let n = min(limit ?? samples.count, samples.count)
    var counts = Dictionary(uniqueKeysWithValues: folders.map { ($0, 0) })
    let fm = FileManager.default
    for k in 0..<n {
      guard folders.indices.contains(samples[k].label) else {
        throw DataError.invalidArgument("\(samples[k].name) has label \(samples[k].label), outside the \(folders.count) classes")
      }
      let name = folders[samples[k].label]
      let folder = out.appendingPathComponent(name)
      if counts[name] == 0 {
        do { try fm.createDirectory(at: folder, withIntermediateDirectories: true) } catch {
          throw DataError.io(file: folder.path, detail: "cannot create the folder: \(error.localizedDescription)")
        }
      }
      try ImageCodec.writePNG(try load(k), to: folder.appendingPathComponent("\(k).png"))
      counts[name, default: 0] += 1
      progress?.advance()
    }
    progress?.finish()
    return counts.filter { $0.value > 0 }
  }

  /// How many samples each class has.
  public var classCounts: [Int] {
    var counts = [Int](repeating: 0, count: classNames.count)
    for s in samples where s.label < counts.count { counts[s.label] += 1 }
    return counts
  }
}

/// The images of an IDX file, held in memory (Fashion-MNIST's 60,000 are 47 MB).
public final class IDXImages: Sendable {
  public let url: URL
  public let count: Int
  public let rows: Int
  public let columns: Int
  let bytes: [UInt8]
  let dataStart: Int

  /// Reads `url`, inflating it when gzip-compressed; more than `maxBytes` once inflated is an
  /// error (a gzip file of a few megabytes can inflate to gigabytes).
  public init(url: URL, maxBytes: Int = ImageCodec.maxIDXBytes) throws {
    self.url = url
    let bytes = try ImageCodec.readMaybeGzip(url, maxBytes: maxBytes)
    let header = try Self.header(bytes, file: url.path, expectedMagic: 0x803)
    guard header.dims.count == 3 else {
      throw DataError.idx(
        file: url.path, offset: 3, detail: "an image file has 3 dimensions, this one \(header.dims.count)")
    }
    // Sizes are 32-bit each: multiply with overflow checks before comparing with the file.
    var need = 1
    for d in header.dims {
      let (p, overflow) = need.multipliedReportingOverflow(by: d)
      guard !overflow else {
        throw DataError.idx(file: url.path, offset: 4, detail: "sizes \(header.dims) overflow; not an image file")
      }
      need = p
    }
    guard bytes.count - header.dataStart >= need else {
      throw DataError.idx(
        file: url.path, offset: bytes.count,
        detail: "truncated: \(header.dims) images need \(header.dataStart + need) bytes, the file has \(bytes.count)")
    }
    count = header.dims[0]
    rows = header.dims[1]
    columns = header.dims[2]
    guard rows > 0, columns > 0 else {
      throw DataError.idx(file: url.path, offset: 8, detail: "empty images \(rows)×\(columns)")
    }
    self.bytes = bytes
    dataStart = header.dataStart
  }

  /// Magic (two zero bytes, type 0x08 = unsigned byte, dimension count), then big-endian sizes.
  static func header(_ b: [UInt8], file: String, expectedMagic: Int) throws -> (dims: [Int], dataStart: Int) {
    guard b.count >= 4 else {
      throw DataError.idx(file: file, offset: b.count, detail: "too short for the 4-byte magic number")
    }
    let magic = Int(b[0]) << 24 | Int(b[1]) << 16 | Int(b[2]) << 8 | Int(b[3])
    guard magic == expectedMagic else {
      throw DataError.idx(
        file: file, offset: 0,
        detail: String(
          format: "magic number 0x%08X, expected 0x%08X (%@)", magic, expectedMagic,
          expectedMagic == 0x803 ? "unsigned-byte images" : "unsigned-byte labels"))
    }
    let n = Int(b[3])
    guard b.count >= 4 + 4 * n else {
      throw DataError.idx(file: file, offset: b.count, detail: "truncated header: \(n) sizes announced")
    }
    let dims = (0..<n).map { i in (0..<4).reduce(0) { $0 << 8 | Int(b[4 + 4 * i + $1]) } }
    return (dims, 4 + 4 * n)
  }

  public func image(_ index: Int) -> ByteImage {
    let n = rows * columns
    let start = dataStart + index * n
    return ByteImage(width: columns, height: rows, channels: 1) { dst in
      bytes.withUnsafeBufferPointer { src in
        dst.baseAddress!.update(from: src.baseAddress! + start, count: n)
      }
    }
  }
}
