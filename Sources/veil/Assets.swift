import Foundation
import VeilFormats
import VeilModels

extension AssetCache {
  /// ImageNet class names from the cached darknet lists, or nil when they are not fetched.
  static func imageNetClasses() throws -> [String]? {
    guard let labels = file("imagenet.labels.list"), let names = file("imagenet.shortnames.list") else { return nil }
    return try ImageNetClasses.load(labels: labels, shortNames: names)
  }
}
