import Foundation

/// Where `scripts/fetch_assets.py` (`make assets`) puts the registry-shipped models, photos and
/// label lists of scripts/assets.json: `$VEIL_CACHE/assets`, else
/// `$XDG_CACHE_HOME/veil/assets`, else `~/.cache/veil/assets`.
public enum AssetCache {
  public static var directory: URL {
    let env = ProcessInfo.processInfo.environment
    if let v = env["VEIL_CACHE"], !v.isEmpty { return URL(fileURLWithPath: v).appendingPathComponent("assets") }
    let base: URL
    if let x = env["XDG_CACHE_HOME"], !x.isEmpty {
      base = URL(fileURLWithPath: x)
    } else {
      base = URL(fileURLWithPath: env["HOME"] ?? NSHomeDirectory()).appendingPathComponent(".cache")
    }
    return base.appendingPathComponent("veil/assets")
  }

  /// The cached file `name`, or nil when it has not been fetched.
  public static func file(_ name: String) -> URL? {
    let url = directory.appendingPathComponent(name)
    return FileManager.default.fileExists(atPath: url.path) ? url : nil
  }

  /// What to tell a user whose asset is missing.
  public static func missingAdvice(_ name: String) -> String {
    "\(directory.appendingPathComponent(name).path) is missing: run `make assets` (scripts/fetch_assets.py) to fetch and checksum the registry-shipped assets"
  }
}
