import Foundation
import SwiftProtobuf
import VeilData
import VeilTEE
import VeilTensor

/// The generated messages under shorter names.
public typealias EnclaveRequestMessage = Veil_Enclave_V1_EnclaveRequest
public typealias EnclaveResponseMessage = Veil_Enclave_V1_EnclaveResponse
public typealias EnclaveResultMessage = Veil_Enclave_V1_EnclaveResult
public typealias EnclaveStagesMessage = Veil_Enclave_V1_EnclaveStages
public typealias TensorMessage = Veil_Enclave_V1_Tensor
public typealias PixelsMessage = Veil_Enclave_V1_Pixels

extension Veil_Enclave_V1_Pixels {
  /// An RGB image's samples (`Preprocessing.geometry` gives RGB; an image of another channel
  /// count has the wrong byte count, which the enclave refuses).
  public init(_ image: ByteImage) {
    self.init()
    width = UInt32(image.width)
    height = UInt32(image.height)
    rgb = Data(image.pixels)
  }

  /// The image, checked against the size a plan's resize and crop give (`width × height`, 3
  /// bytes a pixel) before anything is allocated.
  public func image(width w: Int, height h: Int) throws -> ByteImage {
    guard Int(width) == w, Int(height) == h else {
      throw EnclaveError.invalidInput(
        "the plan's photos are \(w)×\(h) after its resize and crop, the request's pixels are \(width)×\(height)")
    }
    let (row, o1) = w.multipliedReportingOverflow(by: 3)
    let (bytes, o2) = row.multipliedReportingOverflow(by: h)
    guard !o1, !o2, rgb.count == bytes else {
      throw EnclaveError.invalidInput("\(w)×\(h) RGB pixels take \(bytes) bytes, the request carries \(rgb.count)")
    }
    return try ByteImage(width: w, height: h, channels: 3, pixels: [UInt8](rgb))
  }
}

extension Veil_Enclave_V1_Tensor {
  /// float32 little-endian, row-major.
  public init(_ t: Tensor) {
    self.init()
    shape = t.shape.map(Int64.init)
    data = t.withUnsafeBuffer { Data(buffer: $0) }
  }

  /// The tensor, checked: every dimension positive, the byte count 4 × the element count, at
  /// most `maxElements` elements.
  public func tensor(maxElements: Int = 1 << 26) throws -> Tensor {
    guard !shape.isEmpty, shape.count <= 8, shape.allSatisfy({ $0 > 0 && $0 <= Int64(maxElements) }) else {
      throw EnclaveError.invalidInput("tensor shape \(shape) is not a shape of 1 to 8 positive dimensions")
    }
    let dims = shape.map(Int.init)
    var n = 1
    for d in dims {
      let (p, overflow) = n.multipliedReportingOverflow(by: d)
      guard !overflow, p <= maxElements else {
        throw EnclaveError.invalidInput("tensor shape \(shape) has more than \(maxElements) elements")
      }
      n = p
    }
    guard data.count == n * 4 else {
      throw EnclaveError.invalidInput(
        "tensor shape \(shape) needs \(n * 4) bytes of float32, the message carries \(data.count)")
    }
    return Tensor(uninitialized: dims) { buf in
      data.withUnsafeBytes { raw in
        _ = raw.copyBytes(to: UnsafeMutableRawBufferPointer(buf))
      }
    }
  }
}

/// A `SecureSession` (a non-Sendable class that must be used by one party at a time) with the
/// lock that makes that so: the small documented box the style guide allows.
public final class SealedChannel: @unchecked Sendable {
  private let session: SecureSession
  private let lock = NSLock()

  public init(_ session: SecureSession) {
    self.session = session
  }

  public func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
    try lock.withLock { () -> Result<[UInt8], Error> in Result { try session.seal(plaintext) } }.get()
  }
  public func seal(_ message: some SwiftProtobuf.Message) throws -> [UInt8] {
    try seal(Array(try message.serializedData()))
  }
  public func open(_ record: [UInt8]) throws -> Inbound {
    try lock.withLock { () -> Result<Inbound, Error> in Result { try session.open(record) } }.get()
  }
  public func close() throws -> [UInt8] {
    try lock.withLock { () -> Result<[UInt8], Error> in Result { try session.close() } }.get()
  }
  public var isClosed: Bool { lock.withLock { session.isClosed } }
  public var closedReason: String? { lock.withLock { session.closedReason } }
}

/// The top `k` entries of a row of scores, best first (ties by lower index).
public func topK(_ row: [Float], _ k: Int) -> [(index: Int, score: Float)] {
  guard k > 0 else { return [] }
  return row.indices.sorted { row[$0] != row[$1] ? row[$0] > row[$1] : $0 < $1 }.prefix(k).map { ($0, row[$0]) }
}
