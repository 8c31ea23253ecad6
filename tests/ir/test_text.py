"""IR text form: deterministic dump, parse round trip, clear parse errors."""
import numpy as np
import pytest

from mixprec.errors import ParseError
from mixprec.ir import DType, GraphBuilder, dump, parse, verify

NESTED = """graph main<onnx>(%cond: bool[], %x: f32[2,?]) -> (%y: f32[2,?]) {
  const %w: f32[2,2]
  const %k: i64[3] = [1, 2, 3]
  const %f: bf16[2] = [0.5, -inf]
  %y: f32[2,?] = If(%cond) {else_branch=graph else_b() -> (%e: f32[2,?]) {
    %e: f32[2,?] = Neg(%x)
    return %e
  }, then_branch=graph then_b() -> (%t: f32[2,?]) {
    %t: f32[2,?] = MatMul(%w, %x)  # bf16 allow: allow list
    return %t
  }}
  return %y
}
"""


def test_round_trip_nested_graph_and_outer_scope():
    g = parse(NESTED)
    verify(g)
    assert dump(g) == NESTED
    then = g.nodes[0].attrs["then_branch"]
    matmul = then.nodes[0]
    assert matmul.inputs[0] is g.constants["w"]
    assert (matmul, 0) in g.constants["w"].uses()
    assert matmul.meta == {"precision": "bf16", "category": "allow", "reason": "allow list"}
    assert g.constants["k"].data.tolist() == [1, 2, 3]
    assert g.constants["f"].data.dtype.name == "bfloat16"


def test_dump_of_builder_graph_is_stable_and_quotes_odd_names():
    b = GraphBuilder(framework="onnx")
    x = b.input("onnx::input 0", "f32", (1, "batch"))
    c = b.const("c", np.array([1.5], np.float32))
    y = b.op("Add", x, c, out="/layer/Add_output_0", name="my node",
             attrs={"alpha": 1.0, "ints": [1, 2], "s": "é", "dt": DType.FLOAT16, "empty": []})
    b.output(y)
    text = dump(b.graph)
    assert '%"onnx::input 0": f32[1,batch]' in text
    assert '@"my node"' in text
    assert "{alpha=1.0, dt=f16, empty=[], ints=[1, 2], s=\"\\u00e9\"}" in text
    assert dump(parse(text)) == text
    assert parse(text).nodes[0].attrs["s"] == "é"


def test_large_constant_is_elided_and_parses_without_data():
    b = GraphBuilder()
    x = b.input("x", "f32", (4, 4))
    w = b.const("w", np.ones((4, 4), np.float32))
    b.output(b.op("MatMul", x, w))
    text = dump(b.graph)
    assert "const %w: f32[4,4]\n" in text
    assert parse(text).constants["w"].data is None


@pytest.mark.parametrize("bad, message", [
    ("graph main(%x: f33[1]) -> () {\n return\n}", "unknown dtype"),
    ("graph main(%x: f32[1]) -> (%y) {\n  %y: f32[1] = Relu(%z)\n  return %y\n}", "%z is used before it is defined"),
    ("graph main(%x: f32[1]) -> () {\n  %x: f32[1] = Relu(%x)\n  return\n}", "defined twice"),
    ("graph main(%x: f32[1]) -> () {\n  $\n}", "unexpected character"),
])
def test_parse_errors_name_the_line(bad, message):
    with pytest.raises(ParseError, match=message) as info:
        parse(bad)
    assert str(info.value).startswith("line ")


# ---- hostile and malformed text: every failure is a ParseError with line and column ---
def _wrap(body: str, params: str = "") -> str:
    return f"graph main({params}) -> () {{\n{body}\n  return\n}}\n"


DEEP_BRACKETS = _wrap("  %a: f32[1] = Foo() {x=" + "[" * 5000 + "]" * 5000 + "}")
NESTED_GRAPHS = ("graph main() -> () {\n"
                 + "".join(f"  %o{i}: f32[1] = If() {{g=graph b{i}() -> () {{\n" for i in range(3000))
                 + "  return\n}}\n" * 3000 + "  return\n}\n")


@pytest.mark.parametrize("text, where, message", [
    (_wrap('  %"a\\q": f32[1] = Foo()'), "line 2, column 6", "invalid \\escape"),
    (_wrap('  %a: f32[1] = Foo() {s="x\\u12"}'), "line 2, column 28", "invalid \\uxxxx escape"),
    (_wrap('  %a: f32[1] = Foo() @"tab\there"'), "line 2, column 27", "invalid control character"),
    (DEEP_BRACKETS, "line 2, column 89", "nested more than 64 levels"),
    (NESTED_GRAPHS, "line 65, column 26", "graph nested more than 64 levels"),
    (_wrap("", "%x: f32[1.5]"), "line 1, column 20", "bad dimension '1.5'"),
    (_wrap("", "%x: f32[1e400]"), "line 1, column 20", "bad dimension '1e400'"),
    (_wrap("", "%x: f32[-4]"), "line 1, column 20", "non-negative integer"),
    (_wrap("", "%x: f32[99999999999999999999]"), "line 1, column 20", "larger than"),
    (_wrap('  const %c: f32[2] = ["a", "b"]'), "line 2, column 22", '"a" is not a f32 value'),
    (_wrap("  const %c: f32[2,2] = [1]"), "line 2, column 24", "data has shape [1] but the type declares [2,2]"),
    (_wrap('  const %c: bool[1] = {"a": 1}'), "line 2, column 23", "is not a bool value"),
    (_wrap("  const %c: i8[1] = [1000]"), "line 2, column 21", "outside the range of i8"),
    (_wrap("  const %c: i64[1] = [1.5]"), "line 2, column 22", "1.5 is not a i64 value"),
    (_wrap("  const %c: i64[1] = [100000000000000000000000000]"), "line 2, column 22", "outside the range"),
    (_wrap("  const %c: f32[2,2] = [[1, 2], [3]]"), "line 2, column 24", "ragged"),
    (_wrap("  const %c: unk[1] = [1]"), "line 2, column 22", "unknown dtype (unk) cannot carry data"),
    (_wrap("  %a: f32[1] = Foo() {t=tensor<f32[2]>[1, 2, 3]}"), "line 2, column 39", "declares [2]"),
    (_wrap("  %a: f32[1] = Foo() {t={1: 2}}"), "line 2, column 26", "table key is a quoted string"),
    (_wrap("  %a: f32[1] = Foo() {t=opaque(1)}"), "line 2, column 32", "holds a quoted string"),
    (_wrap("  %a: f32[1] = Foo() {[=1}"), "line 2, column 23", "expected an attribute name"),
    ("graph main<>() -> () {\n  return\n}\n", "line 1, column 12", "expected a framework name"),
    (_wrap("  %a: f32[1], %a: f32[1] = Foo()"), "line 2, column 3", "%a is defined twice"),
    (_wrap("  %a: f32[1] = Foo(", ""), "line 3, column 3", "%value"),
])
def test_malformed_text_is_a_parse_error_with_line_and_column(text, where, message):
    with pytest.raises(ParseError) as info:
        parse(text)
    assert str(info.value).startswith(where + ":"), str(info.value)
    assert message in str(info.value)


def test_parse_rejects_non_text():
    with pytest.raises(ParseError, match="not UTF-8"):
        parse(b"graph \xff")
    with pytest.raises(ParseError, match="takes the IR text as str, not int"):
        parse(42)
    assert dump(parse(NESTED.encode())) == NESTED


def test_nesting_within_the_limit_parses():
    body = "  %a: f32[1] = Foo() {x=" + "[" * 60 + "1" + "]" * 60 + "}"
    value = parse(_wrap(body)).nodes[0].attrs["x"]
    for _ in range(60):
        value = value[0]
    assert value == 1


def test_constant_data_matches_declared_and_symbolic_shapes():
    g = parse(_wrap('  const %c: i64[2,?] = [[1, 2], [3, 4]]\n  const %s: bool[n] = [true, 0]\n'
                    '  const %z: f32[0] = []\n  const %q: c64[1] = ["(1+2j)"]\n  const %e: f32[0,3] = []'))
    verify(g)
    assert g.constants["c"].data.tolist() == [[1, 2], [3, 4]]
    assert g.constants["s"].data.tolist() == [True, False]
    assert g.constants["z"].data.shape == (0,)
    assert g.constants["e"].data.shape == (0, 3)  # dump writes every empty array as []
    assert g.constants["q"].data.tolist() == [1 + 2j]


def test_verify_rejects_negative_dims_and_data_of_another_shape():
    from mixprec.errors import IRError
    b = GraphBuilder()
    b.input("x", "f32", (-4,))
    with pytest.raises(IRError, match="negative dimension"):
        verify(b.graph)
    b = GraphBuilder()
    c = b.const("c", np.ones(1, np.float32))
    c.shape = (2, 2)
    with pytest.raises(IRError, match=r"declares shape \[2, 2\] but its data has shape \[1\]"):
        verify(b.graph)
