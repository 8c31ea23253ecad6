"""`import mixprec` needs only numpy and networkx: no framework is imported until a model
of its kind is converted."""
import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "mxnet", "onnx", "onnxruntime", "keras", "ml_dtypes")


def test_import_mixprec_imports_no_framework():
    code = ("import sys, mixprec, mixprec.ir, mixprec.passes, mixprec.config, mixprec.report, mixprec.cli, "
            "mixprec.runtimes; from mixprec.passes import list_passes; list_passes(); "
            f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
