"""Each fold-casts rule alone (``fold-casts{rules=[NAME]}``), Before/Expected as IR text."""
import pytest

from mixprec.errors import PipelineError

from .conftest import golden

HEAD = "graph main(%x: f32[2], %h: bf16[2]) -> (%y: f32[2]) {\n"


@pytest.mark.parametrize("rule, before, after", [
    ("same-dtype",
     ["%a: f32[2] = Cast(%x) {to=f32}", "%y: f32[2] = Add(%a, %x)"],
     ["%a: f32[2] = Cast(%x) {to=f32}", "%y: f32[2] = Add(%x, %x)"]),          # %a is left dead: not this rule's job
    ("round-trip",
     ["%a: f32[2] = Cast(%h) {to=f32}", "%b: bf16[2] = Cast(%a) {to=bf16}", "%c: f32[2] = Cast(%b) {to=f32}",
      "%y: f32[2] = Add(%c, %x)"],
     ["%a: f32[2] = Cast(%h) {to=f32}", "%b: bf16[2] = Cast(%a) {to=bf16}", "%c: f32[2] = Cast(%h) {to=f32}",
      "%y: f32[2] = Add(%c, %x)"]),                                              # bf16->f32->bf16 is %h again
    ("chain",
     ["%a: f32[2] = Cast(%h) {to=f32}", "%b: i32[2] = Cast(%a) {to=i32}", "%c: f32[2] = Cast(%b) {to=f32}",
      "%y: f32[2] = Add(%c, %x)"],
     ["%a: f32[2] = Cast(%h) {to=f32}", "%b: i32[2] = Cast(%h) {to=i32}", "%c: f32[2] = Cast(%b) {to=f32}",
      "%y: f32[2] = Add(%c, %x)"]),                                              # bf16->f32 exact: cast %h directly
    ("duplicate",
     ["%a: bf16[2] = Cast(%x) {to=bf16}", "%b: bf16[2] = Cast(%x) {to=bf16}", "%s: bf16[2] = Add(%a, %b)",
      "%y: f32[2] = Cast(%s) {to=f32}"],
     ["%a: bf16[2] = Cast(%x) {to=bf16}", "%b: bf16[2] = Cast(%x) {to=bf16}", "%s: bf16[2] = Add(%a, %a)",
      "%y: f32[2] = Cast(%s) {to=f32}"]),
    ("dead",
     ["%a: bf16[2] = Cast(%x) {to=bf16}", "%b: f32[2] = Cast(%a) {to=f32}", "%y: f32[2] = Add(%x, %x)"],
     ["%y: f32[2] = Add(%x, %x)"]),                                             # a dead chain goes whole
])
def test_rule_alone(run, rule, before, after):
    text = HEAD + "".join(f"  {line}\n" for line in before) + "  return %y\n}\n"
    expected = (HEAD.replace("main(", "main<generic>(") + "".join(f"  {line}\n" for line in after)
                + "  return %y\n}\n")
    assert run(text, f"fold-casts{{rules=[{rule}]}}") == golden(expected)


def test_a_graph_output_cast_is_never_rewritten(run):
    out = run(HEAD + "  %y: f32[2] = Cast(%x) {to=f32}\n  return %y\n}\n", "fold-casts")
    assert "%y: f32[2] = Cast(%x) {to=f32}" in out


def test_unknown_rule_is_a_pipeline_error(run):
    with pytest.raises(PipelineError, match="fold-casts has no rule \\['nope'\\]; its rules: same-dtype, round-trip"):
        run(HEAD + "  %y: f32[2] = Add(%x, %x)\n  return %y\n}\n", "fold-casts{rules=[nope]}")
