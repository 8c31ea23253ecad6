"""A tuned fit loads the model once and runs every trial's pipeline on a clone of it
(torch.export or TF freezing is not repeated per trial)."""
import numpy as np
import pytest

from mixprec import MixedPrecisionConfig, mix_precision
from mixprec.runtimes import get_adapter


def _scores():
    """Baseline 1.0, the default conversion fails, every later trial passes: at least
    three trials (default, every node FP32, the first prefix)."""
    calls = []

    def eval_func(model):
        calls.append(model)
        return 0.0 if len(calls) == 2 else 1.0
    return eval_func, calls


def _count_loads(monkeypatch, framework):
    cls = type(get_adapter(framework))
    original = cls.load
    loads = []

    def counting(self, model, config):
        loads.append(model)
        return original(self, model, config)
    monkeypatch.setattr(cls, "load", counting)
    return loads


def _tuned(monkeypatch, framework, model, **config):
    loads = _count_loads(monkeypatch, framework)
    eval_func, calls = _scores()
    result = mix_precision.fit(model, config=MixedPrecisionConfig(check_outputs=False, **config), eval_func=eval_func)
    assert len(result.report.tuning["trials"]) >= 3
    assert len(calls) == 1 + len(result.report.tuning["trials"])
    return loads


def test_onnx_tuning_loads_once(monkeypatch):
    pytest.importorskip("onnx", reason="needs onnx")
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
    assert len(_tuned(monkeypatch, "onnx", str(example))) == 1


def test_torch_tuning_loads_once(monkeypatch):
    torch = pytest.importorskip("torch", reason="needs torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    assert len(_tuned(monkeypatch, "torch", model, example_inputs=(torch.randn(2, 8),))) == 1


def test_tensorflow_tuning_loads_once(monkeypatch):
    pytest.importorskip("tensorflow", reason="needs tensorflow")
    keras = pytest.importorskip("keras", reason="needs keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(16, activation="relu")(inputs)))
    assert len(_tuned(monkeypatch, "tensorflow", model)) == 1


@pytest.mark.mxnet_onednn_bf16  # its evaluation needs a Convolution converted to bf16
def test_mxnet_tuning_loads_once(monkeypatch):
    mx = pytest.importorskip("mixprec.frontends.mxnet", reason="needs mxnet 1.9.1 importable").mx
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(16, activation="relu"), mx.gluon.nn.Dense(4))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    example = mx.nd.array(np.random.RandomState(0).randn(2, 8).astype(np.float32))
    net(example)
    assert len(_tuned(monkeypatch, "mxnet", net, example_inputs=(example,))) == 1
