"""Load a model file with its own framework only, validate it, run it on inputs.npz and
write the outputs (in order) to an .npz. Run as a script in a fresh interpreter in which
``import mixprec`` fails (bench/corpus.py prepends the import block), so it proves that a
converted model needs nothing but its framework.

usage: run_model.py FRAMEWORK MODEL INPUTS.npz OUTPUTS.npz
Writes OUTPUTS.npz (out0, out1, ...) and OUTPUTS.npz.json ({"runtime": ...})."""
import json
import os
import sys

import numpy as np


def _flatten(value):
    if isinstance(value, dict):
        return [a for key in sorted(value) for a in _flatten(value[key])]
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in _flatten(item)]
    if hasattr(value, "to_tuple"):  # a transformers ModelOutput
        return _flatten(value.to_tuple())
    return [value]


def _as_numpy(value):
    if hasattr(value, "asnumpy"):  # mxnet
        if "bfloat16" in str(value.dtype) or value.dtype == np.float16:
            value = value.astype("float32")
        return value.asnumpy()
    if hasattr(value, "detach"):  # torch
        value = value.detach()
        if value.dtype.is_floating_point:
            value = value.float()
        return value.numpy()
    if hasattr(value, "numpy"):  # tensorflow
        if value.dtype.is_floating:
            import tensorflow as tf
            value = tf.cast(value, tf.float32)
        return value.numpy()
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype.kind == "f" or array.dtype.name == "bfloat16" else array


def run_onnx(path, feeds):
    import onnx
    onnx.checker.check_model(path, full_check=True)
    import onnxruntime as ort
    try:
        if os.environ.get("MIXPREC_CORPUS_ONNX_RUNTIME") == "reference":
            raise RuntimeError("onnxruntime not used (MIXPREC_CORPUS_ONNX_RUNTIME=reference)")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, feeds), "onnxruntime"
    except Exception as exc:  # no CPU kernel (BF16 Conv/MatMul): the spec's reference evaluator
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        from onnx.reference import ReferenceEvaluator
        try:
            return ReferenceEvaluator(path).run(None, feeds), f"onnx.reference (onnxruntime: {first})"
        except Exception as ref_exc:
            raise RuntimeError(f"onnx.reference: {type(ref_exc).__name__}: {ref_exc} "
                               f"(onnxruntime before it: {first})") from ref_exc


def run_torch(path, arrays):
    import torch
    program = torch.export.load(path)
    with torch.no_grad():
        return _flatten(program.module()(*[torch.from_numpy(a) for a in arrays])), "torch.export"


def run_tensorflow(path, feeds):
    import tensorflow as tf
    if path.endswith(".keras"):
        import keras
        model = keras.models.load_model(path, compile=False)
        arrays = list(feeds.values())
        return _flatten(model(arrays[0] if len(arrays) == 1 else arrays, training=False)), "keras"
    if path.endswith(".pb"):
        raise SystemExit("run_model.py reads SavedModels and .keras files, not frozen .pb graphs")
    loaded = tf.saved_model.load(path)
    function = loaded.signatures["serving_default"]
    return _flatten(function(**{k: tf.constant(v) for k, v in feeds.items()})), "tf.saved_model"


def run_mxnet(path, feeds):
    np.bool = np.bool_  # mxnet 1.9.1 with numpy 1.26
    import mxnet as mx
    params = path[: -len("-symbol.json")] + "-0000.params"
    symbol = mx.sym.load(path)
    symbol.infer_type(**{k: v.dtype for k, v in feeds.items()})  # validates the graph's types
    block = mx.gluon.SymbolBlock.imports(path, list(feeds), params, ctx=mx.cpu())
    return _flatten(block(*[mx.nd.array(v, dtype=v.dtype) for v in feeds.values()])), "mxnet.gluon"


def main(argv):
    framework, model, inputs_path, outputs_path = argv
    with np.load(inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    if framework == "onnx":
        outputs, runtime = run_onnx(model, feeds)
    elif framework == "torch":
        outputs, runtime = run_torch(model, list(feeds.values()))
    elif framework == "tensorflow":
        outputs, runtime = run_tensorflow(model, feeds)
    elif framework == "mxnet":
        outputs, runtime = run_mxnet(model, feeds)
    else:
        raise SystemExit(f"unknown framework {framework}")
    arrays = {f"out{i}": _as_numpy(o) for i, o in enumerate(outputs)}
    np.savez(outputs_path, **arrays)
    with open(outputs_path + ".json", "w") as handle:
        json.dump({"runtime": runtime, "pid": os.getpid()}, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
