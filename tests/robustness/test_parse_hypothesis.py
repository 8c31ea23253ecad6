"""Hypothesis fuzz targets for ``mixprec.ir.parse`` (a bounded number of examples).

1. Any text: parse either returns a Graph (which then dumps and parses back to the same
   text) or raises ParseError starting with ``line L, column C:``; nothing else.
2. Text spliced from IR tokens (closer to real IR, so the parser gets deeper).
3. Constants of random dtype, shape and data round-trip exactly through dump/parse.
"""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the parse fuzz targets use hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mixprec.errors import IRError, ParseError  # noqa: E402
from mixprec.ir import GraphBuilder, dump, parse, verify  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TOKENS = ["graph", "main", "<onnx>", "(", ")", "->", "{", "}", "[", "]", ",", ":", "=", "%x", "%y", "%w",
          '%"a b"', "f32", "bf16", "i64", "bool", "str", "unk", "?", "1", "0", "-4", "1.5", "1e400", "inf",
          "nan", "const", "return", "Relu", "If", "Cast", "{to=bf16}", "tensor<f32[2]>", "...", "opaque(",
          '"s"', '"\\q"', '"\\u12"', "true", "none", "@n", "# bf16 allow: x", "\n", " ", "_", "::", "graph g() -> () {"]


def _contract(text: str) -> None:
    try:
        graph = parse(text)
    except ParseError as exc:
        head = str(exc).split(":", 1)[0]
        assert head.startswith("line ") and ", column " in head, str(exc)
        return
    again = dump(graph)
    assert dump(parse(again)) == again
    try:
        verify(graph)
    except IRError:
        pass


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_parse_any_text(text):
    _contract(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=80))
def test_parse_token_soup(tokens):
    _contract(" ".join(tokens))


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.integers(0, 2000))
def test_parse_mutated_real_text(tokens, position):
    base = ("graph main<onnx>(%x: f32[2,?]) -> (%y: f32[2,?]) {\n  const %k: i64[3] = [1, 2, 3]\n"
            "  %y: f32[2,?] = Relu(%x) {alpha=1.0}  # bf16 allow: allow list\n  return %y\n}\n")
    at = position % (len(base) + 1)
    _contract(base[:at] + " ".join(tokens) + base[at:])


_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i8": np.int8, "i32": np.int32,
           "i64": np.int64, "u8": np.uint8, "bool": np.bool_}


@FUZZ
@given(st.sampled_from(sorted(_DTYPES)), st.lists(st.integers(0, 3), min_size=0, max_size=3), st.data())
def test_constants_round_trip(dtype, shape, data):
    np_type = _DTYPES[dtype]
    size = int(np.prod(shape)) if shape else 1
    if np_type is np.bool_:
        values = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
    elif np.issubdtype(np_type, np.integer):
        info = np.iinfo(np_type)
        values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=size, max_size=size))
    else:
        values = data.draw(st.lists(st.floats(width=16 if np_type is np.float16 else 32), min_size=size,
                                    max_size=size))
    array = np.array(values, dtype=np_type).reshape(shape)
    b = GraphBuilder()
    x = b.input("x", dtype, tuple(shape))
    c = b.const("c", array)
    b.output(b.op("Add", x, c))
    text = dump(b.graph)
    graph = parse(text)
    verify(graph)
    assert dump(graph) == text
    if array.size <= 8:
        np.testing.assert_array_equal(graph.constants["c"].data, array)
