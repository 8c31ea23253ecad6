"""Trials on Ray (``TuningCriterion(workers=2)`` on a local two-CPU Ray): the same trials, in
the same order, the same pins and the same result as the sequential search on the digits
ONNX MLPs with planted sensitive Adds."""
import random
import sys

import pytest

ray = pytest.importorskip("ray", reason="trials on Ray need ray (pip install mixprec[ray])")
pytest.importorskip("onnxruntime", reason="the digits models run in onnxruntime")
pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.config import AccuracyCriterion, TuningCriterion  # noqa: E402
from mixprec.errors import ConfigError  # noqa: E402
from mixprec.ir.pins import pin_of  # noqa: E402
from mixprec.tuning import parallel  # noqa: E402
from tests.tuning.digits_models import digits, onnx_mlp, onnx_top1  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": ":".join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


def _pins(graph):
    return {node.name: pin_of(node) for node in graph.all_nodes() if pin_of(node) is not None}


def _digits_top1(model):
    """A module-level, picklable eval_func: it loads its data inside (in the worker)."""
    _, _, x, y = digits()
    return onnx_top1(model, x, y)


def _fit(model, workers):
    config = MixedPrecisionConfig(accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01),
                                  tuning_criterion=TuningCriterion(workers=workers))
    return mix_precision.fit(model, config, eval_func=_digits_top1)


@pytest.mark.parametrize("layers, k, residual", [(10, 2, False), (24, 2, True)])
def test_ray_gives_the_sequential_trials_and_pins(local_ray, caplog, layers, k, residual):
    planted = sorted(random.Random(layers + k).sample(range(layers), k))
    model = onnx_mlp(layers, planted, residual=residual)
    sequential = _fit(model, 1)
    with caplog.at_level("INFO", logger="mixprec.tuning.search"):
        parallel_run = _fit(model, 2)
    assert "evaluating 2 configurations in parallel" in caplog.text
    assert parallel_run.report.tuning["trials"] == sequential.report.tuning["trials"]
    assert parallel_run.report.tuning["fallback_nodes"] == sequential.report.tuning["fallback_nodes"]
    assert sequential.report.tuning["fallback_nodes"]
    pins = [_pins(run.ir.graph) for run in (sequential, parallel_run)]
    assert pins[0] == pins[1] and any(pin.source == "tuning" for pin in pins[0].values())
    assert parallel_run.model.SerializeToString() == sequential.model.SerializeToString()


def _planted_score(planted, lowered):
    """A picklable evaluation of test_group_search's fake models (frozensets of low nodes)."""
    return 1.0 - 0.1 * sum(f"a{i}" in lowered for i in planted)


@pytest.mark.parametrize("ranked", [False, True])
def test_ray_search_walks_the_sequential_trials(local_ray, ranked):
    """On fake models (no conversion cost): galloping, bisection and the 'do the nodes found
    suffice?' rounds all give the sequential trials, with speculative evaluations in between."""
    import functools

    from mixprec.config import AccuracyCriterion as Criterion
    from mixprec.tuning import fallback_search
    from tests.tuning.test_group_search import _layered
    planted = [3, 17, 30, 38]
    convert = _layered(40, planted)[0]
    ranking = [f"s{i}" for i in planted] + [f"a{i}" for i in planted] if ranked else None
    runs = [fallback_search(convert, functools.partial(_planted_score, planted), 1.0, Criterion(tolerable_loss=0.01),
                            TuningCriterion(), ranking=ranking, workers=workers) for workers in (1, 2)]
    assert [t.__dict__ for t in runs[0].trials] == [t.__dict__ for t in runs[1].trials]
    assert runs[0].fallback_nodes == runs[1].fallback_nodes and sorted(runs[0].fallback_nodes) == \
        sorted(f"a{i}" for i in planted)
    assert runs[0].duplicates_skipped == runs[1].duplicates_skipped


def test_order_of_scores_does_not_depend_on_completion(local_ray):
    import time

    def slow_first(value):
        time.sleep(0.5 if value == 0 else 0.0)  # the first task finishes last
        return float(value)
    pool = parallel.make_pool(slow_first, 2)
    assert pool.map([0, 1, 2, 3]) == [0.0, 1.0, 2.0, 3.0]
    pool.close()
    assert local_ray.is_initialized()  # a pool does not shut down a Ray it did not start


def test_evaluation_errors_come_back_as_their_own_type(local_ray):
    def broken(_):
        raise ValueError("the metric failed")
    pool = parallel.make_pool(broken, 2)
    with pytest.raises(ValueError, match="the metric failed"):
        pool.map([1, 2])


def test_without_ray_workers_need_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(parallel.RayUnavailable, match=r"pip install mixprec\[ray\]"):
        parallel.make_pool(float, 2)
    assert parallel.make_pool(float, 1).map(["1.5"]) == [1.5]


def test_workers_must_be_a_positive_whole_number():
    with pytest.raises(ConfigError, match="workers must be a whole number >= 1"):
        TuningCriterion(workers=0)


def test_fit_starts_and_stops_a_local_ray_when_none_runs():
    """In a fresh process with no Ray running and no PYTHONPATH: fit starts a local Ray
    whose workers import the test's eval_func through the driver's sys.path, and shuts
    it down after the search."""
    import os
    import subprocess
    from pathlib import Path
    code = ("import ray\n"
            "from tests.tuning.test_ray_trials import _fit\n"
            "from tests.tuning.digits_models import onnx_mlp\n"
            "result = _fit(onnx_mlp(10, [3]), 2)\n"
            "print(result.report.tuning['fallback_nodes'], ray.is_initialized())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['down3'] False"
