import Foundation
import VeilFormats
import VeilGraph
import VeilPrivacy
import VeilServing

/// Everything a plan decided and measured, as `plan.json` keeps it for reproducing the choice
/// and as `report.html` shows it.
public struct PlanRecord: Sendable, Codable {
  public static let schemaVersion = 2

  /// Where the images the attackers learned from and were scored on came from.
  public struct DataDescription: Sendable, Codable, Equatable {
    /// "imagenet-style photos", "ton-iot images", or "user images".
    public var origin: String
    public var path: String
    /// The attackers' own photos, when given apart (`--attack-data`).
    public var trainingPath: String?
    public var sourceImages: Int
    public var trainImages: Int
    public var heldOutImages: Int
    public var heldOutPhotos: Int
    public var imageSize: Int
    /// The model's own input side, where the choice was confirmed (nil: not confirmed there).
    public var deployedSize: Int?

    public init(
      origin: String, path: String, trainingPath: String?, sourceImages: Int, trainImages: Int, heldOutImages: Int, heldOutPhotos: Int,
      imageSize: Int, deployedSize: Int?
    ) {
      self.origin = origin
      self.path = path
      self.trainingPath = trainingPath
      self.sourceImages = sourceImages
      self.trainImages = trainImages
      self.heldOutImages = heldOutImages
      self.heldOutPhotos = heldOutPhotos
      self.imageSize = imageSize
      self.deployedSize = deployedSize
    }
  }

  /// What runs where once deployed, and what the client pins.
  public struct Deployment: Sendable, Codable, Equatable {
    public var enclave: String
    public var accelerator: String
    public var evidenceMode: String
    /// The policy a client must pin (JSON text as `veil infer --policy` reads it).
    public var clientPolicy: String
    /// Files written next to plan.json, relative to its folder.
    public var files: [String: String]

    public init(enclave: String, accelerator: String, evidenceMode: String, clientPolicy: String, files: [String: String]) {
      self.enclave = enclave
      self.accelerator = accelerator
      self.evidenceMode = evidenceMode
      self.clientPolicy = clientPolicy
      self.files = files
    }
  }

  public var schema = PlanRecord.schemaVersion
  public var model: String
  /// SHA-256 of the model's graph as Veil serialises it (ONNX), so a plan is never applied to
  /// another model.
  public var modelDigest: String
  public var data: DataDescription
  /// The threat model, attackers, seeds, attack options and thresholds of every verdict.
  public var evaluation: EvaluationSettings
  /// The same at the deployed resolution (nil: the choice was not confirmed there).
  public var confirmation: EvaluationSettings?
  /// The measures computed (those with a threshold decide).
  public var measures: [String]
  public var settings: [String: String]
  public var profile: ProfileReport
  /// The verdict at every evaluated cut (first pass, at the attack size), in cut order.
  public var privacy: [CutVerdict]
  /// Verdicts at the deployed resolution.
  public var confirmations: [CutVerdict]
  /// The earliest cut from which every evaluated cut is private (and, where confirmed, private
  /// at the deployed resolution); nil if none is.
  public var chosenCut: String?
  /// What the first pass chose when the deployed-resolution pass moved the choice deeper.
  public var firstPassChoice: String?
  /// Undecided cuts before the choice: another run of the same plan may choose them.
  public var tiedCuts: [String]
  /// Cuts not attacked, with the reason.
  public var notAttacked: [String: String]
  /// The fastest cut regardless of privacy.
  public var fastestCut: String?
  /// The profile's "PROFILE UNSTABLE: …" line when its runtime figures are not to be decided
  /// on (the segments are in `profile.unstable`); nil when stable, and in older plans.
  public var profileUnstable: String?
  public var deployment: Deployment?
  /// The defence the plan was made under (`veil plan --defence`), fitted, with its utility.
  public var defence: DefenceRecord?
  /// Why a chosen cut was not deployed (its defence fell under the utility floor).
  public var notDeployed: String?
  /// The cut × defence search (`veil plan --defences`).
  public var frontier: DefenceFrontier?
  /// What keeping the answer in the enclave costs (`veil plan --private-output`).
  public var privateOutput: PrivateOutputRecord?
  public var created: String
  public var versions: [String: String]

  public init(
    model: String, modelDigest: String, data: DataDescription, evaluation: EvaluationSettings, confirmation: EvaluationSettings?,
    measures: [String], settings: [String: String], profile: ProfileReport, outcome: PlanOutcome, deployment: Deployment?,
    created: Date = Date(), versions: [String: String]
  ) {
    self.model = model
    self.modelDigest = modelDigest
    self.data = data
    self.evaluation = evaluation
    self.confirmation = confirmation
    self.measures = measures
    self.settings = settings
    self.profile = profile
    privacy = outcome.privacy
    confirmations = outcome.confirmations
    chosenCut = outcome.chosen?.name
    firstPassChoice = outcome.firstPassChoice
    tiedCuts = outcome.tied
    notAttacked = outcome.skipped
    fastestCut = profile.fastestCut
    profileUnstable = profile.unstableLine
    self.deployment = deployment
    self.created = ISO8601DateFormatter().string(from: created)
    self.versions = versions
  }

  /// The folder of the attacks under `defence`, relative to the plan's: `attacks`, or
  /// `attacks-defended/<spec>` (the deployed-resolution pass adds `-<size>px`).
  public static func attacksFolder(_ defence: CutDefence?) -> String {
    defence.map { "attacks-defended/\(PrivacyEvaluation.fileName($0.spec))" } ?? "attacks"
  }

  /// The folder of this plan's own attacks.
  public var attacksFolder: String { Self.attacksFolder(evaluation.config.defence) }

  /// The profile row of a cut.
  public func row(_ cut: String?) -> CutProfile? { cut.flatMap { c in profile.cuts.first { $0.cut.name == c } } }

  /// The verdict at a cut (first pass).
  public func verdict(_ cut: String?) -> CutVerdict? { cut.flatMap { c in privacy.first { $0.cut == c } } }

  /// Ways this plan is weaker than the default (the standard budget, the white-box threat
  /// model, a confirmed choice): the first line of its report says them.
  public var weaknesses: [String] {
    var out = evaluation.weakerThanDefault
    if evaluation.threatModel == .blackBox {
      out.insert("black-box threat model: an attacker with the head's weights (a public backbone) is not considered", at: 0)
    }
    if confirmation == nil, let deployed = data.deployedSize, deployed != data.imageSize {
      var line = "the verdict is at \(data.imageSize) px only (the first pass); the model runs at \(deployed) px"
      // How much more of the map an attacker sees at the deployed size, for a chosen CNN cut.
      // (A verdict's feature shape is [C, h, w] for a CNN's map; a transformer's tokens keep their count.)
      if let cut = chosenCut, let shape = verdict(cut)?.featureShape, shape.count == 3, data.imageSize > 0 {
        let scale = Double(deployed) / Double(data.imageSize)
        let (h, w) = (Int((Double(shape[1]) * scale).rounded()), Int((Double(shape[2]) * scale).rounded()))
        line +=
          ", where \(cut)'s map has about \(h)×\(w) positions instead of \(shape[1])×\(shape[2]) and a white-box attacker rebuilds more: confirm the choice there (`--confirm true`, the standard budget's default) before deploying it"
      }
      out.append(line)
    }
    for m in [SSIMMeasure.name, RecognitionMeasure.name, ReidentificationMeasure.name] where !measures.contains(m) && data.origin != "ton-iot images" {
      out.append("measure not computed: \(m)")
    }
    if privacy.contains(where: { $0.attacks.contains { !$0.converged } }) {
      out.append("some learning-based attackers stopped at their last epoch while still improving")
    }
    return out
  }
}

/// `plan.json`: the deployment the enclave reads (VeilServing's `DeploymentPlan`, at the top
/// level, so `veil enclave serve --plan` reads the file as it is) and, under `planning`, the
/// evidence the choice rests on. A plan with no private-enough cut has no deployment. It is
/// read here and written by `write(to:)`, through VeilServing's `DeploymentPlan.writeFile`, the
/// one writer of plan.json.
public struct PlanDocument: Decodable, Sendable {
  public var deployment: DeploymentPlan?
  public var planning: PlanRecord

  public init(deployment: DeploymentPlan?, planning: PlanRecord) {
    self.deployment = deployment
    self.planning = planning
  }

  enum Keys: String, CodingKey { case planning, schemaVersion }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: Keys.self)
    planning = try c.decode(PlanRecord.self, forKey: .planning)
    deployment = c.contains(.schemaVersion) ? try DeploymentPlan(from: decoder) : nil
  }

  public func write(to file: URL) throws {
    try DeploymentPlan.writeFile(deployment, planning: planning, to: file)
  }

  public static func read(_ file: URL) throws -> PlanDocument {
    try VeilJSON.decoder().decode(PlanDocument.self, from: Data(contentsOf: file))
  }
}
