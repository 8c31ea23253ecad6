"""MixedPrecisionConfig: INC-style options, clear errors for typos and bad values."""
import pytest

from mixprec.config import MixedPrecisionConfig
from mixprec.errors import ConfigError


def test_defaults_and_inc_style_overrides():
    cfg = MixedPrecisionConfig(op_type_dict={"Softmax": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}},
                               op_name_dict={"encoder.layer.3": {"activation": {"dtype": ["bf16"]}}})
    assert cfg.precision == "bf16"
    assert cfg.overrides() == {"fp32_ops": ["Softmax"], "lp_ops": [], "fp32_nodes": [], "lp_nodes": ["encoder.layer.3"]}


def test_precision_list_with_exclusions():
    assert MixedPrecisionConfig(precisions=["bf16", "fp16"], excluded_precisions=["bf16"]).precision == "fp16"
    with pytest.raises(ConfigError, match="no precision left"):
        MixedPrecisionConfig(precisions="bf16", excluded_precisions=["bf16"])


@pytest.mark.parametrize("kwargs, message", [
    ({"precison": "bf16"}, "did you mean 'precisions'"),
    ({"precisions": "int8"}, "unknown precision 'int8'"),
    ({"device": "gpu"}, "device 'gpu' is not supported"),
    ({"target": "tensorrt"}, "target must be one of"),
    ({"op_type_dict": {"Conv": {"activaton": {"dtype": ["fp32"]}}}}, "unknown key 'activaton'"),
    ({"op_type_dict": {"Conv": {"activation": {}}}}, "needs a 'dtype' list"),
    ({"op_name_dict": ["conv1"]}, "must be a dict"),
])
def test_bad_options_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MixedPrecisionConfig(**kwargs)
