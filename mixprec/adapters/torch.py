"""PyTorch adapter: torch.nn.Module (with example inputs) and saved .pt2 programs.

The converted module is validated by capturing it with torch.export (what ``save``
writes), and its outputs are compared with the FP32 module's on the example inputs."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from mixprec.adapters.base import Adapter
from mixprec.backends import torch as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConfigError, ConversionError
from mixprec.fileio import same_file
from mixprec.frontends import torch as frontend
from mixprec.ir.graph import Model

logger = logging.getLogger(__name__)


class TorchAdapter(Adapter):
    name = "torch"

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        if isinstance(model, (str, os.PathLike)):
            program = frontend.read_program(model)
            if config.example_inputs is None:
                config.example_inputs = _program_inputs(program)
            return frontend.from_exported_program(program)
        if config.example_inputs is None:
            raise ConfigError("a torch module needs example inputs to be captured: "
                              "MixedPrecisionConfig(example_inputs=(tensor, ...)) or a dict of keyword tensors")
        return frontend.load(model, config.example_inputs, dynamic_batch=config.dynamic_batch,
                             fallback_fx=config.fallback_fx)

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        module = backend.emit(ir_model)
        args, kwargs = _split(config.example_inputs)
        try:
            torch.export.export(module, args, kwargs)
        except Exception as exc:
            raise ConversionError(f"the converted module cannot be captured by torch.export: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return module

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return config.sample_inputs if config.sample_inputs is not None else config.example_inputs

    def native(self, model: Any) -> Any:
        return frontend.read_program(model).module() if isinstance(model, (str, os.PathLike)) else model

    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        return _run(self.native(original), inputs)

    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        return _run(converted, inputs)

    def output_names(self, ir_model: Model) -> list[str]:
        return [v.name for v in ir_model.graph.outputs]

    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        if input_path is not None and same_file(path, input_path):
            raise ConfigError(f"refusing to overwrite the input model {input_path}; choose another output path")
        backend.save(converted, path, config.example_inputs,
                     dynamic_batch=bool(ir_model.meta.get(frontend.FRAMEWORK, {}).get("dynamic_batch")))


def _program_inputs(program) -> Any:
    example = getattr(program, "example_inputs", None)
    if not example:
        raise ConfigError("the .pt2 program carries no example inputs; pass example_inputs")
    args, kwargs = example
    return kwargs if kwargs and not args else tuple(args)


def _split(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    return tuple(inputs), {}


def _run(module: Any, inputs: Any) -> list[np.ndarray]:
    args, kwargs = _split(inputs)
    with torch.no_grad():
        out = module(*args, **kwargs)
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t.detach().to(torch.float32).numpy() if t.is_floating_point() else t.detach().numpy()
            for t in leaves if isinstance(t, torch.Tensor)]
