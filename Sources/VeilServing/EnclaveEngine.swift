import Crypto
import Dispatch
import Foundation
import SwiftProtobuf
import VeilData
import VeilGraph
import VeilTEE
import VeilTensor

/// What the enclave decodes from a photo. A photo's header is read before anything is decoded
/// (a few hundred bytes of PNG can claim 4 billion × 4 billion pixels), and the size after the
/// plan's resize is computed from it before anything is resized (a 1 × 150 000 photo resized on
/// its short side would be 256 × 38 million).
public struct ImageLimits: Sendable, Equatable {
  /// Pixels of a photo as its header declares them.
  public var maxPixels: Int
  /// Pixels of the photo after the plan's resize, before its crop.
  public var maxResizedPixels: Int

  public init(maxPixels: Int = 40_000_000, maxResizedPixels: Int = 16_000_000) {
    self.maxPixels = maxPixels
    self.maxResizedPixels = maxResizedPixels
  }
}

/// The model part the enclave runs: preprocessing (when the plan puts it here), the head on
/// Veil's engine, the tail through a `TailBackend`, and the answer (logits, top-k with labels).
/// Never logs an input, a feature map or an answer.
public final class EnclaveEngine: Sendable {
  public let plan: LoadedPlan
  public let backend: any TailBackend
  public let labels: [String]?
  public let imageLimits: ImageLimits
  /// How the head runs: its executor, one request at a time, or (head batching) behind the
  /// batch scheduler (one worker thread, an executor per batch size), so requests that wait for
  /// the head run as one batch. Either way the enclave holds one copy of the weights.
  private enum HeadRunner: Sendable {
    case direct(Executor)
    case batched(KServeModel)
  }
  private let head: HeadRunner
  /// The plan's output part (its last layer), run here on the accelerator's answer when the plan
  /// keeps the answer private.
  private let outputPart: Executor?
  private let preprocessing: VeilData.Preprocessing
  private let maxTopK: Int
  /// The tail's output shape at batch 1, when the plan declares it: every backend's answer must
  /// have it.
  private let outputShape: [Int]?
  /// Head runs happen here, off the cooperative pool; the executor's lock serialises them.
  private let queue = DispatchQueue(label: "veil.enclave.head", attributes: .concurrent)

  /// `headBatch` > 1 turns on batching of the head: requests that arrive while the head runs
  /// wait (no longer than `headQueueDelay` for the first of them) and then run together, up to
  /// `headBatch` rows. Their feature maps leave together too, so an accelerator that batches
  /// sees them at once rather than spaced by the head's time. A head whose graph does not
  /// re-batch runs one request at a time.
  public init(
    plan: LoadedPlan, backend: any TailBackend, maxTopK: Int = 100, headBatch: Int = 1,
    headQueueDelay: Duration = .zero, headQueueCapacity: Int = 256, headWaitsWhenIdle: Bool = false,
    imageLimits: ImageLimits = .init()
  ) throws {
    self.plan = plan
    self.backend = backend
    self.imageLimits = imageLimits
    let head = try plan.readPart(plan.plan.head, field: "head")
    let out = head.outputs.first.flatMap { head.shape($0) }
    guard head.inputs.count == 1, head.outputs.count == 1, out == plan.plan.cut.featureShape else {
      throw EnclaveError.plan(
        file: plan.file.path, field: "cut.featureShape",
        detail: "the head's output is \(out.map { "\($0)" } ?? "unknown"), the plan says \(plan.plan.cut.featureShape)")
    }
    let headInput = head.inputs.first.flatMap { head.shape($0) }
    guard let headInput, Array(headInput.dropFirst()) == Array(plan.plan.input.shape.dropFirst()) else {
      throw EnclaveError.plan(
        file: plan.file.path, field: "input.shape",
        detail: "the head's input is \(headInput.map { "\($0)" } ?? "unknown"), the plan says \(plan.plan.input.shape)")
    }
    var runner: HeadRunner?
    if headBatch > 1 {
      let model = try KServeModel(
        KServeModelSpec(
          name: "head", graph: head,
          batching: KServeBatching(
            maxBatchSize: headBatch, maxQueueDelay: headQueueDelay, queueCapacity: headQueueCapacity,
            waitsWhenIdle: headWaitsWhenIdle)))
      if model.batches { runner = .batched(model) } else { model.shutdown() }
    }
    self.head = try runner ?? .direct(Executor(graph: head))
    labels = try plan.labelNames()
    preprocessing = try plan.plan.imagePreprocessing
    outputShape = plan.plan.privateOutput?.cut.featureShape ?? plan.plan.output?.shape
    outputPart = try plan.plan.privateOutput.map { try Executor(graph: try plan.readPart($0.part, field: "privateOutput.part")) }
    self.maxTopK = maxTopK
  }

  /// The model input of a request, checked against the plan.
  func input(_ request: EnclaveRequestMessage) throws -> Tensor {
    let p = plan.plan
    let x: Tensor
    switch request.input {
    case .tensor(let t):
      guard p.preprocessing.appliedIn == .client else {
        throw EnclaveError.invalidInput(
          "this plan preprocesses in the enclave: send the encoded photo (PNG/JPEG), not a tensor")
      }
      x = try t.tensor(maxElements: p.input.shape.reduce(1, *))
    case .image(let bytes):
      guard p.preprocessing.appliedIn == .enclave else {
        throw EnclaveError.invalidInput(
          "this plan preprocesses on the client: send the \(p.input.shape) input tensor (\(p.preprocessing.preset) preprocessing), not a photo"
        )
      }
      try checkImageSize(bytes)
      do {
        let decoded = try ImageCodec.decode(bytes, name: "the request's photo")
        x = try preprocessing.tensor(decoded.byteImage().oriented(exif: decoded.orientation))
      } catch {
        throw EnclaveError.invalidInput("\(error)")
      }
    case .pixels(let px):
      guard p.preprocessing.appliedIn == .client else {
        throw EnclaveError.invalidInput(
          "this plan preprocesses in the enclave: send the encoded photo (PNG/JPEG), not its pixels")
      }
      let image = try px.image(width: preprocessing.cropWidth, height: preprocessing.cropHeight)
      do { x = try preprocessing.tensor(fromCropped: image) } catch { throw EnclaveError.invalidInput("\(error)") }
    case nil:
      throw EnclaveError.invalidInput("the request carries neither a tensor, nor pixels, nor a photo")
    }
    guard x.shape == p.input.shape else {
      throw EnclaveError.invalidInput(
        "the model takes \(p.input.shape) (\(p.input.layout)), the request's tensor is \(x.shape)")
    }
    return x
  }

  /// Refuses, before decoding, a photo whose header declares too many pixels, or whose size after
  /// the plan's resize would be too large; and a PNG or JPEG whose size cannot be read at all.
  func checkImageSize(_ bytes: Data) throws {
    let (w, h): (Int, Int)
    switch encodedImageSize(bytes) {
    case .notAnImage: return  // the decoder names what it is not
    case .unreadable(let why):
      throw EnclaveError.invalidInput("the photo's size cannot be read from its header: \(why)")
    case .size(let width, let height): (w, h) = (width, height)
    }
    let limit = imageLimits.maxPixels
    let (pixels, overflow) = w.multipliedReportingOverflow(by: h)
    guard w > 0, h > 0, !overflow, pixels <= limit else {
      throw EnclaveError.invalidInput(
        "the photo is \(w)×\(h) pixels, more than the enclave decodes (\(limit / 1_000_000) megapixels); scale it down")
    }
    guard let s = preprocessing.resizeShorterSide, s > 0 else { return }
    let (short, long) = (min(w, h), max(w, h))
    // torchvision's Resize(s): the shorter side becomes s, the longer ⌊s × long / short⌋.
    let (scaled, o1) = s.multipliedReportingOverflow(by: long)
    let resizedLong = o1 ? Int.max : scaled / short
    let (resized, o2) = resizedLong.multipliedReportingOverflow(by: s)
    guard !o1, !o2, resized <= imageLimits.maxResizedPixels else {
      throw EnclaveError.invalidInput(
        "the photo is \(w)×\(h) pixels; resized to \(s) pixels on its shorter side it would be \(s)×\(o1 ? "∞" : "\(resizedLong)"), "
          + "more than the enclave resizes (\(imageLimits.maxResizedPixels / 1_000_000) megapixels); crop it closer to a square"
      )
    }
  }

  /// Runs head then tail. The answer's `endpoint` names the endpoint that ran the tail, and
  /// `tail` its stages where the backend times them.
  /// `headMs` includes the defence, `defenceMs` is the defence alone.
  public func run(_ x: Tensor) async throws -> (
    logits: Tensor, headMs: Double, defenceMs: Double, tailMs: Double, endpoint: String, tail: CallTiming?
  ) {
    let t0 = DispatchTime.now()
    let features: Tensor
    switch head {
    case .batched(let model):
      do {
        features = try await model.infer([x])[0]
      } catch SchedulerError.queueFull(_, _, _, let capacity) {
        throw EnclaveError.overloaded("\(capacity) requests already wait for the head; retry later")
      } catch SchedulerError.cancelled {
        throw CancellationError()
      }
    case .direct(let executor):
      features = try await runBlocking(on: queue) { try executor.run([x])[0] }
    }
    // The plan's defence, on the map before it leaves the enclave: noise from the kernel's
    // random source, never a seeded one.
    var sent = [features]
    let headed = DispatchTime.now()
    if let d = plan.plan.defence {
      if d.wire != nil {
        // Quantised: the codes cross the cut (one or two bytes a value), the tail dequantises.
        sent = try d.defence.encode(features, channelAxis: d.channelAxis).tensors
      } else {
        var random = KernelRandom()
        sent = [try d.defence.apply(to: features, channelAxis: d.channelAxis, using: &random)]
      }
    }
    let t1 = DispatchTime.now()
    let answer = try await backend.infer(sent)
    if let outputShape, answer.output.shape != outputShape {
      throw EnclaveError.accelerator(
        endpoint: answer.endpoint,
        detail: "answered a tensor of shape \(answer.output.shape); the tail's output is \(outputShape)")
    }
    var logits = answer.output
    if let outputPart {
      // The answer stays here: the last layer runs in the enclave (its time counts in the tail's).
      logits = try await runBlocking(on: queue) { try outputPart.run([answer.output])[0] }
    }
    let t2 = DispatchTime.now()
    return (logits, ms(t0, t1), plan.plan.defence == nil ? 0 : ms(headed, t1), ms(t1, t2), answer.endpoint, answer.timing)
  }

  /// With head batching: head runs so far and the rows they took (mean batch = rows / runs).
  public var headBatchStatistics: (runs: Int, rows: Int)? {
    guard case .batched(let model) = head else { return nil }
    return (runs: model.statistics.batches, rows: model.statistics.rows)
  }

  /// With head batching: requests waiting for the head now.
  public var headQueueDepth: Int? {
    guard case .batched(let model) = head else { return nil }
    return model.queueDepth
  }

  deinit { if case .batched(let model) = head { model.shutdown() } }

  /// The whole request: never throws; every failure becomes an error answer. Past `timeout`
  /// seconds the answer is a `timeout` error (the head or tail may still finish in the
  /// background; its result is dropped).
  public func answer(_ request: EnclaveRequestMessage, timeout: Double = 120) async -> EnclaveResponseMessage {
    var response = EnclaveResponseMessage()
    do {
      guard request.topK <= maxTopK else {
        throw EnclaveError.invalidInput("top_k \(request.topK) exceeds the enclave's limit of \(maxTopK)")
      }
      let t0 = DispatchTime.now()
      let x = try input(request)
      let decoded = DispatchTime.now()
      let r = try await withDeadline(
        seconds: timeout,
        timedOut: EnclaveError.timeout("the request took more than the enclave's \(timeout) s per request")
      ) { try await self.run(x) }
      let ran = DispatchTime.now()
      var result = EnclaveResultMessage()
      if request.wantLogits { result.logits = TensorMessage(r.logits) }
      let row = r.logits.scalars
      result.top = topK(row, Int(request.topK)).map { c in
        var s = Veil_Enclave_V1_ClassScore()
        s.index = UInt32(c.index)
        s.score = c.score
        if let labels, c.index < labels.count { s.label = labels[c.index] }
        return s
      }
      result.headMs = r.headMs
      result.tailMs = r.tailMs
      result.accelerator = r.endpoint
      var stages = Veil_Enclave_V1_EnclaveStages()
      stages.decodeMs = ms(t0, decoded)
      stages.headMs = r.headMs - r.defenceMs
      stages.defenceMs = r.defenceMs
      if let t = r.tail {
        stages.tailEncodeMs = t.encodeMs
        stages.tailCallMs = t.callMs
        stages.tailDecodeMs = t.decodeMs
        if let server = t.server {
          stages.tailQueueMs = server.queueMs
          stages.tailComputeMs = server.computeMs
        }
      } else {
        stages.tailCallMs = r.tailMs
      }
      let end = DispatchTime.now()
      stages.answerMs = ms(ran, end)
      result.stages = stages
      result.totalMs = ms(t0, end)
      response.result = result
    } catch {
      response.error = Self.errorMessage(error)
    }
    return response
  }

  /// The sealed error answer of a failure.
  static func errorMessage(_ error: any Error) -> Veil_Enclave_V1_EnclaveError {
    var e = Veil_Enclave_V1_EnclaveError()
    if let ee = error as? EnclaveError {
      e.kind = ee.kind.rawValue
      e.message = ee.description
    } else if error is CancellationError {
      e.kind = EnclaveErrorKind.cancelled.rawValue
      e.message = "the request was cancelled"
    } else {
      e.kind = EnclaveErrorKind.internal.rawValue
      e.message = "\(error)"
    }
    return e
  }
}

/// What a photo's header says about its size.
package enum EncodedImageSize: Equatable {
  case size(width: Int, height: Int)
  /// A PNG or JPEG whose size is not where its format puts it.
  case unreadable(String)
  /// Neither PNG nor JPEG.
  case notAnImage
}

/// Width and height from a PNG's IHDR or a JPEG's SOF marker, without decoding. A JPEG's
/// segments are walked by their lengths through the whole file (a frame header may follow
/// megabytes of application data), which reads a few bytes per segment.
package func encodedImageSize(_ data: Data) -> EncodedImageSize {
  let bytes = [UInt8](data)
  func be(_ i: Int, _ n: Int) -> Int { bytes[i..<(i + n)].reduce(0) { $0 << 8 | Int($1) } }
  if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) {
    guard bytes.count >= 24, bytes[12..<16].elementsEqual(Array("IHDR".utf8)) else {
      return .unreadable("a PNG must start with its IHDR chunk")
    }
    return .size(width: be(16, 4), height: be(20, 4))
  }
  guard bytes.starts(with: [0xFF, 0xD8]) else { return .notAnImage }
  var i = 2
  while i + 1 < bytes.count {
    guard bytes[i] == 0xFF else { return .unreadable("byte \(i) is not a JPEG marker") }
    let marker = bytes[i + 1]
    switch marker {
    case 0xFF:
      i += 1  // fill byte
    case 0x01, 0xD0...0xD7:
      i += 2  // markers without a length
    case 0xD9, 0xDA:
      return .unreadable("the image data starts before a frame header (SOF)")
    default:
      guard i + 4 <= bytes.count else { return .unreadable("truncated at byte \(i)") }
      let length = be(i + 2, 2)
      guard length >= 2 else { return .unreadable("segment at byte \(i) has length \(length)") }
      if (0xC0...0xCF).contains(marker), ![0xC4, 0xC8, 0xCC].contains(marker) {
        guard i + 9 <= bytes.count else { return .unreadable("truncated frame header at byte \(i)") }
        return .size(width: be(i + 7, 2), height: be(i + 5, 2))
      }
      i += 2 + length
    }
  }
  return .unreadable("no frame header (SOF)")
}

func ms(_ a: DispatchTime, _ b: DispatchTime) -> Double {
  Double(b.uptimeNanoseconds - a.uptimeNanoseconds) / 1e6
}

/// Random words from a cryptographic source (BoringSSL's RAND_bytes, seeded by the kernel, as
/// swift-crypto's key generation reads it), 4 KiB at a time: the defence's noise must not be
/// predictable by the host, and one system call per number would cost more than the head.
struct KernelRandom: RandomNumberGenerator {
  private var buffer = [UInt64](repeating: 0, count: 512)
  private var position = 512

  mutating func next() -> UInt64 {
    if position == buffer.count {
      let fresh = SymmetricKey(size: SymmetricKeySize(bitCount: buffer.count * 64))
      buffer.withUnsafeMutableBytes { dst in fresh.withUnsafeBytes { dst.copyMemory(from: $0) } }
      position = 0
    }
    defer { position += 1 }
    return buffer[position]
  }
}
