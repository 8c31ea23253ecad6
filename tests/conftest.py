"""Fixtures shared by the test modules."""
import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"


@pytest.fixture
def model(tmp_path):
    """A private copy of the bundled example model (tests may damage or watch it)."""
    return Path(shutil.copy(EXAMPLE, tmp_path / "tiny_cnn.onnx"))
