/// veil: the command-line tool, the single entry point to every layer.
///
/// Each subcommand parses and validates its arguments, calls the library modules, and prints
/// human-readable text or, with --json, one JSON document for scripts. It holds no numerical
/// or protocol logic of its own.
import ArgumentParser
import Foundation
import VeilFormats
import VeilTensor

@main
struct Veil: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "veil",
    abstract: "Private inference of split DNNs across a TEE and an untrusted accelerator.",
    discussion: """
      Veil cuts a CNN in two: the head runs inside a trusted execution environment, the tail on
      an untrusted accelerator. These commands run and measure models on Veil's engine
      (oneDNN on the CPU), and check the TEE side: attestation evidence and the Gramine manifest.
      """,
    subcommands: [
      Models.self, Inspect.self, Cuts.self, SplitModel.self, Profile.self, Plan.self, Run.self, Bench.self, Export.self,
      DataCommand.self, Attest.self, Enclave.self, Keys.self, SSIMCommand.self, Infer.self, LoadTest.self, Train.self,
      Attack.self, Privacy.self, AttackBench.self, Accelerator.self, Demo.self,
    ]
  )
}

/// Options every command that computes shares.
struct EngineOptions: ParsableArguments {
  @Option(help: "Kernel threads (default: every core).")
  var threads: Int?

  func apply() throws {
    if let threads {
      do { try Engine.shared.setThreads(threads) } catch { throw ValidationError("\(error)") }
    }
  }
}

/// Writes a JSON document to standard output.
func printJSON<T: Encodable>(_ value: T) throws {
  FileHandle.standardOutput.write(try VeilJSON.encoder().encode(value))
  FileHandle.standardOutput.write("\n".data(using: .utf8)!)
}

/// Progress and notes go to standard error so that --json output stays clean.
func note(_ s: String) {
  FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

/// Peak resident memory of this process so far (Linux ru_maxrss is in KiB).
func peakResidentBytes() -> Int {
  var u = rusage()
  getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
  return Int(u.ru_maxrss) * 1024
}

/// The nearest-rank percentile `p` (0…1) of ascending `sorted` values; 0 for none.
func percentile(_ sorted: [Double], _ p: Double) -> Double {
  sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1))]
}
