#!/usr/bin/python3
"""torchvision's own classifiers and detection backbones exported to ONNX by PyTorch's exporter,
for Veil's import survey (docs/onnx-support.md) and its tests (TorchvisionExportTests) and
benchmarks (bench/peers.py takes the .onnx files).

Runs two ways:
- with Debian's Python and its python3-torch / python3-torchvision (PyTorch 1.13, torchvision
  0.14; `make python-torchvision` installs them): the TorchScript exporter, opsets 7-17;
- with .venv's Python (PyTorch 2.13 and torchvision 0.28 from requirements-torch.txt; `make
  python-torch` installs them): opsets 18 and above go through PyTorch 2's torch.export-based
  exporter (`dynamo=True`), the one PyTorch now writes by default. PyPI's torchvision wheel is
  built for CUDA, so its compiled detection ops (nms, roi_align, ...) do not load beside the CPU
  PyTorch; the classifiers and backbones are plain Python and need none of them, so the script
  declares the two operator schemas torchvision's import registers fake kernels for.

Usage: torchvision_export.py DIR MODEL:OPSET[:BATCH]...
       torchvision_export.py --table < SURVEY.jsonl   (the op survey as Markdown)

MODEL is a torchvision.models builder name (resnet50, swin_t, ...), fpn_resnet50 /
fpn_mobilenet_v3_large for the feature-pyramid backbones of Faster R-CNN (the FPN's outputs,
one per level), or timm/NAME for a timm model (when timm is importable). Weights are random (seed 0; BatchNorm statistics and affine drawn away from 1
and 0 so a misread shows). For each variant writes DIR/MODEL_OPSET[_BATCH]/model.onnx (batch
dimension symbolic), input_0.npy (BATCH images, default 1) and expected_0.npy (PyTorch's own
output in eval mode; the first output for multi-output models), and prints one line of JSON:
{"model": NAME, "opset": N, "torch": VERSION, "torchvision": VERSION, "ops": {OP: COUNT}}.
A model that fails to export prints {"model": ..., "error": ...} and the script goes on; it
exits with status 3 and a message when torch or torchvision is not importable.
"""
import json
import os
import sys
import warnings
from collections import Counter

_SCHEMAS = None  # keeps the operator library below alive


def import_torchvision():
    """torchvision, importable when its compiled ops are not (see the module note)."""
    global _SCHEMAS
    try:
        import torchvision

        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _SCHEMAS = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _SCHEMAS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision


try:
    import numpy as np
    import torch
    from torch import nn

    torchvision = import_torchvision()
except ImportError as e:
    print(f"torch or torchvision is not importable by {sys.executable} ({e}); install them with "
          "`make python-torchvision` (Debian's Python) or `make python-torch` (.venv)")
    sys.exit(3)

IMAGE_SIZE = {"inception_v3": 299}


class FirstOutputs(nn.Module):
    """A detection backbone's OrderedDict of pyramid levels as a tuple (ONNX has no dicts)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return tuple(self.body(x).values())


def build(name):
    if name.startswith("timm/"):
        # timm's models (with Debian's PyTorch: pip install timm==0.9.16 into a venv made with
        # --system-site-packages; see docs/onnx-support.md).
        import timm

        return timm.create_model(name[len("timm/"):], pretrained=False)
    if name.startswith("fpn_"):
        from torchvision.models.detection import backbone_utils as bu

        arch = name[len("fpn_"):]
        if arch.startswith("resnet"):
            body = bu.resnet_fpn_backbone(backbone_name=arch, weights=None, trainable_layers=5)
        else:
            body = bu.mobilenet_backbone(backbone_name=arch, weights=None, fpn=True, trainable_layers=6)
        return FirstOutputs(body)
    kwargs = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return getattr(torchvision.models, name)(**kwargs)


def randomize(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.Linear) and not m.weight.any():
                nn.init.normal_(m.weight, std=0.02)  # ViT's head starts at zero: every logit would be 0
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def export(out, name, opset, batch):
    torch.manual_seed(0)
    model = build(name)
    randomize(model)
    model.eval()
    size = IMAGE_SIZE.get(name, 224)
    if name.startswith("timm/"):
        size = model.default_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(batch, 3, size, size)
    path = os.path.join(out, "model.onnx")
    with torch.no_grad():
        y = model(x)
    outputs = list(y) if isinstance(y, tuple) else [y]
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    axes = {"input": {0: "batch"}}
    axes.update({n: {0: "batch"} for n in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset >= 18:
            # PyTorch 2's exporter (torch.export, then onnxscript). The batch stays symbolic where
            # torch.export can keep it so (Dim.AUTO); ViT-B/16 traces to a fixed batch of 1.
            if int(torch.__version__.split(".")[0]) < 2:
                raise RuntimeError(f"opset {opset} needs PyTorch 2 (.venv's Python), not {torch.__version__}")
            torch.onnx.export(
                model, (x,), path, opset_version=opset, input_names=["input"], output_names=names,
                dynamic_shapes=({0: torch.export.Dim.AUTO},), dynamo=True, external_data=False, verbose=False,
            )
        else:
            torch.onnx.export(
                model, (x,), path, opset_version=opset, input_names=["input"], output_names=names,
                dynamic_axes=axes, do_constant_folding=True,
            )
    np.save(os.path.join(out, "input_0.npy"), x.numpy())
    np.save(os.path.join(out, "expected_0.npy"), outputs[0].numpy())
    return ops_of(path)


def ops_of(path):
    """Op types and counts of an ONNX file, read without the onnx package (Debian's torch does
    not need it): GraphProto field 1 (node) holds NodeProto, whose field 4 is op_type."""
    data = open(path, "rb").read()

    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = varint(buf, i)
            elif wire == 1:
                value, i = buf[i:i + 8], i + 8
            elif wire == 5:
                value, i = buf[i:i + 4], i + 4
            elif wire == 2:
                n, i = varint(buf, i)
                value, i = buf[i:i + n], i + n
            else:
                raise ValueError(f"wire type {wire} at {i}")
            yield number, value

    def varint(buf, i):
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, i
            shift += 7

    counts = Counter()
    for number, value in fields(data):
        if number == 7:  # ModelProto.graph
            for gn, gv in fields(value):
                if gn == 1:
                    for nn_, nv in fields(gv):
                        if nn_ == 4:
                            counts[nv.decode()] += 1
    return dict(sorted(counts.items()))


def table(lines):
    """The op survey as Markdown: for each op, the exports (model and opsets) that contain it."""
    uses = {}
    models = set()
    for line in lines:
        d = json.loads(line)
        if "ops" not in d:
            continue
        models.add(d["model"])
        for op in d["ops"]:
            uses.setdefault(op, {}).setdefault(d["model"], set()).add(d["opset"])
    out = [f"| op | exports ({len(models)} models) |", "| --- | --- |"]
    for op in sorted(uses, key=lambda o: (-len(uses[o]), o)):
        where = uses[op]
        if len(where) == len(models):
            text = "all"
        else:
            text = ", ".join(
                m + ("" if len(o) == len(set().union(*where.values())) else " (" + "/".join(map(str, sorted(o))) + ")")
                for m, o in sorted(where.items()))
        out.append(f"| {op} | {text} |")
    return "\n".join(out)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--table":
        print(table(sys.stdin))
        return
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    for variant in sys.argv[2:]:
        parts = variant.split(":")
        name, opset = parts[0], int(parts[1])
        batch = int(parts[2]) if len(parts) > 2 else 1
        folder = variant.replace(":", "_").replace("/", "_")
        out = os.path.join(sys.argv[1], folder)
        os.makedirs(out, exist_ok=True)
        line = {"model": name, "opset": opset, "batch": batch, "torch": torch.__version__,
                "torchvision": torchvision.__version__}
        try:
            line["ops"] = export(out, name, opset, batch)
        except Exception as e:  # noqa: BLE001, the survey records what does not export
            line["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
