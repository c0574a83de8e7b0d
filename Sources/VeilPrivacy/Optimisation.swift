import Foundation
import VeilGraph
import VeilTensor
import VeilTrain

// The optimisation attack (regularised maximum likelihood: He, Zhang, Lee, ACSAC 2019; the
// inversion of Mahendran & Vedaldi, CVPR 2015): find the image x whose features under the
// head come closest to the observed ones, ‖f(x) − v‖² / ‖v‖², plus a total-variation prior,
// by Adam on the pixels. The white-box attacker differentiates the real head (its weights are
// known); the black-box one a substitute it trained from queries.

/// Settings of one optimisation.
public struct FeatureInversion: Sendable {
  public var steps: Int
  public var learningRate: Float
  public var tvWeight: Float
  public var tvBeta: Float
  public var restarts: Int
  /// Images optimised together.
  public var batch: Int
  public var seed: UInt64
  /// Whether `calibrate` runs every step (else a third, as results before the option did).
  public var calibrationAtFullSteps: Bool

  public init(_ config: AttackConfig) {
    steps = config.optimisationSteps
    learningRate = config.optimisationLearningRate
    tvWeight = config.tvWeight
    tvBeta = config.tvBeta
    restarts = config.restarts
    batch = config.optimisationBatch
    seed = config.seed
    calibrationAtFullSteps = config.calibrationAtFullSteps ?? false
  }

  /// The result: the images [N, C, S, S] on the [-1, 1] scale, each one's final feature
  /// distance, and the objective every tenth step of the first batch and restart.
  public struct Outcome {
    public var images: Tensor
    public var distances: [Double]
    public var curve: [CurvePoint]
  }

  /// Rebuilds one image per row of `targets` through `head` (a function on the tape from
  /// images [n, C, S, S] in [-1, 1] to features shaped as `targets`' rows). The first restart
  /// starts from `starts` (one image per row: another attacker's reconstructions) when given,
  /// from grey otherwise. After each batch, `stop` sees the images rebuilt so far (the first
  /// rows, in order); when it says so, the rest are not rebuilt and the outcome holds those.
  public func run(
    head: (Variable) throws -> Variable, targets: Tensor, imageShape: [Int], starts: Tensor? = nil,
    progress: (AttackProgress) -> Void = { _ in }, stop: ((Tensor) throws -> Bool)? = nil
  ) throws -> Outcome {
    guard imageShape.count == 3 else { throw PrivacyError.invalidConfig("image shape \(imageShape) is not [C, S, S]") }
    let n = targets.shape[0]
    if let starts, starts.shape != [n] + imageShape {
      throw PrivacyError.invalidConfig("the starting images are \(starts.shape), the optimisation rebuilds \([n] + imageShape)")
    }
    var best = [Double](repeating: .infinity, count: n)
    let per = imageShape.reduce(1, *)
    var images = Tensor(zeros: [n] + imageShape)
    var curve: [CurvePoint] = []
    let started = Date()
    let batches = (n + batch - 1) / batch
    let total = Double(batches * restarts * steps)
    var done = 0.0
    for b in 0..<batches {
      let rows = Array((b * batch)..<min(n, (b + 1) * batch))
      let target = gather(targets, rows)
      for r in 0..<restarts {
        var generator = SeededGenerator(seed: seed &+ UInt64(r) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(b))
        let start =
          r == 0
          ? starts.map { gather($0, rows) } ?? Tensor(zeros: [rows.count] + imageShape)
          : Tensor.randomUniform(shape: [rows.count] + imageShape, low: -0.5, high: 0.5, generator: &generator)
        let x = Variable(start, requiresGrad: true, name: "image")
        let adam = try Adam(parameters: [x], learningRate: learningRate, beta1: 0.9)
        for step in 1...steps {
          // Cosine decay from the learning rate to a tenth of it.
          let phase = Float(step - 1) / Float(max(steps - 1, 1))
          adam.learningRate = learningRate * (0.1 + 0.45 * (1 + cos(Float.pi * phase)))
          let features = try head(x)
          guard features.shape == target.shape else {
            throw PrivacyError.invalidConfig("the head gives features \(features.shape), the observed ones are \(target.shape)")
          }
          var loss = try featureMatchingLoss(features, target)
          if tvWeight > 0 {
            let prior = try totalVariation(x, beta: tvBeta)
            loss = try add(loss, try mul(prior, Variable(Tensor(shape: [1], repeating: tvWeight))))
          }
          let value = Double(loss.value.scalars[0])
          guard value.isFinite else {
            throw PrivacyError.nonFiniteLoss(
              step: step, epoch: 0, loss: "feature-matching",
              advice: "Lower the optimisation learning rate (--opt-lr, now \(learningRate)) or the prior's weight (--tv-weight, now \(tvWeight)).")
          }
          adam.zeroGradients()
          try loss.backward()
          try adam.step()
          x.value = Kernels.map(x.value) { min(max($0, -1), 1) }
          if b == 0, r == 0, step == 1 || step % 10 == 0 || step == steps { curve.append(CurvePoint(at: step, loss: value)) }
          done += 1
          let elapsed = Date().timeIntervalSince(started)
          progress(
            .optimisation(
              step: step, steps: steps, restart: r + 1, restarts: restarts, loss: value,
              etaSeconds: elapsed / done * (total - done)))
        }
        // Keep, per image, the restart whose features come closest: the attacker can tell
        // without the original.
        let distances = featureDistances(try head(Variable(x.value)).value, target)
        x.value.withUnsafeBuffer { src in
          images.withUnsafeMutableBuffer { dst in
            for (k, row) in rows.enumerated() where distances[k] < best[row] {
              best[row] = distances[k]
              (dst.baseAddress! + row * per).update(from: src.baseAddress! + k * per, count: per)
            }
          }
        }
      }
      let rebuilt = rows.last! + 1
      if rebuilt < n, let stop {
        let first = gather(images, Array(0..<rebuilt))
        if try stop(first) { return Outcome(images: first, distances: Array(best.prefix(rebuilt)), curve: curve) }
      }
    }
    return Outcome(images: images, distances: best, curve: curve)
  }
}

extension FeatureInversion {
  /// Picks the prior's weight an attacker would: each of `weights` rebuilds the attacker's own
  /// images (whose originals it has) with the attack's own steps (a third of them for results
  /// recorded before `calibrationAtFullSteps`), one restart, and the weight with the best mean
  /// SSIM wins. Returns it and a line for the report.
  /// With `starts` (another attacker's reconstructions of the same photos), each weight
  /// refines those, and the starts themselves compete too: when none of the weights improves
  /// on them the result's weight is nil, and the attacker keeps the starts as they are.
  public func calibrate(
    head: (Variable) throws -> Variable, on own: FeaturePairs, weights: [Float], starts: Tensor? = nil,
    progress: (AttackProgress) -> Void = { _ in }
  ) throws -> (Float?, String) {
    var trial = self
    if !calibrationAtFullSteps { trial.steps = max(20, steps / 3) }
    trial.restarts = 1
    let shape = Array(own.images.shape.dropFirst())
    let count = own.images.shape[0]
    func meanSSIM(_ rebuilt: Tensor) throws -> Double {
      try (0..<count).map { try SSIM.score(unitImage(own.images, $0), unitImage(rebuilt, $0)) }.reduce(0, +) / Double(count)
    }
    var best: (weight: Float?, ssim: Double) = (tvWeight, -.infinity)
    var scores: [String] = []
    if let starts {
      best = (nil, try meanSSIM(starts))
      scores.append(String(format: "unrefined: %.3f", best.ssim))
    }
    func score(_ w: Float) throws -> Double {
      trial.tvWeight = w
      progress(.message("calibrating the prior: weight \(w) on \(count) of the attacker's own photos"))
      let ssim = try meanSSIM(try trial.run(head: head, targets: own.features, imageShape: shape, starts: starts).images)
      scores.append(String(format: "%g: %.3f", w, ssim))
      if ssim > best.ssim { best = (w, ssim) }
      return ssim
    }
    for w in weights { _ = try score(w) }
    // A best weight at the end of the grid: go on outwards (×3) while it improves.
    let sorted = weights.sorted()
    for (edge, factor): (Float, Float) in [(sorted.last!, 3), (sorted.first!, 1 / 3)] where best.weight == edge && edge > 0 {
      var w = edge
      for _ in 0..<3 {
        w *= factor
        let before = best.ssim
        guard try score(w) > before else { break }
      }
    }
    let chosen = best.weight.map { "prior weight \($0)" } ?? "no refinement (the starting images beat every prior weight)"
    return (
      best.weight,
      "\(chosen) calibrated on \(count) of the attacker's own photos in \(trial.steps) steps (SSIM per weight: \(scores.joined(separator: ", ")))"
    )
  }
}

extension FeatureExtractor {
  /// The head as a function of images on the attackers' scale: a graph that takes [N, 3, S, S]
  /// images in [-1, 1], applies the model's own preprocessing (normalisation, channel order,
  /// luma for one-channel models, as a 1×1 convolution with constant weights; then the
  /// model's layout) and runs the head to the cut, giving the feature map channels first,
  /// [N, C, h, w], as `features(_:)` does.
  public func pixelHead(batch n: Int) throws -> Graph {
    var g = head
    guard let input = g.inputs.first else { throw PrivacyError.cut(name: cut.name, detail: "the head has no input") }
    let s = imageSize
    let pixels = g.addInput(name: "veil.pixels", shape: [n, 3, s, s])
    // x ∈ [-1, 1] is the pixel 127.5·(x + 1); the model sees (pixel − mean_c) / std_c of its
    // channel c, read from source channel src(c) (BGR reverses), or of the luma.
    let norm = inputChannels == 1 ? preprocessing.normalization.luma : preprocessing.normalization
    let c = inputChannels
    var weights = [Float](repeating: 0, count: c * 3)
    var bias = [Float](repeating: 0, count: c)
    for k in 0..<c {
      let mean = norm.mean[norm.mean.count == 1 ? 0 : k]
      let std = norm.std[norm.std.count == 1 ? 0 : k]
      if c == 1 {
        let luma: [Float] = [0.299, 0.587, 0.114]
        for j in 0..<3 { weights[j] = 127.5 * luma[j] / std }
      } else {
        let source = preprocessing.channelOrder == .bgr && k < 3 ? 2 - k : k
        weights[k * 3 + source] = 127.5 / std
      }
      bias[k] = (127.5 - mean) / std
    }
    var normalised = g.conv(
      pixels, weight: try Tensor(shape: [c, 3, 1, 1], values: weights), bias: try Tensor(shape: [c], values: bias), .square(1),
      name: "veil.preprocess")
    if inputLayout == .nhwc {
      normalised = g.addNode(.transpose(permutation: [0, 2, 3, 1]), name: "veil.to_nhwc", inputs: [normalised])[0]
    }
    // The old input becomes the preprocessing's output.
    let added = g.nodes.count - (inputLayout == .nhwc ? 2 : 1)
    for i in 0..<added {
      g.nodes[i].inputs = g.nodes[i].inputs.map { $0 == input ? normalised : $0 }
    }
    g.inputs = [pixels]
    switch featureLayout {
    case .channelsFirst: break
    case .channelsLast:
      g.outputs = [g.addNode(.transpose(permutation: [0, 3, 1, 2]), name: "veil.to_nchw", inputs: [g.outputs[0]])[0]]
    case .tokens(let grid, let cls):
      g.outputs = [tokenMap(&g, g.outputs[0], grid: grid, classToken: cls, batch: n)]
    }
    try g.sortTopologically()
    g.removeDeadCode()
    try g.inferShapes(inputShapes: [pixels: [n, 3, s, s]])
    return g
  }

  /// Tokens [n, T, D] as the attackers' map (`CutTensorLayout.tokens`), in graph ops: the
  /// patch tokens transposed to [n, D, g, g]; the class token divided by g and broadcast over
  /// the grid (added to a constant zero map), concatenated after them.
  func tokenMap(_ g: inout Graph, _ tokens: ValueID, grid: Int, classToken: Bool, batch n: Int) -> ValueID {
    let d = classToken ? featureShape[0] / 2 : featureShape[0]
    let first = classToken ? 1 : 0
    var patches = g.slice(tokens, SliceAttributes(starts: [first], ends: [first + grid * grid], axes: [1]), name: "veil.patch_tokens")
    patches = g.addNode(.transpose(permutation: [0, 2, 1]), name: "veil.patch_channels", inputs: [patches])[0]
    patches = g.reshape(patches, to: [0, d, grid, grid], name: "veil.patch_map")
    guard classToken else { return patches }
    var cls = g.slice(tokens, SliceAttributes(starts: [0], ends: [1], axes: [1]), name: "veil.class_token")
    cls = g.reshape(cls, to: [0, d, 1, 1], name: "veil.class_channels")
    let scale = g.addInitializer(name: "veil/class_scale", Tensor(shape: [1], repeating: 1 / Float(grid)))
    cls = g.mul(cls, scale, name: "veil.class_scaled")
    let zeros = g.addInitializer(name: "veil/class_grid", Tensor(zeros: [1, d, grid, grid]))
    cls = g.add(cls, zeros, name: "veil.class_map")
    return g.concat([patches, cls], axis: 1, name: "veil.token_map")
  }

  /// The head on the tape with every weight frozen (no weight gradients, BatchNorm on its
  /// running statistics, Dropout off): d(features)/d(image) only, for the optimisation attack.
  public func differentiableHead(batch n: Int) throws -> GraphModel {
    try GraphModel(frozen: try pixelHead(batch: n))
  }
}
