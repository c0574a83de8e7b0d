import Foundation
import VeilTensor

/// Updates parameters from their accumulated gradients.
public protocol Optimizer: AnyObject {
  var parameters: [Variable] { get }
  /// One update; parameters without a gradient (unused this step) are left alone.
  func step() throws
}

extension Optimizer {
  /// Clears every parameter's gradient before the next backward pass.
  public func zeroGradients() {
    for p in parameters { p.grad = nil }
  }
}

/// Adam (Kingma & Ba 2015) with bias correction; weight decay adds λ·θ to the gradient, as
/// PyTorch's `Adam(weight_decay=λ)` does (not the decoupled AdamW).
public final class Adam: Optimizer {
  public let parameters: [Variable]
  public var learningRate: Float
  public let beta1: Float
  public let beta2: Float
  public let epsilon: Float
  public let weightDecay: Float
  public let backend: any TrainingBackend
  /// Steps taken, and the first and second moment of each parameter (checkpointed).
  public internal(set) var stepCount = 0
  public internal(set) var firstMoments: [Tensor]
  public internal(set) var secondMoments: [Tensor]

  public init(
    parameters: [Variable], learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
    weightDecay: Float = 0, backend: any TrainingBackend = Backends.training
  ) throws {
    guard learningRate > 0, (0..<1).contains(beta1), (0..<1).contains(beta2), epsilon > 0, weightDecay >= 0 else {
      throw TrainError.invalidArgument(
        "Adam: learning rate \(learningRate) must be > 0, β1 \(beta1) and β2 \(beta2) in [0, 1), ε \(epsilon) > 0, weight decay \(weightDecay) ≥ 0")
    }
    self.parameters = parameters
    self.learningRate = learningRate
    self.beta1 = beta1
    self.beta2 = beta2
    self.epsilon = epsilon
    self.weightDecay = weightDecay
    self.backend = backend
    firstMoments = parameters.map { Tensor(zeros: $0.shape) }
    secondMoments = parameters.map { Tensor(zeros: $0.shape) }
  }

  public func step() throws {
    stepCount += 1
    let c1 = 1 - powf(beta1, Float(stepCount))
    let c2 = 1 - powf(beta2, Float(stepCount))
    let (b1, b2, lr, eps, wd) = (beta1, beta2, learningRate, epsilon, weightDecay)
    for (k, p) in parameters.enumerated() {
      guard let g = p.grad else { continue }
      backend.adamStep(
        weights: &p.value, firstMoment: &firstMoments[k], secondMoment: &secondMoments[k], gradient: g, beta1: b1,
        beta2: b2, learningRate: lr, biasCorrection1: c1, biasCorrection2: c2, epsilon: eps, weightDecay: wd)
    }
  }

  /// Restores the moments and step count saved by `Checkpoint`.
  public func restore(stepCount: Int, firstMoments m: [Tensor], secondMoments v: [Tensor]) throws {
    guard m.count == parameters.count, v.count == parameters.count,
      Swift.zip(parameters, Swift.zip(m, v)).allSatisfy({ $0.shape == $1.0.shape && $0.shape == $1.1.shape })
    else {
      throw TrainError.invalidArgument("Adam state does not match the \(parameters.count) parameters it is restored into")
    }
    self.stepCount = stepCount
    firstMoments = m
    secondMoments = v
  }
}

/// Stochastic gradient descent with momentum as PyTorch defines it: b ← μ·b + (g + λ·θ),
/// θ ← θ − lr·b (the first step sets b to the gradient).
public final class SGD: Optimizer {
  public let parameters: [Variable]
  public var learningRate: Float
  public let momentum: Float
  public let weightDecay: Float
  private var buffers: [Tensor?]

  public init(parameters: [Variable], learningRate: Float, momentum: Float = 0, weightDecay: Float = 0) throws {
    guard learningRate > 0, momentum >= 0, weightDecay >= 0 else {
      throw TrainError.invalidArgument(
        "SGD: learning rate \(learningRate) must be > 0, momentum \(momentum) and weight decay \(weightDecay) ≥ 0")
    }
    self.parameters = parameters
    self.learningRate = learningRate
    self.momentum = momentum
    self.weightDecay = weightDecay
    buffers = Array(repeating: nil, count: parameters.count)
  }

  public func step() throws {
    let (mu, lr, wd) = (momentum, learningRate, weightDecay)
    for (k, p) in parameters.enumerated() {
      guard let g = p.grad else { continue }
      let first = buffers[k] == nil
      var b = buffers[k] ?? Tensor(zeros: p.shape)
      g.withUnsafeBuffer { gp in
        b.withUnsafeMutableBuffer { bp in
          p.value.withUnsafeMutableBuffer { w in
            for i in 0..<w.count {
              let gi = gp[i] + wd * w[i]
              bp[i] = first ? gi : mu * bp[i] + gi
              w[i] -= lr * (mu > 0 ? bp[i] : gi)
            }
          }
        }
      }
      buffers[k] = b
    }
  }
}
