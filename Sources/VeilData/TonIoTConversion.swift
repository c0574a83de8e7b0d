import Foundation

/// A TON_IoT network CSV turned into an image data set, streaming over the file three times
/// (labels for the split, statistics of the training split, images), so the CSV never has to
/// fit in memory. Writes `<split>/<i>-<class>/<line>.png` (every class folder in every split,
/// numbered so that sorted folder names give the transform's class indices), `transform.json`
/// and `manifest.json`.
public enum TonIoTConversion {
  public struct SkippedRow: Codable, Sendable, Equatable {
    public var line: Int
    public var reason: String
  }

  public struct Manifest: Codable, Sendable {
    public var format = "veil-ton-iot-images-1"
    public var csv: String
    public var transform = "transform.json"
    public var imageSize: Int
    public var side: Int
    public var featureCount: Int
    public var labels: String
    public var classNames: [String]
    public var classFolders: [String]
    public var rows: Int
    public var skippedRows: Int
    public var skippedExamples: [SkippedRow]
    public var seed: UInt64
    public var fractions: SplitFractions
    /// Images per split and class folder.
    public var counts: [String: [String: Int]]
  }

  /// Converts `csv` into an image data set under `out`. `limit` keeps the first N good rows.
  public static func run(
    csv: URL, out: URL, options: TonIoTTransform.Options, fractions: SplitFractions, seed: UInt64,
    policy: BadRowPolicy, limit: Int? = nil, progress: Bool = false, log: (String) -> Void = { _ in }
  ) throws -> Manifest {
    var fitter = try TonIoTTransform.Fitter(options: options)
    // Pass 1: labels of the good rows, for the stratified split.
    var classes: [Int] = []
    let first = try TonIoTReader(url: csv, policy: policy)
    let classOf = { (r: TonIoTRecord) in options.labels == .binary ? r.label : r.type }
    while classes.count < (limit ?? .max), let r = try first.next() { classes.append(classOf(r)) }
    guard !classes.isEmpty else {
      throw DataError.empty(path: csv.path, detail: "no good rows (\(first.skippedCount) skipped)")
    }
    log(
      "read \(classes.count) rows from \(csv.path)"
        + (first.skippedCount > 0 ? ", skipped \(first.skippedCount) bad rows" : ""))
    let splits = fractions.assign(groupLabels: classes, seed: seed, stratified: true)
    // Pass 2: fit on the training rows only.
    let second = try TonIoTReader(url: csv, policy: policy)
    var index = 0
    while index < classes.count, let r = try second.next() {
      if splits[index] == .train { fitter.add(r) }
      index += 1
    }
    let transform = try fitter.transform()
    log(
      "fitted the transform on \(transform.fittedRows) training rows: \(transform.featureCount) features, \(transform.side)×\(transform.side) → \(options.imageSize)×\(options.imageSize)"
    )
    // Pass 3: the images.
    let fm = FileManager.default
    let names = transform.classNames
    let folders = names.enumerated().map { DataSet.classFolder($0, $1, classes: names.count) }
    do {
      for split in Split.allCases {
        for f in folders {
          try fm.createDirectory(
            at: out.appendingPathComponent(split.rawValue).appendingPathComponent(f), withIntermediateDirectories: true)
        }
      }
    } catch {
      throw DataError.io(file: out.path, detail: "cannot create the output folders: \(error.localizedDescription)")
    }
    try transform.save(to: out.appendingPathComponent("transform.json"))
    var counts: [String: [String: Int]] = [:]
    for split in Split.allCases { counts[split.rawValue] = Dictionary(uniqueKeysWithValues: folders.map { ($0, 0) }) }
    let bar = progress ? ProgressBar(total: classes.count, label: "writing images") : nil
    let third = try TonIoTReader(url: csv, policy: policy)
    index = 0
    while index < classes.count, let r = try third.next() {
      let split = splits[index].rawValue
      let folder = folders[transform.classIndex(r)]
      let url = out.appendingPathComponent(split).appendingPathComponent(folder).appendingPathComponent("\(r.line).png")
      try ImageCodec.writePNG(transform.image(r), to: url)
      counts[split]![folder]! += 1
      index += 1
      bar?.advance()
    }
    bar?.finish()
    let manifest = Manifest(
      csv: csv.path, imageSize: options.imageSize, side: transform.side, featureCount: transform.featureCount,
      labels: options.labels.rawValue, classNames: names, classFolders: folders, rows: classes.count,
      skippedRows: first.skippedCount,
      skippedExamples: first.skipped.prefix(20).map { SkippedRow(line: $0.line, reason: $0.reason) },
      seed: seed, fractions: fractions, counts: counts)
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    do { try e.encode(manifest).write(to: out.appendingPathComponent("manifest.json")) } catch {
      throw DataError.io(
        file: out.appendingPathComponent("manifest.json").path, detail: "cannot write: \(error.localizedDescription)")
    }
    return manifest
  }
}
