/// VeilTestSupport: test-only support for comparing Veil with ONNX Runtime.
///
/// Owns what the numerical test targets share: tolerances and element-wise comparisons of
/// tensors, one run of `scripts/reference.py` (ONNX Runtime in the project's `.venv`) over a
/// batch of named (graph, inputs) cases, and `ReferenceBackend`, a plain-loop second backend
/// behind VeilTensor's `ComputeBackend` and `TrainingBackend` seams that the op table and the
/// training tests also run on; the fuzz corpus and the ONNX seeds of the fuzz harness, a
/// test SEV-SNP authority (a chip's certificate chain and the reports it signs), hand-built
/// PyTorch checkpoints and PNG/JPEG files (Checkpoints.swift, ImageFiles.swift), and the
/// helpers that find fetched assets and export PyTorch models (`TestAssets`, `TorchExport`). It is linked
/// by test targets and the `veil-fuzz` harness only (Package.swift, `VEIL_FUZZ`), never by the
/// `veil` tool or any library a user ships; it may import VeilTensor, VeilGraph, VeilFormats
/// and VeilTEE (with the crypto libraries the SNP authority signs with), and nothing above
/// them. The comparisons do not assert: callers turn a failed comparison into an assertion
/// themselves, so the messages say which case and which output; only the XCTest helpers
/// (ErrorMessages.swift, and `PythonScript`'s skip when PyTorch is missing) import XCTest.
import Foundation
import VeilFormats
import VeilGraph
import VeilTensor

// MARK: - Tolerances and comparisons

/// Element-wise agreement: |veil − ort| ≤ abs + rel·|ort|.
public struct Tolerance: Sendable, CustomStringConvertible {
  public var abs: Float
  public var rel: Float

  public init(abs: Float, rel: Float) {
    self.abs = abs
    self.rel = rel
  }

  /// Small graphs with reductions of at most a few hundred terms.
  public static let standard = Tolerance(abs: 1e-4, rel: 1e-4)
  /// Bit-exact data movement (copies, pads, max, concat).
  public static let exact = Tolerance(abs: 0, rel: 0)

  /// max|veil − ort| ≤ `fraction` · max|ort|: an error bound scaled by the reference's peak, for
  /// deep networks whose small outputs carry the rounding of large ones.
  public static func relativeToPeak(_ fraction: Float, of reference: Tensor) -> Tolerance {
    Tolerance(abs: fraction * reference.scalars.reduce(0) { max($0, Swift.abs($1)) }, rel: 0)
  }

  public var description: String { "abs \(abs) + rel \(rel)" }
}

/// Veil's tensor against the reference, element by element, with the worst violation.
public struct Comparison: Sendable, CustomStringConvertible {
  public var passed = true
  public var shapeMismatch: (got: [Int], want: [Int])?
  public var maxAbsError: Float = 0
  /// max|ort|, the scale `relativeToPeakError` divides by.
  public var maxAbsWant: Float = 0
  public var worstIndex = 0
  public var worstGot: Float = 0
  public var worstWant: Float = 0
  public var violations = 0
  public var count = 0
  public var tolerance: Tolerance

  public init(got: Tensor, want: Tensor, tolerance: Tolerance) {
    self.tolerance = tolerance
    guard got.shape == want.shape else {
      shapeMismatch = (got.shape, want.shape)
      passed = false
      return
    }
    let g = got.scalars
    let w = want.scalars
    count = g.count
    var worstExcess: Float = -1
    for i in g.indices {
      let err = Swift.abs(g[i] - w[i])
      let allowed = tolerance.abs + tolerance.rel * Swift.abs(w[i])
      // NaN on either side is a violation.
      let bad = !(err <= allowed)
      if bad { violations += 1 }
      maxAbsError = max(maxAbsError, err.isNaN ? .infinity : err)
      maxAbsWant = max(maxAbsWant, Swift.abs(w[i]))
      let excess = err.isNaN ? .infinity : err - allowed
      if excess > worstExcess {
        worstExcess = excess
        worstIndex = i
        worstGot = g[i]
        worstWant = w[i]
      }
    }
    passed = violations == 0
  }

  /// max|veil − ort| / max|ort|.
  public var relativeToPeakError: Float { maxAbsWant > 0 ? maxAbsError / maxAbsWant : maxAbsError }

  public var description: String {
    if let (g, w) = shapeMismatch { return "shape \(g), ORT gives \(w)" }
    return "max |err| \(maxAbsError) (tolerance \(tolerance)); \(violations)/\(count) outside"
      + (violations > 0 ? ", worst at flat index \(worstIndex): veil \(worstGot), ORT \(worstWant)" : "")
  }
}

// MARK: - Reference outputs from ONNX Runtime

/// One graph with its inputs (in `graph.inputs` order), named uniquely within a batch.
public struct ReferenceCase: Sendable {
  public var name: String
  public var graph: Graph
  public var inputs: [Tensor]

  public init(name: String, graph: Graph, inputs: [Tensor]) {
    self.name = name
    self.graph = graph
    self.inputs = inputs
  }
}

/// Why reference outputs could not be computed; each case says what to do or where to look.
public enum ReferenceError: Error, CustomStringConvertible {
  /// The project's Python environment is not set up.
  case pythonMissing(python: String, repoRoot: String)
  /// Two cases share a name, so their outputs could not be told apart.
  case duplicateName(String)
  /// Writing a case's ONNX model or inputs failed.
  case writing(case: String, detail: String)
  /// The Python process could not be started.
  case launch(python: String, detail: String)
  /// reference.py ran and reported failures; `log` is its whole output, one line per case.
  case script(status: Int32, log: String)
  /// ORT's outputs for a case could not be read back.
  case reading(case: String, detail: String)

  public var description: String {
    switch self {
    case .pythonMissing(let python, let root):
      return "\(python) is missing: the reference tests compare against ONNX Runtime in the project's Python "
        + "environment. Run `make test` or `scripts/setup-python.sh` from \(root) first."
    case .duplicateName(let name): return "two reference cases are named '\(name)'"
    case .writing(let name, let detail): return "writing case '\(name)' failed: \(detail)"
    case .launch(let python, let detail): return "cannot start \(python): \(detail)"
    case .script(let status, let log): return "reference.py exited with \(status):\n\(log)"
    case .reading(let name, let detail): return "reading ORT's outputs for '\(name)' failed: \(detail)"
    }
  }
}

/// Expected outputs computed by ONNX Runtime: every case is written as ONNX + .npy into one
/// folder and `scripts/reference.py run` handles them all in a single Python process (ORT on
/// the CPU, graph optimizations off), so a suite pays Python's start-up once.
public enum ONNXRuntimeReference {
  /// The repository root, three levels above this file (Sources/VeilTestSupport/<file>).
  public static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
  public static let python = repoRoot.appendingPathComponent(".venv/bin/python")
  public static let script = repoRoot.appendingPathComponent("scripts/reference.py")

  /// ORT's outputs for every case, by case name, in `graph.outputs` order.
  ///
  /// Without `directory`, the cases go into a fresh temporary folder that is removed before
  /// returning (large models included). With it, they are written there and kept, each in the
  /// subfolder `folderName(index, name)`, to be looked at in NumPy.
  public static func outputs(for cases: [ReferenceCase], in directory: URL? = nil) throws(ReferenceError)
    -> [String: [Tensor]]
  {
    guard FileManager.default.isExecutableFile(atPath: python.path) else {
      throw .pythonMissing(python: python.path, repoRoot: repoRoot.path)
    }
    var names = Set<String>()
    for c in cases where !names.insert(c.name).inserted { throw .duplicateName(c.name) }
    let fm = FileManager.default
    let dir = directory ?? fm.temporaryDirectory.appendingPathComponent("veil-reference-\(UUID().uuidString)")
    defer { if directory == nil { try? fm.removeItem(at: dir) } }
    for (i, c) in cases.enumerated() {
      do {
        let caseDir = dir.appendingPathComponent(folderName(i, c.name))
        try fm.createDirectory(at: caseDir, withIntermediateDirectories: true)
        try ONNXWriter.write(c.graph, to: caseDir.appendingPathComponent("model.onnx"))
        for (k, t) in c.inputs.enumerated() { try NPY.write(t, to: caseDir.appendingPathComponent("input_\(k).npy")) }
      } catch {
        throw .writing(case: c.name, detail: "\(error)")
      }
    }
    let process = Process()
    process.executableURL = python
    process.arguments = [script.path, "run", dir.path]
    process.currentDirectoryURL = repoRoot
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { throw .launch(python: python.path, detail: "\(error)") }
    // Read to the end before waiting, so a chatty child never blocks on a full pipe.
    let log = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw .script(status: process.terminationStatus, log: log) }
    var result: [String: [Tensor]] = [:]
    for (i, c) in cases.enumerated() {
      let caseDir = dir.appendingPathComponent(folderName(i, c.name))
      do {
        result[c.name] = try c.graph.outputs.indices.map {
          try NPY.read(caseDir.appendingPathComponent("expected_\($0).npy"))
        }
      } catch {
        throw .reading(case: c.name, detail: "\(error)")
      }
    }
    return result
  }

  /// The subfolder of case `index` (`007_conv_groups2`): zero-padded so that reference.py, which
  /// sorts folder names, runs the cases in table order.
  public static func folderName(_ index: Int, _ name: String) -> String {
    let n = String(index)
    return String(repeating: "0", count: max(0, 3 - n.count)) + n + "_" + name
  }
}

extension SeededGenerator {
  /// A generator seeded by the FNV-1a hash of `label`: a stable seed per test case, independent
  /// of the order in which cases are listed.
  public init(label: String) {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in label.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    self.init(seed: h)
  }
}
