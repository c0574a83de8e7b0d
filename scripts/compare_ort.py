#!/usr/bin/env python3
"""Runs an ONNX model in ONNX Runtime on an input .npy and compares with Veil's output .npy.

Usage: compare_ort.py MODEL.onnx INPUT.npy VEIL_OUTPUT.npy
Prints ORT's top-3 classes (for a classifier's [N, classes] output) and max|veil - ort| relative to max|ort|; exits 1 above 1e-4.
"""
import sys

import numpy as np
import onnxruntime as ort


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip())
    model, x_path, veil_path = sys.argv[1:]
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    want = s.run(None, {s.get_inputs()[0].name: np.load(x_path)})[0]
    got = np.load(veil_path)
    rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    if want.ndim == 2:  # a classifier's logits
        top = np.argsort(-want[0])[:3]
        print(f"ONNX Runtime {ort.__version__} top-3: " + ", ".join(f"#{i} ({want[0, i]:.4f})" for i in top))
    else:
        print(f"ONNX Runtime {ort.__version__}: output of shape {list(want.shape)}")
    print(f"max |veil - ort| / max |ort| = {rel:.2e} (limit 1e-4)")
    sys.exit(0 if rel <= 1e-4 else 1)


if __name__ == "__main__":
    main()
