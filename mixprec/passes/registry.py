"""The pass registry: built-in passes by name, third-party passes through the entry-point
group ``mixprec.passes`` (each entry point loads a Pass subclass). A name may be
registered once; a second registration is a PipelineError."""
from __future__ import annotations

import importlib
import pkgutil
import logging
from importlib.metadata import entry_points

from mixprec.errors import PipelineError
from mixprec.passes.base import Pass

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mixprec.passes"
#: modules of mixprec.passes that hold no pass (each other module declares its passes once,
#: with @register_pass)
_NOT_PASSES = frozenset({"base", "common", "manager", "pipeline", "registry", "policies"})
_registry: dict[str, type[Pass]] = {}
_loaded = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add ``cls`` under ``cls.name``."""
    if not cls.name:
        raise PipelineError(f"pass class {cls.__name__} has no name")
    existing = _registry.get(cls.name)
    if existing is not None and existing is not cls:
        raise PipelineError(f"pass name {cls.name!r} is registered twice: by "
                            f"{existing.__module__}.{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}")
    _registry[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("mixprec.passes")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_PASSES and not info.ispkg:
            importlib.import_module(f"mixprec.passes.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plug-in must not break mixprec
            logger.warning("could not load pass plug-in %s: %s", ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise PipelineError(f"entry point {ep.name} = {ep.value} is not a mixprec Pass subclass")
        register_pass(cls)


def get_pass(name: str) -> type[Pass]:
    _load_all()
    try:
        return _registry[name]
    except KeyError:
        raise PipelineError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_registry))} "
                            "(see `mixprec passes`)") from None


def list_passes() -> dict[str, str]:
    """name -> one-line description, for every registered pass."""
    _load_all()
    return {name: cls.description for name, cls in sorted(_registry.items())}
