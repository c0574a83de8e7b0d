import Foundation
import VeilFormats
import VeilTensor
import VeilTrain

// The epoch loop the learning-based attackers share (the generator of the c-GAN and of the
// inverse network, and the substitute head): shuffled batches, a checkpoint after every epoch,
// and the stopping rule on the validation loss, with the best epoch's weights kept.

/// Where training stands: the learning curve and the stopping rule's state. Saved in every
/// checkpoint, so a resumed attack continues the same rule.
public struct StoppingState: Codable, Sendable, Equatable {
  public var curve: [CurvePoint] = []
  /// The epoch with the lowest validation loss so far (0: none yet) and that loss.
  public var bestEpoch = 0
  public var bestLoss = Double.infinity
  /// Epochs in a row without an improvement of at least 1 %.
  public var epochsWithoutImprovement = 0
  /// The rule has fired: training converged and stopped before the last epoch.
  public var stopped = false

  public init() {}

  /// Records an epoch; returns whether its weights are the best so far (the lowest
  /// validation loss). Only an improvement of at least 1 % resets the patience count.
  public mutating func record(epoch: Int, loss: Double, validation: Double?, patience: Int) -> Bool {
    curve.append(CurvePoint(at: epoch, loss: loss, validation: validation))
    guard let validation else { return false }
    let first = bestEpoch == 0
    if first || validation < bestLoss * 0.99 {
      epochsWithoutImprovement = 0
    } else {
      epochsWithoutImprovement += 1
    }
    let best = first || validation < bestLoss
    if best {
      bestLoss = validation
      bestEpoch = epoch
    }
    if patience > 0, epochsWithoutImprovement >= patience { stopped = true }
    return best
  }

  /// Training stopped by the rule, or its validation loss had stopped improving by 1 % when
  /// the epochs ran out.
  public var converged: Bool { stopped || (bestEpoch > 0 && epochsWithoutImprovement > 0) }
}

/// One epoch loop over `count` examples in shuffled batches.
struct EpochLoop {
  let config: AttackConfig

  /// Steps per epoch: whole batches; a last partial batch of at least two examples is kept.
  func stepsPerEpoch(_ n: Int) -> Int { n / config.batch + (n % config.batch >= 2 ? 1 : 0) }

  /// Trains epochs after `state.curve.last` until `config.epochs` or the stopping rule.
  /// `step(rows, globalStep, epoch)` trains on a batch and returns its losses; `validate()`
  /// the validation loss (nil: no validation set); `checkpoint(epoch, state, isBest)` saves.
  /// Returns the seconds spent in steps and the steps taken.
  func run(
    count n: Int, state: inout StoppingState,
    step: ([Int], Int, Int) throws -> (Double, Double?),
    validate: () throws -> Double?,
    checkpoint: (Int, StoppingState, Bool) throws -> Void,
    progress: (AttackProgress) -> Void
  ) throws -> (seconds: Double, steps: Int) {
    let steps = stepsPerEpoch(n)
    let first = (state.curve.last?.at ?? 0) + 1
    guard !state.stopped, first <= config.epochs else { return (0, 0) }
    var trainSeconds = 0.0
    let totalSteps = (config.epochs - first + 1) * steps
    var doneSteps = 0
    for epoch in first...config.epochs {
      let start = Date()
      var order = Array(0..<n)
      var rng = SeededGenerator(seed: config.seed &+ UInt64(epoch) &* 0x2545_F491_4F6C_DD1D)
      for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
      var sumG = 0.0
      var sumD = 0.0
      var sawD = false
      for s in 0..<steps {
        let rows = Array(order[(s * config.batch)..<min(n, (s + 1) * config.batch)])
        let (g, d) = try step(rows, (epoch - 1) * steps + s + 1, epoch)
        sumG += g
        if let d {
          sumD += d
          sawD = true
        }
        doneSteps += 1
        let elapsed = trainSeconds + Date().timeIntervalSince(start)
        progress(
          .step(
            epoch: epoch, epochs: config.epochs, step: s + 1, steps: steps, generatorLoss: g, discriminatorLoss: d,
            etaSeconds: elapsed / Double(doneSteps) * Double(totalSteps - doneSteps)))
      }
      trainSeconds += Date().timeIntervalSince(start)
      let loss = sumG / Double(steps)
      let validation = try validate()
      let best = state.record(epoch: epoch, loss: loss, validation: validation, patience: config.patience)
      try checkpoint(epoch, state, best)
      progress(
        .epochDone(
          epoch: epoch, epochs: config.epochs, generatorLoss: loss, discriminatorLoss: sawD ? sumD / Double(steps) : nil,
          seconds: Date().timeIntervalSince(start)))
      if let validation {
        progress(
          .message(
            String(format: "epoch %d: validation L1 %.4f (best %.4f at epoch %d)%@", epoch, validation, state.bestLoss, state.bestEpoch,
              state.stopped ? "; no 1 % improvement for \(config.patience) epochs: converged, stopping" : "")))
      }
      if state.stopped { break }
    }
    return (trainSeconds, doneSteps)
  }
}

/// Rows `rows` of a batch tensor, as a new batch.
func gather(_ t: Tensor, _ rows: [Int]) -> Tensor {
  let per = t.count / t.shape[0]
  return t.withUnsafeBuffer { src in
    Tensor(shape: [rows.count] + t.shape.dropFirst()) { dst in
      for (k, r) in rows.enumerated() {
        (dst.baseAddress! + k * per).update(from: src.baseAddress! + r * per, count: per)
      }
    }
  }
}

/// Batches joined along the first axis.
func stack(_ parts: [Tensor]) throws -> Tensor {
  guard let first = parts.first else { throw PrivacyError.invalidConfig("nothing to stack") }
  let tail = Array(first.shape.dropFirst())
  guard parts.allSatisfy({ Array($0.shape.dropFirst()) == tail }) else {
    throw PrivacyError.invalidConfig("batches of different shapes")
  }
  let n = parts.reduce(0) { $0 + $1.shape[0] }
  return Tensor(shape: [n] + tail) { dst in
    var offset = 0
    for p in parts {
      p.withUnsafeBuffer { (dst.baseAddress! + offset).update(from: $0.baseAddress!, count: $0.count) }
      offset += p.count
    }
  }
}

/// Runs `f` on `t` in batches of `batch` rows and joins the results.
func batched(_ t: Tensor, batch: Int, _ f: (Tensor) throws -> Tensor) throws -> Tensor {
  let n = t.shape[0]
  var parts: [Tensor] = []
  var start = 0
  while start < n {
    let rows = Array(start..<min(n, start + batch))
    parts.append(try f(gather(t, rows)))
    start += rows.count
  }
  return try stack(parts)
}

/// Writes through a temporary file and a rename, so an interrupted run never leaves half a file.
func atomically(_ url: URL, _ write: (URL) throws -> Void) throws {
  let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
  try write(tmp)
  _ = try? FileManager.default.removeItem(at: url)
  try FileManager.default.moveItem(at: tmp, to: url)
}

func writeJSON<T: Encodable>(_ value: T, to url: URL) throws {
  try atomically(url) { try VeilJSON.encoder().encode(value).write(to: $0) }
}
