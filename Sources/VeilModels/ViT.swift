import VeilGraph
import VeilTensor

/// The shape of a vision transformer (Dosovitskiy et al., 2020) as torchvision's
/// `VisionTransformer` takes it: square images cut into square patches, `layers` encoder blocks
/// of `heads`-head self-attention and an MLP of width `mlp`, on tokens of width `dim`.
public struct VisionTransformerShape: Sendable, Equatable {
  public var image: Int
  public var patch: Int
  public var channels: Int
  public var layers: Int
  public var heads: Int
  public var dim: Int
  public var mlp: Int
  public var classes: Int

  public init(image: Int, patch: Int, channels: Int = 3, layers: Int, heads: Int, dim: Int, mlp: Int, classes: Int = 1000) {
    (self.image, self.patch, self.channels, self.layers) = (image, patch, channels, layers)
    (self.heads, self.dim, self.mlp, self.classes) = (heads, dim, mlp, classes)
  }

  /// ViT-B/16: 12 blocks of 12 heads on 768-wide tokens, MLP 3072 (torchvision's `vit_b_16`).
  public static let base16 = VisionTransformerShape(image: 224, patch: 16, layers: 12, heads: 12, dim: 768, mlp: 3072)
  /// ViT-Ti/16 (DeiT-Tiny's shapes): 12 blocks of 3 heads on 192-wide tokens, MLP 768.
  public static let tiny16 = VisionTransformerShape(image: 224, patch: 16, layers: 12, heads: 3, dim: 192, mlp: 768)

  /// A transformer small enough to train on k×k images here (`veil train --model small-vit`):
  /// patches of 4 (of 2 below 16 pixels), 4 blocks of 4 heads on 64-wide tokens, MLP 128.
  public static func small(side: Int, channels: Int, classes: Int) -> VisionTransformerShape {
    VisionTransformerShape(
      image: side, patch: side >= 16 ? 4 : 2, channels: channels, layers: 4, heads: 4, dim: 64, mlp: 128, classes: classes)
  }

  /// Patches per side, and tokens with the class token.
  public var grid: Int { image / patch }
  public var tokens: Int { grid * grid + 1 }

  /// Why the shape cannot be built, or nil.
  public var problem: String? {
    if patch < 1 || image < patch || image % patch != 0 { return "image \(image) is not a whole number of \(patch)-pixel patches" }
    if channels < 1 || layers < 1 || classes < 2 { return "channels \(channels), layers \(layers) must be ≥ 1, classes \(classes) ≥ 2" }
    if heads < 1 || dim < heads || dim % heads != 0 { return "width \(dim) does not split into \(heads) heads" }
    if mlp < 1 { return "MLP width \(mlp) must be ≥ 1" }
    return nil
  }
}

extension ModelZoo {
  /// ViT-B/16 (torchvision's `vit_b_16`).
  public static func vitB16(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    try visionTransformer(.base16, info: .vitB16, batch: batch, seed: seed)
  }

  /// ViT-Ti/16: torchvision's VisionTransformer at DeiT-Tiny's shapes.
  public static func vitTi16(batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    try visionTransformer(.tiny16, info: .vitTi16, batch: batch, seed: seed)
  }

  /// `VisionTransformerShape.small` for k×k images of `channels` channels (pixels / 255, no
  /// normalisation), named `small-vit`: a training-time architecture (`veil train`).
  public static func smallVisionTransformer(side: Int, channels: Int, classes: Int, batch: Int = 1, seed: UInt64 = 0) throws
    -> Graph
  {
    let s = VisionTransformerShape.small(side: side, channels: channels, classes: classes)
    let info = ModelInfo(
      name: "small-vit", paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", year: 2020,
      reference: "torchvision.models.VisionTransformer(\(s.patch), 4, 4, 64, 128) at \(side)×\(side)",
      inputShape: [1, channels, side, side],
      transform: Preprocessing(range: 1, mean: [0, 0, 0], std: [1, 1, 1], resize: side, crop: side, interpolation: "bilinear"),
      parameterCount: 0, summary: "a small vision transformer for k×k images")
    return try visionTransformer(s, info: info, batch: batch, seed: seed)
  }

  /// A vision transformer as torchvision's `VisionTransformer` computes it, with its module
  /// paths and parameter names (so a torchvision state_dict loads by name): `conv_proj` cuts
  /// the image into patch tokens, the `class_token` goes in front, `encoder.pos_embedding` is
  /// added; each `encoder.layers.encoder_layer_i` is x + attention(ln_1(x)), then
  /// x + mlp(ln_2(x)) with GELU, attention projecting with `self_attention.in_proj_weight` and
  /// `out_proj`; `encoder.ln` and `heads.head` classify the class token.
  ///
  /// Cuts: `conv_proj` (the patch map [N, dim, grid, grid]), `embeddings` (the tokens the
  /// encoder takes, [N, tokens, dim]) and `encoder_layer_0` … (each block's output, [N, tokens,
  /// dim]): the only tensors that cross there. Every reshape copies the batch or infers it, so
  /// the graph runs at any batch (`withBatch`). The class token is placed by padding (the
  /// sequence in front, the token behind) rather than repeated per image, which computes
  /// torchvision's concatenation exactly.
  ///
  /// Weights: seeded, not pretrained; linears and embeddings ~ N(0, 0.02), LayerNorm γ = 1 and
  /// β = 0, the patch convolution He-normal (fan-in).
  public static func visionTransformer(
    _ s: VisionTransformerShape, info given: ModelInfo? = nil, batch: Int = 1, seed: UInt64 = 0
  ) throws -> Graph {
    if let p = s.problem { throw ModelZooError.invalidShape(p) }
    let info =
      given
      ?? ModelInfo(
        name: "vit", paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", year: 2020,
        reference: "torchvision.models.VisionTransformer", inputShape: [1, s.channels, s.image, s.image],
        transform: .imageNet(), parameterCount: 0, summary: "")
    var b = try NetworkBuilder(info, batch: batch, seed: seed)
    let (d, t) = (s.dim, s.tokens)
    var x = b.input
    let fanIn = s.channels * s.patch * s.patch
    x = b.graph.conv(
      x,
      weight: b.normal([d, s.channels, s.patch, s.patch], std: (1 / Float(fanIn)).squareRoot()),
      bias: Tensor(zeros: [d]), ConvAttributes(kernel: [s.patch, s.patch], strides: [s.patch, s.patch]), name: "conv_proj")
    b.cut(x, "conv_proj")
    x = b.graph.reshape(x, to: [0, d, -1], name: "conv_proj/flatten")
    x = b.graph.addNode(.transpose(permutation: [0, 2, 1]), name: "conv_proj/tokens", inputs: [x])[0]
    // [class token; patches] + positions.
    x = b.graph.addNode(.pad(mode: .constant, pads: [0, 1, 0, 0, 0, 0], value: 0), name: "class_token/slot", inputs: [x])[0]
    let token = b.graph.addInitializer(name: "class_token", b.normal([1, 1, d], std: 0.02))
    let placed = b.graph.addNode(
      .pad(mode: .constant, pads: [0, 0, 0, 0, t - 1, 0], value: 0), name: "class_token/place", inputs: [token])[0]
    x = b.add(x, placed, name: "class_token/add")
    let positions = b.graph.addInitializer(name: "encoder.pos_embedding", b.normal([1, t, d], std: 0.02))
    x = b.add(x, positions, name: "encoder/add_pos_embedding")
    b.cut(x, "embeddings")
    for i in 0..<s.layers {
      let p = "encoder.layers.encoder_layer_\(i)"
      var y = b.layerNorm(x, d, name: "\(p).ln_1")
      y = b.selfAttention(y, s, name: "\(p).self_attention")
      x = b.add(x, y, name: "\(p).add_1")
      y = b.layerNorm(x, d, name: "\(p).ln_2")
      y = b.tokenLinear(y, d, s.mlp, tokens: t, weight: "\(p).mlp.0.weight", bias: "\(p).mlp.0.bias", name: "\(p).mlp.0")
      y = b.activation(y, .gelu(tanh: false), name: "\(p).mlp.1")
      y = b.tokenLinear(y, s.mlp, d, tokens: t, weight: "\(p).mlp.3.weight", bias: "\(p).mlp.3.bias", name: "\(p).mlp.3")
      x = b.add(x, y, name: "\(p).add_2")
      b.cut(x, "encoder_layer_\(i)")
    }
    x = b.layerNorm(x, d, name: "encoder.ln")
    x = b.graph.slice(x, SliceAttributes(starts: [0], ends: [1], axes: [1]), name: "class_token/select")
    x = b.graph.reshape(x, to: [-1, d], name: "class_token/flatten")
    let head = b.graph.linear(x, weight: b.normal([s.classes, d], std: 0.02), bias: Tensor(zeros: [s.classes]), name: "heads.head")
    return try b.finish(logits: head)
  }
}

extension NetworkBuilder {
  /// N(0, std) entries from the builder's seeded stream.
  mutating func normal(_ shape: [Int], std: Float) -> Tensor { Tensor.randomNormal(shape: shape, std: std, generator: &rng) }

  /// LayerNorm over the last axis (ε = 1e-6, torchvision's ViT), γ = 1, β = 0.
  mutating func layerNorm(_ x: ValueID, _ width: Int, name: String) -> ValueID {
    let scale = graph.addInitializer(name: name + ".weight", Tensor(shape: [width], repeating: 1))
    let shift = graph.addInitializer(name: name + ".bias", Tensor(zeros: [width]))
    return graph.addNode(.layerNormalization(axis: -1, epsilon: 1e-6), name: name, inputs: [x, scale, shift])[0]
  }

  /// A Linear over every token of [N, tokens, in]: a Gemm of the [N·tokens, in] rows with the
  /// initializers `weight` [out, in] and `bias` [out], reshaped back to [N, tokens, out].
  mutating func tokenLinear(
    _ x: ValueID, _ inWidth: Int, _ outWidth: Int, tokens: Int, weight: String, bias: String, name: String
  ) -> ValueID {
    let rows = graph.reshape(x, to: [-1, inWidth], name: name + "/rows")
    let w = graph.addInitializer(name: weight, normal([outWidth, inWidth], std: 0.02))
    let b = graph.addInitializer(name: bias, Tensor(zeros: [outWidth]))
    let y = graph.addNode(.gemm(GemmAttributes(transB: true)), name: name, inputs: [rows, w, b])[0]
    return graph.reshape(y, to: [-1, tokens, outWidth], name: name + "/tokens")
  }

  /// nn.MultiheadAttention(dim, heads) on [N, tokens, dim] (query = key = value):
  /// softmax(Q·Kᵀ/√(dim/heads))·V per head, Q, K and V from one packed projection.
  mutating func selfAttention(_ x: ValueID, _ s: VisionTransformerShape, name: String) -> ValueID {
    let (d, t, h) = (s.dim, s.tokens, s.heads)
    let qkv = tokenLinear(x, d, 3 * d, tokens: t, weight: name + ".in_proj_weight", bias: name + ".in_proj_bias", name: name + ".in_proj")
    func heads(_ k: Int, _ label: String) -> ValueID {
      let part = graph.slice(qkv, SliceAttributes(starts: [k * d], ends: [(k + 1) * d], axes: [2]), name: "\(name)/\(label)")
      let split = graph.reshape(part, to: [0, t, h, d / h], name: "\(name)/\(label)_heads")
      return graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: "\(name)/\(label)_by_head", inputs: [split])[0]
    }
    let (q, k, v) = (heads(0, "q"), heads(1, "k"), heads(2, "v"))
    let kt = graph.addNode(.transpose(permutation: [0, 1, 3, 2]), name: name + "/k_t", inputs: [k])[0]
    var y = graph.addNode(.matMul, name: name + "/scores", inputs: [q, kt])[0]
    let scale = graph.addInitializer(name: name + "/scale", Tensor(shape: [1], repeating: 1 / Float(d / h).squareRoot()))
    y = graph.mul(y, scale, name: name + "/scaled")
    y = graph.softmax(y, axis: -1, name: name + "/weights")
    y = graph.addNode(.matMul, name: name + "/mix", inputs: [y, v])[0]
    y = graph.addNode(.transpose(permutation: [0, 2, 1, 3]), name: name + "/merge", inputs: [y])[0]
    y = graph.reshape(y, to: [0, t, d], name: name + "/concat_heads")
    return tokenLinear(y, d, d, tokens: t, weight: name + ".out_proj.weight", bias: name + ".out_proj.bias", name: name + ".out_proj")
  }
}

extension ModelInfo {
  public static let vitB16 = ModelInfo(
    name: "vit_b_16", paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", year: 2020,
    reference: "torchvision.models.vit_b_16", inputShape: [1, 3, 224, 224], transform: .imageNet(),
    parameterCount: 86_567_656,
    summary: "12 encoder blocks of 12-head self-attention on 197 tokens of 768 (16×16 patches and a class token)")

  public static let vitTi16 = ModelInfo(
    name: "vit_ti_16", paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", year: 2020,
    reference: "torchvision.models.VisionTransformer(16, 12, 3, 192, 768) (ViT-Ti/16, DeiT-Tiny's shapes)",
    inputShape: [1, 3, 224, 224], transform: .imageNet(interpolation: "bicubic"), parameterCount: 5_717_416,
    summary: "12 encoder blocks of 3-head self-attention on 197 tokens of 192 (16×16 patches and a class token)")
}
