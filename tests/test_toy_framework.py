"""A fifth framework registered from a package of its own (tests/toy_framework, found
through a dist-info entry point on sys.path), converted by the CLI with no file of mixprec
changed, and the output run by the toy framework's own code without mixprec."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

TOY = Path(__file__).resolve().parent / "toy_framework"


def _model(rng):
    return {"inputs": [{"name": "x", "shape": [2, 8]}],
            "weights": {"w1": {"shape": [8, 16], "data": rng.standard_normal((8, 16)).ravel().tolist()},
                        "b1": {"shape": [16], "data": rng.standard_normal(16).ravel().tolist()},
                        "w2": {"shape": [16, 4], "data": rng.standard_normal((16, 4)).ravel().tolist()}},
            "nodes": [{"op": "MatMul", "inputs": ["x", "w1"], "output": "h"},
                      {"op": "Add", "inputs": ["h", "b1"], "output": "hb"},
                      {"op": "Relu", "inputs": ["hb"], "output": "r"},
                      {"op": "MatMul", "inputs": ["r", "w2"], "output": "logits"},
                      {"op": "Softmax", "inputs": ["logits"], "output": "p"}],
            "outputs": ["p"]}


def test_toy_framework_converts_through_its_entry_point_only(tmp_path):
    info = tmp_path / "toyfw-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfw\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mixprec.frameworks]\ntoy = toyfw:FRAMEWORK\n")
    model = _model(np.random.default_rng(0))
    (tmp_path / "m.toy").write_text(json.dumps(model))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOY), str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mixprec.cli", "convert", str(tmp_path / "m.toy"), "-o",
                           str(tmp_path / "out.toy"), "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["framework"] == "toy"
    decisions = {n["name"]: n["precision"] for n in report["nodes"]}
    assert decisions["h"] == "bf16" and decisions["logits"] == "bf16" and decisions["p"] == "f32"
    assert report["checks"] and report["checks"][0]["cosine"] > 0.99

    # the toy framework runs the output on its own: no mixprec importable in that process
    code = textwrap.dedent(f"""
        import sys, json
        import numpy as np
        sys.modules["mixprec"] = None
        import toyfw
        m = toyfw.load({str(tmp_path / "out.toy")!r})
        ref = toyfw.load({str(tmp_path / "m.toy")!r})
        x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
        a, b = toyfw.run(ref, {{"x": x}})[0], toyfw.run(m, {{"x": x}})[0]
        print(json.dumps({{"dtypes": {{n["output"]: n["dtype"] for n in m["nodes"]}},
                          "weights": {{k: w["dtype"] for k, w in m["weights"].items()}},
                          "err": float(np.abs(a - b).max())}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(TOY)})
    result = json.loads(out.stdout)
    assert result["dtypes"]["h"] == "bf16" and result["dtypes"]["p"] == "f32"
    assert result["weights"]["w1"] == "bf16"
    assert any(op == "f32" and name != "p" for name, op in result["dtypes"].items())  # the cast back before Softmax
    assert 0 < result["err"] < 0.05
