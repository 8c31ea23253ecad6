"""How a cast is spelled in the IR (each framework's spec comes from its registration
record), and helpers to read and build casts.

Frontends lower their cast op with the target dtype as a DType attribute, so that passes
can create, read and retarget casts without knowing the framework."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Node, Value

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CastSpec:
    """``op`` reads its target dtype from ``to_attr``; ``from_attr`` (if any) records the
    source dtype; ``extra`` are fixed attributes every new cast gets."""
    op: str
    to_attr: str
    from_attr: str | None = None
    domain: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: the cast of hand-built graphs (``graph.framework == "generic"``); each framework's own
#: comes from its registration record (mixprec.frameworks)
GENERIC_CAST = CastSpec("Cast", "to")


#: framework name -> its registered cast spec and the attribute names a plain cast may
#: carry; only registered names are kept (a record never changes once registered)
_SPECS: dict[str, tuple[CastSpec, frozenset[str]]] = {"generic": (GENERIC_CAST, frozenset({"to"}))}


def _spec_entry(framework: str) -> tuple[CastSpec, frozenset[str]]:
    entry = _SPECS.get(framework)
    if entry is not None:
        return entry
    from mixprec.frameworks import frameworks  # the registry imports this module
    record = frameworks().get(framework)
    if record is None:  # not cached: the name may be registered later
        return _SPECS["generic"]
    spec = record.cast
    allowed = frozenset({spec.to_attr, *spec.extra, *((spec.from_attr,) if spec.from_attr else ())})
    _SPECS[framework] = entry = (spec, allowed)
    return entry


#: the cast op of every registered framework and the generic one (None: not known yet);
#: ``frameworks.register`` forgets it. Lets ``is_cast`` answer most nodes by their op alone
_CAST_OPS: frozenset[str] | None = None


def _cast_ops() -> frozenset[str]:
    global _CAST_OPS
    from mixprec.frameworks import frameworks  # the registry imports this module
    ops = frozenset({GENERIC_CAST.op, *(record.cast.op for record in frameworks().values())})
    _CAST_OPS = ops
    return ops


def forget_cast_ops() -> None:
    """A framework was registered: its cast op joins the set on next use."""
    global _CAST_OPS
    _CAST_OPS = None


def cast_spec(framework: str) -> CastSpec:
    """The cast spec of a registered framework; the generic one for ``generic`` and for
    names no record claims."""
    return _spec_entry(framework)[0]


def is_cast(node: Node, framework: str | None = None) -> bool:
    """True for a plain cast: one input, one output, a DType target and nothing else."""
    if node.op not in (_CAST_OPS or _cast_ops()):
        return False
    if not framework:
        graph = node.graph
        if graph is None:
            framework = "generic"
        else:
            while graph.parent is not None:
                graph = graph.parent
            framework = graph.framework
    spec, allowed = _SPECS.get(framework) or _spec_entry(framework)
    if node.op != spec.op or node.domain != spec.domain or len(node._outputs) != 1:
        return False
    attrs = node.attrs
    if not isinstance(attrs.get(spec.to_attr), DType) or not allowed.issuperset(attrs):
        return False
    inputs = node._inputs
    if len(inputs) == 1:
        return inputs[0] is not None
    return sum(v is not None for v in inputs) == 1


def cast_target(node: Node) -> DType:
    spec = cast_spec(node.graph.root.framework if node.graph else "generic")
    return node.attrs[spec.to_attr]


def set_cast_target(node: Node, dtype: DType) -> None:
    """Retarget an existing cast; its output dtype follows."""
    spec = cast_spec(node.graph.root.framework)
    node.attrs[spec.to_attr] = dtype
    node.outputs[0].dtype = dtype


def make_cast(graph: Graph, value: Value, dtype: DType, name: str | None = None) -> Node:
    """A new (unlinked) cast of ``value`` to ``dtype`` whose output is named
    ``<value>.<dtype>`` (made unique within the graph tree)."""
    spec = cast_spec(graph.root.framework)
    out_name = graph.unique_name(name or f"{value.name}.{dtype.value}")
    attrs: dict[str, Any] = dict(spec.extra)
    attrs[spec.to_attr] = dtype
    if spec.from_attr:
        attrs[spec.from_attr] = value.dtype
    return Node(spec.op, [value], [Value(out_name, dtype, value.shape)], attrs, domain=spec.domain)
