#!/usr/bin/env python3
"""Reference outputs for Veil's tests, computed by ONNX Runtime.

    reference.py run DIR      for every case folder in DIR holding model.onnx and
                              input_0.npy, input_1.npy, ...: check the model with
                              onnx.checker (full check, with shape inference), run it with
                              ONNX Runtime on the CPU with graph optimizations off (so the
                              graph is computed as written, not as ORT would fuse it), and
                              write expected_0.npy, expected_1.npy, ... for its outputs.
    reference.py check FILE.. only run the checker on the given models.

One process handles every case, so a test suite pays the import cost once. Each case prints
one line; any failure (checker, ORT, a missing or mismatched input) is reported with the case
and the exit status is 1 after all cases have been tried.
"""

import argparse
import os
import sys
import time

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"reference.py: {e}; create the project venv with scripts/setup-python.sh (or `make test`)")


def check(path):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return model


def session(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def read_inputs(case_dir):
    inputs = []
    while True:
        path = os.path.join(case_dir, f"input_{len(inputs)}.npy")
        if not os.path.exists(path):
            return inputs
        inputs.append(np.load(path, allow_pickle=False))


def run_case(case_dir):
    model_path = os.path.join(case_dir, "model.onnx")
    try:
        check(model_path)
    except Exception as e:
        raise RuntimeError(f"onnx.checker rejected the model: {e}") from e
    inputs = read_inputs(case_dir)
    try:
        sess = session(model_path)
    except Exception as e:
        raise RuntimeError(f"ONNX Runtime could not load the model: {e}") from e
    declared = sess.get_inputs()
    if len(declared) != len(inputs):
        names = [i.name for i in declared]
        raise RuntimeError(f"the model has {len(declared)} inputs {names}, the case has {len(inputs)} input_N.npy files")
    feed = {}
    integers = {"tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16}
    for i, (d, x) in enumerate(zip(declared, inputs)):
        if x.dtype != np.float32:
            raise RuntimeError(f"input_{i}.npy has dtype {x.dtype}, expected float32")
        if d.type in integers:
            # A quantised map's codes: Veil holds them as floats; the model declares the integers.
            if not np.array_equal(x, np.round(x)) or x.min(initial=0) < 0:
                raise RuntimeError(f"input_{i}.npy is declared {d.type} but holds values that are not whole and non-negative")
            x = x.astype(integers[d.type])
        feed[d.name] = x
    try:
        outputs = sess.run(None, feed)
    except Exception as e:
        raise RuntimeError(f"ONNX Runtime failed: {e}") from e
    for i, y in enumerate(outputs):
        np.save(os.path.join(case_dir, f"expected_{i}.npy"), np.ascontiguousarray(y, dtype=np.float32))
    return outputs


def command_run(directory):
    if not os.path.isdir(directory):
        print(f"reference.py: {directory} is not a directory", file=sys.stderr)
        return 2
    cases = sorted(
        d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d, "model.onnx"))
    )
    if not cases:
        print(f"reference.py: no case folders with model.onnx in {directory}", file=sys.stderr)
        return 2
    failures = []
    start = time.time()
    for name in cases:
        try:
            outputs = run_case(os.path.join(directory, name))
            shapes = ", ".join(str(list(y.shape)) for y in outputs)
            print(f"{name}: ok -> {shapes}")
        except Exception as e:
            failures.append(name)
            print(f"{name}: FAILED: {e}")
    elapsed = time.time() - start
    print(f"reference.py: {len(cases) - len(failures)}/{len(cases)} cases ok in {elapsed:.1f}s "
          f"(onnx {onnx.__version__}, onnxruntime {ort.__version__})")
    if failures:
        print(f"reference.py: failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def command_check(paths):
    status = 0
    for path in paths:
        try:
            check(path)
            print(f"{path}: ok")
        except Exception as e:
            print(f"{path}: FAILED: {e}")
            status = 1
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check and run every case folder in DIR, writing expected_N.npy")
    run.add_argument("dir")
    chk = sub.add_parser("check", help="run onnx.checker on models")
    chk.add_argument("models", nargs="+")
    args = parser.parse_args()
    if args.command == "run":
        return command_run(args.dir)
    return command_check(args.models)


if __name__ == "__main__":
    sys.exit(main())
