import Foundation

// The statistics a privacy verdict rests on. Held-out images are not independent: the crops of
// one photo share its content, and an attacker trained with another seed (which also draws
// another split of the photos) scores differently. So a measure's estimate is built in two
// levels: images are averaged per source photo (the cluster), photos per seed, seeds overall;
// its standard error adds the clustered error within seeds to the spread between seeds.

/// One held-out image's score under one measure, with what it is not independent of.
public struct ScoredImage: Codable, Sendable, Equatable {
  public var score: Double
  /// The source photo the image was cut from (its cluster).
  public var photo: String
  /// The seed of the attack (and of the split) it was scored under.
  public var seed: UInt64

  public init(score: Double, photo: String, seed: UInt64) {
    self.score = score
    self.photo = photo
    self.seed = seed
  }
}

/// A measure's mean over held-out images with a one-sided 95 % interval that respects the
/// clustering by photo and the spread across seeds.
public struct LeakageEstimate: Codable, Sendable, Equatable {
  /// The mean over seeds of each seed's mean over photos (each photo weighted once).
  public var mean: Double
  /// Image-level sample standard deviation (for display; the bound does not use it).
  public var imageStd: Double
  public var images: Int
  /// Distinct (seed, photo) clusters.
  public var clusters: Int
  public var seeds: Int
  /// Each seed's mean over its photos.
  public var seedMeans: [Double]
  /// The standard error of `mean`: clustered by photo within seeds, plus between seeds.
  public var standardError: Double
  public var degreesOfFreedom: Int
  /// mean ± t(0.95, dof)·standardError; infinite (unknown) with a single cluster.
  public var upper: Double
  public var lower: Double

  /// Builds the estimate. For a binary measure (0 or 1 per image) each seed's clustered
  /// variance is at least the Agresti–Coull binomial variance p̃(1 − p̃)/n of its n images,
  /// p̃ = (x + 2)/(n + 4), so that 0 hits out of n images does not claim a zero-width interval.
  public init(_ samples: [ScoredImage], binary: Bool = false) {
    images = samples.count
    let values = samples.map(\.score)
    let overall = values.isEmpty ? Double.nan : values.reduce(0, +) / Double(values.count)
    imageStd = values.count < 2 ? 0 : (values.reduce(0) { $0 + ($1 - overall) * ($1 - overall) } / Double(values.count - 1)).squareRoot()
    var bySeed: [UInt64: [String: [Double]]] = [:]
    var imagesPerSeed: [UInt64: Int] = [:]
    for s in samples {
      bySeed[s.seed, default: [:]][s.photo, default: []].append(s.score)
      imagesPerSeed[s.seed, default: 0] += 1
    }
    let seedKeys = bySeed.keys.sorted()
    seeds = seedKeys.count
    var means: [Double] = []
    var withinVariances: [Double] = []
    var clusterCount = 0
    var dof = 0
    for key in seedKeys {
      // In photo order: a dictionary's order differs between two equal dictionaries, and the
      // sum's last bit with it (a resumed verdict must equal the first one exactly).
      let photos = bySeed[key]!
      let photoMeans = photos.keys.sorted().map { p in photos[p]!.reduce(0, +) / Double(photos[p]!.count) }
      let n = photoMeans.count
      clusterCount += n
      dof += n - 1
      let m = photoMeans.reduce(0, +) / Double(n)
      means.append(m)
      guard n >= 2 else {
        withinVariances.append(.infinity)
        continue
      }
      var v = photoMeans.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(n - 1) / Double(n)
      if binary {
        let images = Double(imagesPerSeed[key] ?? n)
        let hits = photos.keys.sorted().reduce(0) { $0 + photos[$1]!.reduce(0, +) }
        let p = (hits + 2) / (images + 4)
        v = max(v, p * (1 - p) / images)
      }
      withinVariances.append(v)
    }
    clusters = clusterCount
    seedMeans = means
    degreesOfFreedom = max(dof, 0)
    let k = Double(means.count)
    mean = means.isEmpty ? .nan : means.reduce(0, +) / k
    let within = withinVariances.isEmpty ? Double.infinity : withinVariances.reduce(0, +) / (k * k)
    var between = 0.0
    if means.count >= 2 {
      let mm = mean
      between = means.reduce(0) { $0 + ($1 - mm) * ($1 - mm) } / (k - 1) / k
    }
    standardError = (within + between).squareRoot()
    if degreesOfFreedom >= 1, standardError.isFinite {
      let t = StudentT.quantile95(degreesOfFreedom: degreesOfFreedom)
      upper = mean + t * standardError
      lower = mean - t * standardError
      if binary {
        // A share lies in [0, 1]; the t interval of a few images can reach past either end.
        (lower, upper) = (max(lower, 0), min(upper, 1))
      }
    } else {
      upper = .infinity
      lower = -.infinity
    }
  }
}

/// Where a measure's interval lies against its threshold.
public enum LeakageStatus: String, Codable, Sendable, Equatable {
  /// The upper bound is under the threshold.
  case `private`
  /// Even the lower bound reaches the threshold.
  case leaks
  /// The interval contains the threshold: another run may decide either way (within noise).
  case undecided

  public init(_ estimate: LeakageEstimate, threshold: Double) {
    if estimate.upper < threshold {
      self = .private
    } else if estimate.lower >= threshold {
      self = .leaks
    } else {
      self = .undecided
    }
  }

  /// Only `private` lets a cut be chosen.
  public var isPrivate: Bool { self == .private }
}

/// The one-sided 95 % quantile of Student's t distribution.
public enum StudentT {
  static let table: [Double] = [
    6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
    1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697,
  ]

  /// Exact table values for 1–30 degrees of freedom; above, the Cornish–Fisher expansion
  /// around the normal quantile 1.6449 (error below 1e-3).
  public static func quantile95(degreesOfFreedom v: Int) -> Double {
    precondition(v >= 1, "degrees of freedom must be ≥ 1")
    if v <= table.count { return table[v - 1] }
    let z = 1.6448536269514722
    let n = Double(v)
    let g1 = (z * z * z + z) / 4
    let g2 = (5 * pow(z, 5) + 16 * z * z * z + 3 * z) / 96
    return z + g1 / n + g2 / (n * n)
  }
}
