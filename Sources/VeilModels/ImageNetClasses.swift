import Foundation
import VeilFormats

/// The 1000 ImageNet-1k class names in the standard 0–999 order, from darknet's lists (Debian
/// `darknet`: `imagenet.labels.list` holds WordNet ids, `imagenet.shortnames.list` their names,
/// line by line; the first 1000 lines are the 1k classes, and sorted by WordNet id they give
/// the index order every ImageNet classifier uses).
public enum ImageNetClasses {
  public enum LoadError: Error, CustomStringConvertible {
    case unreadable(String, underlying: String)
    case tooShort(String, lines: Int)
    case notAWordNetID(String, line: Int, text: String)

    public var description: String {
      switch self {
      case .unreadable(let f, let e): return "cannot read ImageNet class list '\(f)': \(e)"
      case .tooShort(let f, let n): return "ImageNet class list '\(f)' has \(n) lines; the first 1000 are needed"
      case .notAWordNetID(let f, let line, let text):
        return "'\(f)' line \(line): '\(text)' is not a WordNet id (n + 8 digits)"
      }
    }
  }

  /// Names by class index (0–999).
  public static func load(labels: URL, shortNames: URL) throws -> [String] {
    func lines(_ url: URL) throws -> [Substring] {
      let text: String
      do { text = try String(contentsOf: url, encoding: .utf8) } catch {
        throw LoadError.unreadable(url.path, underlying: "\(error)")
      }
      let all = text.split(separator: "\n", omittingEmptySubsequences: false)
      guard all.count >= 1000 else { throw LoadError.tooShort(url.path, lines: all.count) }
      return Array(all.prefix(1000))
    }
    let ids = try lines(labels)
    let names = try lines(shortNames)
    for (k, id) in ids.enumerated() {
      guard id.count == 9, id.first == "n", id.dropFirst().allSatisfy(\.isNumber) else {
        throw LoadError.notAWordNetID(labels.path, line: k + 1, text: String(id))
      }
    }
    return ids.indices.sorted { ids[$0] < ids[$1] }.map { String(names[$0]) }
  }
}

extension AssetCache {
  /// ImageNet class names from the cached darknet lists, or nil when they are not fetched.
  public static func imageNetClasses() throws -> [String]? {
    guard let labels = file("imagenet.labels.list"), let names = file("imagenet.shortnames.list") else { return nil }
    return try ImageNetClasses.load(labels: labels, shortNames: names)
  }
}
