import Crypto
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilTEE
import VeilTensor
import VeilTestSupport

/// The seed corpus of every target, made by Veil's own code (writers, encoders, the simulated
/// enclave) or assembled here byte by byte from the formats' specifications: no third-party
/// files. `veil-fuzz seeds Fuzz/corpus` rewrites the committed seeds.
enum Seeds {
  static func write(to root: URL) throws -> Int {
    var written = 0
    for (target, files) in try all() {
      let folder = root.appendingPathComponent(target)
      try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
      for (name, bytes) in files {
        try Data(bytes).write(to: folder.appendingPathComponent("seed-" + name))
        written += 1
      }
    }
    return written
  }

  static func all() throws -> [(String, [(String, [UInt8])])] {
    let onnx = [("convnet.onnx", try ONNXSeeds.convNet()), ("shape-folding.onnx", ONNXSeeds.shapeFolding())]
      + ONNXSeeds.opCorners().map { ($0.name, $0.bytes) }
    return [
      ("onnx", onnx),
      ("protobuf", onnx + [("wire-types.pb", wireTypes())]),
      ("pickle", pickles()),
      ("checkpoint", checkpoints()),
      ("safetensors", safetensors()),
      ("npy", npys()),
      ("png", try pngs()),
      ("jpeg", jpegs()),
      ("csv", [("rows.csv", Array(tonIoTCSV().utf8)), ("crlf.csv", Array(tonIoTCSV(lineEnd: "\r\n").utf8))]),
      ("toniot-transform", try transforms()),
      ("idx", idxFiles()),
      (
        "labels",
        [
          ("indices.txt", "a.png 0\nb.png 1\nc.png 2\n"), ("bare.txt", "cat\ndog\ncat\n"),
          ("mixed.txt", "# classes by name\na.png,cat\nb.png\tdog\n\nc.png cat\n"),
        ].map { ($0.0, Array($0.1.utf8)) }
      ),
      ("evidence", try evidence()),
      ("policy", policies()),
      ("collateral", [("collateral.json", collateral())]),
      ("channel", channelPrograms()),
      ("sealed-head", try sealedHeads()),
    ] + (try ServingTargets.seeds()) + (try SNPTargets.seeds())
  }

  // MARK: Protobuf, pickles, checkpoints, tensors

  static func wireTypes() -> [UInt8] {
    var e = ProtobufEncoder()
    e.int(1, 150)
    e.int64(2, -1)
    e.float(3, 1.5)
    e.double(4, -2.25)
    e.string(5, "veil")
    e.packedInt(6, [1, 2, 300, 70000])
    e.packedFloat(7, [0.5, 1, 2])
    e.message(8) { m in
      m.int(1, 7)
      m.message(2) { $0.string(1, "deep") }
    }
    return e.bytes
  }

  static func pickles() -> [(String, [UInt8])] {
    let stateDict = PickleBuilder.stateDict(
      [
        (
          CheckpointTensor(
            name: "conv.weight", type: "FloatStorage", key: "0", offset: 0, size: [2, 3], stride: [3, 1]), 6
        ),
        (CheckpointTensor(name: "conv.bias", type: "HalfStorage", key: "1", offset: 0, size: [2], stride: [1]), 2),
      ], orderedDict: true)
    // Every opcode the unpickler knows, in a protocol-4 stream with a frame and a memo.
    var q: [UInt8] = [0x80, 0x04, 0x95] + le64(64)
    q += [0x7D, 0x94, 0x28]
    q += [0x8C, 1] + Array("a".utf8)
    q += [0x5D, 0x71, 0x05, 0x28, 0x4B, 1, 0x4A, 0xFE, 0xFF, 0xFF, 0xFF, 0x4D, 0x10, 0x27]
    q += [0x47] + withUnsafeBytes(of: (3.5 as Double).bitPattern.bigEndian) { Array($0) }
    q += [0x55, 1, 0x78, 0x43, 2, 0x79, 0x7A, 0x4E, 0x88, 0x89, 0x65]
    q += [0x8C, 1] + Array("b".utf8)
    q += [0x8A, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x8A, 2, 0xFF, 0x7F]
    q += [0x4B, 1, 0x4D, 2, 0, 0x86, 0x87]
    q += [0x8C, 1] + Array("c".utf8) + [0x68, 0x05, 0x32, 0x30]
    q += [0x58, 1, 0, 0, 0, 0x64, 0x5D, 0x29, 0x61, 0x72, 9, 0, 0, 0, 0x6A, 9, 0, 0, 0, 0x30]
    q += [0x75, 0x2E]
    return [("state-dict.pkl", stateDict), ("opcodes.pkl", q)]
  }

  static func checkpoints() -> [(String, [UInt8])] {
    let legacy = legacyCheckpoint(
      [
        CheckpointTensor(name: "t", type: "FloatStorage", key: "s0", offset: 1, size: [2, 2], stride: [1, 2]),
        CheckpointTensor(name: "h", type: "HalfStorage", key: "h", offset: 0, size: [2], stride: [1]),
        CheckpointTensor(name: "l", type: "LongStorage", key: "l", offset: 0, size: [1, 2], stride: [0, 1]),
      ],
      storages: [("s0", 5, floatBytes([0, 1, 2, 3, 4])), ("h", 2, [0, 0x3C, 0, 0x3C]), ("l", 2, le64(7) + le64(9))])
    let pickle = PickleBuilder.stateDict([
      (CheckpointTensor(name: "w", type: "FloatStorage", key: "0", offset: 0, size: [2, 2], stride: [1, 2]), 4),
      (CheckpointTensor(name: "d", type: "DoubleStorage", key: "1", offset: 0, size: [3], stride: [0]), 1),
    ])
    let zip = storedZip([
      ("archive/data.pkl", pickle), ("archive/byteorder", Array("little".utf8)),
      ("archive/data/0", floatBytes([1, 2, 3, 4])), ("archive/data/1", le64((2.5 as Double).bitPattern)),
    ])
    return [("legacy.pt", legacy), ("zip.pt", zip)]
  }

  static func safetensors() -> [(String, [UInt8])] {
    let a = Tensor(shape: [2, 3]) { for i in 0..<6 { $0[i] = Float(i) - 2.5 } }
    let b = Tensor(shape: [], repeating: 7)
    let c = Tensor(zeros: [0, 4])
    return [
      ("two.safetensors", Safetensors.encode([("a", a), ("b", b)], metadata: ["format": "pt"])),
      ("empty-tensor.safetensors", Safetensors.encode([("c", c), ("a", a)])),
    ]
  }

  static func npys() -> [(String, [UInt8])] {
    func hand(_ dict: String, _ data: [UInt8], version: UInt8 = 1) -> [UInt8] {
      var header = Array(dict.utf8)
      let prefix = version == 1 ? 10 : 12
      while (prefix + header.count + 1) % 64 != 0 { header.append(0x20) }
      header.append(0x0A)
      let length = version == 1 ? le16(UInt16(header.count)) : le32(UInt32(header.count))
      return [0x93] + Array("NUMPY".utf8) + [version, 0] + length + header + data
    }
    return [
      ("scalar.npy", NPY.encode(Tensor(shape: [], repeating: 3))),
      ("matrix.npy", NPY.encode(Tensor(shape: [2, 2, 3]) { for i in 0..<12 { $0[i] = Float(i) } })),
      (
        "f8.npy",
        hand("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", le64((1.5 as Double).bitPattern) + le64(0))
      ),
      ("i8-v2.npy", hand("{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), }", le64(42), version: 2)),
    ]
  }

  // MARK: Images

  static func pngs() throws -> [(String, [UInt8])] {
    let grey = (0..<4).map { y in (0..<4).map { x in UInt8(x * 60 + y) } }
    let rgb = (0..<2).map { y in (0..<9).map { UInt8($0 * 25 + y) } }
    let rgba = [[255, 0, 0, 255, 0, 255, 0, 128], [0, 0, 255, 0, 9, 9, 9, 9]].map { $0.map(UInt8.init) }
    let grey16 = [[0x12, 0x34, 0xFF, 0xFF, 0, 0], [1, 2, 3, 4, 5, 6]].map { $0.map(UInt8.init) }
    let palette = PNGFile.Chunk(type: Array("PLTE".utf8), data: [255, 0, 0, 0, 255, 0, 0, 0, 255])
    let transparency = PNGFile.Chunk(type: Array("tRNS".utf8), data: [0, 128])
    let text = PNGFile.Chunk(type: Array("tEXt".utf8), data: Array("Comment\0veil".utf8))
    let encoded = try ImageCodec.encodePNG(
      ByteImage(width: 5, height: 3, channels: 3) { for i in 0..<$0.count { $0[i] = UInt8(i * 17 % 256) } })
    return [
      ("grey8.png", PNGFile.make(width: 4, height: 4, depth: 8, color: 0, rows: grey, extra: [text])),
      ("rgb8.png", PNGFile.make(width: 3, height: 2, depth: 8, color: 2, rows: rgb)),
      ("rgba8.png", PNGFile.make(width: 2, height: 2, depth: 8, color: 6, rows: rgba)),
      ("grey16.png", PNGFile.make(width: 3, height: 2, depth: 16, color: 0, rows: grey16)),
      (
        "palette.png",
        PNGFile.make(width: 3, height: 1, depth: 8, color: 3, rows: [[0, 1, 2]], extra: [palette, transparency])
      ),
      ("grey1.png", PNGFile.make(width: 8, height: 2, depth: 1, color: 0, rows: [[0xA5], [0x5A]])),
      ("interlaced.png", PNGFile.make(width: 1, height: 1, depth: 8, color: 2, rows: [[1, 2, 3]], interlace: 1)),
      ("thin.png", PNGFile.make(width: 1, height: 64, depth: 8, color: 0, rows: (0..<64).map { [UInt8($0)] })),
      ("libpng-encoded.png", Array(encoded)),
    ]
  }

  static func jpegs() -> [(String, [UInt8])] {
    let exif = JPEGFile.Segment(
      marker: 0xE1,
      payload: Array("Exif\0\0MM\0*".utf8) + [0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0])
    let bigApp = JPEGFile.Segment(marker: 0xE2, payload: [UInt8](repeating: 0x42, count: 8000))
    return [
      ("grey8x8.jpg", JPEGFile.minimal(width: 8, height: 8)),
      ("grey17x9.jpg", JPEGFile.minimal(width: 17, height: 9)),
      ("ycbcr420.jpg", JPEGFile.minimal(width: 16, height: 16, components: [(1, 0x22), (2, 0x11), (3, 0x11)])),
      ("progressive.jpg", JPEGFile.minimal(width: 8, height: 8, progressive: true)),
      ("exif-rotated.jpg", JPEGFile.minimal(width: 8, height: 16, before: [exif])),
      ("app-before-frame.jpg", JPEGFile.minimal(width: 8, height: 8, before: [bigApp])),
    ]
  }

  // MARK: TON_IoT, IDX

  static func tonIoTCSV(lineEnd: String = "\n") -> String {
    func row(_ values: [String: String]) -> String {
      TonIoT.columns.map { c in values[c] ?? (TonIoT.kind(of: c) == .numeric ? "0" : "-") }.joined(separator: ",")
    }
    let rows = [
      row([
        "ts": "1554198358", "src_ip": "192.168.1.37", "proto": "tcp", "duration": "0.5", "src_bytes": "120",
        "label": "0", "type": "normal",
      ]),
      row(["proto": "udp", "service": "dns", "dns_query": "example.org", "src_pkts": "3", "label": "1", "type": "ddos"]
      ),
      row([
        "proto": "tcp", "http_uri": "\"/a,b\"\"c\"", "http_user_agent": "\"two\nlines\"", "label": "1", "type": "xss",
      ]),
    ]
    return ([TonIoT.columns.joined(separator: ",")] + rows).joined(separator: lineEnd) + lineEnd
  }

  static func transforms() throws -> [(String, [UInt8])] {
    let url = FuzzFixtures.scratch("seed.csv")
    try Data(tonIoTCSV().utf8).write(to: url)
    defer { try? FileManager.default.removeItem(at: url) }
    var out: [(String, [UInt8])] = []
    for (name, options) in [
      ("one-hot.json", TonIoTTransform.Options(imageSize: 8)),
      (
        "ordinal.json",
        TonIoTTransform.Options(encoding: .ordinal, maxCategories: 2, imageSize: 5, interpolation: .bilinear)
      ),
    ] {
      let reader = try TonIoTReader(url: url)
      var fitter = try TonIoTTransform.Fitter(options: options)
      while let r = try reader.next() { fitter.add(r) }
      let e = JSONEncoder()
      e.outputFormatting = [.sortedKeys]
      out.append((name, Array(try e.encode(try fitter.transform()))))
    }
    return out
  }

  static func idxImages() -> [UInt8] {
    [0, 0, 8, 3] + be32(2) + be32(3) + be32(3) + (0..<18).map { UInt8($0 * 14) }
  }

  static func idxFiles() -> [(String, [UInt8])] {
    let labels: [UInt8] = [0, 0, 8, 1] + be32(2) + [1, 0]
    return [
      ("images.idx", idxImages()), ("images.idx.gz", Checksum.gzipStored(idxImages())), ("labels.idx", labels),
      ("labels.idx.gz", Checksum.gzipStored(labels)),
    ]
  }

  // MARK: Evidence, policies, collateral

  static func pem(_ der: [UInt8]) -> [UInt8] {
    let b64 = Data(der).base64EncodedString()
    var lines: [String] = []
    var rest = Substring(b64)
    while !rest.isEmpty {
      lines.append(String(rest.prefix(64)))
      rest = rest.dropFirst(64)
    }
    return Array(
      ("-----BEGIN CERTIFICATE-----\n" + lines.joined(separator: "\n") + "\n-----END CERTIFICATE-----\n").utf8)
  }

  /// A DCAP quote of `version` around `body`, signed by the fixture key the way a quoting
  /// enclave signs (quote signature, QE report binding the attestation key), with
  /// `certification` as its type-5 certification data.
  static func dcapQuote(
    version: UInt16, teeType: UInt32, body: [UInt8], bodyType: UInt16? = nil, certification: [UInt8]
  )
    -> [UInt8]
  {
    let key = FuzzFixtures.enclave.signingKey
    var q = le16(version) + le16(2) + le32(teeType) + le16(3) + le16(13) + DCAPQuote.intelQEVendorID
    q += [UInt8](repeating: 0, count: 20)
    if let bodyType { q += le16(bodyType) + le32(UInt32(body.count)) }
    q += body
    let attestationKey = Array(key.publicKey.rawRepresentation)
    let auth = [UInt8](repeating: 0xAA, count: 32)
    var qeReport = [UInt8](repeating: 0, count: SGXReportBody.size)
    qeReport.replaceSubrange(320..<352, with: Array(SHA256.hash(data: attestationKey + auth)))
    let sign = { (data: [UInt8]) -> [UInt8] in
      (try? key.signature(for: SHA256.hash(data: data)).rawRepresentation).map { Array($0) }
        ?? [UInt8](repeating: 0, count: 64)
    }
    var inner = qeReport + sign(qeReport) + le16(UInt16(auth.count)) + auth
    inner += le16(5) + le32(UInt32(certification.count)) + certification
    var sig = sign(q) + attestationKey
    sig += version >= 4 ? le16(6) + le32(UInt32(inner.count)) + inner : inner
    return q + le32(UInt32(sig.count)) + sig
  }

  static func quoteWithRootChain() -> [UInt8] {
    var body = [UInt8](repeating: 0, count: SGXReportBody.size)
    body[48] = 0x05  // INIT | MODE64BIT, not DEBUG
    return dcapQuote(version: 3, teeType: 0, body: body, certification: pem(intelSGXRootCADER))
  }

  static func evidence() throws -> [(String, [UInt8])] {
    var snp = [UInt8](repeating: 0, count: SNPReport.size)
    snp[0] = 2
    snp[0x34] = 1
    let td = [UInt8](repeating: 0x11, count: TDReportBody.size)
    let td15 = [UInt8](repeating: 0x22, count: TDReportBody.size15)
    let chain = pem(intelSGXRootCADER) + pem(intelSGXRootCADER)
    return [
      ("simulated-sgx.quote", try FuzzFixtures.enclave.quote(reportData: [UInt8](repeating: 3, count: 64))),
      ("sgx-v3-root-chain.quote", quoteWithRootChain()),
      ("tdx-v4.quote", dcapQuote(version: 4, teeType: 0x81, body: td, certification: chain)),
      ("tdx15-v5.quote", dcapQuote(version: 5, teeType: 0x81, body: td15, bodyType: 3, certification: chain)),
      (
        "sgx-v5.quote",
        dcapQuote(
          version: 5, teeType: 0, body: [UInt8](repeating: 0, count: SGXReportBody.size), bodyType: 1,
          certification: Array("not a PEM chain".utf8))
      ),
      ("snp.report", snp),
    ]
  }

  static func policies() -> [(String, [UInt8])] {
    let hex32 = String(repeating: "ab", count: 32)
    let hex48 = String(repeating: "cd", count: 48)
    return [
      ("empty.json", "{}"),
      ("simulation.json", #"{"allow_simulation": true, "allow_debug": true}"#),
      (
        "sgx.json",
        #"{"mrenclave": "\#(hex32)", "mrsigner": "\#(hex32)", "isvprodid": 1, "min_isvsvn": 2, "accepted_tcb_statuses": ["UpToDate"], "max_evidence_age_seconds": 60}"#
      ),
      (
        "tdx.json",
        #"{"mrtd": "\#(hex48)", "rtmrs": ["\#(hex48)", null, null, "\#(hex48)"], "snp_measurement": "\#(hex48)"}"#
      ),
    ].map { ($0.0, Array($0.1.utf8)) }
  }

  static func collateral() -> [UInt8] {
    let chain = String(decoding: pem(intelSGXRootCADER) + pem(intelSGXRootCADER), as: UTF8.self)
    let tcb =
      #"{"id":"SGX","version":3,"issueDate":"2025-06-01T00:00:00Z","nextUpdate":"2025-08-01T00:00:00Z","fmspc":"00906ed50000","pceId":"0000","tcbLevels":[{"tcb":{"sgxtcbcomponents":[{"svn":1}],"pcesvn":13},"tcbDate":"2025-01-01T00:00:00Z","tcbStatus":"UpToDate"}]}"#
    let qe =
      #"{"id":"QE","version":2,"issueDate":"2025-06-01T00:00:00Z","nextUpdate":"2025-08-01T00:00:00Z","miscselect":"00000000","miscselectMask":"FFFFFFFF","attributes":"11000000000000000000000000000000","attributesMask":"FBFFFFFFFFFFFFFF0000000000000000","mrsigner":"8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF","isvprodid":1,"tcbLevels":[{"tcb":{"isvsvn":3},"tcbStatus":"UpToDate"}]}"#
    let object: [String: String] = [
      "pck_crl_issuer_chain": chain, "root_ca_crl": "3082", "pck_crl": "30820101", "tcb_info_issuer_chain": chain,
      "tcb_info": tcb, "tcb_info_signature": String(repeating: "00", count: 64), "qe_identity_issuer_chain": chain,
      "qe_identity": qe, "qe_identity_signature": String(repeating: "11", count: 64),
    ]
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    return Array((try? e.encode(object)) ?? Data())
  }

  // MARK: Channel programs, sealed heads

  static func channelPrograms() -> [(String, [UInt8])] {
    let hello = Array("hello enclave".utf8)
    return [
      ("honest.bin", [3, 0, UInt8(hello.count)] + hello + [1, 3, 0x61, 0x62, 0x63, 0, 0, 5]),
      ("rekey-every-record.bin", [0] + [0, 1, 0x41, 0, 1, 0x42, 1, 1, 0x43, 0, 2, 0x44, 0x45]),
      ("tampered.bin", [1, 0, 1, 0x41, 3, 4, 0x41, 0x42, 0x43, 0x44, 2, 7, 0, 0x41]),
      ("replayed-and-cut.bin", [2, 0, 2, 0x41, 0x42, 4, 6, 3, 1, 2, 3, 10, 0, 1, 0x41]),
      (
        "hellos.bin",
        [3, 7, 66, 1, 1] + [UInt8](repeating: 9, count: 64) + [7, 40, 1, 2] + [UInt8](repeating: 8, count: 38)
      ),
    ]
  }

  static func sealedHeads() throws -> [(String, [UInt8])] {
    [
      ("small.sealed", try SealedHead.seal(Array("a head".utf8), key: FuzzFixtures.headKey)),
      ("empty.sealed", try SealedHead.seal([], key: FuzzFixtures.headKey)),
    ]
  }
}
