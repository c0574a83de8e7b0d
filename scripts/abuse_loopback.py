#!/usr/bin/env python3
"""Times the real commands a legitimate user runs, `veil infer` and `veil keys fetch`, while
attackers on other loopback addresses (127.0.0.2…; Linux routes all of 127/8 to loopback)
flood the enclave with handshakes, trickle HTTP/2 prefaces at it, or hang on the key server:
the command-line figures of docs/security.md, "Servers". Needs the `grpc` package (.venv).

    .venv/bin/python scripts/abuse_loopback.py --plan PLAN_DIR --photo PHOTO [--veil .build/release/veil]

The plan must preprocess on the client (the fixture plans of the serving tests do). Each run
prints the wall time of the command, process start included; the issue's bound is 2 s.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc


class Server:
    """A `veil` server process whose standard error is collected as it comes."""

    def __init__(self, args):
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.lines:
                m = re.search(pattern, line)
                if m:
                    return m.group(1)
            if self.proc.poll() is not None:
                sys.exit("server exited: " + "".join(self.lines))
            time.sleep(0.05)
        sys.exit(f"no '{pattern}' within {timeout} s: " + "".join(self.lines))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def relay(source, port):
    """A TCP relay on 127.0.0.1 to 127.0.0.1:port whose outgoing connections come from `source`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def accept():
        while True:
            client, _ = listener.accept()
            upstream = socket.socket()
            upstream.bind((source, 0))
            upstream.connect(("127.0.0.1", port))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def flood(port, stop, counts):
    """Handshakes as fast as they go, never a request: a ClientHello is 01 01, an X25519 key
    and a nonce (random bytes serve), in field 1 of HandshakeRequest."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    handshake = channel.unary_unary("/veil.enclave.v1.EnclaveService/Handshake")
    while not stop.is_set():
        try:
            handshake(b"\x0a\x42\x01\x01" + os.urandom(64), timeout=5)
            counts["opened"] += 1
        except grpc.RpcError:
            counts["refused"] += 1


def slow(source, port, data, interval, stop):
    """Connects from `source` and sends `data` a byte every `interval` seconds."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(interval)
    for b in data:
        if stop.is_set():
            break
        try:
            if s.recv(4096) == b"":
                break  # closed by the server
        except socket.timeout:
            pass
        except OSError:
            break
        try:
            s.send(bytes([b]))
        except OSError:
            break
    s.close()


def timed(args, runs):
    times = []
    for _ in range(runs):
        t = time.time()
        r = subprocess.run(args, capture_output=True, text=True)
        times.append(time.time() - t)
        if r.returncode != 0:
            sys.exit(f"{' '.join(args[:2])} failed under attack: {r.stderr}")
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--veil", default=".build/release/veil")
    p.add_argument("--plan", required=True)
    p.add_argument("--photo", required=True)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="veil-abuse-")
    rows = []

    enclave = Server([a.veil, "enclave", "serve", "--plan", a.plan, "--local-tail", "--port", "0", "--allow-simulation"])
    try:
        port = int(enclave.wait_for(r"listening on [\d.]+:(\d+)"))
        mr = enclave.wait_for(r"MRENCLAVE ([0-9a-f]{64})")
        policy = os.path.join(work, "policy.json")
        json.dump({"mrenclave": mr, "allow_simulation": True, "allow_debug": True}, open(policy, "w"))
        infer = [a.veil, "infer", "--endpoint", f"127.0.0.1:{port}", "--policy", policy, a.photo]
        rows.append(("veil infer, no attack", timed(infer, a.runs), ""))

        stop = threading.Event()
        counts = {"opened": 0, "refused": 0}
        for i in range(2, 8):
            threading.Thread(target=flood, args=(relay(f"127.0.0.{i}", port), stop, counts), daemon=True).start()
        time.sleep(2)  # the attack's own ramp-up, not a synchronisation
        rows.append(("veil infer, session flood from 6 addresses", timed(infer, a.runs),
                      f"{counts['opened']} attacker sessions opened, {counts['refused']} refused"))
        stop.set()

        stop = threading.Event()
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        for _ in range(100):
            threading.Thread(target=slow, args=("127.0.0.2", port, preface, 1.0, stop), daemon=True).start()
        time.sleep(1)
        rows.append(("veil infer, 100 preface-trickling connections from one address", timed(infer, a.runs), ""))
        stop.set()
    finally:
        enclave.stop()

    head = os.path.join(a.plan, "head.onnx")
    sealed, key = os.path.join(work, "head.sealed"), os.path.join(work, "head.key")
    subprocess.run([a.veil, "keys", "seal", "--head", head, "--out", sealed, "--key-out", key], check=True, capture_output=True)
    sim = subprocess.run([a.veil, "attest", "simulate", "--head", sealed, "--out", os.path.join(work, "ev")],
                         capture_output=True, text=True, check=True)
    mr = re.search(r"MRENCLAVE ([0-9a-f]{64})", sim.stderr).group(1)
    kpolicy = os.path.join(work, "key-policy.json")
    json.dump({"mrenclave": mr, "allow_simulation": True, "allow_debug": True}, open(kpolicy, "w"))
    keys = Server([a.veil, "keys", "serve", "--key", key, "--policy", kpolicy, "--port", "0"])
    try:
        kport = int(keys.wait_for(r"listening on [\d.]+:(\d+)"))
        fetch = [a.veil, "keys", "fetch", "--server", f"127.0.0.1:{kport}", "--sealed", sealed,
                 "--out", os.path.join(work, "opened.onnx"), "--simulate"]
        rows.append(("veil keys fetch, no attack", timed(fetch, a.runs), ""))
        stop = threading.Event()
        frame = b"\x00\x00\x03\xe8" + b"\x01" * 1000
        for i in range(2, 8):
            for _ in range(10):
                threading.Thread(target=slow, args=(f"127.0.0.{i}", kport, frame, 1.0, stop), daemon=True).start()
        time.sleep(1)
        rows.append(("veil keys fetch, 60 clients on 6 addresses sending a byte a second", timed(fetch, a.runs), ""))
        stop.set()
    finally:
        keys.stop()

    for name, times, note in rows:
        print(f"{name}: worst {max(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s{'; ' + note if note else ''}")


if __name__ == "__main__":
    main()
