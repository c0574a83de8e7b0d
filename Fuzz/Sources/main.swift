// veil-fuzz: libFuzzer over every decoder Veil points at files or peers (Fuzz/README.md).
//
//   veil-fuzz list                     the targets, one a line
//   veil-fuzz seeds DIR                writes each target's seed corpus to DIR/<target>/
//   veil-fuzz TARGET [libFuzzer flags] [corpus dirs or files]
//                                      (-fork=N and -jobs=N too: the children find the
//                                      target in VEIL_FUZZ_TARGET)
//
// Built only by `make fuzz` (VEIL_FUZZ=1, -sanitize=fuzzer, into .build-fuzz).
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

let arguments = CommandLine.arguments
let usage = "usage: veil-fuzz list | seeds DIR | TARGET [libFuzzer flags] [corpus...]"

// libFuzzer's -fork and -jobs modes start their children with the flags and corpus alone, not
// the target: it travels in VEIL_FUZZ_TARGET, which the parent sets for them.
let inherited = ProcessInfo.processInfo.environment["VEIL_FUZZ_TARGET"]
let first = arguments.dropFirst().first
let named = first.map { $0.hasPrefix("-") || $0.hasPrefix("/") } == true ? inherited : first
let flags = named == first ? Array(arguments.dropFirst(2)) : Array(arguments.dropFirst())

switch named {
case nil:
  FileHandle.standardError.write(Data((usage + "\n").utf8))
  exit(2)
case "list":
  for t in FuzzTarget.all { print("\(t.name)\t\(t.summary)") }
  exit(0)
case "seeds":
  guard arguments.count == 3 else {
    FileHandle.standardError.write(Data((usage + "\n").utf8))
    exit(2)
  }
  do {
    let written = try Seeds.write(to: URL(fileURLWithPath: arguments[2]))
    print("wrote \(written) seed files under \(arguments[2])")
    exit(0)
  } catch {
    FileHandle.standardError.write(Data("veil-fuzz seeds: \(error)\n".utf8))
    exit(1)
  }
case let name?:
  guard let target = FuzzTarget.all.first(where: { $0.name == name }) else {
    let names = FuzzTarget.all.map(\.name).joined(separator: ", ")
    FileHandle.standardError.write(Data("veil-fuzz: unknown target '\(name)'; the targets are \(names)\n".utf8))
    exit(2)
  }
  Harness.target = target
  setenv("VEIL_FUZZ_TARGET", name, 1)
  // One empty input first, outside libFuzzer: the targets' fixtures (keys, models, a test
  // authority's chain) are built then, so that what their libraries keep for the process's
  // life is not counted as a leak of the first input.
  target.run([])
  exit(Harness.run(arguments: [arguments[0]] + flags))
}
