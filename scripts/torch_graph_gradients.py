#!/usr/bin/env python3
"""PyTorch's float64 forward and input gradient of a whole graph: the reference of VeilTrain's
∂/∂input through GraphModel (Tests/VeilTrainTests/InputGradientTests.swift).

Usage: torch_graph_gradients.py DIR

DIR holds model.onnx (a graph as Veil's ONNXWriter writes it: opset 17, one input, one
output, the op set of VeilGraph), input.npy and seed.npy (float32, the output's shape). The
script interprets the graph node by node with torch (ONNX semantics: explicit asymmetric pads,
ceil mode, count_include_pad, LRN's window) and back-propagates the seed, in float64, the
reference, written to DIR/output.npy and DIR/grad.npy, and again in float32, written to
DIR/output32.npy and DIR/grad32.npy: how far PyTorch's own float32 lands from float64 is the
yardstick for Veil's float32 (a deep ReLU network's gradient moves wherever rounding flips a
unit that sits at its kink). Prints {"torch": VERSION, "nodes": N}. Exits with status 3 and
a message when torch is not importable (the test then skips).
"""
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

import torch_or_skip  # noqa: F401, exits with status 3 when torch is missing
import torch
import torch.nn.functional as F


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def spatial(x, a, key, default):
    return list(a.get(key, [default] * (x.dim() - 2)))


def pad_spatial(x, begins, ends, value=0.0):
    """Pads the axes after N and C by (begin, end) each; negative values crop."""
    pads = []
    for b, e in reversed(list(zip(begins, ends))):
        pads += [b, e]
    return F.pad(x, pads, value=value) if any(pads) else x


def pooled_extent(n, k, s, pb, pe, ceil):
    span = n + pb + pe - k
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + pb:  # a window must start inside the input or its front pads
        o -= 1
    return o


def pool(x, a, kind):
    k = list(a["kernel_shape"])
    nsp = len(k)
    s = spatial(x, a, "strides", 1)
    p = list(a.get("pads", [0] * 2 * nsp))
    pb, pe = p[:nsp], p[nsp:]
    ceil = bool(a.get("ceil_mode", 0))
    dims = x.shape[2:]
    outs = [pooled_extent(dims[i], k[i], s[i], pb[i], pe[i], ceil) for i in range(nsp)]
    # Whatever the last window needs beyond the explicit end pads (ceil mode's overhang).
    extra = [max(0, (outs[i] - 1) * s[i] + k[i] - dims[i] - pb[i] - pe[i]) for i in range(nsp)]
    full_end = [pe[i] + extra[i] for i in range(nsp)]
    fn = {1: F.max_pool1d, 2: F.max_pool2d}[nsp] if kind == "max" else {1: F.avg_pool1d, 2: F.avg_pool2d}[nsp]
    if kind == "max":
        return fn(pad_spatial(x, pb, full_end, -math.inf), k, s)
    area = math.prod(k)
    total = fn(pad_spatial(x, pb, full_end), k, s) * area
    ones = torch.ones((1, 1) + tuple(dims), dtype=x.dtype)
    if a.get("count_include_pad", 0):
        # The divisor counts the explicit pads, not the overhang.
        counted = pad_spatial(pad_spatial(ones, pb, pe, 1.0), [0] * nsp, extra)
    else:
        counted = pad_spatial(ones, pb, full_end)
    return total / (fn(counted, k, s) * area)


def conv(x, w, b, a, transposed):
    nsp = w.dim() - 2
    s = spatial(x, a, "strides", 1)
    d = spatial(x, a, "dilations", 1)
    p = list(a.get("pads", [0] * 2 * nsp))
    g = a.get("group", 1)
    if transposed:
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[nsp]
        y = fn(x, w, b, stride=s, dilation=d, groups=g)
        # ConvTranspose's pads crop the full output.
        return pad_spatial(y, [-v for v in p[:nsp]], [-v for v in p[nsp:]])
    fn = {1: F.conv1d, 2: F.conv2d}[nsp]
    return fn(pad_spatial(x, p[:nsp], p[nsp:]), w, b, stride=s, dilation=d, groups=g)


def lrn(x, a):
    """ONNX LRN: Σ x² over channels c − ⌊(size−1)/2⌋ … c + ⌈(size−1)/2⌉."""
    size = a["size"]
    below, above = (size - 1) // 2, size // 2
    sq = F.pad((x * x).unsqueeze(1), (0, 0) * (x.dim() - 2) + (below, above)).squeeze(1)
    window = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x / (a.get("bias", 1.0) + a.get("alpha", 1e-4) / size * window) ** a.get("beta", 0.75)


def onnx_pad(x, pads, mode, value):
    rank = x.dim()
    if mode == "constant":
        return F.pad(x, [v for d in reversed(range(rank)) for v in (pads[d], pads[rank + d])], value=value)
    # reflect / edge: index arithmetic per axis, which any rank and axis take.
    for d in range(rank):
        b, e, n = pads[d], pads[rank + d], x.shape[d]
        if b == 0 and e == 0:
            continue
        idx = []
        for o in range(n + b + e):
            i = o - b
            if i < 0 or i >= n:
                if mode == "edge":
                    i = 0 if i < 0 else n - 1
                else:
                    period = 2 * (n - 1)
                    i = i % period if n > 1 else 0
                    i = period - i if i >= n else i
            idx.append(i)
        x = x.index_select(d, torch.tensor(idx))
    return x


def resize(x, a, scales, sizes):
    mode = {"nearest": "nearest", "linear": "bilinear"}[a.get("mode", b"nearest").decode()]
    extra = {"align_corners": False} if mode == "bilinear" else {}
    if sizes is not None:
        return F.interpolate(x, size=[int(v) for v in sizes[2:]], mode=mode, **extra)
    return F.interpolate(x, scale_factor=[float(v) for v in scales[2:]], mode=mode, recompute_scale_factor=False, **extra)


def run(model, x):
    g = model.graph
    env = {t.name: torch.from_numpy(numpy_helper.to_array(t)).to(x.dtype)
           if t.data_type == onnx.TensorProto.FLOAT else torch.from_numpy(numpy_helper.to_array(t).copy())
           for t in g.initializer}
    env[g.input[0].name] = x
    for n in g.node:
        a = attrs(n)
        i = [env[name] if name else None for name in n.input]
        op = n.op_type
        if op == "Constant":
            t = torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
            y = t.to(x.dtype) if t.dtype == torch.float32 else t
        elif op in ("Conv", "ConvTranspose"):
            y = conv(i[0], i[1], i[2] if len(i) > 2 else None, a, op == "ConvTranspose")
        elif op == "BatchNormalization":
            y = F.batch_norm(i[0], i[3], i[4], i[1], i[2], training=False, eps=a.get("epsilon", 1e-5))
        elif op == "Relu":
            y = F.relu(i[0])
        elif op == "LeakyRelu":
            y = F.leaky_relu(i[0], a.get("alpha", 0.01))
        elif op == "Clip":
            lo = i[1].item() if len(i) > 1 and i[1] is not None else -math.inf
            hi = i[2].item() if len(i) > 2 and i[2] is not None else math.inf
            y = F.hardtanh(i[0], lo, hi)
        elif op == "Sigmoid":
            y = torch.sigmoid(i[0])
        elif op == "Tanh":
            y = torch.tanh(i[0])
        elif op == "HardSigmoid":
            y = torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)
        elif op == "HardSwish":
            y = F.hardswish(i[0])
        elif op in ("Add", "Sub", "Mul", "Div"):
            y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](i[0], i[1])
        elif op == "MaxPool":
            y = pool(i[0], a, "max")
        elif op == "AveragePool":
            y = pool(i[0], a, "average")
        elif op == "GlobalAveragePool":
            y = i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True)
        elif op == "Concat":
            y = torch.cat(i, dim=a["axis"])
        elif op == "Gemm":
            A = i[0].t() if a.get("transA", 0) else i[0]
            B = i[1].t() if a.get("transB", 0) else i[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(i) > 2 and i[2] is not None:
                y = y + a.get("beta", 1.0) * i[2]
        elif op == "MatMul":
            y = torch.matmul(i[0], i[1])
        elif op == "Flatten":
            axis = a.get("axis", 1) % i[0].dim() if i[0].dim() else 0
            y = i[0].reshape(math.prod(i[0].shape[:axis]), -1)
        elif op == "Reshape":
            shape = [int(s) if s != 0 else i[0].shape[k] for k, s in enumerate(i[1].tolist())]
            y = i[0].reshape(shape)
        elif op == "Transpose":
            y = i[0].permute(*a["perm"])
        elif op == "Pad":
            value = i[2].item() if len(i) > 2 and i[2] is not None else 0.0
            y = onnx_pad(i[0], [int(v) for v in i[1].tolist()], a.get("mode", b"constant").decode(), value)
        elif op == "Resize":
            y = resize(i[0], a, i[2] if len(i) > 2 else None, i[3] if len(i) > 3 else None)
        elif op == "Softmax":
            y = F.softmax(i[0], dim=a.get("axis", -1))
        elif op == "LRN":
            y = lrn(i[0], a)
        elif op in ("Dropout", "Identity"):
            y = i[0]
        elif op == "LayerNormalization":
            axis = a.get("axis", -1) % i[0].dim()
            y = F.layer_norm(i[0], i[0].shape[axis:], i[1].expand(i[0].shape[axis:]),
                             i[2].expand(i[0].shape[axis:]) if len(i) > 2 and i[2] is not None else None,
                             eps=a.get("epsilon", 1e-5))
        elif op == "Erf":
            y = torch.erf(i[0])
        elif op == "Slice":
            starts, ends = i[1].tolist(), i[2].tolist()
            axes = i[3].tolist() if len(i) > 3 and i[3] is not None else list(range(len(starts)))
            steps = i[4].tolist() if len(i) > 4 and i[4] is not None else [1] * len(starts)
            index = [slice(None)] * i[0].dim()
            for b, e, ax, st in zip(starts, ends, axes, steps):
                if st <= 0:
                    raise SystemExit(f"node '{n.name}': Slice with step {st} is not interpreted")
                index[ax % i[0].dim()] = slice(int(b), int(min(e, 2**62)), int(st))
            y = i[0][tuple(index)]
        else:
            raise SystemExit(f"node '{n.name}': op '{op}' is not interpreted by torch_graph_gradients.py")
        env[n.output[0]] = y
    return env[g.output[0].name]


def main(folder):
    model = onnx.load(os.path.join(folder, "model.onnx"))
    for dtype, suffix in ((torch.float64, ""), (torch.float32, "32")):
        x = torch.from_numpy(np.load(os.path.join(folder, "input.npy"))).to(dtype).requires_grad_(True)
        y = run(model, x)
        seed = torch.from_numpy(np.load(os.path.join(folder, "seed.npy"))).to(dtype).reshape(y.shape)
        y.backward(seed)
        np.save(os.path.join(folder, f"output{suffix}.npy"), y.detach().numpy().astype(np.float32))
        np.save(os.path.join(folder, f"grad{suffix}.npy"), x.grad.numpy().astype(np.float32))
    print(json.dumps({"torch": torch.__version__, "nodes": len(model.graph.node)}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torch_graph_gradients.py DIR")
    main(sys.argv[1])
