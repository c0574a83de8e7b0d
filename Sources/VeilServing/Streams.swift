// Bidirectional calls that carry one request at a time, each answered in order: the enclave's
// `InferStream` and the accelerator's `ModelStreamInfer`. They save a call's set-up per request
// (docs/benchmarks.md, "A session's requests on one stream"), and must keep what a unary call
// gives for free: each request checked on its own, an end when idle or draining, a deadline per
// request on the client, and a way back to the unary call.
import Foundation
import GRPCCore
import Synchronization

/// Serves a stream's requests one at a time, in order, with `handle` (which writes the answer;
/// a request it throws for ends the stream with that error). The stream ends cleanly only
/// between requests: when the client ends it, when it has waited `idle` seconds for a request
/// (an open stream keeps its connection from idling out, so it must end on its own), or when
/// the server drains. A request that arrives as the stream ends is never handled, so the client
/// may send it again.
func serveInOrder<Request: Sendable>(
  _ requests: RPCAsyncSequence<Request, any Error>, idleFor idle: Double, draining: DrainFlag, clock: any ServiceClock,
  _ handle: @escaping @Sendable (Request) async throws -> Void
) async throws {
  let gate = StreamGate(now: clock.now())
  let idle = max(0.01, idle)
  try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask {
      for try await message in requests {
        guard gate.begin() else { return }
        try await handle(message)
        guard gate.end(now: clock.now()), !draining.isSet else { return }
      }
    }
    group.addTask {
      // Wakes when the stream may have idled out, not on a tick: thousands of open streams must
      // not cost the server a wake-up each every fraction of a second.
      while true {
        let wait = gate.remaining(now: clock.now(), idleFor: idle)
        try await Task.sleep(nanoseconds: UInt64(min(max(wait, 0.001), 86_400) * 1e9))
        if gate.close(now: clock.now(), idleFor: idle, draining: false) { return }
      }
    }
    group.addTask {
      // The server drains: a stream waiting for a request ends now; one serving a request ends
      // after its answer (the loop above reads the flag then), and this task waits to be
      // cancelled with the others.
      await draining.wait()
      if gate.close(now: clock.now(), idleFor: idle, draining: true) { return }
      while true { try await Task.sleep(nanoseconds: 86_400 * 1_000_000_000) }
    }
    try await group.next()
    group.cancelAll()
  }
}

/// Whether a stream is waiting for a request, serving one, or ending; the stream ends only from
/// waiting, so that no request is read after its end was decided.
private final class StreamGate: Sendable {
  private enum State { case waiting(since: Double), serving, ended }
  private let state: Mutex<State>

  init(now: Double) { state = Mutex(.waiting(since: now)) }

  /// A request arrived: false when the stream has ended (the request stays unopened).
  func begin() -> Bool {
    state.withLock { s in
      guard case .waiting = s else { return false }
      s = .serving
      return true
    }
  }

  /// A request was answered: false when the stream has ended meanwhile.
  func end(now: Double) -> Bool {
    state.withLock { s in
      guard case .serving = s else { return false }
      s = .waiting(since: now)
      return true
    }
  }

  /// Seconds until the stream, waiting for a request, will have waited `idle`; `idle` while it
  /// serves one (it waits again afterwards), 0 once it has ended.
  func remaining(now: Double, idleFor idle: Double) -> Double {
    state.withLock { s in
      switch s {
      case .ended: return 0
      case .serving: return idle
      case .waiting(let since): return since + idle - now
      }
    }
  }

  /// Ends the stream when it waits and has waited `idleFor` seconds, or the server drains.
  func close(now: Double, idleFor idle: Double, draining: Bool) -> Bool {
    state.withLock { s in
      switch s {
      case .ended: return true
      case .serving: return false
      case .waiting(let since):
        guard draining || now - since >= idle else { return false }
        s = .ended
        return true
      }
    }
  }
}

/// One open bidirectional call that carries one request at a time, each answered in order (the
/// client side of `serveInOrder`): the enclave's `InferStream`, the accelerator's
/// `ModelStreamInfer`. A request that fails, times out or is cancelled ends the stream (where
/// the server is with it is unknown); its owner opens another for the next request.
final class ExchangeStream<Request: Sendable, Response: Sendable>: Sendable {
  /// The stream ended cleanly (the server ended it, idle or draining, or the client finished it)
  /// without answering the request in flight: the server did not read it.
  enum Ended: Error { case unanswered }

  private struct State {
    var pending: CheckedContinuation<Response, any Error>?
    var ended: (any Error)?
  }
  private let state = Mutex(State())
  private let outgoing: AsyncStream<Request>.Continuation
  private let call = Mutex<Task<Void, Never>?>(nil)

  /// Starts the call: `run` makes it, sending every message of `requests` and handing every
  /// answer to `deliver` (which throws for an answer nobody asked for).
  init(
    _ run: @escaping @Sendable (
      _ requests: AsyncStream<Request>, _ deliver: @escaping @Sendable (Response) throws -> Void
    ) async throws -> Void
  ) {
    let (requests, outgoing) = AsyncStream.makeStream(of: Request.self)
    self.outgoing = outgoing
    let task = Task { [self] in
      do {
        try await run(requests) { message in
          guard self.deliver(message) else {
            throw RPCError(code: .internalError, message: "the server sent an answer on its stream that no request asked for")
          }
        }
        self.end(Ended.unanswered)
      } catch {
        self.end(error)
      }
    }
    call.withLock { $0 = task }
  }

  /// A stream on `call`, a generated client's bidirectional method, called with `options`
  /// (its deadline removed: the stream lives as long as its owner uses it, and each request has
  /// a deadline of its own).
  static func open(
    options: CallOptions,
    _ call: @escaping @Sendable (
      StreamingClientRequest<Request>, CallOptions,
      @escaping @Sendable (StreamingClientResponse<Response>) async throws -> Void
    ) async throws -> Void
  ) -> ExchangeStream {
    var streamOptions = options
    streamOptions.timeout = nil
    let options = streamOptions
    return ExchangeStream { requests, deliver in
      let request = StreamingClientRequest<Request> { writer in
        for await message in requests { try await writer.write(message) }
      }
      try await call(request, options) { response in
        for try await message in response.messages { try deliver(message) }
      }
    }
  }

  var isOpen: Bool { state.withLock { $0.ended == nil } }

  /// Sends `message` and waits for its answer, at most `timeout` (nil: as long as it takes).
  func exchange(_ message: Request, timeout: Duration?) async throws -> Response {
    guard let timeout else { return try await answer(message) }
    return try await withDeadline(
      seconds: timeout.seconds, timedOut: RPCError(code: .deadlineExceeded, message: "no answer within \(timeout)")
    ) { try await self.answer(message) }
  }

  private func answer(_ message: Request) async throws -> Response {
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<Response, any Error>) in
        let ended = state.withLock { s -> (any Error)? in
          if let e = s.ended { return e }
          if s.pending != nil {
            return RPCError(code: .failedPrecondition, message: "this stream already has a request in flight")
          }
          s.pending = c
          return nil
        }
        if let ended { return c.resume(throwing: ended) }
        outgoing.yield(message)
      }
    } onCancel: {
      // Sent and not answered: where the server is with it is unknown, so the stream ends.
      self.cancel()
    }
  }

  /// Hands an answer to the request waiting for it; false when none waits.
  private func deliver(_ message: Response) -> Bool {
    guard let c = state.withLock({ s -> CheckedContinuation<Response, any Error>? in
      defer { s.pending = nil }
      return s.pending
    }) else { return false }
    c.resume(returning: message)
    return true
  }

  private func end(_ error: any Error) {
    outgoing.finish()
    let waiting = state.withLock { s -> CheckedContinuation<Response, any Error>? in
      if s.ended == nil { s.ended = error }
      defer { s.pending = nil }
      return s.pending
    }
    waiting?.resume(throwing: error)
  }

  /// Ends the requests (the enclave then ends the stream); the session opens another stream for
  /// its next request.
  func finish() {
    state.withLock { s in if s.ended == nil { s.ended = Ended.unanswered } }
    outgoing.finish()
  }

  /// Cancels the call: a request in flight fails with the cancellation, and the stream counts
  /// as ended at once, so that the owner's next request opens a new one instead of meeting this
  /// one before its call has wound down.
  func cancel() {
    end(RPCError(code: .cancelled, message: "the stream was cancelled"))
    call.withLock { $0 }?.cancel()
  }
}
