#!/usr/bin/env python3
"""Veil against its peers on the same machine, thread count and weights.

For each model, batch size and thread count, it exports Veil's model as ONNX (`veil export`),
then times Veil (`veil bench --json`) and ONNX Runtime (all graph optimisations on) on it,
alternating the two over several passes because this machine has bursts of slowdown; PyTorch
CPU is timed too where `torch` and `torchvision` are importable (weights are loaded by name:
Veil's zoo uses torchvision's state_dict keys). Each runtime runs in its own process, so its
peak resident memory is its own. Prints a side-by-side table with Veil/peer ratios (below 1.0
means Veil is faster) and can write it as Markdown and JSON.

A model that is an .onnx file is timed as it is, by every runtime (its declared batch; PyTorch
is skipped for it): the unseen-CNN comparison of issue 20.

Usage: .venv/bin/python bench/peers.py [--models resnet50,vgg16,efficientnet_b0|FILE.onnx,...]
         [--batches 1,8] [--threads 1,2] [--runs 10] [--passes 3] [--wait default|spin|passive] [--gap-ms MS]
         [--markdown F] [--json F]
"""
import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# VEIL (environment) names another veil binary, e.g. a build before a change.
VEIL = os.environ.get("VEIL") or os.path.join(ROOT, ".build", "release", "veil")

# The child's own peak: VmHWM, the high-water mark of its address space. ru_maxrss keeps the
# parent's peak across fork and exec, so every child reported at least this script's RSS.
PEAK_RSS = r"""
import resource
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""

ORT_CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
path, threads, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
batch = int(sys.argv[5]) if len(sys.argv) > 5 else 1
spin = sys.argv[6] if len(sys.argv) > 6 else "1"
gap = float(sys.argv[7]) / 1000 if len(sys.argv) > 7 else 0.0
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.add_session_config_entry("session.intra_op.allow_spinning", spin)
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [d if isinstance(d, int) else batch for d in i.shape]  # a symbolic batch takes the row's
x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
for _ in range(warmup):
    s.run(None, {i.name: x})
t = []
for _ in range(runs):
    if gap > 0:
        time.sleep(gap)
    a = time.perf_counter(); s.run(None, {i.name: x}); t.append((time.perf_counter() - a) * 1000)
t.sort()
print(json.dumps({"median": t[len(t) // 2] if len(t) % 2 else (t[len(t)//2 - 1] + t[len(t)//2]) / 2,
                  "min": t[0], "peak_rss_bytes": peak_rss(),
                  "version": ort.__version__}))
"""

TORCH_CHILD = r"""
import json, resource, sys, time
import numpy as np, onnx, torch, torchvision
from onnx import numpy_helper
path, name, batch, threads, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
gap = float(sys.argv[7]) / 1000 if len(sys.argv) > 7 else 0.0
torch.set_num_threads(threads)
m = getattr(torchvision.models, name)(weights=None).eval()
state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
sd = m.state_dict()
sd.update({k: v for k, v in state.items() if k in sd})
m.load_state_dict(sd)
x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32))
with torch.inference_mode():
    for _ in range(warmup): m(x)
    t = []
    for _ in range(runs):
        if gap > 0:
            time.sleep(gap)
        a = time.perf_counter(); m(x); t.append((time.perf_counter() - a) * 1000)
t.sort()
print(json.dumps({"median": t[len(t) // 2], "min": t[0], "peak_rss_bytes": peak_rss(),
                  "version": torch.__version__}))
"""


def run_json(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.strip()}")
    return json.loads(p.stdout)


def have_torch():
    return subprocess.run([sys.executable, "-c", "import torch, torchvision"], capture_output=True).returncode == 0


def main():
    ap = argparse.ArgumentParser(description="Veil vs ONNX Runtime (and PyTorch) on the same weights")
    ap.add_argument("--models", default="resnet50,vgg16,efficientnet_b0")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3, help="alternating passes per runtime; the median of their medians is kept")
    ap.add_argument("--wait", choices=["default", "spin", "passive"], default="default",
                    help="thread waiting: each runtime's default (Veil spins within a pass, ONNX Runtime spins), or both "
                         "the same (spin: Veil --spin-wait; passive: VEIL_THREAD_WAIT=passive and ONNX Runtime's "
                         "session.intra_op.allow_spinning = 0)")
    ap.add_argument("--gap-ms", type=float, default=0.0,
                    help="idle milliseconds before each timed pass, in every runtime: a server between sporadic requests "
                         "(threads asleep, CPUs idle) rather than passes back to back")
    ap.add_argument("--markdown", help="also write the table as Markdown here")
    ap.add_argument("--json", help="also write all figures as JSON here")
    a = ap.parse_args()
    if not os.path.exists(VEIL):
        sys.exit(f"{VEIL} not found: run `swift build -c release` (or `make build`) first")
    torch_ok = have_torch()
    if not torch_ok:
        print("note: PyTorch (torch + torchvision) is not installed in this environment; its column is skipped", file=sys.stderr)
    rows = []
    tmp = tempfile.mkdtemp(prefix="veil-peers-")
    # The zoo models' exports (hundreds of MB for VGG-16 at batch 8) go when the run ends.
    atexit.register(shutil.rmtree, tmp, True)
    for model in a.models.split(","):
        for batch in map(int, a.batches.split(",")):
            if model.endswith(".onnx"):
                # A file of the user's: every runtime takes the file itself, at the batch it declares
                # or, where the batch is symbolic (torchvision exports), at the row's.
                if batch != 1 and not symbolic_batch(model):
                    print(f"note: {model} declares a fixed batch; batch {batch} skipped", file=sys.stderr)
                    continue
                onnx_path = model
            else:
                onnx_path = os.path.join(tmp, f"{os.path.basename(model)}_b{batch}.onnx")
                subprocess.run([VEIL, "export", "--model", model, "--batch", str(batch), "--out", onnx_path], check=True,
                               capture_output=True)
            for threads in map(int, a.threads.split(",")):
                veil, ort, pt = [], [], []
                for _ in range(a.passes):
                    print(f"  {model} batch {batch} threads {threads}: veil", file=sys.stderr, flush=True)
                    veil.append(run_json([VEIL, "bench", "--model", model, "--batch", str(batch), "--threads", str(threads),
                                          "--runs", str(a.runs), "--warmup", str(a.warmup), "--gap-ms", str(a.gap_ms), "--json"]
                                         + (["--spin-wait"] if a.wait == "spin" else []),
                                         env={"VEIL_THREAD_WAIT": "passive"} if a.wait == "passive" else None))
                    print(f"  {model} batch {batch} threads {threads}: onnxruntime", file=sys.stderr, flush=True)
                    ort.append(run_json([sys.executable, "-c", PEAK_RSS + ORT_CHILD, onnx_path, str(threads), str(a.runs), str(a.warmup),
                                         str(batch), "0" if a.wait == "passive" else "1", str(a.gap_ms)]))
                    if torch_ok and not model.endswith(".onnx"):
                        pt.append(run_json([sys.executable, "-c", PEAK_RSS + TORCH_CHILD, onnx_path, model, str(batch), str(threads),
                                            str(a.runs), str(a.warmup), str(a.gap_ms)]))
                row = {
                    "model": model, "batch": batch, "threads": threads, "wait": a.wait, "gap_ms": a.gap_ms,
                    "veil_ms": statistics.median(v["latency_ms"]["median"] for v in veil),
                    "veil_gflops": statistics.median(v["gflops"] for v in veil),
                    "veil_rss": max(v["peak_rss_bytes"] for v in veil),
                    "veil_weights": veil[0]["weight_bytes"], "veil_arena": veil[0]["arena_bytes"],
                    "ort_ms": statistics.median(o["median"] for o in ort),
                    "ort_rss": max(o["peak_rss_bytes"] for o in ort), "ort_version": ort[0]["version"],
                }
                row["ratio_ort"] = row["veil_ms"] / row["ort_ms"]
                if pt:
                    row["torch_ms"] = statistics.median(p["median"] for p in pt)
                    row["ratio_torch"] = row["veil_ms"] / row["torch_ms"]
                    row["torch_version"] = pt[0]["version"]
                rows.append(row)
                print(format_row(row), file=sys.stderr, flush=True)
    table = markdown(rows, torch_ok)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


def label(model):
    """A model's name in the tables: a zoo name, a file's name, or for exports saved as
    DIR/model.onnx (scripts/torchvision_export.py) the folder's."""
    base = os.path.basename(model)
    return os.path.basename(os.path.dirname(model)) if base == "model.onnx" else base


def symbolic_batch(path):
    """Whether the file's first input has a symbolic (named or unknown) leading dimension."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    first = next(i for i in m.graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and not dims[0].HasField("dim_value")


def format_row(r):
    s = f"{label(r['model']):>22} b{r['batch']} t{r['threads']}: veil {r['veil_ms']:.1f} ms, ort {r['ort_ms']:.1f} ms, ratio {r['ratio_ort']:.2f}"
    if "torch_ms" in r:
        s += f", torch {r['torch_ms']:.1f} ms, ratio {r['ratio_torch']:.2f}"
    return s


def markdown(rows, torch_ok):
    mib = lambda b: f"{b / 1048576:.0f}"
    head = "| model | batch | threads | Veil ms | ORT ms | Veil/ORT |"
    sep = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if torch_ok:
        head += " PyTorch ms | Veil/PyTorch |"
        sep += " ---: | ---: |"
    head += " Veil GFLOP/s | Veil peak RSS MiB | ORT peak RSS MiB | Veil weights + arena MiB |"
    sep += " ---: | ---: | ---: | ---: |"
    lines = [head, sep]
    for r in rows:
        s = f"| {label(r['model'])} | {r['batch']} | {r['threads']} | {r['veil_ms']:.1f} | {r['ort_ms']:.1f} | {r['ratio_ort']:.2f} |"
        if torch_ok:
            s += f" {r.get('torch_ms', float('nan')):.1f} | {r.get('ratio_torch', float('nan')):.2f} |"
        s += f" {r['veil_gflops']:.0f} | {mib(r['veil_rss'])} | {mib(r['ort_rss'])} | {mib(r['veil_weights'])} + {mib(r['veil_arena'])} |"
        lines.append(s)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
