/// veil: the command-line tool, the single entry point to every layer.
///
/// Each subcommand parses and validates its arguments, calls the library modules, and prints
/// human-readable text or, with --json, one JSON document for scripts. It holds no numerical
/// or protocol logic of its own (the kernels, attacks, planner, trust checks and servers are the
/// library's; a command only fits a user's files to them, as `veil train` sizes images to its
/// model): one file per command, with the helpers they share in Support.swift and the option
/// groups several commands share beside their first user, each with the helpers that go with it
/// (`EngineOptions` here; `AttackOptions` in AttackOptions.swift with the attack commands'
/// progress printer and verdict lines; `AttestationOptions` and `EnclaveEndpointOptions` in
/// Infer.swift). It may import every library module; none imports it.
import ArgumentParser
import Foundation
import VeilFormats
import VeilTensor

/// The `veil` command and its subcommands.
@main
struct Veil: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "veil",
    abstract: "Private inference of split DNNs across a TEE and an untrusted accelerator.",
    discussion: """
      Veil cuts a vision model (a CNN or a ViT) in two: the head runs inside a trusted execution
      environment, the tail on an untrusted accelerator. These commands run and measure models on Veil's engine
      (oneDNN on the CPU), and check the TEE side: attestation evidence and the Gramine manifest.
      """,
    subcommands: [
      Models.self, Inspect.self, Cuts.self, SplitModel.self, Profile.self, Plan.self, Run.self, Bench.self, Export.self,
      DataCommand.self, Attest.self, Enclave.self, Keys.self, SSIMCommand.self, Infer.self, LoadTest.self, Train.self,
      Attack.self, Privacy.self, AttackBench.self, Accelerator.self, Demo.self, Deploy.self,
    ]
  )

  static func main() async {
    ThreadWaiting.apply(arguments: CommandLine.arguments)
    do {
      var command = try parseAsRoot()
      if var async = command as? AsyncParsableCommand {
        try await async.run()
      } else {
        try command.run()
      }
    } catch {
      exit(withError: error)
    }
  }
}

/// How the kernels' threads wait between parallel regions (`Engine.ThreadWaiting`; Veil's own
/// team, CDNNL's team.c, which oneDNN's OpenMP calls reach). Spinning between passes burns the
/// cores every other process on a shared machine needs; sleeping at once costs a thread
/// wake-up (30-80 µs in a VM) at every parallel region, 1.4-2.5× a small CNN's time. By
/// default every command, the servers included, spins between the regions of one pass (at
/// most 200 µs a wait) and sleeps at once between passes (docs/benchmarks.md, "Veil's own
/// thread team"). `veil bench --spin-wait` keeps the threads spinning between passes too;
/// `VEIL_THREAD_WAIT` chooses for benchmarks of the policies themselves: `held` (the default;
/// `VEIL_SPIN_US` microseconds, default 200; `short`, libgomp's days' name, is taken for it),
/// `passive` or `spin`.
enum ThreadWaiting {
  static func apply(arguments: [String]) {
    let env = ProcessInfo.processInfo.environment
    var policy = env["VEIL_THREAD_WAIT"].map { $0.lowercased() } ?? "held"
    if arguments.contains("--spin-wait") { policy = "spin" }
    let spin = env["VEIL_SPIN_US"].flatMap { Int($0) }.map { max(0, $0) }
    switch policy {
    case "passive": Engine.threadWaiting = .passive
    case "spin": Engine.threadWaiting = .spinning
    case "held", "short": Engine.threadWaiting = spin.map { .held(spinMicroseconds: $0) } ?? .standard
    default:
      FileHandle.standardError.write(
        Data("veil: VEIL_THREAD_WAIT='\(policy)' is not held, passive or spin; using the default\n".utf8))
      Engine.threadWaiting = .standard
    }
  }
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
