"""Every MixedPrecisionConfig field is checked at construction: a wrong type or range is a
ConfigError naming the field (never a TypeError/AttributeError, never silently accepted);
INC's spellings (precision=, fit(conf=)) work; sample inputs that cannot be the model's
inputs are a ConfigError naming the expected inputs."""
from pathlib import Path

import numpy as np
import pytest

from mixprec.config import BACKENDS, AccuracyCriterion, MixedPrecisionConfig, TuningCriterion
from mixprec.errors import ConfigError, MixprecError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"

BAD = [
    ({"device": None}, "device None is not supported"),
    ({"precisions": None}, "precisions must be"),
    ({"precisions": 16}, "precisions must be"),
    ({"precisions": []}, "precisions must be"),
    ({"excluded_precisions": 7}, "excluded_precisions must be"),
    ({"min_cosine": "high"}, "min_cosine must be a number"),
    ({"min_cosine": 0}, "min_cosine must be a number in (0, 1]"),
    ({"min_cosine": True}, "min_cosine must be a number"),
    ({"pipeline": 123}, "pipeline must be a pipeline string"),
    ({"pipeline": "  "}, "pipeline must be a pipeline string"),
    ({"dump_dir": 42}, "dump_dir must be a path"),
    ({"policy": 3.5}, "policy must be a path"),
    ({"sample_inputs": "abc"}, "give an .npz file"),
    ({"sample_inputs": 5}, "sample_inputs must be a dict"),
    ({"sample_inputs": {"x": "abc"}}, "sample_inputs['x'] must be an array of numbers"),
    ({"sample_inputs": {1: np.ones(2)}}, "keys must be input names"),
    ({"sample_inputs": [np.ones(2), object()]}, "sample_inputs[1] must be an array of numbers"),
    ({"sample_inputs": "missing.npz"}, "no such file"),
    ({"keep_io_types": "no"}, "keep_io_types must be True or False"),
    ({"check_outputs": "false"}, "check_outputs must be True or False"),
    ({"dynamic_batch": 1}, "dynamic_batch must be True or False"),
    ({"fallback_fx": None}, "fallback_fx must be True or False"),
    ({"trust_pickle": "yes"}, "trust_pickle must be True or False"),
    ({"backend": "no-such-backend"}, "backend must be one of default, itex"),
    ({"target": None}, "target must be one of"),
    ({"input_shapes": {"x": [1, -1]}}, "input_shapes['x'] must be a list of whole numbers >= 1"),
    ({"input_shapes": {"x": [1, 2.5]}}, "input_shapes['x'] must be a list of whole numbers >= 1"),
    ({"input_shapes": {"x": "1,3"}}, "input_shapes['x'] must be a list"),
    ({"input_shapes": {"": [1]}}, "keys must be input names"),
    ({"input_shapes": "1,3,224,224"}, "input_shapes must be a dict"),
    ({"input_shapes": [0, 3]}, "must be a list of whole numbers >= 1"),
    ({"inputs": "x:0"}, "inputs must be a list of tensor names"),
    ({"outputs": ["y:0", 3]}, "outputs must be a list of tensor names"),
    ({"check_runtime": "ort"}, "check_runtime must be one of"),
    ({"accuracy_criterion": {"tolerable_loss": 0.1}}, "accuracy_criterion must be"),
    ({"tuning_criterion": 5}, "tuning_criterion must be"),
    ({"precision": "bf16", "precisions": "fp16"}, "disagree"),
    ({"precision": "int4"}, "unknown precision 'int4'"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))[:20]
                                                      for k, _ in BAD])
def test_a_bad_field_is_a_config_error_naming_it(kwargs, message):
    with pytest.raises(ConfigError) as info:
        MixedPrecisionConfig(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("make, message", [
    (lambda: AccuracyCriterion(tolerable_loss="x"), "tolerable_loss must be a number >= 0"),
    (lambda: AccuracyCriterion(tolerable_loss=-0.1), "tolerable_loss must be a number >= 0"),
    (lambda: AccuracyCriterion(higher_is_better="yes"), "higher_is_better must be True or False"),
    (lambda: TuningCriterion(max_trials="x"), "max_trials must be a whole number >= 1"),
    (lambda: TuningCriterion(max_trials=2.5), "max_trials must be a whole number >= 1"),
    (lambda: TuningCriterion(max_trials=0), "max_trials must be a whole number >= 1"),
    (lambda: TuningCriterion(timeout=-5), "timeout must be a number of seconds >= 0"),
    (lambda: TuningCriterion(timeout="soon"), "timeout must be a number of seconds >= 0"),
])
def test_criteria_fields_are_checked(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_good_values_are_accepted_and_normalized(tmp_path):
    np.savez(tmp_path / "s.npz", image=np.ones((1, 3, 32, 32), np.float32))
    cfg = MixedPrecisionConfig(precisions=("bf16", "fp16"), excluded_precisions="bf16", backend="itex",
                               min_cosine=np.float32(0.95), keep_io_types=np.bool_(False),
                               input_shapes={"image": (1, 3, np.int64(32), 32)}, inputs=("x:0",),
                               sample_inputs=str(tmp_path / "s.npz"), tuning_criterion=TuningCriterion(
                                   max_trials=np.int64(3), timeout=0.5), dump_dir=tmp_path)
    assert cfg.precision == "fp16" and cfg.excluded_precisions == ["bf16"]
    assert cfg.input_shapes == {"image": [1, 3, 32, 32]} and cfg.inputs == ["x:0"]
    assert list(cfg.sample_inputs) == ["image"] and cfg.sample_inputs["image"].shape == (1, 3, 32, 32)
    assert set(BACKENDS) >= {"default", "itex", "onnxrt_trt_ep", "onnxrt_cuda_ep", "onnxrt_dnnl_ep"}


def test_an_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="not a readable .npz file"):
        MixedPrecisionConfig(sample_inputs=str(path))


def test_inc_precision_spelling_is_an_alias_of_precisions():
    cfg = MixedPrecisionConfig(precision="fp16")
    assert cfg.precisions == "fp16" and cfg.precision == "fp16"
    assert MixedPrecisionConfig(precision="bf16", precisions="bf16").precision == "bf16"
    cfg.precision = "bfloat16"
    assert cfg.precision == "bf16"
    with pytest.raises(ConfigError, match="unknown precision"):
        cfg.precision = "int8"
    assert cfg.precision == "bf16"  # a refused assignment changes nothing


def test_fit_accepts_inc_3_conf_keyword():
    pytest.importorskip("onnxruntime", reason="converting the example needs onnxruntime")
    from mixprec import mix_precision
    converted = mix_precision.fit(str(EXAMPLE), conf=MixedPrecisionConfig(precision="fp16", check_outputs=False))
    assert converted.report.precision == "fp16"
    with pytest.raises(ConfigError, match="not both"):
        mix_precision.fit(str(EXAMPLE), MixedPrecisionConfig(), conf=MixedPrecisionConfig())


@pytest.mark.parametrize("given, message", [
    ({"nope": np.ones((1, 3, 32, 32), np.float32)}, "sample_inputs has no 'image' and names unknown input(s) 'nope'"),
    ({"image": np.ones((1, 3, 32), np.float32)}, "sample input 'image' has shape [1, 3, 32]"),
    ((np.ones((1, 3, 32, 32), np.float32),) * 2, "sample_inputs has 2 array(s) for 1 input(s)"),
])
def test_sample_inputs_that_cannot_fit_name_the_expected_inputs(given, message):
    pytest.importorskip("onnxruntime", reason="the check runs the example in onnxruntime")
    from mixprec import mix_precision
    with pytest.raises(ConfigError) as info:
        mix_precision.fit(str(EXAMPLE), MixedPrecisionConfig(sample_inputs=given))
    assert message in str(info.value) and "the model's inputs are image [batch,3,32,32]" in str(info.value)


def test_every_error_kind_is_a_mixprec_error_and_tells_the_kind():
    from mixprec import errors
    assert issubclass(errors.OutputPathError, errors.ConfigError)
    assert issubclass(errors.UntrustedPickleError, errors.ModelLoadError)
    assert issubclass(errors.AccuracyCheckError, errors.ConversionError)
    bad_input = (errors.ModelLoadError, errors.UnsupportedModelError)
    assert not issubclass(errors.ConfigError, bad_input) and not issubclass(errors.AccuracyCheckError, bad_input)
    assert all(issubclass(k, MixprecError) for k in (*bad_input, errors.ConfigError, errors.AccuracyCheckError))
