// The KServe v2 values shared by Veil's accelerator service and its client: named FP32 tensors,
// tensor and model metadata, the typed error, and the one codec between Veil's `Tensor` and the
// protocol's `raw_*_contents` bytes and typed `fp32_contents`.
import Foundation
import GRPCCore
import VeilGraph
import VeilTensor

/// One named FP32 tensor of a KServe v2 request or response.
public struct KServeTensor: Sendable {
  public var name: String
  public var tensor: Tensor
  /// How the values travel: FP32, or UINT8 / UINT16 for integer values (a quantised map's
  /// codes), which must then be whole numbers in the type's range.
  public var datatype: String

  public init(name: String, tensor: Tensor, datatype: String = KServeCodec.fp32) {
    self.name = name
    self.tensor = tensor
    self.datatype = datatype
  }
}

/// How a client sends input tensors: `raw_input_contents` (little-endian bytes, what Triton's
/// clients send) or the typed `fp32_contents` field.
public enum KServeEncoding: String, Sendable, CaseIterable {
  case raw
  case typed
}

/// A tensor a model declares: its name, datatype ("FP32") and shape, where -1 marks a
/// dimension of variable size (the batch of a model that batches).
public struct KServeTensorMetadata: Sendable, Equatable, Codable {
  public var name: String
  public var datatype: String
  public var shape: [Int]

  public init(name: String, datatype: String, shape: [Int]) {
    self.name = name
    self.datatype = datatype
    self.shape = shape
  }
}

/// The answer of ServerMetadata.
public struct KServeServerMetadata: Sendable, Equatable, Codable {
  public var name: String
  public var version: String
  public var extensions: [String]
}

/// The answer of ModelMetadata.
public struct KServeModelMetadata: Sendable, Equatable, Codable {
  public var name: String
  public var versions: [String]
  public var platform: String
  public var inputs: [KServeTensorMetadata]
  public var outputs: [KServeTensorMetadata]
}

/// The answer of ModelInfer: the outputs in the server's order.
public struct KServeInferResult: Sendable {
  public var modelName: String
  public var modelVersion: String
  public var id: String
  public var outputs: [KServeTensor]
  /// Where the call's time went (`KServeClient.infer` fills it in).
  public var timing: CallTiming?

  /// The output called `name`, or nil.
  public func output(named name: String) -> Tensor? {
    outputs.first { $0.name == name }?.tensor
  }
}

/// A failed KServe v2 call, as the client sees it: which call, against which endpoint, the gRPC
/// status and the server's message, and what to do about it.
public struct KServeError: Error, CustomStringConvertible, Sendable {
  public enum Kind: String, Sendable, CaseIterable {
    /// The endpoint string could not be parsed.
    case invalidEndpoint
    /// No server answered (refused, unreachable, or it went away): UNAVAILABLE.
    case unavailable
    /// Unknown model or version: NOT_FOUND.
    case notFound
    /// The request did not match what the model declares: INVALID_ARGUMENT.
    case invalidArgument
    /// The server's queue is full: RESOURCE_EXHAUSTED. Retry later or with fewer clients.
    case resourceExhausted
    /// The deadline passed before the answer came: DEADLINE_EXCEEDED.
    case deadlineExceeded
    /// The call was cancelled: CANCELLED.
    case cancelled
    /// The server does not implement the call: UNIMPLEMENTED.
    case unimplemented
    /// The server failed while running the model: INTERNAL or UNKNOWN.
    case serverError
    /// The server's answer does not follow the protocol (wrong datatype, sizes, missing output).
    case malformedResponse
    /// Any other gRPC status.
    case other
  }

  public var kind: Kind
  /// The RPC, e.g. "ModelInfer".
  public var call: String
  /// HOST:PORT.
  public var endpoint: String
  /// The gRPC status code's name (e.g. "RESOURCE_EXHAUSTED"), or "" for client-side failures.
  public var status: String
  public var message: String

  public init(kind: Kind, call: String, endpoint: String, status: String = "", message: String) {
    self.kind = kind
    self.call = call
    self.endpoint = endpoint
    self.status = status
    self.message = message
  }

  public var description: String {
    let code = status.isEmpty ? "" : " (\(status))"
    return "KServe \(call) at \(endpoint) failed\(code): \(message)\(hint.isEmpty ? "" : " — \(hint)")"
  }

  var hint: String {
    switch kind {
    case .invalidEndpoint: return "give the endpoint as HOST:PORT, e.g. 127.0.0.1:8001"
    case .unavailable: return "check that a KServe v2 / Triton gRPC server listens there"
    case .notFound: return "ask ModelMetadata or the server's model list for the names and versions it serves"
    case .invalidArgument: return "send the datatype and shape that ModelMetadata declares"
    case .resourceExhausted: return "the server's queue is full: retry later, or raise its --queue-capacity"
    case .deadlineExceeded: return "raise the timeout, or lower the load on the server"
    case .malformedResponse: return "the server does not follow the KServe v2 protocol for this call"
    case .cancelled, .unimplemented, .serverError, .other: return ""
    }
  }

  /// Maps a gRPC error to a KServe error kind.
  static func from(_ error: any Error, call: String, endpoint: String) -> KServeError {
    if let e = error as? KServeError { return e }
    if let rpc = error as? RPCError {
      let kind: Kind
      switch rpc.code {
      case .unavailable: kind = .unavailable
      case .notFound: kind = .notFound
      case .invalidArgument, .outOfRange, .failedPrecondition: kind = .invalidArgument
      case .resourceExhausted: kind = .resourceExhausted
      case .deadlineExceeded: kind = .deadlineExceeded
      case .cancelled: kind = .cancelled
      case .unimplemented: kind = .unimplemented
      case .internalError, .unknown, .dataLoss: kind = .serverError
      default: kind = .other
      }
      return KServeError(kind: kind, call: call, endpoint: endpoint, status: rpc.code.statusName, message: rpc.message)
    }
    if error is CancellationError {
      return KServeError(kind: .cancelled, call: call, endpoint: endpoint, status: "CANCELLED", message: "the calling task was cancelled")
    }
    return KServeError(kind: .other, call: call, endpoint: endpoint, message: "\(error)")
  }
}

extension RPCError.Code {
  /// The status name of the gRPC specification (e.g. "DEADLINE_EXCEEDED").
  public var statusName: String {
    switch self {
    case .cancelled: return "CANCELLED"
    case .unknown: return "UNKNOWN"
    case .invalidArgument: return "INVALID_ARGUMENT"
    case .deadlineExceeded: return "DEADLINE_EXCEEDED"
    case .notFound: return "NOT_FOUND"
    case .alreadyExists: return "ALREADY_EXISTS"
    case .permissionDenied: return "PERMISSION_DENIED"
    case .resourceExhausted: return "RESOURCE_EXHAUSTED"
    case .failedPrecondition: return "FAILED_PRECONDITION"
    case .aborted: return "ABORTED"
    case .outOfRange: return "OUT_OF_RANGE"
    case .unimplemented: return "UNIMPLEMENTED"
    case .internalError: return "INTERNAL"
    case .unavailable: return "UNAVAILABLE"
    case .dataLoss: return "DATA_LOSS"
    case .unauthenticated: return "UNAUTHENTICATED"
    default: return "\(self)"
    }
  }
}

/// FP32 tensors to and from the protocol's encodings. The protocol's bytes are little-endian;
/// Veil runs on little-endian x86-64 and arm64, so the copy is a memcpy.
public enum KServeCodec {
  public static let fp32 = "FP32"

  /// The little-endian bytes of `tensor` (for `raw_input_contents` / `raw_output_contents`).
  public static func rawBytes(_ tensor: Tensor) -> Data {
    tensor.withUnsafeBuffer { Data(buffer: $0) }
  }

  /// The most elements a tensor of the protocol may have here (1 GiB of FP32): a bound on what a
  /// declared shape can make a reader allocate.
  public static let maxElements = 1 << 28

  /// The element count of `shape`, or nil when a dimension is negative or the product (checked
  /// for overflow) exceeds `limit`. Every shape read from the wire goes through this before a
  /// byte is allocated for it.
  public static func elementCount(_ shape: [Int], limit: Int = maxElements) -> Int? {
    var n = 1
    for d in shape {
      guard d >= 0 else { return nil }
      let (p, overflow) = n.multipliedReportingOverflow(by: d)
      guard !overflow, p <= limit else { return nil }
      n = p
    }
    return n
  }

  /// A tensor of `shape` from little-endian FP32 bytes; nil when the shape is not a bounded
  /// shape or the byte count is not 4 × its element count.
  public static func tensor(shape: [Int], rawBytes: Data) -> Tensor? {
    guard let count = elementCount(shape), rawBytes.count == count * 4 else { return nil }
    return Tensor(uninitialized: shape) { buf in
      rawBytes.withUnsafeBytes { src in
        if count > 0, let dst = buf.baseAddress, let s = src.baseAddress {
          UnsafeMutableRawPointer(dst).copyMemory(from: s, byteCount: count * 4)
        }
      }
    }
  }

  /// The unsigned integer datatypes a tensor may travel as besides FP32, with their bytes per
  /// value: a quantised map's codes (held as floats in the engine).
  public static let integerBytes = Dictionary(uniqueKeysWithValues: WireIntegerType.allCases.map { ($0.rawValue, $0.bytes) })

  /// Bytes per value of `datatype` (FP32 or an integer type), nil for any other.
  public static func bytesPerValue(_ datatype: String) -> Int? { datatype == fp32 ? 4 : integerBytes[datatype] }

  /// `tensor`'s values as `type`'s integers: rounded, clamped to its range, NaN as 0.
  public static func integers(_ tensor: Tensor, _ type: WireIntegerType) -> [UInt32] {
    tensor.scalars.map { $0.isNaN ? 0 : UInt32(min(max($0.rounded(), 0), type.maximum)) }
  }

  /// The little-endian bytes of `tensor` as `datatype`; integer types take `integers(_:_:)`.
  public static func rawBytes(_ tensor: Tensor, datatype: String) -> Data {
    guard let type = WireIntegerType(rawValue: datatype) else { return rawBytes(tensor) }
    let values = integers(tensor, type)
    var bytes = [UInt8](repeating: 0, count: values.count * type.bytes)
    for (k, v) in values.enumerated() {
      bytes[k * type.bytes] = UInt8(truncatingIfNeeded: v)
      if type == .uint16 { bytes[k * 2 + 1] = UInt8(truncatingIfNeeded: v >> 8) }
    }
    return Data(bytes)
  }

  /// A tensor of `shape` from little-endian bytes of `datatype` (FP32 or an integer type); nil
  /// when the shape is not bounded or the byte count does not match.
  public static func tensor(shape: [Int], rawBytes: Data, datatype: String) -> Tensor? {
    guard let size = integerBytes[datatype] else { return datatype == fp32 ? tensor(shape: shape, rawBytes: rawBytes) : nil }
    guard let count = elementCount(shape), rawBytes.count == count * size else { return nil }
    return Tensor(uninitialized: shape) { buf in
      rawBytes.withUnsafeBytes { src in
        for k in 0..<count {
          buf[k] = size == 1 ? Float(src[k]) : Float(UInt16(src[2 * k]) | UInt16(src[2 * k + 1]) << 8)
        }
      }
    }
  }

  /// A tensor of `shape` from typed values; nil when the shape is not bounded or the count does
  /// not match.
  public static func tensor(shape: [Int], values: [Float]) -> Tensor? {
    guard let count = elementCount(shape), values.count == count else { return nil }
    return try? Tensor(shape: shape, values: values)
  }

  /// The first typed field of `c` that holds values, other than `expected` (the field of the
  /// tensor's declared datatype: fp32_contents for FP32, uint_contents for UINT8 / UINT16): a
  /// datatype the tensor does not declare. nil when only `expected` (or nothing) holds values.
  static func foreignContents(_ c: Inference_InferTensorContents, expected: String = "fp32_contents") -> String? {
    let fields: [(String, Bool)] = [
      ("bool_contents", c.boolContents.isEmpty), ("int_contents", c.intContents.isEmpty),
      ("int64_contents", c.int64Contents.isEmpty), ("uint_contents", c.uintContents.isEmpty),
      ("uint64_contents", c.uint64Contents.isEmpty), ("fp32_contents", c.fp32Contents.isEmpty),
      ("fp64_contents", c.fp64Contents.isEmpty), ("bytes_contents", c.bytesContents.isEmpty),
    ]
    return fields.first { !$0.1 && $0.0 != expected }?.0
  }

  /// A shape in the protocol's int64 form.
  static func wireShape(_ shape: [Int]) -> [Int64] { shape.map(Int64.init) }
}

/// The stages of one inference call, in ms: encoding the request, the call (the wire both ways
/// and the server's queue and compute), decoding the answer. A model run in process has only
/// the call, which is all compute.
///
/// `server` is the part of the call the server says it spent queued and computing, where it
/// says so (`KServeServerTiming`): Veil's accelerator does, other KServe v2 servers do not. It
/// comes from the server, which the caller does not trust: it is for breakdowns and metrics,
/// never for a decision, and the client keeps it only when it fits inside the call it measured.
public struct CallTiming: Sendable, Equatable {
  public var encodeMs: Double
  public var callMs: Double
  public var decodeMs: Double
  public var server: KServeServerTiming?

  public init(encodeMs: Double, callMs: Double, decodeMs: Double, server: KServeServerTiming? = nil) {
    self.encodeMs = encodeMs
    self.callMs = callMs
    self.decodeMs = decodeMs
    self.server = server
  }
}

/// Where a request's time went inside a KServe v2 server, in ms, as Veil's accelerator reports
/// it in its ModelInfer answers' parameters (`veil_queue_ms`, `veil_compute_ms`, doubles): the
/// wait in the model's queue, and the run that took the request (shared with its batch).
public struct KServeServerTiming: Sendable, Equatable {
  public static let queueParameter = "veil_queue_ms"
  public static let computeParameter = "veil_compute_ms"

  public var queueMs: Double
  public var computeMs: Double

  public init(queueMs: Double, computeMs: Double) {
    self.queueMs = queueMs
    self.computeMs = computeMs
  }

  /// The answer's parameters that carry it.
  public var parameters: [String: Inference_InferParameter] {
    func double(_ v: Double) -> Inference_InferParameter {
      var p = Inference_InferParameter()
      p.doubleParam = v
      return p
    }
    return [Self.queueParameter: double(queueMs), Self.computeParameter: double(computeMs)]
  }

  /// The timing in an answer's `parameters`, or nil when they do not hold both as doubles, or
  /// hold a negative, infinite or NaN value, or add up to more than `withinMs` (the call as the
  /// client measured it, which contains the server's part): a server's claim is kept only when
  /// it could be true.
  public init?(parameters: [String: Inference_InferParameter], withinMs: Double) {
    guard case .doubleParam(let q)? = parameters[Self.queueParameter]?.parameterChoice,
      case .doubleParam(let c)? = parameters[Self.computeParameter]?.parameterChoice,
      q.isFinite, c.isFinite, q >= 0, c >= 0, q + c <= withinMs
    else { return nil }
    self.init(queueMs: q, computeMs: c)
  }
}
