"""The package layout's import rules, read from the source (ast): a frontend and a backend
share their framework's dialect and never import each other; ir/ and passes/ import no
deep-learning framework and no framework module of mixprec. A failure names the line."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixprec"
FRAMEWORK_PACKAGES = {"onnx", "onnxruntime", "onnxscript", "torch", "tensorflow", "keras", "tf_keras", "tf2onnx",
                      "mxnet", "jax"}
FRAMEWORK_MODULES = ("mixprec.frontends", "mixprec.backends", "mixprec.runtimes", "mixprec.dialects")


def _imports(path: Path):
    """(line, module) for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from mixprec import frontends`
                yield node.lineno, f"{module}.{alias.name}"


def _violations(folder: str, forbidden) -> list[str]:
    out = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for line, module in _imports(path):
            if forbidden(module):
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("folder, other", [("frontends", "mixprec.backends"), ("backends", "mixprec.frontends")])
def test_frontends_and_backends_do_not_import_each_other(folder, other):
    assert _violations(folder, lambda m: m == other or m.startswith(other + ".")) == []


@pytest.mark.parametrize("folder", ["ir", "passes"])
def test_ir_and_passes_name_no_framework(folder):
    def forbidden(module):
        return (module.split(".")[0] in FRAMEWORK_PACKAGES
                or any(module == m or module.startswith(m + ".") for m in FRAMEWORK_MODULES))
    assert _violations(folder, forbidden) == []


def test_the_rule_reader_sees_a_violation(tmp_path):
    """The checker itself can fail: a frontend importing a backend is reported with its line."""
    bad = PACKAGE / "frontends" / "_layout_probe.py"
    bad.write_text("import logging\nfrom mixprec.backends import onnx\n")
    try:
        assert _violations("frontends", lambda m: m.startswith("mixprec.backends")) == [
            "mixprec/frontends/_layout_probe.py:2 imports mixprec.backends",
            "mixprec/frontends/_layout_probe.py:2 imports mixprec.backends.onnx"]
    finally:
        bad.unlink()


def test_no_framework_name_in_ir():
    """ir/ holds no framework's name in code (the cast specs come from the registry)."""
    names = ("onnx", "tensorflow", "torch", "mxnet")
    hits = []
    for path in sorted((PACKAGE / "ir").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                hits.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert hits == []
