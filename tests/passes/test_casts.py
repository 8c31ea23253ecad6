"""Golden tests for insert-casts, fold-casts, convert-constants and keep-io-types."""
import numpy as np

from mixprec.ir import GraphBuilder, dump, parse
from mixprec.passes import DEFAULT_PIPELINE, build_pipeline

from .conftest import golden


def test_full_pipeline_shares_casts_stores_weights_bf16_and_keeps_output_names(run):
    out = run("""
        graph main(%x: f32[2,3]) -> (%y: f32[2,4], %z: f32[2,4]) {
          const %w: f32[3,4]
          const %b: f32[4] = [1.0, 2.0, 3.0, 4.0]
          %m: f32[2,4] = MatMul(%x, %w)
          %y: f32[2,4] = Add(%m, %b)
          %z: f32[2,4] = Softmax(%y)
          return %y, %z
        }""", DEFAULT_PIPELINE)
    assert out == golden("""
        graph main<generic>(%x: f32[2,3]) -> (%y: f32[2,4], %z: f32[2,4]) {
          const %w: bf16[3,4]
          const %b: bf16[4] = [1.0, 2.0, 3.0, 4.0]
          %x.bf16: bf16[2,3] = Cast(%x) {to=bf16}  # bf16 cast: inserted: first reader 'm' runs in bf16
          %m: bf16[2,4] = MatMul(%x.bf16, %w)  # bf16 allow: allow list
          %y.bf16: bf16[2,4] = Add(%m, %b) @y  # bf16 infer: infer op fed by allow node 'm' (step 4)
          %y: f32[2,4] = Cast(%y.bf16) {to=f32} @y.f32  # f32 cast: inserted: first reader 'z' runs in f32
          %z: f32[2,4] = Softmax(%y)  # f32 deny: deny list
          return %y, %z
        }
        """)


def test_shape_subgraph_gets_no_casts(run):
    out = run("""
        graph main(%x: f32[1,3,4,4], %w: f32[3,3,1,1]) -> (%y: f32[1,48]) {
          %c: f32[1,3,4,4] = Conv(%x, %w)
          %s: i64[4] = Shape(%c)
          %sf: f32[4] = Cast(%s) {to=f32}
          %half: f32[4] = Mul(%sf, %sf)
          %si: i64[4] = Cast(%half) {to=i64}
          %r: f32[1,48] = Reshape(%c, %si)
          %y: f32[1,48] = Relu(%r)
          return %y
        }""", DEFAULT_PIPELINE)
    assert out == golden("""
        graph main<generic>(%x: f32[1,3,4,4], %w: f32[3,3,1,1]) -> (%y: f32[1,48]) {
          %x.bf16: bf16[1,3,4,4] = Cast(%x) {to=bf16}  # bf16 cast: inserted: first reader 'c' runs in bf16
          %w.bf16: bf16[3,3,1,1] = Cast(%w) {to=bf16}  # bf16 cast: inserted: first reader 'c' runs in bf16
          %c: bf16[1,3,4,4] = Conv(%x.bf16, %w.bf16)  # bf16 allow: allow list
          %s: i64[4] = Shape(%c)  # keep shape: computes input 1 of 'r' (Reshape)
          %sf: f32[4] = Cast(%s) {to=f32}  # keep shape: computes input 1 of 'r' (Reshape)
          %half: f32[4] = Mul(%sf, %sf)  # keep shape: computes input 1 of 'r' (Reshape)
          %si: i64[4] = Cast(%half) {to=i64}  # keep shape: computes input 1 of 'r' (Reshape)
          %r: bf16[1,48] = Reshape(%c, %si)  # bf16 clear: clear op connected to allow node 'c' (step 5)
          %y.bf16: bf16[1,48] = Relu(%r) @y  # bf16 clear: clear op connected to allow node 'c' (step 5)
          %y: f32[1,48] = Cast(%y.bf16) {to=f32} @y.bf16.f32  # f32 cast: inserted: graph output keeps its f32 type
          return %y
        }
        """)


def test_pinned_input_is_never_cast(run):
    out = run("""
        graph main(%x: f32[1,1,4,4], %w: f32[1,1,1,1], %roi: f32[0], %scales: f32[4]) -> (%y: f32[1,1,8,8]) {
          %c: f32[1,1,4,4] = Conv(%x, %w)
          %y: f32[1,1,8,8] = Resize(%c, %roi, %scales) {mode="nearest"}
          return %y
        }""", DEFAULT_PIPELINE)
    assert "Resize(%c, %roi, %scales)" in out
    assert "%scales.bf16" not in out and "%roi.bf16" not in out


def test_fold_casts_rules(run):
    out = run("""
        graph main(%x: f32[2,2]) -> (%y: f32[2,2]) {
          %a: bf16[2,2] = Cast(%x) {to=bf16}
          %b: f32[2,2] = Cast(%a) {to=f32}
          %c: f32[2,2] = Cast(%b) {to=f32}
          %d: bf16[2,2] = Cast(%c) {to=bf16}
          %e: f32[2,2] = Cast(%d) {to=f32}
          %i: i32[2,2] = Cast(%x) {to=i32}
          %i2: i64[2,2] = Cast(%i) {to=i64}
          %i3: i32[2,2] = Cast(%i2) {to=i32}
          %i4: f32[2,2] = Cast(%i3) {to=f32}
          %e2: f32[2,2] = Cast(%x) {to=f32}
          %s: f32[2,2] = Add(%e, %i4)
          %y: f32[2,2] = Add(%s, %e2)
          return %y
        }""", "fold-casts")
    # x->bf16->f32 is lossy and stays; f32->f32 goes; bf16->f32->bf16 is the bf16 value again;
    # the second bf16->f32 merges into the first; i32->i64->i32 is i32 again; dead casts go
    assert out == golden("""
        graph main<generic>(%x: f32[2,2]) -> (%y: f32[2,2]) {
          %a: bf16[2,2] = Cast(%x) {to=bf16}
          %b: f32[2,2] = Cast(%a) {to=f32}
          %i: i32[2,2] = Cast(%x) {to=i32}
          %i4: f32[2,2] = Cast(%i) {to=f32}
          %s: f32[2,2] = Add(%b, %i4)
          %y: f32[2,2] = Add(%s, %x)
          return %y
        }
        """)


def test_convert_constants_saturates_mask_sentinel_and_keeps_inf():
    b = GraphBuilder()
    x = b.input("x", "f32", (2, 4))
    w = b.const("w", np.eye(4, dtype=np.float32))
    fmax = np.finfo(np.float32).max
    mask = b.const("mask", np.array([0.0, -fmax, -np.inf, 1.0 + 2 ** -12], np.float32))
    m = b.op("MatMul", x, w, out="m")
    b.output(b.op("Add", m, mask, out="y"))
    g = b.graph
    build_pipeline(DEFAULT_PIPELINE).run(g)
    data = g.constants["mask"].data
    assert g.constants["mask"].dtype.value == "bf16"
    assert str(data.dtype) == "bfloat16"
    values = data.astype(np.float32)
    assert values[0] == 0.0
    assert np.isfinite(values[1]) and values[1] < -3.3e38  # the bf16 minimum, not -inf
    assert values[2] == -np.inf
    assert values[3] == 1.0  # rounded to nearest even
    assert g.constants["w"].dtype.value == "bf16"
    assert "Cast(%w)" not in dump(g)


def test_convert_array_saturates_extremes_next_to_nan_and_leaves_plain_data_alone():
    from mixprec.ir.dtypes import DType, convert_array
    fmax = np.finfo(np.float32).max
    out = convert_array(np.array([np.nan, fmax, 1.5, -fmax], np.float32), DType.BFLOAT16).astype(np.float32)
    assert np.isnan(out[0]) and np.isfinite(out[1]) and out[1] > 3.3e38 and out[2] == 1.5 and out[3] < -3.3e38
    plain = np.array([1.0, -2.0, 3.0e38], np.float32)  # large but below FLT_MAX: rounds (to inf in fp16)
    assert np.array_equal(convert_array(plain, DType.BFLOAT16), plain.astype(DType.BFLOAT16.to_numpy()))
    assert convert_array(plain, DType.FLOAT16)[2] == np.inf


def test_keep_io_types_off_feeds_and_returns_bf16(run):
    out = run("""
        graph main(%x: f32[2,2], %w: f32[2,2]) -> (%y: f32[2,2]) {
          %y: f32[2,2] = MatMul(%x, %w)
          return %y
        }""", DEFAULT_PIPELINE.replace("keep-io-types", "keep-io-types{keep=false}"))
    assert out.startswith("graph main<generic>(%x: bf16[2,2], %w: bf16[2,2]) -> (%y: bf16[2,2]) {")
    assert "Cast" not in out


def test_fp16_is_the_same_pipeline_with_another_target(run):
    out = run("""
        graph main(%x: f32[2,2], %w: f32[2,2]) -> (%y: f32[2,2]) {
          %m: f32[2,2] = MatMul(%x, %w)
          %y: f32[2,2] = Relu(%m)
          return %y
        }""", DEFAULT_PIPELINE, precision="fp16")
    assert "%m: f16[2,2] = MatMul(%x.f16, %w.f16)  # f16 allow: allow list" in out
    assert "%y: f32[2,2] = Cast(%y.f16) {to=f32}" in out


def test_subgraph_bodies_convert_with_casts_at_their_boundaries(run):
    out = run("""
        graph main(%c: bool[], %x: f32[4,4], %w: f32[4,4]) -> (%y: f32[4,4]) {
          %y: f32[4,4] = If(%c) {else_branch=graph e() -> (%eo: f32[4,4]) {
            %eo: f32[4,4] = Relu(%x)
            return %eo
          }, then_branch=graph t() -> (%to: f32[4,4]) {
            %to: f32[4,4] = MatMul(%x, %w)
            return %to
          }}
          return %y
        }""", DEFAULT_PIPELINE)
    graph = parse(out)
    then = graph.nodes[-1].attrs["then_branch"]
    assert [n.op for n in then.nodes] == ["MatMul", "Cast"]
    assert then.outputs[0].name == "to" and then.outputs[0].dtype.value == "f32"
    assert [(n.op, n.outputs[0].name) for n in graph.nodes[:-1]] == [("Cast", "x.bf16"), ("Cast", "w.bf16")]


def test_pipeline_is_idempotent_on_its_own_output(run):
    src = """
        graph main(%x: f32[2,3], %ids: i64[2,3]) -> (%y: f32[2,4], %z: f32[2,4]) {
          const %w: f32[3,4]
          %f: f32[2,3] = Cast(%ids) {to=f32}
          %a0: f32[2,3] = Add(%x, %f)
          %m: f32[2,4] = MatMul(%a0, %w)
          %y: f32[2,4] = Relu(%m)
          %z: f32[2,4] = Softmax(%y)
          return %y, %z
        }"""
    once = run(src, DEFAULT_PIPELINE)
    assert run(once, DEFAULT_PIPELINE) == once


def test_infer_dtypes_fills_unknown_outputs_only(run):
    out = run("""
        graph main(%x: f32[2], %i: i64[2]) -> (%c: unk[2]) {
          %a: unk[2] = Relu(%x)
          %b: unk[2] = Cast(%a) {to=f16}
          %n: unk[2] = Neg(%i)
          %c: unk[2] = Add(%b, %n)
          %d: i32[2] = Identity(%x)
          return %c
        }""", "infer-dtypes")
    assert out == golden("""
        graph main<generic>(%x: f32[2], %i: i64[2]) -> (%c: f16[2]) {
          %a: f32[2] = Relu(%x)
          %b: f16[2] = Cast(%a) {to=f16}
          %n: i64[2] = Neg(%i)
          %c: f16[2] = Add(%b, %n)
          %d: i32[2] = Identity(%x)
          return %c
        }
        """)


def test_output_pins_keep_side_outputs_in_fp32(run, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('framework = "generic"\nallow = ["MatMul", "Norm"]\n\n[output_pins]\nNorm = [1, 2]\n')
    out = run("""
        graph main(%x: f32[2,2], %w: f32[2,2]) -> (%y: f32[2,2], %mean: f32[2], %var: f32[2]) {
          %m: f32[2,2] = MatMul(%x, %w)
          %n: f32[2,2], %mean: f32[2], %var: f32[2] = Norm(%m)
          %y: f32[2,2] = MatMul(%n, %w)
          return %y, %mean, %var
        }""", DEFAULT_PIPELINE, policy=str(policy))
    assert "%n: bf16[2,2], %mean: f32[2], %var: f32[2] = Norm(%m)  # bf16 allow: allow list" in out
    assert "Cast(%mean)" not in out and "Cast(%var)" not in out


def test_convert_constants_leaves_a_constant_that_would_overflow():
    """A constant whose values the target cannot hold (70000 > the f16 maximum 65504)
    keeps its type and its cast; one in range is stored in the target type."""
    from mixprec.ir.dtypes import DType
    from mixprec.passes.convert_constants import ConvertConstants
    b = GraphBuilder()
    x = b.input("x", "f16", (2,))
    big = b.const("big", np.array([1.0, 70000.0], np.float32))
    small = b.const("small", np.array([1.0, 60000.0], np.float32))
    y = b.op("Add", x, b.op("Cast", big, attrs={"to": DType.FLOAT16}, dtype="f16", out="big.f16"), out="y")
    b.output(b.op("Add", y, b.op("Cast", small, attrs={"to": DType.FLOAT16}, dtype="f16", out="small.f16"), out="z"))
    g = b.graph
    ConvertConstants(precision="fp16").run(g)
    text = dump(g)
    assert g.constants["big"].dtype.value == "f32" and "Cast(%big)" in text
    assert g.constants["small"].dtype.value == "f16" and "Cast(%small)" not in text
    assert g.constants["small"].data.tolist() == [1.0, 60000.0]


def test_convert_constants_converts_small_constants_together_exactly_as_one_by_one(monkeypatch):
    """Small float32 constants are converted as one concatenated array: each gets exactly
    what convert_array gives it alone (shapes, 0-d, FLT_MAX sentinels, NaN, inf, ties),
    and a large one is converted alone."""
    from mixprec.ir import lazy
    from mixprec.ir.dtypes import DType, convert_array
    from mixprec.passes import convert_constants
    monkeypatch.setattr(lazy, "BATCH_ELEMENTS", 64)
    rng = np.random.default_rng(0)
    fmax = np.finfo(np.float32).max
    arrays = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.array(1.00390625, np.float32),
              "c": np.array([fmax, -fmax, np.nan, np.inf, -0.0], np.float32),
              "d": rng.standard_normal((2, 1, 5)).astype(np.float32) * 1e30,
              "big": rng.standard_normal(100).astype(np.float32)}
    b = GraphBuilder()
    x = b.input("x", "bf16", (1,))
    for name, array in arrays.items():
        cast = b.op("Cast", b.const(name, array), attrs={"to": DType.BFLOAT16}, dtype="bf16", out=f"{name}.bf16")
        x = b.op("Add", x, cast, out=f"s{name}")
    b.output(x)
    g = b.graph
    assert convert_constants.ConvertConstants(precision="bf16").run(g).modified
    for name, array in arrays.items():
        got, want = g.constants[name].data, convert_array(array, DType.BFLOAT16)
        assert g.constants[name].dtype == DType.BFLOAT16 and got.shape == array.shape and got.dtype == want.dtype
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), name
    assert "Cast(" not in dump(g)
