"""A toy fifth framework, outside mixprec, registered through the ``mixprec.frameworks``
entry point only. Its models are JSON files (``.toy``): inputs, float32 weights, and nodes
of MatMul/Add/Relu/Softmax/Cast, run with numpy (``run``), where bf16 values are rounded
with ml_dtypes. Converted models are the same format with per-node dtypes, loadable and
runnable without mixprec (``run`` imports nothing of mixprec)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

POLICY = str(Path(__file__).with_name("toy.toml"))


def run(model: dict, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a toy model; every value is rounded to the dtype the model declares for it."""
    import ml_dtypes

    types = {"f32": np.float32, "bf16": ml_dtypes.bfloat16}
    env = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    for name, spec in model["weights"].items():
        env[name] = np.asarray(spec["data"], np.float32).reshape(spec["shape"]).astype(types[spec.get("dtype", "f32")])
    for node in model["nodes"]:
        args = [np.asarray(env[i], np.float32) for i in node["inputs"]]
        op = node["op"]
        if op == "MatMul":
            out = args[0] @ args[1]
        elif op == "Add":
            out = args[0] + args[1]
        elif op == "Relu":
            out = np.maximum(args[0], 0)
        elif op == "Softmax":
            e = np.exp(args[0] - args[0].max(axis=-1, keepdims=True))
            out = e / e.sum(axis=-1, keepdims=True)
        elif op == "Cast":
            out = args[0]
        else:
            raise ValueError(f"toy models have no op {op}")
        env[node["output"]] = out.astype(types[node.get("dtype", "f32")])
    return [np.asarray(env[o], np.float32) for o in model["outputs"]]


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _framework():
    """The registration record; built lazily so that importing toyfw needs no mixprec."""
    from mixprec.frameworks import Framework
    from mixprec.ir.cast import CastSpec
    return Framework(name="toy", suffixes=(".toy",), module_roots=("toyfw",), cast=CastSpec("Cast", "to"),
                     policy=POLICY, adapter="toyfw.adapter:ToyAdapter", description=".toy JSON models")


def __getattr__(name: str):
    if name == "FRAMEWORK":
        return _framework()
    raise AttributeError(name)
