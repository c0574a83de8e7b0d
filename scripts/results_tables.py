#!/usr/bin/env python3
"""Markdown tables for docs/results.md from the plans `veil plan` wrote (plan.json).

Reads each plan's "planning" record and prints, per plan, the privacy curve (every attacked
cut: SSIM mean ± s.d., its 95 % upper bound, PSNR, the verdict against the plan's threshold)
and the runtime of the whole model in the TEE, of the chosen cut and of the fastest cut; then
one summary row per plan, next to the paper's runtimes where the architecture is one of its
three. Nothing is computed here that the plans do not hold.

Usage: python3 scripts/results_tables.py PLAN_DIR [PLAN_DIR ...]
"""
import json
import os
import sys

PAPER = {"VGG-16": "4.2 s → 1.4 s (66.6 %)", "ResNet-50": "4.02 s → 3.6 s (10.4 %)", "EfficientNet-B0": "3.7 s → 2.5 s (32.4 %)"}


def family(model):
    m = model.lower()
    if "vgg16" in m:
        return "VGG-16"
    if "resnet50" in m or "open_nsfw" in m:
        return "ResNet-50"
    if "efficientnet" in m:
        return "EfficientNet-B0"
    return ""


def main(dirs):
    summary = []
    for d in dirs:
        with open(os.path.join(d, "plan.json")) as f:
            p = json.load(f)["planning"]
        prof = p["profile"]
        rows = {c["cut"]["name"]: c for c in prof["cuts"]}
        t = p["threshold"]
        s = p["settings"]
        print(f"#### {p['model']} ({d})\n")
        print(
            f"Attacker {p['attacker']}, budget {p['budget']}, {s.get('epochs')} epochs × {s.get('crops per photo')} crops per photo, "
            f"{p['data']['trainImages']} training / {p['data']['heldOutImages']} held-out images ({p['data']['sourceImages']} photos), "
            f"threshold {t}; TEE preset {prof['preset']['name']} ({prof['teeTime']}).\n")
        print("| cut | feature map | SSIM mean ± s.d. | 95 % upper bound | PSNR dB | verdict | partitioned ms | speed-up % |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for q in sorted(p["privacy"], key=lambda q: q["cutIndex"]):
            r = rows[q["cut"]]
            shape = "×".join(str(x) for x in r["cut"]["shape"][1:])
            verdict = "private" if q["ssimUpper"] < t else "leaks"
            mark = " **(chosen)**" if q["cut"] == p.get("chosenCut") else ""
            print(
                f"| `{q['cut']}`{mark} | {shape} | {q['ssimMean']:.3f} ± {q['ssimStd']:.3f} | {q['ssimUpper']:.3f} | "
                f"{q['psnrMean']:.1f} | {verdict} | {r['totalMs']:.1f} | {r['speedupPercent']:.1f} |")
        base = prof["baseline"]["totalMs"]
        chosen = rows.get(p.get("chosenCut") or "")
        fastest = rows.get(p.get("fastestCut") or "")
        print(f"\nWhole model in the TEE {base:.1f} ms; chosen `{p.get('chosenCut')}` "
              + (f"{chosen['totalMs']:.1f} ms ({chosen['speedupPercent']:.1f} %)" if chosen else "none")
              + (f"; fastest regardless of privacy `{p['fastestCut']}` {fastest['totalMs']:.1f} ms ({fastest['speedupPercent']:.1f} %)." if fastest else ".")
              + "\n")
        fam = family(p["model"])
        summary.append((p["model"], fam, base, p.get("chosenCut"), chosen, PAPER.get(fam, "")))
    print("| model | architecture | whole model in the TEE (modeled) | chosen cut → partitioned (speed-up) | paper: full → partitioned (speed-up) |")
    print("| --- | --- | --- | --- | --- |")
    for model, fam, base, cut, chosen, paper in summary:
        c = f"`{cut}` → {chosen['totalMs']:.1f} ms ({chosen['speedupPercent']:.1f} %)" if chosen else "none"
        print(f"| {model} | {fam} | {base:.1f} ms | {c} | {paper} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
