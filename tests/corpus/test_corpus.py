"""Every corpus entry through the default ``mixprec convert`` path (bench/corpus.py does the
work): convert, reload without mixprec, match FP32 on the real input, re-convert, and
convert with ``--input-shape``. ``pytest -m corpus`` runs all of them (about an hour on 2
cores, builds cached in $MIXPREC_CORPUS_DIR); a plain ``pytest`` runs the CI subset."""
import pytest

from bench import corpus
from tests.corpus import registry


def _param(entry: registry.Entry):
    marks = [pytest.mark.corpus] + ([pytest.mark.corpus_ci] if entry.ci else [])
    return pytest.param(entry, id=entry.name, marks=marks)


@pytest.mark.parametrize("entry", [_param(e) for e in registry.ENTRIES])
def test_corpus_entry(entry, tmp_path):
    missing = registry.missing_modules(entry)
    if missing:
        pytest.skip(f"{entry.name} needs {', '.join(missing)} (pip install -r requirements.txt)")
    row = corpus.run_entry(entry, work=tmp_path)
    assert not row["failures"], "\n".join(f"{stage}: {message}" for stage, message in row["failures"])


def test_ci_subset_covers_every_framework():
    frameworks = {e.framework for e in registry.ENTRIES if e.ci}
    assert frameworks == {"onnx", "torch", "tensorflow", "mxnet"}


def test_corpus_is_large_enough_and_names_are_unique():
    names = [e.name for e in registry.ENTRIES]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert {e.framework for e in registry.ENTRIES} == {"onnx", "torch", "tensorflow", "mxnet"}


def test_comparisons_can_fail():
    import numpy as np
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert corpus.min_cosine([a], [a]) == pytest.approx(1.0)
    assert corpus.min_cosine([a], [-a]) == pytest.approx(-1.0)
    assert corpus.task_agreement(registry.Task("argmax"), [a], [a[::-1]]) == 0.0
    assert corpus.task_agreement(registry.Task("mask", 0, 2.5), [a], [a]) == 1.0
    assert corpus.first_error_line("x\nmixprec: internal error: ValueError: bad\n") == \
        "mixprec: internal error: ValueError: bad"
