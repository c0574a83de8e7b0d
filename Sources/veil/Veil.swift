import ArgumentParser
import Foundation
import VeilFormats
import VeilTensor

/// veil: the command-line tool, the single entry point to every layer.
///
/// Each subcommand parses and validates its arguments, calls the library modules, and prints
/// human-readable text or, with --json, one JSON document for scripts. It holds no numerical
/// or protocol logic of its own.
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
