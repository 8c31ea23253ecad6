"""Seeded fuzzing of the error surface: mutated ONNX models through the CLI and ``fit``,
mutated IR texts through ``ir.parse``/``verify`` and ``mixprec report``.

By default a small seeded subset runs (DEFAULT_CASES of each); ``pytest -m fuzz``
runs the full set (FUZZ_CASES of each, other seeds). Each test prints its tally of
outcomes (run with ``-s`` to see it)."""
from __future__ import annotations

import collections
import os
import time

import pytest

pytest.importorskip("onnx", reason="the model fuzz mutates ONNX models")
pytest.importorskip("onnxruntime", reason="converting ONNX models runs onnxruntime in the output check")

from tests.robustness import mutate  # noqa: E402
from tests.robustness.contract import (CASE_SECONDS, WRAPPED, assert_cli_contract, deadline,  # noqa: E402
                                       run_cli, snapshot)

DEFAULT_CASES = int(os.environ.get("MIXPREC_FUZZ_DEFAULT", "40"))
FUZZ_CASES = int(os.environ.get("MIXPREC_FUZZ_CASES", "300"))
FUZZ_SEED = int(os.environ.get("MIXPREC_FUZZ_SEED", "10000"))  # apart from the default subset's seeds


@pytest.fixture(scope="module")
def bases():
    return mutate.base_models()


@pytest.fixture(scope="module")
def texts():
    return mutate.base_texts()


class Tally:
    """Outcomes of one parametrized test, printed once its last case ran."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: collections.Counter = collections.Counter()
        self.started = time.perf_counter()

    def add(self, key: str) -> None:
        self.counts[key] += 1

    def report(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        return f"[{self.name}] {total} cases in {time.perf_counter() - self.started:.1f} s ({parts})"


_TALLIES: dict[str, Tally] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_tallies():
    yield
    for tally in _TALLIES.values():
        print("\n" + tally.report())
    _TALLIES.clear()


def _tally(name: str) -> Tally:
    return _TALLIES.setdefault(name, Tally(name))


# ------------------------------------------------------------------ models ---
def _convert_case(case: mutate.ModelCase, tmp_path, capsys, tally: Tally) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    src = folder / f"{case.base}.onnx"
    src.write_bytes(case.data)
    before = snapshot(folder)
    out = tmp_path / "out.onnx"
    argv = ["convert", str(src), "-o", str(out)] + ([] if case.check else ["--no-check"])
    what = f"seed {case.seed} ({case.base}: {'; '.join(case.what)})"
    outcome = run_cli(argv, capsys, what)
    assert_cli_contract(outcome, what, out)
    assert snapshot(folder) == before, f"{what}: the input folder changed"
    if outcome.rc == 0:
        assert out.is_file() and out.stat().st_size > 0, what
    tally.add(f"exit {outcome.rc}")


def _fit_case(case: mutate.ModelCase, tmp_path, tally: Tally) -> None:
    from mixprec.config import MixedPrecisionConfig
    from mixprec.errors import MixprecError
    from mixprec.mix_precision import fit
    src = tmp_path / f"{case.base}.onnx"
    src.write_bytes(case.data)
    what = f"fit seed {case.seed} ({case.base}: {'; '.join(case.what)})"
    try:
        with deadline(CASE_SECONDS, what):
            fit(str(src), MixedPrecisionConfig(check_outputs=case.check))
        tally.add("fit ok")
    except MixprecError as exc:
        assert "\n" not in str(exc).strip(), f"{what}: multi-line message {exc}"
        assert not WRAPPED.search(str(exc)), f"{what}: an internal exception wrapped in a MixprecError: {exc}"
        tally.add(f"fit {type(exc).__name__}")
    assert src.read_bytes() == case.data, f"{what}: the input changed"


def _model_case(seed: int, bases, tmp_path, capsys, name: str) -> None:
    case = mutate.model_case(seed, bases)
    tally = _tally(name)
    if seed % 4 == 3:  # every fourth case goes through fit instead of the CLI
        _fit_case(case, tmp_path, tally)
    else:
        _convert_case(case, tmp_path, capsys, tally)


@pytest.mark.parametrize("seed", range(DEFAULT_CASES))
def test_mutated_models(seed, bases, tmp_path, capsys):
    _model_case(seed, bases, tmp_path, capsys, "models")


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", range(FUZZ_SEED, FUZZ_SEED + FUZZ_CASES))
def test_mutated_models_fuzz(seed, bases, tmp_path, capsys):
    _model_case(seed, bases, tmp_path, capsys, "models (fuzz)")


# ------------------------------------------------------------------ IR texts ---
def _text_case(seed: int, texts, tmp_path, capsys, name: str) -> None:
    from mixprec.errors import IRError, ParseError
    from mixprec.ir import dump, parse, verify
    text, steps = mutate.text_case(seed, texts)
    what = f"text seed {seed} ({', '.join(steps)})"
    tally = _tally(name)
    with deadline(CASE_SECONDS, what):
        try:
            graph = parse(text)
        except ParseError as exc:
            assert str(exc).startswith("line ") and ", column " in str(exc).split(":")[0], f"{what}: {exc}"
            tally.add("ParseError")
            graph = None
        if graph is not None:
            again = dump(graph)  # whatever parses dumps, and the dump parses back to itself
            assert dump(parse(again)) == again, what
            try:
                verify(graph)
                tally.add("parsed, verified")
            except IRError:
                tally.add("parsed, IRError")
    if seed % 5 == 0:  # a fifth also go through `mixprec report FILE.ir`
        path = tmp_path / "case.ir"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        before = path.read_bytes()
        outcome = run_cli(["report", str(path)], capsys, what)
        assert_cli_contract(outcome, what)
        assert path.read_bytes() == before, what
        tally.add(f"report exit {outcome.rc}")


@pytest.mark.parametrize("seed", range(DEFAULT_CASES))
def test_mutated_ir_texts(seed, texts, tmp_path, capsys):
    _text_case(seed, texts, tmp_path, capsys, "texts")


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", range(FUZZ_SEED, FUZZ_SEED + FUZZ_CASES))
def test_mutated_ir_texts_fuzz(seed, texts, tmp_path, capsys):
    _text_case(seed, texts, tmp_path, capsys, "texts (fuzz)")
