"""Pins in the text form: printed with their source, parsed back, kept by a re-run."""
from mixprec.ir import Pin, dump, parse, set_pin
from mixprec.ir.pins import pin_of
from mixprec.passes import build_pipeline

SRC = """graph main(%x: f32[2,4], %w: f32[4,4]) -> (%out: f32[2,4]) {
  %m: f32[2,4] = MatMul(%x, %w)
  %out: f32[2,4] = Relu(%m)
  return %out
}
"""


def test_pins_print_and_parse_back_before_and_after_painting():
    graph = parse(SRC)
    assert set_pin(graph.nodes[0], Pin("f32", "user", "keep it exact"))
    text = dump(graph)
    assert "%m: f32[2,4] = MatMul(%x, %w)  # pin=user f32: keep it exact" in text
    again = parse(text)
    assert pin_of(again.nodes[0]) == Pin("f32", "user", "keep it exact") and "precision" not in again.nodes[0].meta
    build_pipeline("infer-dtypes,mark-shape-subgraphs,assign-precision").run(again)
    painted = dump(again)
    assert "MatMul(%x, %w)  # f32 allow pin=user: keep it exact" in painted
    assert dump(parse(painted)) == painted


def test_a_stronger_pin_wins_and_a_weaker_one_does_not_replace_it():
    graph = parse(SRC)
    node = graph.nodes[0]
    assert set_pin(node, Pin("bf16", "user", "user wants it low"))
    assert set_pin(node, Pin("f32", "runtime", "no bf16 kernel"))      # the runtime cannot run it low
    assert not set_pin(node, Pin("f32", "policy-rule", "a rule"))        # weaker than the runtime's
    assert pin_of(node).source == "runtime"
