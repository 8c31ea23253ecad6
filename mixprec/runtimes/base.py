"""The Adapter contract every framework implements for ``mix_precision.fit``."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mixprec.config import MixedPrecisionConfig
from mixprec.ir.graph import Model
from mixprec.runtimes.fingerprint import Fingerprint, Unfingerprintable

logger = logging.getLogger(__name__)


#: memos that live for one ``fit`` (kind -> key -> value); None outside a fit
_PER_FIT: contextvars.ContextVar[dict[str, dict] | None] = contextvars.ContextVar("mixprec_per_fit", default=None)


@contextlib.contextmanager
def per_fit_scope() -> Iterator[None]:
    """Memos made inside (``per_fit_memo``) are dropped when the scope ends (``fit`` holds it)."""
    memos: dict[str, dict] = {}
    token = _PER_FIT.set(memos)
    try:
        yield
    finally:
        _PER_FIT.reset(token)
        for job in memos.get(BACKGROUND_JOBS, {}).values():
            job.close()  # a background run whose result nobody asked for


#: the per-fit memo of background jobs (mixprec.background.Job): closed when the fit ends
BACKGROUND_JOBS = "background jobs"


def per_fit_memo(kind: str) -> dict | None:
    """The memo of ``kind`` of the current ``fit`` (a dict to read and fill), or None
    outside one: what many runs of one conversion would otherwise redo (a .pt2 program
    loaded again for every reference run, a sample shape the model rejects tried again)."""
    memos = _PER_FIT.get()
    return None if memos is None else memos.setdefault(kind, {})


def load_once_per_fit(kind: str, path: str | os.PathLike, load: Callable[[], Any], *key: Any) -> Any:
    """``load()`` of the model file at ``path``, made once per ``fit`` (per_fit_memo
    ``kind``) and again when the file changes (its inode, size or modification time),
    or when ``key`` differs; loaded every time outside a fit."""
    stat = os.stat(path)
    full = (os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, *key)
    memo = per_fit_memo(kind)
    if memo is not None and full in memo:
        return memo[full]
    value = load()
    if memo is not None:
        memo[full] = value
    return value


@dataclass
class RuntimeLimits:
    """Ops with no low-precision kernel, and single nodes (name -> why) that must stay
    FP32, in the runtime called ``runtime``; apply-overrides pins them (source ``runtime``)
    before painting."""
    ops: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)
    runtime: str = "the target runtime"


class Adapter(ABC):
    """One framework's glue. Invariants: ``load`` never mutates the user's model;
    ``emit`` returns a model that passed the framework's own validation; ``save`` writes
    atomically and refuses to overwrite the file the model was read from."""

    name: str = ""
    #: how the last ``run_converted`` ran the model when it could not use the framework's
    #: own runtime directly (fit puts it in the report); None otherwise
    last_check_note: str | None = None
    #: True when loading the model again costs less than cloning its IR at every
    #: conversion (ONNX: the frontend only parses): fit then keeps no FP32 copy and loads
    #: again only when a failed check starts the error budget
    reloads_cheaply: bool = False

    def bind(self, config: MixedPrecisionConfig) -> None:
        """Take what running the user's model needs from ``config`` (a GraphDef's chosen
        inputs and outputs); ``fit`` calls it first, also when it reuses a cached conversion
        without loading the model."""

    @abstractmethod
    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        """The user's model (object or path) as IR."""

    def runtime_limits(self, ir_model: Model, config: MixedPrecisionConfig) -> RuntimeLimits:
        """What the runtime the converted model is for cannot run in the target dtype."""
        return RuntimeLimits()

    def native(self, model: Any) -> Any:
        """The user's model as an object of its framework (a path is loaded)."""
        return model

    @abstractmethod
    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """The converted IR as a native, validated model."""

    def prefetch_original(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> None:
        """Start the FP32 run the output check will ask ``run_original`` for, beside the
        conversion (``mixprec.background``), where that pays; ``ir_model`` is the model
        as loaded. Nothing by default; a prefetch changes no result, only when it is made."""

    def emit_unvalidated(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """The converted IR as a native model that may skip the framework's own validation
        (``validate``): for a tuning trial or a probe, which is only run. ``emit`` unless a
        framework's validation is separate and costly (torch.export: 1.4 s a trial on
        MobileNetV2); the model ``fit`` returns always passes ``validate``."""
        return self.emit(ir_model, config)

    def validate(self, native: Any, config: MixedPrecisionConfig) -> None:
        """The framework's own validation of a model ``emit_unvalidated`` made
        (ConversionError when it fails); nothing where ``emit`` validates."""

    def start_validation(self, native: Any, config: MixedPrecisionConfig) -> Callable[[], None]:
        """Begin ``validate`` of a model ``emit_unvalidated`` made; the function returned
        finishes it (ConversionError when it fails), and ``fit`` calls it before it returns
        the model or reports any other error. Done here and now by default; a framework
        whose validation is slow may run it beside the output check."""
        self.validate(native, config)
        return lambda: None

    def fingerprint(self, model: Any, digest: Fingerprint) -> None:
        """Feed a model *object* to ``digest`` for the conversion cache: the code it runs,
        its attributes and its weights (a path is hashed by its files, ``input_files``).
        Unfingerprintable when some of it cannot be hashed faithfully: the conversion is
        then not cached."""
        raise Unfingerprintable(f"mixprec does not fingerprint {self.name} model objects of type "
                                f"{type(model).__qualname__}")

    def store_native(self, native: Any, directory: Path) -> None:
        """Write into ``directory`` what ``load_native`` needs to rebuild ``native`` faster
        than emitting its IR again (the conversion cache); nothing by default."""

    def load_native(self, directory: Path, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """The native model of a cached conversion: from what ``store_native`` wrote, or
        ``emit_unvalidated(ir_model)`` where it wrote nothing. ``ir_model`` is read for
        this call alone (not the ``.ir`` fit returns): its arrays may become the native
        model's without a copy."""
        return self.emit_unvalidated(ir_model, config)

    def hash_value(self, digest: Fingerprint, value: Any, where: str, depth: int) -> bool:
        """Hash a value ``Fingerprint.plain`` does not know (this framework's tensors in
        example or sample inputs); True when it did."""
        return False

    @abstractmethod
    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """Inputs for the output check: the user's, or generated from the input types."""

    def candidate_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Iterator[Any]:
        """Sample inputs to try for the output check, most likely first (the first on
        which the FP32 model runs with finite outputs is used). The user's
        ``sample_inputs`` are the only candidate when given. Frameworks whose inputs can
        have unknown dims override this with ``mixprec.sample_inputs.shape_ladder``;
        raising SampleInputError says why no candidate can be made."""
        yield self.sample_inputs(original, ir_model, config)

    @abstractmethod
    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        """Outputs of the FP32 model, flattened, as float arrays."""

    @abstractmethod
    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        """Outputs of the converted model, flattened, as float arrays."""

    #: what a directory this framework's ``save`` writes is called in messages
    output_directory_kind: str = "model"

    def input_files(self, path: Path, external: bool = True) -> list[Path]:
        """The files reading the model at ``path`` opens (the path itself by default;
        ``external``: also files that only the model's contents name, which may cost a
        parse). Outputs must not be, hold or lie inside any of them."""
        return [path]

    def output_targets(self, path: Path) -> list[tuple[str, Path]]:
        """``(kind, path)`` of everything ``save(…, path)`` writes; kind is ``"file"`` or
        ``"dir"``. OutputPathError for a path this framework cannot write to."""
        return [("file", path)]

    @abstractmethod
    def output_names(self, ir_model: Model) -> list[str]:
        """Names of the flattened outputs, for the report."""

    @abstractmethod
    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        """Write the converted model to ``path`` atomically."""
