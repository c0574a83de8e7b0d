#!/usr/bin/env python3
"""Turns a registry-shipped photo into a model input tensor (.npy, float32, NCHW).

Usage: photo_to_npy.py NAME OUT.npy [--size 224] [--preprocess imagenet|lite]
NAME is a scikit-image sample photo (coffee, chelsea, astronaut, rocket, motorcycle) or a
path to an image file. The photo is centre-cropped to a square, resized, and normalised:
imagenet = (x/255 - mean)/std with torchvision's mean and std; lite = (x - 127)/128.
"""
import argparse
import sys

import numpy as np


def load(name):
    from skimage import data, io
    if hasattr(data, name):
        return getattr(data, name)()
    return io.imread(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--preprocess", choices=["imagenet", "lite"], default="imagenet")
    a = ap.parse_args()
    from skimage.transform import resize
    img = load(a.name)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3].astype(np.float64)
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    img = resize(img, (a.size, a.size), order=1, anti_aliasing=True, preserve_range=True)
    if a.preprocess == "imagenet":
        x = (img / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    else:
        x = (img - 127.0) / 128.0
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    np.save(a.out, x)
    print(f"{a.name} -> {a.out} {x.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
