#!/usr/bin/env python3
"""Training throughput of the c-GAN inversion attacker: Veil against PyTorch CPU, side by side.

Builds in PyTorch exactly the generator and discriminator that VeilPrivacy builds
(Sources/VeilPrivacy/Networks.swift: the U-Net from a feature map [C, h, w], the PatchGAN on
(condition, image) pairs, the condition being the feature map averaged to at most 16 channels and
upsampled nearest), and times the same training step (discriminator on real and detached fake
pairs, then the generator through the frozen discriminator, adversarial + 100·L1, Adam 2e-4
β1 0.5) on random data. With --veil it alternates rounds of `veil attack-bench` and the PyTorch
loop in one run, as REFERENCES.md asks on this bursty machine, and prints both with their ratio.

Usage: .venv/bin/python scripts/bench_attack_torch.py [--veil .build/release/veil] [--threads 2]
       [--batch 16] [--image-size 64] [--feature-shape 64x32x32] [--steps 20] [--rounds 3] [--json]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def build(torch, nn, c, h, s, width, depth, d_width, d_cond):
    def tz(n):
        return (n & -n).bit_length() - 1

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            ratio = s // h
            c0 = width * min(8, max(1, ratio // 2))
            self.reduce = nn.Sequential(nn.Conv2d(c, c0, 1, bias=False), nn.BatchNorm2d(c0), nn.LeakyReLU(0.2))
            levels = min(depth, max(0, tz(h) - 1))
            widths = [c0] + [min(c0 << i, 8 * width) for i in range(1, levels + 1)]
            self.down = nn.ModuleList(
                nn.Sequential(nn.Conv2d(widths[i - 1], widths[i], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[i]), nn.LeakyReLU(0.2))
                for i in range(1, levels + 1))
            self.up = nn.ModuleList(
                nn.Sequential(
                    nn.ConvTranspose2d(widths[i] if i == levels else 2 * widths[i], widths[i - 1], 4, 2, 1, bias=False),
                    nn.BatchNorm2d(widths[i - 1]), nn.ReLU())
                for i in range(levels, 0, -1))
            channels = 2 * c0 if levels > 0 else c0
            steps = tz(ratio)
            layers = []
            if steps == 0:
                layers.append(nn.Conv2d(channels, 3, 3, 1, 1))
            for k in range(steps):
                last = k == steps - 1
                out = 3 if last else max(width, c0 >> (k + 1))
                layers.append(nn.ConvTranspose2d(channels, out, 4, 2, 1, bias=last))
                if not last:
                    layers += [nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
            self.upsample = nn.Sequential(*layers)

        def forward(self, f):
            skips = [self.reduce(f)]
            for d in self.down:
                skips.append(d(skips[-1]))
            x = skips[-1]
            for k, u in enumerate(self.up):
                x = torch.cat([u(x), skips[-2 - k]], 1)
            return torch.tanh(self.upsample(x))

    def discriminator():
        layers_n = max(1, min(3, tz(s) - 3))
        k = min(c, d_cond)
        mods = [nn.Conv2d(3 + k, d_width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = d_width
        for n in range(1, layers_n + 1):
            out = d_width * min(1 << n, 8)
            mods += [nn.Conv2d(ch, out, 4, 1 if n == layers_n else 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        return nn.Sequential(*mods)

    g, d = Generator(), discriminator()
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return g, d


def condition(torch, f, k, s):
    n, c, h, w = f.shape
    k = min(c, k)
    groups = [f[:, g * c // k:(g + 1) * c // k].mean(1, keepdim=True) for g in range(k)]
    small = torch.cat(groups, 1)
    return small.repeat_interleave(s // h, 2).repeat_interleave(s // w, 3)


def torch_images_per_second(args, shape):
    import torch
    import torch.nn as nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, h, w = shape
    g, d = build(torch, nn, c, h, args.image_size, args.width, args.depth, args.d_width, 16)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    feats = torch.randn(args.batch, c, h, w)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size) * 2 - 1

    def step():
        fake = g(feats)
        cond = condition(torch, feats, 16, args.image_size)
        for p in d.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad()
        real_logits = d(torch.cat([cond, images], 1))
        fake_logits = d(torch.cat([cond, fake.detach()], 1))
        loss_d = 0.5 * (bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits)))
        loss_d.backward()
        opt_d.step()
        for p in d.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad()
        judged = d(torch.cat([cond, fake], 1))
        loss_g = bce(judged, torch.ones_like(judged)) + 100 * (fake - images).abs().mean()
        loss_g.backward()
        opt_g.step()

    for _ in range(args.warmup):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.batch * args.steps / (time.perf_counter() - t)


def veil_images_per_second(args, shape):
    cmd = [
        args.veil, "attack-bench", "--feature-shape", "x".join(map(str, shape)), "--image-size", str(args.image_size),
        "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
        "--width", str(args.width), "--discriminator-width", str(args.d_width), "--json",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["imagesPerSecond"]


def main():
    ap = argparse.ArgumentParser(description="c-GAN attacker training throughput, Veil vs PyTorch CPU")
    ap.add_argument("--veil", help="path of the veil binary (omit to time PyTorch alone)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--feature-shape", default="64x32x32", help="C x h x w (VGG-16's block1_pool at 64 px)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--d-width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    shape = [int(x) for x in args.feature_shape.split("x")]
    rows = {"pytorch": [], "veil": []}
    for r in range(args.rounds):
        if args.veil:
            rows["veil"].append(veil_images_per_second(args, shape))
        rows["pytorch"].append(torch_images_per_second(args, shape))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rows.items() if v), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    if args.json:
        print(json.dumps({"config": vars(args), "images_per_second": rows, "median": med}, indent=1))
        return
    print(f"c-GAN training, feature map {args.feature_shape} -> {args.image_size}^2, batch {args.batch}, {args.threads} threads, median of {args.rounds} alternating rounds of {args.steps} steps:")
    for k, v in med.items():
        print(f"  {k:8s} {v:7.1f} images/s   (rounds: {', '.join(f'{x:.1f}' for x in rows[k])})")
    if "veil" in med:
        print(f"  veil / pytorch = {med['veil'] / med['pytorch']:.2f}")


if __name__ == "__main__":
    main()
