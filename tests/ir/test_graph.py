"""Use-lists, node list edits and verify()."""
import numpy as np
import pytest

from mixprec.errors import IRError
from mixprec.ir import GraphBuilder, Node, Value, parse, to_networkx, verify
from mixprec.ir.cast import make_cast


def _chain():
    b = GraphBuilder()
    x = b.input("x", "f32", (2,))
    a = b.op("Relu", x, out="a")
    c = b.op("Add", a, a, out="c")
    b.output(c)
    return b.graph, x, a, c


def test_uses_track_repeated_operands_and_set_input():
    g, x, a, c = _chain()
    add = c.producer
    assert a.uses() == [(add, 0), (add, 1)]
    add.set_input(1, x)
    assert a.uses() == [(add, 0)]
    assert (add, 1) in x.uses()
    verify(g)


def test_insert_and_remove_keep_order_and_uses():
    g, x, a, c = _chain()
    cast = make_cast(g, a, parse_dtype("bf16"))
    g.insert_after(a.producer, cast)
    assert [n.op for n in g.nodes] == ["Relu", "Cast", "Add"]
    assert cast.outputs[0].name == "a.bf16"
    with pytest.raises(IRError, match="still has readers"):
        g.remove(a.producer)
    g.remove(cast)
    assert [n.op for n in g.nodes] == ["Relu", "Add"]
    assert len(g) == 2
    verify(g)


def parse_dtype(name):
    from mixprec.ir import DType
    return DType.parse(name)


def test_verify_rejects_non_topological_order():
    g, x, a, c = _chain()
    relu = a.producer
    add = c.producer
    g.outputs = []
    g.remove(add)
    g.insert_before(relu, Node("Add", [a, a], [Value("c2", a.dtype, a.shape)]))
    with pytest.raises(IRError, match="after its reader"):
        verify(g)


def test_verify_rejects_duplicate_names_and_bad_cast_type():
    g = parse("graph main(%x: f32[1]) -> (%y: bf16[1]) {\n  %y: f32[1] = Cast(%x) {to=bf16}\n  return %y\n}\n")
    with pytest.raises(IRError, match="targets bf16 but its output"):
        verify(g)
    b = GraphBuilder()
    x = b.input("x", "f32", (1,))
    b.graph.append(Node("Relu", [x], [Value("x", x.dtype, x.shape)]))
    with pytest.raises(IRError, match="not unique"):
        verify(b.graph)


def test_verify_rejects_dangling_value_and_mixed_float_inputs():
    g, x, a, c = _chain()
    stray = Value("stray", a.dtype, a.shape)
    c.producer.set_input(1, stray)
    with pytest.raises(IRError, match="dangling"):
        verify(g)
    g2 = parse("graph main(%x: f32[1], %y: bf16[1]) -> (%z: f32[1]) {\n  %z: f32[1] = Add(%x, %y)\n  return %z\n}\n")
    verify(g2)
    with pytest.raises(IRError, match="mixes float input types"):
        verify(g2, mixed_input_ok=lambda node, index: False)


def test_to_networkx_keeps_operand_order_and_repeats():
    g, x, a, c = _chain()
    nxg = to_networkx(g)
    edges = sorted((u, v, d["index"]) for u, v, d in nxg.edges(data=True))
    assert edges == [("a", "c", 0), ("a", "c", 1), ("x", "a", 0)]
    assert nxg.nodes["c"]["op"] == "Add"


def test_constant_data_inline_round_trip():
    b = GraphBuilder()
    x = b.input("x", "f32", (2,))
    k = b.const("k", np.array([1.25, -2.0], np.float32))
    b.output(b.op("Mul", x, k))
    g = parse(__import__("mixprec.ir", fromlist=["dump"]).dump(b.graph))
    np.testing.assert_array_equal(g.constants["k"].data, np.array([1.25, -2.0], np.float32))


def test_verify_names_a_use_list_entry_that_matches_no_input():
    g, x, a, c = _chain()
    add = c.producer
    a._uses[(id(add), 5)] = (add, 5)  # an entry for an input slot the node does not have
    with pytest.raises(IRError, match=r"use-list of %a names \('.*', input 5\) which reads something else"):
        verify(g)
    del a._uses[(id(add), 5)]
    verify(g)
    stale = Node("Neg", [a], [Value("n")])  # a reader that was never added to the graph
    with pytest.raises(IRError, match="use-list of %a names removed node"):
        verify(g)
    stale.set_input(0, x)
    a._uses.pop((id(stale), 0), None)
    x._uses.pop((id(stale), 0), None)
    verify(g)
