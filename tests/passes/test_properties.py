"""Hypothesis properties of the default pipeline on random DAGs."""
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixprec.ir import DType, GraphBuilder, dump, parse, verify
from mixprec.ir.cast import cast_target, is_cast
from mixprec.ir.dtypes import holds_exactly
from mixprec.passes import DEFAULT_PIPELINE, build_pipeline
from mixprec.passes.policies import load_policy

UNARY = ["Relu", "Exp", "Tanh", "Identity", "Sigmoid", "Transpose", "FancyOp", "Sqrt"]
BINARY = ["MatMul", "Add", "Mul", "Sub", "Gemm", "Div", "Conv"]
POLICY = load_policy("generic")


@st.composite
def random_graphs(draw):
    """A random DAG over [4,4] f32 tensors, with constants, int casts and reshapes."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    size = draw(st.integers(1, 30))
    rng = random.Random(seed)
    b = GraphBuilder()
    values = [b.input(f"in{i}", "f32", (4, 4)) for i in range(rng.randint(1, 3))]
    shape = b.const("shape", np.array([4, 4], np.int64))
    for i in range(rng.randint(0, 3)):
        values.append(b.const(f"w{i}", np.full((4, 4), rng.uniform(-2, 2), np.float32)))
    for i in range(size):
        kind = rng.random()
        if kind < 0.1:
            ints = b.op("Cast", rng.choice(values), attrs={"to": DType.INT32}, dtype="i32", out=f"n{i}i")
            values.append(b.op("Cast", ints, attrs={"to": DType.FLOAT32}, dtype="f32", out=f"n{i}"))
        elif kind < 0.15:
            values.append(b.op("Cast", rng.choice(values), attrs={"to": DType.FLOAT32}, out=f"n{i}"))
        elif kind < 0.2:
            low = b.op("Cast", rng.choice(values), attrs={"to": DType.BFLOAT16}, dtype="bf16", out=f"n{i}b")
            values.append(b.op("Cast", low, attrs={"to": DType.FLOAT32}, dtype="f32", out=f"n{i}"))
        elif kind < 0.25:
            values.append(b.op("Reshape", rng.choice(values), shape, out=f"n{i}"))
        elif kind < 0.6:
            values.append(b.op(rng.choice(UNARY), rng.choice(values), out=f"n{i}"))
        else:
            values.append(b.op(rng.choice(BINARY), rng.choice(values), rng.choice(values), out=f"n{i}"))
    produced = [v for v in values if v.producer is not None]
    outs = rng.sample(produced, k=min(len(produced), rng.randint(1, 3))) if produced else values[:1]
    b.output(*outs)
    return b.graph


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_pipeline_output_verifies_and_is_idempotent(graph):
    original_io = [(v.name, v.dtype) for v in graph.inputs + graph.outputs]
    build_pipeline(DEFAULT_PIPELINE).run(graph)  # verifies after every changing pass
    verify(graph)
    assert [(v.name, v.dtype) for v in graph.inputs + graph.outputs] == original_io
    once = dump(graph)
    again = parse(once)
    build_pipeline(DEFAULT_PIPELINE).run(again)
    assert dump(again) == once


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_no_foldable_cast_is_left(graph):
    build_pipeline(DEFAULT_PIPELINE).run(graph)
    outputs = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        if not is_cast(node):
            continue
        src = node.inputs[0]
        if id(node.outputs[0]) in outputs:
            continue  # a graph output's name is the interface: its cast stays
        assert src.dtype != cast_target(node), f"cast to the same dtype left: {node.name}"
        inner = src.producer
        if inner is not None and is_cast(inner):
            assert not holds_exactly(inner.inputs[0].dtype, src.dtype), f"foldable chain left: {node.name}"
        assert node.outputs[0].num_uses, f"dead cast left: {node.name}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_every_allow_op_with_float_inputs_is_bf16_unless_explained(graph):
    build_pipeline(DEFAULT_PIPELINE).run(graph)
    for node in graph.nodes:
        assert "precision" in node.meta and node.meta.get("reason"), f"{node.name} has no recorded decision"
        if POLICY.base_category(node.op) != "allow":
            continue
        if node.meta["precision"] == "bf16":
            assert all(v.dtype == DType.BFLOAT16 for v in node.inputs if v is not None and v.dtype.is_float)
            assert all(v.dtype == DType.BFLOAT16 for v in node.outputs)
        else:
            assert node.meta["reason"] != "allow list"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.integers(0, 1000))
def test_decisions_do_not_depend_on_node_order(graph, seed):
    text = dump(graph)
    first = parse(text)
    build_pipeline("infer-dtypes,mark-shape-subgraphs,assign-precision").run(first)
    shuffled = parse(text)
    _shuffle_topologically(shuffled, random.Random(seed))
    build_pipeline("infer-dtypes,mark-shape-subgraphs,assign-precision").run(shuffled)
    assert {n.name: n.meta["precision"] for n in first.nodes} == {n.name: n.meta["precision"] for n in shuffled.nodes}


def _shuffle_topologically(graph, rng):
    nodes = graph.nodes
    done: set[int] = set()
    order = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(v is None or v.producer is None or id(v.producer) in done for v in n.inputs)]
        pick = rng.choice(ready)
        pending.remove(pick)
        done.add(id(pick))
        order.append(pick)
    graph.reorder(order)
    verify(graph)
