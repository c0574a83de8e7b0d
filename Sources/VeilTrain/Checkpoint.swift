import Foundation
import VeilFormats
import VeilTensor

/// Parameters (and BatchNorm running statistics, and Adam's state) as one safetensors file,
/// under the parameters' names (PyTorch's state_dict keys for the same layers), so a run can
/// stop and resume exactly where it was.
public enum Checkpoint {
  static let stepKey = "veil.adam.step"

  public static func save(
    parameters: [Variable], batchNorms: [BatchNorm] = [], optimizer: Adam? = nil, metadata: [String: String] = [:],
    to url: URL
  ) throws {
    try checkNames(parameters, url)
    var tensors = parameters.map { (name: $0.name, tensor: $0.value) }
    tensors += batchNorms.flatMap(\.buffers)
    var meta = metadata
    if let optimizer {
      guard optimizer.parameters.map(ObjectIdentifier.init) == parameters.map(ObjectIdentifier.init) else {
        throw TrainError.checkpoint(file: url.path, detail: "the optimiser updates other parameters than those saved")
      }
      for (k, p) in parameters.enumerated() {
        tensors.append(("adam.m.\(p.name)", optimizer.firstMoments[k]))
        tensors.append(("adam.v.\(p.name)", optimizer.secondMoments[k]))
      }
      meta[stepKey] = String(optimizer.stepCount)
    }
    try Safetensors.write(tensors, metadata: meta, to: url)
  }

  /// Loads what `save` wrote into the same parameters; every parameter must be present with
  /// its shape. Returns the file's metadata.
  @discardableResult
  public static func load(
    into parameters: [Variable], batchNorms: [BatchNorm] = [], optimizer: Adam? = nil, from url: URL
  ) throws -> [String: String] {
    try checkNames(parameters, url)
    let file = try Safetensors.readFile(url)
    let stored = file.dictionary
    func tensor(_ name: String, _ shape: [Int]) throws -> Tensor {
      guard let t = stored[name] else {
        throw TrainError.checkpoint(file: url.path, detail: "no tensor '\(name)' (it holds \(stored.count) tensors)")
      }
      guard t.shape == shape else {
        throw TrainError.checkpoint(file: url.path, detail: "'\(name)' has shape \(t.shape), the model wants \(shape)")
      }
      return t
    }
    let values = try parameters.map { try tensor($0.name, $0.shape) }
    let statistics = try batchNorms.map { bn in
      try bn.buffers.map { try tensor($0.name, $0.tensor.shape) }
    }
    var adamState: (Int, [Tensor], [Tensor])?
    if optimizer != nil {
      guard let s = file.metadata[stepKey], let step = Int(s) else {
        throw TrainError.checkpoint(file: url.path, detail: "no Adam state in it (saved without an optimiser?)")
      }
      adamState = (
        step, try parameters.map { try tensor("adam.m.\($0.name)", $0.shape) },
        try parameters.map { try tensor("adam.v.\($0.name)", $0.shape) }
      )
    }
    // Everything was found and checked: only now change the model.
    for (p, v) in zip(parameters, values) { p.value = v }
    for (bn, s) in zip(batchNorms, statistics) { try bn.load(runningMean: s[0], runningVariance: s[1]) }
    if let optimizer, let (step, m, v) = adamState {
      try optimizer.restore(stepCount: step, firstMoments: m, secondMoments: v)
    }
    return file.metadata
  }

  private static func checkNames(_ parameters: [Variable], _ url: URL) throws {
    var seen: Set<String> = []
    for p in parameters {
      guard !p.name.isEmpty, seen.insert(p.name).inserted else {
        throw TrainError.checkpoint(
          file: url.path, detail: p.name.isEmpty ? "a parameter of shape \(p.shape) has no name" : "two parameters are named '\(p.name)'")
      }
    }
  }
}
