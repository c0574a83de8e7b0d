#!/usr/bin/env python3
"""A small ShuffleNet V2 written in plain PyTorch (no torchvision), exported to ONNX with the
TorchScript exporter, and its outputs from ONNX Runtime: the reference of Veil's import of the
channel split (Tests/VeilFormatsTests/ShuffleNetExportTests.swift).

Usage: shufflenet_export.py DIR OPSET:SPLIT...

SPLIT is how the stride-1 units split their channels, as torchvision writes it or otherwise:
"chunk" (x.chunk(2, dim=1), torchvision's; exported as Slices whose bounds are computed from
Shape), "slice" (x[:, :c] and x[:, c:]: Slice) or "split" (x.split([c, c], dim=1): Split). The network follows
torchvision's ShuffleNetV2 block by block (stem conv + max pool, stages of one stride-2 unit
and stride-1 units, each ending in the channel shuffle: Reshape to 5-D, Transpose, Reshape
back; a 1x1 conv, global pooling and a linear classifier) at a width and input size that keep
the test fast. For each OPSET:SPLIT writes DIR/OPSET_SPLIT/model.onnx, input_0.npy and
expected_0.npy (ONNX Runtime on the exported file, optimizations off). Prints one line of JSON
per model: {"model": "OPSET_SPLIT", "torch": VERSION, "ops": [...]}.
Exits with status 3 and a message when torch is not importable (the test then skips).
"""
import json
import os
import sys
import warnings

import numpy as np

import torch_or_skip  # noqa: F401, exits with status 3 when torch is missing
import torch
from torch import nn


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def conv_bn(i, o, k, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(i, o, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class Unit(nn.Module):
    def __init__(self, i, o, stride, split):
        super().__init__()
        half = o // 2
        self.stride, self.split, self.half = stride, split, half
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(i, i, 3, stride, groups=i, relu=False), conv_bn(i, half, 1))
        source = i if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(source, half, 1), conv_bn(half, half, 3, stride, groups=half, relu=False), conv_bn(half, half, 1)
        )

    def forward(self, x):
        if self.stride == 1:
            if self.split == "chunk":
                a, b = x.chunk(2, dim=1)
            elif self.split == "split":
                a, b = x.split([self.half, self.half], dim=1)
            else:
                c = x.shape[1] // 2
                a, b = x[:, :c], x[:, c:]
            out = torch.cat((a, self.branch2(b)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    # torchvision's stage table, at a tenth of its width: repeats, then output channels.
    stages = [4, 8, 4]
    widths = [24, 24, 48, 96, 256]

    def __init__(self, split, classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, self.widths[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        units, i = [], self.widths[0]
        for repeats, o in zip(self.stages, self.widths[1:4]):
            units += [Unit(i, o, 2, split)] + [Unit(o, o, 1, split) for _ in range(repeats - 1)]
            i = o
        self.units = nn.Sequential(*units)
        self.conv5 = conv_bn(i, self.widths[4], 1)
        self.fc = nn.Linear(self.widths[4], classes)

    def forward(self, x):
        x = self.conv5(self.units(self.stem(x)))
        return self.fc(x.mean([2, 3]))


def export(out, opset, split):
    torch.manual_seed(0)
    model = ShuffleNetV2(split).eval()
    # Random BatchNorm statistics, so folding them is exercised, not a no-op.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, not gone
        torch.onnx.export(
            model, (x,), f"{out}/model.onnx", opset_version=opset, dynamo=False, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(f"{out}/model.onnx", sess_options=opts, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    np.save(f"{out}/input_0.npy", xn)
    np.save(f"{out}/expected_0.npy", sess.run(None, {"input": xn})[0])
    return sorted({n.op_type for n in onnx.load(f"{out}/model.onnx").graph.node})


def main():
    for variant in sys.argv[2:]:
        opset, split = variant.split(":")
        name = f"{opset}_{split}"
        out = os.path.join(sys.argv[1], name)
        os.makedirs(out, exist_ok=True)
        ops = export(out, int(opset), split)
        print(json.dumps({"model": name, "torch": torch.__version__, "ops": ops}))


if __name__ == "__main__":
    main()
