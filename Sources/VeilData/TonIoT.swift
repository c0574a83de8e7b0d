import Foundation

/// The TON_IoT network data set (UNSW Canberra): its 46-column CSV schema, a streaming reader
/// that checks every row, and the fitted transform that turns a record into an image.
public enum TonIoT {
  /// The columns of the network CSV, in file order.
  public static let columns = [
    "ts", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "service", "duration", "src_bytes", "dst_bytes",
    "conn_state", "missed_bytes", "src_pkts", "src_ip_bytes", "dst_pkts", "dst_ip_bytes", "dns_query", "dns_qclass",
    "dns_qtype", "dns_rcode", "dns_AA", "dns_RD", "dns_RA", "dns_rejected", "ssl_version", "ssl_cipher", "ssl_resumed",
    "ssl_established", "ssl_subject", "ssl_issuer", "http_trans_depth", "http_method", "http_uri", "http_referrer",
    "http_version", "http_request_body_len", "http_response_body_len", "http_status_code", "http_user_agent",
    "http_orig_mime_types", "http_resp_mime_types", "weird_name", "weird_addl", "weird_notice", "label", "type",
  ]

  /// The ten values of `type`, normal first.
  public static let attackTypes = [
    "normal", "backdoor", "ddos", "dos", "injection", "mitm", "password", "ransomware", "scanning", "xss",
  ]

  /// What a column is to the transform.
  public enum Kind: String, Codable, Sendable {
    /// Time stamps, addresses and ports: they identify a capture, not an attack (dropped by default).
    case identifier
    /// Counts, sizes and durations: log1p, then min-max scaled.
    case numeric
    /// Names and codes: one-hot or ordinal over a fitted vocabulary.
    case categorical
    /// `label` and `type`.
    case target
  }

  public static let identifiers: Set<String> = ["ts", "src_ip", "src_port", "dst_ip", "dst_port"]
  static let numerics: Set<String> = [
    "duration", "src_bytes", "dst_bytes", "missed_bytes", "src_pkts", "src_ip_bytes", "dst_pkts", "dst_ip_bytes",
    "http_trans_depth", "http_request_body_len", "http_response_body_len",
  ]

  public static func kind(of column: String) -> Kind {
    if column == "label" || column == "type" { return .target }
    if identifiers.contains(column) { return .identifier }
    if numerics.contains(column) { return .numeric }
    return .categorical
  }

  /// The value that marks an absent optional field.
  public static let missing = "-"
}

/// One checked row: every schema column's text (nil where the file has no such column), the
/// numbers already parsed, and the targets.
public struct TonIoTRecord: Sendable {
  /// The 1-based line the row starts on.
  public var line: Int
  /// By schema column (`TonIoT.columns` order); "-" stays "-".
  public var fields: [String?]
  /// Numeric columns parsed (missing = 0), by schema column; 0 elsewhere.
  public var numbers: [Double]
  /// 0 normal, 1 attack.
  public var label: Int
  /// Index into `TonIoT.attackTypes`.
  public var type: Int
}

/// What to do with a row that does not parse.
public enum BadRowPolicy: String, Codable, Sendable {
  /// Stop with an error naming the file and line.
  case refuse
  /// Leave the row out; `TonIoTReader.skipped` counts and lists them.
  case skip
}

/// Streams the rows of a TON_IoT network CSV. The header may spell `label` as `Label` (any
/// column's case is ignored) and may lack `ts`; every other schema column must be there, and
/// extra columns are ignored. A row is bad when its field count differs from the header's, a
/// numeric column holds something other than a number or "-", `label` is not 0 or 1, or `type`
/// is not one of the ten types.
public final class TonIoTReader {
  public let url: URL
  public let policy: BadRowPolicy
  /// Rows left out under `.skip`: how many, and the first 100 with their reasons.
  public private(set) var skippedCount = 0
  public private(set) var skipped: [(line: Int, reason: String)] = []
  /// The header's column for each schema column (nil: absent, only `ts` may be).
  public let columnIndex: [Int?]
  private let reader: CSVRecordReader
  private let headerCount: Int

  public init(url: URL, policy: BadRowPolicy = .refuse) throws {
    self.url = url
    self.policy = policy
    reader = try CSVRecordReader(url: url)
    guard let (line, header) = try reader.next() else {
      throw DataError.empty(path: url.path, detail: "the CSV is empty: no header line")
    }
    let names = header.map {
      $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "\u{FEFF}", with: "").lowercased()
    }
    var index: [Int?] = []
    var absent: [String] = []
    for column in TonIoT.columns {
      let i = names.firstIndex(of: column.lowercased())
      if i == nil && column != "ts" { absent.append(column) }
      index.append(i)
    }
    guard absent.isEmpty else {
      throw DataError.csv(
        file: url.path, line: line,
        detail:
          "the header lacks the TON_IoT column(s) \(absent.joined(separator: ", ")) (found \(header.count) columns: \(header.prefix(6).joined(separator: ","))…)"
      )
    }
    columnIndex = index
    headerCount = header.count
  }

  /// The next good row, or nil at the end of the file.
  public func next() throws -> TonIoTRecord? {
    while let (line, fields) = try reader.next() {
      do {
        return try parse(line: line, fields: fields)
      } catch let DataError.csv(file, line, detail) where policy == .skip {
        _ = file
        skippedCount += 1
        if skipped.count < 100 { skipped.append((line, detail)) }
      }
    }
    return nil
  }

  func parse(line: Int, fields: [String]) throws -> TonIoTRecord {
    guard fields.count == headerCount else {
      throw DataError.csv(file: url.path, line: line, detail: "\(fields.count) fields, the header has \(headerCount)")
    }
    var values: [String?] = []
    var numbers = [Double](repeating: 0, count: TonIoT.columns.count)
    values.reserveCapacity(TonIoT.columns.count)
    for (c, name) in TonIoT.columns.enumerated() {
      guard let i = columnIndex[c] else {
        values.append(nil)
        continue
      }
      let text = fields[i].trimmingCharacters(in: .whitespaces)
      values.append(text)
      if TonIoT.numerics.contains(name), text != TonIoT.missing, !text.isEmpty {
        guard let v = Double(text), v.isFinite else {
          throw DataError.csv(file: url.path, line: line, detail: "column '\(name)' = '\(text)' is not a number")
        }
        numbers[c] = v
      }
    }
    let labelText = values[TonIoT.columns.count - 2] ?? ""
    guard let label = Int(labelText), label == 0 || label == 1 else {
      throw DataError.csv(file: url.path, line: line, detail: "column 'label' = '\(labelText)' is not 0 or 1")
    }
    let typeText = (values[TonIoT.columns.count - 1] ?? "").lowercased()
    guard let type = TonIoT.attackTypes.firstIndex(of: typeText) else {
      throw DataError.csv(
        file: url.path, line: line,
        detail: "column 'type' = '\(typeText)' is not one of \(TonIoT.attackTypes.joined(separator: ", "))")
    }
    return TonIoTRecord(line: line, fields: values, numbers: numbers, label: label, type: type)
  }
}

// MARK: - The fitted transform

/// Turns a TON_IoT record into a feature vector in [0, 1] and that vector into an image:
/// identifier columns dropped, categorical columns one-hot (or ordinal) over a vocabulary fitted
/// on the training split with an "other" slot for unseen values, numeric columns
/// sign·log1p(|x|) then min-max scaled with the training split's range and clipped, the vector
/// laid out row by row in the smallest k×k square (zero padded), replicated to three channels
/// and resized to the model's input size. Saved as JSON so training, attacks and serving share
/// one transform.
public struct TonIoTTransform: Codable, Sendable, Equatable {
  public enum Encoding: String, Codable, Sendable, CaseIterable {
    case oneHot = "one-hot"
    case ordinal
  }

  public enum Labels: String, Codable, Sendable, CaseIterable {
    /// `label`: normal / attack.
    case binary
    /// `type`: the ten classes of `TonIoT.attackTypes`.
    case attackType = "type"
  }

  public struct Options: Codable, Sendable, Equatable {
    /// Columns left out (the identifiers by default).
    public var dropped: [String]
    public var encoding: Encoding
    /// At most this many values per categorical column (the most frequent); the rest map to
    /// "other". Keeps one-hot vectors small for free-text columns such as `http_uri`.
    public var maxCategories: Int
    public var imageSize: Int
    public var interpolation: Interpolation
    public var labels: Labels

    public init(
      dropped: [String] = TonIoT.identifiers.sorted(), encoding: Encoding = .oneHot, maxCategories: Int = 16,
      imageSize: Int = 224, interpolation: Interpolation = .nearest, labels: Labels = .attackType
    ) {
      self.dropped = dropped
      self.encoding = encoding
      self.maxCategories = maxCategories
      self.imageSize = imageSize
      self.interpolation = interpolation
      self.labels = labels
    }

    /// What is wrong with these options, or nil.
    var problem: String? {
      guard (1...TonIoTTransform.maxCategoriesLimit).contains(maxCategories) else {
        return "maxCategories must be 1...\(TonIoTTransform.maxCategoriesLimit), found \(maxCategories)"
      }
      guard (1...TonIoTTransform.maxImageSize).contains(imageSize) else {
        return "imageSize must be 1...\(TonIoTTransform.maxImageSize), found \(imageSize)"
      }
      return nil
    }
  }

  /// The largest image side and vocabulary a transform may ask for: a saved transform is a
  /// file, and its numbers decide how much memory every image takes.
  public static let maxImageSize = 4096
  public static let maxCategoriesLimit = 4096

  public struct Column: Codable, Sendable, Equatable {
    public var name: String
    public var kind: TonIoT.Kind
    /// Numeric: the training split's range of sign·log1p(|x|).
    public var min: Double?
    public var max: Double?
    /// Categorical: the kept values, most frequent first; anything else is "other".
    public var vocabulary: [String]?
  }

  public var format = "veil-ton-iot-transform-1"
  public var options: Options
  public var columns: [Column]
  /// Rows the transform was fitted on.
  public var fittedRows: Int

  /// Length of the feature vector.
  public var featureCount: Int {
    columns.reduce(0) { n, c in
      guard let v = c.vocabulary else { return n + 1 }
      return n + (options.encoding == .oneHot ? v.count + 1 : 1)
    }
  }

  /// Side of the square the vector is laid out in.
  public var side: Int {
    var k = Int(Double(featureCount).squareRoot())
    while k * k < featureCount { k += 1 }
    return max(k, 1)
  }

  public var classNames: [String] { options.labels == .binary ? ["normal", "attack"] : TonIoT.attackTypes }

  public func classIndex(_ r: TonIoTRecord) -> Int { options.labels == .binary ? r.label : r.type }

  static func scaledLog(_ x: Double) -> Double { x < 0 ? -log1p(-x) : log1p(x) }

  /// Accumulates the statistics of the training rows, one at a time.
  public struct Fitter {
    public let options: Options
    var rows = 0
    var low: [String: Double] = [:]
    var high: [String: Double] = [:]
    var counts: [String: [String: Int]] = [:]
    let kept: [(index: Int, name: String, kind: TonIoT.Kind)]

    public init(options: Options) throws {
      let unknown = options.dropped.filter { !TonIoT.columns.contains($0) }
      guard unknown.isEmpty else {
        throw DataError.invalidArgument(
          "cannot drop unknown column(s) \(unknown.joined(separator: ", ")); the columns are \(TonIoT.columns.joined(separator: ", "))"
        )
      }
      if let problem = options.problem { throw DataError.invalidArgument(problem) }
      self.options = options
      kept = TonIoT.columns.enumerated().compactMap { i, name in
        let kind = TonIoT.kind(of: name)
        return kind == .target || options.dropped.contains(name)
          ? nil : (i, name, kind == .identifier ? .categorical : kind)
      }
    }

    public mutating func add(_ r: TonIoTRecord) {
      rows += 1
      for (i, name, kind) in kept {
        if kind == .numeric {
          let v = scaledLog(r.numbers[i])
          low[name] = Swift.min(low[name] ?? v, v)
          high[name] = Swift.max(high[name] ?? v, v)
        } else {
          counts[name, default: [:]][r.fields[i] ?? TonIoT.missing, default: 0] += 1
        }
      }
    }

    public func transform() throws -> TonIoTTransform {
      guard rows > 0 else { throw DataError.invalidArgument("cannot fit the TON_IoT transform on zero rows") }
      let columns = kept.map { _, name, kind -> Column in
        if kind == .numeric { return Column(name: name, kind: kind, min: low[name], max: high[name]) }
        let vocabulary = (counts[name] ?? [:]).sorted {
          $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key)
        }
        .prefix(options.maxCategories).map(\.key)
        return Column(name: name, kind: kind, vocabulary: vocabulary)
      }
      return TonIoTTransform(options: options, columns: columns, fittedRows: rows)
    }
  }

  /// The feature vector, each entry in [0, 1].
  public func features(_ r: TonIoTRecord) -> [Float] {
    var out: [Float] = []
    out.reserveCapacity(featureCount)
    for c in columns {
      guard let i = TonIoT.columns.firstIndex(of: c.name) else { continue }
      if let vocabulary = c.vocabulary {
        let value = r.fields[i] ?? TonIoT.missing
        let slot = vocabulary.firstIndex(of: value) ?? vocabulary.count
        if options.encoding == .oneHot {
          for k in 0...vocabulary.count { out.append(k == slot ? 1 : 0) }
        } else {
          out.append(vocabulary.isEmpty ? 0 : Float(slot) / Float(vocabulary.count))
        }
      } else {
        let lo = c.min ?? 0
        let hi = c.max ?? 0
        let v = Self.scaledLog(r.numbers[i])
        out.append(hi > lo ? Float(Swift.min(Swift.max((v - lo) / (hi - lo), 0), 1)) : 0)
      }
    }
    return out
  }

  /// The record as a k×k greyscale image (values × 255), three channels, resized.
  public func image(_ r: TonIoTRecord) throws -> ByteImage {
    let f = features(r)
    let k = side
    var grey = FloatImage(width: k, height: k, channels: 1)
    for (i, v) in f.enumerated() { grey.pixels[i] = v * 255 }
    let size = options.imageSize
    let resized = size == k ? grey : try grey.resized(width: size, height: size, interpolation: options.interpolation)
    return resized.rgb().byteImage()
  }

  public func save(to url: URL) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    do { try e.encode(self).write(to: url) } catch {
      throw DataError.io(file: url.path, detail: "cannot write the transform: \(error.localizedDescription)")
    }
  }

  public static func load(from url: URL) throws -> TonIoTTransform {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw DataError.io(file: url.path, detail: "cannot read: \(error.localizedDescription)")
    }
    return try decode(data, file: url.path)
  }

  /// A saved transform's JSON, checked as `load` checks it; `file` names it in errors.
  public static func decode(_ data: Data, file: String) throws -> TonIoTTransform {
    let t: TonIoTTransform
    do { t = try JSONDecoder().decode(TonIoTTransform.self, from: data) } catch {
      throw DataError.transform(file: file, detail: "not a transform JSON: \(error)")
    }
    guard t.format == "veil-ton-iot-transform-1" else {
      throw DataError.transform(file: file, detail: "format '\(t.format)', expected 'veil-ton-iot-transform-1'")
    }
    if let problem = t.options.problem { throw DataError.transform(file: file, detail: problem) }
    for c in t.columns where !TonIoT.columns.contains(c.name) {
      throw DataError.transform(file: file, detail: "unknown column '\(c.name)'")
    }
    for c in t.columns {
      guard let v = c.vocabulary else { continue }
      guard v.count <= t.options.maxCategories else {
        throw DataError.transform(
          file: file,
          detail: "column '\(c.name)' keeps \(v.count) values, more than its maxCategories \(t.options.maxCategories)")
      }
    }
    guard t.columns.count <= TonIoT.columns.count else {
      throw DataError.transform(
        file: file, detail: "\(t.columns.count) columns, more than the \(TonIoT.columns.count) of the schema")
    }
    return t
  }
}
