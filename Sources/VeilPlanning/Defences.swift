import Foundation
import VeilData
import VeilGraph
import VeilPrivacy

// Defences in the plan: a plan made under one defence (`veil plan --defence`) measures what it
// costs and refuses to deploy it below the utility floor; a plan with `--defences` searches
// cut × defence before the undefended choice and reports the Pareto frontier of latency,
// leakage (under attackers who know the defence) and utility. The paper's rule, the earliest
// private cut without a defence, stays the choice unless the user deploys a defended point.

/// A plan's defence as measured: fitted at the model's own input size, its utility, and
/// whether it stays above the floor.
public struct DefenceRecord: Codable, Sendable, Equatable {
  public var defence: CutDefence
  public var channelAxis: Int
  public var utility: DefenceUtility
  public var utilityFloor: Double
  public var belowFloor: Bool { utility.agreement < utilityFloor }
}

/// One point of the search: a cut with a defence (or none), and what it costs and leaks.
public struct FrontierPoint: Codable, Sendable, Equatable {
  public var cut: String
  public var cutIndex: Int
  /// The defence's spec (`gaussian:1`), nil for the undefended cut.
  public var defence: String?
  /// The partitioned latency of the profile (head in the TEE modeled) plus the defence's own
  /// time measured natively, milliseconds.
  public var latencyMs: Double
  /// The verdict under the adaptive attackers (nil: not attacked, its utility was below the floor).
  public var status: LeakageStatus?
  /// The worst attacker's 95 % bound of SSIM, the paper's measure.
  public var ssimBound: Double?
  public var statement: String?
  /// Top-1 agreement with the undefended model (1 without a defence) and its lower bound.
  public var agreement: Double
  public var agreementLower: Double
  public var encodedBytes: Int
  public var mapBytes: Int
  public var belowFloor: Bool
  /// Not dominated in (latency ↓, SSIM bound ↓, agreement ↑) by another attacked point.
  public var onFrontier: Bool = false
  /// The reconstructions of the attacker that decided SSIM, relative to the plan's folder.
  public var grid: String?
  /// The defence's own time per map, measured natively (milliseconds; 0 without a defence).
  public var defenceMs: Double = 0

  public init(
    cut: String, cutIndex: Int, defence: String?, latencyMs: Double, status: LeakageStatus?, ssimBound: Double?, statement: String?,
    agreement: Double, agreementLower: Double, encodedBytes: Int, mapBytes: Int, belowFloor: Bool
  ) {
    self.cut = cut
    self.cutIndex = cutIndex
    self.defence = defence
    self.latencyMs = latencyMs
    self.status = status
    self.ssimBound = ssimBound
    self.statement = statement
    self.agreement = agreement
    self.agreementLower = agreementLower
    self.encodedBytes = encodedBytes
    self.mapBytes = mapBytes
    self.belowFloor = belowFloor
  }
}

/// The cut × defence search of `veil plan --defences`.
public struct DefenceFrontier: Codable, Sendable, Equatable {
  public var kinds: [DefenceKind]
  /// The parameters tried, per kind, weakest first.
  public var grid: [String: [String]]
  public var utilityFloor: Double
  public var points: [FrontierPoint]
  /// The undefended choice (the paper's rule) the search tried to beat.
  public var undefendedChoice: String?
  /// The earliest defended point that is private under every measure and keeps the utility
  /// floor, when it is earlier than the undefended choice.
  public var earliestDefended: FrontierPoint?
  public var notes: [String]

  /// The parameters a budget tries per kind, from the weakest protection to the strongest.
  public static func grid(_ kind: DefenceKind, budget: PrivacyBudget) -> [CutDefence] {
    let quick = budget == .quick
    switch kind {
    case .gaussian, .laplace:
      // σ in channel standard deviations: at EfficientNet-Lite0's _blocks.4, σ = 0.5 already
      // changed the top-1 class of 10 of 36 photos.
      return (quick ? [0.1, 0.3, 1] : [0.05, 0.1, 0.2, 0.5, 1, 2]).map { .noise($0, laplace: kind == .laplace) }
    case .quantise:
      return (quick ? [4, 2] : [8, 6, 4, 3, 2]).map { .quantisation(bits: $0) }
    case .prune:
      return (quick ? [0.5, 0.75] : [0.25, 0.5, 0.75, 0.9]).map { .pruning($0) }
    }
  }

  /// How many cuts before the undefended choice the search tries, deepest first.
  public static func cutCount(budget: PrivacyBudget) -> Int {
    switch budget {
    case .quick: 2
    case .standard: 3
    case .thorough: 5
    }
  }

  /// Marks the points no other attacked point beats in latency, SSIM bound and agreement at
  /// once (ties on all three do not dominate).
  public static func markFrontier(_ points: inout [FrontierPoint]) {
    let attacked = points.indices.filter { points[$0].ssimBound != nil && !points[$0].belowFloor }
    for i in points.indices { points[i].onFrontier = false }
    for i in attacked {
      let p = points[i]
      let dominated = attacked.contains { j in
        let q = points[j]
        let noWorse = q.latencyMs <= p.latencyMs && q.ssimBound! <= p.ssimBound! && q.agreement >= p.agreement
        let better = q.latencyMs < p.latencyMs || q.ssimBound! < p.ssimBound! || q.agreement > p.agreement
        return j != i && noWorse && better
      }
      points[i].onFrontier = !dominated
    }
  }
}

extension FrontierPoint {
  init(
    cut: CutProfile, index: Int, defence: CutDefence?, utility: DefenceUtility?, verdict: CutVerdict?, floor: Double, attacks: String
  ) {
    self.cut = cut.cut.name
    cutIndex = index
    self.defence = defence?.spec
    latencyMs = cut.totalMs + (utility?.defenceMs ?? 0)
    defenceMs = utility?.defenceMs ?? 0
    status = verdict?.status
    ssimBound = verdict?.measure(SSIMMeasure.name)?.estimate.upper
    statement = verdict?.statement
    agreement = utility?.agreement ?? 1
    agreementLower = utility?.agreementLower ?? 1
    let bytes = cut.cut.shape.reduce(1, *) * 4
    mapBytes = utility?.mapBytes ?? bytes
    encodedBytes = utility?.encodedBytes ?? bytes
    belowFloor = (utility?.agreement ?? 1) < floor
    if let v = verdict, let worst = v.measure(SSIMMeasure.name)?.worstAttacker,
      let attack = v.attacks.first(where: { $0.attacker == worst })
    {
      grid = "\(attacks)/\(attack.grid)"
    }
  }
}

/// The photos a defence is measured (and its tail fine-tuned) on, at the model's own input size.
struct UtilityPhotos {
  /// Whole photos the agreement is measured on.
  var measured: [ByteImage]
  /// Crops of other photos the tail is fine-tuned on (empty without fine-tuning).
  var tuning: [ByteImage]
  var size: Int
  /// The measured images' classes where the data has labels (a class-folder image set, see
  /// `labels(of:)`).
  var labels: (classes: Int, ofImage: [Int])? = nil
}

extension PlanJob {
  /// Without fine-tuning, every photo of the plan's data, whole; with it, half the photos are
  /// kept apart for the agreement and the other half give the fine-tuning crops.
  func utilityPhotos(_ evaluation: PrivacyEvaluation) throws -> UtilityPhotos {
    var c = evaluation.settings.config
    c.imageSize = deployedSize ?? imageSize
    c.testCropsPerPhoto = 1
    c.defence = nil
    let images: AttackImages
    if let tuning = fineTuning {
      c.attacker = .inverse
      c.testFraction = 0.5
      c.validationFraction = 0
      c.trainCropsPerPhoto = tuning.cropsPerPhoto
      c.seed = seed
      images = try evaluation.images(c)
    } else {
      c.attacker = .optimisation
      c.testFraction = 1
      images = try evaluation.images(c)
    }
    return UtilityPhotos(
      measured: images.test, tuning: fineTuning == nil ? [] : images.train, size: c.imageSize, labels: try labels(of: images.testSources))
  }

  /// Labels of `files` where the data is a class-folder image set: every image in a class
  /// sub-folder of `data` (or of its `train`/`validation`/`test` splits), as `veil data ton-iot`,
  /// `veil data idx` and ImageNet's train layout keep them. A folder named `<i>-<name>`
  /// (`DataSet.classFolder`) is class i, whatever other folders are present; otherwise the
  /// sorted folder names number the classes. nil when any image lies outside a class folder,
  /// when there are fewer than two classes, or when the model's output does not count them.
  func labels(of files: [String]) throws -> (classes: Int, ofImage: [Int])? {
    var shaped = graph
    if graph.outputs.first.flatMap(graph.shape) == nil { try? shaped.inferShapes() }
    guard let outputs = shaped.outputs.first.flatMap(shaped.shape)?.last, outputs >= 2 else { return nil }
    let root = data.resolvingSymlinksInPath().standardizedFileURL.pathComponents
    let splits = Set(Split.allCases.map(\.rawValue))
    func classFolder(_ file: URL) -> String? {
      let parts = file.resolvingSymlinksInPath().standardizedFileURL.pathComponents
      guard parts.count > root.count + 1, Array(parts.prefix(root.count)) == root else { return nil }
      var below = Array(parts.dropFirst(root.count).dropLast())
      if below.count > 1, splits.contains(below[0]) { below.removeFirst() }
      return below.first
    }
    let all = try PrivacyEvaluation.photoFiles(data)
    let folders = all.map(classFolder)
    guard folders.allSatisfy({ $0 != nil }) else { return nil }
    let names = Set(folders.compactMap { $0 }).sorted()
    let numbered = names.map(DataSet.classIndex(ofFolder:))
    let index: [String: Int]
    if numbered.allSatisfy({ $0 != nil }), Set(numbered).count == names.count {
      index = Dictionary(uniqueKeysWithValues: zip(names, numbered.map { $0! }))
    } else {
      index = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
    }
    guard names.count >= 2, let largest = index.values.max(), largest < outputs else { return nil }
    let labels = files.compactMap { classFolder(URL(fileURLWithPath: $0)).flatMap { index[$0] } }
    return labels.count == files.count ? (outputs, labels) : nil
  }

  /// Fits `defence` at the deployed size (to the fine-tuning crops' maps when the tail is
  /// fine-tuned, else to the measured photos'), fine-tunes the tail if asked, and measures
  /// the utility at `cut`. Returns the fine-tuned tail too.
  func measureDefence(_ defence: CutDefence, cut: CutPoint, photos: UtilityPhotos, log: (String) -> Void = { _ in }) throws
    -> (record: DefenceRecord, tunedTail: Graph?)
  {
    var fitted = defence
    var tuned: Graph?
    if let tuning = fineTuning {
      var t = tuning
      t.seed = seed
      let extractor = try FeatureExtractor(
        model: graph, cut: cut, imageSize: photos.size, batch: min(8, photos.tuning.count), preprocessing: preprocessing)
      fitted = try extractor.fit(defence, maps: try extractor.features(photos.tuning))
      let candidate = try t.tail(
        model: graph, cut: cut, defence: fitted, images: photos.tuning, imageSize: photos.size, preprocessing: preprocessing,
        progress: { log("defence \(defence.spec) at \(cut.name): " + $0) })
      // Fine-tuning only where it helps: the fine-tuned tail is kept when it agrees with the
      // undefended model on the fine-tuning crops' defended maps at least as often as the
      // model's own tail does (never judged on the photos the agreement is measured on).
      func agreement(_ tail: Graph?) throws -> Double {
        try DefenceUtility.measure(
          model: graph, cut: cut, defence: fitted, images: photos.tuning, imageSize: photos.size, preprocessing: preprocessing,
          seed: seed &+ 1, tunedTail: tail
        ).utility.agreement
      }
      let (own, finetuned) = (try agreement(nil), try agreement(candidate))
      log(String(format: "defence %@ at %@: agreement on the fine-tuning crops %.3f with the model's own tail, %.3f fine-tuned: %@", defence.spec, cut.name, own, finetuned, finetuned >= own ? "the fine-tuned tail is kept" : "the model's own tail is kept"))
      tuned = finetuned >= own ? candidate : nil
    }
    let (utility, final, axis) = try DefenceUtility.measure(
      model: graph, cut: cut, defence: fitted, images: photos.measured, imageSize: photos.size, preprocessing: preprocessing, seed: seed,
      tunedTail: tuned, labels: photos.labels)
    return (DefenceRecord(defence: final, channelAxis: axis, utility: utility, utilityFloor: utilityFloor), tuned)
  }

  /// The search of `--defences`: for the cuts before the undefended choice (deepest first, as
  /// many as the budget says), each kind's parameters from the weakest: the utility first (a
  /// parameter under the floor ends that kind at that cut, since stronger ones cost more), then
  /// the verdict under attackers who know the defence (a private one ends the kind at that cut:
  /// stronger ones only cost more utility).
  func searchDefences(
    evaluation: PrivacyEvaluation, outcome: PlanOutcome, log: (String) -> Void,
    attackProgress: (CutPoint, AttackerKind, UInt64, AttackProgress) -> Void
  ) throws -> DefenceFrontier {
    let budget = evaluation.settings.budget
    let rows = outcome.profile.cuts
    let chosenIndex = outcome.chosen.flatMap { c in rows.firstIndex { $0.cut.name == c.name } }
    let candidates = rows.indices.filter { k in
      outcome.skipped[rows[k].cut.name] == nil && (chosenIndex.map { k < $0 } ?? true)
    }.suffix(DefenceFrontier.cutCount(budget: budget)).reversed()
    var points: [FrontierPoint] = []
    var notes: [String] = []
    // The undefended verdicts, for comparison.
    for v in outcome.privacy {
      guard let k = rows.firstIndex(where: { $0.cut.name == v.cut }) else { continue }
      points.append(FrontierPoint(cut: rows[k], index: k, defence: nil, utility: nil, verdict: v, floor: utilityFloor, attacks: "attacks"))
    }
    let photos = try utilityPhotos(evaluation)
    log(
      "defences: \(defenceKinds.map(\.rawValue).joined(separator: ", ")) at \(candidates.count) cut(s) before \(outcome.chosen?.name ?? "the deepest cut") (deepest first); utility on \(photos.measured.count) photos at \(photos.size) px, floor \(utilityFloor)\(fineTuning != nil ? "; the tail fine-tuned per defence on \(photos.tuning.count) crops of other photos" : "")")
    var grid: [String: [String]] = [:]
    for kind in defenceKinds { grid[kind.rawValue] = DefenceFrontier.grid(kind, budget: budget).map(\.spec) }
    for k in candidates {
      let row = rows[k]
      for kind in defenceKinds {
        for defence in DefenceFrontier.grid(kind, budget: budget) {
          let record = try measureDefence(defence, cut: row.cut, photos: photos, log: log).record
          if record.belowFloor {
            log("defences: \(row.cut.name) with \(defence.spec): \(record.utility.summary), under the floor \(utilityFloor): not attacked, stronger \(kind.rawValue) settings skipped")
            points.append(
              FrontierPoint(cut: row, index: k, defence: defence, utility: record.utility, verdict: nil, floor: utilityFloor, attacks: ""))
            break
          }
          var e = evaluation
          e.settings.config.defence = defence
          let attacks = PlanRecord.attacksFolder(defence)
          e.outDir = folder.appendingPathComponent(attacks)
          log("defences: \(row.cut.name) with \(defence.spec): \(record.utility.summary); attacking it")
          let verdict = try e.evaluate(cut: row.cut, index: k) { attackProgress(row.cut, $0, $1, $2) }
          log("defences: " + verdict.statement)
          points.append(
            FrontierPoint(cut: row, index: k, defence: defence, utility: record.utility, verdict: verdict, floor: utilityFloor, attacks: attacks))
          if verdict.isPrivate { break }
        }
      }
    }
    DefenceFrontier.markFrontier(&points)
    let earliest = points.filter { $0.defence != nil && $0.status == .private && !$0.belowFloor }
      .min { ($0.cutIndex, $0.latencyMs) < ($1.cutIndex, $1.latencyMs) }
    if candidates.isEmpty { notes.append("no attackable cut lies before the undefended choice: nothing to search") }
    notes.append(
      fineTuning == nil
        ? "utility is the top-1 agreement with the undefended model; the tail is the model's own (not fine-tuned on defended maps)"
        : "utility is the top-1 agreement with the undefended model on photos the fine-tuning never saw; the tail was fine-tuned on each defence's maps (the undefended model's own classes as labels)")
    notes.append("latency: the profile's partitioned total (head in the TEE modeled) plus the defence's own time measured natively; the served path sends FP32 maps, the encoded bytes are what the defence would let it send")
    return DefenceFrontier(
      kinds: defenceKinds, grid: grid, utilityFloor: utilityFloor, points: points.sorted { ($0.cutIndex, $0.latencyMs) < ($1.cutIndex, $1.latencyMs) },
      undefendedChoice: outcome.chosen?.name, earliestDefended: earliest, notes: notes)
  }
}

extension Graph {
  /// This graph with the weights of `part` (a part of it, fine-tuned) in place of its own, by
  /// value name.
  func replacingWeights(from part: Graph) throws -> Graph {
    var g = self
    var names: [String: ValueID] = [:]
    for v in g.initializers.keys { names[g[v].name] = v }
    for (v, t) in part.initializers {
      guard let mine = names[part[v].name] else {
        throw GraphError.invalidGraph("the fine-tuned part's weight '\(part[v].name)' is not one of '\(name)'")
      }
      guard g.initializers[mine]!.shape == t.shape else {
        throw GraphError.invalidGraph("the fine-tuned weight '\(part[v].name)' is \(t.shape), the model's \(g.initializers[mine]!.shape)")
      }
      g.initializers[mine] = t
    }
    return g
  }
}
