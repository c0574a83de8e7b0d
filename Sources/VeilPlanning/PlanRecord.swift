import Foundation
import VeilServing

/// Everything a plan decided and measured, as `plan.json` keeps it for reproducing the choice
/// and as `report.html` shows it.
public struct PlanRecord: Sendable, Codable {
  public static let schemaVersion = 1

  /// Where the images the attacker trained and was scored on came from.
  public struct DataDescription: Sendable, Codable, Equatable {
    /// "imagenet-style photos", "ton-iot images", or "user images".
    public var origin: String
    public var path: String
    public var images: Int
    public var sourceImages: Int
    public var trainImages: Int
    public var heldOutImages: Int
    public var imageSize: Int

    public init(origin: String, path: String, images: Int, sourceImages: Int, trainImages: Int, heldOutImages: Int, imageSize: Int) {
      self.origin = origin
      self.path = path
      self.images = images
      self.sourceImages = sourceImages
      self.trainImages = trainImages
      self.heldOutImages = heldOutImages
      self.imageSize = imageSize
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
  public var threshold: Double
  public var attacker: String
  public var budget: PlanBudget
  public var seeds: [String: UInt64]
  public var settings: [String: String]
  public var profile: ProfileReport
  public var privacy: [PrivacyPoint]
  /// The earliest cut whose SSIM upper bound stays under the threshold; nil if none does.
  public var chosenCut: String?
  /// The fastest cut regardless of privacy.
  public var fastestCut: String?
  public var deployment: Deployment?
  public var created: String
  public var versions: [String: String]

  public init(
    model: String, modelDigest: String, data: DataDescription, threshold: Double, attacker: String, budget: PlanBudget,
    seeds: [String: UInt64], settings: [String: String], profile: ProfileReport, privacy: [PrivacyPoint], chosenCut: String?,
    fastestCut: String?, deployment: Deployment?, created: Date = Date(), versions: [String: String]
  ) {
    self.model = model
    self.modelDigest = modelDigest
    self.data = data
    self.threshold = threshold
    self.attacker = attacker
    self.budget = budget
    self.seeds = seeds
    self.settings = settings
    self.profile = profile
    self.privacy = privacy
    self.chosenCut = chosenCut
    self.fastestCut = fastestCut
    self.deployment = deployment
    self.created = ISO8601DateFormatter().string(from: created)
    self.versions = versions
  }

  /// The profile row of a cut.
  public func row(_ cut: String?) -> CutProfile? { cut.flatMap { c in profile.cuts.first { $0.cut.name == c } } }
}

/// `plan.json`: the deployment the enclave reads (VeilServing's `DeploymentPlan`, at the top
/// level, so `veil enclave serve --plan` reads the file as it is) and, under `planning`, the
/// evidence the choice rests on. A plan with no private-enough cut has no deployment.
public struct PlanDocument: Codable, Sendable {
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

  public func encode(to encoder: Encoder) throws {
    try deployment?.encode(to: encoder)
    var c = encoder.container(keyedBy: Keys.self)
    try c.encode(planning, forKey: .planning)
  }

  public func write(to file: URL) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    try e.encode(self).write(to: file, options: .atomic)
  }
}
