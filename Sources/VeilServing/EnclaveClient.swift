import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import SwiftProtobuf
import Synchronization
import VeilData
import VeilTEE
import VeilTensor

/// One answer of the enclave.
public struct EnclaveAnswer: Sendable {
  public struct Class: Sendable, Codable, Equatable {
    public var index: Int
    public var score: Float
    public var label: String?
  }
  public var top: [Class]
  public var logits: Tensor?
  public var headMs: Double
  public var tailMs: Double
  public var enclaveMs: Double
  public var accelerator: String
  /// The enclave's stages of this request (absent from enclaves that do not report them).
  public var stages: EnclaveStagesMessage?
  /// The client's side: sealing the request, the call (sent until answered), opening the answer.
  public var clientSealMs: Double = 0
  public var roundTripMs: Double = 0
  public var clientOpenMs: Double = 0
}

/// HOST:PORT of the enclave service: the same form as the accelerator tier's endpoints.
public typealias Endpoint = KServeEndpoint

/// The client side of the enclave service over one gRPC connection: `session()` completes the
/// attested handshake (the evidence is checked against the policy before anything is sent).
public struct EnclaveClient: Sendable {
  public let grpc: GRPCClient<HTTP2ClientTransport.Posix>
  public let verifier: AttestationVerifier
  public let endpoint: Endpoint
  /// Deadline of every call.
  public var timeout: Duration = .seconds(60)
  /// The largest answer accepted.
  public var maxMessageBytes = 16 << 20
  /// Whether a session sends its requests on one open `InferStream` call (the default: no call
  /// set-up per request) or as one `Infer` call each. A session falls back to `Infer` by itself
  /// when the enclave does not implement the stream.
  public var streaming = true

  public init(grpc: GRPCClient<HTTP2ClientTransport.Posix>, endpoint: Endpoint, verifier: AttestationVerifier) {
    self.grpc = grpc
    self.endpoint = endpoint
    self.verifier = verifier
  }

  /// Connects, runs `body`, and closes the connection.
  public static func with<R: Sendable>(
    _ endpoint: Endpoint, verifier: AttestationVerifier, maxMessageBytes: Int = 16 << 20,
    _ body: (EnclaveClient) async throws -> R
  ) async throws -> R {
    let transport = try HTTP2ClientTransport.Posix(
      target: .dns(host: endpoint.host, port: endpoint.port), transportSecurity: .plaintext)
    return try await withGRPCClient(transport: transport) { grpc in
      var client = EnclaveClient(grpc: grpc, endpoint: endpoint, verifier: verifier)
      client.maxMessageBytes = maxMessageBytes
      return try await body(client)
    }
  }

  var stub: Veil_Enclave_V1_EnclaveService.Client<HTTP2ClientTransport.Posix> { .init(wrapping: grpc) }
  var options: CallOptions {
    var o = CallOptions.defaults
    o.timeout = timeout
    o.maxResponseMessageBytes = maxMessageBytes
    return o
  }

  /// An `InferStream` call for one session's requests.
  func openStream() -> EnclaveStream {
    let stub = self.stub
    return EnclaveStream.open(options: options) { try await stub.inferStream(request: $0, options: $1, onResponse: $2) }
  }

  /// The attested handshake. Throws, having sent nothing but the ClientHello, when the
  /// enclave's evidence does not satisfy the policy.
  public func session() async throws -> EnclaveSession {
    let handshake = ClientHandshake(verifier: verifier)
    var request = Veil_Enclave_V1_HandshakeRequest()
    request.clientHello = Data(try handshake.start())
    let response = try await stub.handshake(request, options: options)
    let (secure, verdict) = try handshake.finish(serverHello: Array(response.serverHello))
    let channel = SealedChannel(secure)
    guard case .data(let bytes) = try channel.open(Array(response.sealedDeployment)) else {
      throw EnclaveError.protocolViolation("the enclave closed the session in its first record")
    }
    let info = try Veil_Enclave_V1_DeploymentInfo(serializedBytes: bytes)
    let plan = try DeploymentPlan.decode(info.planJson, file: "the plan sent by \(endpoint)")
    return EnclaveSession(client: self, id: response.sessionID, channel: channel, plan: plan, verdict: verdict)
  }
}

typealias EnclaveStream = ExchangeStream<Veil_Enclave_V1_InferRequest, Veil_Enclave_V1_InferResponse>

/// An attested session: one request at a time, records in order.
public final class EnclaveSession: Sendable {
  public let client: EnclaveClient
  public let id: String
  /// The deployment the enclave serves, as it described it inside the channel.
  public let plan: DeploymentPlan
  /// The verdict on the enclave's evidence (simulated evidence says so here).
  public let verdict: Verdict
  private let channel: SealedChannel
  private let busy = Mutex(false)
  /// The open `InferStream` call, once a request has opened it; `unaryOnly` once the enclave
  /// said it has none.
  private let stream = Mutex<(open: EnclaveStream?, unaryOnly: Bool)>((nil, false))

  init(client: EnclaveClient, id: String, channel: SealedChannel, plan: DeploymentPlan, verdict: Verdict) {
    self.client = client
    self.id = id
    self.channel = channel
    self.plan = plan
    self.verdict = verdict
  }

  /// Prepares a photo file the way the plan says: its pixels resized and cropped (client
  /// preprocessing; the enclave converts and normalises them) or the file's bytes (enclave
  /// preprocessing).
  public func request(photo url: URL, top: Int, logits: Bool = false) throws -> EnclaveRequestMessage {
    switch plan.preprocessing.appliedIn {
    case .enclave:
      do { return Self.request(.image(try Data(contentsOf: url)), top: top, logits: logits) } catch {
        throw EnclaveError.io(path: url.path, detail: "cannot read: \(error.localizedDescription)")
      }
    case .client:
      let photo = try ImageCodec.readUpright(url)
      return Self.request(pixels: try plan.imagePreprocessing.geometry(photo), top: top, logits: logits)
    }
  }

  /// A request carrying a photo resized and cropped as the plan says (`Preprocessing.geometry`;
  /// plans that preprocess on the client): 3 bytes a pixel on the wire where the tensor takes 12.
  public static func request(pixels: ByteImage, top: Int, logits: Bool = false) -> EnclaveRequestMessage {
    request(.pixels(PixelsMessage(pixels)), top: top, logits: logits)
  }

  /// A request carrying an input tensor (plans that preprocess on the client).
  public static func request(tensor: Tensor, top: Int, logits: Bool = false) -> EnclaveRequestMessage {
    request(.tensor(TensorMessage(tensor)), top: top, logits: logits)
  }

  static func request(_ input: EnclaveRequestMessage.OneOf_Input, top: Int, logits: Bool) -> EnclaveRequestMessage {
    var r = EnclaveRequestMessage()
    r.input = input
    r.topK = UInt32(max(0, top))
    r.wantLogits = logits
    return r
  }

  /// Seals `request`, sends it, opens the answer. An error answer throws `EnclaveError.remote`.
  public func infer(_ request: EnclaveRequestMessage) async throws -> EnclaveAnswer {
    guard busy.withLock({ (b: inout Bool) -> Bool in defer { b = true }; return !b }) else {
      throw EnclaveError.invalidArgument("this session already has a request in flight; use one session per concurrent request")
    }
    defer { busy.withLock { $0 = false } }
    var message = Veil_Enclave_V1_InferRequest()
    message.sessionID = id
    let t0 = DispatchTime.now()
    message.record = Data(try channel.seal(request))
    let t1 = DispatchTime.now()
    let response = try await send(message)
    let t2 = DispatchTime.now()
    guard case .data(let bytes) = try channel.open(Array(response.record)) else {
      throw EnclaveError.protocolViolation("the enclave closed the session instead of answering")
    }
    let answer = try EnclaveResponseMessage(serializedBytes: bytes)
    let t3 = DispatchTime.now()
    switch answer.outcome {
    case .error(let e): throw EnclaveError.remote(kind: EnclaveErrorKind(wire: e.kind), message: e.message)
    case nil: throw EnclaveError.protocolViolation("the enclave's answer carries neither a result nor an error")
    case .result(let r):
      return EnclaveAnswer(
        top: r.top.map { .init(index: Int($0.index), score: $0.score, label: $0.label.isEmpty ? nil : $0.label) },
        logits: r.hasLogits ? try r.logits.tensor() : nil, headMs: r.headMs, tailMs: r.tailMs, enclaveMs: r.totalMs,
        accelerator: r.accelerator, stages: r.hasStages ? r.stages : nil, clientSealMs: ms(t0, t1),
        roundTripMs: ms(t1, t2), clientOpenMs: ms(t2, t3))
    }
  }

  /// Whether this session's requests go on a stream now (false once the enclave said it has
  /// none, or when the client does not stream).
  public var streams: Bool { client.streaming && !stream.withLock { $0.unaryOnly } }

  /// One sealed request to the enclave and its sealed answer: on the session's stream (opened
  /// at the first request, opened again after one ends) or by `Infer`. A request that a stream
  /// ended without opening, or that an enclave without streams refused, goes again by `Infer`:
  /// the enclave has not opened it, so the session's records are still in step.
  func send(_ message: Veil_Enclave_V1_InferRequest) async throws -> Veil_Enclave_V1_InferResponse {
    let client = self.client
    let unary = { try await client.stub.infer(message, options: client.options) }
    let open = stream.withLock { s -> EnclaveStream? in
      guard client.streaming, !s.unaryOnly else { return nil }
      if let o = s.open, o.isOpen { return o }
      s.open = client.openStream()
      return s.open
    }
    guard let open else { return try await unary() }
    do {
      return try await open.exchange(message, timeout: client.timeout)
    } catch EnclaveStream.Ended.unanswered {
      return try await unary()
    } catch let e as RPCError where e.code == .unimplemented {
      stream.withLock { $0 = (nil, true) }
      return try await unary()
    }
  }

  /// Ends the session's stream, if one is open (the enclave ends its side when the requests
  /// do); the session stays open.
  public func endStream() {
    stream.withLock { s in
      s.open?.finish()
      s.open = nil
    }
  }

  deinit { stream.withLock { $0.open?.finish() } }

  /// Ends the session with an authenticated close record.
  public func close() async throws {
    endStream()
    var message = Veil_Enclave_V1_CloseRequest()
    message.sessionID = id
    message.record = Data(try channel.close())
    _ = try await client.stub.close(message, options: client.options)
  }
}
