"""The IR's text form: deterministic, parseable, ``dump(parse(dump(g))) == dump(g)``.

```
graph main<onnx>(%x: f32[1,3]) -> (%y: f32[1,4]) {
  const %w: f32[3,4]
  const %shape: i64[2] = [1, 4]
  %x.bf16: bf16[1,3] = Cast(%x) {to=bf16}  # bf16 cast: ...
  %m: bf16[1,4] = MatMul(%x.bf16, %w.bf16) @matmul0  # bf16 allow: allow list
  return %y
}
```
Rules: attributes print sorted by key; a node's ``@name`` prints only when it differs
from its first output's name; ``_`` marks an omitted optional input; a constant's data
prints inline when it has at most 8 elements, otherwise it is elided (and parses back as
a constant without data); ``# <precision> <category>: <reason>`` carries the node's
precision decision. A type without brackets has unknown rank; ``?`` is an unknown dim.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixprec.errors import ParseError
from mixprec.ir.dtypes import DType
from mixprec.ir.gcpause import paused_gc
from mixprec.ir.graph import Graph, Node, Value

logger = logging.getLogger(__name__)
_DTYPE_NAMES = {d.value: d for d in DType}

INLINE_ELEMENTS = 8
_BARE = re.compile(r"[A-Za-z0-9_.\-/]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.:]*\Z")
_KEYWORDS = {"true", "false", "none", "inf", "nan", "graph", "tensor", "opaque", "const", "return", "_"}


@dataclass(frozen=True)
class ElidedTensor:
    """A tensor attribute whose data the text did not carry (parsed from an elided dump)."""
    dtype: DType
    shape: tuple


@dataclass(frozen=True)
class Opaque:
    """An attribute value the text cannot express; kept as its repr."""
    text: str


# ------------------------------------------------------------------------------- dump ---
def _name(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def _ident(text: str) -> str:
    return text if _IDENT.match(text) and text not in _KEYWORDS and text not in _DTYPE_NAMES else json.dumps(text)


def _dim(d: Any) -> str:
    if d is None:
        return "?"
    if isinstance(d, (int, np.integer)):
        return str(int(d))
    return _ident(str(d))


def format_type(dtype: DType, shape) -> str:
    if shape is None:
        return dtype.value
    return f"{dtype.value}[{','.join(_dim(d) for d in shape)}]"


def _float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = repr(float(x))
    return text if any(c in text for c in ".en") else text + ".0"


def _scalar(x: Any, dtype: DType | None = None) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)) and not (dtype is not None and dtype.is_float):
        return str(int(x))
    if isinstance(x, (float, np.floating, int)):
        return _float(float(x))
    if isinstance(x, bytes):
        return json.dumps(x.decode("utf-8", "backslashreplace"))
    return json.dumps(str(x))


def _array_literal(data: np.ndarray, dtype: DType) -> str:
    def rec(obj):
        if isinstance(obj, list):
            return "[" + ", ".join(rec(o) for o in obj) + "]"
        return _scalar(obj, dtype)
    arr = np.asarray(data)
    if dtype.is_float:
        arr = arr.astype(np.float64)
    return rec(arr.tolist())


def format_attr(value: Any, indent: str) -> str:
    if value is None:
        return "none"
    if isinstance(value, Graph):
        return _dump_graph(value, indent, nested=True)
    if isinstance(value, DType):
        return value.value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v, indent) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {format_attr(v, indent)}"
                               for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(value, np.ndarray):
        dtype = DType.from_numpy(value.dtype)
        head = f"tensor<{format_type(dtype, value.shape)}>"
        if value.size <= INLINE_ELEMENTS:
            return head + _array_literal(value, dtype)
        return head + "..."
    if isinstance(value, ElidedTensor):
        return f"tensor<{format_type(value.dtype, value.shape)}>..."
    if isinstance(value, Opaque):
        return f"opaque({json.dumps(value.text)})"
    if isinstance(value, (bool, int, float, str, bytes, np.generic)):
        return _scalar(value)
    return f"opaque({json.dumps(repr(value))})"


def _format_value_decl(value: Value) -> str:
    return f"%{_name(value.name)}: {format_type(value.dtype, value.shape)}"


def format_node(node: Node, indent: str = "") -> str:
    outs = ", ".join(_format_value_decl(v) for v in node.outputs) or "()"
    ins = ", ".join("_" if v is None else f"%{_name(v.name)}" for v in node.inputs)
    line = f"{outs} = {_ident(node.qualified_op)}({ins})"
    if node.attrs:
        line += " {" + ", ".join(f"{_ident(k)}={format_attr(node.attrs[k], indent)}"
                                 for k in sorted(node.attrs)) + "}"
    default_name = node.outputs[0].name if node.outputs else node.op
    if node.name != default_name:
        line += f" @{_name(node.name)}"
    precision = node.meta.get("precision")
    if precision:
        line += f"  # {precision} {node.meta.get('category') or '-'}"
        reason = node.meta.get("reason")
        if reason:
            line += ": " + " ".join(str(reason).split())
    return line


def _dump_graph(graph: Graph, indent: str, nested: bool) -> str:
    inner = indent + "  "
    fw = "" if nested else f"<{graph.framework}>"
    params = ", ".join(_format_value_decl(v) for v in graph.inputs)
    rets = ", ".join(_format_value_decl(v) for v in graph.outputs)
    lines = [f"graph {_ident(graph.name)}{fw}({params}) -> ({rets}) {{"]
    for const in graph.constants.values():
        line = f"{inner}const {_format_value_decl(const)}"
        if const.data is not None and np.size(const.data) <= INLINE_ELEMENTS and const.dtype != DType.UNKNOWN:
            line += " = " + _array_literal(const.data, const.dtype)
        lines.append(line)
    for node in graph.iter_nodes():
        lines.append(inner + format_node(node, inner))
    lines.append(f"{inner}return " + ", ".join(f"%{_name(v.name)}" for v in graph.outputs)
                 if graph.outputs else f"{inner}return")
    lines.append(indent + "}")
    return "\n".join(lines)


def dump(graph: Graph) -> str:
    """The graph as deterministic text (a trailing newline included)."""
    with paused_gc():
        return _dump_graph(graph, "", nested=False) + "\n"


# ------------------------------------------------------------------------------ parse ---
_TOKEN = re.compile(r"""
   (?P<ws>[ \t\r\n]+)
 | (?P<comment>\#[^\n]*)
 | (?P<value>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-/]+))
 | (?P<at>@(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-/]+))
 | (?P<string>"(?:[^"\\]|\\.)*")
 | (?P<arrow>->)
 | (?P<number>-?(?:inf\b|nan\b|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))
 | (?P<ellipsis>\.\.\.)
 | (?P<ident>[A-Za-z_][A-Za-z0-9_.:]*)
 | (?P<punct>[(){}\[\],=<>?:])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        for m in _TOKEN.finditer(text):
            if m.start() != pos:
                break
            pos = m.end()
            kind = m.lastgroup
            if kind != "ws":
                self.toks.append((kind, m.group(), m.start()))
        if pos != len(text):
            self._fail(pos, f"unexpected character {text[pos]!r}")
        self.i = 0

    def _fail(self, pos: int, msg: str):
        line = self.text.count("\n", 0, pos) + 1
        raise ParseError(f"line {line}: {msg}")

    def peek(self, offset: int = 0) -> tuple[str, str, int]:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else ("eof", "", len(self.text))

    def next(self) -> tuple[str, str, int]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        kind, val, pos = self.next()
        if val != text:
            self._fail(pos, f"expected {text!r}, found {val or 'end of text'!r}")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False

    def fail_here(self, msg: str):
        self._fail(self.peek()[2], msg)


def _unquote(text: str) -> str:
    return json.loads(text) if text.startswith('"') else text


class _Parser:
    def __init__(self, text: str) -> None:
        self.t = _Tokens(text)

    def graph(self, scope: dict[str, Value] | None, parent: Graph | None) -> Graph:
        t = self.t
        t.expect("graph")
        kind, name, _ = t.next()
        if kind not in ("ident", "string", "number"):
            t.fail_here("expected a graph name")
        framework = parent.framework if parent is not None else "generic"
        if t.accept("<"):
            framework = t.next()[1]
            t.expect(">")
        graph = Graph(_unquote(name), framework)
        local: dict[str, Value] = {}
        lookup = _Scope(local, scope)
        t.expect("(")
        while not t.accept(")"):
            value = self.decl()
            self._define(lookup, value)
            graph.add_input(value)
            t.accept(",")
        t.expect("->")
        t.expect("(")
        while not t.accept(")"):
            self.ref_name()
            if t.accept(":"):
                self.type_()
            t.accept(",")
        t.expect("{")
        while True:
            kind, val, pos = t.peek()
            if val == "const":
                t.next()
                value = self.decl()
                if t.accept("="):
                    literal = self.literal(graph)
                    value.data = np.array(literal, dtype=value.dtype.to_numpy()) \
                        if value.dtype != DType.BFLOAT16 else np.array(literal, dtype=np.float64).astype(value.dtype.to_numpy())
                self._define(lookup, value)
                graph.add_constant(value)
            elif val == "return":
                t.next()
                while t.peek()[0] == "value":
                    graph.outputs.append(self._resolve(lookup, self.ref_name()))
                    t.accept(",")
                t.expect("}")
                return graph
            elif kind == "value" or val == "(":
                self.node(graph, lookup)
            else:
                t.fail_here(f"expected a statement, found {val or 'end of text'!r}")

    def _define(self, scope: "_Scope", value: Value) -> None:
        if value.name in scope.local:
            self.t.fail_here(f"%{value.name} is defined twice")
        scope.local[value.name] = value

    def _resolve(self, scope: "_Scope", name: str) -> Value:
        value = scope.get(name)
        if value is None:
            self.t.fail_here(f"%{name} is used before it is defined")
        return value

    def ref_name(self) -> str:
        kind, val, pos = self.t.next()
        if kind != "value":
            self.t._fail(pos, f"expected a %value, found {val!r}")
        return _unquote(val[1:])

    def decl(self) -> Value:
        name = self.ref_name()
        self.t.expect(":")
        dtype, shape = self.type_()
        return Value(name, dtype, shape)

    def type_(self):
        t = self.t
        kind, val, pos = t.next()
        if val not in _DTYPE_NAMES:
            t._fail(pos, f"unknown dtype {val!r}")
        dtype = _DTYPE_NAMES[val]
        if not t.accept("["):
            return dtype, None
        dims: list = []
        while not t.accept("]"):
            kind, val, pos = t.next()
            if kind == "number":
                dims.append(int(val))
            elif val == "?":
                dims.append(None)
            elif kind in ("ident", "string"):
                dims.append(_unquote(val))
            else:
                t._fail(pos, f"bad dimension {val!r}")
            t.accept(",")
        return dtype, tuple(dims)

    def node(self, graph: Graph, scope: "_Scope") -> None:
        t = self.t
        outputs: list[Value] = []
        if t.accept("("):
            t.expect(")")
        else:
            while True:
                outputs.append(self.decl())
                if not t.accept(","):
                    break
        t.expect("=")
        kind, op, pos = t.next()
        if kind not in ("ident", "string"):
            t._fail(pos, f"expected an op name, found {op!r}")
        op = _unquote(op)
        domain = ""
        if "::" in op:
            domain, op = op.rsplit("::", 1)
        t.expect("(")
        inputs: list[Value | None] = []
        while not t.accept(")"):
            if t.accept("_"):
                inputs.append(None)
            else:
                inputs.append(self._resolve(scope, self.ref_name()))
            t.accept(",")
        attrs: dict[str, Any] = {}
        if t.accept("{"):
            while not t.accept("}"):
                key = _unquote(t.next()[1])
                t.expect("=")
                attrs[key] = self.literal(graph, scope)
                t.accept(",")
        name = None
        if t.peek()[0] == "at":
            name = _unquote(t.next()[1][1:])
        node = Node(op, inputs, outputs, attrs, domain=domain, name=name)
        if t.peek()[0] == "comment":
            _apply_comment(node, t.next()[1])
        for value in outputs:
            self._define(scope, value)
        graph.append(node)

    def literal(self, graph: Graph, scope: "_Scope | None" = None) -> Any:
        t = self.t
        kind, val, pos = t.peek()
        if kind == "number":
            t.next()
            if val in ("inf", "-inf", "nan", "-nan"):
                return float(val)
            return float(val) if any(c in val for c in ".eE") else int(val)
        if kind == "string":
            t.next()
            return json.loads(val)
        if val == "[":
            t.next()
            items = []
            while not t.accept("]"):
                items.append(self.literal(graph, scope))
                t.accept(",")
            return items
        if val == "{":
            t.next()
            items = {}
            while not t.accept("}"):
                key = json.loads(t.next()[1])
                t.expect(":")
                items[key] = self.literal(graph, scope)
                t.accept(",")
            return items
        if kind == "ident":
            if val in ("true", "false"):
                t.next()
                return val == "true"
            if val == "none":
                t.next()
                return None
            if val in _DTYPE_NAMES:
                t.next()
                return _DTYPE_NAMES[val]
            if val == "graph":
                return self.graph(scope, graph)
            if val == "tensor":
                t.next()
                t.expect("<")
                dtype, shape = self.type_()
                t.expect(">")
                if t.accept("..."):
                    return ElidedTensor(dtype, shape)
                data = self.literal(graph, scope)
                arr = np.array(data, dtype=np.float64 if dtype.is_float else dtype.to_numpy())
                return arr.astype(dtype.to_numpy()).reshape(shape)
            if val == "opaque":
                t.next()
                t.expect("(")
                text = json.loads(t.next()[1])
                t.expect(")")
                return Opaque(text)
        t._fail(pos, f"bad attribute value {val!r}")


class _Scope:
    __slots__ = ("local", "outer")

    def __init__(self, local: dict[str, Value], outer: "dict | _Scope | None") -> None:
        self.local = local
        self.outer = outer

    def get(self, name: str) -> Value | None:
        value = self.local.get(name)
        if value is None and self.outer is not None:
            return self.outer.get(name)
        return value


_COMMENT = re.compile(r"#\s*(\S+)\s+([^\s:]+)(?::\s*(.*))?$")


def _apply_comment(node: Node, comment: str) -> None:
    m = _COMMENT.match(comment.rstrip())
    if not m:
        return
    node.meta["precision"] = m.group(1)
    if m.group(2) != "-":
        node.meta["category"] = m.group(2)
    if m.group(3):
        node.meta["reason"] = m.group(3)


def parse(text: str) -> Graph:
    """Parse IR text (as written by :func:`dump`) into a Graph; raises ParseError."""
    with paused_gc():
        parser = _Parser(text)
        graph = parser.graph(None, None)
    if parser.t.peek()[0] != "eof":
        parser.t.fail_here("text after the end of the graph")
    return graph
