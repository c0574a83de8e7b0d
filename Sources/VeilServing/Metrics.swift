// The accelerator service's metrics, recorded through swift-metrics into a Prometheus registry
// of its own (not the process-global bootstrap, so that several servers and tests coexist), and
// the tiny HTTP/1 endpoint that serves the registry's text format at GET /metrics.
import CoreMetrics
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization
import VeilTensor

/// The latency histogram buckets of both tiers: 0.5 ms to 5 s.
let latencyBuckets: [Duration] = [
  .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20),
  .milliseconds(50), .milliseconds(100), .milliseconds(200), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5),
]

/// The buckets of the per-stage histograms: 10 µs to 5 s (opening a record takes microseconds).
let stageBuckets: [Duration] = [
  .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(250),
  .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
  .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
]

/// The enclave service's metrics in a Prometheus registry of its own: requests, handshakes,
/// errors by kind (one counter per `EnclaveErrorKind`, each under its own name), request, head
/// and tail latency, every stage of a request (`veil_enclave_stage_duration_seconds{stage=…}`:
/// open, decode, head, defence, tail_encode, tail_call, tail_decode, answer, seal; and, within
/// tail_call, tail_queue and tail_compute where the accelerator reports them), open sessions. The
/// enclave server serves them at /metrics.
public final class EnclaveMetrics: Sendable {
  public let registry: PrometheusCollectorRegistry
  private let requests: CoreMetrics.Counter
  private let handshakes: CoreMetrics.Counter
  private let errors: [EnclaveErrorKind: CoreMetrics.Counter]
  private let latency: CoreMetrics.Timer
  private let headLatency: CoreMetrics.Timer
  private let tailLatency: CoreMetrics.Timer
  private let openSessions: CoreMetrics.Gauge
  private let stageTimers: [String: CoreMetrics.Timer]
  private let streamsOpened: CoreMetrics.Counter
  private let streamsOpenGauge: CoreMetrics.Gauge
  private let streamCounts = Mutex<(opened: Int, open: Int)>((0, 0))

  /// The stages an answer reports, in the order a request goes through them; the answer's
  /// seal, which happens after they are written, is counted on its own as `seal`. tail_queue and
  /// tail_compute are parts of tail_call, counted only for answers whose accelerator reported
  /// them (nil otherwise).
  public static let answerStages: [(name: String, ms: @Sendable (EnclaveStagesMessage) -> Double?)] = [
    ("open", { $0.openMs }), ("decode", { $0.decodeMs }), ("head", { $0.headMs }), ("defence", { $0.defenceMs }),
    ("tail_encode", { $0.tailEncodeMs }),
    ("tail_call", { $0.tailCallMs }), ("tail_queue", { $0.hasTailQueueMs ? $0.tailQueueMs : nil }),
    ("tail_compute", { $0.hasTailComputeMs ? $0.tailComputeMs : nil }),
    ("tail_decode", { $0.tailDecodeMs }), ("answer", { $0.answerMs }),
  ]
  public static let stageNames = answerStages.map(\.name) + ["seal"]

  public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
    self.registry = registry
    var f = PrometheusMetricsFactory(registry: registry)
    f.defaultDurationHistogramBuckets = latencyBuckets
    requests = CoreMetrics.Counter(label: "veil_enclave_requests_total", factory: f)
    handshakes = CoreMetrics.Counter(label: "veil_enclave_handshakes_total", factory: f)
    errors = Dictionary(
      uniqueKeysWithValues: EnclaveErrorKind.allCases.map {
        ($0, CoreMetrics.Counter(label: "veil_enclave_errors_total", dimensions: [("kind", $0.rawValue)], factory: f))
      })
    latency = CoreMetrics.Timer(label: "veil_enclave_request_duration_seconds", factory: f)
    headLatency = CoreMetrics.Timer(label: "veil_enclave_head_duration_seconds", factory: f)
    tailLatency = CoreMetrics.Timer(label: "veil_enclave_tail_duration_seconds", factory: f)
    openSessions = CoreMetrics.Gauge(label: "veil_enclave_sessions_open", factory: f)
    streamsOpened = CoreMetrics.Counter(label: "veil_enclave_streams_total", factory: f)
    streamsOpenGauge = CoreMetrics.Gauge(label: "veil_enclave_streams_open", factory: f)
    var fine = PrometheusMetricsFactory(registry: registry)
    fine.defaultDurationHistogramBuckets = stageBuckets
    stageTimers = Dictionary(
      uniqueKeysWithValues: Self.stageNames.map {
        ($0, CoreMetrics.Timer(label: "veil_enclave_stage_duration_seconds", dimensions: [("stage", $0)], factory: fine))
      })
  }

  /// One failure, counted under its kind.
  public func error(_ kind: EnclaveErrorKind) { errors[kind]?.increment() }

  func request(nanoseconds: UInt64) {
    requests.increment()
    latency.recordNanoseconds(Int64(clamping: nanoseconds))
  }

  func handshake() { handshakes.increment() }

  func stages(_ r: EnclaveResultMessage) {
    let s = r.stages
    headLatency.recordNanoseconds(Int64(r.headMs * 1e6))
    tailLatency.recordNanoseconds(Int64(r.tailMs * 1e6))
    for (name, ms) in Self.answerStages {
      if let v = ms(s) { stageTimers[name]?.recordNanoseconds(Int64(v * 1e6)) }
    }
  }

  func seal(ms: Double) { stageTimers["seal"]?.recordNanoseconds(Int64(ms * 1e6)) }

  func sessions(open: Int) { openSessions.record(open) }

  /// `InferStream` calls opened since the start, and open now.
  public var streams: (opened: Int, open: Int) { streamCounts.withLock { $0 } }

  func stream(opened: Bool) {
    let open = streamCounts.withLock { c -> Int in
      if opened { c.opened += 1 }
      c.open += opened ? 1 : -1
      return c.open
    }
    if opened { streamsOpened.increment() }
    streamsOpenGauge.record(open)
  }

  /// The Prometheus text exposition of every metric.
  public func render() -> String { registry.emitToString() }
}

/// Requests, errors by status, latency histograms, batch sizes and queue depth.
public final class AcceleratorMetrics: Sendable {
  public let registry: PrometheusCollectorRegistry
  private let factory: PrometheusMetricsFactory

  public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), maxBatchSize: Int = 64) {
    self.registry = registry
    var f = PrometheusMetricsFactory(registry: registry)
    f.defaultDurationHistogramBuckets = latencyBuckets
    var sizes: [Double] = []
    var s = 1
    while s < maxBatchSize {
      sizes.append(Double(s))
      s *= 2
    }
    sizes.append(Double(max(1, maxBatchSize)))
    f.valueHistogramBuckets["veil_accelerator_batch_rows"] = sizes
    factory = f
  }

  /// One finished RPC: its method, model ("" for server calls), gRPC status name, duration.
  func request(method: String, model: String, status: String, seconds: Double) {
    CoreMetrics.Counter(label: "veil_accelerator_requests_total", dimensions: [("method", method), ("model", model)], factory: factory)
      .increment()
    if status != "OK" {
      CoreMetrics.Counter(label: "veil_accelerator_errors_total", dimensions: [("method", method), ("code", status)], factory: factory)
        .increment()
    }
    CoreMetrics.Timer(label: "veil_accelerator_request_duration_seconds", dimensions: [("method", method)], factory: factory)
      .recordNanoseconds(Int64(seconds * 1e9))
  }

  /// One batch run with `rows` rows.
  func batch(model: String, rows: Int) {
    CoreMetrics.Recorder(label: "veil_accelerator_batch_rows", dimensions: [("model", model)], aggregate: true, factory: factory)
      .record(rows)
  }

  func queueDepth(model: String, _ depth: Int) {
    CoreMetrics.Gauge(label: "veil_accelerator_queue_depth", dimensions: [("model", model)], factory: factory).record(depth)
  }

  func rejected(model: String) {
    CoreMetrics.Counter(label: "veil_accelerator_queue_rejected_total", dimensions: [("model", model)], factory: factory).increment()
  }

  func expired(model: String) {
    CoreMetrics.Counter(label: "veil_accelerator_deadline_expired_total", dimensions: [("model", model)], factory: factory).increment()
  }

  /// The Prometheus text exposition of every metric.
  public func render() -> String { registry.emitToString() }
}

/// Serves `GET /metrics` (Prometheus text format) over HTTP/1.1; any other path is 404.
///
/// Anyone who reaches the port can connect (a cluster's scraper binds it beyond loopback), and
/// its connections hold file descriptors of the same process as the gRPC server. So it takes
/// connections under its own ceilings (`limits`: all peers together and per address), closes one
/// whose request line has not begun within `setupTimeout`, and one that sends nothing for
/// `maxIdleTime` (a kept-alive scraper sends a request each scrape). Request heads are bounded by
/// SwiftNIO's HTTP decoder; bodies are read and dropped, never kept.
public final class MetricsHTTPServer: Sendable {
  /// What a scraper needs, with room to spare: a few connections, a request line within 10 s,
  /// a scrape at least every minute.
  public static let defaultLimits = ConnectionLimits(
    maxConnections: 32, maxConnectionsPerPeer: 8, maxIdleTime: .seconds(60), setupTimeout: .seconds(10), setupBytes: 16)

  private let channel: any Channel
  /// The port it listens on (useful when asked for port 0).
  public let port: Int
  /// Its open connections, and those refused at a ceiling.
  public let connections: ConnectionCounter

  /// Binds `host:port` and starts serving `render()`'s text.
  public init(
    host: String = "127.0.0.1", port: Int, limits: ConnectionLimits = MetricsHTTPServer.defaultLimits,
    render: @escaping @Sendable () -> String
  ) async throws {
    let counter = ConnectionCounter(limits: limits)
    let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.backlog, value: 64)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          let pipeline = channel.pipeline.syncOperations
          try pipeline.addHandler(ConnectionAdmission(counter: counter))
          try pipeline.addHandler(IdleStateHandler(readTimeout: TimeAmount(limits.maxIdleTime)))
          try pipeline.addHandler(CloseWhenIdle())
          try pipeline.configureHTTPServerPipeline()
          try pipeline.addHandler(MetricsHandler(render: render))
        }
      }
    channel = try await bootstrap.bind(host: host, port: port).get()
    self.port = channel.localAddress?.port ?? port
    connections = counter
  }

  /// Stops listening.
  public func close() async {
    try? await channel.close()
  }

  /// The endpoint a server's `run()` opens where its configuration names a port (nil without
  /// one): the port it got, or the failure as `failure` words it (given the port asked for and
  /// the error), is published to `address`.
  static func start(
    host: String, port: Int?, publishingTo address: Announcement<Int>,
    failure: (_ port: Int, _ error: any Error) -> any Error = { $1 },
    render: @escaping @Sendable () -> String
  ) async throws -> MetricsHTTPServer? {
    guard let port else { return nil }
    do {
      let server = try await MetricsHTTPServer(host: host, port: port, render: render)
      address.publish(.success(server.port))
      return server
    } catch {
      let wrapped = failure(port, error)
      address.publish(.failure(wrapped))
      throw wrapped
    }
  }
}

/// Closes its connection when the `IdleStateHandler` before it says nothing was read in time.
private final class CloseWhenIdle: ChannelInboundHandler, Sendable {
  typealias InboundIn = ByteBuffer

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if event is IdleStateHandler.IdleStateEvent {
      context.close(promise: nil)
    } else {
      context.fireUserInboundEventTriggered(event)
    }
  }
}

private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart
  let render: @Sendable () -> String
  private var head: HTTPRequestHead?

  init(render: @escaping @Sendable () -> String) { self.render = render }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let h): head = h
    case .body: break
    case .end:
      guard let h = head else { return }
      head = nil
      let ok = h.method == .GET && (h.uri == "/metrics" || h.uri.hasPrefix("/metrics?"))
      let text = ok ? render() : "not found: this endpoint serves GET /metrics only\n"
      var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
      buffer.writeString(text)
      var headers = HTTPHeaders()
      headers.add(name: "Content-Type", value: ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
      headers.add(name: "Content-Length", value: "\(buffer.readableBytes)")
      let keepAlive = h.isKeepAlive
      if !keepAlive { headers.add(name: "Connection", value: "close") }
      context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: ok ? .ok : .notFound, headers: headers))), promise: nil)
      context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
      let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
      if !keepAlive {
        let channel = context.channel
        done.whenComplete { _ in channel.close(promise: nil) }
      }
    }
  }
}

