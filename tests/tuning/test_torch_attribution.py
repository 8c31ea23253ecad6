"""Error attribution on torch models: the torch backend returns the probed intermediate
values after the module's outputs (``meta["probe_outputs"]``), so the planted sensitive node
is ranked first, by ``mixprec report --errors`` and by the tuning's ranking."""
import json

import pytest

torch = pytest.importorskip("torch", reason="the torch models need torch")
pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.backends import torch as backend  # noqa: E402
from mixprec.frontends import torch as frontend  # noqa: E402
from mixprec.tuning import attribution  # noqa: E402
from tests.tuning.digits_models import digits, torch_mlp  # noqa: E402


def _inputs(rows=8):
    _, _, x, _ = digits()
    return torch.tensor(x[:rows])


def test_probed_module_returns_the_probes_after_its_outputs():
    model = frontend.load(torch_mlp(3, []), (_inputs(),))
    names = [v.name for v in model.graph.values() if v.producer is not None and v.producer.op == "aten.relu.default"]
    module = backend.emit(attribution.with_outputs(model, names))
    plain = backend.emit(model)
    out = module(_inputs())
    assert isinstance(out, tuple) and len(out) == 1 + len(names) == 4
    assert torch.equal(out[0], plain(_inputs()))
    assert torch.equal(out[1], torch.relu(torch_mlp(3, []).lins[0](_inputs())))
    assert not isinstance(plain(_inputs()), tuple)  # off by default


def test_attribution_ranks_the_planted_node_first():
    errors = mix_precision.error_attribution(torch_mlp(10, [6]), MixedPrecisionConfig(example_inputs=(_inputs(),)))
    assert errors[0].op == "aten.sub.Tensor" and errors[0].rel_error > 0.5
    assert all(e.local < 0.05 for e in errors[1:])


def test_tuning_on_torch_is_ranked():
    _, _, x, y = digits()
    inputs = torch.tensor(x)

    def eval_func(module):
        with torch.no_grad():
            return float((module(inputs).float().argmax(1).numpy() == y).mean())
    config = MixedPrecisionConfig(example_inputs=(inputs[:4],))
    result = mix_precision.fit(torch_mlp(10, [4]), config, eval_func=eval_func)
    assert result.report.tuning["ranked"]
    assert result.report.tuning["fallback_nodes"] in (["add"], ["sub"])  # the planted (h + 4096) - 4096
    assert len(result.report.tuning["trials"]) <= 4


def test_report_errors_on_a_pt2(tmp_path, capsys):
    from mixprec.cli import main
    path = tmp_path / "planted.pt2"
    torch.export.save(torch.export.export(torch_mlp(10, [2]), (_inputs(),)), str(path))
    assert main(["report", str(path), "--errors", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)
    assert errors[0]["op"] == "aten.sub.Tensor" and errors[0]["rel_error"] > 0.5
