#!/usr/bin/env bash
# Creates .venv-peers with the optional interop peers of scripts/requirements-peers.txt (Seldon
# MLServer). Idempotent. Not run by `make test`: the interop tests that need it skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."
req=scripts/requirements-peers.txt
stamp=.venv-peers/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv-peers/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv-peers (mlserver, onnxruntime)"
python3 -m venv .venv-peers
.venv-peers/bin/python -m pip install -q --disable-pip-version-check -r "$req"
echo "$want" >"$stamp"
