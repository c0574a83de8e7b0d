import Foundation
import VeilFormats
import VeilGraph
import VeilPrivacy
import VeilServing

public enum PlanError: Error, CustomStringConvertible, Equatable {
  case invalidThreshold(measure: String, value: Double)
  case tooFewImages(heldOut: Int, needed: Int, margin: Double)
  case otherModel(folder: String, found: String, expected: String)
  case badState(file: String, detail: String)

  public var description: String {
    switch self {
    case .invalidThreshold(let measure, let t):
      return "the \(measure) threshold \(t) is outside (0, 1): leakage measures lie between 0 (nothing rebuilt) and 1; the defaults are SSIM 0.3, recognition 0.2, re-identification 0.2, fields 0.3"
    case .tooFewImages(let heldOut, let needed, let margin):
      return String(
        format: "the data set gives %d held-out images; a 95 %% upper bound within ±%.2f of the mean SSIM needs at least %d: add images (or source photos) to the data set", heldOut, margin,
        needed)
    case .otherModel(let folder, let found, let expected):
      return "\(folder) holds the plan of another model (digest \(found.prefix(16))…, this one is \(expected.prefix(16))…): choose another --out, or delete that folder"
    case .badState(let file, let detail):
      return "\(file): \(detail); delete it to start the plan afresh"
    }
  }
}

/// Settings of one plan.
public struct PlanOptions: Sendable {
  public var budget = PlanBudget.standard
  public var profile = ProfileOptions()
  /// The margin the held-out set must resolve: the 95 % upper bound within this of the mean.
  public var margin = 0.08
  /// Profile again even when an earlier run's profile is there (it was measured on a busy
  /// machine, or the machine changed); the attacks are kept.
  public var reprofile = false

  public init() {}
}

/// The part of a plan that outlives an interruption: `plan-state.json` in the plan's folder.
public struct PlanState: Codable, Sendable {
  public var modelDigest: String
  public var profile: ProfileReport?
  /// The evaluation settings the verdicts in `privacy` were reached under.
  public var settings: EvaluationSettings?
  public var privacy: [CutVerdict]
  /// Verdicts at the deployed resolution, of the cuts the first pass chose.
  public var confirmations: [CutVerdict]
  public var confirmationSettings: EvaluationSettings?
}

/// What a plan found: the profile, every verdict, the choice and why.
public struct PlanOutcome {
  public var profile: ProfileReport
  /// Verdicts of the first pass (at the attack size), in cut order.
  public var privacy: [CutVerdict]
  /// Verdicts at the deployed resolution.
  public var confirmations: [CutVerdict]
  public var chosen: CutPoint?
  /// Cuts left out of the search, with why.
  public var skipped: [String: String]
  /// Undecided cuts before the choice (another run may choose them).
  public var tied: [String]
  /// The cut the first pass chose, when the deployed-resolution pass moved the choice deeper.
  public var firstPassChoice: String?

  public init(
    profile: ProfileReport, privacy: [CutVerdict], confirmations: [CutVerdict], chosen: CutPoint?, skipped: [String: String],
    tied: [String], firstPassChoice: String?
  ) {
    self.profile = profile
    self.privacy = privacy
    self.confirmations = confirmations
    self.chosen = chosen
    self.skipped = skipped
    self.tied = tied
    self.firstPassChoice = firstPassChoice
  }
}

/// What the planner asks of a privacy evaluation (`PrivacyEvaluation` is the one Veil runs):
/// the settings its verdicts are reached under, which cuts it cannot attack, the verdict at a cut.
public protocol CutJudge {
  var settings: EvaluationSettings { get }
  func unattackable(_ cut: CutPoint) -> String?
  func evaluate(cut: CutPoint, index: Int, progress: (AttackerKind, UInt64, AttackProgress) -> Void) throws -> CutVerdict
}

extension PrivacyEvaluation: CutJudge {}

/// Joins the runtime profile and the privacy verdicts into a choice, resumably.
public struct Planner {
  public var graph: Graph
  public var model: String
  public var options: PlanOptions
  public var folder: URL
  public let modelDigest: String

  public init(graph: Graph, model: String, options: PlanOptions, folder: URL) throws {
    self.graph = graph
    self.model = model
    self.options = options
    self.folder = folder
    self.modelDigest = try Self.digest(graph)
  }

  /// SHA-256 of the graph as Veil writes it to ONNX: weights and structure, nothing else.
  public static func digest(_ graph: Graph) throws -> String {
    try DeploymentPlan.modelDigest(graph)
  }

  var stateURL: URL { folder.appendingPathComponent("plan-state.json") }

  /// What an earlier run of this plan left, if anything; refuses another model's folder.
  /// Verdicts reached under other settings than `settings` are dropped (they are redone).
  public func loadState(settings: EvaluationSettings, confirmation: EvaluationSettings?) throws -> PlanState {
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    let planFile = folder.appendingPathComponent("plan.json")
    for file in [stateURL, planFile] where FileManager.default.fileExists(atPath: file.path) {
      // plan-state.json keeps the digest at the top; plan.json under "planning".
      struct Digest: Decodable { var modelDigest: String }
      struct Plan: Decodable { var planning: Digest }
      let data = try Data(contentsOf: file)
      guard let found = (try? JSONDecoder().decode(Digest.self, from: data))?.modelDigest
        ?? (try? JSONDecoder().decode(Plan.self, from: data))?.planning.modelDigest
      else {
        throw PlanError.badState(file: file.path, detail: "not a Veil plan (no modelDigest)")
      }
      guard found == modelDigest else { throw PlanError.otherModel(folder: folder.path, found: found, expected: modelDigest) }
    }
    let fresh = PlanState(
      modelDigest: modelDigest, profile: nil, settings: settings, privacy: [], confirmations: [], confirmationSettings: confirmation)
    guard FileManager.default.fileExists(atPath: stateURL.path) else { return fresh }
    var s: PlanState
    do { s = try VeilJSON.decoder().decode(PlanState.self, from: Data(contentsOf: stateURL)) } catch {
      // A state of an older Veil (other verdicts): keep nothing but say so.
      throw PlanError.badState(file: stateURL.path, detail: "unreadable by this version (\(error))")
    }
    // Verdicts reached under other settings (threat model, budget, seeds, thresholds, image
    // size) do not count.
    if s.settings != settings {
      s.privacy = []
      s.settings = settings
    }
    if s.confirmationSettings != confirmation {
      s.confirmations = []
      s.confirmationSettings = confirmation
    }
    return s
  }

  func save(_ state: PlanState) throws {
    try VeilJSON.encoder().encode(state).write(to: stateURL, options: .atomic)
  }

  /// The held-out set must be large enough for the bound to mean something.
  public func checkHeldOut(_ heldOut: Int) throws {
    let needed = Self.heldOutNeeded(margin: options.margin)
    guard heldOut >= needed else { throw PlanError.tooFewImages(heldOut: heldOut, needed: needed, margin: options.margin) }
  }

  /// Held-out images needed for the bound to lie within `margin` of the mean when the SSIM of
  /// single images spreads by `std` (0.1 is typical of reconstructions on natural photos).
  public static func heldOutNeeded(margin: Double, std: Double = 0.1) -> Int {
    var n = 2
    while Double(n) < 10_000, StudentT.quantile95(degreesOfFreedom: n - 1) * std / Double(n).squareRoot() > margin { n += 1 }
    return n
  }

  /// Profiles (or reuses the profile of an interrupted run), then searches for the cut with
  /// `evaluation`'s attackers; with `confirmation` (the same attack at the model's deployed
  /// resolution), the first pass's choice must also be private there, else the next deeper
  /// private cut is tried. Every finished step is saved before the next.
  public func run(
    evaluation: any CutJudge, confirmation: (any CutJudge)? = nil, log: (String) -> Void,
    attackProgress: (CutPoint, AttackerKind, UInt64, AttackProgress) -> Void = { _, _, _, _ in }
  ) throws -> PlanOutcome {
    var state = try loadState(settings: evaluation.settings, confirmation: confirmation?.settings)
    let profile: ProfileReport
    if let p = state.profile, !options.reprofile, p.accelerator == (options.profile.tailTimer?.label ?? Profiler.localAccelerator), p.isPaced {
      log("profile: reusing the one in \(stateURL.lastPathComponent)")
      profile = p
    } else {
      if let p = state.profile, !p.isPaced, !options.reprofile {
        log("profile: the one in \(stateURL.lastPathComponent) was timed before each cut was timed beside the whole model; timing again")
      }
      log("profile: every cut, \(options.profile.runs) timed runs each")
      profile = try Profiler.profile(graph: graph, model: model, options: options.profile) { log("profile: " + $0) }
      state.profile = profile
      try save(state)
    }
    if let u = profile.unstableLine { log("profile: " + u) }
    var skipped: [String: String] = [:]
    var indices: [Int] = []  // profile positions of the cuts the search may evaluate
    for (k, row) in profile.cuts.enumerated() {
      if let why = evaluation.unattackable(row.cut) { skipped[row.cut.name] = why } else { indices.append(k) }
    }
    let all = profile.cuts.map(\.cut)
    if !skipped.isEmpty {
      let names = all.map(\.name).filter { skipped[$0] != nil }
      log("privacy: not attacked (and not eligible): " + names.map { "\($0) (\(skipped[$0]!))" }.joined(separator: "; "))
    }
    let settings = evaluation.settings
    let search = CutSearch(cutCount: indices.count, budget: settings.budget)
    let outcome = try search.run { j in
      let k = indices[j]
      if let done = state.privacy.first(where: { $0.cut == all[k].name }) {
        log("privacy: \(all[k].name) done before: \(done.status.rawValue)")
        return done.isPrivate
      }
      log(
        "privacy: evaluating \(all[k].name) (cut \(k + 1) of \(all.count); the \(settings.budget.rawValue) budget evaluates about \(settings.budget.cutsExpected(cutCount: indices.count)) of the \(indices.count) attackable, with \(settings.attackers.map(\.rawValue).joined(separator: ", ")) × \(settings.seeds.count) seed(s))")
      let verdict = try evaluation.evaluate(cut: all[k], index: k) { attackProgress(all[k], $0, $1, $2) }
      state.privacy.append(verdict)
      try save(state)
      log("privacy: " + verdict.statement)
      return verdict.isPrivate
    }
    var chosen = outcome.chosen.map { all[indices[$0]] }
    let firstPass = chosen?.name
    // The deployed resolution: the choice must hold there too, else the next deeper cut that
    // is private at the attack size is tried there.
    if let confirmation, let first = chosen, let start = all.firstIndex(where: { $0.name == first.name }) {
      chosen = nil
      for k in indices where k >= start {
        let cut = all[k]
        let atAttackSize: CutVerdict
        if let done = state.privacy.first(where: { $0.cut == cut.name }) {
          atAttackSize = done
        } else {
          atAttackSize = try evaluation.evaluate(cut: cut, index: k) { attackProgress(cut, $0, $1, $2) }
          state.privacy.append(atAttackSize)
          try save(state)
          log("privacy: " + atAttackSize.statement)
        }
        guard atAttackSize.isPrivate else { continue }
        let deployed: CutVerdict
        if let done = state.confirmations.first(where: { $0.cut == cut.name }) {
          deployed = done
        } else {
          log("privacy: confirming \(cut.name) at the deployed resolution, \(confirmation.settings.config.imageSize) px")
          deployed = try confirmation.evaluate(cut: cut, index: k) { attackProgress(cut, $0, $1, $2) }
          state.confirmations.append(deployed)
          try save(state)
          log("privacy (deployed resolution): " + deployed.statement)
        }
        if deployed.isPrivate {
          chosen = cut
          break
        }
      }
    }
    let verdicts = state.privacy.sorted { $0.cutIndex < $1.cutIndex }
    let tied = PrivacyChoice.tied(verdicts, chosen: chosen.flatMap { c in all.firstIndex { $0.name == c.name } })
    return PlanOutcome(
      profile: profile, privacy: verdicts, confirmations: state.confirmations.sorted { $0.cutIndex < $1.cutIndex }, chosen: chosen,
      skipped: skipped, tied: tied, firstPassChoice: firstPass != chosen?.name ? firstPass : nil)
  }
}
