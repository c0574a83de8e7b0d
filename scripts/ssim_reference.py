#!/usr/bin/env python3
"""Prints scikit-image's SSIM and PSNR for pairs of images, the reference for Veil's SSIM tests.

Usage: ssim_reference.py A1.png B1.png [A2.png B2.png ...]

Each image is read with Pillow, its alpha channel (if any) dropped, and scaled to [0, 1] as
float64; SSIM is structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0) with channel_axis=2 for colour images, the
definition in ../shared/REFERENCES.md. Prints one JSON document:
  {"skimage": VERSION, "pairs": [{"a", "b", "ssim", "psnr"}, ...]}
"""
import json
import sys

import numpy as np
import skimage
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def unit(path):
    img = Image.open(path)
    if img.mode in ("LA", "RGBA"):
        img = img.convert("L" if img.mode == "LA" else "RGB")
    return np.asarray(img, dtype=np.float64) / 255.0


def main(paths):
    if not paths or len(paths) % 2:
        sys.exit("usage: ssim_reference.py A1.png B1.png [A2.png B2.png ...]")
    pairs = []
    for a_path, b_path in zip(paths[0::2], paths[1::2]):
        a, b = unit(a_path), unit(b_path)
        ssim = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            channel_axis=2 if a.ndim == 3 else None)
        psnr = peak_signal_noise_ratio(a, b, data_range=1.0)
        pairs.append({"a": a_path, "b": b_path, "ssim": float(ssim), "psnr": float(psnr)})
    print(json.dumps({"skimage": skimage.__version__, "pairs": pairs}))


if __name__ == "__main__":
    main(sys.argv[1:])
