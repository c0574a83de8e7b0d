#!/usr/bin/env python3
"""PyTorch's forward values and gradients for VeilTrain's ops, the reference of its
gradient checks against PyTorch (Tests/VeilTrainTests/TorchReferenceTests.swift).

Usage: torch_gradients.py DIR

DIR/cases.json lists cases: {"name", "op", "attrs", "inputs": [file, ...], "seed": file}. Each
input is a float32 .npy that Veil wrote; the script loads them as float64 leaves that want a
gradient, applies the op as PyTorch defines it, back-propagates the seed tensor (a fixed random
tensor of the output's shape, so every gradient entry is exercised), and writes
DIR/<name>.out.npy, DIR/<name>.grad<i>.npy for every input, and for BatchNorm in training mode
DIR/<name>.running_mean.npy and .running_var.npy. Prints {"torch": VERSION, "cases": N}.
Exits with status 3 and a message when torch is not importable (the test then skips).
"""
import json
import os
import sys

import numpy as np

import torch_or_skip  # noqa: F401, exits with status 3 when torch is missing
import torch
import torch.nn.functional as F


def pad_nchw(x, pads):
    """ONNX pads [top, left, bottom, right] on an NCHW tensor (zeros)."""
    top, left, bottom, right = pads
    return F.pad(x, (left, right, top, bottom)) if any(pads) else x


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def torch_pads(pads):
    """ONNX pads (every axis's begin, then every end) in F.pad's order: last axis first,
    (begin, end) pairs, down to the first axis that is padded (reflect and replicate pad
    only trailing axes)."""
    rank = len(pads) // 2
    first = next((d for d in range(rank) if pads[d] or pads[rank + d]), rank - 1)
    out = []
    for d in range(rank - 1, first - 1, -1):
        out += [pads[d], pads[rank + d]]
    return out


def apply(op, a, x):
    if op == "conv":
        return F.conv2d(pad_nchw(x[0], a["pads"]), x[1], x[2] if len(x) > 2 else None, stride=a["strides"],
                        dilation=a["dilations"], groups=a["groups"])
    if op == "conv_transpose":
        return F.conv_transpose2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=a["strides"],
                                  padding=a["padding"], groups=a.get("groups", 1))
    if op == "batch_norm":
        mean = torch.tensor(a["running_mean"], dtype=torch.float64)
        var = torch.tensor(a["running_var"], dtype=torch.float64)
        y = F.batch_norm(x[0], mean, var, x[1], x[2], training=a["training"], momentum=a["momentum"], eps=a["epsilon"])
        return y, {"running_mean": mean, "running_var": var}
    if op == "relu":
        return F.relu(x[0])
    if op == "leaky_relu":
        return F.leaky_relu(x[0], a["alpha"])
    if op == "tanh":
        return torch.tanh(x[0])
    if op == "sigmoid":
        return torch.sigmoid(x[0])
    if op == "silu":
        return F.silu(x[0])
    if op == "clip":
        return F.hardtanh(x[0], a["min"], a["max"])
    if op == "hard_sigmoid":
        return torch.clamp(a["alpha"] * x[0] + a["beta"], 0, 1)
    if op == "hard_swish":
        return F.hardswish(x[0])
    if op == "add":
        return x[0] + x[1]
    if op == "mul":
        return x[0] * x[1]
    if op == "concat":
        return torch.cat(x, dim=a["axis"])
    if op == "reshape":
        return x[0].reshape(a["shape"])
    if op == "flatten":
        return torch.flatten(x[0], 1)
    if op == "transpose":
        return x[0].permute(*a["perm"])
    if op == "pad":
        return F.pad(x[0], torch_pads(a["pads"]), mode=PAD_MODES[a["mode"]],
                     **({"value": a["value"]} if a["mode"] == "constant" else {}))
    if op == "lrn":
        return F.local_response_norm(x[0], a["size"], alpha=a["alpha"], beta=a["beta"], k=a["bias"])
    if op == "sub":
        return x[0] - x[1]
    if op == "div":
        return x[0] / x[1]
    if op == "linear":
        return F.linear(x[0], x[1], x[2])
    if op == "gemm":
        A = x[0].t() if a["transA"] else x[0]
        B = x[1].t() if a["transB"] else x[1]
        y = a["alpha"] * (A @ B)
        return y + a["beta"] * x[2] if len(x) > 2 else y
    if op == "matmul":
        return torch.matmul(x[0], x[1])
    if op == "max_pool":
        return F.max_pool2d(x[0], a["kernel"], a["strides"], a["padding"], ceil_mode=a["ceil"])
    if op == "avg_pool":
        return F.avg_pool2d(x[0], a["kernel"], a["strides"], a["padding"], ceil_mode=a["ceil"],
                            count_include_pad=a["include_pad"])
    if op == "global_avg_pool":
        return F.adaptive_avg_pool2d(x[0], 1)
    if op == "resize":
        return F.interpolate(x[0], size=a["size"], mode=a["mode"],
                             **({"align_corners": False} if a["mode"] == "bilinear" else {}))
    if op == "softmax":
        return F.softmax(x[0], dim=a["axis"])
    if op == "gelu":
        return F.gelu(x[0], approximate=a["approximate"])
    if op == "layer_norm":
        return F.layer_norm(x[0], a["shape"], x[1], x[2] if len(x) > 2 else None, eps=a["epsilon"])
    if op == "l1_loss":
        return F.l1_loss(x[0], x[1])
    if op == "mse_loss":
        return F.mse_loss(x[0], x[1])
    if op == "bce_logits":
        return F.binary_cross_entropy_with_logits(x[0], x[1])
    if op == "cross_entropy":
        return F.cross_entropy(x[0], torch.tensor(a["labels"]))
    raise SystemExit(f"unknown op '{op}' in cases.json")


def main(folder):
    with open(os.path.join(folder, "cases.json")) as f:
        cases = json.load(f)
    torch.manual_seed(0)
    for case in cases:
        wants = case.get("grad", [True] * len(case["inputs"]))
        xs = [torch.from_numpy(np.load(os.path.join(folder, p)).astype(np.float64)).requires_grad_(w)
              for p, w in zip(case["inputs"], wants)]
        result = apply(case["op"], case.get("attrs", {}), xs)
        y, extra = result if isinstance(result, tuple) else (result, {})
        seed = torch.from_numpy(np.load(os.path.join(folder, case["seed"])).astype(np.float64)).reshape(y.shape)
        y.backward(seed)
        name = case["name"]
        np.save(os.path.join(folder, f"{name}.out.npy"), y.detach().numpy().astype(np.float32))
        for i, x in enumerate(xs):
            if x.grad is not None:
                np.save(os.path.join(folder, f"{name}.grad{i}.npy"), x.grad.numpy().astype(np.float32))
        for key, t in extra.items():
            np.save(os.path.join(folder, f"{name}.{key}.npy"), t.numpy().astype(np.float32))
    print(json.dumps({"torch": torch.__version__, "cases": len(cases)}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torch_gradients.py DIR")
    main(sys.argv[1])
