#!/usr/bin/env python3
"""A small vision transformer written in plain PyTorch (no torchvision), exported to ONNX, and
its outputs from ONNX Runtime: the reference of Veil's import of transformers
(Tests/VeilGraphTests/ViTExportTests.swift).

Usage: vit_export.py DIR OPSET:EXPORTER:GELU...

EXPORTER is "script" (the TorchScript exporter, dynamo=False) or "dynamo" (torch.export);
GELU is "erf" (nn.GELU(), torchvision's) or "tanh" (nn.GELU(approximate="tanh")). The network
follows torchvision's VisionTransformer module by module, with its parameter names: a patch
embedding Conv (`conv_proj`), the class token concatenated in front of the patch tokens, a
learned position embedding added, encoder blocks of LayerNorm → nn.MultiheadAttention →
residual, LayerNorm → Linear → GELU → Linear → residual, a final LayerNorm and a linear head on
the class token; at a size that keeps the test fast (32×32 input, 8×8 patches, 64 features,
4 heads, 3 blocks). For each variant writes DIR/OPSET_EXPORTER_GELU/model.onnx, input_0.npy and
expected_0.npy (ONNX Runtime on the exported file, optimizations off), and state_dict.pth (the
weights under torchvision's keys). Prints one line of JSON
per model: {"model": NAME, "torch": VERSION, "ops": [...]}.
Exits with status 3 and a message when torch is not importable (the test then skips).
"""
import json
import os
from collections import OrderedDict
import sys
import warnings

import numpy as np

import torch_or_skip  # noqa: F401, exits with status 3 when torch is missing
import torch
from torch import nn


class EncoderBlock(nn.Module):
    def __init__(self, heads, dim, mlp_dim, gelu):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        # torchvision's MLPBlock: Linear, GELU, Dropout, Linear, Dropout (keys mlp.0 and mlp.3).
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(approximate=gelu), nn.Dropout(0.0), nn.Linear(mlp_dim, dim), nn.Dropout(0.0)
        )

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, tokens, blocks, heads, dim, mlp_dim, gelu):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.layers = nn.Sequential(
            OrderedDict((f"encoder_layer_{i}", EncoderBlock(heads, dim, mlp_dim, gelu)) for i in range(blocks))
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class VisionTransformer(nn.Module):
    def __init__(self, image=32, patch=8, blocks=3, heads=4, dim=64, mlp_dim=128, classes=10, gelu="none"):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.encoder = Encoder((image // patch) ** 2 + 1, blocks, heads, dim, mlp_dim, gelu)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(dim, classes))

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = self.encoder(x)
        return self.heads(x[:, 0])


def export(out, opset, exporter, gelu):
    torch.manual_seed(0)
    model = VisionTransformer(gelu="none" if gelu == "erf" else "tanh").eval()
    # LayerNorm weights away from 1 and 0, so a scale or shift read wrongly shows.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 32, 32)
    path = f"{out}/model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, not gone
        if exporter == "script":
            torch.onnx.export(
                model, (x,), path, opset_version=opset, dynamo=False, input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        else:
            torch.onnx.export(
                model, (x,), path, opset_version=opset, dynamo=True, input_names=["input"], output_names=["logits"],
                external_data=False,
            )
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    np.save(f"{out}/input_0.npy", xn)
    np.save(f"{out}/expected_0.npy", sess.run(None, {"input": xn})[0])
    # The weights as torchvision's state_dict keys them, for loading into Veil's zoo builder.
    torch.save(model.state_dict(), f"{out}/state_dict.pth")
    return sorted({n.op_type for n in onnx.load(path).graph.node})


def main():
    for variant in sys.argv[2:]:
        opset, exporter, gelu = variant.split(":")
        name = f"{opset}_{exporter}_{gelu}"
        out = os.path.join(sys.argv[1], name)
        os.makedirs(out, exist_ok=True)
        ops = export(out, int(opset), exporter, gelu)
        print(json.dumps({"model": name, "torch": torch.__version__, "ops": ops}))


if __name__ == "__main__":
    main()
