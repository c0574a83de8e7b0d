import Foundation
import VeilTensor

// Defences at the cut: what the enclave does to the feature map before it leaves (additive
// noise, quantisation, channel pruning). They live beside the cut points and the split because
// every side of a plan applies the same one: the enclave on the served map, the privacy
// evaluation on the maps its attackers learn from (the attackers know the defence), the planner
// when it measures utility. The differentiable forms the white-box attacker uses live in
// VeilPrivacy, above the autograd.

/// The kinds of defence.
public enum DefenceKind: String, Codable, Sendable, CaseIterable {
  /// Additive Gaussian noise, σ a multiple of each channel's scale.
  case gaussian
  /// Additive Laplace noise of the same standard deviation (b = σ·scale/√2).
  case laplace
  /// Each image's channels quantised to `bits` bits between their own minimum and maximum
  /// (the scale travels with the map: two numbers per channel).
  case quantise
  /// A share of the channels set to zero: the least active ones on the defender's photos.
  case prune
}

extension DefenceKind {
  /// A kind by its command-line name: gaussian (or noise), laplace, quant (quantise,
  /// quantize), prune.
  public init?(name: String) {
    switch name.lowercased() {
    case "gaussian", "noise": self = .gaussian
    case "laplace": self = .laplace
    case "quant", "quantise", "quantize": self = .quantise
    case "prune": self = .prune
    default: return nil
    }
  }
}

/// One defence with its parameter, and (once fitted to the defender's own photos) the
/// statistics it needs: each channel's scale for noise, the channels kept for pruning.
public struct CutDefence: Codable, Sendable, Equatable, CustomStringConvertible {
  public var kind: DefenceKind
  /// Noise: the standard deviation as a multiple of each channel's scale, 0…100.
  public var sigma: Double?
  /// Quantisation: bits per value, 2…16.
  public var bits: Int?
  /// Pruning: the share of channels removed, [0, 1) (at least one channel stays).
  public var pruned: Double?
  /// Fitted: each channel's standard deviation over the defender's photos and positions.
  public var channelScale: [Float]?
  /// Fitted: the channels pruning keeps, ascending.
  public var keptChannels: [Int]?

  public init(kind: DefenceKind, sigma: Double? = nil, bits: Int? = nil, pruned: Double? = nil) {
    self.kind = kind
    self.sigma = sigma
    self.bits = bits
    self.pruned = pruned
  }

  public static func noise(_ sigma: Double, laplace: Bool = false) -> CutDefence {
    CutDefence(kind: laplace ? .laplace : .gaussian, sigma: sigma)
  }
  public static func quantisation(bits: Int) -> CutDefence { CutDefence(kind: .quantise, bits: bits) }
  public static func pruning(_ share: Double) -> CutDefence { CutDefence(kind: .prune, pruned: share) }

  /// The valid ranges, as errors and help texts quote them.
  public static let sigmaRange = 0.0...100.0
  public static let bitsRange = 2...16
  public static let prunedRange = "[0, 1), at least one channel kept"

  /// `gaussian:0.5` (or `noise:0.5`), `laplace:0.5`, `quant:4` (or `quantise:4`), `prune:0.5`:
  /// the command line's form, the inverse of `spec`.
  public init(parsing text: String) throws {
    let parts = text.split(separator: ":", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces) }
    guard parts.count == 2, !parts[1].isEmpty else {
      throw DefenceError.invalid(
        spec: text, detail: "expected KIND:VALUE, one of gaussian:σ, laplace:σ, quant:BITS, prune:SHARE (e.g. gaussian:0.5, quant:4, prune:0.5)")
    }
    let value = parts[1]
    guard let kind = DefenceKind(name: parts[0]) else {
      throw DefenceError.invalid(spec: text, detail: "unknown defence '\(parts[0])'; known: gaussian, laplace, quant, prune")
    }
    switch kind {
    case .gaussian, .laplace:
      guard let s = Double(value) else { throw DefenceError.invalid(spec: text, detail: "σ '\(value)' is not a number") }
      self = .noise(s, laplace: kind == .laplace)
    case .quantise:
      guard let b = Int(value) else { throw DefenceError.invalid(spec: text, detail: "bits '\(value)' is not a whole number") }
      self = .quantisation(bits: b)
    case .prune:
      guard let p = Double(value) else { throw DefenceError.invalid(spec: text, detail: "the share '\(value)' is not a number") }
      self = .pruning(p)
    }
    try validate(spec: text)
  }

  /// The command line's form: `gaussian:0.5`, `laplace:1`, `quant:4`, `prune:0.5`.
  public var spec: String {
    switch kind {
    case .gaussian, .laplace: "\(kind.rawValue):\(Self.number(sigma ?? .nan))"
    case .quantise: "quant:\(bits ?? 0)"
    case .prune: "prune:\(Self.number(pruned ?? .nan))"
    }
  }

  public var description: String {
    switch kind {
    case .gaussian: "Gaussian noise σ = \(Self.number(sigma ?? .nan))×channel scale"
    case .laplace: "Laplace noise σ = \(Self.number(sigma ?? .nan))×channel scale"
    case .quantise: "\(bits ?? 0)-bit quantisation (per image and channel)"
    case .prune: "pruning \(Self.number((pruned ?? .nan) * 100))% of the channels"
    }
  }

  static func number(_ x: Double) -> String { x == x.rounded() && abs(x) < 1e6 ? String(Int(x)) : String(format: "%g", x) }

  /// Refuses a parameter out of its range, quoting the range.
  public func validate(spec: String? = nil) throws {
    let name = spec ?? self.spec
    switch kind {
    case .gaussian, .laplace:
      guard let s = sigma, s.isFinite, Self.sigmaRange.contains(s) else {
        throw DefenceError.invalid(spec: name, detail: "σ must be in \(Self.number(Self.sigmaRange.lowerBound))…\(Self.number(Self.sigmaRange.upperBound)) (a multiple of each channel's scale), found \(sigma.map { "\($0)" } ?? "none")")
      }
    case .quantise:
      guard let b = bits, Self.bitsRange.contains(b) else {
        throw DefenceError.invalid(spec: name, detail: "bits must be in \(Self.bitsRange.lowerBound)…\(Self.bitsRange.upperBound), found \(bits.map { "\($0)" } ?? "none")")
      }
    case .prune:
      guard let p = pruned, p.isFinite, p >= 0, p < 1 else {
        throw DefenceError.invalid(spec: name, detail: "the share of channels pruned must be in \(Self.prunedRange) (pruning every channel leaves nothing to classify), found \(pruned.map { "\($0)" } ?? "none")")
      }
    }
  }

  /// Whether `apply` may run: the defences that scale to the maps' spread or keep the channels
  /// that matter need `fitted(to:)` first.
  public var isFitted: Bool {
    switch kind {
    case .gaussian, .laplace: channelScale != nil
    case .prune: keptChannels != nil
    case .quantise: true
    }
  }

  /// Fits the defence to the defender's feature maps `features`, their channels on
  /// `channelAxis` (1 for [N, C, h, w]; 2 for a transformer's tokens [N, T, D], whose channels
  /// are the features of every token): each channel's standard deviation (noise), or the
  /// channels with the largest mean magnitude (pruning keeps ⌈(1 − share)·C⌉ of them, at least
  /// one).
  public func fitted(to features: Tensor, channelAxis: Int = 1) throws -> CutDefence {
    try validate()
    guard features.rank >= 2, channelAxis >= 1, channelAxis < features.rank, features.shape[0] > 0 else {
      throw DefenceError.invalid(
        spec: spec, detail: "fitting needs maps with channels on axis \(channelAxis) ([N, C, h, w] or [N, T, D]), found \(features.shape)")
    }
    let c = features.shape[channelAxis]
    let inner = features.shape[(channelAxis + 1)...].reduce(1, *)
    var sum = [Double](repeating: 0, count: c)
    var squares = [Double](repeating: 0, count: c)
    var magnitude = [Double](repeating: 0, count: c)
    features.withUnsafeBuffer { p in
      // Value k has channel (k / inner) % c.
      for k in 0..<p.count {
        let ch = (k / inner) % c
        let x = Double(p[k])
        sum[ch] += x
        squares[ch] += x * x
        magnitude[ch] += abs(x)
      }
    }
    var out = self
    let count = Double(features.count / c)
    switch kind {
    case .gaussian, .laplace:
      out.channelScale = (0..<c).map { ch in
        let mean = sum[ch] / count
        return Float(max(squares[ch] / count - mean * mean, 0).squareRoot())
      }
    case .prune:
      let keep = max(1, Int((Double(c) * (1 - (pruned ?? 0))).rounded(.up)))
      out.keptChannels = Array((0..<c).sorted { (magnitude[$0], -$0) > (magnitude[$1], -$1) }.prefix(keep)).sorted()
    case .quantise: break
    }
    return out
  }

  /// Checks the fitted statistics against a map of `channels` channels.
  public func checkFit(channels: Int) throws {
    guard isFitted else { throw DefenceError.notFitted(spec: spec) }
    if let s = channelScale, s.count != channels || s.contains(where: { !$0.isFinite || $0 < 0 }) {
      throw DefenceError.invalid(spec: spec, detail: "fitted to \(s.count) channel scales (finite, ≥ 0), the map has \(channels) channels")
    }
    if let k = keptChannels, k.isEmpty || k.contains(where: { $0 < 0 || $0 >= channels }) || zip(k, k.dropFirst()).contains(where: { $0 >= $1 }) {
      throw DefenceError.invalid(spec: spec, detail: "kept channels must be ascending, distinct, at least one, each in 0..<\(channels)")
    }
  }

  /// The defended map: `x` with its channels on `channelAxis` (1 for [N, C, h, w], 3 for
  /// [N, h, w, C]), noise drawn from `generator` (the enclave passes a cryptographic one).
  public func apply<G: RandomNumberGenerator>(to x: Tensor, channelAxis: Int = 1, using generator: inout G) throws -> Tensor {
    guard x.rank >= 2, channelAxis >= 1, channelAxis < x.rank else {
      throw DefenceError.invalid(spec: spec, detail: "channel axis \(channelAxis) of a map shaped \(x.shape)")
    }
    let c = x.shape[channelAxis]
    try checkFit(channels: c)
    // Quantisation is its wire form decoded: one computation for the enclave, the attackers
    // and the utility.
    if kind == .quantise { return try encode(x, channelAxis: channelAxis).decoded() }
    // Index arithmetic: value k of image i has channel (k / inner) % c.
    let inner = x.shape[(channelAxis + 1)...].reduce(1, *)
    var y = x
    y.withUnsafeMutableBuffer { p in
      switch kind {
      case .gaussian, .laplace:
        let scale = channelScale!.map { Float(sigma!) * $0 }
        let laplace = kind == .laplace
        for k in 0..<p.count {
          let s = scale[(k / inner) % c]
          guard s > 0 else { continue }
          p[k] += s * (laplace ? Self.laplace(&generator) : Self.normal(&generator))
        }
      case .prune:
        var keep = [Bool](repeating: false, count: c)
        for ch in keptChannels! { keep[ch] = true }
        for k in 0..<p.count where !keep[(k / inner) % c] { p[k] = 0 }
      case .quantise: break
      }
    }
    return y
  }

  /// The bytes of the map's values on the wire as the enclave sends it (`EncodedMap`): a
  /// quantised map's codes in one byte a value up to 8 bits, two up to 16, plus an FP32 minimum
  /// and step per image and channel; every other defence FP32 (a pruned map's zeros included).
  /// `shape` is the whole map's.
  public func encodedBytes(shape: [Int], channelAxis: Int = 1) -> Int {
    let count = shape.reduce(1, *)
    guard let type = wireType, channelAxis < shape.count, shape[channelAxis] > 0 else { return count * 4 }
    return count * type.bytes + shape[0] * shape[channelAxis] * 8
  }

  static func normal<G: RandomNumberGenerator>(_ g: inout G) -> Float {
    // Box–Muller on two uniforms in (0, 1].
    let u1 = Float(g.next() >> 40 &+ 1) * (1.0 / Float(1 << 24))
    let u2 = Float(g.next() >> 40) * (1.0 / Float(1 << 24))
    return (-2 * logf(u1)).squareRoot() * cosf(2 * Float.pi * u2)
  }

  /// Laplace with unit variance (b = 1/√2): ±b·ln(1/u).
  static func laplace<G: RandomNumberGenerator>(_ g: inout G) -> Float {
    let bits = g.next()
    let u = Float(bits >> 40 &+ 1) * (1.0 / Float(1 << 24))
    let magnitude = -logf(u) / Float(2).squareRoot()
    return bits & 1 == 0 ? magnitude : -magnitude
  }
}

// MARK: - The quantised map on the wire

/// The integer type a quantised map's codes travel as: one byte a value up to 8 bits, two up
/// to 16. Its name is the KServe v2 datatype; a graph input of this type is marked in the
/// graph's metadata (`metadataKey(input:)`), and ONNX files declare it with a Cast to float.
public enum WireIntegerType: String, Codable, Sendable, CaseIterable {
  case uint8 = "UINT8"
  case uint16 = "UINT16"

  public var bytes: Int { self == .uint8 ? 1 : 2 }
  public var maximum: Float { self == .uint8 ? 255 : 65_535 }

  /// The metadata key that marks graph input `input` as carrying this type (its values are
  /// the integers as floats inside the engine).
  public static func metadataKey(input: String) -> String { "veil.input_type.\(input)" }

  /// The declared type of `graph`'s input `name`, nil for float.
  public static func of(input name: String, in graph: Graph) throws -> WireIntegerType? {
    guard let text = graph.metadata[metadataKey(input: name)] else { return nil }
    guard let t = WireIntegerType(rawValue: text) else {
      throw GraphError.invalidGraph("metadata \(metadataKey(input: name)) = '\(text)': not UINT8 or UINT16")
    }
    return t
  }
}

/// A quantised map as it crosses the cut: the integer codes (as floats; `type` says how they
/// travel) and, per image and channel, the minimum and the step. `code·step + minimum` is
/// exactly the map `CutDefence.apply` gives.
public struct EncodedMap: Sendable {
  public var type: WireIntegerType
  /// The map's channel axis (1 for [N, C, h, w], 3 for [N, h, w, C]).
  public var channelAxis: Int
  /// The codes, the map's shape.
  public var codes: Tensor
  /// Minimum and step per image and channel: the map's shape with every axis but the batch
  /// and the channel axis 1 ([N, C, 1, 1] channels first).
  public var low: Tensor
  public var step: Tensor

  /// The three tensors in the order of the encoded tail's inputs.
  public var tensors: [Tensor] { [codes, low, step] }

  /// The quantised map: code·step + minimum, what the encoded tail's first two nodes compute.
  public func decoded() -> Tensor {
    let (n, c) = (codes.shape[0], codes.shape[channelAxis])
    let inner = codes.shape[(channelAxis + 1)...].reduce(1, *)
    let per = codes.count / max(n, 1)
    var y = codes
    low.withUnsafeBuffer { l in
      step.withUnsafeBuffer { s in
        y.withUnsafeMutableBuffer { p in
          for k in 0..<p.count {
            let j = (k / per) * c + (k / inner) % c
            p[k] = p[k] * s[j] + l[j]
          }
        }
      }
    }
    return y
  }
  /// The bytes the three take on the wire.
  public var wireBytes: Int { codes.count * type.bytes + (low.count + step.count) * 4 }
}

extension CutDefence {
  /// How a map defended this way crosses the cut encoded: the codes' type for quantisation,
  /// nil for the defences sent as FP32.
  public var wireType: WireIntegerType? {
    guard kind == .quantise, let bits else { return nil }
    return bits <= 8 ? .uint8 : .uint16
  }

  /// The quantised map of `x` in its wire form (quantisation only): per image and channel the
  /// minimum and the step (range / (2^bits − 1); 1 where the channel is constant, so its codes
  /// are 0), and each value's code. Refuses a map with a value that is not finite.
  public func encode(_ x: Tensor, channelAxis: Int = 1) throws -> EncodedMap {
    guard let type = wireType, let bits else {
      throw DefenceError.invalid(spec: spec, detail: "only quantisation is sent encoded")
    }
    guard x.rank >= 2, channelAxis >= 1, channelAxis < x.rank else {
      throw DefenceError.invalid(spec: spec, detail: "channel axis \(channelAxis) of a map shaped \(x.shape)")
    }
    let (n, c) = (x.shape[0], x.shape[channelAxis])
    let inner = x.shape[(channelAxis + 1)...].reduce(1, *)
    let per = x.count / max(n, 1)
    let levels = Float((1 << bits) - 1)
    var low = [Float](repeating: .infinity, count: n * c)
    var high = [Float](repeating: -.infinity, count: n * c)
    var codes = Tensor(zeros: x.shape)
    var finite = true
    x.withUnsafeBuffer { p in
      for k in 0..<p.count {
        let j = (k / per) * c + (k / inner) % c
        finite = finite && p[k].isFinite
        low[j] = min(low[j], p[k])
        high[j] = max(high[j], p[k])
      }
    }
    guard finite else { throw DefenceError.invalid(spec: spec, detail: "the map has a value that is not finite; it cannot be quantised") }
    let step = zip(low, high).map { l, h in h > l && (h - l).isFinite ? (h - l) / levels : Float(1) }
    x.withUnsafeBuffer { p in
      codes.withUnsafeMutableBuffer { q in
        for k in 0..<p.count {
          let j = (k / per) * c + (k / inner) % c
          q[k] = min(max(((p[k] - low[j]) / step[j]).rounded(), 0), type.maximum)
        }
      }
    }
    var side = [Int](repeating: 1, count: x.rank)
    (side[0], side[channelAxis]) = (n, c)
    return EncodedMap(type: type, channelAxis: channelAxis, codes: codes, low: try Tensor(shape: side, values: low), step: try Tensor(shape: side, values: step))
  }

  /// `tail` that takes the map encoded: its input replaced by three (`<name>_codes`, of
  /// `wireType`, and `<name>_low`, `<name>_step` in FP32, shaped as `encode` gives them), and
  /// the map rebuilt as codes·step + low before the first layer. What the plan exports for the
  /// accelerator when the map is quantised.
  public func decodingTail(_ tail: Graph, channelAxis: Int = 1) throws -> Graph {
    guard let type = wireType else { throw DefenceError.invalid(spec: spec, detail: "only quantisation is sent encoded") }
    guard tail.inputs.count == 1, let input = tail.inputs.first, let shape = tail.shape(input), channelAxis < shape.count else {
      throw DefenceError.invalid(spec: spec, detail: "the tail needs one input of known shape to take the encoded map")
    }
    var g = tail
    let name = g[input].name
    var side = [Int](repeating: 1, count: shape.count)
    (side[0], side[channelAxis]) = (shape[0], shape[channelAxis])
    let codes = g.addInput(name: "\(name)_codes", shape: shape)
    let low = g.addInput(name: "\(name)_low", shape: side)
    let step = g.addInput(name: "\(name)_step", shape: side)
    g.metadata[WireIntegerType.metadataKey(input: "\(name)_codes")] = type.rawValue
    let scaled = g.mul(codes, step, name: "veil.dequantise.scale")
    let map = g.add(scaled, low, name: "veil.dequantise.shift")
    let added = g.nodes.count - 2
    for i in 0..<added { g.nodes[i].inputs = g.nodes[i].inputs.map { $0 == input ? map : $0 } }
    g.inputs = [codes, low, step]
    try g.sortTopologically()
    g.removeDeadCode()
    try g.inferShapes()
    return g
  }
}

/// A defence that cannot be used as given.
public enum DefenceError: Error, CustomStringConvertible, Equatable {
  case invalid(spec: String, detail: String)
  case notFitted(spec: String)

  public var description: String {
    switch self {
    case .invalid(let spec, let detail): "defence '\(spec)': \(detail)"
    case .notFitted(let spec):
      "defence '\(spec)' is not fitted: its channel statistics come from the defender's photos (CutDefence.fitted(to:)); a plan records them"
    }
  }
}
