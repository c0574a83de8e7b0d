// Order statistics of timings and scores, one definition for every module that reports them:
// the profiler's segments, `veil bench`, `veil loadtest`, `veil accelerator bench`, the
// serving metrics, and the privacy tools' timings and distances. In VeilTensor, the layer every
// other module builds on, so that none defines its own.

/// The nearest-rank percentile `p` (0…1) of ascending `sorted` values (of 5 runs the 90th is
/// the slowest); 0 for none.
public func percentile(_ sorted: [Double], _ p: Double) -> Double {
  sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1))]
}

extension [Double] {
  /// The median (the mean of the two middle values for an even count; at least one value).
  public var median: Double {
    let v = sorted()
    return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
  }
}
