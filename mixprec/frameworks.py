"""The framework registry: one record per framework, built-ins and third-party alike,
found through the entry-point group ``mixprec.frameworks`` (each entry point loads a
``Framework``). A fifth framework is a package of its own that exposes one record; no file
of mixprec changes.

Invariants: names are unique (a second record with a taken name is a ConfigError naming
both); records are loaded lazily, on first use, and loading one imports no deep-learning
framework (the record names its adapter as ``"module:Class"``, imported only when a model
of that framework is converted). This module names no framework itself."""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from mixprec.errors import ConfigError, UnsupportedModelError
from mixprec.ir.cast import CastSpec, forget_cast_ops

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mixprec.frameworks"


@dataclass(frozen=True)
class Framework:
    """What mixprec needs to know about a framework before importing it.

    - ``name``: the IR's ``graph.framework`` and the key of everything below;
    - ``suffixes``: model file suffixes it reads (``".onnx"``); ``directory_marker``: a
      file whose presence makes a directory one of its models (``"saved_model.pb"``);
    - ``module_roots``: top-level module names of its model objects' classes;
    - ``cast``: how its cast op is spelled in the IR;
    - ``policy``: a built-in policy name or the path of a policy TOML file;
    - ``adapter``: ``"module:Class"`` of its ``mixprec.runtimes.base.Adapter``;
    - ``timer``: ``"module:Class"`` of its region timer for ``objective="performance"``
      (``mixprec.profiling.timing.RegionTimer``, built as ``Class(adapter, original,
      loaded_ir, config)``), imported only when a model of it is profiled; None: no timer,
      nothing can be measured, so the objective keeps the model FP32;
    - ``low_precision_note``: set when its runtime has no fast low-precision kernels on
      CPU: why (``{p}`` is replaced by the precision, "BF16"); the objective then keeps
      the model FP32 without timing anything and the report carries this note."""
    name: str
    suffixes: tuple[str, ...]
    module_roots: tuple[str, ...]
    cast: CastSpec
    policy: str
    adapter: str
    directory_marker: str | None = None
    description: str = ""
    timer: str | None = None
    low_precision_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def load_adapter(self) -> Any:
        """A new instance of the framework's adapter (imports the framework)."""
        return _attribute(self.adapter)()

    def load_timer(self) -> Any:
        """The timer class named by ``timer`` (imports the framework), or None."""
        return _attribute(self.timer) if self.timer else None


def _attribute(path: str) -> Any:
    """The object a ``"module:attr"`` path names."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_records: dict[str, Framework] | None = None
_origins: dict[str, str] = {}


def frameworks() -> dict[str, Framework]:
    """Every registered framework by name (entry points loaded once, on first use)."""
    global _records
    if _records is None:
        _records = {}
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.value):
            try:
                record = ep.load()
            except Exception as exc:  # a broken plug-in must not break the other frameworks
                logger.warning("could not load framework plug-in %s: %s", ep.value, exc)
                continue
            if not isinstance(record, Framework):
                raise ConfigError(f"entry point {ep.name} = {ep.value} in group {ENTRY_POINT_GROUP} is not a "
                                  "mixprec.frameworks.Framework record")
            register(record, ep.value)
    return _records


def register(record: Framework, origin: str) -> None:
    """Add ``record`` (``origin`` names where it came from, for messages); a ConfigError
    when another record already has its name."""
    records = _records if _records is not None else frameworks()
    if record.name in records and records[record.name] != record:
        raise ConfigError(f"framework {record.name!r} is registered twice: by {_origins.get(record.name)} "
                          f"and {origin}")
    records[record.name] = record
    _origins[record.name] = origin
    forget_cast_ops()


def get(name: str) -> Framework:
    try:
        return frameworks()[name]
    except KeyError:
        raise UnsupportedModelError(f"no framework {name!r} is registered; registered: "
                                    f"{', '.join(sorted(frameworks())) or 'none'}") from None


def cast_specs() -> dict[str, CastSpec]:
    """Framework name -> its cast spec."""
    return {name: record.cast for name, record in frameworks().items()}


def framework_of(model: Any) -> Framework:
    """The framework a model object or path belongs to, without importing any framework:
    a path by its suffix (or a directory by its marker file), an object by the top-level
    module of a class in its MRO (a tuple by its first item, MXNet's (symbol, args, aux))."""
    records = frameworks()
    if isinstance(model, (str, os.PathLike)):
        return _by_path(Path(model), records)
    if isinstance(model, tuple) and model:
        model = model[0]
    for cls in type(model).__mro__:
        root = (cls.__module__ or "").split(".")[0]
        for record in records.values():
            if root in record.module_roots:
                return record
    names = ", ".join(f"{r.name} ({', '.join(r.module_roots)})" for r in records.values())
    raise UnsupportedModelError(f"cannot tell which framework a {type(model).__module__}.{type(model).__name__} "
                                f"belongs to; registered frameworks and their model modules: {names}; "
                                "or pass a model file path")


def _by_path(path: Path, records: dict[str, Framework]) -> Framework:
    from mixprec.errors import ModelLoadError
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if path.is_dir():
        for record in records.values():
            if record.directory_marker and (path / record.directory_marker).exists():
                return record
    suffix = path.suffix.lower()
    for record in records.values():
        if suffix in record.suffixes:
            return record
    known = "; ".join(record.description or f"{record.name}: {', '.join(record.suffixes)}"
                      for record in records.values())
    raise UnsupportedModelError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; mixprec reads {known}")

