// A client of the KServe v2 / Triton gRPC protocol (`inference.GRPCInferenceService`), usable
// against any such server: Veil's accelerator service, NVIDIA Triton, KServe, Seldon MLServer.
// It speaks plaintext HTTP/2 to HOST:PORT, maps every gRPC status to a typed `KServeError`, and
// applies a per-call deadline. It does not retry or fail over: the caller decides.
import Foundation
import Synchronization
import GRPCCore
import GRPCNIOTransportHTTP2
import VeilGraph
import VeilTensor

/// HOST:PORT of a KServe v2 gRPC server.
extension HTTP2ClientTransport.Posix.Config {
  /// Veil's clients (the enclave's accelerators, a client's enclave replicas): reconnect
  /// attempts 0.2 s apart at first, at most 5 s apart. gRPC's default grows to two minutes, which
  /// kept an enclave started before its accelerators refusing requests long after they came up
  /// (calls fail at once while the channel waits out its back-off).
  public static var veilClient: Self {
    .defaults { $0.backoff = .init(initial: .milliseconds(200), max: .seconds(5), multiplier: 1.6, jitter: 0.2) }
  }
}

public struct KServeEndpoint: Sendable, Equatable, CustomStringConvertible {
  public var host: String
  public var port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// Parses "HOST:PORT" ("127.0.0.1:8001", "gpu-box:8001", "[::1]:8001").
  public init(parsing text: String) throws {
    let bad = { (why: String) in
      KServeError(kind: .invalidEndpoint, call: "connect", endpoint: text, message: "'\(text)' is not HOST:PORT (\(why))")
    }
    guard let colon = text.lastIndex(of: ":") else { throw bad("no ':PORT'") }
    var host = String(text[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard !host.isEmpty else { throw bad("empty host") }
    guard let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
      throw bad("the port must be a number in 1…65535")
    }
    self.init(host: host, port: port)
  }

  public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// The client. One instance holds one HTTP/2 connection (re-established when it drops) and may
/// be shared by many tasks; call `close()` when done.
public final class KServeClient: Sendable {
  public let endpoint: KServeEndpoint
  /// The deadline of calls that do not pass their own; nil: none.
  public let defaultTimeout: Duration?
  private let grpc: GRPCClient<HTTP2ClientTransport.Posix>
  private let service: Inference_GRPCInferenceService.Client<HTTP2ClientTransport.Posix>
  private let connections: Task<Void, Never>
  private let maxMessageBytes: Int
  private let maxResponseBytes: Int
  /// Whether ModelInfer requests go on open `ModelStreamInfer` streams (Triton's call: no call
  /// set-up per request) where the server has Triton's form of it, and unary calls elsewhere.
  public let streaming: Bool
  /// Streams open and waiting for a request, and whether the server has Triton's stream.
  private let streams = Mutex<(idle: [InferStream], form: StreamForm, closing: Bool)>(([], .unknown, false))
  /// MLServer has a `ModelStreamInfer` of the same name whose answers are `ModelInferResponse`s,
  /// which would parse as Triton's `ModelStreamInferResponse` with the model's name as its error
  /// (field 1 is a string in both), so the client streams only to the servers whose metadata
  /// names one with Triton's form: Veil's accelerator and Triton.
  enum StreamForm: Sendable { case unknown, triton, none }
  static let serversWithTritonStreams: Set<String> = [AcceleratorService.serverName, "triton"]
  /// Idle streams kept for later requests; more are ended when their request is answered.
  static let maxIdleStreams = 32
  typealias InferStream = ExchangeStream<Inference_ModelInferRequest, Inference_ModelStreamInferResponse>

  /// Connects lazily to `endpoint`: the first call opens the connection. Requests up to
  /// `maxMessageBytes` are sent (feature maps of large cuts exceed gRPC's 4 MiB default), and
  /// answers up to `maxResponseBytes` (default: the same) are read; a larger answer is refused by
  /// the transport before it is decoded.
  public init(
    endpoint: KServeEndpoint, defaultTimeout: Duration? = nil, maxMessageBytes: Int = 256 << 20, maxResponseBytes: Int? = nil,
    streaming: Bool = true
  ) throws {
    self.endpoint = endpoint
    self.streaming = streaming
    self.defaultTimeout = defaultTimeout
    self.maxMessageBytes = maxMessageBytes
    self.maxResponseBytes = maxResponseBytes ?? maxMessageBytes
    let target: any ResolvableTarget
    if endpoint.host.split(separator: ".").count == 4, endpoint.host.allSatisfy({ $0.isNumber || $0 == "." }) {
      target = ResolvableTargets.IPv4(addresses: [SocketAddress.IPv4(host: endpoint.host, port: endpoint.port)])
    } else if endpoint.host.contains(":") {
      target = ResolvableTargets.IPv6(addresses: [SocketAddress.IPv6(host: endpoint.host, port: endpoint.port)])
    } else {
      target = ResolvableTargets.DNS(host: endpoint.host, port: endpoint.port)
    }
    let transport: HTTP2ClientTransport.Posix
    do {
      transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: .plaintext, config: .veilClient)
    } catch {
      throw KServeError(kind: .invalidEndpoint, call: "connect", endpoint: endpoint.description, message: "\(error)")
    }
    let grpc = GRPCClient(transport: transport)
    self.grpc = grpc
    self.service = Inference_GRPCInferenceService.Client(wrapping: grpc)
    self.connections = Task {
      do { try await grpc.runConnections() } catch {}
    }
  }

  /// Parses "HOST:PORT" and connects.
  public convenience init(endpoint: String, defaultTimeout: Duration? = nil) throws {
    try self.init(endpoint: KServeEndpoint(parsing: endpoint), defaultTimeout: defaultTimeout)
  }

  /// Lets calls in flight finish, then closes the connection.
  public func close() async {
    let idle = streams.withLock { s -> [InferStream] in
      s.closing = true
      defer { s.idle = [] }
      return s.idle
    }
    for s in idle { s.finish() }
    grpc.beginGracefulShutdown()
    await connections.value
  }

  private func options(_ timeout: Duration?) -> CallOptions {
    var o = CallOptions.defaults
    o.timeout = timeout ?? defaultTimeout
    o.maxRequestMessageBytes = maxMessageBytes
    o.maxResponseMessageBytes = maxResponseBytes
    return o
  }

  private func call<R: Sendable>(_ name: String, _ body: () async throws -> R) async throws -> R {
    do {
      return try await body()
    } catch {
      throw KServeError.from(error, call: name, endpoint: endpoint.description)
    }
  }

  // MARK: Health and metadata

  /// ServerLive: whether the server can receive requests.
  public func serverLive(timeout: Duration? = nil) async throws -> Bool {
    try await call("ServerLive") {
      try await service.serverLive(Inference_ServerLiveRequest(), options: options(timeout)).live
    }
  }

  /// ServerReady: whether every model the server serves can take requests.
  public func serverReady(timeout: Duration? = nil) async throws -> Bool {
    try await call("ServerReady") {
      try await service.serverReady(Inference_ServerReadyRequest(), options: options(timeout)).ready
    }
  }

  /// ModelReady: whether `name` (at `version`, or its default version when "") can take requests.
  public func modelReady(name: String, version: String = "", timeout: Duration? = nil) async throws -> Bool {
    var r = Inference_ModelReadyRequest()
    r.name = name
    r.version = version
    return try await call("ModelReady") { try await service.modelReady(r, options: options(timeout)).ready }
  }

  /// ServerMetadata: the server's name, version and protocol extensions.
  public func serverMetadata(timeout: Duration? = nil) async throws -> KServeServerMetadata {
    let m = try await call("ServerMetadata") {
      try await service.serverMetadata(Inference_ServerMetadataRequest(), options: options(timeout))
    }
    return KServeServerMetadata(name: m.name, version: m.version, extensions: m.extensions)
  }

  /// ModelMetadata: a model's versions, platform and declared tensors (-1: variable dimension).
  public func modelMetadata(name: String, version: String = "", timeout: Duration? = nil) async throws -> KServeModelMetadata {
    var r = Inference_ModelMetadataRequest()
    r.name = name
    r.version = version
    let m = try await call("ModelMetadata") { try await service.modelMetadata(r, options: options(timeout)) }
    let convert = { (t: Inference_ModelMetadataResponse.TensorMetadata) in
      KServeTensorMetadata(name: t.name, datatype: t.datatype, shape: t.shape.map { Int($0) })
    }
    return KServeModelMetadata(
      name: m.name, versions: m.versions, platform: m.platform, inputs: m.inputs.map(convert), outputs: m.outputs.map(convert))
  }

  // MARK: Inference

  /// ModelInfer with FP32 inputs. `outputs` names the outputs wanted (empty: all). Inputs go as
  /// `raw_input_contents` unless `encoding` is `.typed`; outputs are read from whichever the
  /// server sends.
  ///
  /// `expecting`: the outputs the caller trusts the model to have (a tail's declared outputs);
  /// an answer with another count, datatype or shape is refused before any of it is decoded.
  public func infer(
    model: String, version: String = "", inputs: [KServeTensor], outputs: [String] = [], id: String = "",
    encoding: KServeEncoding = .raw, timeout: Duration? = nil, expecting: [KServeTensorMetadata]? = nil
  ) async throws -> KServeInferResult {
    let t0 = DispatchTime.now()
    let request = Self.makeRequest(model: model, version: version, inputs: inputs, outputs: outputs, id: id, encoding: encoding)
    let t1 = DispatchTime.now()
    let response = try await modelInfer(request, timeout: timeout)
    let t2 = DispatchTime.now()
    do {
      var result = try Self.decode(response, expecting: expecting)
      let callMs = ms(t1, t2)
      result.timing = CallTiming(
        encodeMs: ms(t0, t1), callMs: callMs, decodeMs: ms(t2, DispatchTime.now()),
        server: KServeServerTiming(parameters: response.parameters, withinMs: callMs))
      return result
    } catch let e as KServeError {
      throw KServeError(kind: e.kind, call: "ModelInfer", endpoint: endpoint.description, status: e.status, message: e.message)
    }
  }

  /// ModelInfer with a request built by the caller (any datatype, parameters): on an open
  /// `ModelStreamInfer` stream when `streaming` and the server has Triton's (an idle stream, or
  /// a new one), else as a unary call.
  /// A request that a stream ended without reading, or that a server without the stream refused,
  /// goes again as a unary call.
  public func modelInfer(_ request: Inference_ModelInferRequest, timeout: Duration? = nil) async throws -> Inference_ModelInferResponse {
    if streaming, streams.withLock({ $0.form }) == .unknown {
      // Asked once, within 5 s at most (a hung server must not make the request wait twice its
      // deadline); a server that does not answer now is asked again at the next request.
      let probe = min(timeout ?? defaultTimeout ?? .seconds(5), .seconds(5))
      if let name = try? await serverMetadata(timeout: probe).name {
        streams.withLock { $0.form = Self.serversWithTritonStreams.contains(name) ? .triton : .none }
      }
    }
    return try await call("ModelInfer") {
      let unary = { try await self.service.modelInfer(request, options: self.options(timeout)) }
      guard let stream = checkOut() else { return try await unary() }
      let answer: Inference_ModelStreamInferResponse
      do {
        answer = try await stream.exchange(request, timeout: timeout ?? defaultTimeout)
      } catch InferStream.Ended.unanswered {
        return try await unary()
      } catch let e as RPCError where e.code == .unimplemented {
        let idle = streams.withLock { s -> [InferStream] in
          s.form = .none
          defer { s.idle = [] }
          return s.idle
        }
        for s in idle { s.finish() }
        return try await unary()
      }
      checkIn(stream)
      // Triton answers a request's error on the stream and keeps it open.
      guard answer.errorMessage.isEmpty else { throw RPCError(code: .unknown, message: answer.errorMessage) }
      return answer.inferResponse
    }
  }

  /// An idle stream, or a new one; nil when requests go as unary calls.
  private func checkOut() -> InferStream? {
    let reuse = streams.withLock { s -> (InferStream?, Bool) in
      guard streaming, s.form == .triton, !s.closing else { return (nil, false) }
      while let o = s.idle.popLast() { if o.isOpen { return (o, true) } }
      return (nil, true)
    }
    guard reuse.1 else { return nil }
    if let open = reuse.0 { return open }
    let service = self.service
    return InferStream.open(options: options(nil)) {
      try await service.modelStreamInfer(request: $0, options: $1, onResponse: $2)
    }
  }

  /// Keeps an answered stream for the next request (or ends it, when enough are kept).
  private func checkIn(_ stream: InferStream) {
    let keep = streams.withLock { s -> Bool in
      guard stream.isOpen, !s.closing, s.idle.count < Self.maxIdleStreams else { return false }
      s.idle.append(stream)
      return true
    }
    if !keep { stream.finish() }
  }

  /// The protocol request for FP32 inputs (or UINT8 / UINT16 where a `KServeTensor` says so).
  public static func makeRequest(
    model: String, version: String = "", inputs: [KServeTensor], outputs: [String] = [], id: String = "",
    encoding: KServeEncoding = .raw
  ) -> Inference_ModelInferRequest {
    var r = Inference_ModelInferRequest()
    r.modelName = model
    r.modelVersion = version
    r.id = id
    for input in inputs {
      var t = Inference_ModelInferRequest.InferInputTensor()
      t.name = input.name
      t.datatype = input.datatype
      t.shape = KServeCodec.wireShape(input.tensor.shape)
      switch (encoding, WireIntegerType(rawValue: input.datatype)) {
      case (.raw, _): r.rawInputContents.append(KServeCodec.rawBytes(input.tensor, datatype: input.datatype))
      case (.typed, let type?): t.contents.uintContents = KServeCodec.integers(input.tensor, type)
      case (.typed, nil): t.contents.fp32Contents = input.tensor.scalars
      }
      r.inputs.append(t)
    }
    r.outputs = outputs.map { name in
      var o = Inference_ModelInferRequest.InferRequestedOutputTensor()
      o.name = name
      return o
    }
    return r
  }

  /// The FP32 outputs of a response, from `raw_output_contents` or typed `fp32_contents`. Every
  /// shape is checked (non-negative, element count bounded, no overflow) before its tensor is
  /// built; with `expecting`, the answer must have exactly those outputs' datatypes and shapes
  /// (-1 in an expected shape: any size), in that order.
  public static func decode(_ response: Inference_ModelInferResponse, expecting: [KServeTensorMetadata]? = nil) throws
    -> KServeInferResult
  {
    let bad = { (m: String) in KServeError(kind: .malformedResponse, call: "ModelInfer", endpoint: "", message: m) }
    let raw = response.rawOutputContents
    guard raw.isEmpty || raw.count == response.outputs.count else {
      throw bad("\(response.outputs.count) outputs but \(raw.count) raw_output_contents entries")
    }
    if let expecting, response.outputs.count != expecting.count {
      throw bad("\(response.outputs.count) outputs; the model declares \(expecting.count)")
    }
    var outs: [KServeTensor] = []
    for (i, o) in response.outputs.enumerated() {
      guard o.datatype == KServeCodec.fp32 else {
        throw bad("output '\(o.name)' has datatype \(o.datatype); this client reads FP32 only")
      }
      guard o.shape.count <= 8, o.shape.allSatisfy({ $0 >= 0 && $0 <= Int64(Int32.max) }),
        KServeCodec.elementCount(o.shape.map { Int($0) }) != nil
      else {
        throw bad("output '\(o.name)' has shape \(o.shape.prefix(8)): not a shape of at most 8 dimensions and \(KServeCodec.maxElements) elements")
      }
      let shape = o.shape.map { Int($0) }
      if let declared = expecting?[i] {
        let fits =
          declared.datatype == o.datatype && declared.shape.count == shape.count
          && zip(declared.shape, shape).allSatisfy { d, s in d == -1 || d == s }
        guard fits else {
          throw bad("output '\(o.name)' is \(o.datatype) \(shape); the model declares \(declared.datatype) \(declared.shape)")
        }
      }
      let tensor: Tensor?
      if raw.isEmpty {
        tensor = KServeCodec.tensor(shape: shape, values: o.contents.fp32Contents)
      } else {
        tensor = KServeCodec.tensor(shape: shape, rawBytes: raw[i])
      }
      guard let tensor else {
        let found = raw.isEmpty ? "\(o.contents.fp32Contents.count) fp32_contents values" : "\(raw[i].count) raw bytes"
        throw bad("output '\(o.name)' of shape \(shape) came with \(found)")
      }
      outs.append(KServeTensor(name: o.name, tensor: tensor))
    }
    return KServeInferResult(
      modelName: response.modelName, modelVersion: response.modelVersion, id: response.id, outputs: outs, timing: nil)
  }
}
