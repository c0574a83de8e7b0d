/// veil: the command-line tool, the single entry point to every layer.
///
/// Each subcommand parses and validates its arguments, calls the library modules, and prints
/// human-readable text or, with --json, one JSON document for scripts. It holds no numerical
/// or protocol logic of its own: one file per command, with the helpers they share in
/// Support.swift. It may import every library module; none imports it.
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

/// How oneDNN's OpenMP threads wait between parallel regions. Spinning (active waiting) burns
/// the cores every other process on a shared machine needs: with two busy neighbours a
/// two-thread step ran 1.5–65× slower than on one thread (docs/training.md). Sleeping at once
/// (passive waiting) costs a quiet machine a thread wake-up, 30–80 µs in this VM, at every
/// parallel region: 2–3.5× the spinning time on small CNNs. So Veil chooses, whatever the
/// OpenMP environment says (docs/benchmarks.md, "Waiting between parallel regions"):
/// - the servers (`enclave serve`, `accelerator serve`, `keys serve`) wait passively: under
///   eight clients on two cores, three processes that spin even briefly served 15 % fewer
///   requests a second;
/// - every other command spins briefly, then sleeps: libgomp's GOMP_SPINCOUNT of 300
///   iterations (about 20 µs here) with no wait policy set, long enough to bridge the gap
///   between two steps of a pass. A lone pass then runs as fast as spinning on a quiet machine
///   (EfficientNet-Lite0 2.7 against 4.7 ms passive), and 1.2× passive beside a busy loop,
///   where a spin count of 1,000–5,000 lost up to 2×.
/// `veil bench --spin-wait` keeps the spinning best case. `VEIL_THREAD_WAIT` chooses for
/// benchmarks of the policies themselves: `short` (`VEIL_SPIN_COUNT` iterations, default 300),
/// `passive` or `spin`. libgomp reads the setting once, when it is loaded (before `main`), so
/// the process sets it and executes itself again; the marker variable stops a second round.
enum ThreadWaiting {
  static let marker = "VEIL_THREAD_WAITING"

  static func apply(arguments: [String]) {
    let env = ProcessInfo.processInfo.environment
    let serving = arguments.count >= 3 && ["enclave", "accelerator", "keys"].contains(arguments[1]) && arguments[2] == "serve"
    var policy = env["VEIL_THREAD_WAIT"].map { $0.lowercased() } ?? (serving ? "passive" : "short")
    if arguments.contains("--spin-wait") { policy = "spin" }
    if !["passive", "spin", "short"].contains(policy) {
      FileHandle.standardError.write(
        Data("veil: VEIL_THREAD_WAIT='\(policy)' is not short, passive or spin; using the default\n".utf8))
      policy = serving ? "passive" : "short"
    }
    let spins = env["VEIL_SPIN_COUNT"].flatMap { Int($0) }.map { max(0, $0) } ?? 300
    let wanted = policy == "short" ? "short:\(spins)" : policy
    guard env[marker] != wanted else { return }
    switch policy {
    case "spin":
      setenv("OMP_WAIT_POLICY", "ACTIVE", 1)
      unsetenv("GOMP_SPINCOUNT")
    case "short":
      unsetenv("OMP_WAIT_POLICY")
      setenv("GOMP_SPINCOUNT", "\(spins)", 1)
    default:
      setenv("OMP_WAIT_POLICY", "PASSIVE", 1)
      unsetenv("GOMP_SPINCOUNT")
    }
    setenv(marker, wanted, 1)
    // On failure the process goes on as it is: correct, only worse on a busy machine.
    execv("/proc/self/exe", CommandLine.unsafeArgv)
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
