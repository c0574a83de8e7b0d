import Crypto
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilTEE
import VeilTensor
import VeilTestSupport

/// One fuzz target: a decoder (or a short chain of them) run on every input, an optional
/// structure-aware mutator, and the seeds its corpus starts from. A crash, a trap, a timeout
/// or an allocation over libFuzzer's limits is a finding; thrown errors are the expected
/// answer to bad input, and a violated invariant below traps on purpose.
struct FuzzTarget: Sendable {
  var name: String
  var summary: String
  var run: @Sendable ([UInt8]) -> Void
  var mutate: (@Sendable (inout [UInt8], Int, inout MutationRandom) -> Void)?

  static let all: [FuzzTarget] = [
    FuzzTarget(
      name: "onnx",
      summary: "ONNXReader.parse: ModelProto to graph IR, constant folding; a small graph that loads compiled and run; the survey past failures",
      run: { bytes in
        if let g = try? ONNXReader.parse(bytes) { compileAndRun(g) }
        _ = try? ONNXReader.survey(bytes)
      }, mutate: Mutators.protobuf),
    FuzzTarget(
      name: "protobuf", summary: "ProtobufDecoder over any message tree",
      run: { bytes in
        walkProtobuf(ProtobufDecoder(bytes, format: "fuzz"))
      }, mutate: Mutators.protobuf),
    FuzzTarget(
      name: "pickle", summary: "Unpickler.load and a walk of the document",
      run: { bytes in
        guard let doc = try? Unpickler().load(bytes) else { return }
        walkPickle(doc)
      }),
    FuzzTarget(
      name: "checkpoint", summary: "TorchCheckpoint.decode: zip and legacy torch.save files",
      run: { bytes in
        _ = try? TorchCheckpoint.decode(bytes)
      }),
    FuzzTarget(
      name: "safetensors", summary: "Safetensors.decode",
      run: { bytes in
        _ = try? Safetensors.decode(bytes)
      }, mutate: Mutators.safetensors),
    FuzzTarget(
      name: "npy", summary: "NPY.decode",
      run: { bytes in
        _ = try? NPY.decode(bytes)
      }, mutate: Mutators.npy),
    FuzzTarget(
      name: "png", summary: "ImageCodec.decode (libpng) then ImageNet preprocessing",
      run: { bytes in
        decodeAndPreprocess(bytes)
      }, mutate: Mutators.png),
    FuzzTarget(
      name: "jpeg", summary: "ImageCodec.decode (libjpeg-turbo) then ImageNet preprocessing",
      run: { bytes in
        decodeAndPreprocess(bytes)
      }, mutate: Mutators.jpeg),
    FuzzTarget(
      name: "csv", summary: "TonIoTReader over a CSV file, then fit and image of its rows",
      run: { bytes in
        readTonIoT(bytes)
      }),
    FuzzTarget(
      name: "toniot-transform", summary: "TonIoTTransform.decode and an image of a fixed row",
      run: { bytes in
        guard let t = try? TonIoTTransform.decode(Data(bytes), file: "fuzz"), let r = FuzzFixtures.record else {
          return
        }
        _ = try? t.image(r)
      }),
    FuzzTarget(
      name: "idx", summary: "IDX (MNIST) image and label files, plain or gzip",
      run: { bytes in
        readIDX(bytes)
      }),
    FuzzTarget(
      name: "labels", summary: "a labels file for a flat folder of three images",
      run: { bytes in
        let url = FuzzFixtures.scratch("labels.txt")
        guard (try? Data(bytes).write(to: url)) != nil, let folder = FuzzFixtures.labelledFolder else { return }
        _ = try? DataSet.flatFolder(folder, labels: url)
      }),
    FuzzTarget(
      name: "evidence", summary: "Evidence parsing (SGX/TDX quotes, SNP reports) and verification",
      run: { bytes in
        if let e = try? Evidence(bytes) { _ = e.fields }
        _ = FuzzFixtures.lenientVerifier.verify(bytes)
        _ = FuzzFixtures.strictVerifier.verify(bytes)
      }, mutate: Mutators.quote),
    FuzzTarget(
      name: "policy", summary: "Policy(json:)",
      run: { bytes in
        _ = try? Policy(json: Data(bytes))
      }),
    FuzzTarget(
      name: "collateral", summary: "Collateral(json:) and DCAP verification against it",
      run: { bytes in
        guard let c = try? Collateral(json: Data(bytes)),
          let dcap = try? DCAPVerifier(collateral: c, time: FuzzFixtures.time)
        else { return }
        _ = AttestationVerifier(dcap: dcap, policy: Policy()).verify(FuzzFixtures.quoteWithRootChain)
      }),
    FuzzTarget(
      name: "channel", summary: "attested channel: hellos and records, replayed, cut, forged",
      run: { bytes in
        ChannelProgram.run(bytes)
      }),
    FuzzTarget(
      name: "sealed-head", summary: "SealedHead.open",
      run: { bytes in
        _ = try? SealedHead.open(bytes, key: FuzzFixtures.headKey)
      }),
  ] + ServingTargets.all + SNPTargets.all
}

// MARK: - Target bodies

/// Reads every field of a message as each type its wire type allows, and recurses into
/// length-delimited fields that parse as messages (bounded by the decoder's depth limit).
func walkProtobuf(_ decoder: ProtobufDecoder) {
  var d = decoder
  while let (f, wt) = try? d.nextField() {
    let start = d.position
    switch wt {
    case .varint: _ = try? d.readInt64(field: f, wt)
    case .fixed32: _ = try? d.readFloat(field: f, wt)
    case .fixed64:
      var out: [Double] = []
      try? d.readRepeatedDouble(field: f, wt, into: &out)
    case .lengthDelimited:
      var probe = d
      if let sub = try? probe.readMessage(field: f, wt) { walkProtobuf(sub) }
      var ints: [Int64] = []
      var floats: [Float] = []
      var doubles: [Double] = []
      var a = d
      try? a.readRepeatedInt64(field: f, wt, into: &ints)
      var b = d
      try? b.readRepeatedFloat(field: f, wt, into: &floats)
      var c = d
      try? c.readRepeatedDouble(field: f, wt, into: &doubles)
      _ = try? d.readString(field: f, wt)
    }
    // A read that threw leaves the decoder where it was: stop rather than loop.
    if d.position == start { return }
  }
}

func walkPickle(_ doc: PickleDocument) {
  var seen = 0
  for t in doc.tuples { seen += t.count }
  for l in doc.lists { seen += l.count }
  for d in doc.dicts { seen += d.count }
  _ = doc.sequence(doc.root)
  _ = doc.entries(doc.root)
  precondition(seen >= 0)
}

func decodeAndPreprocess(_ bytes: [UInt8]) {
  guard let decoded = try? ImageCodec.decode(Data(bytes), name: "fuzz") else { return }
  // Every decoded image is within the limit the decoder promises.
  precondition(decoded.width * decoded.height <= ImageCodec.defaultMaxPixels, "decoded over the pixel limit")
  let upright = decoded.byteImage().oriented(exif: decoded.orientation)
  _ = decoded.floatImage()
  // The enclave's path: the plan's preprocessing, with the resize bounded by the same limit.
  _ = try? FuzzFixtures.preprocessing.tensor(upright)
}

func readTonIoT(_ bytes: [UInt8]) {
  let url = FuzzFixtures.scratch("csv")
  guard (try? Data(bytes).write(to: url)) != nil else { return }
  for policy in [BadRowPolicy.skip, .refuse] {
    guard let reader = try? TonIoTReader(url: url, policy: policy) else { return }
    guard var fitter = try? TonIoTTransform.Fitter(options: .init(imageSize: 16)) else { return }
    var rows: [TonIoTRecord] = []
    while let r = try? reader.next() {
      fitter.add(r)
      if rows.count < 4 { rows.append(r) }
    }
    if let t = try? fitter.transform() {
      for r in rows { _ = try? t.image(r) }
    }
  }
}

func readIDX(_ bytes: [UInt8]) {
  let url = FuzzFixtures.scratch("idx")
  guard (try? Data(bytes).write(to: url)) != nil else { return }
  if let images = try? IDXImages(url: url), images.count > 0 {
    _ = images.image(0)
    _ = images.image(images.count - 1)
  }
  if let labels = FuzzFixtures.idxImages {
    _ = try? DataSet.idx(images: labels, labels: url)
  }
}

// MARK: - Fixtures shared by the targets

enum FuzzFixtures {
  static let time = Date(timeIntervalSince1970: 1_750_000_000)
  static let headKey = SymmetricKey(data: [UInt8](repeating: 0x5A, count: 32))
  static let preprocessing = Preprocessing(preset: .imagenet)
  static let enclave = SimulatedEnclave(
    binaryDigest: [UInt8](repeating: 1, count: 32), headDigest: [UInt8](repeating: 2, count: 32),
    signingKey: (try? P256.Signing.PrivateKey(rawRepresentation: [UInt8](repeating: 7, count: 32))) ?? .init())

  static var lenientPolicy: Policy {
    var p = Policy()
    p.allowSimulation = true
    p.allowDebug = true
    return p
  }

  static let lenientVerifier: AttestationVerifier = {
    // The pinned root parses (it is a constant of VeilTEE); a failure here is a finding.
    guard let dcap = try? DCAPVerifier(collateral: nil, time: time) else { fatalError("pinned Intel root") }
    return AttestationVerifier(dcap: dcap, policy: lenientPolicy)
  }()
  static let strictVerifier = AttestationVerifier(dcap: lenientVerifier.dcap, policy: Policy())

  /// A quote whose certification data is a PEM chain (the pinned Intel root), so DCAP
  /// verification reaches the collateral.
  static let quoteWithRootChain: [UInt8] = Seeds.quoteWithRootChain()

  /// A TON_IoT record for the transform target.
  static let record: TonIoTRecord? = {
    let url = scratch("record.csv")
    guard (try? Data(Seeds.tonIoTCSV().utf8).write(to: url)) != nil else { return nil }
    return try? TonIoTReader(url: url).next()
  }()

  /// A valid IDX image file of two images, for fuzzed label files.
  static let idxImages: URL? = {
    let url = scratch("images.idx")
    return (try? Data(Seeds.idxImages()).write(to: url)) != nil ? url : nil
  }()

  /// A folder of `a.png`, `b.png` and `c.png` for fuzzed labels files.
  static let labelledFolder: URL? = {
    let folder = URL(fileURLWithPath: scratch("images").path, isDirectory: true)
    guard (try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)) != nil,
      let png = try? ImageCodec.encodePNG(ByteImage(width: 2, height: 2, channels: 1))
    else { return nil }
    for name in ["a.png", "b.png", "c.png"] { try? png.write(to: folder.appendingPathComponent(name)) }
    return folder
  }()

  /// A per-process scratch file in memory where /dev/shm exists.
  static func scratch(_ name: String) -> URL {
    let shm = URL(fileURLWithPath: "/dev/shm")
    let folder = FileManager.default.fileExists(atPath: shm.path) ? shm : FileManager.default.temporaryDirectory
    return folder.appendingPathComponent("veil-fuzz-\(getpid())-\(name)")
  }
}

/// A graph the reader accepted goes on as the commands take it: its candidate cuts listed and
/// the model split at the first and the last (`veil cuts`, `veil split`, the planner), re-inferred
/// at batch 2 (`--batch`), compiled (oneDNN's primitives made for its attributes) and run once on
/// zeros, each step an answer or an error. Only small graphs, so that an input stays well under
/// the per-input timeout with AddressSanitizer.
func compileAndRun(_ g: Graph) {
  let shapes = g.inputs.map { g.shape($0) ?? [] }
  guard shapes.allSatisfy({ s in !s.isEmpty && s.allSatisfy { $0 > 0 } && Graph.saturatingProduct(s) <= 1 << 18 }),
    g.totalFlops < 50_000_000
  else { return }
  if let cuts = try? g.candidateCuts(all: true) {
    for c in [cuts.first, cuts.last].compactMap({ $0 }) {
      guard let (head, tail) = try? g.split(at: c) else { continue }
      if head.outputs.isEmpty || tail.inputs.isEmpty { fatalError("split at '\(c.name)' gave a head or a tail without its map") }
    }
  }
  _ = try? g.withBatch(2)
  guard let e = try? Executor(graph: g) else { return }
  _ = try? e.run(shapes.map { Tensor(zeros: $0) })
}
