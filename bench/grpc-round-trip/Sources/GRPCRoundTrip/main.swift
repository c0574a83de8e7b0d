// grpc-round-trip: the round trip of a request of N bytes answered by a small message, as one
// unary call and as one message each way on an open bidirectional stream, between two processes
// on loopback, alternating in one run. With --gap-us the client idles before each request, as the
// enclave and the accelerator do between the steps of a private request.
//
//   grpc-round-trip [--bytes 150000,1605632] [--gap-us 0,5000] [--calls 100] [--rounds 3] [--answer-bytes 4096]
//
// The server is this program started again as `grpc-round-trip serve` (it prints its port). Both
// sides use the transport settings of Veil's servers (Sources/VeilServing/Limits.swift): a
// receive window of a whole message up to 4 MiB and frames up to 1 MiB.
//
// Build and run: `swift build -c release --package-path bench/grpc-round-trip`, then
// `bench/grpc-round-trip/.build/release/GRPCRoundTrip`. Generated/ comes from
// Protos/veil_bench_echo.proto, made as Veil's own (scripts/generate-protos.sh): protoc 3.21 with
// protoc-gen-swift and protoc-gen-grpc-swift-2 built from the pinned packages, run in this folder
// as `protoc --proto_path=Protos --swift_out=Sources/GRPCRoundTrip/Generated
// --grpc-swift-2_out=Sources/GRPCRoundTrip/Generated veil_bench_echo.proto`.
import Dispatch
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf

struct EchoService: Veil_Bench_V1_Echo.SimpleServiceProtocol {
  let answer: Data
  func unary(request: Veil_Bench_V1_Blob, context: ServerContext) async throws -> Veil_Bench_V1_Blob {
    var b = Veil_Bench_V1_Blob()
    b.data = answer
    return b
  }
  func stream(
    request: RPCAsyncSequence<Veil_Bench_V1_Blob, any Error>, response: RPCWriter<Veil_Bench_V1_Blob>, context: ServerContext
  ) async throws {
    for try await _ in request {
      var b = Veil_Bench_V1_Blob()
      b.data = answer
      try await response.write(b)
    }
  }
}

func fail(_ message: String) -> Never {
  FileHandle.standardError.write(Data("grpc-round-trip: \(message)\n".utf8))
  exit(2)
}

func serve(answerBytes: Int) async throws {
  var config = HTTP2ServerTransport.Posix.Config.defaults
  config.rpc.maxRequestPayloadSize = 64 << 20
  config.http2.targetWindowSize = 4 << 20
  config.http2.maxFrameSize = 1 << 20
  let transport = HTTP2ServerTransport.Posix(
    address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext, config: config)
  let server = GRPCServer(transport: transport, services: [EchoService(answer: Data(count: answerBytes))])
  try await withThrowingDiscardingTaskGroup { group in
    group.addTask { try await server.serve() }
    guard let address = try await server.listeningAddress?.ipv4 else { fail("the server has no IPv4 address") }
    FileHandle.standardOutput.write(Data("port \(address.port)\n".utf8))
  }
}

func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }

func measure(port: Int, sizes: [Int], gaps: [Int], calls: Int, rounds: Int) async throws {
  let transport = try HTTP2ClientTransport.Posix(
    target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
  let grpc = GRPCClient(transport: transport)
  let connections = Task { try await grpc.runConnections() }
  let echo = Veil_Bench_V1_Echo.Client(wrapping: grpc)
  var callOptions = CallOptions.defaults
  callOptions.maxRequestMessageBytes = 64 << 20
  let options = callOptions
  let (answers, answered) = AsyncStream.makeStream(of: Veil_Bench_V1_Blob.self)
  try await echo.stream(
    options: options,
    requestProducer: { writer in
      var next = answers.makeAsyncIterator()
      print("bytes      gap (us)   round   unary p50 (ms)   stream p50 (ms)")
      for round in 1...rounds {
        for size in sizes {
          var blob = Veil_Bench_V1_Blob()
          blob.data = Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) })
          for _ in 0..<5 {
            _ = try await echo.unary(blob, options: options)
            try await writer.write(blob)
            _ = await next.next()
          }
          for gap in gaps {
            var unary: [Double] = []
            var stream: [Double] = []
            for _ in 0..<calls {
              if gap > 0 { usleep(UInt32(gap)) }
              let t0 = DispatchTime.now().uptimeNanoseconds
              _ = try await echo.unary(blob, options: options)
              unary.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
              if gap > 0 { usleep(UInt32(gap)) }
              let t1 = DispatchTime.now().uptimeNanoseconds
              try await writer.write(blob)
              guard await next.next() != nil else { fail("the stream ended") }
              stream.append(Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e6)
            }
            print(
              "\(String(size).padding(toLength: 10, withPad: " ", startingAt: 0)) \(String(gap).padding(toLength: 10, withPad: " ", startingAt: 0)) \(String(round).padding(toLength: 7, withPad: " ", startingAt: 0)) "
                + String(format: "%14.3f   %15.3f", median(unary), median(stream)))
          }
        }
      }
    },
    onResponse: { response in
      for try await m in response.messages { answered.yield(m) }
      answered.finish()
    })
  grpc.beginGracefulShutdown()
  _ = try? await connections.value
}

var args = Array(CommandLine.arguments.dropFirst())
@MainActor func option(_ name: String, _ fallback: String) -> String {
  guard let i = args.firstIndex(of: name) else { return fallback }
  guard i + 1 < args.count else { fail("\(name) needs a value") }
  let v = args[i + 1]
  args.removeSubrange(i...(i + 1))
  return v
}
@MainActor func numbers(_ name: String, _ fallback: String) -> [Int] {
  let text = option(name, fallback)
  let values = text.split(separator: ",").compactMap { Int($0) }
  guard !values.isEmpty, values.count == text.split(separator: ",").count, values.allSatisfy({ $0 >= 0 }) else {
    fail("\(name) takes non-negative integers separated by commas, found '\(text)'")
  }
  return values
}

let answerBytes = numbers("--answer-bytes", "4096")[0]
if args.first == "serve" {
  try await serve(answerBytes: answerBytes)
} else {
  let sizes = numbers("--bytes", "150000,1605632")
  let gaps = numbers("--gap-us", "0,5000")
  let calls = max(1, numbers("--calls", "100")[0])
  let rounds = max(1, numbers("--rounds", "3")[0])
  guard args.isEmpty else { fail("unknown arguments \(args); see the comment at the top of main.swift") }
  let server = Process()
  server.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
  server.arguments = ["serve", "--answer-bytes", String(answerBytes)]
  let out = Pipe()
  server.standardOutput = out
  try server.run()
  defer { server.terminate() }
  var line = Data()
  while !line.contains(UInt8(ascii: "\n")) {
    let chunk = out.fileHandleForReading.availableData
    guard !chunk.isEmpty else { fail("the server ended before it printed its port") }
    line.append(chunk)
  }
  guard let text = String(data: line, encoding: .utf8), let port = Int(text.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "")
  else { fail("the server printed no port") }
  print("server pid \(server.processIdentifier), port \(port); each figure the median of \(calls) round trips, unary and stream alternating")
  try await measure(port: port, sizes: sizes, gaps: gaps, calls: calls, rounds: rounds)
}
