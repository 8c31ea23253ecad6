"""TensorFlow corpus models: keras.applications networks (functional, weights=None, BatchNorm
statistics calibrated on the bundled photos) as .keras files and SavedModels; MTCNN's
pretrained PNet/RNet/ONet (subclassed Keras models whose weights ship in the mtcnn package)
as SavedModels, PNet with a (None, None, None, 3) input; and tf2onnx exports of both kinds."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tests.corpus import inputs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _calibrate_bn(model, x: np.ndarray) -> None:
    """Moving BatchNorm statistics := the batch statistics of ``x`` (momentum 0, one
    training-mode call), layer by layer in a single pass."""
    import keras
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def _application(name: str, side: int, **kwargs):
    import keras
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=1000, **kwargs)
    x = inputs.photos(side, layout="nhwc")
    _calibrate_bn(model, x)
    return model, x


def _save_signature(model, function, spec, out: Path, input_name: str) -> None:
    import tensorflow as tf
    module = tf.Module()
    module.model = model  # tracks the variables the signature reads
    serve = tf.function(lambda x: function(x), input_signature=[tf.TensorSpec(spec, tf.float32, name=input_name)])
    module.serve = serve
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve.get_concrete_function()})


def keras_file(name: str, side: int, **kwargs):
    """A builder writing keras.applications.<name> as a .keras file."""
    def build(out: Path) -> dict:
        model, x = _application(name, side, **kwargs)
        model.save(str(out))
        return {model.inputs[0]._keras_history.operation.name: x}  # the InputLayer's name
    return build


def keras_saved_model(name: str, side: int, **kwargs):
    """A builder writing keras.applications.<name> as a SavedModel (batch dim None)."""
    def build(out: Path) -> dict:
        model, x = _application(name, side, **kwargs)
        _save_signature(model, lambda t: model(t, training=False), (None, side, side, 3), out, "images")
        return {"images": x}
    return build


def _mtcnn(stage: str):
    import keras
    keras.utils.set_random_seed(0)
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet
    from mtcnn.utils.tensorflow import load_weights
    model = {"pnet": PNet, "rnet": RNet, "onet": ONet}[stage]()
    model.build()
    model.set_weights(load_weights(f"{stage}.lz4"))
    return model


MTCNN_SIDE = {"pnet": None, "rnet": 24, "onet": 48}


def _mtcnn_input(stage: str) -> np.ndarray:
    side = MTCNN_SIDE[stage] or 120
    return (inputs.photos(side, layout="nhwc", normalize="raw") - 127.5) / 128.0


def mtcnn_saved_model(stage: str):
    """A builder writing MTCNN's pretrained <stage> network (a subclassed Keras model) as a
    SavedModel; PNet is fully convolutional, so its input is (None, None, None, 3)."""
    def build(out: Path) -> dict:
        model = _mtcnn(stage)
        side = MTCNN_SIDE[stage]
        _save_signature(model, lambda t: model(t), (None, side, side, 3), out, "images")
        return {"images": _mtcnn_input(stage).astype(np.float32)}
    return build


def tf2onnx_export(kind: str):
    """A builder converting a Keras model to ONNX with tf2onnx (from_function): "mobilenet_v2"
    (keras.applications, batch dim None) or "pnet" (MTCNN, dynamic batch/H/W)."""
    def build(out: Path) -> dict:
        import tensorflow as tf
        import tf2onnx
        if kind == "pnet":
            model, x, spec = _mtcnn("pnet"), _mtcnn_input("pnet").astype(np.float32), (None, None, None, 3)
        else:
            model, x = _application("MobileNetV2", 96, alpha=0.35)
            spec = (None, 96, 96, 3)
        function = tf.function(lambda t: model(t, training=False) if kind != "pnet" else model(t))
        signature = [tf.TensorSpec(spec, tf.float32, name="images")]
        tf2onnx.convert.from_function(function, input_signature=signature, opset=13, output_path=str(out))
        return {"images": x}
    return build
