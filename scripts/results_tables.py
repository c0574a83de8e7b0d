#!/usr/bin/env python3
"""Markdown tables for docs/results.md from what `veil plan` and `veil privacy` wrote.

For a plan folder (plan.json, schema 2): the settings its verdicts hold under (threat model,
budget, attackers, seeds, data, thresholds), then every evaluated cut: each thresholded
measure's worst attacker, its mean and one-sided 95 % bound, the cut's status, and the runtime;
the deployed-resolution verdicts; the choice, the tied cuts and the weaknesses the report leads
with. For a sweep folder (sweep.json): one row per cut with every attacker's mean (bound) per
measure. Then one summary row per plan, next to the paper's runtimes where the architecture
is one of its three. Nothing is computed here that the files do not hold.

Usage: python3 scripts/results_tables.py DIR [DIR ...]
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


def num(x):
    return float("inf") if x == "inf" else float("-inf") if x == "-inf" else float(x)


def bound(e):
    u = num(e["upper"])
    return "∞" if u == float("inf") else f"{u:.3f}"


def settings_line(s, data=None):
    a = ", ".join(s["attackers"])
    th = ", ".join(f"{k} {v}" for k, v in sorted(s["thresholds"]["values"].items()))
    c = s["config"]
    line = (f"{s['threatModel']} threat model, budget {s['budget']}: attackers {a} × {len(s['seeds'])} seed(s), "
            f"≤ {c['epochs']} epochs (patience {c['patience']}), {c['trainCropsPerPhoto']} crops per training photo, "
            + (f"{c['optimisationSteps']} optimisation steps, " if {"optimisation", "substitute", "hybrid", "substitute-hybrid"} & set(s["attackers"]) else "")
            + f"{c['imageSize']} px; thresholds {th}")
    if s.get("reportedOnly"):
        line += "; reported without their thresholds: " + ", ".join(sorted(s["reportedOnly"])) + \
            " (" + next(iter(s["reportedOnly"].values())) + ")"
    if data:
        line += (f"; {data['trainImages']} training / {data['heldOutImages']} held-out crops "
                 f"({data['heldOutPhotos']} held-out of {data['sourceImages']} photos per seed)")
    return line


def verdict_row(v, rows=None, chosen=None):
    cells = []
    for m in v["measures"]:
        if m.get("threshold") is None:
            continue
        e = m["estimate"]
        cells.append(f"{m['measure']} {num(e['mean']):.3f} ({bound(e)}, {m['worstAttacker']})")
    shape = "×".join(str(x) for x in v["featureShape"])
    mark = " **(chosen)**" if v["cut"] == chosen else ""
    row = f"| `{v['cut']}`{mark} | {shape} | {'; '.join(cells)} | {v['status']}{' (stopped early)' if v['stoppedEarly'] else ''} |"
    if rows is not None:
        r = rows[v["cut"]]
        row += f" {r['totalMs']:.1f} | {r['speedupPercent']:.1f} |"
    return row


def plan(d, summary):
    with open(os.path.join(d, "plan.json")) as f:
        p = json.load(f)["planning"]
    prof = p["profile"]
    rows = {c["cut"]["name"]: c for c in prof["cuts"]}
    print(f"#### {p['model']} ({d})\n")
    print(settings_line(p["evaluation"], p["data"]) + f"; TEE preset {prof['preset']['name']} ({prof['teeTime']}).\n")
    print("| cut | feature map | per measure: worst mean (95 % bound, attacker) | verdict | partitioned ms | speed-up % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for v in sorted(p["privacy"], key=lambda v: v["cutIndex"]):
        print(verdict_row(v, rows, p.get("chosenCut")))
    for v in p.get("confirmations", []):
        print(f"\nAt the deployed resolution ({v['settings']['config']['imageSize']} px, {', '.join(v['settings']['attackers'])}):\n")
        print("| cut | feature map | per measure: worst mean (95 % bound, attacker) | verdict |")
        print("| --- | --- | --- | --- |")
        print(verdict_row(v))
    base = prof["baseline"]["totalMs"]
    chosen = rows.get(p.get("chosenCut") or "")
    fastest = rows.get(p.get("fastestCut") or "")
    print(f"\nWhole model in the TEE {base:.1f} ms; chosen `{p.get('chosenCut')}` "
          + (f"{chosen['totalMs']:.1f} ms ({chosen['speedupPercent']:.1f} %)" if chosen else "none")
          + (f"; fastest regardless of privacy `{p['fastestCut']}` {fastest['totalMs']:.1f} ms ({fastest['speedupPercent']:.1f} %)" if fastest else "")
          + (f"; tied (within noise): {', '.join('`' + t + '`' for t in p['tiedCuts'])}" if p.get("tiedCuts") else "")
          + ".\n")
    print("Per attacker, at the cuts the plan attacked:\n")
    attacker_table(p["privacy"], p["evaluation"]["attackers"])
    fam = family(p["model"])
    summary.append((p["model"], fam, p["evaluation"]["threatModel"], p["evaluation"]["seeds"], p.get("tiedCuts") or [], base,
                    p.get("chosenCut"), chosen, PAPER.get(fam, "")))


def attacker_table(results, attackers):
    """One row per cut and measure, one column per attacker: the curve of each attacker."""
    measures = [m for m in ["ssim", "recognition", "reidentification", "fields", "psnr"]
                if any(any(x["measure"] == m for x in v["measures"]) for v in results)]
    head = "| cut | measure | " + " | ".join(attackers) + " | baseline | status |"
    print(head)
    print("|" + " --- |" * (len(attackers) + 4))
    for v in sorted(results, key=lambda v: v["cutIndex"]):
        for m in measures:
            mv = next((x for x in v["measures"] if x["measure"] == m), None)
            if mv is None:
                continue
            cells = []
            for a in attackers:
                e = mv["estimates"].get(a)
                if e is None:
                    cells.append("skipped" if v["stoppedEarly"] else "—")
                elif m == "psnr":
                    cells.append(f"{num(e['mean']):.1f} dB")
                else:
                    cells.append(f"{num(e['mean']):.3f} ({bound(e)})" + ("*" if a == mv["worstAttacker"] else ""))
            status = mv.get("status") or "reported"
            print(f"| `{v['cut']}` | {m} | " + " | ".join(cells) + f" | {num(mv['baseline']):.3f} | {status} |")
    print("\n(mean over seeds and held-out images, the one-sided 95 % bound clustered by photo across seeds; * the attacker "
          "whose bound decides; skipped: not run once another attacker's leak was certain; baseline: the mean training image)\n")


def sweep(d):
    with open(os.path.join(d, "sweep.json")) as f:
        s = json.load(f)
    print(f"#### {s['model']}: the sweep ({d})\n")
    print(settings_line(s["settings"]) + ".\n")
    attacker_table(s["results"], s["settings"]["attackers"])


def main(dirs):
    summary = []
    for d in dirs:
        if os.path.exists(os.path.join(d, "plan.json")):
            plan(d, summary)
        elif os.path.exists(os.path.join(d, "sweep.json")):
            sweep(d)
        else:
            sys.exit(f"{d}: neither plan.json nor sweep.json")
    if summary:
        print("| model | architecture | threat model | seeds | whole model in the TEE (modeled) | chosen cut → partitioned (speed-up) | tied (within noise) | paper: full → partitioned (speed-up) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for model, fam, tm, seeds, tied, base, cut, chosen, paper in summary:
            c = f"`{cut}` → {chosen['totalMs']:.1f} ms ({chosen['speedupPercent']:.1f} %)" if chosen else "none"
            t = ", ".join(f"`{x}`" for x in tied) or "—"
            print(f"| {model} | {fam} | {tm} | {', '.join(str(x) for x in seeds)} | {base:.1f} ms | {c} | {t} | {paper} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
