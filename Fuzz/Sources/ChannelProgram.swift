import Foundation
import VeilTEE

/// The channel target: a fresh client and enclave session pair per input (simulated evidence,
/// a policy that accepts it), then the input as a program of steps that send real, tampered,
/// replayed, truncated and raw records between them, and hellos of any bytes. Checked as it
/// runs: a record sealed by one side opens to the same bytes on the other, anything altered is
/// refused, and a refused or closed session stays closed.
enum ChannelProgram {
  static func run(_ program: [UInt8]) {
    var input = program[...]
    func byte() -> UInt8? { input.popFirst() }
    func payload() -> [UInt8] {
      let n = Int(byte() ?? 0)
      let p = Array(input.prefix(n))
      input = input.dropFirst(n)
      return p
    }
    let interval = [1, 2, 3, 1 << 24][Int(byte() ?? 3) % 4]
    let client = ClientHandshake(verifier: FuzzFixtures.lenientVerifier, rekeyInterval: UInt64(interval))
    guard let hello = try? client.start(),
      let (serverHello, enclave) = try? EnclaveHandshake.respond(
        to: hello, provider: SimulatedProvider(enclave: FuzzFixtures.enclave), rekeyInterval: UInt64(interval)),
      let (session, _) = try? client.finish(serverHello: serverHello)
    else { fatalError("a genuine handshake with simulated evidence must succeed") }

    var last: [UInt8]?
    while let op = byte() {
      let wasClosed = enclave.isClosed
      var delivered: Inbound?
      switch op % 8 {
      case 0:
        // An honest record opens to its plaintext.
        let p = payload()
        guard let r = try? session.seal(p) else { continue }
        last = r
        delivered = try? enclave.open(r)
        if !wasClosed { precondition(delivered == .data(p), "an honest record did not open to its plaintext") }
      case 1:
        let p = payload()
        if let r = try? enclave.seal(p), let got = try? session.open(r) {
          precondition(got == .data(p), "an honest reply did not open to its plaintext")
        }
      case 2:
        // Raw bytes as a record: refused unless they are, by chance, the next genuine record.
        delivered = try? enclave.open(payload())
        precondition(delivered == nil || !wasClosed)
      case 3:
        // One bit flipped anywhere in a genuine record: always refused.
        let p = payload()
        guard let r = try? session.seal(p) else { continue }
        var t = r
        let bit = Int(byte() ?? 0) * 8 + Int(byte() ?? 0) % 8
        t[bit / 8 % t.count] ^= 1 << UInt8(bit % 8)
        precondition((try? enclave.open(t)) == nil, "a tampered record was accepted")
      case 4:
        // A replay of the last record: always refused.
        if let r = last { precondition((try? enclave.open(r)) == nil, "a replayed record was accepted") }
      case 5:
        if let r = try? session.close() {
          delivered = try? enclave.open(r)
          if !wasClosed { precondition(delivered == .closed, "an authenticated close was not seen") }
        }
      case 6:
        // A genuine record cut short or padded: refused.
        let p = payload()
        guard let r = try? session.seal(p) else { continue }
        let n = Int(byte() ?? 0)
        let t = n % 2 == 0 ? Array(r.prefix(n % r.count)) : r + [UInt8(n)]
        precondition((try? enclave.open(t)) == nil, "a truncated or padded record was accepted")
      default:
        let p = payload()
        _ = try? ClientHello(p)
        _ = try? ServerHello(p)
      }
      // Once closed (by a refusal or a close), a session accepts nothing.
      if wasClosed { precondition(delivered == nil, "a closed session accepted a record") }
    }
  }
}
