#!/usr/bin/env bash
# The main job on an embedded default, until the planner lands: list the model builders, run
# ResNet-50 (seeded weights: architecture only) on a registry-shipped photo, check the answer
# against ONNX Runtime on the same weights, and benchmark it.
set -euo pipefail
cd "$(dirname "$0")/.."
veil=.build/release/veil
cache="${VEIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veil}/demo"
mkdir -p "$cache"
echo "== models"
$veil models
echo
echo "== photo → tensor (scikit-image's coffee.png, ImageNet preprocessing)"
.venv/bin/python scripts/photo_to_npy.py coffee "$cache/coffee.npy"
echo
echo "== one forward pass"
$veil run --model resnet50 --input "$cache/coffee.npy" --top 3 --output "$cache/resnet50-logits.npy"
echo
echo "== the same pass in ONNX Runtime, on the same weights (veil export)"
$veil export --model resnet50 --out "$cache/resnet50.onnx"
.venv/bin/python scripts/compare_ort.py "$cache/resnet50.onnx" "$cache/coffee.npy" "$cache/resnet50-logits.npy"
echo
echo "== benchmark (batch 1, all cores)"
$veil bench --model resnet50 --runs 10
