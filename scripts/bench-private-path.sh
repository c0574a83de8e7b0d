#!/bin/sh
# The private path's overhead on one machine: three processes (accelerator with the tail, enclave
# with the head under SIMULATED evidence, the client), default settings, no environment
# variables, against `veil bench` of the whole model, quiet and beside one busy-looping process,
# alternating in one run.
#
#   scripts/bench-private-path.sh PLAN_DIR MODEL PHOTO [ROUNDS] [REQUESTS] [CLIENTS]
#
# WAITS (default "default": each process as it chooses, see `ThreadWaiting` in
# Sources/veil/Veil.swift) lists the thread-waiting policies to compare, e.g.
# WAITS="default passive spin": each round then runs every measurement under each policy in
# turn, all three processes restarted with VEIL_THREAD_WAIT set to it. VEILS (default: VEIL,
# .build/release/veil) lists veil binaries to compare the same way, e.g. a build before and after
# a change: VEILS="/tmp/veil-before .build/release/veil". SPORADIC_MS (default 50; 0: not
# measured) adds, quiet only, the whole model and the private path with that many idle
# milliseconds before each pass or request, as a server with sporadic requests sees them
# (`--gap-ms`): its threads asleep, its CPUs idle. CALLS (default "stream") lists how the client
# sends its requests to the enclave: "stream" (one open InferStream per session, the default) and
# "unary" (`veil loadtest --unary`, an Infer call per request); CALLS="stream unary" runs every
# client measurement both ways in turn against the same servers. ACCELERATOR_CALLS (default
# "stream") does the same for the enclave's calls to the accelerator ("unary": `veil enclave serve
# --unary-accelerator-calls`); each value restarts the two servers, as WAITS does.
#
# PLAN_DIR is a plan folder (`veil plan --out`, e.g. the demo's), MODEL the model it was made from
# (zoo name or file, as given to the planner), PHOTO a photo to send. Each round measures, in turn:
# the whole model (`veil bench`, median), the private path with one client (`veil loadtest
# --clients 1 --breakdown`, p50), then the same two beside a busy loop; with CLIENTS > 1 also the
# throughput of CLIENTS clients. Prints one line per measurement and the breakdown of the last
# quiet run. Timings on a shared machine are noisy: run it on a quiet one, and compare figures
# of the same run only.
#
# BLOCKS (default 4) splits the whole model's runs (60) and the single client's REQUESTS into that
# many short blocks that alternate, a few seconds each, so that both are measured in the same
# phases of the host's speed (this host changes speed for seconds at a time, see
# docs/benchmarks.md "Profiles paced by the whole model"). The two figures are then medians of
# the blocks' medians, and "overhead, paired by block" is the median over blocks of the private
# path's p50 less the whole model's median in the same block, with its range: the figure
# issue 17's "whole model + 2 ms" target reads. BLOCKS=1 measures each once, as before.
set -eu
PLAN=${1:?usage: $0 PLAN_DIR MODEL PHOTO [ROUNDS] [REQUESTS] [CLIENTS]}
MODEL=${2:?model the plan was made from}
PHOTO=${3:?a photo}
ROUNDS=${4:-3}
REQUESTS=${5:-60}
CLIENTS=${6:-8}
WAITS=${WAITS:-default}
SPORADIC_MS=${SPORADIC_MS:-50}
VEIL=${VEIL:-.build/release/veil}
VEILS=${VEILS:-$VEIL}
CALLS=${CALLS:-stream}
ACCELERATOR_CALLS=${ACCELERATOR_CALLS:-stream}
BLOCKS=${BLOCKS:-4}
case "$BLOCKS" in '' | *[!0-9]* | 0) echo "BLOCKS must be a whole number ≥ 1, not '$BLOCKS'" >&2; exit 2 ;; esac
WORK=$(mktemp -d)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Waits (at most 120 s) for a server's log to announce its address; prints HOST:PORT.
address() {
  log=$1
  pattern=$2
  i=0
  while [ $i -lt 1200 ]; do
    a=$(sed -n "s/.*$pattern \([0-9.]*:[0-9]*\).*/\1/p" "$log" 2>/dev/null | head -1)
    if [ -n "$a" ]; then echo "$a"; return 0; fi
    i=$((i + 1))
    sleep 0.1
  done
  echo "no address in $log after 120 s:" >&2
  cat "$log" >&2
  return 1
}

TAIL_NAME=$(sed -n 's/.*"modelName" : "\([^"]*\)".*/\1/p' "$PLAN/plan.json" | head -1)
SERVERS=""
servers_stop() {
  for p in $SERVERS; do kill "$p" 2>/dev/null || true; done
  for p in $SERVERS; do wait "$p" 2>/dev/null || true; done
  SERVERS=""
}
# Starts the accelerator and the enclave under the thread-waiting policy $1, the enclave calling
# the accelerator as $2 says (stream or unary).
servers_start() {
  if [ "$1" = default ]; then unset VEIL_THREAD_WAIT; else export VEIL_THREAD_WAIT=$1; fi
  "$VEIL" accelerator serve --model "$TAIL_NAME=$PLAN/tail.onnx:1" --host 127.0.0.1 --port 0 >"$WORK/acc.log" 2>&1 &
  SERVERS="$SERVERS $!"
  PIDS="$PIDS $!"
  ACC=$(address "$WORK/acc.log" "serving inference.GRPCInferenceService on")
  UNARY_ACC=""
  [ "$2" = unary ] && UNARY_ACC=--unary-accelerator-calls
  "$VEIL" enclave serve --plan "$PLAN" --accelerator "$ACC" --host 127.0.0.1 --port 0 --allow-simulation $UNARY_ACC \
    >"$WORK/enc.log" 2>&1 &
  SERVERS="$SERVERS $!"
  PIDS="$PIDS $!"
  ENC=$(address "$WORK/enc.log" "listening on")
  # The plan's client policy pins the MRENCLAVE of the binary that made the plan; simulated
  # evidence measures this binary, so the client here pins what this enclave announced.
  MRENCLAVE=$(sed -n 's/.*MRENCLAVE \([0-9a-f]*\).*/\1/p' "$WORK/enc.log" | head -1)
  printf '{"mrenclave": "%s", "allow_simulation": true, "allow_debug": true}\n' "$MRENCLAVE" >"$WORK/policy.json"
}
echo "plan $PLAN, $ROUNDS rounds of $REQUESTS requests, waiting policies: $WAITS"

busy_start() {
  sh -c 'while :; do :; done' &
  BUSY=$!
}
busy_stop() {
  kill "$BUSY" 2>/dev/null || true
  wait "$BUSY" 2>/dev/null || true
}

# The whole model's median over $2 timed runs (default 60), each $1 ms apart (default 0).
bench() {
  "$VEIL" bench --model "$MODEL" --runs "${2:-60}" --warmup 5 --gap-ms "${1:-0}" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % d["latency_ms"]["median"])'
}
# Prints p50, throughput, wrong and lost of $1 clients sending $3 requests (default REQUESTS),
# each $2 ms after the last answer (default 0).
loadtest() {
  UNARY=""
  [ "$calls" = unary ] && UNARY=--unary
  "$VEIL" loadtest --endpoint "$ENC" --policy "$WORK/policy.json" --model "$MODEL" --clients "$1" $UNARY \
    --requests "${3:-$REQUESTS}" --warmup 3 --gap-ms "${2:-0}" --breakdown --json "$PHOTO" 2>/dev/null >"$WORK/lt.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f %.2f %d %d" % (d["p50Ms"], d["throughput"], d["wrong"], d["lost"]))' "$WORK/lt.json"
}

# The median of the numbers given.
median() {
  python3 -c 'import statistics,sys; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"
}
# "MEDIAN ms (MIN … MAX)" of the differences B_i − A_i of two lists given as "A1 A2 …" "B1 B2 …".
paired() {
  python3 -c '
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
d = [y - x for x, y in zip(a, b)]
print("%.2f ms  (%.2f … %.2f over %d blocks)" % (statistics.median(d), min(d), max(d), len(d)))' "$1" "$2"
}
BLOCK_RUNS=$(( (60 + BLOCKS - 1) / BLOCKS ))
BLOCK_REQUESTS=$(( (REQUESTS + BLOCKS - 1) / BLOCKS ))
[ "$BLOCK_RUNS" -lt 5 ] && BLOCK_RUNS=5
[ "$BLOCK_REQUESTS" -lt 5 ] && BLOCK_REQUESTS=5
printf '%-6s %-24s %-7s %-28s %10s\n' round variant load measurement value
VARIANTS=""
r=1
while [ "$r" -le "$ROUNDS" ]; do
  for VEIL in $VEILS; do
    for wait in $WAITS; do
      for acc in $ACCELERATOR_CALLS; do
        servers_start "$wait" "$acc"
        for load in quiet busy; do
          [ "$load" = busy ] && busy_start
          base=$wait
          [ "$VEILS" != "$VEIL" ] && base="$(basename "$VEIL"):$wait"
          [ "$ACCELERATOR_CALLS" != "$acc" ] && base="$base-acc:$acc"
          for calls in $CALLS; do
            variant=$base
            [ "$CALLS" != "$calls" ] && variant="$base-$calls"
            [ "$r" -eq 1 ] && [ "$load" = quiet ] && VARIANTS="$VARIANTS $variant"
            # The whole model and one client alternate in BLOCKS short blocks.
            wholes=""
            p50s=""
            wrong=0
            lost=0
            b=1
            while [ "$b" -le "$BLOCKS" ]; do
              wholes="$wholes $(bench 0 "$BLOCK_RUNS")"
              set -- $(loadtest 1 0 "$BLOCK_REQUESTS")
              p50s="$p50s $1"
              wrong=$((wrong + $3))
              lost=$((lost + $4))
              b=$((b + 1))
            done
            printf '%-6s %-24s %-7s %-28s %10s ms\n' "$r" "$variant" "$load" "whole model (bench median)" "$(median $wholes)"
            printf '%-6s %-24s %-7s %-28s %10s ms  (%s wrong, %s lost)\n' "$r" "$variant" "$load" "private path p50, 1 client" "$(median $p50s)" "$wrong" "$lost"
            printf '%-6s %-24s %-7s %-28s %10s\n' "$r" "$variant" "$load" "overhead, paired by block" "$(paired "$wholes" "$p50s")"
            [ "$load" = quiet ] && cp "$WORK/lt.json" "$WORK/quiet-breakdown-$variant.json"
            if [ "$load" = quiet ] && [ "$SPORADIC_MS" != 0 ]; then
              printf '%-6s %-24s %-7s %-28s %10s ms\n' "$r" "$variant" "$load" "whole model, ${SPORADIC_MS} ms apart" "$(bench "$SPORADIC_MS")"
              set -- $(loadtest 1 "$SPORADIC_MS")
              printf '%-6s %-24s %-7s %-28s %10s ms  (%s wrong, %s lost)\n' "$r" "$variant" "$load" "p50, 1 client, ${SPORADIC_MS} ms apart" "$1" "$3" "$4"
            fi
            if [ "$CLIENTS" -gt 1 ]; then
              set -- $(loadtest "$CLIENTS")
              printf '%-6s %-24s %-7s %-28s %10s req/s  (%s wrong, %s lost)\n' "$r" "$variant" "$load" "throughput, $CLIENTS clients" "$2" "$3" "$4"
            fi
          done
          [ "$load" = busy ] && busy_stop
        done
        servers_stop
      done
    done
  done
  r=$((r + 1))
done
for variant in $VARIANTS; do
  echo "breakdown of the last quiet single-client block, $variant (ms):"
  python3 - "$WORK/quiet-breakdown-$variant.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for s in d.get("breakdown") or []:
    print("  %-45s mean %8.3f  p50 %8.3f  p90 %8.3f" % (s["stage"], s["meanMs"], s["p50Ms"], s["p90Ms"]))
EOF
done
