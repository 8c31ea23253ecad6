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
