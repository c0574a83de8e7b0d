#!/usr/bin/env python3
"""Writes a SYNTHETIC network CSV in the exact schema of TON_IoT's Train_Test_Network.csv.

The real data set is not in any package registry (REFERENCES.md): bring your own copy for real
results. This file only lets the TON_IoT path of Veil (veil data ton-iot -> veil train ->
veil privacy / veil plan) run end to end on a machine without it. Every row is made up: the
46 columns, their order, '-' for absent fields, the label (0/1) and the ten type names are
the real ones; the values follow per-type rules (protocol, service, durations, byte and packet
counts, connection states, DNS/HTTP fields) with seeded noise, loosely after what the types
mean, so a classifier has something to learn. The first data row is the real row quoted in
REFERENCES.md.

Usage: python3 scripts/synth_ton_iot.py --rows 1200 --out synthetic.csv [--seed 0]
"""
import argparse
import csv
import math
import random

HEADER = (
    "ts,src_ip,src_port,dst_ip,dst_port,proto,service,duration,src_bytes,dst_bytes,conn_state,missed_bytes,"
    "src_pkts,src_ip_bytes,dst_pkts,dst_ip_bytes,dns_query,dns_qclass,dns_qtype,dns_rcode,dns_AA,dns_RD,dns_RA,"
    "dns_rejected,ssl_version,ssl_cipher,ssl_resumed,ssl_established,ssl_subject,ssl_issuer,http_trans_depth,"
    "http_method,http_uri,http_referrer,http_version,http_request_body_len,http_response_body_len,"
    "http_status_code,http_user_agent,http_orig_mime_types,http_resp_mime_types,weird_name,weird_addl,"
    "weird_notice,label,type"
).split(",")
REAL_ROW = (
    "1556485532,192.168.1.193,57139,192.168.1.33,8080,tcp,-,0.000082,0,0,REJ,0,1,48,1,40,-,0,0,0,-,-,-,-,-,-,-,-,-,"
    "-,-,-,-,-,-,0,0,0,-,-,-,-,-,-,1,backdoor"
).split(",")
TYPES = ["normal", "backdoor", "ddos", "dos", "injection", "mitm", "password", "ransomware", "scanning", "xss"]

# Per type: protocol weights, services, connection states, log10 of duration, src and dst bytes.
RULES = {
    "normal": (("tcp", 0.6, "udp", 0.35, "icmp", 0.05), ["dns", "http", "ssl", "-"], ["SF", "S0", "OTH"], (-1.0, 1.0), (2.0, 1.0), (3.0, 1.0)),
    "backdoor": (("tcp", 1.0), ["-"], ["REJ", "S0"], (-4.0, 0.5), (0.0, 0.3), (0.0, 0.3)),
    "ddos": (("tcp", 0.7, "udp", 0.3), ["-", "http"], ["S0", "SH", "OTH"], (-3.0, 0.7), (1.0, 0.5), (0.0, 0.5)),
    "dos": (("tcp", 0.5, "udp", 0.5), ["-", "dns"], ["S0", "REJ", "SF"], (-2.0, 1.0), (2.5, 0.5), (0.5, 0.5)),
    "injection": (("tcp", 1.0), ["http"], ["SF", "S1"], (0.0, 0.5), (2.8, 0.3), (3.5, 0.4)),
    "mitm": (("tcp", 0.4, "udp", 0.4, "icmp", 0.2), ["-", "dns"], ["OTH", "SF"], (0.5, 0.8), (1.5, 0.8), (1.5, 0.8)),
    "password": (("tcp", 1.0), ["http", "ssl"], ["SF", "RSTO"], (-0.5, 0.5), (2.3, 0.3), (2.6, 0.3)),
    "ransomware": (("tcp", 1.0), ["ssl", "-"], ["SF", "RSTR"], (1.0, 0.5), (4.0, 0.5), (2.0, 0.5)),
    "scanning": (("tcp", 0.8, "udp", 0.2), ["-"], ["REJ", "S0", "RSTOS0"], (-4.0, 0.5), (0.0, 0.2), (0.0, 0.2)),
    "xss": (("tcp", 1.0), ["http"], ["SF"], (-0.3, 0.4), (3.0, 0.3), (3.2, 0.3)),
}


def pick(rng, weighted):
    names, weights = weighted[0::2], weighted[1::2]
    return rng.choices(names, weights=weights)[0]


def row(rng, t, ts):
    protos, services, states, dur, sb, db = RULES[t]
    f = dict.fromkeys(HEADER, "-")
    f["ts"] = str(ts)
    f["src_ip"] = f"192.168.1.{rng.randint(2, 254)}"
    f["src_port"] = str(rng.randint(1024, 65535))
    f["dst_ip"] = f"192.168.1.{rng.randint(2, 254)}"
    f["proto"] = pick(rng, protos)
    f["service"] = rng.choice(services)
    f["dst_port"] = {"dns": "53", "http": "80", "ssl": "443"}.get(f["service"], str(rng.choice([22, 8080, 445, 1883, rng.randint(1, 65535)])))
    f["duration"] = f"{10 ** rng.gauss(*dur):.6f}"
    src_bytes = int(10 ** rng.gauss(*sb)) if rng.random() > 0.1 else 0
    dst_bytes = int(10 ** rng.gauss(*db)) if rng.random() > 0.1 else 0
    f["src_bytes"], f["dst_bytes"] = str(src_bytes), str(dst_bytes)
    f["conn_state"] = rng.choice(states)
    f["missed_bytes"] = "0" if rng.random() > 0.05 else str(rng.randint(1, 3000))
    src_pkts = max(1, int(src_bytes / rng.uniform(40, 600)))
    dst_pkts = max(0, int(dst_bytes / rng.uniform(40, 600)))
    f["src_pkts"], f["dst_pkts"] = str(src_pkts), str(dst_pkts)
    f["src_ip_bytes"] = str(src_bytes + 40 * src_pkts)
    f["dst_ip_bytes"] = str(dst_bytes + 40 * dst_pkts)
    dns = f["service"] == "dns"
    f["dns_query"] = rng.choice(["example.com", "time.windows.com", "mqtt.local", "api.iot.net"]) if dns else "-"
    for k, v in (("dns_qclass", "1"), ("dns_qtype", rng.choice(["1", "28", "12"])), ("dns_rcode", rng.choice(["0", "0", "3"]))):
        f[k] = v if dns else "0"
    for k in ("dns_AA", "dns_RD", "dns_RA", "dns_rejected"):
        f[k] = rng.choice(["T", "F"]) if dns else "-"
    if f["service"] == "ssl":
        f["ssl_version"] = rng.choice(["TLSv12", "TLSv13"])
        f["ssl_cipher"] = rng.choice(["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
        f["ssl_resumed"], f["ssl_established"] = rng.choice(["T", "F"]), rng.choice(["T", "F"])
    http = f["service"] == "http"
    f["http_trans_depth"] = str(rng.randint(1, 3)) if http else "-"
    if http:
        f["http_method"] = "POST" if t in ("injection", "password", "xss") else rng.choice(["GET", "GET", "POST"])
        f["http_uri"] = {"injection": "/index.php?id=1%27%20OR%201=1", "xss": "/search?q=%3Cscript%3E"}.get(t, "/")
        f["http_version"] = "1.1"
        f["http_user_agent"] = rng.choice(["Mozilla/5.0", "curl/7.58.0", "python-requests/2.21"])
    f["http_request_body_len"] = str(int(10 ** rng.gauss(2, 0.5))) if http else "0"
    f["http_response_body_len"] = str(int(10 ** rng.gauss(3, 0.5))) if http else "0"
    f["http_status_code"] = rng.choice(["200", "200", "404", "500"]) if http else "0"
    if rng.random() < (0.3 if t in ("scanning", "mitm", "dos") else 0.02):
        f["weird_name"] = rng.choice(["bad_TCP_checksum", "possible_split_routing", "data_before_established"])
        f["weird_notice"] = "F"
    f["label"] = "0" if t == "normal" else "1"
    f["type"] = t
    return [f[k] for k in HEADER]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated types to draw from (default: all ten)")
    a = ap.parse_args()
    types = a.types.split(",")
    unknown = [t for t in types if t not in TYPES]
    if unknown or a.rows < len(types):
        raise SystemExit(f"--types {unknown} not among {TYPES}" if unknown else f"--rows must be at least {len(types)}")
    rng = random.Random(a.seed)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerow(REAL_ROW)
        ts = 1556485532
        for i in range(a.rows - 1):
            ts += int(math.ceil(rng.expovariate(0.5)))
            w.writerow(row(rng, types[i % len(types)], ts))
    print(f"wrote {a.rows} synthetic rows in the TON_IoT network schema ({len(HEADER)} columns) to {a.out}")


if __name__ == "__main__":
    main()
