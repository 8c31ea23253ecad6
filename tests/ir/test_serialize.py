"""mixprec.ir.serialize: an ir.Model as bytes or as a memory-mapped file and back (the
conversion cache stores converted models this way)."""
import numpy as np
import pytest

from mixprec.ir import dump, parse, serialize, verify
from mixprec.ir.builder import GraphBuilder
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Model, Value
from tests.ir.test_clone import NESTED



def _model() -> Model:
    model = Model(parse(NESTED), {"onnx": {"opset": 17}, "notes": ["kept"]})
    model.graph.add_constant(Value("v", DType.BFLOAT16, (2,), np.array([0.5, -1.0], DType.BFLOAT16.to_numpy())))
    model.graph.nodes[0].meta.update(precision="bf16", reason="allow op")
    return model


@pytest.mark.parametrize("through", ["bytes", "file"])
def test_round_trip_keeps_text_meta_links_and_data(through, tmp_path):
    model = _model()
    if through == "bytes":
        back = serialize.loads(serialize.dumps(model))
    else:
        serialize.write(model, tmp_path / "m.bin")
        back = serialize.read(tmp_path / "m.bin")
    verify(back.graph)
    assert dump(back.graph) == dump(model.graph)
    assert back.meta == model.meta and back.graph.nodes[0].meta == {"precision": "bf16", "reason": "allow op"}
    then = back.graph.nodes[1].attrs["then_branch"]
    assert then.parent is back.graph and then.nodes[0].inputs[0] is back.graph.nodes[0].outputs[0]
    assert {n.name for n, _ in back.graph.constants["w"].uses()} == {"m", "t"}
    bf16 = back.graph.constants["v"].data
    assert bf16.dtype == DType.BFLOAT16.to_numpy() and bf16.tolist() == [0.5, -1.0]
    assert back.graph.unique_name("m") == model.graph.clone().unique_name("m")  # the name registry came along


def test_a_deep_graph_does_not_recurse(tmp_path):
    b = GraphBuilder("chain", framework="onnx")
    x = b.input("x", DType.FLOAT32, (4,))
    for _ in range(20000):
        x = b.op("Relu", x)
    b.output(x)
    model = Model(b.graph)
    serialize.write(model, tmp_path / "deep.bin")
    back = serialize.read(tmp_path / "deep.bin")
    assert len(back.graph) == 20000 and dump(back.graph) == dump(model.graph)


def test_read_maps_arrays_copy_on_write(tmp_path):
    model = _model()
    big = np.arange(1 << 16, dtype=np.float32)
    model.graph.constants["w"].data = big.reshape(256, 256)
    path = tmp_path / "m.bin"
    serialize.write(model, path)
    before = path.read_bytes()
    back = serialize.read(path)
    data = back.graph.constants["w"].data
    assert np.array_equal(data, big.reshape(256, 256)) and data.ctypes.data % 64 == 0
    data[0, 0] = -1.0  # writable, and the file stays as written
    assert path.read_bytes() == before


@pytest.mark.parametrize("cut", [0, 10, 200, -8])
def test_a_truncated_or_foreign_file_is_a_value_error(tmp_path, cut):
    path = tmp_path / "m.bin"
    serialize.write(_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut else b"not an IR file at all, but long enough to have a header")
    with pytest.raises(ValueError):
        serialize.read(path)
