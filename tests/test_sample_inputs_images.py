"""Generated image inputs look like normalized photos (smooth, standardized), not i.i.d.
noise, and a model whose outputs are flat on smooth images is checked on noise images."""
import numpy as np
import pytest

from mixprec import MixedPrecisionConfig
from mixprec.ir.dtypes import DType
from mixprec.sample_inputs import InputSpec, held_out, make_arrays, noise_images


def _neighbour_correlation(images: np.ndarray, width_axis: int) -> float:
    a = np.take(images, np.arange(images.shape[width_axis] - 1), axis=width_axis).ravel()
    b = np.take(images, np.arange(1, images.shape[width_axis]), axis=width_axis).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("declared, dims, channel_axis, width_axis", [
    ((None, 3, None, None), (2, 3, 224, 224), 1, 3),
    ((None, None, None, 3), (1, 96, 128, 3), 3, 2),
    (("batch", 1, "h", "w"), (1, 1, 48, 320), 1, 3),
])
def test_image_inputs_are_smooth_and_standardized(declared, dims, channel_axis, width_axis):
    spec = InputSpec("x", DType.FLOAT32, declared)
    images = make_arrays([spec], {"x": dims})["x"]
    assert images.shape == dims and images.dtype == np.float32
    assert _neighbour_correlation(images, width_axis) > 0.5
    spatial = tuple(a for a in (1, 2, 3) if a != channel_axis)
    assert np.allclose(images.mean(axis=spatial), 0.0, atol=1e-5)
    assert np.allclose(images.std(axis=spatial), 1.0, atol=1e-4)
    again = make_arrays([spec], {"x": dims})["x"]
    with held_out(2):
        other = make_arrays([spec], {"x": dims})["x"]
    assert np.array_equal(images, again) and not np.allclose(images, other)


def test_other_float_inputs_and_noise_images_stay_iid():
    image = InputSpec("x", DType.FLOAT32, (1, 3, None, None))
    features = InputSpec("f", DType.FLOAT32, (1, 16, 64))
    arrays = make_arrays([image, features], {"x": (1, 3, 64, 64), "f": (1, 16, 64)})
    assert abs(_neighbour_correlation(arrays["f"], 2)) < 0.2
    with noise_images():
        noise = make_arrays([image], {"x": (1, 3, 64, 64)})["x"]
    assert abs(_neighbour_correlation(noise, 3)) < 0.2
    tiny = make_arrays([image], {"x": (1, 3, 1, 1)})["x"]
    assert np.all(np.isfinite(tiny))


def _edge_detector(probabilities: bool = False):
    """An ONNX "detector" that fires where neighbouring pixels differ by more than 6 (text
    strokes, noise): all zeros on a photo-like image. With ``probabilities``, a probability
    map as DBNet's is, Sigmoid(3 * (|difference| - 6)): 0 to 1e-5 on a photo-like image."""
    from onnx import TensorProto, helper, numpy_helper
    kernel = np.zeros((1, 3, 1, 2), np.float32)
    kernel[0, :, 0, 0], kernel[0, :, 0, 1] = 1.0, -1.0
    head = [helper.make_node("Relu", ["s"], ["y"], name="relu")]
    if probabilities:
        head = [helper.make_node("Mul", ["s", "gain"], ["g"], name="gain"),
                helper.make_node("Sigmoid", ["g"], ["y"], name="p")]
    nodes = [helper.make_node("Conv", ["x", "k"], ["d"], name="diff"),
             helper.make_node("Abs", ["d"], ["a"], name="abs"),
             helper.make_node("Sub", ["a", "t"], ["s"], name="sub"), *head]
    graph = helper.make_graph(nodes, "edges", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(kernel, "k"), numpy_helper.from_array(np.float32(6.0), "t"),
                               numpy_helper.from_array(np.float32(3.0), "gain")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("probabilities", [False, True])
def test_a_model_flat_on_photo_like_images_is_checked_on_noise_images(probabilities):
    """A text detector finds nothing in a photo-like image; its probability map there (DBNet:
    0 to 2e-6, cosine 0.98 between FP32 and BF16 on such noise) carries no signal, so the
    check uses noise images, on which it fires."""
    pytest.importorskip("onnxruntime", reason="the check runs the model in onnxruntime")
    from mixprec import mix_precision
    from mixprec.runtimes import adapter_for
    model = _edge_detector(probabilities)
    config = MixedPrecisionConfig()
    adapter = adapter_for(model)
    loaded = adapter.load(model, config)
    photo = make_arrays([InputSpec("x", DType.FLOAT32, (1, 3, "h", "w"))], {"x": (1, 3, 224, 224)})
    flat = adapter.run_original(model, photo)[0]
    assert float(np.max(flat)) < 1e-4 and (not probabilities or np.ptp(flat) > 1e-6)  # nothing to compare
    inputs, reference = mix_precision.reference_run(adapter, model, loaded, config)
    assert abs(_neighbour_correlation(inputs["x"], 3)) < 0.2 and float(np.max(reference[0])) > 0.5
