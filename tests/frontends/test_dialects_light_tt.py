"""The TensorFlow and PyTorch dialect modules import no deep-learning framework: the
registry imports every dialect to read its record, and ``import mixprec`` plus parsing IR
text must stay fast and framework-free. Checked in a fresh interpreter, since this test
process may already have imported the frameworks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("tensorflow", "torch", "keras")


def _fresh(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_tf_and_torch_dialects_import_no_framework():
    code = ("import sys, mixprec.dialects.tensorflow, mixprec.dialects.torch\n"
            f"loaded = sorted({set(FRAMEWORKS)!r} & set(sys.modules))\n"
            "assert not loaded, f'importing the dialects imported {loaded}'\n")
    result = _fresh(code)
    assert result.returncode == 0, result.stderr


def test_dialect_conventions_work_without_the_framework():
    """The pure-python conventions answer without importing the framework; the registry
    sees the records with the runtime adapters they name."""
    code = ("import sys\n"
            "from mixprec.dialects import tensorflow as tf_dialect, torch as torch_dialect\n"
            "from mixprec.frameworks import frameworks\n"
            "assert tf_dialect.parse_input('^a') == ('a', -1) and tf_dialect.parse_input('b:3') == ('b', 3)\n"
            "assert tf_dialect.sanitize('x y') == 'x_y' and tf_dialect.sanitize('_q') == 't__q'\n"
            "assert tf_dialect.FRAMEWORK.adapter == 'mixprec.runtimes.tensorflow:TensorflowAdapter'\n"
            "assert torch_dialect.FRAMEWORK.adapter == 'mixprec.runtimes.torch:TorchAdapter'\n"
            "assert frameworks()['torch'] is torch_dialect.FRAMEWORK\n"
            "assert frameworks()['tensorflow'].cast.op == tf_dialect.CAST_OP == 'Cast'\n"
            "assert torch_dialect.FRAMEWORK.cast.op == torch_dialect.CAST_OP\n"
            f"loaded = sorted({set(FRAMEWORKS)!r} & set(sys.modules))\n"
            "assert not loaded, f'the conventions imported {loaded}'\n")
    result = _fresh(code)
    assert result.returncode == 0, result.stderr
