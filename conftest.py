"""Repository-wide pytest hooks. Under CI (CI=true) a skipped test fails: CI installs all
four frameworks, so a skip there means a missing install step, not a missing framework."""
import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every framework must be installed: {reason}"


#: markers of long runs that a plain ``pytest`` (and CI) leaves out; ``-m NAME`` selects them
LONG_RUNS = ("fuzz", "slow", "corpus")


#: why the mxnet_onednn_bf16 tests were left out on this machine (the terminal summary says it)
_HARDWARE_DESELECTED: list[str] = []


def _deselect_what_this_cpu_cannot_run(config, items) -> None:
    """Tests marked mxnet_onednn_bf16 run MXNet's oneDNN bf16 kernels (bf16 Convolution,
    FullyConnected, Pooling...), which oneDNN runs on AVX-512 CPUs only. On a CPU that
    cannot (measured by mixprec.runtimes.mxnet.onednn_runs_bf16) they are deselected, not
    skipped: the machine, not an install, lacks them. What mixprec does on such a CPU is
    tested everywhere (tests/test_mxnet_without_avx512.py)."""
    marked = [item for item in items if item.get_closest_marker("mxnet_onednn_bf16")]
    if not marked:
        return
    try:
        from mixprec.runtimes.mxnet import onednn_runs_bf16
    except Exception:  # no mxnet: the tests' own imports skip them with the reason
        return
    if onednn_runs_bf16():
        return
    config.hook.pytest_deselected(items=marked)
    items[:] = [item for item in items if item not in set(marked)]
    _HARDWARE_DESELECTED.append(f"{len(marked)} tests deselected: this CPU cannot run MXNet's oneDNN bf16 "
                                "kernels (they need AVX-512); marker mxnet_onednn_bf16")


def pytest_terminal_summary(terminalreporter):
    for line in _HARDWARE_DESELECTED:
        terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    """Without ``-m``, tests marked fuzz, slow or corpus are deselected (not skipped, so CI
    counts no skip), except corpus entries also marked corpus_ci (the CI subset); tests this
    CPU cannot run are deselected too (:func:`_deselect_what_this_cpu_cannot_run`)."""
    _deselect_what_this_cpu_cannot_run(config, items)
    if config.option.markexpr:
        return
    keep, drop = [], []
    for item in items:
        long_run = any(item.get_closest_marker(name) for name in LONG_RUNS)
        (drop if long_run and not item.get_closest_marker("corpus_ci") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
