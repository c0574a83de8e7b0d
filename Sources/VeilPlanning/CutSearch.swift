import Foundation
import VeilPrivacy

/// How much evidence the planner gathers before it chooses: the privacy layer's budget (which
/// attackers, how many seeds, how long they train), and here how many cuts the search attacks.
public typealias PlanBudget = PrivacyBudget

extension PrivacyBudget {
  /// How many cuts the search evaluates on `cutCount` cuts, about: quick and standard bisect
  /// for the earliest private cut and evaluate its neighbours (they differ in how hard each cut
  /// is attacked, not in where); thorough evaluates every cut.
  public func cutsExpected(cutCount: Int) -> Int {
    let bisection = Int(ceil(log2(Double(max(cutCount, 2))))) + 1
    switch self {
    case .quick, .standard: return min(cutCount, bisection + 2)
    case .thorough: return cutCount
    }
  }
}

/// Chooses the earliest private cut, evaluating as few cuts as the budget allows. Privacy
/// usually improves with depth, so bisection finds a candidate; the candidate's neighbours
/// are then evaluated rather than assumed. The final choice applies `PrivacyChoice` (the rule
/// `veil privacy` uses) to every cut evaluated: the earliest cut from which every evaluated
/// deeper cut is private.
public struct CutSearch {
  public var cutCount: Int
  public var budget: PlanBudget

  public init(cutCount: Int, budget: PlanBudget) {
    self.cutCount = cutCount
    self.budget = budget
  }

  public struct Outcome: Sendable, Equatable {
    /// Index of the chosen cut, or nil when no cut is private.
    public var chosen: Int?
    /// The cuts evaluated, in the order they were evaluated.
    public var attacked: [Int]

    public init(chosen: Int?, attacked: [Int]) {
      self.chosen = chosen
      self.attacked = attacked
    }
  }

  /// Runs the search; `evaluate(k)` judges cut k (or returns what an earlier, resumed run
  /// found) and says whether it is private. Each cut is evaluated at most once.
  public func run(_ evaluate: (Int) throws -> Bool) throws -> Outcome {
    var known: [Int: Bool] = [:]
    var order: [Int] = []
    func passes(_ k: Int) throws -> Bool {
      if let p = known[k] { return p }
      let p = try evaluate(k)
      known[k] = p
      order.append(k)
      return p
    }
    func outcome() -> Outcome {
      Outcome(chosen: PrivacyChoice.earliest(known.map { ($0.key, $0.value) }), attacked: order)
    }
    guard cutCount > 0 else { return Outcome(chosen: nil, attacked: []) }

    if budget == .thorough {
      for k in 0..<cutCount { _ = try passes(k) }
      return outcome()
    }

    var low = 0  // every cut below `low` is known (or assumed by bisection) not to be chosen
    while low < cutCount {
      var lo = low, hi = cutCount - 1
      guard try passes(hi) else { return outcome() }
      while lo < hi {
        let mid = (lo + hi) / 2
        if try passes(mid) { hi = mid } else { lo = mid + 1 }
      }
      let candidate = lo
      // Verify the neighbours rather than assume monotonicity.
      if candidate > 0, try passes(candidate - 1) {
        // A shallower cut passes too: bisection skipped over it; look below.
        var k = candidate - 1
        while k > low, try passes(k - 1) { k -= 1 }
        return outcome()
      }
      if candidate + 1 < cutCount, try !passes(candidate + 1) {
        low = candidate + 2
        continue
      }
      return outcome()
    }
    return outcome()
  }
}
