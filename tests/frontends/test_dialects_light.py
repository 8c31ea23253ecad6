"""The ONNX and MXNet dialect modules import no framework: the registry imports every
dialect to read its record (``mixprec.ir.cast.cast_spec``), so reading IR text that
names these frameworks must stay fast and framework-free. What the dialects spell
without the framework (element-type numbers, MXNet's error text) is checked against it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixprec.dialects import mxnet as mx_dialect
from mixprec.dialects import onnx as onnx_dialect
from mixprec.ir.dtypes import DType

REPO = Path(__file__).resolve().parents[2]

LIGHT = """
import sys
import mixprec.dialects.onnx, mixprec.dialects.mxnet
from mixprec.frameworks import frameworks
from mixprec.ir import parse
from mixprec.ir.cast import cast_spec, is_cast
records = frameworks()
assert records["onnx"].cast.op == "Cast" and records["mxnet"].cast.op == "amp_cast", records
g = parse("graph main<onnx>(%x: f32[1]) -> (%y: bf16[1]) {\\n  %y: bf16[1] = Cast(%x) {to=bf16}\\n  return %y\\n}\\n")
assert is_cast(g.nodes[0]) and cast_spec("mxnet").op == "amp_cast"
print(sorted(m for m in ("onnx", "onnxruntime", "mxnet") if m in sys.modules))
"""


def test_dialects_and_the_registry_import_no_framework():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_brief_one_liner():
    code = ("import mixprec.dialects.onnx, mixprec.dialects.mxnet, sys; "
            "assert 'onnx' not in sys.modules and 'mxnet' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_onnx_element_type_numbers_match_onnx():
    onnx = pytest.importorskip("onnx")
    T = onnx.TensorProto
    names = {DType.FLOAT32: "FLOAT", DType.BFLOAT16: "BFLOAT16", DType.FLOAT16: "FLOAT16", DType.FLOAT64: "DOUBLE",
             DType.FLOAT8E4M3: "FLOAT8E4M3FN", DType.FLOAT8E5M2: "FLOAT8E5M2", DType.INT4: "INT4",
             DType.INT8: "INT8", DType.INT16: "INT16", DType.INT32: "INT32", DType.INT64: "INT64",
             DType.UINT4: "UINT4", DType.UINT8: "UINT8", DType.UINT16: "UINT16", DType.UINT32: "UINT32",
             DType.UINT64: "UINT64", DType.BOOL: "BOOL", DType.STRING: "STRING", DType.COMPLEX64: "COMPLEX64",
             DType.COMPLEX128: "COMPLEX128"}
    for dtype, name in names.items():
        assert onnx_dialect.dtype_to_onnx(dtype) == getattr(T, name), name
        assert onnx_dialect.dtype_from_onnx(getattr(T, name)) == dtype, name
    assert len(onnx_dialect._ELEM_TO_DTYPE) == len(names)
    assert onnx_dialect.dtype_from_onnx(T.FLOAT8E4M3FNUZ) == DType.UNKNOWN
    assert onnx_dialect.onnx_type_string(DType.BFLOAT16) == "tensor(bfloat16)"
    with pytest.raises(ValueError, match="no ONNX element type"):
        onnx_dialect.dtype_to_onnx(DType.UNKNOWN)


def test_raw_attribute_copies_and_prints_without_a_module_level_onnx():
    onnx = pytest.importorskip("onnx")
    proto = onnx.helper.make_attribute("body", onnx.helper.make_graph([], "g", [], []))
    raw = onnx_dialect.RawAttribute(proto)
    proto.name = "changed"
    assert raw.proto.name == "body" and isinstance(raw.proto, onnx.AttributeProto)
    assert repr(raw).startswith("onnx.GRAPH sha1:") and raw == onnx_dialect.RawAttribute(raw.proto)


def test_mxnet_error_text_drops_the_traceback_lead_before_shortening():
    exc = RuntimeError('Traceback (most recent call last):\n  File "../src/ndarray/ndarray.cc", line 1858\n'
                       "MXNetError: Check failed: bad magic")
    text = mx_dialect.error_text(exc)
    assert text == 'File "../src/ndarray/ndarray.cc", line 1858 MXNetError: Check failed: bad magic'
    assert mx_dialect.error_text(exc, limit=4) == "File"
    assert mx_dialect.error_text(ValueError("")) == "ValueError"
