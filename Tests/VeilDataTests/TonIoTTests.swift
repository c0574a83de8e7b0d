import Foundation
import VeilTensor
import XCTest

import VeilData

/// The TON_IoT reader and transform on CSVs written here in the data set's exact schema.
final class TonIoTTests: XCTestCase {
  static let header = TonIoT.columns.joined(separator: ",")
  /// The real row quoted in REFERENCES.md.
  static let realRow =
    "1556485532,192.168.1.193,57139,192.168.1.33,8080,tcp,-,0.000082,0,0,REJ,0,1,48,1,40,-,0,0,0,-,-,-,-,-,-,-,-,-,-,-,-,-,-,-,0,0,0,-,-,-,-,-,-,1,backdoor"

  /// A row of the schema with the given type, numbers from `seed`, and `agent` as the user agent.
  static func row(type: String, seed: Int, agent: String = "-", proto: String = "tcp") -> String {
    var f = realRow.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    let col = { (name: String) in TonIoT.columns.firstIndex(of: name)! }
    f[col("proto")] = proto
    f[col("service")] = ["-", "dns", "http", "ssl"][seed % 4]
    f[col("duration")] = String(Double(seed) * 0.25)
    f[col("src_bytes")] = String(seed * seed * 10)
    f[col("dst_bytes")] = seed % 3 == 0 ? "-" : String(seed * 7)
    f[col("conn_state")] = ["REJ", "SF", "S0", "OTH"][seed % 4]
    f[col("http_user_agent")] = agent
    f[col("label")] = type == "normal" ? "0" : "1"
    f[col("type")] = type
    return f.joined(separator: ",")
  }

  func write(_ lines: [String], _ name: String = "net.csv", ending: String = "\n") throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-toniot-\(UUID().uuidString)-\(name)")
    try (lines.joined(separator: ending) + ending).write(to: url, atomically: true, encoding: .utf8)
    return url
  }

  func readAll(_ url: URL, policy: BadRowPolicy = .refuse) throws -> (records: [TonIoTRecord], reader: TonIoTReader) {
    let reader = try TonIoTReader(url: url, policy: policy)
    var out: [TonIoTRecord] = []
    while let r = try reader.next() { out.append(r) }
    return (out, reader)
  }

  func testTheRealRowAndQuotedFieldsParse() throws {
    XCTAssertEqual(TonIoT.columns.count, 46)
    XCTAssertEqual(Self.realRow.split(separator: ",", omittingEmptySubsequences: false).count, 46)
    let quoted = Self.row(type: "xss", seed: 5, agent: "\"Mozilla/5.0 (X11, Linux) \"\"quoted\"\"\nsecond line\"")
    let url = try write([Self.header, Self.realRow, "", quoted, Self.row(type: "normal", seed: 2)], ending: "\r\n")
    defer { try? FileManager.default.removeItem(at: url) }
    let (rows, _) = try readAll(url)
    XCTAssertEqual(rows.count, 3)
    let real = rows[0]
    XCTAssertEqual(real.line, 2)
    XCTAssertEqual(real.fields[0], "1556485532")
    XCTAssertEqual(real.numbers[TonIoT.columns.firstIndex(of: "duration")!], 0.000082)
    XCTAssertEqual(real.numbers[TonIoT.columns.firstIndex(of: "src_ip_bytes")!], 48)
    XCTAssertEqual(real.fields[TonIoT.columns.firstIndex(of: "conn_state")!], "REJ")
    XCTAssertEqual(real.fields[TonIoT.columns.firstIndex(of: "service")!], "-")
    XCTAssertEqual(real.label, 1)
    XCTAssertEqual(TonIoT.attackTypes[real.type], "backdoor")
    // The blank line 3 is skipped; the quoted row starts on line 4 and spans two lines.
    XCTAssertEqual(rows[1].line, 4)
    XCTAssertEqual(
      rows[1].fields[TonIoT.columns.firstIndex(of: "http_user_agent")!],
      "Mozilla/5.0 (X11, Linux) \"quoted\"\nsecond line")
    XCTAssertEqual(rows[2].line, 6)
    XCTAssertEqual(rows[2].label, 0)
    // A quote inside an unquoted field is kept, and does not swallow the following commas.
    let uri = TonIoT.columns.firstIndex(of: "http_uri")!
    var fields = Self.realRow.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    fields[uri] = "/search?q=a\"b"
    let literal = try write([Self.header, fields.joined(separator: ",")])
    defer { try? FileManager.default.removeItem(at: literal) }
    XCTAssertEqual(try readAll(literal).records.first?.fields[uri], "/search?q=a\"b")
  }

  func testHeaderVariants() throws {
    // `Label` capitalised and no `ts` column.
    let noTs = TonIoT.columns.dropFirst().map { $0 == "label" ? "Label" : $0 }.joined(separator: ",")
    let row = Self.realRow.split(separator: ",", omittingEmptySubsequences: false).dropFirst().joined(separator: ",")
    let url = try write([noTs, row])
    defer { try? FileManager.default.removeItem(at: url) }
    let (rows, reader) = try readAll(url)
    XCTAssertEqual(rows.count, 1)
    XCTAssertNil(reader.columnIndex[0])
    XCTAssertNil(rows[0].fields[0])
    XCTAssertEqual(rows[0].label, 1)
    XCTAssertEqual(rows[0].fields[TonIoT.columns.firstIndex(of: "dst_port")!], "8080")
    // A header without `type` is refused and says which column is missing.
    let bad = try write([TonIoT.columns.dropLast().joined(separator: ","), Self.realRow])
    defer { try? FileManager.default.removeItem(at: bad) }
    XCTAssertThrowsError(try TonIoTReader(url: bad)) { error in
      XCTAssertTrue("\(error)".contains("lacks the TON_IoT column(s) type") && "\(error)".contains(":1:"), "\(error)")
    }
  }

  func testBadRowsAreRefusedOrSkippedWithLineNumbers() throws {
    var short = Self.realRow.split(separator: ",", omittingEmptySubsequences: false)
    short.removeLast()
    let notNumber = Self.realRow.replacingOccurrences(of: "0.000082", with: "0.0000x2")
    let badLabel = Self.realRow.replacingOccurrences(of: ",1,backdoor", with: ",2,backdoor")
    let badType = Self.realRow.replacingOccurrences(of: ",1,backdoor", with: ",1,worm")
    let url = try write([
      Self.header, Self.realRow, short.joined(separator: ","), notNumber, Self.realRow, badLabel, badType,
    ])
    defer { try? FileManager.default.removeItem(at: url) }
    XCTAssertThrowsError(try readAll(url, policy: .refuse)) { error in
      XCTAssertEqual("\(error)", "\(url.path):3: 45 fields, the header has 46")
    }
    let (rows, reader) = try readAll(url, policy: .skip)
    XCTAssertEqual(rows.map(\.line), [2, 5])
    XCTAssertEqual(reader.skippedCount, 4)
    XCTAssertEqual(reader.skipped.map(\.line), [3, 4, 6, 7])
    XCTAssertTrue(
      reader.skipped[1].reason.contains("'duration' = '0.0000x2' is not a number"), reader.skipped[1].reason)
    XCTAssertTrue(reader.skipped[2].reason.contains("'label' = '2'"), reader.skipped[2].reason)
    XCTAssertTrue(reader.skipped[3].reason.contains("'type' = 'worm'"), reader.skipped[3].reason)
    let open = try write([Self.header, Self.realRow.replacingOccurrences(of: "REJ", with: "\"REJ")])
    defer { try? FileManager.default.removeItem(at: open) }
    XCTAssertThrowsError(try readAll(open)) { error in
      XCTAssertTrue("\(error)".contains(":2:") && "\(error)".contains("not closed"), "\(error)")
    }
  }

  func records(_ types: [String]) throws -> [TonIoTRecord] {
    let lines = [Self.header] + types.enumerated().map { Self.row(type: $1, seed: $0) }
    let url = try write(lines)
    defer { try? FileManager.default.removeItem(at: url) }
    return try readAll(url).records
  }

  func testTransformScalesEncodesAndLaysOut() throws {
    let train = try records(["normal", "ddos", "dos", "scanning", "normal", "xss"])
    var fitter = try TonIoTTransform.Fitter(options: .init(imageSize: 17))
    for r in train { fitter.add(r) }
    let t = try fitter.transform()
    XCTAssertEqual(t.fittedRows, 6)
    XCTAssertFalse(t.columns.contains { TonIoT.identifiers.contains($0.name) }, "identifiers are dropped by default")
    XCTAssertEqual(t.columns.count, 46 - 5 - 2)
    // One-hot: one entry per numeric column, vocabulary + "other" per categorical column.
    let expectedCount = t.columns.reduce(0) { $0 + ($1.kind == .numeric ? 1 : $1.vocabulary!.count + 1) }
    XCTAssertEqual(t.featureCount, expectedCount)
    XCTAssertEqual(t.side, Int(Double(expectedCount).squareRoot().rounded(.up)))
    let srcBytes = t.columns.firstIndex { $0.name == "src_bytes" }!
    let offset = t.columns[..<srcBytes].reduce(0) { $0 + ($1.kind == .numeric ? 1 : $1.vocabulary!.count + 1) }
    // src_bytes = 10·seed²: seed 0 is the minimum, seed 5 the maximum of the training rows.
    XCTAssertEqual(t.features(train[0])[offset], 0)
    XCTAssertEqual(t.features(train[5])[offset], 1)
    XCTAssertEqual(t.features(train[2])[offset], Float(log1p(40.0) / log1p(250.0)), accuracy: 1e-6)
    // Beyond the training range: clipped to 1. Unseen protocol: the "other" slot.
    let later = try records(["normal", "ddos", "dos", "scanning", "normal", "xss", "normal", "mitm"])
    var wide = later[7]
    wide.fields[TonIoT.columns.firstIndex(of: "proto")!] = "sctp"
    let f = t.features(wide)
    XCTAssertEqual(f[offset], 1)
    XCTAssertTrue(f.allSatisfy { (0...1).contains($0) })
    let proto = t.columns.firstIndex { $0.name == "proto" }!
    let protoOffset = t.columns[..<proto].reduce(0) { $0 + ($1.kind == .numeric ? 1 : $1.vocabulary!.count + 1) }
    let vocab = t.columns[proto].vocabulary!
    XCTAssertEqual(vocab, ["tcp"])
    XCTAssertEqual(Array(f[protoOffset...(protoOffset + vocab.count)]), [0, 1])
    XCTAssertEqual(Array(t.features(train[0])[protoOffset...(protoOffset + vocab.count)]), [1, 0])
    // The image: the vector row by row in a k×k square, zero padded, three equal channels.
    let k = t.side
    var native = t
    native.options.imageSize = k
    let img = try native.image(train[5])
    XCTAssertEqual([img.width, img.height, img.channels], [k, k, 3])
    let features = t.features(train[5])
    for (i, v) in features.enumerated() {
      XCTAssertEqual(img[i % k, i / k, 0], UInt8((v * 255).rounded()))
      XCTAssertEqual(img[i % k, i / k, 2], img[i % k, i / k, 0])
    }
    for i in features.count..<(k * k) { XCTAssertEqual(img[i % k, i / k, 1], 0) }
    let big = try t.image(train[5])
    XCTAssertEqual([big.width, big.height], [17, 17])
    // Ordinal encoding: one entry per column.
    var ordinalFitter = try TonIoTTransform.Fitter(options: .init(encoding: .ordinal))
    for r in train { ordinalFitter.add(r) }
    XCTAssertEqual(try ordinalFitter.transform().featureCount, 39)
    XCTAssertThrowsError(try TonIoTTransform.Fitter(options: .init(dropped: ["src_ip", "srcip"]))) { error in
      XCTAssertTrue("\(error)".contains("srcip"), "\(error)")
    }
  }

  func testTransformSavesAndLoadsAsJSON() throws {
    let train = try records(["normal", "ddos", "normal", "password"])
    var fitter = try TonIoTTransform.Fitter(options: .init(encoding: .ordinal, labels: .binary))
    for r in train { fitter.add(r) }
    let t = try fitter.transform()
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("veil-transform-\(UUID().uuidString).json")
    defer { try? FileManager.default.removeItem(at: url) }
    try t.save(to: url)
    let back = try TonIoTTransform.load(from: url)
    XCTAssertEqual(back, t)
    XCTAssertEqual(back.features(train[3]), t.features(train[3]))
    XCTAssertEqual(back.classNames, ["normal", "attack"])
    XCTAssertEqual(train.map(back.classIndex), [0, 1, 0, 1])
    try Data("{\"format\": 3}".utf8).write(to: url)
    XCTAssertThrowsError(try TonIoTTransform.load(from: url)) { error in
      XCTAssertTrue(
        "\(error)".contains(url.lastPathComponent) && "\(error)".contains("not a transform JSON"), "\(error)")
    }
  }

  func testStratifiedSplitKeepsClassProportions() throws {
    var labels: [Int] = []
    for c in 0..<10 { labels += Array(repeating: c, count: 20 + 10 * c) }
    let fractions = try SplitFractions(parsing: "0.8,0.1,0.1")
    let a = fractions.assign(groupLabels: labels, seed: 7, stratified: true)
    XCTAssertEqual(a, fractions.assign(groupLabels: labels, seed: 7, stratified: true), "same seed, same split")
    XCTAssertNotEqual(a, fractions.assign(groupLabels: labels, seed: 8, stratified: true))
    for c in 0..<10 {
      let n = 20 + 10 * c
      let mine = labels.indices.filter { labels[$0] == c }
      XCTAssertEqual(mine.filter { a[$0] == .train }.count, Int((Double(n) * 0.8).rounded()), "class \(c)")
      XCTAssertEqual(mine.filter { a[$0] == .validation }.count, Int((Double(n) * 0.1).rounded()), "class \(c)")
    }
    XCTAssertThrowsError(try SplitFractions(parsing: "0.8,0.2"))
    XCTAssertThrowsError(try SplitFractions(train: -1, validation: 1, test: 1))
  }
}
