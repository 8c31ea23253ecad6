"""Fixtures shared by the test modules."""
import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test's measurements and cached conversions go to its own directory, never to
    the user's ~/.cache, so that no test is served by another's conversion."""
    monkeypatch.setenv("MIXPREC_CACHE_DIR", str(tmp_path / "mixprec-cache"))


@pytest.fixture
def model(tmp_path):
    """A private copy of the bundled example model (tests may damage or watch it)."""
    return Path(shutil.copy(EXAMPLE, tmp_path / "tiny_cnn.onnx"))
