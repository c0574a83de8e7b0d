"""Reads back what `veil deploy` writes, with the readers the real consumers use, for the tests.

  check_deploy.py pbtxt CONFIG          Triton's config.pbtxt through Triton's own ModelConfig
                                        protobuf (tritonclient's model_config_pb2, text_format):
                                        prints the parsed fields as JSON.
  check_deploy.py yaml FILE             every YAML document of FILE (PyYAML safe_load_all): JSON list.
  check_deploy.py onnx MODEL OUT X.npy...
                                        onnx.checker (full), the symbolic leading dimension of every
                                        input and output (dim_param), then ONNX Runtime on each
                                        input; writes OUT/output_K.npy and prints the dim_params.

Exits non-zero with the reader's own error when a file does not parse.
"""

import json
import os
import sys


def pbtxt(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    with open(path, encoding="utf-8") as f:
        config = text_format.Parse(f.read(), mc.ModelConfig())

    def tensors(items):
        return [
            {"name": t.name, "data_type": mc.DataType.Name(t.data_type), "dims": list(t.dims)} for t in items
        ]

    out = {
        "name": config.name,
        "backend": config.backend,
        "platform": config.platform,
        "max_batch_size": config.max_batch_size,
        "input": tensors(config.input),
        "output": tensors(config.output),
        "instance_group": [
            {"count": g.count, "kind": mc.ModelInstanceGroup.Kind.Name(g.kind)} for g in config.instance_group
        ],
        "has_dynamic_batching": config.HasField("dynamic_batching"),
    }
    if config.HasField("dynamic_batching"):
        out["preferred_batch_size"] = list(config.dynamic_batching.preferred_batch_size)
        out["max_queue_delay_microseconds"] = config.dynamic_batching.max_queue_delay_microseconds
    print(json.dumps(out))


def yaml_docs(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    print(json.dumps(docs))


def onnx_run(model_path, out_dir, inputs):
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)

    def first_dims(values):
        return {v.name: v.type.tensor_type.shape.dim[0].dim_param for v in values}

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for k, path in enumerate(inputs):
        x = np.load(path, allow_pickle=False)
        (y,) = sess.run(None, {name: x})
        np.save(os.path.join(out_dir, f"output_{k}.npy"), np.ascontiguousarray(y, dtype=np.float32))
    print(json.dumps({"inputs": first_dims(model.graph.input), "outputs": first_dims(model.graph.output)}))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "pbtxt":
        pbtxt(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "yaml":
        yaml_docs(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "onnx":
        onnx_run(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
