"""ONNX corpus models that exist as files: pretrained models inside pip packages
(PaddleOCR's DBNet detector, SVTR recognizer and angle classifier from rapidocr-onnxruntime,
NudeNet's YOLOv8n detector, Google's Magika file-type classifier, Silero VAD) and the
model-zoo topologies shipped inside the onnx package, given seeded He-initialized weights."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from tests.corpus import inputs


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package (ModuleNotFoundError when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the corpus needs the pip package that provides {package!r}")
    return Path(spec.origin).parent / relative


def copy_model(package: str, relative: str, out: Path) -> None:
    shutil.copyfile(package_file(package, relative), out)


def ocr_det(out: Path) -> dict:
    copy_model("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", out)
    return {"x": inputs.page(192, 384)}


def ocr_rec(out: Path) -> dict:
    copy_model("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", out)
    line = inputs.page(48, 320, normalize="signed", crop=(0, 30, 0, 200))  # the first printed lines
    return {"x": line}


def ocr_cls(out: Path) -> dict:
    copy_model("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", out)
    upright = inputs.page(48, 192, normalize="signed", crop=(0, 30, 0, 200))
    return {"x": np.concatenate([upright, upright[:, :, ::-1, ::-1]]).copy()}


def nudenet(out: Path) -> dict:
    copy_model("nudenet", "320n.onnx", out)
    return {"images": inputs.photos(320, normalize="unit")}


def magika(out: Path) -> dict:
    copy_model("magika", "models/standard_v3_3/model.onnx", out)
    data = inputs.source_file_bytes()
    begin = list(data.lstrip()[:1024])
    end = list(data.rstrip()[-1024:])
    features = begin + [256] * (1024 - len(begin)) + [256] * (1024 - len(end)) + end
    return {"bytes": np.array([features], dtype=np.int32)}


def _vad_chunks(count: int = 4) -> np.ndarray:
    audio = inputs.speech(1.0)
    return np.stack([audio[i * 4000: i * 4000 + 512] for i in range(count)]).astype(np.float32)


def silero_vad(out: Path) -> dict:
    copy_model("silero_vad", "data/silero_vad.onnx", out)
    x = _vad_chunks()
    return {"input": x, "state": np.zeros((2, len(x), 128), np.float32), "sr": np.array(16000, np.int64)}


def silero_vad_half(out: Path) -> dict:
    copy_model("silero_vad", "data/silero_vad_half.onnx", out)
    x = _vad_chunks()
    return {"input": x, "state": np.zeros((2, len(x), 128), np.float32)}


# ---- the onnx package's model-zoo topologies ------------------------------------------
def _zoo_weights(model) -> None:
    """Replace every ConstantOfShape-filled weight with seeded values of its role: He-normal
    Conv/Gemm weights, small biases, BatchNorm scale 1 / mean 0 / var 1 (calibrated later),
    so the network's outputs depend on its input (the shipped fill makes them constant)."""
    import onnx
    from onnx import numpy_helper
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    role = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            role.setdefault(name, (node.op_type, index))
    rng = np.random.RandomState(0)
    kept, weights = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        op, index = role.get(node.output[0], ("", -1))
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if op in ("Conv", "Gemm", "MatMul") and index == 1:
            value = rng.normal(scale=np.sqrt(2.0 / fan_in), size=shape)
        elif op == "BatchNormalization" and index in (1, 4):
            value = np.ones(shape)
        else:
            value = rng.normal(scale=0.01, size=shape)
        weights.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    filled = {n.input[0] for n in graph.node if n.op_type == "ConstantOfShape" and n.input[0] in shapes}
    del graph.node[:]
    graph.node.extend(kept)
    # IR version 3 (these files): every initializer is also a graph input, as in the old zoo
    kept_init = [t for t in graph.initializer if t.name not in filled]
    kept_inputs = [i for i in graph.input if i.name not in filled]
    del graph.initializer[:]
    graph.initializer.extend(kept_init + weights)
    del graph.input[:]
    graph.input.extend(kept_inputs + [onnx.helper.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT, t.dims)
                                      for t in weights])
    onnx.checker.check_model(model)


def _calibrate_bn(model, feeds: dict) -> None:
    """Set every BatchNormalization's mean/var to the statistics of its input on ``feeds``,
    layer by layer (each layer is calibrated with the layers before it already calibrated)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    init = {t.name: t for t in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        x = session.run([node.input[0]], feeds)[0].astype(np.float64)
        axes = (0,) + tuple(range(2, x.ndim))
        for name, value in ((node.input[3], x.mean(axes)), (node.input[4], x.var(axes) + 1e-3)):
            init[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def zoo(name: str):
    """A builder for onnx/backend/test/data/light/light_<name>.onnx."""
    def build(out: Path) -> dict:
        import onnx
        model = onnx.load(package_file("onnx", f"backend/test/data/light/light_{name}.onnx"))
        _zoo_weights(model)
        weights = {t.name for t in model.graph.initializer}
        data = next(i.name for i in model.graph.input if i.name not in weights)
        feeds = {data: inputs.photos(224)[:1]}  # these graphs declare batch 1
        _calibrate_bn(model, feeds)
        onnx.save(model, out)
        return feeds
    build.__name__ = f"zoo_{name}"
    return build
