#!/usr/bin/env bash
# The main job on an embedded default, until the planner lands: a real pretrained model on a
# real photo, the cut points of VGG-16, a head/tail split checked against ONNX Runtime, and the
# per-cut runtime profile (head in an SGX enclave, modeled; transfer; tail) of ResNet-50.
set -euo pipefail
cd "$(dirname "$0")/.."
veil=.build/release/veil
assets="${VEIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veil}/assets"
work="${VEIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veil}/demo"
mkdir -p "$work"
echo "== models"
$veil models
echo
echo "== a real pretrained network on a real photo (EfficientNet-Lite0 from PyPI, darknet's eagle.jpg)"
$veil run --model "$assets/efficientnet-lite0-57934424.pth" --input "$assets/eagle.jpg" --top 3
echo
echo "== where VGG-16 can be cut (one tensor crosses)"
$veil cuts --model vgg16
echo
echo "== cut at block3_pool: head and tail as ONNX; the tail in ONNX Runtime on Veil's head output"
.venv/bin/python scripts/photo_to_npy.py coffee "$work/coffee.npy"
$veil split --model vgg16 --cut block3_pool --out "$work/vgg16-block3_pool"
$veil run --model "$work/vgg16-block3_pool/head.onnx" --input "$work/coffee.npy" --output "$work/feature.npy" --top 0
$veil run --model "$work/vgg16-block3_pool/tail.onnx" --input "$work/feature.npy" --output "$work/logits.npy" --top 0
.venv/bin/python scripts/compare_ort.py "$work/vgg16-block3_pool/tail.onnx" "$work/feature.npy" "$work/logits.npy"
echo
echo "== runtime of every cut of ResNet-50: head in an SGX1 enclave (MODELED here: no SGX), transfer, tail"
$veil profile --model resnet50 --tee sgx1 --runs 3 --svg "$work/resnet50-profile.svg" --csv "$work/resnet50-profile.csv"
