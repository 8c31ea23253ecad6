"""The pass contract: a pass is a dataclass with a ``name`` and ``run(graph) -> PassResult``.

A pass may rewrite the graph in place and returns the graph it produced plus whether it
changed anything; the PassManager verifies the IR after every pass that reports a change.
Options are dataclass fields, so ``build_pipeline("pass{opt=1}")`` can set them.

A pass states what it needs and what it guarantees: ``requires(graph)`` and
``ensures(graph)`` return None when the condition holds, else one line saying what does
not (defaults: nothing). The manager checks ``requires`` before the pass runs
(PreconditionError naming the pass) and ``ensures`` after a run that changed something
(PostconditionError naming the pass), so the order passes depend on is declared by the
passes themselves."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
import logging
from dataclasses import dataclass
from typing import Callable, ClassVar

from mixprec.ir.graph import Graph

logger = logging.getLogger(__name__)


@dataclass
class PassResult:
    graph: Graph
    modified: bool


@dataclass
class Pass(ABC):
    """Base class of every pass. Subclasses are dataclasses whose fields are options."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: False for passes that only record decisions in ``node.meta``; the PassManager
    #: does not re-verify the IR after them (there is nothing structural to break).
    changes_structure: ClassVar[bool] = True

    @abstractmethod
    def run(self, graph: Graph) -> PassResult:
        """Rewrite ``graph`` (in place or not) and say whether anything changed."""

    def requires(self, graph: Graph) -> str | None:
        """None when ``graph`` is fit for this pass, else what is missing."""
        return None

    def ensures(self, graph: Graph) -> str | None:
        """None when ``graph`` holds what this pass guarantees after it ran, else what not."""
        return None

    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def __str__(self) -> str:
        opts = ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != _default(f))
        return f"{self.name}{{{opts}}}" if opts else self.name


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def function_pass(name: str, description: str = "", register: bool = True) -> Callable[[Callable[[Graph], bool]], type[Pass]]:
    """Wrap ``fn(graph) -> bool`` (True when it changed the graph) as a Pass class,
    registered under ``name`` unless ``register=False``."""
    def wrap(fn: Callable[[Graph], bool]) -> type[Pass]:
        def run(self, graph: Graph) -> PassResult:
            return PassResult(graph, bool(fn(graph)))
        cls = dataclass(type(fn.__name__, (Pass,), {
            "name": name, "description": description or (fn.__doc__ or "").strip().split("\n")[0],
            "run": run, "__module__": fn.__module__, "__annotations__": {}}))
        if register:
            from mixprec.passes.registry import register_pass
            register_pass(cls)
        return cls
    return wrap
