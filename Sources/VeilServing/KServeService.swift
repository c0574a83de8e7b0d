// The accelerator service: `inference.GRPCInferenceService` over a repository of model versions.
// Every request is checked against what its model declares before it is queued, and every
// failure is a gRPC status with a message that says what was wrong and where (NOT_FOUND for an
// unknown model or version, INVALID_ARGUMENT for a wrong datatype, shape or byte count,
// RESOURCE_EXHAUSTED for a full queue, DEADLINE_EXCEEDED for a request whose deadline passed
// before it ran); a bad request never stops the service.
import Foundation
import GRPCCore
import Logging
import VeilGraph
import VeilTensor

/// The model versions a server serves, by name then version.
public struct KServeModelRepository: Sendable {
  public private(set) var models: [String: [String: KServeModel]] = [:]

  public init() {}

  public mutating func add(_ model: KServeModel) throws {
    if models[model.name]?[model.version] != nil {
      throw AcceleratorError.duplicateModel(name: model.name, version: model.version)
    }
    models[model.name, default: [:]][model.version] = model
  }

  /// The versions of `name`, oldest first (numeric versions in numeric order).
  public func versions(of name: String) -> [String] {
    (models[name]?.keys).map { Array($0).sorted(by: Self.versionOrder) } ?? []
  }

  static func versionOrder(_ a: String, _ b: String) -> Bool {
    switch (Int(a), Int(b)) {
    case let (x?, y?): return x < y
    case (.some, nil): return true
    case (nil, .some): return false
    default: return a < b
    }
  }

  /// `name` at `version`, or at its latest version when `version` is "".
  public func model(_ name: String, version: String) throws -> KServeModel {
    guard let versions = models[name] else {
      let known = models.keys.sorted().map { "\($0) (versions \(self.versions(of: $0).joined(separator: ", ")))" }
      throw RPCError(
        code: .notFound,
        message: "unknown model '\(name)'; this server serves: \(known.isEmpty ? "no models" : known.joined(separator: "; "))")
    }
    let v = version.isEmpty ? (self.versions(of: name).last ?? "") : version
    guard let m = versions[v] else {
      throw RPCError(
        code: .notFound,
        message: "model '\(name)' has no version '\(version)'; its versions: \(self.versions(of: name).joined(separator: ", "))")
    }
    return m
  }

  /// Every model version.
  public var all: [KServeModel] { models.values.flatMap { $0.values } }
}

/// The service implementation. Conforms to the generated `ServiceProtocol` (not the simple one)
/// so that ModelInfer reads the request's `grpc-timeout`.
public struct AcceleratorService: Inference_GRPCInferenceService.ServiceProtocol {
  public let repository: KServeModelRepository
  public let metrics: AcceleratorMetrics
  public let logger: Logger
  /// Set by the server when it begins its graceful shutdown.
  public let draining = DrainFlag()
  public static let serverName = "veil-accelerator"
  public static let serverVersion = "0.1.0"
  /// Seconds a `ModelStreamInfer` stream may wait for its next request before the server ends
  /// it (an open stream keeps its connection from idling out).
  public let streamIdleSeconds: Double
  private let clock: any ServiceClock

  public init(
    repository: KServeModelRepository, metrics: AcceleratorMetrics, logger: Logger, streamIdleSeconds: Double = 120,
    clock: any ServiceClock = SystemClock()
  ) {
    self.repository = repository
    self.metrics = metrics
    self.logger = logger
    self.streamIdleSeconds = streamIdleSeconds
    self.clock = clock
  }

  /// Runs `body`, records the call's metrics, and turns non-RPC errors into INTERNAL.
  private func measured<R>(_ method: String, model: String = "", _ body: () async throws -> R) async throws -> R {
    let t0 = DispatchTime.now().uptimeNanoseconds
    func seconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 }
    do {
      let r = try await body()
      metrics.request(method: method, model: model, status: "OK", seconds: seconds())
      return r
    } catch let e as RPCError {
      metrics.request(method: method, model: model, status: e.code.statusName, seconds: seconds())
      logger.info("\(method) failed", metadata: ["model": "\(model)", "code": "\(e.code.statusName)", "message": "\(e.message)"])
      throw e
    } catch let e as SchedulerError {
      let rpc = Self.rpcError(e)
      metrics.request(method: method, model: model, status: rpc.code.statusName, seconds: seconds())
      logger.info("\(method) failed", metadata: ["model": "\(model)", "code": "\(rpc.code.statusName)", "message": "\(rpc.message)"])
      throw rpc
    } catch is CancellationError {
      metrics.request(method: method, model: model, status: "CANCELLED", seconds: seconds())
      throw RPCError(code: .cancelled, message: "the request was cancelled")
    } catch {
      metrics.request(method: method, model: model, status: "INTERNAL", seconds: seconds())
      logger.error("\(method) failed", metadata: ["model": "\(model)", "error": "\(error)"])
      throw RPCError(code: .internalError, message: "\(error)")
    }
  }

  public func serverLive(request: ServerRequest<Inference_ServerLiveRequest>, context: ServerContext) async throws
    -> ServerResponse<Inference_ServerLiveResponse>
  {
    try await measured("ServerLive") {
      var r = Inference_ServerLiveResponse()
      r.live = true
      return ServerResponse(message: r)
    }
  }

  public func serverReady(request: ServerRequest<Inference_ServerReadyRequest>, context: ServerContext) async throws
    -> ServerResponse<Inference_ServerReadyResponse>
  {
    try await measured("ServerReady") {
      var r = Inference_ServerReadyResponse()
      r.ready = !repository.models.isEmpty
      return ServerResponse(message: r)
    }
  }

  public func modelReady(request: ServerRequest<Inference_ModelReadyRequest>, context: ServerContext) async throws
    -> ServerResponse<Inference_ModelReadyResponse>
  {
    try await measured("ModelReady", model: request.message.name) {
      var r = Inference_ModelReadyResponse()
      // Triton answers ready=false (not an error) for a model it does not serve.
      r.ready = (try? repository.model(request.message.name, version: request.message.version)) != nil
      return ServerResponse(message: r)
    }
  }

  public func serverMetadata(request: ServerRequest<Inference_ServerMetadataRequest>, context: ServerContext) async throws
    -> ServerResponse<Inference_ServerMetadataResponse>
  {
    try await measured("ServerMetadata") {
      var r = Inference_ServerMetadataResponse()
      r.name = Self.serverName
      r.version = Self.serverVersion
      r.extensions = []
      return ServerResponse(message: r)
    }
  }

  public func modelMetadata(request: ServerRequest<Inference_ModelMetadataRequest>, context: ServerContext) async throws
    -> ServerResponse<Inference_ModelMetadataResponse>
  {
    let q = request.message
    return try await measured("ModelMetadata", model: q.name) {
      let m = try repository.model(q.name, version: q.version)
      var r = Inference_ModelMetadataResponse()
      r.name = m.name
      r.versions = repository.versions(of: m.name)
      r.platform = "veil"
      let convert = { (t: KServeTensorMetadata) -> Inference_ModelMetadataResponse.TensorMetadata in
        var x = Inference_ModelMetadataResponse.TensorMetadata()
        x.name = t.name
        x.datatype = t.datatype
        x.shape = KServeCodec.wireShape(t.shape)
        return x
      }
      r.inputs = m.inputs.map(convert)
      r.outputs = m.outputs.map(convert)
      return ServerResponse(message: r)
    }
  }

  /// The gRPC status of a scheduler's refusal: the one place the scheduler meets the protocol.
  static func rpcError(_ e: SchedulerError) -> RPCError {
    let code: RPCError.Code
    switch e {
    case .queueFull: code = .resourceExhausted
    case .deadlineExceeded: code = .deadlineExceeded
    case .cancelled: code = .cancelled
    case .shuttingDown: code = .unavailable
    case .batchTooLarge: code = .invalidArgument
    case .runFailed: code = .internalError
    }
    return RPCError(code: code, message: e.description)
  }

  public func modelInfer(request: ServerRequest<Inference_ModelInferRequest>, context: ServerContext) async throws
    -> ServerResponse<Inference_ModelInferResponse>
  {
    let q = request.message
    let arrival = DispatchTime.now().uptimeNanoseconds
    // A deadline too far to represent is no deadline (the client's own timer still applies).
    let deadline = request.metadata[stringValues: "grpc-timeout"].first(where: { _ in true })
      .flatMap(Self.parseTimeout).flatMap { t -> UInt64? in
        let (d, overflow) = arrival.addingReportingOverflow(t)
        return overflow ? nil : d
      }
    return try await measured("ModelInfer", model: q.modelName) { ServerResponse(message: try await answer(q, deadline: deadline)) }
  }

  /// ModelInfer on one open stream (Triton's call): each request answered as `modelInfer`
  /// answers it, in order, one at a time (`serveInOrder`); the first request refused ends the
  /// stream with the status `modelInfer` would return. There is no deadline per request on the
  /// stream: a client that stops waiting ends the stream, and with it the request's run.
  public func modelStreamInfer(
    request: StreamingServerRequest<Inference_ModelInferRequest>, context: ServerContext
  ) async throws -> StreamingServerResponse<Inference_ModelStreamInferResponse> {
    StreamingServerResponse { writer in
      try await serveInOrder(request.messages, idleFor: streamIdleSeconds, draining: draining, clock: clock) { q in
        var m = Inference_ModelStreamInferResponse()
        m.inferResponse = try await measured("ModelStreamInfer", model: q.modelName) { try await answer(q, deadline: nil) }
        try await writer.write(m)
      }
      return [:]
    }
  }

  /// One inference request's answer, run before `deadline` (uptime nanoseconds) when given.
  private func answer(_ q: Inference_ModelInferRequest, deadline: UInt64?) async throws -> Inference_ModelInferResponse {
    let m = try repository.model(q.modelName, version: q.modelVersion)
    let (inputs, raw) = try Self.decodeInputs(q, for: m)
    let wanted = try Self.requestedOutputs(q, for: m)
    // A call the client abandons leaves the queue unrun (or its run's answer unsent).
    let run = try await cancelledWithTheCall(unless: draining) { try await m.timedInfer(inputs, deadline: deadline) }
    let outputs = run.outputs
    var r = Inference_ModelInferResponse()
    // Where the request's time went here, for the caller's breakdown (`KServeServerTiming`).
    r.parameters = KServeServerTiming(queueMs: run.queueMs, computeMs: run.computeMs).parameters
    r.modelName = m.name
    r.modelVersion = m.version
    r.id = q.id
    for i in wanted {
      var o = Inference_ModelInferResponse.InferOutputTensor()
      o.name = m.outputs[i].name
      o.datatype = KServeCodec.fp32
      o.shape = KServeCodec.wireShape(outputs[i].shape)
      if raw {
        r.rawOutputContents.append(KServeCodec.rawBytes(outputs[i]))
      } else {
        o.contents.fp32Contents = outputs[i].scalars
      }
      r.outputs.append(o)
    }
    return r
  }

  /// The request's inputs in the model's input order, checked against the declared datatype and
  /// shape (any batch ≥ 1 where the model batches) and the byte or value count; and whether they
  /// came as raw bytes (then the outputs go back raw too, as Triton does).
  package static func decodeInputs(_ q: Inference_ModelInferRequest, for m: KServeModel) throws -> ([Tensor], Bool) {
    func invalid(_ s: String) -> RPCError {
      RPCError(code: .invalidArgument, message: "model '\(m.name)' version \(m.version): \(s)")
    }
    guard q.inputs.count == m.inputs.count else {
      throw invalid(
        "expected \(m.inputs.count) input(s) (\(m.inputs.map(\.name).joined(separator: ", "))), found \(q.inputs.count)")
    }
    let raw = !q.rawInputContents.isEmpty
    if raw {
      guard q.rawInputContents.count == q.inputs.count else {
        throw invalid("\(q.inputs.count) input(s) but \(q.rawInputContents.count) raw_input_contents entries; send one per input")
      }
    }
    var tensors = [Tensor?](repeating: nil, count: m.inputs.count)
    var batch: Int?
    for (k, t) in q.inputs.enumerated() {
      guard let i = m.inputs.firstIndex(where: { $0.name == t.name }) else {
        throw invalid("unknown input '\(t.name)'; the model's inputs: \(m.inputs.map(\.name).joined(separator: ", "))")
      }
      guard tensors[i] == nil else { throw invalid("input '\(t.name)' is given twice") }
      let declared = m.inputs[i]
      guard t.datatype == declared.datatype, let size = KServeCodec.bytesPerValue(t.datatype) else {
        throw invalid("input '\(t.name)' has datatype '\(t.datatype)'; the model declares \(declared.datatype)")
      }
      let integer = size != 4
      let shape = t.shape.map { Int(clamping: $0) }
      let maxBatch = m.batching.maxBatchSize
      let matches =
        shape.count == declared.shape.count
        && zip(shape, declared.shape).allSatisfy { s, d in d == -1 ? (s >= 1 && s <= maxBatch) : s == d }
      guard matches else {
        if shape.count == declared.shape.count, declared.shape.first == -1, shape.first.map({ $0 > maxBatch }) == true,
          zip(shape.dropFirst(), declared.shape.dropFirst()).allSatisfy({ $0 == $1 })
        {
          throw invalid(
            "input '\(t.name)' has batch \(shape[0]); this server takes at most \(maxBatch) rows per request (--max-batch)")
        }
        throw invalid("input '\(t.name)' has shape \(shape); the model declares \(declared.shape) (-1: a batch of 1…\(maxBatch))")
      }
      // The shape now matches the declared one with a bounded batch, so its size is bounded too.
      let count = KServeCodec.elementCount(shape) ?? 0
      if declared.shape.first == -1 {
        if let b = batch, b != shape[0] {
          throw invalid("input '\(t.name)' has batch \(shape[0]) but an earlier input has batch \(b); all inputs share one batch")
        }
        batch = shape[0]
      }
      let tensor: Tensor?
      if raw {
        if t.hasContents, KServeCodec.foreignContents(t.contents, expected: "") != nil {
          throw invalid("input '\(t.name)' has typed contents as well as raw_input_contents; send one or the other")
        }
        tensor = KServeCodec.tensor(shape: shape, rawBytes: q.rawInputContents[k], datatype: t.datatype)
        if tensor == nil {
          throw invalid(
            "input '\(t.name)' of shape \(shape) needs \(count * size) bytes of \(t.datatype) in raw_input_contents[\(k)], found \(q.rawInputContents[k].count)"
          )
        }
      } else if integer {
        // UINT8 / UINT16 travel in uint_contents (the protocol's field for unsigned types up to 32 bits).
        let c = t.contents
        if let field = KServeCodec.foreignContents(c, expected: "uint_contents") {
          throw invalid("input '\(t.name)' is declared \(t.datatype) but carries \(field); put the values in uint_contents")
        }
        let top = UInt32(WireIntegerType(rawValue: t.datatype)?.maximum ?? 0)
        if let over = c.uintContents.first(where: { $0 > top }) {
          throw invalid("input '\(t.name)' is declared \(t.datatype) but carries \(over), above \(top)")
        }
        tensor = KServeCodec.tensor(shape: shape, values: c.uintContents.map(Float.init))
        if tensor == nil {
          throw invalid("input '\(t.name)' of shape \(shape) needs \(count) values in uint_contents, found \(c.uintContents.count)")
        }
      } else {
        if let field = KServeCodec.foreignContents(t.contents) {
          throw invalid("input '\(t.name)' is declared FP32 but carries \(field); put the values in fp32_contents")
        }
        tensor = KServeCodec.tensor(shape: shape, values: t.contents.fp32Contents)
        if tensor == nil {
          throw invalid(
            "input '\(t.name)' of shape \(shape) needs \(count) values in fp32_contents, found \(t.contents.fp32Contents.count)"
          )
        }
      }
      tensors[i] = tensor
    }
    return (tensors.compactMap { $0 }, raw)
  }

  /// The indices of the outputs to send back: those the request names, or all.
  package static func requestedOutputs(_ q: Inference_ModelInferRequest, for m: KServeModel) throws -> [Int] {
    if q.outputs.isEmpty { return Array(m.outputs.indices) }
    return try q.outputs.map { o in
      guard let i = m.outputs.firstIndex(where: { $0.name == o.name }) else {
        throw RPCError(
          code: .invalidArgument,
          message:
            "model '\(m.name)' version \(m.version): unknown output '\(o.name)'; its outputs: \(m.outputs.map(\.name).joined(separator: ", "))"
        )
      }
      return i
    }
  }

  /// A `grpc-timeout` value ("100m", "5S", …: 1 to 8 digits and a unit) in nanoseconds; nil
  /// when malformed. A value beyond what 64 bits of nanoseconds hold (99999999H is 11 000 years)
  /// is `UInt64.max`: no deadline in practice.
  public static func parseTimeout(_ text: String) -> UInt64? {
    let digits = text.utf8.dropLast()
    guard let unit = text.last, (1...8).contains(digits.count), digits.allSatisfy({ (48...57).contains($0) }),
      let n = UInt64(text.dropLast())
    else { return nil }
    let scale: UInt64
    switch unit {
    case "H": scale = 3_600_000_000_000
    case "M": scale = 60_000_000_000
    case "S": scale = 1_000_000_000
    case "m": scale = 1_000_000
    case "u": scale = 1_000
    case "n": scale = 1
    default: return nil
    }
    let (t, overflow) = n.multipliedReportingOverflow(by: scale)
    return overflow ? UInt64.max : t
  }
}
