"""Importing mxnet (mixprec.dialects.mxnet.import_mxnet) must not change the OpenMP
threads of the process: mxnet sets the calling thread's to 1, and torch, which shares the
runtime, then ran single-threaded (the hardware bench's torch MLP at 1.0x FP32 instead
of 0.5x once it had converted an MXNet model in the same process)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

SCRIPT = """
import sys
order = sys.argv[1]
if order == "torch-first":
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
from mixprec.dialects.mxnet import import_mxnet
from mixprec.errors import MissingDependencyError
try:
    import_mxnet()
except MissingDependencyError:
    print("no-mxnet")
    raise SystemExit(0)
import torch
print(torch.get_num_threads())
"""


@pytest.mark.parametrize("order", ["torch-first", "mxnet-first"])
def test_importing_mxnet_keeps_torchs_threads(order):
    expected = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(2); "
                               "print(torch.get_num_threads())"], capture_output=True, text=True, check=True)
    got = subprocess.run([sys.executable, "-c", SCRIPT, order], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    if got.stdout.strip() == "no-mxnet":
        pytest.skip("needs mxnet 1.9.1")
    if order == "torch-first":
        assert got.stdout.strip().splitlines()[-1] == expected.stdout.strip()
    else:
        default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                 capture_output=True, text=True, check=True)
        assert got.stdout.strip().splitlines()[-1] == default.stdout.strip()
