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
precision decision, ``# <precision> <category> pin=<source>: <reason>`` a decision that a
pin (mixprec.ir.pins) made, and ``# pin=<source> <precision>: <reason>`` a pin not yet
painted. A type without brackets has unknown rank; ``?`` is an unknown dim.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from mixprec.errors import ParseError
from mixprec.ir.dtypes import DType
from mixprec.ir.gcpause import paused_gc
from mixprec.ir.pins import SOURCES, Pin, pin_of
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
    pin = pin_of(node)
    if precision:
        line += f"  # {precision} {node.meta.get('category') or '-'}"
        if pin is not None:
            line += f" pin={pin.source}"
        reason = node.meta.get("reason")
        if reason:
            line += ": " + " ".join(str(reason).split())
    elif pin is not None:
        line += f"  # pin={pin.source} {pin.precision}: " + " ".join(pin.reason.split())
    return line


def _dump_graph(graph: Graph, indent: str, nested: bool) -> str:
    inner = indent + "  "
    fw = "" if nested else f"<{graph.framework}>"
    params = ", ".join(_format_value_decl(v) for v in graph.inputs)
    rets = ", ".join(_format_value_decl(v) for v in graph.outputs)
    lines = [f"graph {_ident(graph.name)}{fw}({params}) -> ({rets}) {{"]
    for const in graph.constants.values():
        line = f"{inner}const {_format_value_decl(const)}"
        if const.storage is not None and np.size(const.storage) <= INLINE_ELEMENTS and const.dtype != DType.UNKNOWN:
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
        raise ParseError(f"{self.where(pos)}: {msg}")

    def where(self, pos: int) -> str:
        """``line L, column C`` (both 1-based) of character offset ``pos``."""
        line = self.text.count("\n", 0, pos) + 1
        column = pos - self.text.rfind("\n", 0, pos)
        return f"line {line}, column {column}"

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

    def unquote(self, tok: tuple[str, str, int], skip: int = 0) -> str:
        """The text of a bare or quoted name token (after ``skip`` sigil characters);
        a bad escape in a quoted one is a ParseError at the token."""
        text = tok[1][skip:]
        if not text.startswith('"'):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:  # a bad escape, a raw control character
            reason = exc.msg.removesuffix(" at").lower()
            self._fail(tok[2] + skip + exc.pos, f"bad string {text[:40]!r}: {reason}; write strings as JSON does")


#: deepest nesting of lists, tables and graphs the parser accepts; deeper text is refused
#: (real IR nests a few levels: tensor rank, If/Loop bodies), which also keeps the
#: recursive parser far from Python's recursion limit
MAX_NESTING = 64
#: largest dimension the text may declare (an int64 shape entry)
MAX_DIM = 2**63 - 1
_DIM = re.compile(r"\d+\Z")
_INT_RANGES = {DType.INT4: (-8, 7), DType.UINT4: (0, 15)}


class _Parser:
    """Recursive-descent parser over :class:`_Tokens`. Invariant: every failure is a
    ParseError naming the line and column; nesting never exceeds MAX_NESTING."""

    def __init__(self, text: str) -> None:
        self.t = _Tokens(text)
        self.depth = 0

    def enter(self, what: str) -> None:
        """One level deeper into a list, table or graph; refused past MAX_NESTING."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.t.fail_here(f"{what} nested more than {MAX_NESTING} levels deep; the IR text is "
                             "malformed (real models nest a few levels)")

    def leave(self) -> None:
        self.depth -= 1

    def graph(self, scope: "_Scope | None", parent: Graph | None) -> Graph:
        t = self.t
        self.enter("graph")
        t.expect("graph")
        tok = t.next()
        if tok[0] not in ("ident", "string", "number"):
            t._fail(tok[2], "expected a graph name")
        framework = parent.framework if parent is not None else "generic"
        if t.accept("<"):
            tok_fw = t.next()
            if tok_fw[0] not in ("ident", "string"):
                t._fail(tok_fw[2], f"expected a framework name after '<', found {tok_fw[1] or 'end of text'!r}")
            framework = t.unquote(tok_fw)
            t.expect(">")
        graph = Graph(t.unquote(tok), framework)
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
            if val == "const" and kind == "ident":
                t.next()
                self.const(graph, lookup)
            elif val == "return" and kind == "ident":
                t.next()
                while t.peek()[0] == "value":
                    graph.outputs.append(self._resolve(lookup, self.ref_name()))
                    t.accept(",")
                t.expect("}")
                self.leave()
                return graph
            elif kind == "value" or val == "(":
                self.node(graph, lookup)
            else:
                t.fail_here(f"expected a statement, found {val or 'end of text'!r}")

    def const(self, graph: Graph, scope: "_Scope") -> None:
        t = self.t
        start = t.peek()[2]
        value = self.decl()
        if t.accept("="):
            pos = t.peek()[2]
            value.data = self.array(self.literal(graph), value.dtype, value.shape, pos, f"constant %{value.name}")
        self._define(scope, value, start)
        graph.add_constant(value)

    def array(self, literal: Any, dtype: DType, shape: Any, pos: int, what: str) -> np.ndarray:
        """``literal`` (nested lists of scalars) as an array of ``dtype`` whose shape
        agrees with the declared ``shape`` (``?``/symbolic dims match any size)."""
        try:
            return _to_array(literal, dtype, shape)
        except ValueError as exc:
            self.t._fail(pos, f"{what}: {exc}")

    def _define(self, scope: "_Scope", value: Value, pos: int | None = None) -> None:
        if value.name in scope.local:
            self.t._fail(self.t.peek()[2] if pos is None else pos, f"%{value.name} is defined twice")
        scope.local[value.name] = value

    def _resolve(self, scope: "_Scope", name: str) -> Value:
        value = scope.get(name)
        if value is None:
            self.t._fail(self.t.peek(-1)[2], f"%{name} is used before it is defined")
        return value

    def ref_name(self) -> str:
        tok = self.t.next()
        if tok[0] != "value":
            self.t._fail(tok[2], f"expected a %value, found {tok[1] or 'end of text'!r}")
        return self.t.unquote(tok, skip=1)

    def decl(self) -> Value:
        name = self.ref_name()
        self.t.expect(":")
        dtype, shape = self.type_()
        return Value(name, dtype, shape)

    def type_(self):
        t = self.t
        kind, val, pos = t.next()
        if kind != "ident" or val not in _DTYPE_NAMES:
            t._fail(pos, f"unknown dtype {val or 'end of text'!r}")
        dtype = _DTYPE_NAMES[val]
        if not t.accept("["):
            return dtype, None
        dims: list = []
        while not t.accept("]"):
            tok = t.next()
            kind, val, pos = tok
            if kind == "number":
                dims.append(self.dim(val, pos))
            elif val == "?":
                dims.append(None)
            elif kind in ("ident", "string"):
                dims.append(t.unquote(tok))
            else:
                t._fail(pos, f"bad dimension {val or 'end of text'!r}")
            t.accept(",")
        return dtype, tuple(dims)

    def dim(self, text: str, pos: int) -> int:
        if not _DIM.match(text):
            self.t._fail(pos, f"bad dimension {text!r}: a dimension is a non-negative integer, ? "
                              "(unknown) or a symbolic name")
        value = int(text)
        if value > MAX_DIM:
            self.t._fail(pos, f"dimension {text[:30]} is larger than {MAX_DIM} (int64)")
        return value

    def node(self, graph: Graph, scope: "_Scope") -> None:
        t = self.t
        start = t.peek()[2]
        outputs: list[Value] = []
        if t.accept("("):
            t.expect(")")
        else:
            while True:
                outputs.append(self.decl())
                if not t.accept(","):
                    break
        t.expect("=")
        tok = t.next()
        if tok[0] not in ("ident", "string"):
            t._fail(tok[2], f"expected an op name, found {tok[1] or 'end of text'!r}")
        op = t.unquote(tok)
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
                key_tok = t.next()
                if key_tok[0] not in ("ident", "string"):
                    t._fail(key_tok[2], f"expected an attribute name, found {key_tok[1] or 'end of text'!r}")
                key = t.unquote(key_tok)
                t.expect("=")
                attrs[key] = self.literal(graph, scope)
                t.accept(",")
        name = None
        if t.peek()[0] == "at":
            name = t.unquote(t.next(), skip=1)
        seen: set[str] = set()
        for value in outputs:
            if value.name in seen:
                t._fail(start, f"%{value.name} is defined twice")
            seen.add(value.name)
        node = Node(op, inputs, outputs, attrs, domain=domain, name=name)
        if t.peek()[0] == "comment":
            _apply_comment(node, t.next()[1])
        for value in outputs:
            self._define(scope, value, start)
        graph.append(node)

    def literal(self, graph: Graph, scope: "_Scope | None" = None) -> Any:
        t = self.t
        tok = t.peek()
        kind, val, pos = tok
        if kind == "number":
            t.next()
            if val in ("inf", "-inf", "nan", "-nan"):
                return float(val)
            return float(val) if any(c in val for c in ".eE") else int(val)
        if kind == "string":
            t.next()
            return t.unquote(tok)
        if val == "[":
            t.next()
            self.enter("list")
            items = []
            while not t.accept("]"):
                items.append(self.literal(graph, scope))
                t.accept(",")
            self.leave()
            return items
        if val == "{":
            t.next()
            self.enter("table")
            items = {}
            while not t.accept("}"):
                key_tok = t.next()
                if key_tok[0] != "string":
                    t._fail(key_tok[2], f"a table key is a quoted string, found {key_tok[1] or 'end of text'!r}")
                key = t.unquote(key_tok)
                t.expect(":")
                items[key] = self.literal(graph, scope)
                t.accept(",")
            self.leave()
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
                return self.tensor(graph, scope)
            if val == "opaque":
                t.next()
                t.expect("(")
                text_tok = t.next()
                if text_tok[0] != "string":
                    t._fail(text_tok[2], f"opaque(...) holds a quoted string, found {text_tok[1] or 'end of text'!r}")
                text = t.unquote(text_tok)
                t.expect(")")
                return Opaque(text)
        t._fail(pos, f"bad attribute value {val or 'end of text'!r}")

    def tensor(self, graph: Graph, scope: "_Scope | None") -> Any:
        t = self.t
        t.next()
        t.expect("<")
        dtype, shape = self.type_()
        t.expect(">")
        if t.accept("..."):
            return ElidedTensor(dtype, shape)
        pos = t.peek()[2]
        return self.array(self.literal(graph, scope), dtype, shape, pos, "tensor attribute")


def _literal_shape(data: Any) -> tuple[int, ...]:
    """The shape of nested lists ``data``; ValueError when they are ragged."""
    shape: list[int] = []
    level = data
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]

    def check(obj: Any, depth: int) -> None:
        if depth < len(shape):
            if not isinstance(obj, list) or len(obj) != shape[depth]:
                raise ValueError("the data is ragged (nested lists of different lengths)")
            for item in obj:
                check(item, depth + 1)
        elif isinstance(obj, list):
            raise ValueError("the data is ragged (nested lists of different depths)")
    check(data, 0)
    return tuple(shape)


def _leaves(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _leaves(item)
    else:
        yield data


def _check_leaf(x: Any, dtype: DType) -> None:
    """ValueError unless scalar ``x`` is a value of ``dtype`` as the text writes it."""
    if dtype == DType.STRING:
        ok = isinstance(x, str)
    elif dtype == DType.BOOL:
        ok = isinstance(x, bool) or (type(x) is int and x in (0, 1))
    elif dtype in (DType.COMPLEX64, DType.COMPLEX128):  # dump writes complex numbers as "(1+2j)"
        ok = (isinstance(x, (int, float)) and not isinstance(x, bool)) or (isinstance(x, str) and _is_complex(x))
    elif dtype.is_float:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool)
    else:
        ok = type(x) is int
        if ok:
            lo, hi = _int_range(dtype)
            if not lo <= x <= hi:
                raise ValueError(f"{x} is outside the range of {dtype.value} ({lo}..{hi})")
    if not ok:
        shown = json.dumps(x) if isinstance(x, (str, bool)) or x is None else repr(x)
        raise ValueError(f"{shown[:40]} is not a {dtype.value} value")


def _is_complex(text: str) -> bool:
    try:
        complex(text)
    except ValueError:
        return False
    return True


def _complex_leaves(data: Any) -> Any:
    if isinstance(data, list):
        return [_complex_leaves(item) for item in data]
    return complex(data)


def _int_range(dtype: DType) -> tuple[int, int]:
    if dtype in _INT_RANGES:
        return _INT_RANGES[dtype]
    info = np.iinfo(dtype.to_numpy())
    return int(info.min), int(info.max)


def _to_array(literal: Any, dtype: DType, shape: Any) -> np.ndarray:
    """See :meth:`_Parser.array`; ValueError says what does not fit."""
    if dtype == DType.UNKNOWN:
        raise ValueError("a value of unknown dtype (unk) cannot carry data")
    got = _literal_shape(literal)
    for leaf in _leaves(literal):
        _check_leaf(leaf, dtype)
    empty = 0 in got
    if empty and shape is not None and all(isinstance(d, int) for d in shape) and 0 in shape:
        return np.zeros(tuple(shape), dtype=dtype.to_numpy())  # dump writes every empty array as []
    if shape is not None:
        fits = len(got) == len(shape) and all(not isinstance(d, int) or d == g for d, g in zip(shape, got))
        if not fits:
            declared = "[" + ",".join(_dim(d) for d in shape) + "]"
            raise ValueError(f"the data has shape [{','.join(map(str, got))}] but the type declares {declared}; "
                             "give one element per entry of the declared shape")
    if dtype == DType.STRING:
        return np.array(literal, dtype=object)
    wide = np.float64 if dtype.is_float else None
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        literal = _complex_leaves(literal)
    arr = np.array(literal, dtype=wide or dtype.to_numpy())
    return arr.astype(dtype.to_numpy()) if wide else arr


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


_COMMENT = re.compile(r"#\s*(\S+)\s+([^\s:]+)(?:\s+pin=([\w-]+))?(?::\s*(.*))?$")
_PIN_ONLY = re.compile(r"#\s*pin=([\w-]+)\s+([^\s:]+)(?::\s*(.*))?$")


def _apply_comment(node: Node, comment: str) -> None:
    """A decision comment (see the module docstring) back into ``node.meta``; a pin with
    an unknown source is dropped (the decision stays)."""
    comment = comment.rstrip()
    m = _PIN_ONLY.match(comment)
    if m:
        _set_pin(node, m.group(2), m.group(1), m.group(3) or "")
        return
    m = _COMMENT.match(comment)
    if not m:
        return
    node.meta["precision"] = m.group(1)
    if m.group(2) != "-":
        node.meta["category"] = m.group(2)
    if m.group(4):
        node.meta["reason"] = m.group(4)
    if m.group(3):
        _set_pin(node, m.group(1), m.group(3), m.group(4) or "")


def _set_pin(node: Node, precision: str, source: str, reason: str) -> None:
    if source in SOURCES:
        node.meta["pin"] = Pin(precision, source, reason)


def parse(text: str) -> Graph:
    """Parse IR text (as written by :func:`dump`) into a Graph. Every failure is a
    ParseError whose message starts with ``line L, column C:``."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"line 1, column 1: the IR text is not UTF-8 (byte {exc.start}); "
                             "pass the text of a file written by `mixprec dump`") from None
    if not isinstance(text, str):
        raise ParseError(f"line 1, column 1: parse() takes the IR text as str, not {type(text).__name__}")
    with paused_gc():
        parser = _Parser(text)
        graph = parser.graph(None, None)
    if parser.t.peek()[0] != "eof":
        parser.t.fail_here("text after the end of the graph")
    return graph
