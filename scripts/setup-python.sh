#!/usr/bin/env bash
# Creates the project-local Python environment (.venv) with the pinned packages of
# scripts/requirements.txt. Idempotent: does nothing when the environment is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
req=scripts/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (numpy, onnx, onnxruntime, scikit-image, pillow, tritonclient, PyYAML)"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
echo "$want" >"$stamp"
