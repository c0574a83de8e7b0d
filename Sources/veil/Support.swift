import ArgumentParser
import Crypto
import Foundation
import Logging
import ServiceLifecycle
import VeilData
import VeilFormats
import VeilGraph
import VeilModels
import VeilPlanning
import VeilPrivacy
import VeilServing
import VeilTEE
import VeilTensor
import X509

// Helpers the commands share: model loading, a photo's preprocessing for a model, the relying
// party's collateral, printing, notes, sizes and times.

func readFileBytes(_ path: String, what: String) throws -> [UInt8] {
  guard let d = FileManager.default.contents(atPath: path) else {
    throw ValidationError("\(what) '\(path)': no such readable file")
  }
  return Array(d)
}

func pad(_ s: String, _ width: Int) -> String {
  s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

func bytesText(_ b: Int) -> String {
  if b >= 1 << 20 { return String(format: "%.1f MiB", Double(b) / 1_048_576) }
  if b >= 1 << 10 { return String(format: "%.1f KiB", Double(b) / 1024) }
  return "\(b) B"
}

func duration(_ s: Double) -> String {
  guard s.isFinite else { return "?" }
  let t = Int(s.rounded())
  return t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
}

/// Writes a JSON document to standard output.
func printJSON<T: Encodable>(_ value: T) throws {
  FileHandle.standardOutput.write(try VeilJSON.encoder().encode(value))
  FileHandle.standardOutput.write("\n".data(using: .utf8)!)
}

/// A graph input or output, by name and shape, as `veil inspect` and split's cut.json list it.
struct Port: Encodable {
  var name: String
  var shape: [Int]

  /// The ports of `values` (inputs or outputs of `g`); a shape not inferred is [].
  static func of(_ values: [ValueID], in g: Graph) -> [Port] {
    values.map { Port(name: g[$0].name, shape: g.shape($0) ?? []) }
  }
}

/// Progress and notes go to standard error so that --json output stays clean.
func note(_ s: String) {
  FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

/// Peak resident memory of this process so far: VmHWM in /proc/self/status, the high-water
/// mark of this program's own address space. Linux's ru_maxrss is not that: it keeps the
/// parent's peak across fork and exec, so a `veil bench` started by a Python script holding
/// 229 MiB reported at least 229 MiB for every model (bench/peers.py's tables did). ru_maxrss
/// only where /proc is not mounted.
func peakResidentBytes() -> Int {
  if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
    let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
    let kib = line.split(whereSeparator: \.isWhitespace).dropFirst().first.flatMap({ Int($0) })
  {
    return kib * 1024
  }
  var u = rusage()
  getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
  return Int(u.ru_maxrss) * 1024
}

/// The tail timer an `--accelerator local|HOST:PORT` option names (nil: local).
func remoteTailTimer(_ accelerator: String, model: String) throws -> (any TailTimer)? {
  guard accelerator != "local" else { return nil }
  do {
    return KServeTailTimer(endpoint: try KServeEndpoint(parsing: accelerator), model: model)
  } catch {
    throw ValidationError("--accelerator '\(accelerator)': give local or HOST:PORT of a KServe v2 server (\(error))")
  }
}

/// A failure while running (network, a refusal), as opposed to a bad argument: no usage text.
struct RuntimeFailure: Error, CustomStringConvertible {
  var description: String
  init(_ d: String) { description = d }
}

/// The library's `ModelLoader`, with its errors as the command line shows them.
enum ModelSource {
  static func load(_ spec: String, batch: Int = 1, seed: UInt64 = 0) throws -> Graph {
    do { return try ModelLoader.load(spec, batch: batch, seed: seed) } catch let e as ModelLoadError { throw ValidationError("\(e)") }
  }

  static func check(_ spec: String) throws {
    do { try ModelLoader.check(spec) } catch let e as ModelLoadError { throw ValidationError("\(e)") }
  }

  static func inputShape(_ g: Graph) -> [Int] { ModelLoader.inputShape(g) }
}

/// What `--collateral` names: DCAP collateral (a JSON file, as a PCCS serves it) or SEV-SNP
/// collateral (a folder holding vcek.der, ask.pem, ark.pem and optionally crl.pem, as AMD's KDS
/// serves them).
struct RelyingPartyCollateral {
  var dcap: Collateral?
  var snp: SNPCollateral?

  init(path: String?) throws {
    guard let path else { return }
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
      throw ValidationError("--collateral '\(path)': no such file or folder")
    }
    do {
      if isDirectory.boolValue {
        snp = try SNPCollateral(directory: URL(fileURLWithPath: path))
      } else {
        dcap = try Collateral(json: Data(try readFileBytes(path, what: "collateral")))
      }
    } catch let e as ValidationError {
      throw e
    } catch {
      throw ValidationError("--collateral '\(path)': \(error)")
    }
  }

  /// A verifier of any evidence kind at `time`. Without a folder, SEV-SNP evidence is checked
  /// with the certificates it carries (still up to AMD's pinned root keys).
  func verifier(policy: Policy, time: Date, root: Certificate? = nil, allowMissingCRL: Bool) throws
    -> AttestationVerifier
  {
    var snpVerifier = SNPVerifier(collateral: snp, time: time)
    snpVerifier.requireCRL = !allowMissingCRL
    return AttestationVerifier(
      dcap: try DCAPVerifier(root: root, collateral: dcap, time: time), snp: snpVerifier, policy: policy)
  }
}

extension Run {
  /// A photo's preprocessing at the model's input size, and what to call it. The layout follows
  /// where the 3 channels sit. Without a preset, a zoo model uses the transform it declares.
  static func preprocessing(_ preset: VeilData.Preprocessing.Preset?, for shape: [Int], model: String) throws
    -> (VeilData.Preprocessing, String)
  {
    guard shape.count == 4, shape[1] == 3 || shape[3] == 3 else {
      throw ValidationError("model '\(model)' takes input \(shape): not an image batch of 3 channels, [N,3,H,W] or [N,H,W,3]")
    }
    let layout: TensorLayout = shape[1] == 3 ? .nchw : .nhwc
    let (h, w) = layout == .nchw ? (shape[2], shape[3]) : (shape[1], shape[2])
    if preset == nil, ModelZoo.names.contains(model) {
      let t = try ModelZoo.info(model).transform
      guard let interpolation = Interpolation(rawValue: t.interpolation) else {
        throw ValidationError("model '\(model)' declares interpolation '\(t.interpolation)', which Veil cannot resize with")
      }
      let p = VeilData.Preprocessing(
        resizeShorterSide: t.resize, cropWidth: w, cropHeight: h, interpolation: interpolation,
        normalization: Normalization(mean: t.pixelMean, std: t.pixelStd), layout: layout)
      return (p, "\(model)'s own")
    }
    let chosen = preset ?? .imagenet
    return (VeilData.Preprocessing(preset: chosen, width: w, height: h, layout: layout), chosen.rawValue)
  }
}
