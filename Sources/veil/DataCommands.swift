import ArgumentParser
import Foundation
import VeilData

extension Interpolation: ExpressibleByArgument {}
extension TonIoTTransform.Encoding: ExpressibleByArgument {}
extension TonIoTTransform.Labels: ExpressibleByArgument {}
extension VeilData.Preprocessing.Preset: ExpressibleByArgument {}

struct DataCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "data",
    abstract: "Turn data into image data sets and look at them.",
    subcommands: [TonIoTCommand.self, IDXCommand.self, Show.self])
}

struct TonIoTCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "ton-iot",
    abstract: "Turn a TON_IoT network CSV into an image data set.",
    discussion: """
      Reads the 46-column network CSV of the TON_IoT data set (bring your own copy, e.g.
      Train_Test_Network.csv), splits the rows (stratified by class, seeded), fits the transform on
      the training split (identifier columns dropped, categorical columns one-hot or ordinal over
      their most frequent values plus "other", numeric columns log1p then min-max, clipped), and
      writes each row as a PNG: the feature vector laid out in a k×k grey square, three channels,
      resized to --size. Output: DIR/{train,validation,test}/<i>-<class>/<line>.png,
      DIR/transform.json (load it to transform new records the same way) and DIR/manifest.json.
      Rows that do not parse stop the conversion with their line number, unless --skip-bad-rows.
      """)

  @Option(help: "The TON_IoT network CSV.")
  var csv: String
  @Option(help: "Output folder.")
  var out: String
  @Option(help: "Image side in pixels (the model's input size).")
  var size: Int = 224
  @Option(help: "Classes: 'type' (the ten attack types) or 'binary' (normal / attack).")
  var labels: TonIoTTransform.Labels = .attackType
  @Option(help: "Categorical columns: 'one-hot' or 'ordinal'.")
  var encoding: TonIoTTransform.Encoding = .oneHot
  @Option(help: "Values kept per categorical column (the most frequent); the rest are 'other'.")
  var maxCategories: Int = 16
  @Option(help: "Columns to drop, comma-separated, or 'none'.")
  var drop: String = TonIoT.identifiers.sorted().joined(separator: ",")
  @Option(help: "How the k×k square is resized: nearest, bilinear, bicubic or area.")
  var interpolation: Interpolation = .nearest
  @Option(help: "Train, validation and test shares.")
  var split: String = "0.8,0.1,0.1"
  @Option(help: "Seed of the split.")
  var seed: UInt64 = 0
  @Option(help: "Convert only the first N good rows.")
  var limit: Int?
  @Flag(help: "Skip rows that do not parse (counted, listed in the manifest) instead of stopping.")
  var skipBadRows = false
  @Flag(help: "Print the manifest as one JSON document.")
  var json = false

  func validate() throws {
    guard size >= 1 else { throw ValidationError("--size must be ≥ 1, found \(size)") }
    guard maxCategories >= 1 else { throw ValidationError("--max-categories must be ≥ 1, found \(maxCategories)") }
    if let limit, limit < 1 { throw ValidationError("--limit must be ≥ 1, found \(limit)") }
  }

  func run() throws {
    let dropped = drop == "none" ? [] : drop.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let options = TonIoTTransform.Options(
      dropped: dropped, encoding: encoding, maxCategories: maxCategories, imageSize: size, interpolation: interpolation,
      labels: labels)
    let manifest = try TonIoTConversion.run(
      csv: URL(fileURLWithPath: csv), out: URL(fileURLWithPath: out), options: options,
      fractions: try SplitFractions(parsing: split), seed: seed, policy: skipBadRows ? .skip : .refuse, limit: limit,
      progress: true, log: note)
    if json { return try printJSON(manifest) }
    print(
      "wrote \(manifest.rows) images of \(size)×\(size) (\(manifest.featureCount) features in a \(manifest.side)×\(manifest.side) square) to \(out)"
    )
    for s in Split.allCases {
      let c = manifest.counts[s.rawValue] ?? [:]
      print(
        "  \(s.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(c.values.reduce(0, +)): "
          + manifest.classFolders.map { "\($0) \(c[$0] ?? 0)" }.joined(separator: ", "))
    }
    if manifest.skippedRows > 0 {
      print(
        "skipped \(manifest.skippedRows) bad rows, first: "
          + manifest.skippedExamples.prefix(3).map { "line \($0.line): \($0.reason)" }.joined(separator: "; "))
    }
    print("transform: \(out)/transform.json, manifest: \(out)/manifest.json")
  }
}

struct Show: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write a PNG grid of a data set's samples with their labels.",
    discussion: """
      DATA is a folder of class sub-folders (the ImageNet train layout), or a folder holding
      train/validation/test folders of that layout (as `veil data ton-iot` writes), of which
      --split is shown; with --labels it is a flat folder of images whose classes the labels file
      gives (`FILE LABEL` lines, or one `LABEL` per image in sorted order, as ImageNet's
      validation set). --idx-images and --idx-labels show an MNIST / Fashion-MNIST pair of IDX
      files (plain or .gz) instead. Samples are taken class by class in turn, so every class
      appears.
      """)

  @Option(help: "The data set folder.")
  var data: String?
  @Option(help: "A labels file for a flat folder of images.")
  var labels: String?
  @Option(help: "An IDX image file (…-images-idx3-ubyte[.gz]).")
  var idxImages: String?
  @Option(help: "Its IDX label file (…-labels-idx1-ubyte[.gz]).")
  var idxLabels: String?
  @Option(help: "The PNG to write.")
  var out: String
  @Option(help: "Which split, when DATA holds train/validation/test.")
  var split: Split = .train
  @Option(help: "How many samples.")
  var count: Int = 32
  @Option(help: "Thumbnails per row.")
  var columns: Int = 8
  @Option(help: "Thumbnail side in pixels.")
  var tile: Int = 96

  func validate() throws {
    guard count >= 1 else { throw ValidationError("--count must be ≥ 1, found \(count)") }
    guard (data == nil) != (idxImages == nil), (idxImages == nil) == (idxLabels == nil) else {
      throw ValidationError("give either --data DIR [--labels FILE], or --idx-images FILE with --idx-labels FILE")
    }
  }

  func load() throws -> DataSet {
    if let idxImages, let idxLabels {
      return try DataSet.idx(images: URL(fileURLWithPath: idxImages), labels: URL(fileURLWithPath: idxLabels))
    }
    var root = URL(fileURLWithPath: data ?? ".")
    if let labels { return try DataSet.flatFolder(root, labels: URL(fileURLWithPath: labels)) }
    let nested = root.appendingPathComponent(split.rawValue)
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: nested.path, isDirectory: &isDir), isDir.boolValue { root = nested }
    return try DataSet.folder(root)
  }

  func run() throws {
    let set = try load()
    var byClass = set.classNames.indices.map { c in set.samples.indices.filter { set.samples[$0].label == c } }
    var chosen: [Int] = []
    while chosen.count < count, byClass.contains(where: { !$0.isEmpty }) {
      for c in byClass.indices where !byClass[c].isEmpty && chosen.count < count {
        chosen.append(byClass[c].removeFirst())
      }
    }
    let items = try chosen.map { (image: try set.load($0), caption: set.classNames[set.samples[$0].label]) }
    let grid = try ImageGrid.make(items, tile: tile, columns: columns)
    try ImageCodec.writePNG(grid, to: URL(fileURLWithPath: out))
    print(
      "wrote \(out): \(items.count) samples of \(set.samples.count) in \(set.classNames.count) classes, \(grid.width)×\(grid.height)"
    )
  }
}

/// An MNIST / Fashion-MNIST IDX pair written out as a class-folder image set.
struct IDXCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "idx",
    abstract: "Turn an MNIST / Fashion-MNIST IDX pair into a folder of PNG files, one sub-folder a class.",
    discussion: """
      Writes OUT/<i>-<class>/<k>.png for the first --count images of the pair (k: the image's index
      in the file; the class index zero-padded so the sorted folders keep the class order): the
      layout `veil train` learns from and `veil plan --defences` reads labels from (accuracy and
      macro-F1 beside the agreement). Write the training file to OUT/train and the test file to
      OUT/test to give `veil train` both splits, e.g. from Debian's dataset-fashion-mnist:
        veil data idx --images /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \\
          --labels /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz --classes fashion-mnist \\
          --count 3000 --out data/fashion/train
      """)

  @Option(help: "The IDX image file (…-images-idx3-ubyte[.gz]).")
  var images: String
  @Option(help: "Its IDX label file (…-labels-idx1-ubyte[.gz]).")
  var labels: String
  @Option(help: "The class names: fashion-mnist, mnist (the digits), or a comma-separated list in label order (default: the label numbers).")
  var classes: String?
  @Option(help: "How many images, the first of the file (default: all).")
  var count: Int?
  @Option(help: "Output folder (created).")
  var out: String

  static let fashionMNIST = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]

  func validate() throws {
    if let count, count < 1 { throw ValidationError("--count must be ≥ 1, found \(count)") }
  }

  func run() throws {
    let names: [String]? =
      switch classes {
      case nil: nil
      case "fashion-mnist": Self.fashionMNIST
      case "mnist": (0...9).map(String.init)
      case let list?: list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
      }
    let set = try DataSet.idx(images: URL(fileURLWithPath: images), labels: URL(fileURLWithPath: labels), classNames: names)
    let n = min(count ?? set.samples.count, set.samples.count)
    let counts = try set.writeClassFolders(
      to: URL(fileURLWithPath: out), limit: n, progress: ProgressBar(total: n, label: "writing images"))
    print("wrote \(n) images of \(set.samples.count) to \(out) in \(counts.count) class folders (\(set.classNames.count) classes)")
  }
}

extension Split: ExpressibleByArgument {}
