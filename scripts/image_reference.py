#!/usr/bin/env python3
"""Writes test images and Pillow's answers for them, for Veil's image tests.

Usage: image_reference.py OUT_DIR [--photo FILE]...

With --photo (real photos, e.g. the checksummed assets of scripts/fetch_assets.py), only those
files are written: each decoded (turned upright by its EXIF orientation) and resized by every
filter to a few sizes, into OUT_DIR/cases.json as for the generated images.

OUT_DIR receives source images (PNG in every colour type and depth Veil decodes, JPEGs with
each EXIF orientation), Pillow's decoded pixels for each, and Pillow's Image.resize output for
each (image, filter, size) case, as float32 .npy arrays (H, W, C). cases.json lists them:
  decode: {"file", "expected", "format"}   (expected already turned upright for JPEG EXIF)
  resize: {"input", "filter", "width", "height", "expected", "mode"}
Pillow's version is recorded in cases.json so a failure names what it was compared with.
"""
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}


def photo():
    """A natural photo (scikit-image's astronaut), cropped to an awkward 301x233."""
    from skimage import data
    return np.ascontiguousarray(data.astronaut()[40:273, 100:401])


def noise(h, w, c, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def png_chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png16(arr):
    """A 16-bit PNG (Pillow cannot write 16-bit RGB), filter 0 on every row."""
    h, w, c = arr.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def save_npy(out, name, arr):
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    np.save(out / name, arr)
    return name


def exif_with_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def real_photos(out, paths):
    """Pillow's decoding and resizing of real photo files, copied into OUT_DIR."""
    cases = {"pillow": PIL.__version__, "decode": [], "resize": []}
    for i, path in enumerate(paths):
        name = f"real{i}_{Path(path).name}"
        data = Path(path).read_bytes()
        (out / name).write_bytes(data)
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        fmt = "JPEG" if data[:2] == b"\xff\xd8" else "PNG"
        cases["decode"].append({"file": name, "format": fmt, "expected": save_npy(out, name + ".npy", np.asarray(im))})
        w, h = im.size
        for size in [(224, 224), (w * 256 // min(w, h), h * 256 // min(w, h)), (w * 3 // 2, h * 3 // 2)]:
            for fname, f in FILTERS.items():
                expected = f"{name}_{fname}_{size[0]}x{size[1]}.npy"
                save_npy(out, expected, np.asarray(im.resize(size, f)))
                cases["resize"].append({"input": name, "filter": fname, "width": size[0], "height": size[1],
                                        "expected": expected, "mode": im.mode})
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    print(f"wrote {len(cases['decode'])} real photos and {len(cases['resize'])} resize cases with Pillow {PIL.__version__} to {out}")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    photos = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--photo" and i + 1 < len(sys.argv)]
    if photos:
        return real_photos(out, photos)
    cases = {"pillow": PIL.__version__, "decode": [], "resize": []}
    rgb = photo()
    sources = {
        "photo_rgb.png": Image.fromarray(rgb, "RGB"),
        "photo_grey.png": Image.fromarray(rgb, "RGB").convert("L"),
        "noise_rgb.png": Image.fromarray(noise(61, 83, 3, 1), "RGB"),
        "noise_rgba.png": Image.fromarray(noise(61, 83, 4, 2), "RGBA"),
        "noise_la.png": Image.fromarray(noise(47, 29, 2, 3), "LA"),
    }
    for name, im in sources.items():
        im.save(out / name)
        cases["decode"].append({"file": name, "format": "PNG", "expected": save_npy(out, name + ".npy", np.asarray(im))})
    # Palette, palette with transparency, 1-bit grey: Pillow's RGB(A)/L view of them.
    pal = Image.fromarray(rgb, "RGB").quantize(colors=37)
    pal.save(out / "palette.png")
    cases["decode"].append({"file": "palette.png", "format": "PNG", "expected": save_npy(out, "palette.npy", np.asarray(pal.convert("RGB")))})
    pal.info["transparency"] = 3
    pal.save(out / "palette_trns.png", transparency=3)
    cases["decode"].append({"file": "palette_trns.png", "format": "PNG",
                            "expected": save_npy(out, "palette_trns.npy", np.asarray(Image.open(out / "palette_trns.png").convert("RGBA")))})
    bits = Image.fromarray(rgb[:, :, 0] > 128).convert("1")
    bits.save(out / "bits.png")
    cases["decode"].append({"file": "bits.png", "format": "PNG", "expected": save_npy(out, "bits.npy", np.asarray(bits.convert("L")))})
    # 16-bit: the reference is the exact 16-bit value (Veil's float image gives v/257, x257 back).
    for name, arr in (("grey16.png", noise(19, 23, 1, 4).astype(np.uint16) * 257 + 3),
                      ("rgb16.png", np.random.default_rng(5).integers(0, 65536, size=(17, 13, 3), dtype=np.uint16)),
                      ("rgba16.png", np.random.default_rng(6).integers(0, 65536, size=(11, 7, 4), dtype=np.uint16))):
        (out / name).write_bytes(png16(arr))
        cases["decode"].append({"file": name, "format": "PNG16", "expected": save_npy(out, name + ".npy", arr)})
    # JPEG: colour and grey, then each EXIF orientation; Pillow decodes and exif_transpose turns.
    base = Image.fromarray(rgb[:120, :90], "RGB")
    for name, im, orientation in [("photo.jpg", base, None), ("grey.jpg", base.convert("L"), None)] + [
            (f"orient{o}.jpg", base, o) for o in range(1, 9)]:
        buf = io.BytesIO()
        kwargs = {"quality": 90}
        if orientation is not None:
            kwargs["exif"] = exif_with_orientation(orientation)
        im.save(buf, "JPEG", **kwargs)
        (out / name).write_bytes(buf.getvalue())
        decoded = ImageOps.exif_transpose(Image.open(out / name))
        cases["decode"].append({"file": name, "format": "JPEG", "expected": save_npy(out, name + ".npy", np.asarray(decoded))})
    # Resizing: downscale (antialiasing), upscale, one axis only, on a photo and on noise.
    sizes = {
        "photo_rgb.png": [(224, 224), (100, 77), (37, 51), (640, 480), (301, 100), (7, 5)],
        "photo_grey.png": [(150, 150), (512, 333)],
        "noise_rgb.png": [(40, 30), (200, 171), (83, 20)],
        "noise_rgba.png": [(41, 30), (160, 90)],
        "noise_la.png": [(13, 20), (60, 70)],
    }
    for name, todo in sizes.items():
        im = sources[name]
        for (w, h) in todo:
            for fname, f in FILTERS.items():
                expected = f"{name}_{fname}_{w}x{h}.npy"
                save_npy(out, expected, np.asarray(im.resize((w, h), f)))
                cases["resize"].append({"input": name, "filter": fname, "width": w, "height": h, "expected": expected, "mode": im.mode})
    # Mode "F": Pillow resamples float images without rounding; Veil's FloatImage does the same.
    grey = np.asarray(sources["photo_grey.png"], dtype=np.float32)
    for (w, h) in [(120, 90), (500, 400)]:
        for fname, f in FILTERS.items():
            expected = f"float_{fname}_{w}x{h}.npy"
            save_npy(out, expected, np.asarray(Image.fromarray(grey, "F").resize((w, h), f)))
            cases["resize"].append({"input": "photo_grey.png", "filter": fname, "width": w, "height": h, "expected": expected, "mode": "F"})
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    print(f"wrote {len(cases['decode'])} decode and {len(cases['resize'])} resize cases with Pillow {PIL.__version__} to {out}")


if __name__ == "__main__":
    main()
