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


def cast_spec(framework: str) -> CastSpec:
    """The cast spec of a registered framework; the generic one for ``generic`` and for
    names no record claims."""
    if framework == "generic":
        return GENERIC_CAST
    from mixprec.frameworks import frameworks  # the registry imports this module
    record = frameworks().get(framework)
    return record.cast if record is not None else GENERIC_CAST


def is_cast(node: Node, framework: str | None = None) -> bool:
    """True for a plain cast: one input, one output, a DType target and nothing else."""
    spec = cast_spec(framework or (node.graph.root.framework if node.graph else "generic"))
    if node.op != spec.op or node.domain != spec.domain or len(node.outputs) != 1:
        return False
    if not isinstance(node.attrs.get(spec.to_attr), DType):
        return False
    allowed = {spec.to_attr, *spec.extra}
    if spec.from_attr:
        allowed.add(spec.from_attr)
    return set(node.attrs) <= allowed and sum(v is not None for v in node.inputs) == 1


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
