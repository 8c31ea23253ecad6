"""Golden tests for assign-precision: TF grappler's documented painting cases."""
import textwrap
import random

from mixprec.ir import parse
from mixprec.passes import build_pipeline

from .conftest import golden

PAINT = "infer-dtypes,mark-shape-subgraphs,assign-precision"


def test_deny_spreads_forward_through_clear_and_infer(run):
    out = run("""
        graph main(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %e: f32[4,4] = Exp(%x)
          %r: f32[4,4] = Relu(%e)
          %i: f32[4,4] = Identity(%r)
          %m: f32[4,4] = MatMul(%x, %w)
          %a: f32[4,4] = Add(%i, %m)
          %out: f32[4,4] = Mul(%a, %a)
          return %out
        }""", PAINT)
    assert out == golden("""
        graph main<generic>(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %e: f32[4,4] = Exp(%x)  # f32 deny: deny list
          %r: f32[4,4] = Relu(%e)  # f32 clear: downstream of deny node 'e' on a path to a deny or infer op (step 2)
          %i: f32[4,4] = Identity(%r)  # f32 clear: downstream of deny node 'r' on a path to a deny or infer op (step 2)
          %m: f32[4,4] = MatMul(%x, %w)  # bf16 allow: allow list
          %a: f32[4,4] = Add(%i, %m)  # f32 infer: downstream of deny node 'i' on a path to a deny or infer op (step 2)
          %out: f32[4,4] = Mul(%a, %a)  # f32 infer: downstream of deny node 'a' on a path to a deny or infer op (step 2)
          return %out
        }
        """)


def test_clear_after_deny_not_leading_to_infer_joins_allow(run):
    out = run("""
        graph main(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %e: f32[4,4] = Exp(%x)
          %r: f32[4,4] = Relu(%e)
          %out: f32[4,4] = MatMul(%r, %w)
          return %out
        }""", PAINT)
    assert "%r: f32[4,4] = Relu(%e)  # bf16 clear: clear op connected to allow node 'out' (step 5)" in out


def test_clear_ops_between_allow_ops_become_allow(run):
    out = run("""
        graph main(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %m: f32[4,4] = MatMul(%x, %w)
          %r: f32[4,4] = Relu(%m)
          %t: f32[4,4] = Transpose(%r) {perm=[1, 0]}
          %out: f32[4,4] = MatMul(%t, %w)
          return %out
        }""", PAINT)
    assert out == golden("""
        graph main<generic>(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %m: f32[4,4] = MatMul(%x, %w)  # bf16 allow: allow list
          %r: f32[4,4] = Relu(%m)  # bf16 clear: between allow nodes 'm' and 'out' (step 3)
          %t: f32[4,4] = Transpose(%r) {perm=[1, 0]}  # bf16 clear: between allow nodes 'm' and 'out' (step 3)
          %out: f32[4,4] = MatMul(%t, %w)  # bf16 allow: allow list
          return %out
        }
        """)


def test_infer_op_with_allow_and_deny_inputs_stays_fp32(run):
    out = run("""
        graph main(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %m: f32[4,4] = MatMul(%x, %w)
          %e: f32[4,4] = Exp(%x)
          %a: f32[4,4] = Add(%m, %e)
          %out: f32[4,4] = Relu(%a)
          return %out
        }""", PAINT)
    assert "%a: f32[4,4] = Add(%m, %e)  # f32 infer: downstream of deny node 'e'" in out
    assert "%out: f32[4,4] = Relu(%a)  # f32 clear: clear op not connected to an allow node" in out
    assert "%m: f32[4,4] = MatMul(%x, %w)  # bf16 allow" in out


def test_infer_chain_after_allow_is_allow_to_a_fixed_point(run):
    out = run("""
        graph main(%x: f32[4,4], %w: f32[4,4], %b: f32[4]) -> (%out: f32[4,4]) {
          %m: f32[4,4] = MatMul(%x, %w)
          %a: f32[4,4] = Add(%m, %b)
          %p: f32[4,4] = Mul(%a, %a)
          %s: f32[4,4] = Sub(%p, %b)
          %out: f32[4,4] = Exp(%s)
          return %out
        }""", PAINT)
    assert out == golden("""
        graph main<generic>(%x: f32[4,4], %w: f32[4,4], %b: f32[4]) -> (%out: f32[4,4]) {
          %m: f32[4,4] = MatMul(%x, %w)  # bf16 allow: allow list
          %a: f32[4,4] = Add(%m, %b)  # bf16 infer: infer op fed by allow node 'm' (step 4)
          %p: f32[4,4] = Mul(%a, %a)  # bf16 infer: infer op fed by allow node 'a' (step 4)
          %s: f32[4,4] = Sub(%p, %b)  # bf16 infer: infer op fed by allow node 'p' (step 4)
          %out: f32[4,4] = Exp(%s)  # f32 deny: deny list
          return %out
        }
        """)


def test_unlisted_op_stays_fp32_and_says_so(run):
    out = run("""
        graph main(%x: f32[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %m: f32[4,4] = MatMul(%x, %w)
          %out: f32[4,4] = FancyOp(%m)
          return %out
        }""", PAINT)
    assert "FancyOp(%m)  # f32 unlisted: op in no list of the generic policy; kept in its dtype" in out


def test_conditional_rule_and_runtime_capability(run):
    out = run("""
        graph main(%x: f32[1,1,4,4], %w: f32[1,1,1,1], %roi: f32[0], %scales: f32[4]) -> (%out: f32[1,1,8,8]) {
          %c: f32[1,1,4,4] = Conv(%x, %w)
          %out: f32[1,1,8,8] = Resize(%c, %roi, %scales) {mode="cubic"}
          return %out
        }""", "infer-dtypes,mark-shape-subgraphs,apply-overrides{runtime_fp32_ops=[Conv],runtime=onnxruntime},"
           "assign-precision")
    assert "Resize(%c, %roi, %scales) {mode=\"cubic\"}  # f32 deny: deny list because mode='cubic'" in out
    assert "Conv(%x, %w)  # f32 allow pin=runtime: onnxruntime has no bf16 kernel for Conv" in out


def test_runtime_limit_is_a_pin_so_no_neighbour_is_stranded_in_bf16(run):
    """Before: with the runtime limit applied after painting (grappler's step 6), Relu(MatMul)
    stayed bf16 ("clear op connected to allow node 'm'") between two needless casts. As a
    pin, the MatMul paints as deny and the Relu follows it: clean FP32, no cast."""
    out = run("""
        graph main(%x: f32[2,4], %w: f32[4,4]) -> (%out: f32[2,4]) {
          %m: f32[2,4] = MatMul(%x, %w)
          %out: f32[2,4] = Relu(%m)
          return %out
        }""", "infer-dtypes,mark-shape-subgraphs,apply-overrides{runtime_fp32_ops=[MatMul],runtime=onnxruntime},"
           "assign-precision,insert-casts,fold-casts")
    assert out == textwrap.dedent("""\
        graph main<generic>(%x: f32[2,4], %w: f32[4,4]) -> (%out: f32[2,4]) {
          %m: f32[2,4] = MatMul(%x, %w)  # f32 allow pin=runtime: onnxruntime has no bf16 kernel for MatMul
          %out: f32[2,4] = Relu(%m)  # f32 clear: clear op not connected to an allow node
          return %out
        }
        """)


def test_existing_fp32_cast_feeding_allow_ops_is_retargeted(run):
    out = run("""
        graph main(%ids: i64[4,4], %w: f32[4,4]) -> (%out: f32[4,4]) {
          %f: f32[4,4] = Cast(%ids) {to=f32}
          %out: f32[4,4] = MatMul(%f, %w)
          return %out
        }""", "infer-dtypes,mark-shape-subgraphs,assign-precision,insert-casts,fold-casts")
    assert "%f: bf16[4,4] = Cast(%ids) {to=bf16}  # bf16 cast: existing cast to f32 whose readers all run in bf16 (step 7)" in out
    assert out.count("Cast(") == 3  # the retargeted one, %w's, and the output's


def test_constant_out_of_fp16_range_keeps_reader_fp32():
    from mixprec.ir import GraphBuilder
    import numpy as np
    b = GraphBuilder()
    x = b.input("x", "f32", (2, 2))
    w = b.const("w", np.array([[1e8, 1.0], [2.0, 3.0]], np.float32))
    b.output(b.op("MatMul", x, w, out="y"))
    g = b.graph
    build_pipeline(PAINT, precision="fp16").run(g)
    assert g.nodes[0].meta["precision"] == "f32"
    assert "outside the f16 range" in g.nodes[0].meta["reason"]
    g2 = b.graph
    build_pipeline(PAINT, precision="bf16").run(g2)
    assert g2.nodes[0].meta["precision"] == "bf16"


def test_painting_does_not_depend_on_node_order():
    text = """graph main(%x: f32[4,4], %w: f32[4,4]) -> (%o1: f32[4,4], %o2: f32[4,4]) {
  %m: f32[4,4] = MatMul(%x, %w)
  %a: f32[4,4] = Add(%m, %x)
  %b: f32[4,4] = Mul(%a, %x)
  %c: f32[4,4] = Sub(%b, %a)
  %o1: f32[4,4] = Relu(%c)
  %e: f32[4,4] = Exp(%x)
  %t: f32[4,4] = Transpose(%e)
  %o2: f32[4,4] = MatMul(%t, %w)
  return %o1, %o2
}
"""
    lines = text.splitlines()
    body = lines[1:-2]
    results = set()
    rng = random.Random(0)
    for _ in range(20):
        order = _random_topological(body, rng)
        g = parse("\n".join([lines[0], *order, *lines[-2:]]) + "\n")
        build_pipeline(PAINT).run(g)
        results.add(tuple(sorted((n.name, n.meta["precision"]) for n in g.nodes)))
    assert len(results) == 1
    decided = dict(next(iter(results)))
    assert decided == {"m": "bf16", "a": "bf16", "b": "bf16", "c": "bf16", "o1": "bf16",
                       "e": "f32", "t": "bf16", "o2": "bf16"}


def _random_topological(body, rng):
    defs = {}
    for line in body:
        defs[line.split(":")[0].strip()[1:]] = line
    import re
    deps = {k: {d for d in re.findall(r"%([\w.]+)", v.split("=", 1)[1]) if d in defs} for k, v in defs.items()}
    done, order = set(), []
    while len(order) < len(defs):
        ready = sorted(k for k in defs if k not in done and deps[k] <= done)
        pick = rng.choice(ready)
        done.add(pick)
        order.append(defs[pick])
    return order
