import Foundation
import XCTest

/// `veil attest` and `veil enclave manifest` as a user runs them, on the real test vectors.
extension CLITests {
  static let vectors: String = {
    let inRepo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/testvectors/attestation")
    return FileManager.default.fileExists(atPath: inRepo.path) ? inRepo.path : "/work/shared/testvectors/attestation"
  }()

  func vector(_ name: String) -> String { Self.vectors + "/" + name }

  func testAttestVerifyPassesARealSGXQuote() throws {
    let r = try veil([
      "attest", "verify", vector("sgx_quote"), "--collateral", vector("sgx_quote_collateral.json"),
      "--time", "2025-07-01T12:00:00Z", "--root", vector("TrustedRootCA.der"),
    ])
    XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    XCTAssertTrue(r.stdout.hasPrefix("verdict: PASS"), r.stdout)
    XCTAssertTrue(
      r.stdout.contains("TCB status: ConfigurationAndSWHardeningNeeded (advisories: INTEL-SA-00289, INTEL-SA-00615)"),
      r.stdout)
  }

  func testAttestVerifyFailsTheOutdatedQuoteAndSaysWhy() throws {
    let r = try veil([
      "attest", "verify", vector("tdx_quote_outdated"), "--collateral", vector("tdx_quote_outdated_collateral.json"),
      "--time", "2026-03-01T12:00:00Z", "--json",
    ])
    XCTAssertEqual(r.status, 1, r.stderr)
    let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    XCTAssertEqual(doc?["verdict"] as? String, "fail")
    XCTAssertEqual(doc?["tcbStatus"] as? String, "OutOfDate")
    let failed = (doc?["checks"] as? [[String: Any]] ?? []).filter { $0["passed"] as? Bool == false }.compactMap {
      $0["name"] as? String
    }
    XCTAssertEqual(failed, ["policy: TCB status"])
  }

  func testAttestVerifyListsEveryFailedCheck() throws {
    // Outside the collateral window and without a chance to check: several failures, all shown.
    let r = try veil([
      "attest", "verify", vector("tdx_quote"), "--collateral", vector("tdx_quote_collateral.json"),
      "--time", "2030-01-01T00:00:00Z",
    ])
    XCTAssertEqual(r.status, 1)
    for name in ["FAIL PCK certificate chain", "FAIL TCB info validity", "FAIL QE identity validity"] {
      XCTAssertTrue(r.stdout.contains(name), "\(name) missing from:\n\(r.stdout)")
    }
    let none = try veil(["attest", "verify", vector("sgx_quote"), "--time", "2025-07-01T12:00:00Z"])
    XCTAssertEqual(none.status, 1)
    XCTAssertTrue(none.stdout.contains("pass --collateral"), none.stdout)
  }

  /// The SEV-SNP vectors' folders are collateral folders as AMD's KDS serves them.
  func testAttestVerifyChecksRealSNPReportsUpToAMDsRoots() throws {
    let policy = temp("snp-policy.json")
    defer { try? FileManager.default.removeItem(at: policy) }
    try Data(
      #"{"snp_measurement": "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc", "snp_min_tcb": {"snp": 25}}"#
        .utf8
    ).write(to: policy)
    let ok = try veil([
      "attest", "verify", vector("snp/genoa/snp_report.bin"), "--collateral", vector("snp/genoa"), "--time",
      "2025-09-01T00:00:00Z", "--policy", policy.path,
    ])
    XCTAssertEqual(ok.status, 0, ok.stdout + ok.stderr)
    XCTAssertTrue(ok.stdout.hasPrefix("verdict: PASS (SEV-SNP attestation report v5"), ok.stdout)
    XCTAssertTrue(ok.stdout.contains("REPORTED_TCB bootloader 10, tee 0, snp 25, microcode 84"), ok.stdout)
    XCTAssertTrue(ok.stdout.contains("ok   ARK (AMD root key): 'ARK-Genoa'"), ok.stdout)
    // The default policy does not name SNP; the chain still holds.
    let kind = try veil([
      "attest", "verify", vector("snp/snp_report.bin"), "--collateral", vector("snp"), "--time", "2025-09-01T00:00:00Z",
      "--json",
    ])
    XCTAssertEqual(kind.status, 1, kind.stderr)
    let doc = try JSONSerialization.jsonObject(with: Data(kind.stdout.utf8)) as? [String: Any]
    let failed = (doc?["checks"] as? [[String: Any]] ?? []).filter { $0["passed"] as? Bool == false }.compactMap {
      $0["name"] as? String
    }
    XCTAssertEqual(failed, ["policy: evidence kind"])
    // Another chip's report against this folder's VCEK; and a folder without its CRL.
    let chip = try veil([
      "attest", "verify", vector("snp/milan_v3/snp_report.bin"), "--collateral", vector("snp"), "--time",
      "2025-09-01T00:00:00Z",
    ])
    XCTAssertEqual(chip.status, 1)
    XCTAssertTrue(chip.stdout.contains("FAIL VCEK is for this chip"), chip.stdout)
    XCTAssertTrue(chip.stdout.contains("FAIL report signature"), chip.stdout)
    let partial = temp("snp-collateral")
    try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: partial) }
    for f in ["vcek.der", "ask.pem"] {
      try FileManager.default.copyItem(atPath: vector("snp/" + f), toPath: partial.appendingPathComponent(f).path)
    }
    let missing = try veil(["attest", "verify", vector("snp/snp_report.bin"), "--collateral", partial.path])
    XCTAssertNotEqual(missing.status, 0)
    XCTAssertTrue(missing.stderr.contains("lacks ark.der or ark.pem"), missing.stderr)
    try FileManager.default.copyItem(atPath: vector("snp/ark.pem"), toPath: partial.appendingPathComponent("ark.pem").path)
    let args = ["attest", "verify", vector("snp/snp_report.bin"), "--collateral", partial.path, "--time", "2025-09-01T00:00:00Z"]
    let noCRL = try veil(args + ["--policy", policy.path])
    XCTAssertTrue(noCRL.stdout.contains("FAIL CRL (ASK not revoked): no CRL"), noCRL.stdout)
    let allowed = try veil(args + ["--allow-missing-crl"])
    XCTAssertTrue(allowed.stdout.contains("ok   CRL (ASK not revoked): no CRL"), allowed.stdout)

    let inspect = try veil(["attest", "inspect", vector("snp/milan_v3/snp_report.bin")])
    XCTAssertEqual(inspect.status, 0, inspect.stderr)
    XCTAssertTrue(inspect.stdout.contains("0xdb18000000000004 (bootloader 4, tee 0, snp 24, microcode 219)"), inspect.stdout)
    XCTAssertTrue(inspect.stdout.contains("Milan"), inspect.stdout)
  }

  func testAttestBadInputs() throws {
    let policy = temp("policy.json")
    try Data(#"{"allow_simulaton": true}"#.utf8).write(to: policy)
    defer { try? FileManager.default.removeItem(at: policy) }
    let r = try veil(["attest", "verify", vector("sgx_quote"), "--policy", policy.path])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains("policy 'allow_simulaton': unknown key"), r.stderr)
    let t = try veil(["attest", "verify", vector("sgx_quote"), "--time", "yesterday"])
    XCTAssertNotEqual(t.status, 0)
    XCTAssertTrue(t.stderr.contains("--time 'yesterday'"), t.stderr)
    let i = try veil(["attest", "inspect", vector("sgx_quote_collateral.json")])
    XCTAssertNotEqual(i.status, 0)
    XCTAssertTrue(i.stderr.contains("DCAP quote: 'att_key_type' at byte 2"), i.stderr)
  }

  func testAttestInspectJSONMatchesTheQuoteBytes() throws {
    let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: vector("sgx_quote"))))
    let r = try veil(["attest", "inspect", vector("sgx_quote"), "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: String]
    XCTAssertEqual(doc?["mrenclave"], raw[112..<144].map { String(format: "%02x", $0) }.joined())
    XCTAssertEqual(doc?["simulated"], "no")
  }

  func testSimulatedEvidenceIsLabelledAndNeedsAPolicyThatAllowsIt() throws {
    let head = temp("head.onnx")
    let ev = temp("sim.quote")
    let policy = temp("allow.json")
    try Data("a head".utf8).write(to: head)
    try Data(#"{"allow_simulation": true, "allow_debug": true}"#.utf8).write(to: policy)
    defer { for f in [head, ev, policy] { try? FileManager.default.removeItem(at: f) } }
    let s = try veil(["attest", "simulate", "--head", head.path, "--out", ev.path])
    XCTAssertEqual(s.status, 0, s.stderr)
    XCTAssertTrue(s.stderr.contains("SIMULATED"), s.stderr)
    let i = try veil(["attest", "inspect", ev.path])
    XCTAssertTrue(i.stdout.hasPrefix("SIMULATED EVIDENCE"), i.stdout)
    let refused = try veil(["attest", "verify", ev.path])
    XCTAssertEqual(refused.status, 1)
    XCTAssertTrue(refused.stdout.contains("FAIL policy: simulation"), refused.stdout)
    let accepted = try veil(["attest", "verify", ev.path, "--policy", policy.path])
    XCTAssertEqual(accepted.status, 0, accepted.stdout)
    XCTAssertTrue(
      accepted.stdout.contains("TCB status: Simulated") && accepted.stdout.contains("SIMULATED EVIDENCE"),
      accepted.stdout)
  }

  /// The manifest template is TOML (checked by Python's tomllib) with every key Gramine needs.
  func testEnclaveManifestIsWellFormedTOMLWithTheRequiredKeys() throws {
    let head = temp("head.onnx")
    let dir = temp("manifest")
    try Data(repeating: 1, count: 1000).write(to: head)
    defer { for f in [head, dir] { try? FileManager.default.removeItem(at: f) } }
    let peak = 300 << 20
    let r = try veil([
      "enclave", "manifest", "--head", head.path, "--peak-memory", "\(peak)", "--out", dir.path, "--threads", "2",
    ])
    XCTAssertEqual(r.status, 0, r.stderr)
    let file = dir.appendingPathComponent("veil.manifest.template").path
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [
      "python3", "-c",
      "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))", file,
    ]
    let out = Pipe()
    let err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    XCTAssertEqual(p.terminationStatus, 0, "not TOML: \(errText)")
    guard let toml = try JSONSerialization.jsonObject(with: data) as? [String: Any],
      let sgx = toml["sgx"] as? [String: Any], let loader = toml["loader"] as? [String: Any],
      let env = loader["env"] as? [String: Any], let libos = toml["libos"] as? [String: Any],
      let fs = toml["fs"] as? [String: Any]
    else { return XCTFail("missing tables in \(String(decoding: data, as: UTF8.self))") }
    XCTAssertEqual(sgx["remote_attestation"] as? String, "dcap")
    XCTAssertEqual(sgx["debug"] as? Bool, false)
    XCTAssertEqual(env["SWIFT_BACKTRACE"] as? String, "enable=no")
    XCTAssertEqual(env["OMP_NUM_THREADS"] as? String, "2")
    XCTAssertEqual(libos["entrypoint"] as? String, "/veil/bin/veil")
    // `veil enclave serve` takes the plan (mounted at /veil/plan), never a bare head.
    let argv = loader["argv"] as? [String] ?? []
    XCTAssertEqual(Array(argv.prefix(5)), ["veil", "enclave", "serve", "--plan", "/veil/plan/plan.json"], "\(argv)")
    XCTAssertFalse(argv.contains("--head"), "\(argv)")
    XCTAssertNotNil((loader["entrypoint"] as? [String: Any])?["uri"])
    XCTAssertFalse((fs["mounts"] as? [Any] ?? []).isEmpty)
    // 300 MiB peak + files + LibOS, rounded up to a power of two.
    let size = sgx["enclave_size"] as? String ?? ""
    XCTAssertTrue(["512M", "1G"].contains(size), size)
    XCTAssertGreaterThanOrEqual(sgx["max_threads"] as? Int ?? 0, 2 + 2 + 1)
    let trusted = sgx["trusted_files"] as? [String] ?? []
    XCTAssertTrue(trusted.contains("file:" + Self.veil.standardizedFileURL.path), "\(trusted)")
    XCTAssertTrue(trusted.contains("file:" + head.standardizedFileURL.path), "\(trusted)")
    XCTAssertTrue(
      trusted.contains { $0.contains("libdnnl") } && trusted.contains { $0.contains("libswiftCore") }, "\(trusted)")
    XCTAssertFalse(trusted.contains { $0.hasSuffix("/libc.so.6") }, "Gramine provides glibc")

    let bad = try veil(["enclave", "manifest", "--head", head.path, "--peak-memory", "0", "--out", dir.path])
    XCTAssertNotEqual(bad.status, 0)
    XCTAssertTrue(bad.stderr.contains("--peak-memory"), bad.stderr)
  }

  /// The permission bits of a file (0o600: owner read and write only).
  func permissions(_ url: URL) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
  }

  /// Starts `veil keys serve` for one request on a free loopback port; returns the process, its
  /// port, and its standard error so far (read on).
  func startKeyServer(key: URL, policy: URL, extra: [String] = []) throws -> (Process, Int, Pipe) {
    let p = Process()
    p.executableURL = Self.veil
    p.arguments = ["keys", "serve", "--key", key.path, "--policy", policy.path, "--port", "0", "--max-requests", "1"] + extra
    let err = Pipe()
    p.standardError = err
    try p.run()
    var text = ""
    let deadline = Date().addingTimeInterval(20)
    while !text.contains("listening on"), p.isRunning, Date() < deadline {
      text += String(decoding: err.fileHandleForReading.availableData, as: UTF8.self)
    }
    let line = text.split(separator: "\n").first { $0.contains("listening on") } ?? ""
    guard let port = line.split(separator: ":").last.flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
      p.terminate()
      struct NoPort: Error, CustomStringConvertible { var description: String }
      throw NoPort(description: "the key server did not say where it listens: \(text)")
    }
    return (p, port, err)
  }

  /// The owner seals a head and serves its key under a policy that pins the enclave's
  /// MRENCLAVE; the enclave side fetches it with simulated evidence only when the policy allows
  /// simulation, and a refused enclave learns no more than that it was refused.
  func testKeysSealServeFetch() throws {
    let head = temp("head.onnx")
    let sealed = temp("head.sealed")
    let key = temp("head.key")
    let opened = temp("opened.onnx")
    let lenient = temp("lenient.json")
    let strict = temp("strict.json")
    let unpinned = temp("unpinned.json")
    let evidence = temp("sim.quote")
    let content = Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13) })
    try content.write(to: head)
    defer {
      for f in [head, sealed, key, opened, lenient, strict, unpinned, evidence] { try? FileManager.default.removeItem(at: f) }
    }

    let s = try veil(["keys", "seal", "--head", head.path, "--out", sealed.path, "--key-out", key.path])
    XCTAssertEqual(s.status, 0, s.stderr)
    XCTAssertNotEqual(try Data(contentsOf: sealed).prefix(100), content.prefix(100))
    XCTAssertEqual(try permissions(key), 0o600, "the key is the owner's alone")
    let again = try veil(["keys", "seal", "--head", head.path, "--out", sealed.path + ".2", "--key-out", key.path])
    XCTAssertNotEqual(again.status, 0, "an existing key must not be overwritten")
    XCTAssertTrue(again.stderr.contains("already exists"), again.stderr)
    // The simulated enclave `keys fetch --simulate` presents: this binary and the sealed head.
    let sim = try veil(["attest", "simulate", "--head", sealed.path, "--out", evidence.path])
    let mr = try XCTUnwrap(
      sim.stderr.components(separatedBy: "MRENCLAVE ").last?.prefix { $0.isHexDigit }, sim.stderr)
    XCTAssertEqual(mr.count, 64, sim.stderr)
    try Data(#"{"mrenclave": "\#(mr)", "allow_simulation": true, "allow_debug": true}"#.utf8).write(to: lenient)
    try Data(#"{"mrenclave": "\#(mr)"}"#.utf8).write(to: strict)
    try Data(#"{"allow_simulation": true, "allow_debug": true}"#.utf8).write(to: unpinned)

    var (server, port, _) = try startKeyServer(key: key, policy: lenient)
    let ok = try veil([
      "keys", "fetch", "--server", "127.0.0.1:\(port)", "--sealed", sealed.path, "--out", opened.path, "--simulate",
    ])
    server.waitUntilExit()
    XCTAssertEqual(ok.status, 0, ok.stderr)
    XCTAssertTrue(ok.stderr.contains("SIMULATED"), ok.stderr)
    XCTAssertEqual(try Data(contentsOf: opened), content)
    XCTAssertEqual(try permissions(opened), 0o600, "the opened head is as secret as its key")

    let err: Pipe
    (server, port, err) = try startKeyServer(key: key, policy: strict)
    let refused = try veil([
      "keys", "fetch", "--server", "127.0.0.1:\(port)", "--sealed", sealed.path, "--out", opened.path + ".2",
      "--simulate",
    ])
    server.waitUntilExit()
    let serverLog = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    XCTAssertNotEqual(refused.status, 0)
    XCTAssertTrue(refused.stderr.contains("the key server refused"), refused.stderr)
    XCTAssertFalse(refused.stderr.contains("policy: simulation"), "the requester learnt why: \(refused.stderr)")
    XCTAssertTrue(serverLog.contains("policy: simulation"), "the owner's log says why: \(serverLog)")
    XCTAssertFalse(FileManager.default.fileExists(atPath: opened.path + ".2"))

    // A policy that pins no measurement: refused at start, unless allowed explicitly.
    let unpinnedRun = try veil(["keys", "serve", "--key", key.path, "--policy", unpinned.path, "--port", "0"])
    XCTAssertNotEqual(unpinnedRun.status, 0)
    XCTAssertTrue(unpinnedRun.stderr.contains("pins no measurement"), unpinnedRun.stderr)
    (server, port, _) = try startKeyServer(key: key, policy: unpinned, extra: ["--allow-unpinned-policy"])
    let allowed = try veil([
      "keys", "fetch", "--server", "127.0.0.1:\(port)", "--sealed", sealed.path, "--out", opened.path + ".3", "--simulate",
    ])
    server.waitUntilExit()
    XCTAssertEqual(allowed.status, 0, allowed.stderr)
    try? FileManager.default.removeItem(atPath: opened.path + ".3")
  }
}
