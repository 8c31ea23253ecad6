"""The error budget's sample images must not under-estimate a photo-calibrated network's
error on photos. keras ResNet50 (random He weights, BatchNorm statistics calibrated on the
bundled photos) failed the corpus: the fallback met cosine 0.9995 on smooth sample images
with independent colour channels but gave 0.99878 on the photos. Photos' channels share
most of their content; BatchNorm statistics taken on them are far off on independent
channels, which drive the network out of its calibrated range (a peaky softmax whose BF16
error looks small). A small model of the same structure: a residual CNN calibrated on the
same photos."""
from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the model runs in onnxruntime")
pytest.importorskip("skimage", reason="the photos come with scikit-image")

from mixprec import MixedPrecisionConfig, mix_precision  # noqa: E402
from mixprec.ir.dtypes import DType  # noqa: E402
from mixprec.numerics import cosine  # noqa: E402
from mixprec.runtimes.onnx import emulate_in_float, run_onnxruntime  # noqa: E402
from mixprec.sample_inputs import InputSpec, image_kind, make_arrays, photo_like_image, smooth_image  # noqa: E402
from mixprec.tuning.budget import same_outputs  # noqa: E402
from tests.corpus import inputs  # noqa: E402
from tests.tuning.diffuse_models import classifier_model  # noqa: E402

SIDE = 48
RESNET50_STAGES = ((16, 3), (32, 4), (64, 6), (128, 3))


def _conv(nodes: list, inits: list, name: str, x: str, cin: int, cout: int, rng: np.random.Generator,
          stride: int = 1) -> str:
    from onnx import helper, numpy_helper
    w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
    inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}.w"))
    nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.out"], name=name, kernel_shape=[3, 3],
                                  pads=[1, 1, 1, 1], strides=[stride, stride]))
    return f"{name}.out"


def _bn(nodes: list, inits: list, name: str, x: str, channels: int) -> str:
    from onnx import helper, numpy_helper
    names = [f"{name}.{k}" for k in ("scale", "bias", "mean", "var")]
    for n, v in zip(names, (np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), n))
    nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{name}.out"], name=name))
    return f"{name}.out"


def _relu(nodes: list, name: str, x: str) -> str:
    from onnx import helper
    nodes.append(helper.make_node("Relu", [x], [f"{name}.out"], name=name))
    return f"{name}.out"


@functools.lru_cache(maxsize=None)
def residual_cnn(stages: tuple[tuple[int, int], ...] = ((16, 4), (32, 4), (64, 4), (128, 4)), classes: int = 1000,
                 logit_std: float = 2.0, seed: int = 0):
    """A ResNet as keras.applications makes one, small: a stride-2 stem conv-BN-Relu, then per
    stage ``(channels, blocks)`` that many residual blocks (conv-BN-Relu-conv-BN, + the
    input or, in a stage's first block, its stride-2 conv-BN projection, Relu), global pool,
    Gemm, Softmax. Seeded He-normal convs; every BatchNorm calibrated on the 3 bundled
    photos (the last stage sees a few pixels of each: its statistics fit the photos
    closely, as a trained network's fit its data), then the classifier scaled so that the
    photos' logits have std ``logit_std`` (a few competing classes, as keras ResNet50's
    softmax has on them), and the BatchNorms folded into Mul + Add as a TF graph has them."""
    from onnx import helper
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    width = stages[0][0]
    x = _relu(nodes, "stem.relu", _bn(nodes, inits, "stem.bn", _conv(nodes, inits, "stem", "x", 3, width, rng, 2),
                                      width))
    for s, (channels, blocks) in enumerate(stages):
        for i in range(blocks):
            name, stride = f"s{s}b{i}", 2 if i == 0 and s > 0 else 1
            h = _relu(nodes, f"{name}.r1", _bn(nodes, inits, f"{name}.bn1",
                                               _conv(nodes, inits, f"{name}.c1", x, width, channels, rng, stride),
                                               channels))
            h = _bn(nodes, inits, f"{name}.bn2", _conv(nodes, inits, f"{name}.c2", h, channels, channels, rng),
                    channels)
            if stride != 1 or width != channels:
                x = _bn(nodes, inits, f"{name}.bn0", _conv(nodes, inits, f"{name}.c0", x, width, channels, rng,
                                                           stride), channels)
            nodes.append(helper.make_node("Add", [x, h], [f"{name}.sum"], name=f"{name}.add"))
            x, width = _relu(nodes, f"{name}.out", f"{name}.sum"), channels
    model = classifier_model(nodes, inits, x, rng.standard_normal((width, classes)), SIDE, "resnet")
    _calibrate(model, inputs.photos(SIDE), logit_std)
    _fold_batchnorms(model)
    return model


def _calibrate(model, batch: np.ndarray, logit_std: float) -> None:
    """Each BatchNormalization's mean/var := its input's statistics on ``batch``, in graph
    order (each calibrated layer changes what the next one sees), as a network trained on
    photos has them; then the classifier's weights scaled to give logits of ``logit_std``."""
    from onnx import numpy_helper
    inits = {t.name: t for t in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        x = np.concatenate([_probe(model, node.input[0], image) for image in batch]).astype(np.float64)
        for name, stat in ((node.input[3], x.mean(axis=(0, 2, 3))), (node.input[4], x.var(axis=(0, 2, 3)))):
            inits[name].CopyFrom(numpy_helper.from_array(stat.astype(np.float32), name))
    logits = np.concatenate([_probe(model, "logits", image) for image in batch])
    w = numpy_helper.to_array(inits["fc.w"]) * (logit_std / logits.std())
    inits["fc.w"].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "fc.w"))


def _fold_batchnorms(model) -> None:
    """Each BatchNormalization as a TF/Keras graph computes it: ``x * k + (beta - mean * k)``
    with ``k = gamma / sqrt(var + eps)``, a Mul and an Add on constants (each rounded in BF16:
    the Add cancels the mean that the Mul scaled)."""
    from onnx import helper, numpy_helper
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[1:])
        k = gamma / np.sqrt(var + 1e-5)
        for suffix, value in (("k", k), ("b", beta - mean * k)):
            model.graph.initializer.append(numpy_helper.from_array(value.reshape(1, -1, 1, 1).astype(np.float32),
                                                                   f"{node.name}.{suffix}"))
        mul, name = f"{node.name}.mul", node.name
        nodes += [helper.make_node("Mul", [node.input[0], f"{name}.k"], [mul], name=mul),
                  helper.make_node("Add", [mul, f"{name}.b"], [node.output[0]], name=f"{name}.add")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for name in [n for n in inits if n.endswith((".scale", ".bias", ".mean", ".var"))]:  # the folded statistics
        model.graph.initializer.remove(inits[name])


def _probe(model, value: str, image: np.ndarray) -> np.ndarray:
    """``value`` of ``model`` on one image."""
    import onnx
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.add().name = value
    return run_onnxruntime(probe, {"x": image[None]})[-1]


def _photo_cosine(fp32, emulated, images: np.ndarray) -> float:
    """Cosine of the converted model's softmax to FP32's over the batch, as the corpus judges."""
    ref = np.concatenate([run_onnxruntime(fp32, {"x": image[None]})[0] for image in images])
    got = np.concatenate([run_onnxruntime(emulated, {"x": image[None]})[0] for image in images])
    return cosine(ref.astype(np.float64).ravel(), got.astype(np.float64).ravel())


def test_photo_like_images_have_the_photos_statistics():
    photos = inputs.photos(96)
    images = photo_like_image(np.random.default_rng(0), (4, 3, 96, 96))
    old = smooth_image(np.random.default_rng(0), (4, 3, 96, 96))

    def channel_correlation(x):
        return float(np.mean([np.corrcoef(im.reshape(3, -1))[np.triu_indices(3, 1)] for im in x]))

    def high_band_share(x):  # energy above a quarter of the sampling rate, of the total
        f = np.sqrt(np.fft.fftfreq(96)[:, None] ** 2 + np.fft.fftfreq(96)[None, :] ** 2)
        power = np.abs(np.fft.fft2(x - x.mean(axis=(2, 3), keepdims=True))) ** 2
        return float(power[..., f > 0.25].sum() / power.sum())
    assert channel_correlation(photos) > 0.7 and channel_correlation(images) > 0.7
    assert abs(channel_correlation(old)) < 0.2
    assert high_band_share(old) < 1e-6 < high_band_share(photos) / 10 < high_band_share(images)
    assert np.allclose(images.mean(axis=(2, 3)), 0.0, atol=1e-6) and np.allclose(images.std(axis=(2, 3)), 1.0)
    grey = photo_like_image(np.random.default_rng(0), (1, 40, 64, 1), channel_axis=3)
    assert grey.shape == (1, 40, 64, 1) and np.isclose(grey.std(), 1.0)


def test_a_photo_calibrated_resnet_is_caught_by_photo_like_images_and_met_on_the_photos():
    """Smooth images with independent channels push the network off its calibrated range (a
    peaky softmax): on them the default conversion looked perfect (cosine 0.99999) while
    the photos gave 0.995. Photo-like sample images catch it, and the budget meets
    min_cosine on the photos."""
    model = residual_cnn()
    photos = inputs.photos(SIDE)
    with image_kind("smooth"):  # what the check saw before photo-like images: a pass
        default = mix_precision.fit(model, MixedPrecisionConfig(min_cosine=0.999, error_budget=False))
    assert not default.report.tuning and min(c.cosine for c in default.report.checks) >= 0.999
    assert _photo_cosine(model, emulate_in_float(default.model, DType.BFLOAT16), photos) < 0.999
    result = mix_precision.fit(model, MixedPrecisionConfig(min_cosine=0.999))
    assert result.report.tuning["kind"] == "error budget" and result.report.tuning["fallback_nodes"]
    assert _photo_cosine(model, emulate_in_float(result.model, DType.BFLOAT16), photos) >= 0.999


@pytest.mark.slow
def test_the_budget_meets_the_worst_of_photo_like_and_smooth_draws(monkeypatch):
    """A ResNet with ResNet-50's stages (3, 4, 6, 3 blocks): the default conversion has cosine
    0.9953 on the photos, photo-like draws read 0.9967-0.9993 and smooth ones 0.9900-0.9956.
    A fallback fitted to photo-like draws alone missed the photos (0.99877); fitted to the
    worst of both kinds it meets them."""
    from mixprec.tuning import budget
    model = residual_cnn(RESNET50_STAGES, logit_std=3.0)
    photos = inputs.photos(SIDE)
    monkeypatch.setattr(budget, "DRAW_KINDS", ("photo",))
    alone = mix_precision.fit(model, MixedPrecisionConfig(min_cosine=0.999))
    assert _photo_cosine(model, emulate_in_float(alone.model, DType.BFLOAT16), photos) < 0.999
    monkeypatch.setattr(budget, "DRAW_KINDS", ("photo", "smooth"))
    both = mix_precision.fit(model, MixedPrecisionConfig(min_cosine=0.999))
    assert _photo_cosine(model, emulate_in_float(both.model, DType.BFLOAT16), photos) >= 0.999
    assert len(both.report.tuning["fallback_nodes"]) < sum(d.category != "cast" for d in both.report.nodes)


def test_image_kinds_and_same_outputs():
    spec = InputSpec("x", DType.FLOAT32, (1, 3, None, None))
    photo = make_arrays([spec], {"x": (1, 3, 32, 32)})["x"]
    with image_kind("smooth"):
        smooth = make_arrays([spec], {"x": (1, 3, 32, 32)})["x"]
    assert not np.allclose(photo, smooth) and np.isclose(smooth.std(), 1.0)
    assert same_outputs([photo, np.ones(2)], [photo.copy(), np.ones(2)])
    assert not same_outputs([photo], [smooth]) and not same_outputs([photo], [photo, photo])
    assert not same_outputs([np.ones(2)], [np.ones(2, np.float64).astype(np.float32)])
    features = InputSpec("f", DType.FLOAT32, (1, 16))
    with image_kind("smooth"):  # no image input: every kind is the same draw
        smooth_features = make_arrays([features], {"f": (1, 16)})["f"]
    assert np.array_equal(smooth_features, make_arrays([features], {"f": (1, 16)})["f"])
    with pytest.raises(ValueError, match="unknown image kind 'cartoon'"):
        with image_kind("cartoon"):
            pass
