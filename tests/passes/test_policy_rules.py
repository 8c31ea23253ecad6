"""Golden tests for the two policy rules: a normalization of a raw graph input is pinned
FP32 (pin-input-norms), and a gather/embedding table constant is stored in low precision
with the gathered rows cast up (assign-precision step 8, insert-casts, convert-constants)."""
import pytest

from mixprec.errors import PolicyError
from mixprec.passes import DEFAULT_PIPELINE
from mixprec.passes.policies import parse_policy

from .conftest import golden

PAINT = "infer-dtypes,mark-shape-subgraphs,pin-input-norms,apply-overrides,assign-precision"
RULE = ("policy rule: normalizes a graph input (%data): kept fp32 so the input is not rounded before its mean "
        "is removed")

MXNET_STEM = """
    graph main<mxnet>(%data: f32[1,3,8,8]) -> (%out: f32[1,4,8,8]) {
      const %g: f32[3]
      const %b: f32[3]
      const %m: f32[3]
      const %v: f32[3]
      const %w: f32[4,3,1,1]
      %r: f32[1,3,8,8] = Reshape(%data) {shape="(1, 3, 8, 8)"}
      %bn: f32[1,3,8,8] = BatchNorm(%r, %g, %b, %m, %v)
      %out: f32[1,4,8,8] = Convolution(%bn, %w) {kernel="(1, 1)", no_bias="True", num_filter="4"}
      return %out
    }"""


def test_mxnet_batchnorm_of_the_raw_input_stays_fp32(run):
    """Today's painting makes the BatchNorm (a clear op) bf16 next to the Convolution,
    which rounds the raw input before its mean is removed."""
    assert run(MXNET_STEM, DEFAULT_PIPELINE) == golden(f"""
        graph main<mxnet>(%data: f32[1,3,8,8]) -> (%out: f32[1,4,8,8]) {{
          const %g: f32[3]
          const %b: f32[3]
          const %m: f32[3]
          const %v: f32[3]
          const %w: bf16[4,3,1,1]
          %r: f32[1,3,8,8] = Reshape(%data) {{shape="(1, 3, 8, 8)"}}  # f32 deny: deny list
          %bn: f32[1,3,8,8] = BatchNorm(%r, %g, %b, %m, %v)  # f32 clear pin=policy-rule: {RULE}
          %bn.bf16: bf16[1,3,8,8] = amp_cast(%bn) {{dtype=bf16}}  # bf16 cast: inserted: first reader 'out' runs in bf16
          %out.bf16: bf16[1,4,8,8] = Convolution(%bn.bf16, %w) {{kernel="(1, 1)", no_bias="True", num_filter="4"}} @out  # bf16 allow: allow list
          %out: f32[1,4,8,8] = amp_cast(%out.bf16) {{dtype=f32}} @out.bf16.f32  # f32 cast: inserted: graph output keeps its f32 type
          return %out
        }}
        """)


def test_batchnorm_inside_the_network_is_still_painted_low(run):
    out = run("""
        graph main<mxnet>(%data: f32[1,3,8,8]) -> (%out: f32[1,4,8,8]) {
          const %w: f32[3,3,1,1]
          const %g: f32[3]
          const %b: f32[3]
          const %m: f32[3]
          const %v: f32[3]
          const %w2: f32[4,3,1,1]
          %c: f32[1,3,8,8] = Convolution(%data, %w) {kernel="(1, 1)", no_bias="True", num_filter="3"}
          %bn: f32[1,3,8,8] = BatchNorm(%c, %g, %b, %m, %v)
          %out: f32[1,4,8,8] = Convolution(%bn, %w2) {kernel="(1, 1)", no_bias="True", num_filter="4"}
          return %out
        }""", PAINT)
    assert "%bn: f32[1,3,8,8] = BatchNorm(%c, %g, %b, %m, %v)  # bf16 clear: between allow nodes" in out


def test_onnx_normalization_through_transpose_is_pinned(run):
    out = run("""
        graph main<onnx>(%data: f32[1,8,8,3]) -> (%out: f32[1,4,8,8]) {
          const %s: f32[3]
          const %b: f32[3]
          const %m: f32[3]
          const %v: f32[3]
          const %w: f32[4,3,1,1]
          %t: f32[1,3,8,8] = Transpose(%data) {perm=[0, 3, 1, 2]}
          %bn: f32[1,3,8,8] = BatchNormalization(%t, %s, %b, %m, %v)
          %out: f32[1,4,8,8] = Conv(%bn, %w)
          return %out
        }""", PAINT)
    assert f"%bn: f32[1,3,8,8] = BatchNormalization(%t, %s, %b, %m, %v)  # f32 infer pin=policy-rule: {RULE}" in out
    assert "%out: f32[1,4,8,8] = Conv(%bn, %w)  # bf16 allow: allow list" in out


def test_torch_batch_norm_of_an_input_is_pinned_and_a_user_override_wins(run):
    text = """
        graph main<torch>(%data: f32[2,4]) -> (%out: f32[2,3]) {
          const %lw: f32[4]
          const %lb: f32[4]
          const %w: f32[3,4]
          %ln: f32[2,4] = aten.native_batch_norm.default(%data, %lw, %lb)
          %out: f32[2,3] = aten.linear.default(%ln, %w)
          return %out
        }"""
    assert f"# f32 infer pin=policy-rule: {RULE}" in run(text, PAINT)
    forced = run(text, "infer-dtypes,mark-shape-subgraphs,pin-input-norms,apply-overrides{lp_nodes=[ln]},"
                       "assign-precision")
    assert "%ln: f32[2,4] = aten.native_batch_norm.default(%data, %lw, %lb)  # bf16 infer pin=user: user override" in forced


EMBEDDING = """
    graph main<torch>(%ids: i64[2,5]) -> (%out: f32[2,5,3]) {
      const %table: f32[10,4]
      const %lw: f32[4]
      const %lb: f32[4]
      const %w: f32[3,4]
      %e: f32[2,5,4] = aten.embedding.default(%table, %ids)
      %ln: f32[2,5,4] = aten.layer_norm.default(%e, %lw, %lb) {normalized_shape=[4]}
      %out: f32[2,5,3] = aten.linear.default(%ln, %w)
      return %out
    }"""


def test_embedding_table_is_stored_bf16_and_rows_are_cast_up(run):
    """Embedding -> LayerNorm -> Linear: the table used to stay f32 (the embedding is a
    clear op next to a deny op)."""
    assert run(EMBEDDING, DEFAULT_PIPELINE) == golden("""
        graph main<torch>(%ids: i64[2,5]) -> (%out: f32[2,5,3]) {
          const %table: bf16[10,4]
          const %lw: f32[4]
          const %lb: f32[4]
          const %w: bf16[3,4]
          %e: bf16[2,5,4] = aten.embedding.default(%table, %ids)  # bf16 clear: gather table %table stored in bf16 (a lookup is exact); the rows are cast up for f32 readers (step 8)
          %e.f32: f32[2,5,4] = aten._to_copy.default(%e) {dtype=f32}  # f32 cast: inserted: first reader 'ln' runs in f32
          %ln: f32[2,5,4] = aten.layer_norm.default(%e.f32, %lw, %lb) {normalized_shape=[4]}  # f32 deny: deny list
          %ln.bf16: bf16[2,5,4] = aten._to_copy.default(%ln) {dtype=bf16}  # bf16 cast: inserted: first reader 'out' runs in bf16
          %out.bf16: bf16[2,5,3] = aten.linear.default(%ln.bf16, %w) @out  # bf16 allow: allow list
          %out: f32[2,5,3] = aten._to_copy.default(%out.bf16) {dtype=f32} @out.bf16.f32  # f32 cast: inserted: graph output keeps its f32 type
          return %out
        }
        """)


def test_converting_the_converted_embedding_graph_changes_nothing(run):
    once = run(EMBEDDING, DEFAULT_PIPELINE)
    assert run(once, DEFAULT_PIPELINE) == once


def test_table_also_read_in_fp32_stays_fp32(run):
    """A table that an FP32 op reads too (tied weights into a deny op) is not rounded:
    it would be cast on every run."""
    out = run("""
        graph main<torch>(%ids: i64[2,5]) -> (%out: f32[2,5,3], %s: f32[]) {
          const %table: f32[10,4]
          const %w: f32[3,4]
          %e: f32[2,5,4] = aten.embedding.default(%table, %ids)
          %out: f32[2,5,3] = aten.linear.default(%e, %w)
          %s: f32[] = aten.sum.default(%table)
          return %out, %s
        }""", PAINT)
    assert "%e: f32[2,5,4] = aten.embedding.default(%table, %ids)  # bf16 clear: clear op connected" in out
    out = run("""
        graph main<torch>(%ids: i64[2,5]) -> (%out: f32[2,5,4], %s: f32[]) {
          const %table: f32[10,4]
          const %w: f32[3,4]
          %e: f32[2,5,4] = aten.embedding.default(%table, %ids)
          %out: f32[2,5,4] = aten.layer_norm.default(%e) {normalized_shape=[4]}
          %s: f32[] = aten.sum.default(%table)
          %x: f32[2,5,3] = aten.linear.default(%out, %w)
          return %out, %s
        }""", PAINT)
    assert "%e: f32[2,5,4] = aten.embedding.default(%table, %ids)  # f32 clear: clear op not connected" in out


def test_table_stays_fp32_when_nothing_runs_low_or_the_user_keeps_it(run):
    alone = """
        graph main<torch>(%ids: i64[2,5]) -> (%out: f32[2,5,4]) {
          const %table: f32[10,4]
          %e: f32[2,5,4] = aten.embedding.default(%table, %ids)
          %out: f32[2,5,4] = aten.layer_norm.default(%e) {normalized_shape=[4]}
          return %out
        }"""
    assert "const %table: f32[10,4]" in run(alone, DEFAULT_PIPELINE)
    kept = run(EMBEDDING, DEFAULT_PIPELINE.replace("apply-overrides", "apply-overrides{fp32_nodes=[e]}"))
    assert "const %table: f32[10,4]" in kept
    assert "# f32 clear pin=user: user override: node 'e' -> f32" in kept


def test_mxnet_embedding_indices_are_never_cast(run):
    """MXNet stores token ids as float32: the table goes bf16, the ids stay f32."""
    out = run("""
        graph main<mxnet>(%data: f32[2,5]) -> (%out: f32[2,5,3]) {
          const %table: f32[10,4]
          const %w: f32[3,4]
          %e: f32[2,5,4] = Embedding(%data, %table) {input_dim="10", output_dim="4"}
          %out: f32[2,5,3] = FullyConnected(%e, %w) {flatten="False", no_bias="True", num_hidden="3"}
          return %out
        }""", DEFAULT_PIPELINE)
    assert "const %table: bf16[10,4]" in out
    assert "%e: bf16[2,5,4] = Embedding(%data, %table)" in out


@pytest.mark.parametrize("key", ["input_normalizations", "gather_tables"])
def test_rule_tables_are_validated(key):
    with pytest.raises(PolicyError, match=key):
        parse_policy({"framework": "x", key: {"BatchNorm": "0"}}, "test.toml")


MIXED = """
    graph main<onnx>(%x: f32[2,4]) -> (%out: f32[2,4]) {
      const %w1: bf16[4,4]
      const %w2: f32[4,4]
      %x.bf16: bf16[2,4] = Cast(%x) {to=bf16}
      %h.bf16: bf16[2,4] = MatMul(%x.bf16, %w1)
      %h: f32[2,4] = Cast(%h.bf16) {to=f32}
      %r: f32[2,4] = Relu(%h)
      %out: f32[2,4] = MatMul(%r, %w2)
      return %out
    }"""
EXISTING = ("policy rule: the input model is already mixed precision (bf16 allow ops) and runs this allow op in f32 "
            "(an earlier conversion or its author kept it): kept f32")


def test_an_already_mixed_model_is_left_as_it_is(run):
    """Converting a converted model lowered the MatMul an earlier conversion kept FP32
    (the reconvert stage of the corpus failed on every model with a fallback)."""
    assert run(MIXED, DEFAULT_PIPELINE) == golden(f"""
        graph main<onnx>(%x: f32[2,4]) -> (%out: f32[2,4]) {{
          const %w1: bf16[4,4]
          const %w2: f32[4,4]
          %x.bf16: bf16[2,4] = Cast(%x) {{to=bf16}}  # keep cast: existing cast kept as is
          %h.bf16: bf16[2,4] = MatMul(%x.bf16, %w1)  # bf16 allow: allow list
          %h: f32[2,4] = Cast(%h.bf16) {{to=f32}}  # keep cast: existing cast kept as is
          %r: f32[2,4] = Relu(%h)  # f32 clear: clear op not connected to an allow node
          %out: f32[2,4] = MatMul(%r, %w2)  # f32 allow pin=policy-rule: {EXISTING}
          return %out
        }}
        """)


def test_fp32_compute_with_low_precision_weights_is_not_mixed(run):
    """FP16 weights cast up to FP32 (silero-vad-half) are not a mixed model: it converts."""
    out = run("""
        graph main<onnx>(%x: f32[2,4]) -> (%out: f32[2,4]) {
          const %w: f16[4,4]
          %w32: f32[4,4] = Cast(%w) {to=f32}
          %out: f32[2,4] = MatMul(%x, %w32)
          return %out
        }""", PAINT.replace("pin-input-norms", "pin-input-norms,pin-existing-fp32"))
    assert "pin=" not in out
    assert "%out: f32[2,4] = MatMul(%x, %w32)  # bf16 allow: allow list" in out
