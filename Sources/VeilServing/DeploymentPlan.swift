import Crypto
import Foundation
import VeilData
import VeilFormats
import VeilGraph
import VeilTEE
import VeilTensor

/// What one deployment serves: the plan the planner (issue 9) writes as `plan.json` next to the
/// head and tail it exported, and what `veil enclave serve` reads. File paths are relative to
/// the plan file. The enclave sends this document (sealed) to every client after the handshake,
/// so a client learns the preprocessing and input size from the party it has just verified.
///
/// Schema changes are additive: new fields are optional, and `schemaVersion` changes only when
/// an old reader would misread a new plan.
public struct DeploymentPlan: Codable, Sendable, Equatable {
  /// The newest schema this Veil reads: 2 adds `defence` and `privateOutput` (a plan with either
  /// is written as 2, so that a Veil that cannot apply them refuses the plan instead of serving
  /// undefended maps or sending the logits out).
  public static let schemaVersion = 2
  public static let fileName = "plan.json"
  /// The longest side of a model input a plan may declare, in pixels: a bound on what the
  /// enclave and its clients allocate for one input, whoever wrote the plan.
  public static let maxInputSide = 1 << 14

  /// A shape a plan may declare for a tensor that crosses the wire: rank 1 to 8, every extent
  /// positive, the element count within what the KServe codec takes.
  static func isTensorShape(_ shape: [Int]) -> Bool {
    (1...8).contains(shape.count) && shape.allSatisfy { $0 > 0 } && KServeCodec.elementCount(shape) != nil
  }

  public struct Model: Codable, Sendable, Equatable {
    /// A zoo name or the file the model came from.
    public var name: String
    /// SHA-256 (hex) of the whole model as ONNX, as the planner serialised it.
    public var sha256: String
    public init(name: String, sha256: String) {
      self.name = name
      self.sha256 = sha256
    }
  }

  public struct Cut: Codable, Sendable, Equatable {
    /// The cut's structural name (`layer2`, `block3_pool`), as `veil cuts` lists it.
    public var name: String
    /// The tensor that crosses the cut.
    public var tensor: String
    /// Its shape at batch 1, the shape the accelerator's tail takes.
    public var featureShape: [Int]
    public init(name: String, tensor: String, featureShape: [Int]) {
      self.name = name
      self.tensor = tensor
      self.featureShape = featureShape
    }
  }

  public struct Part: Codable, Sendable, Equatable {
    /// ONNX file, relative to the plan file.
    public var path: String
    /// SHA-256 (hex) of that file; the enclave refuses a file that does not match.
    public var sha256: String
    public init(path: String, sha256: String) {
      self.path = path
      self.sha256 = sha256
    }
  }

  /// Where the photo becomes the model input.
  public enum PreprocessingSite: String, Codable, Sendable, CaseIterable {
    /// The client decodes and preprocesses, and sends the input tensor.
    case client
    /// The client sends the encoded photo (PNG/JPEG); the enclave decodes and preprocesses it.
    case enclave
  }

  public struct Preprocessing: Codable, Sendable, Equatable {
    /// A VeilData preset: imagenet, caffe, tensorflow, tensorflow-lite, unit.
    public var preset: String
    public var appliedIn: PreprocessingSite
    public init(preset: String, appliedIn: PreprocessingSite) {
      self.preset = preset
      self.appliedIn = appliedIn
    }
  }

  public struct Input: Codable, Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// "nchw" or "nhwc".
    public var layout: String
    /// The model input's shape at batch 1.
    public var shape: [Int]
    public init(width: Int, height: Int, layout: String, shape: [Int]) {
      self.width = width
      self.height = height
      self.layout = layout
      self.shape = shape
    }
  }

  /// The tail's output: what the enclave accepts from the accelerator (FP32, this shape).
  public struct Output: Codable, Sendable, Equatable {
    public var name: String
    /// Its shape at batch 1.
    public var shape: [Int]
    public init(name: String, shape: [Int]) {
      self.name = name
      self.shape = shape
    }
  }

  public struct Accelerator: Codable, Sendable, Equatable {
    /// The model name and version the tail is served under (KServe v2 / Triton).
    public var modelName: String
    public var modelVersion: String
    public init(modelName: String, modelVersion: String) {
      self.modelName = modelName
      self.modelVersion = modelVersion
    }
  }

  public struct TEE: Codable, Sendable, Equatable {
    /// The cost-model preset the plan was made for: sgx1, sgx2, tdx, snp.
    public var preset: String
    /// The evidence the enclave presents: gramine-sgx, configfs-tsm, simulated.
    public var evidenceMode: String
    public init(preset: String, evidenceMode: String) {
      self.preset = preset
      self.evidenceMode = evidenceMode
    }
  }

  public var schemaVersion: Int
  public var model: Model
  public var cut: Cut
  public var head: Part
  public var tail: Part
  /// The head sealed with `veil keys seal` (released by `veil keys serve`), relative path.
  public var sealedHead: String?
  public var preprocessing: Preprocessing
  public var input: Input
  /// The tail's output; absent in plans written before it was recorded (the enclave then reads
  /// it from the tail).
  public var output: Output?
  /// Class names, one per line (index order), relative path.
  public var labels: String?
  public var accelerator: Accelerator
  public var tee: TEE
  /// The defence the enclave applies to the feature map before it leaves (nil: none).
  public var defence: Defence? {
    didSet { schemaVersion = Self.schema(defence: defence, privateOutput: privateOutput) }
  }
  /// The last layer kept in the enclave (nil: the accelerator computes the answer).
  public var privateOutput: PrivateOutput? {
    didSet { schemaVersion = Self.schema(defence: defence, privateOutput: privateOutput) }
  }

  /// 2 when the plan asks the enclave for more than schema 1 knew (a defence, a private output).
  static func schema(defence: Defence?, privateOutput: PrivateOutput?) -> Int {
    defence == nil && privateOutput == nil ? 1 : 2
  }

  /// The answer kept private: the accelerator runs the tail only up to `cut` (its answer has
  /// `cut.featureShape`), the enclave runs `part` (the last layer with weights and what follows)
  /// on it. The logits never leave the enclave in plaintext.
  public struct PrivateOutput: Codable, Sendable, Equatable {
    public var cut: Cut
    public var part: Part
    public init(cut: Cut, part: Part) {
      self.cut = cut
      self.part = part
    }
  }

  /// A defence as deployed: fitted to the planner's photos, applied on the head's output with
  /// its channels on `channelAxis` (1 for NCHW maps, 3 for NHWC), and what it cost when the
  /// plan measured it.
  public struct Defence: Codable, Sendable, Equatable {
    public var defence: CutDefence
    public var channelAxis: Int
    /// "top-1 agreement 0.97 (35 of 36 photos, 224 px), tail not fine-tuned", or similar.
    public var utility: String?
    /// How a quantised map crosses the cut: its codes as this type, with each image's and
    /// channel's minimum and step (`EncodedMap`), and the tail file takes those three inputs
    /// (`CutDefence.decodingTail`). nil: the map goes as FP32 (every other defence, and plans
    /// written before the encoded form).
    public var wire: WireIntegerType?
    /// `encoded`: a quantisation crosses the cut as its codes (the default), else as FP32.
    public init(defence: CutDefence, channelAxis: Int, utility: String? = nil, encoded: Bool = true) {
      self.defence = defence
      self.channelAxis = channelAxis
      self.utility = utility
      wire = encoded ? defence.wireType : nil
    }
  }

  public init(
    model: Model, cut: Cut, head: Part, tail: Part, sealedHead: String? = nil, preprocessing: Preprocessing,
    input: Input, output: Output? = nil, labels: String? = nil, accelerator: Accelerator, tee: TEE, defence: Defence? = nil,
    privateOutput: PrivateOutput? = nil
  ) {
    schemaVersion = Self.schema(defence: defence, privateOutput: privateOutput)
    self.defence = defence
    self.privateOutput = privateOutput
    self.model = model
    self.cut = cut
    self.head = head
    self.tail = tail
    self.sealedHead = sealedHead
    self.preprocessing = preprocessing
    self.input = input
    self.output = output
    self.labels = labels
    self.accelerator = accelerator
    self.tee = tee
  }
}

/// A plan read from disk: the document and the folder its paths are relative to.
public struct LoadedPlan: Sendable {
  public var plan: DeploymentPlan
  public var file: URL
  public var directory: URL { file.deletingLastPathComponent() }

  public func url(_ relative: String) -> URL {
    relative.hasPrefix("/") ? URL(fileURLWithPath: relative) : directory.appendingPathComponent(relative)
  }
  public var headURL: URL { url(plan.head.path) }
  public var tailURL: URL { url(plan.tail.path) }
  public var labelsURL: URL? { plan.labels.map(url) }

  /// The class names of the labels file, when the plan names one.
  public func labelNames() throws -> [String]? {
    guard let u = labelsURL else { return nil }
    let text: String
    do { text = try String(contentsOf: u, encoding: .utf8) } catch {
      throw EnclaveError.plan(file: file.path, field: "labels", detail: "cannot read '\(u.path)' as UTF-8 text")
    }
    var names = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if names.last == "" { names.removeLast() }
    return names
  }

  /// Reads and checks the head or tail: the file must hash to the plan's digest.
  public func readPart(_ part: DeploymentPlan.Part, field: String) throws -> Graph {
    let u = url(part.path)
    guard FileManager.default.fileExists(atPath: u.path) else {
      throw EnclaveError.plan(file: file.path, field: "\(field).path", detail: "'\(u.path)' does not exist")
    }
    let digest: String
    do { digest = try fileSHA256(u).hex } catch {
      throw EnclaveError.plan(file: file.path, field: "\(field).path", detail: "cannot read '\(u.path)': \(error)")
    }
    guard digest == part.sha256.lowercased() else {
      throw EnclaveError.plan(
        file: file.path, field: "\(field).sha256",
        detail: "'\(u.path)' has SHA-256 \(digest), the plan says \(part.sha256): the file was changed or the plan is stale; re-export the plan")
    }
    do { return try ONNXReader.read(u) } catch {
      throw EnclaveError.plan(file: file.path, field: "\(field).path", detail: "'\(u.path)' is not a readable ONNX model: \(error)")
    }
  }
}

extension DeploymentPlan {
  /// Reads `plan.json`, or `DIR/plan.json` when given a folder, and checks every field a
  /// server or client relies on (file digests are checked when the parts are read).
  public static func load(_ path: String) throws -> LoadedPlan {
    var url = URL(fileURLWithPath: path)
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue {
      url = url.appendingPathComponent(fileName)
    }
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw EnclaveError.plan(
        file: url.path, field: "-", detail: "cannot read the plan (\(error.localizedDescription)); pass the plan file or its folder")
    }
    let plan = try decode(data, file: url.path)
    return LoadedPlan(plan: plan, file: url)
  }

  /// Decodes and validates a plan document; `file` is what errors call it.
  public static func decode(_ data: Data, file: String) throws -> DeploymentPlan {
    let plan: DeploymentPlan
    do { plan = try JSONDecoder().decode(DeploymentPlan.self, from: data) } catch let DecodingError.keyNotFound(key, ctx) {
      throw EnclaveError.plan(
        file: file, field: (ctx.codingPath + [key]).map(\.stringValue).joined(separator: "."), detail: "missing")
    } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
      throw EnclaveError.plan(
        file: file, field: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: ctx.debugDescription)
    } catch let DecodingError.dataCorrupted(ctx) {
      throw EnclaveError.plan(
        file: file, field: ctx.codingPath.map(\.stringValue).joined(separator: "."), detail: ctx.debugDescription)
    } catch {
      throw EnclaveError.plan(file: file, field: "-", detail: "not a plan document: \(error)")
    }
    try plan.validate(file: file)
    return plan
  }

  func validate(file: String) throws {
    func bad(_ field: String, _ detail: String) -> EnclaveError { .plan(file: file, field: field, detail: detail) }
    guard schemaVersion >= 1, schemaVersion <= Self.schemaVersion else {
      throw bad("schemaVersion", "\(schemaVersion) is not supported; this Veil reads 1...\(Self.schemaVersion)")
    }
    guard VeilData.Preprocessing.Preset(rawValue: preprocessing.preset) != nil else {
      throw bad(
        "preprocessing.preset",
        "'\(preprocessing.preset)' is not one of \(VeilData.Preprocessing.Preset.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    guard ["nchw", "nhwc"].contains(input.layout) else { throw bad("input.layout", "'\(input.layout)' is not nchw or nhwc") }
    let expected = input.layout == "nchw" ? [1, 3, input.height, input.width] : [1, input.height, input.width, 3]
    guard (1...Self.maxInputSide).contains(input.width), (1...Self.maxInputSide).contains(input.height) else {
      throw bad("input", "\(input.width)×\(input.height) is not a model input Veil serves (each side 1...\(Self.maxInputSide) pixels)")
    }
    guard input.shape == expected else {
      throw bad("input.shape", "\(input.shape) does not match \(input.width)×\(input.height) \(input.layout) (expected \(expected))")
    }
    guard Self.isTensorShape(cut.featureShape) else {
      throw bad("cut.featureShape", "\(cut.featureShape) is not a tensor shape")
    }
    if let output {
      guard Self.isTensorShape(output.shape) else {
        throw bad("output.shape", "\(output.shape) is not a tensor shape")
      }
    }
    guard EvidenceMode(rawValue: tee.evidenceMode) != nil else {
      throw bad(
        "tee.evidenceMode",
        "'\(tee.evidenceMode)' is not one of \(EvidenceMode.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    if let defence {
      guard defence.channelAxis >= 1, defence.channelAxis < cut.featureShape.count else {
        throw bad("defence.channelAxis", "\(defence.channelAxis) is not an axis of the map \(cut.featureShape) other than the batch")
      }
      do {
        try defence.defence.validate()
        try defence.defence.checkFit(channels: cut.featureShape[defence.channelAxis])
      } catch { throw bad("defence", "\(error)") }
      if let wire = defence.wire, wire != defence.defence.wireType {
        throw bad(
          "defence.wire", "\(wire.rawValue) does not carry \(defence.defence.spec): only quantisation travels encoded (UINT8 up to 8 bits, UINT16 up to 16)")
      }
    }
    if let p = privateOutput {
      guard Self.isTensorShape(p.cut.featureShape) else {
        throw bad("privateOutput.cut.featureShape", "\(p.cut.featureShape) is not a tensor shape")
      }
      guard p.part.sha256.count == 64, p.part.sha256.allSatisfy(\.isHexDigit) else {
        throw bad("privateOutput.part.sha256", "'\(p.part.sha256)' is not a SHA-256 in hex (64 digits)")
      }
    }
    if schemaVersion >= 2, defence == nil, privateOutput == nil {
      throw bad("defence", "missing: schema 2 is written only for a plan with a defence or a private output")
    }
    for (field, d) in [("model.sha256", model.sha256), ("head.sha256", head.sha256), ("tail.sha256", tail.sha256)] {
      guard d.count == 64, d.allSatisfy(\.isHexDigit) else { throw bad(field, "'\(d)' is not a SHA-256 in hex (64 digits)") }
    }
  }

  /// The preprocessing this plan names, at its input size and layout.
  public var imagePreprocessing: VeilData.Preprocessing {
    get throws {
      guard let p = VeilData.Preprocessing.Preset(rawValue: preprocessing.preset) else {
        throw EnclaveError.plan(file: "-", field: "preprocessing.preset", detail: "'\(preprocessing.preset)' is unknown")
      }
      return VeilData.Preprocessing(
        preset: p, width: input.width, height: input.height, layout: input.layout == "nhwc" ? .nhwc : .nchw)
    }
  }

  /// The plan alone as plan.json holds it (what the enclave sends in its info and a cluster's
  /// config map carries).
  public func encoded() throws -> Data { try Self.document(self) }

  /// The one encoding of plan.json: `plan` at the top level (what `veil enclave serve --plan`
  /// reads) and, under "planning", the planner's evidence when there is any (VeilPlanning's
  /// record; infinite bounds written as "inf").
  public static func document(_ plan: DeploymentPlan?, planning: (any Encodable)? = nil) throws -> Data {
    struct Document: Encodable {
      var plan: DeploymentPlan?
      var planning: (any Encodable)?
      enum Keys: String, CodingKey { case planning }
      func encode(to encoder: Encoder) throws {
        try plan?.encode(to: encoder)
        if let planning {
          var c = encoder.container(keyedBy: Keys.self)
          try c.encode(planning, forKey: .planning)
        }
      }
    }
    return try VeilJSON.encoder().encode(Document(plan: plan, planning: planning))
  }

  /// The one writer of plan.json: `document(plan, planning:)` through a temporary file and a
  /// rename.
  public static func writeFile(_ plan: DeploymentPlan?, planning: (any Encodable)? = nil, to file: URL) throws {
    try document(plan, planning: planning).write(to: file, options: .atomic)
  }

  /// Splits `graph` at `cut` and writes a plan folder: head.onnx, tail.onnx, plan.json (and
  /// labels.txt when `labels` is given): what `veil split --plan` writes for a cut chosen by
  /// hand; the planner writes the same document with the cut it chose and its evidence.
  @discardableResult
  public static func write(
    model graph: Graph, name: String, cut cutName: String, preprocessing: Preprocessing,
    labels: [String]? = nil, teePreset: String = "sgx1", evidenceMode: String = "simulated",
    allCuts: Bool = false, defence: Defence? = nil, outputCut: String? = nil, to directory: URL
  ) throws -> LoadedPlan {
    let point = try graph.cut(named: cutName, all: allCuts)
    // With a private output, the tail stops before the last layer, which the enclave keeps.
    var outputPoint: CutPoint?
    if let outputCut {
      outputPoint = outputCut == "auto" ? try graph.lastLayerCut() : try graph.cut(named: outputCut, all: true)
    }
    let head: Graph
    let tail: Graph
    var last: Graph?
    if let outputPoint {
      (head, tail, last) = try graph.split(at: point, outputAt: outputPoint)
    } else {
      (head, tail) = try graph.split(at: point)
    }
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let modelDigest = try Self.modelDigest(graph)
    func part(_ g: Graph, _ file: String) throws -> Part {
      let u = directory.appendingPathComponent(file)
      try ONNXWriter.write(g, to: u)
      return Part(path: file, sha256: try fileSHA256(u).hex)
    }
    let shape = graph.inputs.first.flatMap { graph.shape($0) } ?? []
    guard shape.count == 4, shape[0] == 1, shape[1] == 3 || shape[3] == 3 else {
      throw EnclaveError.invalidArgument(
        "model '\(name)' takes input \(shape): a plan serves image models with a batch-1 [1,3,H,W] or [1,H,W,3] input")
    }
    let nchw = shape[1] == 3
    let input = Input(
      width: nchw ? shape[3] : shape[2], height: nchw ? shape[2] : shape[1], layout: nchw ? "nchw" : "nhwc", shape: shape)
    var labelsFile: String?
    if let labels {
      labelsFile = "labels.txt"
      try Data((labels.joined(separator: "\n") + "\n").utf8).write(to: directory.appendingPathComponent("labels.txt"))
    }
    var shaped = last ?? tail
    try shaped.inferShapes()
    let output = shaped.outputs.count == 1 ? shaped.outputs.first.flatMap { v in shaped.shape(v).map { Output(name: shaped[v].name, shape: $0) } } : nil
    // A quantised map crosses the cut as its codes: the accelerator's tail dequantises first.
    let served = try defence.flatMap { d in try d.wire.map { _ in try d.defence.decodingTail(tail, channelAxis: d.channelAxis) } } ?? tail
    let plan = DeploymentPlan(
      model: Model(name: name, sha256: modelDigest),
      cut: Cut(name: point.name, tensor: point.tensor, featureShape: point.shape),
      head: try part(head, "head.onnx"), tail: try part(served, "tail.onnx"), preprocessing: preprocessing, input: input,
      output: output, labels: labelsFile, accelerator: Accelerator(modelName: "\(name).tail", modelVersion: "1"),
      tee: TEE(preset: teePreset, evidenceMode: evidenceMode), defence: defence,
      privateOutput: try outputPoint.map {
        PrivateOutput(cut: Cut(name: $0.name, tensor: $0.tensor, featureShape: $0.shape), part: try part(last!, "output.onnx"))
      })
    try plan.validate(file: directory.appendingPathComponent(fileName).path)
    let file = directory.appendingPathComponent(fileName)
    try writeFile(plan, to: file)
    return LoadedPlan(plan: plan, file: file)
  }
}

extension DeploymentPlan {
  /// SHA-256 of the graph as Veil writes it to ONNX (weights and structure, nothing else), in
  /// hex: what a plan pins its model by.
  public static func modelDigest(_ graph: Graph) throws -> String {
    Array(SHA256.hash(data: try ONNXWriter.serialize(graph))).hex
  }
}

/// SHA-256 of a file (VeilTEE's reader, with this module's error).
func fileSHA256(_ url: URL) throws -> [UInt8] {
  do { return try fileDigest(url) } catch { throw EnclaveError.io(path: url.path, detail: "\(error)") }
}

extension DeploymentPlan {
  /// The KServe model name under which an accelerator serves the tail after `cut` of `model`
  /// for profiling (`veil accelerator serve --every-cut MODEL`, read by `veil profile|plan
  /// --accelerator HOST:PORT`): the model's file stem and the cut's name, with every character
  /// outside letters, digits, '_', '-' and '.' turned into '_' (`open_nsfw./Relu_9` →
  /// `open_nsfw._Relu_9`).
  public static func profilingTailName(model: String, cut: String) -> String {
    let stem = URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent
    let safe = { (s: String) in String(s.map { $0.isLetter || $0.isNumber || "_-.".contains($0) ? $0 : "_" }) }
    return "\(safe(stem)).\(safe(cut))"
  }
}
