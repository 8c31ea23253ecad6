"""PyTorch adapter: torch.nn.Module (with example inputs) and saved .pt2 programs.

The converted module is validated by capturing it with torch.export (what ``save``
writes), and its outputs are compared with the FP32 module's on the example inputs."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mixprec.runtimes.base import Adapter, load_once_per_fit
from mixprec.runtimes.fingerprint import Fingerprint, Unfingerprintable
from mixprec.backends import torch as backend
from mixprec.config import MixedPrecisionConfig
from mixprec.dialects.torch import META_KEY
from mixprec.errors import ConfigError, ConversionError
from mixprec.fileio import same_file
from mixprec.frontends import torch as frontend
from mixprec.ir.graph import Graph, Model, Value
from mixprec.sample_inputs import InputSpec, input_bytes_limit, make_arrays, shape_ladder

logger = logging.getLogger(__name__)


class TorchAdapter(Adapter):
    name = "torch"

    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        if isinstance(model, (str, os.PathLike, torch.export.ExportedProgram)):
            program = frontend.read_program(model) if isinstance(model, (str, os.PathLike)) else model
            if config.example_inputs is None:
                config.example_inputs = _program_inputs(program)
            return frontend.from_exported_program(program)
        if config.example_inputs is None:
            raise ConfigError("a torch module needs example inputs to be captured: "
                              "MixedPrecisionConfig(example_inputs=(tensor, ...)) or a dict of keyword tensors")
        return frontend.load(model, config.example_inputs, dynamic_batch=config.dynamic_batch,
                             fallback_fx=config.fallback_fx)

    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        module = self.emit_unvalidated(ir_model, config)
        self.validate(module, config)
        return module

    def emit_unvalidated(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return backend.emit(ir_model)

    def load_native(self, directory: Path, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """The cached IR's module, its tensors over the IR's (copy-on-write mapped) arrays:
        no copy and no new memory, the bytes paged in as the module first reads them."""
        return backend.emit(ir_model, copy=False)

    def validate(self, native: Any, config: MixedPrecisionConfig) -> None:
        """The converted module must be capturable by torch.export (as it is saved)."""
        args, kwargs = _split(config.example_inputs)
        try:
            torch.export.export(native, args, kwargs)
        except Exception as exc:
            raise ConversionError(f"the converted module cannot be captured by torch.export: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        return config.sample_inputs if config.sample_inputs is not None else config.example_inputs

    def candidate_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Iterator[Any]:
        """The user's sample inputs alone when given; else the example inputs (a .pt2's
        own), then, for a graph with symbolic dims, inputs of the same structure along
        ``shape_ladder`` (token ids below the rows of the embedding that reads them)."""
        if config.sample_inputs is not None:
            yield config.sample_inputs
            return
        example = config.example_inputs
        if example is None:
            return
        yield example
        leaves, spec = torch.utils._pytree.tree_flatten(example)
        graph = ir_model.graph
        tensors = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        if len(tensors) != len(graph.inputs) or all(_static(v.shape) for v in graph.inputs):
            return
        specs = input_specs(graph)
        weights = sum(v.data.nbytes for v in graph.constants.values() if v.data is not None)
        for shapes in shape_ladder(specs, given=config.input_shapes, limit_bytes=input_bytes_limit(weights)):
            arrays = make_arrays(specs, shapes)
            filled = list(leaves)
            for position, value in zip(tensors, graph.inputs):
                filled[position] = torch.from_numpy(arrays[value.name]).to(leaves[position].dtype)
            yield torch.utils._pytree.tree_unflatten(filled, spec)

    def fingerprint(self, model: Any, digest: Fingerprint) -> None:
        """A module by its code, attributes, hooks and tensors (runtimes.torch_fingerprint);
        an ExportedProgram by its serialized bytes."""
        from mixprec.runtimes import torch_fingerprint
        if isinstance(model, torch.export.ExportedProgram):
            raise Unfingerprintable("an ExportedProgram object is not fingerprinted (save it as .pt2 and convert "
                                    "the file to use the conversion cache)")
        if not isinstance(model, torch.nn.Module):
            raise Unfingerprintable(f"a {type(model).__qualname__} is not a torch.nn.Module")
        torch_fingerprint.fingerprint_module(model, digest)

    def hash_value(self, digest: Fingerprint, value: Any, where: str, depth: int) -> bool:
        from mixprec.runtimes import torch_fingerprint
        return torch_fingerprint.torch_value(digest, value, where, depth)

    def native(self, model: Any) -> Any:
        """A module: the user's, or the program's (a .pt2 path or an ExportedProgram); a
        path's is read once per ``fit`` (1.6 s for MobileNetV2, once per reference run
        before), keyed by the file's identity and modification time."""
        if isinstance(model, torch.export.ExportedProgram):
            return model.module()
        if not isinstance(model, (str, os.PathLike)):
            return model
        return load_once_per_fit("torch program modules", model, lambda: frontend.read_program(model).module())

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
                     dynamic_batch=bool(ir_model.meta.get(META_KEY, {}).get("dynamic_batch")))


def input_specs(graph: Graph) -> list[InputSpec]:
    """One InputSpec per graph input: its IR dtype and dims (symbolic names kept), and
    for integer inputs that an embedding reads, the rows of its table as ``high``."""
    return [InputSpec(v.name, v.dtype, v.shape, high=_table_rows(v)) for v in graph.inputs]


def _table_rows(value: Value) -> int | None:
    rows = [reader.inputs[0].shape[0] for reader, index in value.uses()
            if reader.op.startswith("aten.embedding") and index == 1 and reader.inputs[0] is not None
            and reader.inputs[0].shape and isinstance(reader.inputs[0].shape[0], int)]
    return min(rows) if rows else None


def _static(shape: Any) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


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
