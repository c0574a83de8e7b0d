#!/usr/bin/env python3
"""Writes DIR/plan.json for a folder made by `veil split` (head.onnx, tail.onnx, cut.json), as
the planner (issue 9) will: the deployment description `veil enclave serve` reads (schema in
docs/serving.md). For benchmarks and demos before the planner exists.

    write_plan.py DIR MODEL_ONNX MODEL_NAME [--preset imagenet] [--applied-in client|enclave]
MODEL_ONNX is the whole model as `veil export` wrote it (its SHA-256 goes into the plan)."""
import argparse, hashlib, json


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("dir")
ap.add_argument("model_onnx")
ap.add_argument("model_name")
ap.add_argument("--preset", default="imagenet", choices=["imagenet", "caffe", "tensorflow", "tensorflow-lite", "unit"])
ap.add_argument("--applied-in", default="client", choices=["client", "enclave"])
a = ap.parse_args()
cut = json.load(open(f"{a.dir}/cut.json"))
shape = cut["head"]["inputs"][0]["shape"]
nchw = shape[1] == 3
plan = {
    "schemaVersion": 1,
    "model": {"name": a.model_name, "sha256": sha(a.model_onnx)},
    "cut": {"name": cut["cut"]["name"], "tensor": cut["cut"]["tensor"], "featureShape": cut["cut"]["shape"]},
    "head": {"path": "head.onnx", "sha256": sha(f"{a.dir}/head.onnx")},
    "tail": {"path": "tail.onnx", "sha256": sha(f"{a.dir}/tail.onnx")},
    "preprocessing": {"preset": a.preset, "appliedIn": a.applied_in},
    "input": {"width": shape[3] if nchw else shape[2], "height": shape[2] if nchw else shape[1],
              "layout": "nchw" if nchw else "nhwc", "shape": shape},
    "accelerator": {"modelName": f"{a.model_name}.tail", "modelVersion": "1"},
    "tee": {"preset": "sgx1", "evidenceMode": "simulated"},
}
with open(f"{a.dir}/plan.json", "w") as f:
    json.dump(plan, f, indent=2)
print(f"wrote {a.dir}/plan.json: {a.model_name} cut at {plan['cut']['name']} {plan['cut']['featureShape']}")
