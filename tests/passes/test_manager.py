"""PassManager, registry, pipeline strings, plug-ins and apply-overrides."""
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest

from mixprec.errors import ConfigError, PassError, PipelineError, PostconditionError, PreconditionError
from mixprec.passes.common import graph_policy, mixed_float_inputs
from mixprec.ir import DType, dump, parse
from mixprec.passes import (DEFAULT_PIPELINE, Pass, PassManager, PassResult, build_pipeline, function_pass,
                            list_passes, parse_pipeline, registry)

SRC = """graph main(%x: f32[2,2], %w: f32[2,2]) -> (%y: f32[2,2]) {
  %m: f32[2,2] = MatMul(%x, %w)
  %y: f32[2,2] = Relu(%m)
  return %y
}
"""


def test_every_builtin_pass_is_listed_with_a_description():
    passes = list_passes()
    for name in DEFAULT_PIPELINE.split(","):
        assert passes[name], name
    assert all(len(d.splitlines()) == 1 for d in passes.values())


def test_parse_pipeline_options():
    assert parse_pipeline("a,b{x=1,y=[P,Q],z=true,s=\"t\"}") == [
        ("a", {}), ("b", {"x": 1, "y": ["P", "Q"], "z": True, "s": "t"})]
    with pytest.raises(PipelineError, match="unbalanced"):
        parse_pipeline("a{x=1")


def test_unknown_pass_and_option_are_clear_errors():
    with pytest.raises(PipelineError, match="unknown pass 'insert-cast'"):
        build_pipeline("insert-cast")
    with pytest.raises(PipelineError, match="has no option \\['precison'\\]"):
        build_pipeline("assign-precision{precison=fp16}")


def test_dump_dir_writes_ir_after_each_changing_pass(tmp_path):
    g = parse(SRC)
    build_pipeline(DEFAULT_PIPELINE, dump_dir=str(tmp_path)).run(g)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-input.ir", "06-assign-precision.ir", "07-insert-casts.ir"]
    assert (tmp_path / "07-insert-casts.ir").read_text() == dump(g)


@pytest.fixture(params=["here", "background"])
def where(request, monkeypatch):
    """Verification in line, or (as on graphs of background.LARGE_GRAPH_NODES nodes) in
    forked children: returns the list of background jobs started."""
    import sys
    import threading

    from mixprec import background
    started = []
    if request.param == "background":
        if not sys.platform.startswith("linux"):
            pytest.skip("background jobs fork on Linux only")
        monkeypatch.setattr(background, "LARGE_GRAPH_NODES", 0)
        monkeypatch.setattr(threading, "active_count", lambda: 1)  # threads other tests' frameworks left
        real = background.start
        monkeypatch.setattr(background, "start", lambda fn, what: started.append(what) or real(fn, what))
    return started


@function_pass("test-breaker", register=False)
def breaker(graph):
    """retype a MatMul output without casts"""
    graph.nodes[0].inputs[0].dtype = DType.BFLOAT16
    graph.nodes[0].set_input(0, graph.nodes[0].outputs[0])
    return True


def test_pass_that_breaks_the_ir_is_named(where):
    with pytest.raises(PassError, match="pass 'test-breaker' broke the IR"):
        PassManager([breaker()]).run(parse(SRC))
    assert where == [] or where == ["verification after the input", "verification after pass 'test-breaker'"]


def test_the_first_break_is_the_error_when_a_later_pass_fails_on_it(where):
    """In the background the next pass runs before the verification answers: when it fails
    (on the broken IR), the error is still the break, as in line."""
    @function_pass("test-crasher", register=False)
    def crasher(graph):
        """fails"""
        raise RuntimeError("confused by a cycle")

    with pytest.raises(PassError, match="pass 'test-breaker' broke the IR: .*not topological"):
        PassManager([breaker(), crasher()]).run(parse(SRC))
    graph = parse(SRC)
    graph.nodes[1].set_input(0, graph.nodes[1].outputs[0])
    with pytest.raises(PassError, match="the input graph is already broken"):
        PassManager([crasher()]).run(graph)
    good = parse(SRC)
    assert PassManager(build_pipeline(DEFAULT_PIPELINE).passes).run(good).modified
    assert "bf16[2,2] = MatMul" in dump(good)  # a sound pipeline passes every verification


def test_a_pass_that_breaks_its_guarantee_is_named(where):
    """fold-casts ensures every decided node reads one float type; a fold that forgets a
    cast is caught after it runs, naming it (PostconditionError)."""
    graph = parse(SRC)
    build_pipeline("infer-dtypes,mark-shape-subgraphs,assign-precision,insert-casts").run(graph)

    @dataclass
    class BadFold(Pass):
        name = "bad-fold"

        def run(self, graph):
            cast = next(n for n in graph.nodes if n.op == "Cast" and n.outputs[0].dtype == DType.BFLOAT16)
            cast.outputs[0].replace_all_uses_with(cast.inputs[0])
            graph.remove(cast)
            return PassResult(graph, True)

        def ensures(self, graph):
            return mixed_float_inputs(graph, graph_policy(graph, None))

    with pytest.raises(PostconditionError, match="pass 'bad-fold' broke its guarantee: node .* mixes float input"):
        PassManager([BadFold()]).run(graph)


def test_insert_casts_before_any_decision_is_a_precondition_error():
    with pytest.raises(PreconditionError, match="pass 'insert-casts' cannot run .* no precision decision; run "
                                                "assign-precision"):
        build_pipeline("infer-dtypes,insert-casts").run(parse(SRC))


def test_the_default_pipeline_declares_its_order_through_requires():
    from mixprec.passes.insert_casts import InsertCasts
    graph = parse(SRC)
    assert InsertCasts().requires(graph) is not None
    build_pipeline("infer-dtypes,mark-shape-subgraphs,assign-precision").run(graph)
    assert InsertCasts().requires(graph) is None


def test_registering_a_name_twice_is_an_error():
    @dataclass
    class Dup(Pass):
        name = "insert-casts"

        def run(self, graph):
            return PassResult(graph, False)

    with pytest.raises(PipelineError, match="registered twice"):
        registry.register_pass(Dup)


def test_third_party_pass_from_entry_point(monkeypatch):
    @dataclass
    class Plugin(Pass):
        name = "plugin-fp32-relu"
        description = "keep every Relu in FP32"

        def run(self, graph):
            for node in graph.nodes:
                if node.op == "Relu":
                    node.meta.update(precision="f32", category="clear", reason="plugin says so")
            return PassResult(graph, True)

    import sys
    import types
    mod = types.ModuleType("fake_mixprec_plugin")
    mod.Plugin = Plugin
    monkeypatch.setitem(sys.modules, "fake_mixprec_plugin", mod)
    ep = EntryPoint("plugin-fp32-relu", "fake_mixprec_plugin:Plugin", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    assert "plugin-fp32-relu" in list_passes()
    spec = DEFAULT_PIPELINE.replace("assign-precision", "assign-precision,plugin-fp32-relu")
    g = parse(SRC)
    build_pipeline(spec).run(g)
    assert "%y: f32[2,2] = Relu(%m.f32)  # f32 clear: plugin says so" in dump(g)


@pytest.mark.parametrize("options, expected", [
    ({"fp32_ops": ["MatMul"]}, {"m": "f32", "y": "f32"}),
    ({"fp32_nodes": ["m"]}, {"m": "f32", "y": "f32"}),
    ({"fp32_nodes": ["enc*"]}, {"m": "f32", "y": "f32"}),
    ({"lp_nodes": ["y"], "fp32_nodes": ["m"]}, {"m": "f32", "y": "bf16"}),
])
def test_overrides_by_op_type_node_name_and_scope(options, expected):
    g = parse(SRC)
    g.nodes[0].meta["scope"] = "encoder.layer.3.attention"
    build_pipeline("infer-dtypes,apply-overrides,assign-precision", **options).run(g)
    assert {n.name: n.meta["precision"] for n in g.nodes} == expected
    assert g.nodes[0].meta["reason"].startswith("user override")


def test_override_by_module_path_prefix():
    g = parse(SRC)
    g.nodes[0].meta["scope"] = "encoder.layer.3.attention.self"
    build_pipeline("infer-dtypes,apply-overrides,assign-precision", fp32_nodes=["encoder.layer.3"]).run(g)
    assert g.nodes[0].meta["precision"] == "f32"


def test_override_errors_name_the_typo():
    with pytest.raises(ConfigError, match="unknown op type 'Matmul'"):
        build_pipeline("apply-overrides,assign-precision", fp32_ops=["Matmul"]).run(parse(SRC))
    with pytest.raises(ConfigError, match="no node or module matches 'nope'"):
        build_pipeline("apply-overrides,assign-precision", fp32_nodes=["nope"]).run(parse(SRC))


def test_installed_plugin_is_found_through_its_entry_point(tmp_path):
    """A real distribution on sys.path (dist-info with entry_points.txt), seen by a fresh
    interpreter: `mixprec passes` lists its pass and a pipeline can use it."""
    import subprocess
    import sys
    import textwrap
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from mixprec.passes import Pass, PassResult

        @dataclass
        class CountNodes(Pass):
            name = "count-nodes"
            description = "record the node count (a test plug-in)"

            def run(self, graph):
                graph.name = f"n{len(graph)}"
                return PassResult(graph, True)
    '''))
    info = tmp_path / "my_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mixprec.passes]\ncount-nodes = my_plugin:CountNodes\n")
    code = ("import sys; from mixprec.cli import main; from mixprec.ir import parse; "
            "from mixprec.passes import build_pipeline; main(['passes']); "
            f"g = parse({SRC!r}); build_pipeline('count-nodes').run(g); print('renamed', g.name)")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "count-nodes           record the node count (a test plug-in)" in out
    assert "renamed n2" in out


def test_deferred_verification_is_raised_by_finish(where, request):
    """run(defer=True) leaves background verifications to finish() (fit emits meanwhile):
    the same error, from finish(); verified in line, run() raises it as always."""
    manager = PassManager([breaker()])
    if request.node.callspec.params["where"] == "here":
        with pytest.raises(PassError, match="pass 'test-breaker' broke the IR"):
            manager.run(parse(SRC), defer=True)
        return
    manager.run(parse(SRC), defer=True)
    with pytest.raises(PassError, match="pass 'test-breaker' broke the IR"):
        manager.finish()
    manager.finish()  # nothing left to collect
