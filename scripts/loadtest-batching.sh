#!/bin/bash
# The load figures of issue 8: N clients end to end through `veil enclave serve` and
# `veil accelerator serve` on loopback, batching off, then on, in one run; every answer checked
# against the whole model (veil loadtest). "On" batches the accelerator's tail (--max-batch,
# --max-queue-delay-ms); HEAD_BATCH=N also batches the enclave's head (--head-batch: requests
# waiting for the head run together, no added delay).
# Prints both runs side by side and the throughput ratio; the JSON of each run goes to OUT.
#
#   scripts/loadtest-batching.sh [MODEL] [CUT] [CLIENTS] [REQUESTS]   (default: resnet50 layer2 8 160)
#   env: VEIL=path/to/veil  OUT=dir  MAX_BATCH=8  QUEUE_DELAY_MS=5  HEAD_BATCH=1
#        THREADS=kernel threads per process
#
# Don't run it while other work loads the machine (uptime's load above the core count): the
# two runs would not be comparable.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-resnet50}
CUT=${2:-layer2}
CLIENTS=${3:-8}
REQUESTS=${4:-160}
VEIL=${VEIL:-.build/release/veil}
OUT=${OUT:-out/loadtest}
MAX_BATCH=${MAX_BATCH:-8}
QUEUE_DELAY_MS=${QUEUE_DELAY_MS:-5}
HEAD_BATCH=${HEAD_BATCH:-1}
ASSETS=${VEIL_ASSETS:-$HOME/.cache/veil/assets}
APORT=${APORT:-18701}
EPORT=${EPORT:-18702}
THREADS_ARG=()
[ -n "${THREADS:-}" ] && THREADS_ARG=(--threads "$THREADS")

[ -x "$VEIL" ] || { echo "no veil binary at $VEIL: swift build -c release (or set VEIL)" >&2; exit 1; }
PHOTOS=()
for f in coffee.png chelsea.png astronaut.png dog.jpg eagle.jpg; do
  [ -f "$ASSETS/$f" ] && PHOTOS+=("$ASSETS/$f")
done
[ ${#PHOTOS[@]} -gt 0 ] || { echo "no photos in $ASSETS: run make assets" >&2; exit 1; }

PLAN="$OUT/plan"
mkdir -p "$PLAN"
echo "== plan: $MODEL cut at $CUT in $PLAN" >&2
"$VEIL" split --model "$MODEL" --cut "$CUT" --out "$PLAN" --plan >&2

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_for() { # wait_for FILE TEXT
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

start_accelerator() { # start_accelerator MAX_BATCH LOG
  "$VEIL" accelerator serve --model "$MODEL.tail=$PLAN/tail.onnx:1" --port "$APORT" \
    --max-batch "$1" --max-queue-delay-ms "$QUEUE_DELAY_MS" --precompile "${THREADS_ARG[@]}" 2>"$2" &
  APID=$!
  PIDS+=("$APID")
  wait_for "$2" "serving inference"
}

start_enclave() { # start_enclave HEAD_BATCH LOG
  "$VEIL" enclave serve --plan "$PLAN" --accelerator "127.0.0.1:$APORT" --port "$EPORT" --allow-simulation \
    --head-batch "$1" --log-level notice "${THREADS_ARG[@]}" 2>"$2" &
  EPID=$!
  PIDS+=("$EPID")
  wait_for "$2" "listening on"
}

start_accelerator 1 "$OUT/accelerator-off.log"
start_enclave 1 "$OUT/enclave-off.log"
MRENCLAVE=$(grep -o 'MRENCLAVE [0-9a-f]*' "$OUT/enclave-off.log" | cut -d' ' -f2)
printf '{"mrenclave": "%s", "allow_simulation": true, "allow_debug": true}\n' "$MRENCLAVE" >"$OUT/policy.json"

run() { # run LABEL
  "$VEIL" loadtest --endpoint "127.0.0.1:$EPORT" --policy "$OUT/policy.json" --model "$MODEL" \
    --clients "$CLIENTS" --requests "$REQUESTS" --label "$1" --json "${THREADS_ARG[@]}" "${PHOTOS[@]}"
}
echo "== batching off (max batch 1)" >&2
run "batching off" >"$OUT/off.json"
kill "$EPID" "$APID"; wait "$EPID" "$APID" 2>/dev/null || true
start_accelerator "$MAX_BATCH" "$OUT/accelerator-on.log"
start_enclave "$HEAD_BATCH" "$OUT/enclave-on.log"
echo "== batching on (head batch $HEAD_BATCH; tail max batch $MAX_BATCH, queue delay $QUEUE_DELAY_MS ms)" >&2
run "batching on" >"$OUT/on.json"

python3 - "$OUT/off.json" "$OUT/on.json" <<'PY'
import json, sys
off, on = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{off['model']} cut at {off['cut']}, {off['clients']} clients, {off['requests']} requests per run (loopback, simulated evidence)")
print(f"{'':14}{'ok':>6}{'wrong':>7}{'lost':>6}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'head ms':>9}{'tail ms':>9}")
for r in (off, on):
    print(f"{r['label']:14}{r['ok']:>6}{r['wrong']:>7}{r['lost']:>6}{r['throughput']:>9.2f}{r['p50Ms']:>9.1f}{r['p90Ms']:>9.1f}{r['p99Ms']:>9.1f}{r['meanHeadMs']:>9.1f}{r['meanTailMs']:>9.1f}")
print(f"throughput, batching on / off: {on['throughput'] / off['throughput']:.2f}x")
PY
