"""Pipelines as strings: ``"infer-dtypes,assign-precision{precision=fp16,policy=onnx}"``.

Option values are parsed as JSON where possible (numbers, true/false, lists, quoted
strings), else taken as bare strings; ``[a,b]`` lists of bare words are allowed."""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from mixprec.errors import PipelineError
from mixprec.passes.base import Pass
from mixprec.passes.manager import PassManager
from mixprec.passes.registry import get_pass

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE = ("infer-dtypes,mark-shape-subgraphs,pin-input-norms,pin-existing-fp32,apply-overrides,assign-precision,"
                    "insert-casts,fold-casts,convert-constants,keep-io-types")


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced brackets in pipeline {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise PipelineError(f"unbalanced brackets in pipeline {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        return [_value(t) for t in _split_top(text[1:-1], ",")]
    return text


def split_items(spec: str) -> list[str]:
    """``"a,b{x=1,y=2}"`` -> ``["a", "b{x=1,y=2}"]``."""
    return _split_top(spec, ",")


def parse_pipeline(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"a,b{x=1}"`` -> ``[("a", {}), ("b", {"x": 1})]``."""
    out = []
    for item in _split_top(spec, ","):
        name, opts = item, {}
        if "{" in item:
            if not item.endswith("}"):
                raise PipelineError(f"bad pipeline element {item!r}: options go in braces at the end")
            name, body = item[:-1].split("{", 1)
            for pair in _split_top(body, ","):
                if "=" not in pair:
                    raise PipelineError(f"bad option {pair!r} in {item!r}: expected key=value")
                key, val = pair.split("=", 1)
                opts[key.strip().replace("-", "_")] = _value(val)
        out.append((name.strip(), opts))
    if not out:
        raise PipelineError("empty pipeline")
    return out


def make_pass(name: str, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> Pass:
    """Instantiate a registered pass. ``options`` must all exist; ``defaults`` (shared
    options such as precision) apply only to passes that have such a field."""
    cls = get_pass(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - fields
    if unknown:
        raise PipelineError(f"pass {name!r} has no option {sorted(unknown)}; its options: "
                            f"{sorted(fields) or 'none'}")
    kwargs = {k: v for k, v in (defaults or {}).items() if k in fields}
    kwargs.update(options)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"bad options for pass {name!r}: {exc}") from None


def build_pipeline(spec: str = DEFAULT_PIPELINE, verify: bool = True, dump_dir: str | None = None,
                   **defaults: Any) -> PassManager:
    """A PassManager for ``spec``; keyword ``defaults`` go to every pass that takes them."""
    passes = [make_pass(name, opts, defaults) for name, opts in parse_pipeline(spec)]
    return PassManager(passes, verify=verify, dump_dir=dump_dir)
