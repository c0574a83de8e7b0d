import Foundation
import VeilPrivacy

/// The privacy figure of one attacked cut, as the planner and the report read it (the privacy
/// layer's attack result, reduced to what choosing and showing a cut needs).
public struct PrivacyPoint: Sendable, Codable, Equatable {
  /// Position of the cut in the profile's order (0 = shallowest) and its name.
  public var cutIndex: Int
  public var cut: String
  public var attacker: String
  public var ssimMean: Double
  public var ssimStd: Double
  /// The one-sided upper confidence bound of the mean SSIM the choice is made on.
  public var ssimUpper: Double
  public var psnrMean: Double
  public var psnrStd: Double
  public var heldOut: Int
  public var trainImages: Int
  public var seconds: Double
  /// The held-out originals above their reconstructions, relative to the plan's folder.
  public var gridPNG: String?

  public init(
    cutIndex: Int, cut: String, attacker: String, ssimMean: Double, ssimStd: Double, ssimUpper: Double,
    psnrMean: Double, psnrStd: Double, heldOut: Int, trainImages: Int, seconds: Double, gridPNG: String? = nil
  ) {
    self.cutIndex = cutIndex
    self.cut = cut
    self.attacker = attacker
    self.ssimMean = ssimMean
    self.ssimStd = ssimStd
    self.ssimUpper = ssimUpper
    self.psnrMean = psnrMean
    self.psnrStd = psnrStd
    self.heldOut = heldOut
    self.trainImages = trainImages
    self.seconds = seconds
    self.gridPNG = gridPNG
  }
}

/// How much evidence the planner gathers before it chooses.
public enum PlanBudget: String, Sendable, Codable, CaseIterable {
  /// Bisection for the earliest passing cut, then its shallower neighbour and the next deeper
  /// cut are checked (about log2(cuts) + 2 attacks).
  case quick
  /// As quick, and both neighbours of every cut bisection visits are attacked, so a
  /// non-monotone curve near the choice is seen.
  case standard
  /// Every cut is attacked.
  case thorough
}

/// The statistics the choice rests on.
public enum PrivacyStatistics {
  /// One-sided Student t quantile at 95 % for `dof` degrees of freedom (the privacy layer's).
  public static func t95(dof: Int) -> Double {
    dof >= 1 ? StudentT.quantile95(degreesOfFreedom: dof) : .infinity
  }

  /// Mean SSIM + t95 · s / √n: the bound a cut's SSIM must stay under to be chosen.
  public static func upperBound(mean: Double, std: Double, count: Int) -> Double {
    guard count >= 2 else { return .infinity }
    return mean + t95(dof: count - 1) * std / Double(count).squareRoot()
  }

  /// Held-out images needed for the bound to lie within `margin` of the mean when the SSIM of
  /// single images spreads by `std` (0.1 is typical of reconstructions on natural photos).
  public static func heldOutNeeded(margin: Double, std: Double = 0.1) -> Int {
    var n = 2
    while Double(n) < 10_000, t95(dof: n - 1) * std / Double(n).squareRoot() > margin { n += 1 }
    return n
  }
}

/// Chooses the earliest cut whose SSIM upper bound stays under the threshold, attacking as few
/// cuts as the budget allows. Privacy usually improves with depth, so bisection finds a
/// candidate; the candidate's neighbours are then attacked rather than assumed. A cut is
/// chosen only when it passes and the next deeper cut (if any) passes too; when that deeper
/// cut fails, the curve is not monotone there and the search continues deeper.
public struct CutSearch {
  public var cutCount: Int
  public var threshold: Double
  public var budget: PlanBudget

  public init(cutCount: Int, threshold: Double, budget: PlanBudget) {
    self.cutCount = cutCount
    self.threshold = threshold
    self.budget = budget
  }

  public struct Outcome: Sendable, Equatable {
    /// Index of the chosen cut, or nil when no cut is private enough.
    public var chosen: Int?
    /// The cuts attacked, in the order they were attacked.
    public var attacked: [Int]

    public init(chosen: Int?, attacked: [Int]) {
      self.chosen = chosen
      self.attacked = attacked
    }
  }

  /// Runs the search; `evaluate(k)` attacks cut k (or returns what an earlier, resumed run
  /// measured) and gives its SSIM upper bound. Each cut is evaluated at most once.
  public func run(_ evaluate: (Int) throws -> Double) throws -> Outcome {
    var known: [Int: Double] = [:]
    var order: [Int] = []
    func upper(_ k: Int) throws -> Double {
      if let u = known[k] { return u }
      let u = try evaluate(k)
      known[k] = u
      order.append(k)
      return u
    }
    func passes(_ k: Int) throws -> Bool { try upper(k) < threshold }
    guard cutCount > 0 else { return Outcome(chosen: nil, attacked: []) }

    if budget == .thorough {
      for k in 0..<cutCount { _ = try upper(k) }
      // The earliest cut from which every deeper cut passes.
      var chosen: Int?
      for k in stride(from: cutCount - 1, through: 0, by: -1) {
        if try passes(k) { chosen = k } else { break }
      }
      return Outcome(chosen: chosen, attacked: order)
    }

    var low = 0  // every cut below `low` is known (or assumed by bisection) to fail
    while low < cutCount {
      // Bisection on [low, cutCount − 1] for the earliest passing cut.
      var lo = low, hi = cutCount - 1
      guard try passes(hi) else { return Outcome(chosen: nil, attacked: order) }
      while lo < hi {
        let mid = (lo + hi) / 2
        if budget == .standard {
          if mid > low { _ = try upper(mid - 1) }
          if mid + 1 < cutCount { _ = try upper(mid + 1) }
        }
        if try passes(mid) { hi = mid } else { lo = mid + 1 }
      }
      let candidate = lo
      // Verify the neighbours rather than assume monotonicity.
      if candidate > 0, try passes(candidate - 1) {
        // A shallower cut passes too: bisection skipped over it; look below.
        // Every cut from k up to the candidate passes, so k is chosen.
        var k = candidate - 1
        while k > low, try passes(k - 1) { k -= 1 }
        return Outcome(chosen: k, attacked: order)
      }
      if candidate + 1 < cutCount, try !passes(candidate + 1) {
        low = candidate + 2
        continue
      }
      return Outcome(chosen: candidate, attacked: order)
    }
    return Outcome(chosen: nil, attacked: order)
  }
}
