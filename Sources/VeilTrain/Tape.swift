/// VeilTrain: reverse-mode automatic differentiation and training for the graph layer.
///
/// Owns the autograd tape (`Variable`, `Tape`), the differentiable ops (one file per family,
/// each op's forward and backward side by side), layers holding parameters, losses, the
/// optimisers (Adam, SGD with momentum), seeded initialisers and safetensors checkpoints, the
/// bridge that trains an inference graph (`GraphModel`: VeilGraph's IR in, trained graph out)
/// and the classifier epoch loop with its metrics (`ClassifierTrainer`). It is
/// DESIGN.md's "autograd for training", which the design lists under the graph layer; it is a
/// layer of its own on purpose, above graph and formats (it reads and writes safetensors
/// checkpoints with VeilFormats) and below privacy, so that the inference engine (VeilGraph's
/// executor and memory planner) carries none of it. It computes
/// through VeilTensor's `TrainingBackend` seam (convolutions with their backward passes, batch
/// normalisation, Adam), taken by each convolution layer and by Adam when it is made
/// (`Backends.training` unless given); the matrix products of `linear`, `gemm` and `matmul`
/// use the process's `Backends.training` at each call. It never names the library behind it; training loops run inside
/// `withBlockReuse`. It must not import the privacy, TEE, serving or planning layers; the
/// attackers in VeilPrivacy are built on it.
import Foundation
import VeilTensor

/// Errors of the training layer, naming the op, shapes and step involved.
public enum TrainError: Error, CustomStringConvertible, Equatable {
  /// Operands whose shapes an op cannot take.
  case shapeMismatch(op: String, detail: String)
  /// A value outside what an op, layer or optimiser accepts.
  case invalidArgument(String)
  /// `backward()` on a value that depends on no parameter or input that wants a gradient.
  case nothingToDifferentiate(String)
  /// A checkpoint that does not fit the parameters it is loaded into.
  case checkpoint(file: String, detail: String)

  public var description: String {
    switch self {
    case .shapeMismatch(let op, let detail): return "\(op): \(detail)"
    case .invalidArgument(let s): return s
    case .nothingToDifferentiate(let s): return "nothing to differentiate: \(s)"
    case .checkpoint(let file, let detail): return "\(file): checkpoint: \(detail)"
    }
  }
}

/// A value on the tape: a tensor, how it was computed (its parents and the backward rule of
/// the op that made it), and, for leaves that want one, the gradient accumulated into it.
/// A class because nodes are shared by every value computed from them.
public final class Variable: @unchecked Sendable {
  /// Parameters are updated in place by optimisers.
  public var value: Tensor
  /// Accumulated ∂loss/∂value of a leaf (parameters, inputs created with `requiresGrad`);
  /// optimisers clear it.
  public var grad: Tensor?
  public let requiresGrad: Bool
  /// The name a parameter is saved under.
  public let name: String
  let parents: [Variable]
  /// Given ∂loss/∂self, the gradient for each parent (nil where a parent needs none).
  let backwardRule: ((Tensor) throws -> [Tensor?])?

  /// A leaf: an input, a constant target, or a parameter (`requiresGrad: true`).
  public init(_ value: Tensor, requiresGrad: Bool = false, name: String = "") {
    self.value = value
    self.requiresGrad = requiresGrad
    self.name = name
    parents = []
    backwardRule = nil
  }

  /// The result of an op. Nothing is recorded when no parent wants a gradient.
  init(_ value: Tensor, parents: [Variable], backward: @escaping (Tensor) throws -> [Tensor?]) {
    self.value = value
    name = ""
    requiresGrad = parents.contains { $0.requiresGrad }
    self.parents = requiresGrad ? parents : []
    backwardRule = requiresGrad ? backward : nil
  }

  public var shape: [Int] { value.shape }

  /// Back-propagates from this value: ∂(Σ seed ⊙ self)/∂leaf is added to every leaf's `grad`.
  /// The seed defaults to ones (so a scalar loss gives ∂loss/∂leaf).
  public func backward(seed: Tensor? = nil) throws {
    guard requiresGrad else {
      throw TrainError.nothingToDifferentiate("this value of shape \(shape) depends on no parameter")
    }
    let start = seed ?? Tensor(shape: shape, repeating: 1)
    guard start.shape == shape else {
      throw TrainError.shapeMismatch(op: "backward", detail: "seed \(start.shape) for a value of shape \(shape)")
    }
    var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): start]
    for node in Tape.order(from: self).reversed() {
      guard let g = grads.removeValue(forKey: ObjectIdentifier(node)) else { continue }
      guard let rule = node.backwardRule else {
        node.grad = try node.grad.map { try Kernels.add($0, g) } ?? g
        continue
      }
      for (parent, pg) in zip(node.parents, try rule(g)) {
        guard let pg else { continue }
        // Work for a frozen weight (or a constant) is wasted work: a rule computes only the
        // gradients its parents want, so a frozen network's backward does no weight work.
        guard parent.requiresGrad else {
          throw TrainError.invalidArgument(
            "backward: an op computed a gradient \(pg.shape) for a value that wants none (a backward rule is wrong)")
        }
        guard pg.shape == parent.shape else {
          throw TrainError.shapeMismatch(
            op: "backward", detail: "gradient \(pg.shape) for a value of shape \(parent.shape) (a backward rule is wrong)")
        }
        let key = ObjectIdentifier(parent)
        grads[key] = try grads[key].map { try Kernels.add($0, pg) } ?? pg
      }
    }
  }
}

/// The tape: the recorded nodes that lead to a value, in topological order (every node after
/// its parents). Nothing more; it knows no op.
public enum Tape {
  public static func order(from root: Variable) -> [Variable] {
    var order: [Variable] = []
    var seen: Set<ObjectIdentifier> = []
    // Iterative depth-first post-order, so deep networks do not exhaust the stack.
    var stack: [(Variable, Int)] = [(root, 0)]
    seen.insert(ObjectIdentifier(root))
    while let (node, next) = stack.popLast() {
      if next < node.parents.count {
        stack.append((node, next + 1))
        let p = node.parents[next]
        if p.requiresGrad, seen.insert(ObjectIdentifier(p)).inserted { stack.append((p, 0)) }
      } else {
        order.append(node)
      }
    }
    return order
  }
}

/// Element-wise loops on plain tensors shared by the op families (public for callers building
/// targets and tests). Always inlined, and run on the storage pointers rather than inside the
/// tensor's closure-taking accessors (another module's, not inlined), so that `f` is inlined
/// into the loop and simple ones vectorise.
public enum Kernels {
  @inline(__always)
  public static func map(_ x: Tensor, _ f: (Float) -> Float) -> Tensor {
    let out = Tensor(uninitialized: x.shape)
    let (src, dst) = (x.storage.pointer, out.storage.pointer)
    for i in 0..<x.count { dst[i] = f(src[i]) }
    withExtendedLifetime(x) {}
    return out
  }

  @inline(__always)
  public static func zip(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) throws -> Tensor {
    guard a.shape == b.shape else {
      throw TrainError.shapeMismatch(op: "element-wise", detail: "\(a.shape) and \(b.shape)")
    }
    let out = Tensor(uninitialized: a.shape)
    let (x, y, dst) = (a.storage.pointer, b.storage.pointer, out.storage.pointer)
    for i in 0..<a.count { dst[i] = f(x[i], y[i]) }
    withExtendedLifetime((a, b)) {}
    return out
  }

  static func add(_ a: Tensor, _ b: Tensor) throws -> Tensor { try zip(a, b, +) }

  static func sum(_ x: Tensor) -> Double {
    x.withUnsafeBuffer { p in
      var s = 0.0
      for i in 0..<p.count { s += Double(p[i]) }
      return s
    }
  }
}
