import Crypto
import Foundation
import VeilFormats
import VeilGraph

public enum PlanError: Error, CustomStringConvertible, Equatable {
  case invalidThreshold(Double)
  case tooFewImages(heldOut: Int, needed: Int, margin: Double)
  case otherModel(folder: String, found: String, expected: String)
  case badState(file: String, detail: String)

  public var description: String {
    switch self {
    case .invalidThreshold(let t):
      return "--threshold \(t) is outside (0, 1): SSIM thresholds lie strictly between 0 (nothing rebuilt) and 1 (a perfect copy); 0.3 is the default"
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
  /// SSIM above which a reconstruction counts as a leak. 0.3 by default: at 64×64, SSIM
  /// under 0.3 leaves shapes unrecognisable in our reconstructions; pick it for your data.
  public var threshold = 0.3
  public var budget = PlanBudget.quick
  public var profile = ProfileOptions()
  /// The margin the held-out set must resolve: the 95 % upper bound within this of the mean.
  public var margin = 0.08
  /// What the attacks' results depend on besides the model and the attacker (epochs, crops,
  /// image size, seed, data): attacks an earlier run made under other settings are not reused.
  public var attackSettings = ""
  /// Profile again even when an earlier run's profile is there (it was measured on a busy
  /// machine, or the machine changed); the attacks are kept.
  public var reprofile = false

  public init() {}
}

/// The part of a plan that outlives an interruption: `plan-state.json` in the plan's folder.
public struct PlanState: Codable, Sendable {
  public var modelDigest: String
  public var threshold: Double
  public var attacker: String
  public var profile: ProfileReport?
  public var privacy: [PrivacyPoint]
  /// `PlanOptions.attackSettings` of the attacks in `privacy` (nil in states written before it).
  public var attackSettings: String?
}

/// Joins the runtime profile and the privacy attacks into a choice, resumably.
public struct Planner {
  public var graph: Graph
  public var model: String
  public var options: PlanOptions
  public var folder: URL
  public let modelDigest: String

  public init(graph: Graph, model: String, options: PlanOptions, folder: URL) throws {
    guard options.threshold > 0, options.threshold < 1 else { throw PlanError.invalidThreshold(options.threshold) }
    self.graph = graph
    self.model = model
    self.options = options
    self.folder = folder
    self.modelDigest = try Self.digest(graph)
  }

  /// SHA-256 of the graph as Veil writes it to ONNX: weights and structure, nothing else.
  public static func digest(_ graph: Graph) throws -> String {
    SHA256.hash(data: try ONNXWriter.serialize(graph)).map { String(format: "%02x", $0) }.joined()
  }

  var stateURL: URL { folder.appendingPathComponent("plan-state.json") }

  /// What an earlier run of this plan left, if anything; refuses another model's folder.
  public func loadState(attacker: String) throws -> PlanState {
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
    guard FileManager.default.fileExists(atPath: stateURL.path) else {
      return PlanState(
        modelDigest: modelDigest, threshold: options.threshold, attacker: attacker, profile: nil, privacy: [],
        attackSettings: options.attackSettings)
    }
    do {
      var s = try JSONDecoder().decode(PlanState.self, from: Data(contentsOf: stateURL))
      // Attacks of another attacker do not count for this one; the threshold only changes the choice.
      s.privacy = s.privacy.filter { $0.attacker == attacker }
      // Nor do attacks trained under other settings.
      if (s.attackSettings ?? "") != options.attackSettings {
        s.privacy = []
        s.attackSettings = options.attackSettings
      }
      s.attacker = attacker
      s.threshold = options.threshold
      return s
    } catch {
      throw PlanError.badState(file: stateURL.path, detail: "unreadable (\(error))")
    }
  }

  func save(_ state: PlanState) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    try e.encode(state).write(to: stateURL, options: .atomic)
  }

  /// The held-out set must be large enough for the bound to mean something.
  public func checkHeldOut(_ heldOut: Int) throws {
    let needed = PrivacyStatistics.heldOutNeeded(margin: options.margin)
    guard heldOut >= needed else { throw PlanError.tooFewImages(heldOut: heldOut, needed: needed, margin: options.margin) }
  }

  /// How many attacks the budget will run on `cutCount` cuts, at most.
  public func attacksExpected(cutCount: Int) -> Int {
    let bisection = Int(ceil(log2(Double(max(cutCount, 2))))) + 1
    switch options.budget {
    case .quick: return min(cutCount, bisection + 2)
    case .standard: return min(cutCount, bisection * 3)
    case .thorough: return cutCount
    }
  }

  /// Profiles (or reuses the profile of an interrupted run), then searches for the cut,
  /// attacking through `attack(cut, index)`; every finished step is saved before the next.
  /// `unattackable(cut)` says why the attacker cannot run at a cut (nil when it can); such cuts
  /// are left out of the search (and of the choice: no cut is called private without an attack).
  public func run(
    attacker: String, unattackable: (CutPoint) -> String? = { _ in nil }, attack: (CutPoint, Int) throws -> PrivacyPoint,
    progress: (String) -> Void
  ) throws -> (profile: ProfileReport, privacy: [PrivacyPoint], chosen: CutPoint?, skipped: [String: String]) {
    var state = try loadState(attacker: attacker)
    let profile: ProfileReport
    if let p = state.profile, !options.reprofile, p.accelerator == (options.profile.tailTimer?.label ?? Profiler.localAccelerator) {
      progress("profile: reusing the one in \(stateURL.lastPathComponent)")
      profile = p
    } else {
      progress("profile: every cut, \(options.profile.runs) timed runs each")
      profile = try Profiler.profile(graph: graph, model: model, options: options.profile) { progress("profile: " + $0) }
      state.profile = profile
      try save(state)
    }
    var skipped: [String: String] = [:]
    var indices: [Int] = []  // profile positions of the cuts the search may attack
    for (k, row) in profile.cuts.enumerated() {
      if let why = unattackable(row.cut) { skipped[row.cut.name] = why } else { indices.append(k) }
    }
    if !skipped.isEmpty {
      progress("privacy: not attacked (and not eligible): " + skipped.keys.sorted { a, b in
        profile.cuts.firstIndex { $0.cut.name == a }! < profile.cuts.firstIndex { $0.cut.name == b }!
      }.map { "\($0) (\(skipped[$0]!))" }.joined(separator: "; "))
    }
    let all = profile.cuts.map(\.cut)
    let cuts = indices.map { all[$0] }
    let search = CutSearch(cutCount: cuts.count, threshold: options.threshold, budget: options.budget)
    let outcome = try search.run { j in
      let k = indices[j]
      if let done = state.privacy.first(where: { $0.cut == all[k].name }) {
        progress(String(format: "privacy: %@ done before (SSIM %.3f, upper bound %.3f)", all[k].name, done.ssimMean, done.ssimUpper))
        return done.ssimUpper
      }
      progress("privacy: attacking \(all[k].name) (cut \(k + 1) of \(all.count); the \(options.budget.rawValue) budget attacks about \(attacksExpected(cutCount: cuts.count)) of the \(cuts.count) attackable)")
      var point = try attack(all[k], k)
      point.cutIndex = k
      state.privacy.append(point)
      try save(state)
      progress(String(format: "privacy: %@ SSIM %.3f ± %.3f, upper bound %.3f %@ threshold %.2f", point.cut, point.ssimMean, point.ssimStd, point.ssimUpper, point.ssimUpper < options.threshold ? "<" : "≥", options.threshold))
      return point.ssimUpper
    }
    // Every attack of this attacker counts as evidence, also those of an earlier run.
    let points = state.privacy.sorted { $0.cutIndex < $1.cutIndex }
    return (profile, points, outcome.chosen.map { cuts[$0] }, skipped)
  }
}
