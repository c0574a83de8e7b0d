import Foundation
import VeilTensor

/// Seeded weight initialisers. Fan-in follows PyTorch: dimension 1 times the kernel's
/// receptive field (so a ConvTranspose weight [in, out, k, k] has fan-in out·k²).
public enum Initializer: Sendable, Equatable {
  case zeros
  case ones
  /// N(mean, std²): pix2pix uses N(0, 0.02²).
  case normal(mean: Float, std: Float)
  /// He et al. 2015, N(0, gain²/fan_in) with gain √(2 / (1 + a²)) for a leaky ReLU of slope a.
  case kaimingNormal(negativeSlope: Float)
  /// U(−b, b) with b = gain·√(3 / fan_in).
  case kaimingUniform(negativeSlope: Float)

  public static func fanIn(_ shape: [Int]) -> Int {
    shape.count < 2 ? max(shape.first ?? 1, 1) : shape[1] * shape.dropFirst(2).reduce(1, *)
  }

  public func tensor(_ shape: [Int], generator: inout SeededGenerator) -> Tensor {
    let gain: (Float) -> Float = { a in (2 / (1 + a * a)).squareRoot() }
    switch self {
    case .zeros: return Tensor(zeros: shape)
    case .ones: return Tensor(shape: shape, repeating: 1)
    case .normal(let mean, let std): return .randomNormal(shape: shape, mean: mean, std: std, generator: &generator)
    case .kaimingNormal(let a):
      return .randomNormal(shape: shape, std: gain(a) / Float(Self.fanIn(shape)).squareRoot(), generator: &generator)
    case .kaimingUniform(let a):
      let b = gain(a) * (3 / Float(Self.fanIn(shape))).squareRoot()
      return .randomUniform(shape: shape, low: -b, high: b, generator: &generator)
    }
  }
}

/// Anything that holds trainable parameters.
public protocol Layer: AnyObject {
  /// Parameters in a fixed order, named for checkpoints.
  var parameters: [Variable] { get }
}

/// A parameter leaf named `name`, initialised by `initializer`.
func parameter(_ name: String, _ shape: [Int], _ initializer: Initializer, _ generator: inout SeededGenerator) -> Variable {
  Variable(initializer.tensor(shape, generator: &generator), requiresGrad: true, name: name)
}
