"""Graph.clone / Model.clone: an independent copy (tuning runs every trial on one)."""
import numpy as np

from mixprec.ir import dump, parse, verify
from mixprec.ir.graph import Model
from mixprec.passes import DEFAULT_PIPELINE, build_pipeline

NESTED = """graph main<onnx>(%cond: bool[], %x: f32[2,2]) -> (%y: f32[2,2]) {
  const %w: f32[2,2] = [[1.0, 2.0], [3.0, 4.0]]
  %m: f32[2,2] = MatMul(%x, %w)
  %y: f32[2,2] = If(%cond) {else_branch=graph else_b() -> (%e: f32[2,2]) {
    %e: f32[2,2] = Neg(%m)
    return %e
  }, then_branch=graph then_b() -> (%t: f32[2,2]) {
    %t: f32[2,2] = MatMul(%m, %w)
    return %t
  }}
  return %y
}
"""


def test_clone_dumps_the_same_and_verifies():
    graph = parse(NESTED)
    copy = graph.clone()
    verify(copy)
    assert dump(copy) == dump(graph)


def test_clone_maps_outer_scope_reads_and_shares_constant_data():
    graph = parse(NESTED)
    copy = graph.clone()
    then = copy.nodes[1].attrs["then_branch"]
    inner = then.nodes[0]
    assert inner.inputs[0] is copy.nodes[0].outputs[0]          # %m of the copy, not of the original
    assert inner.inputs[1] is copy.constants["w"]
    assert copy.constants["w"] is not graph.constants["w"]
    assert copy.constants["w"].data is graph.constants["w"].data  # shared, read-only
    assert then.parent is copy
    assert {n.name for n, _ in graph.constants["w"].uses()} == {"m", "t"}
    assert {n.name for n, _ in copy.constants["w"].uses()} == {"m", "t"}
    assert all(n.graph is not None and n.graph.root is copy for n in copy.all_nodes())


def test_pipeline_on_a_clone_leaves_the_original_untouched():
    graph = parse(NESTED)
    before = dump(graph)
    copy = graph.clone()
    build_pipeline(DEFAULT_PIPELINE, precision="bf16").run(copy)
    after = dump(copy)
    assert "Cast" in after and "bf16" in after
    assert dump(graph) == before
    assert graph.constants["w"].data.ravel().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert graph.constants["w"].data.dtype == np.float32


def test_model_clone_copies_meta_dicts():
    model = Model(parse(NESTED), {"onnx": {"opset": 17}, "tag": "x"})
    copy = model.clone()
    copy.meta["onnx"]["opset"] = 22
    assert model.meta["onnx"]["opset"] == 17
    assert copy.graph is not model.graph and dump(copy.graph) == dump(model.graph)
