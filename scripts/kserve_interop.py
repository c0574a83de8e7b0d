#!/usr/bin/env python3
"""Third-party peers of Veil's KServe v2 / Triton gRPC protocol, for the interop tests.

  tritonclient ENDPOINT MODEL ONNX
      NVIDIA's tritonclient (grpc) calls the server at ENDPOINT: health, metadata, then
      ModelInfer of MODEL with a seeded input of the declared shape; the answer is compared with
      ONNX Runtime on the same ONNX file. A request with a wrong shape must come back as
      INVALID_ARGUMENT. Then Triton's ModelStreamInfer: three requests on one stream (answers
      equal to the unary one, in order) and a wrong shape on another (refused). Prints one JSON
      line: {"max_abs_diff": ..., "shape": [...], "stream_equal": ..., ...}.

  mlserver PORT MODEL ONNX
      Serves ONNX (run by ONNX Runtime) as MODEL version 1 on Seldon MLServer's KServe v2 gRPC
      port PORT of 127.0.0.1 (its HTTP port is PORT+1) until killed.

  probe PEER
      Exits 0 when the peer (tritonclient or mlserver) can be imported, 3 when it cannot.
"""
import json
import os
import sys


def seeded_input(shape, seed=7):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def onnx_reference(onnx_path, name, x):
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})


def tritonclient_peer(endpoint, model, onnx_path):
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=endpoint)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model), f"model {model} not ready"
    meta = client.get_model_metadata(model, as_json=True)
    spec = meta["inputs"][0]
    shape = [1 if int(d) == -1 else int(d) for d in spec["shape"]]
    x = seeded_input(shape)
    inp = grpcclient.InferInput(spec["name"], shape, "FP32")
    inp.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput(o["name"]) for o in meta["outputs"]]
    result = client.infer(model, [inp], outputs=outputs, request_id="interop-1")
    got = [result.as_numpy(o["name"]) for o in meta["outputs"]]
    want = onnx_reference(onnx_path, spec["name"], x)
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    scale = max(float(np.max(np.abs(w))) for w in want)
    # A wrong shape must be refused with INVALID_ARGUMENT, and the server must keep serving.
    bad_shape = list(shape)
    bad_shape[-1] += 1
    bad = grpcclient.InferInput(spec["name"], bad_shape, "FP32")
    bad.set_data_from_numpy(seeded_input(bad_shape))
    status = None
    try:
        client.infer(model, [bad])
    except InferenceServerException as e:
        status = e.status()
    again = client.infer(model, [inp], outputs=outputs).as_numpy(meta["outputs"][0]["name"])
    # Triton's ModelStreamInfer: three requests on one stream, answered in order; then a wrong
    # shape on a new stream, which the server refuses by ending that stream with an error.
    import queue
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(3):
        client.async_stream_infer(model, [inp], outputs=outputs, request_id=f"stream-{i}")
    streamed = [answers.get(timeout=60) for _ in range(3)]
    client.stop_stream()
    name = meta["outputs"][0]["name"]
    stream_equal = all(e is None and np.array_equal(r.as_numpy(name), got[0]) for r, e in streamed)
    stream_ids = [r.get_response().id if r is not None else None for r, _ in streamed]
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(model, [bad])
    bad_result, bad_error = answers.get(timeout=60)
    client.stop_stream()
    print(json.dumps({
        "stream_equal": stream_equal,
        "stream_ids": stream_ids,
        "stream_bad_refused": bad_result is None and bad_error is not None,
        "stream_bad_error": str(bad_error),
        "max_abs_diff": diff,
        "max_abs_value": scale,
        "shape": list(got[0].shape),
        "declared_input": spec["shape"],
        "bad_shape_status": status,
        "again_equal": bool(np.array_equal(again, got[0])),
        "server": client.get_server_metadata(as_json=True).get("name"),
    }))


try:
    from mlserver import MLModel as _MLModel
except ImportError:  # the peer is optional; `probe mlserver` says so
    _MLModel = None

if _MLModel is not None:

    class OnnxTail(_MLModel):
        """An MLServer runtime that runs an ONNX file (parameters.uri) with ONNX Runtime."""

        async def load(self):
            import onnxruntime as ort

            self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
            return True

        async def predict(self, payload):
            from mlserver.codecs import NumpyCodec
            from mlserver.types import InferenceResponse

            feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
            names = [o.name for o in self.session.get_outputs()]
            outs = self.session.run(names, feeds)
            return InferenceResponse(
                model_name=self.name,
                model_version=self.version,
                id=payload.id,
                outputs=[NumpyCodec.encode_output(n, o) for n, o in zip(names, outs)],
            )


def mlserver_peer(port, model, onnx_path):
    import asyncio

    from mlserver import MLServer
    from mlserver.settings import ModelParameters, ModelSettings, Settings

    # MLServer imports the runtime by its dotted path.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    settings = Settings(
        host="127.0.0.1", grpc_port=port, http_port=port + 1, metrics_endpoint=None, parallel_workers=0,
        load_models_at_startup=True, debug=False,
    )
    models = [
        ModelSettings(
            name=model, implementation="kserve_interop.OnnxTail",
            parameters=ModelParameters(uri=os.path.abspath(onnx_path), version="1"),
        )
    ]
    asyncio.run(MLServer(settings).start(models))


def probe(peer):
    try:
        if peer == "tritonclient":
            import tritonclient.grpc  # noqa: F401
        elif peer == "mlserver":
            import mlserver  # noqa: F401
        else:
            raise SystemExit(f"unknown peer {peer}")
    except ImportError as e:
        print(f"{peer} is not installed: {e}")
        sys.exit(3)
    print(f"{peer} is installed")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "tritonclient":
        tritonclient_peer(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "mlserver":
        mlserver_peer(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif cmd == "probe":
        probe(sys.argv[2])
    else:
        sys.exit(__doc__)
