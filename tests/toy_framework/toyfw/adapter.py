"""The toy framework's adapter: frontend (JSON -> IR), backend (IR -> JSON), runtime."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

import toyfw
from mixprec.runtimes.base import Adapter
from mixprec.ir import DType, GraphBuilder
from mixprec.ir.graph import Model
from mixprec.sample_inputs import InputSpec, make_arrays, shape_ladder

_SHORT = {DType.FLOAT32: "f32", DType.BFLOAT16: "bf16"}


class ToyAdapter(Adapter):
    name = "toy"

    def load(self, model: Any, config: Any) -> Model:
        data = toyfw.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model
        b = GraphBuilder(framework="toy")
        values = {i["name"]: b.input(i["name"], "f32", tuple(i["shape"])) for i in data["inputs"]}
        for name, spec in data["weights"].items():
            values[name] = b.const(name, np.asarray(spec["data"], np.float32).reshape(spec["shape"]))
        for node in data["nodes"]:
            values[node["output"]] = b.op(node["op"], *[values[i] for i in node["inputs"]], out=node["output"],
                                          shape=None, name=node["output"])
        b.output(*[values[o] for o in data["outputs"]])
        return Model(b.graph, {"toy": {"inputs": data["inputs"]}})

    def emit(self, ir_model: Model, config: Any) -> dict:
        graph = ir_model.graph
        weights = {c.name: {"shape": list(c.data.shape), "dtype": _SHORT[c.dtype],
                            "data": np.asarray(c.data, np.float32).ravel().tolist()}
                   for c in graph.constants.values()}
        nodes = [{"op": n.op, "inputs": [v.name for v in n.inputs], "output": n.outputs[0].name,
                  "dtype": _SHORT[n.outputs[0].dtype]} for n in graph.iter_nodes()]
        return {"inputs": ir_model.meta["toy"]["inputs"], "weights": weights, "nodes": nodes,
                "outputs": [v.name for v in graph.outputs]}

    def sample_inputs(self, original: Any, ir_model: Model, config: Any) -> Any:
        specs = [InputSpec(v.name, v.dtype, v.shape) for v in ir_model.graph.inputs]
        return make_arrays(specs, next(shape_ladder(specs, config.input_shapes)))

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        return toyfw.run(toyfw.load(os.fspath(original)) if isinstance(original, (str, os.PathLike)) else original,
                         inputs)

    def run_converted(self, converted: Any, inputs: Any, config: Any) -> list[np.ndarray]:
        return toyfw.run(converted, inputs)

    def output_names(self, ir_model: Model) -> list[str]:
        return [v.name for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: Any, input_path: str | None) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(converted, handle)
        os.replace(tmp, path)
