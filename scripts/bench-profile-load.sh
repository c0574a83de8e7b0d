#!/bin/sh
# Does the planner's profile know when a busy machine fools it? `veil profile` (the planner's
# timing step) of each MODEL, quiet and beside one busy-looping process, alternating in one run.
#
#   scripts/bench-profile-load.sh [ROUNDS] MODEL...
#
# For each round and model prints the whole model's native median, the median over cuts of
# head + tail (native), both quiet and loaded, their loaded/quiet ratios, and whether the loaded
# profile called itself unstable (`unstable` in the JSON; the text output then leads with
# "PROFILE UNSTABLE"). Issue 17's target: a loaded profile either measures within 1.5x of the
# quiet one or says it is unstable; each line ends with "met" or "NOT met". Run it on a quiet
# machine, and compare figures of the same run only.
set -eu
ROUNDS=${1:?usage: $0 ROUNDS MODEL...}
shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS MODEL..." >&2; exit 2; }
VEIL=${VEIL:-.build/release/veil}
WORK=$(mktemp -d)
BUSY=""
cleanup() {
  [ -n "$BUSY" ] && kill "$BUSY" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

profile() { # model output.json
  "$VEIL" profile --model "$1" --json >"$2" 2>"$WORK/stderr" || {
    echo "veil profile failed on $1:" >&2
    cat "$WORK/stderr" >&2
    exit 1
  }
}

round=1
while [ "$round" -le "$ROUNDS" ]; do
  for model in "$@"; do
    profile "$model" "$WORK/quiet.json"
    sh -c 'while :; do :; done' &
    BUSY=$!
    profile "$model" "$WORK/loaded.json"
    kill "$BUSY"
    wait "$BUSY" 2>/dev/null || true
    BUSY=""
    python3 - "$round" "$model" "$WORK/quiet.json" "$WORK/loaded.json" <<'EOF'
import json, statistics, sys
round_, model, quiet, loaded = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
def figures(p):
    parts = [c["headNativeMs"] + c["tailMs"] for c in p["cuts"]]
    return p["baseline"]["nativeMs"], statistics.median(parts)
(qw, qc), (lw, lc) = figures(quiet), figures(loaded)
flagged = bool(loaded.get("unstable"))
within = lw <= 1.5 * qw and lc <= 1.5 * qc
print(f"round {round_} {model}: whole {qw:.2f} quiet / {lw:.2f} loaded ms ({lw / qw:.2f}x), "
      f"median cut head+tail {qc:.2f} / {lc:.2f} ms ({lc / qc:.2f}x), "
      f"loaded profile {'says UNSTABLE' if flagged else 'says stable'}"
      f"{' (quiet one too)' if quiet.get('unstable') else ''}: "
      f"{'met' if within or flagged else 'NOT met'}", flush=True)
EOF
  done
  round=$((round + 1))
done
