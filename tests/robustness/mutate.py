"""Seeded generators of hostile inputs: mutated ONNX models and mutated IR texts.

Every generator is a pure function of its seed (``random.Random(seed)``), so a failing
case is reproduced by its seed alone. Model mutations work on real small models: the
hand-built ones of tests/onnx_models.py and the model-zoo topologies that ship inside
the onnx package (``onnx/backend/test/data/light/*.onnx``).
"""
from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@dataclass
class ModelCase:
    """One mutated model: ``data`` is the file's bytes, ``what`` the mutations applied,
    ``check`` whether the CLI should run the output check (small models only)."""
    seed: int
    base: str
    what: list[str]
    data: bytes
    check: bool


# ------------------------------------------------------------------ base models ---
def light_models() -> dict[str, Path]:
    """The onnx package's light model-zoo files (architectures with ConstantOfShape weights)."""
    import onnx
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return {p.stem.removeprefix("light_"): p for p in sorted(folder.glob("light_*.onnx"))}


#: light models small enough to convert in a second or two (the big ones only load)
SMALL_LIGHT = ("bvlc_alexnet", "zfnet512", "squeezenet", "vgg19", "inception_v1")


def base_models() -> dict[str, tuple[bytes, bool]]:
    """name -> (serialized model, whether the output check is cheap enough to run)."""
    import onnx_models
    out: dict[str, tuple[bytes, bool]] = {}
    for name in ("matmul", "control_flow", "shadowing", "exotic_types"):
        out[name] = (onnx_models.MODELS[name]().SerializeToString(), True)
    out["graphs_attribute"] = (onnx_models.graphs_attribute().SerializeToString(), True)
    for name, path in light_models().items():
        if name in SMALL_LIGHT:
            out[name] = (path.read_bytes(), False)
    return out


# ----------------------------------------------------------- byte-level mutations ---
def flip_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    buf = bytearray(data)
    count = rng.choice((1, 1, 2, 4, 8, 32))
    for _ in range(count):
        i = rng.randrange(len(buf))
        buf[i] = rng.choice((buf[i] ^ (1 << rng.randrange(8)), rng.randrange(256), 0x00, 0xFF, 0x80))
    return bytes(buf), f"flip {count} bytes"


def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    cut = rng.choice((0, 1, rng.randrange(len(data)), len(data) - 1, len(data) // 2))
    return data[:cut], f"truncate at {cut} of {len(data)}"


def splice(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Repeat or drop a span (a repeated field grows, a length prefix lies)."""
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randrange(1, 64))
    if rng.random() < 0.5:
        return data[:j] + data[i:j] * rng.choice((2, 10, 100)) + data[j:], f"repeat bytes {i}:{j}"
    return data[:i] + data[j:], f"drop bytes {i}:{j}"


# ---------------------------------------------------------- field-level mutations ---
def _graphs(model):
    """The main graph and every subgraph in it (If/Loop/Scan bodies), outermost first."""
    import onnx
    pending = [model.graph]
    while pending:
        graph = pending.pop(0)
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    pending.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    pending.extend(attr.graphs)


def _tensors(model):
    """Every TensorProto of the main graph and its subgraphs (initializers, attributes)."""
    import onnx
    out = []
    for graph in _graphs(model):
        out.extend(graph.initializer)
        out.extend(attr.t for node in graph.node for attr in node.attribute
                   if attr.type == onnx.AttributeProto.TENSOR)
    return out


def _nodes(model):
    """(graph, node) for every node of the main graph and its subgraphs."""
    return [(graph, node) for graph in _graphs(model) for node in graph.node]


HUGE = (10**10, 2**31, 2**40, 2**62, -1, -7, 0, 3)


def m_dims(rng, model):
    t = _pick(rng, model)
    if t is None:
        return None
    if t.dims and rng.random() < 0.7:
        t.dims[rng.randrange(len(t.dims))] = rng.choice(HUGE)
    else:
        t.dims.append(rng.choice(HUGE))
    return f"dims of tensor {t.name!r} -> {list(t.dims)}"


def _pick(rng, model, keep=lambda t: True):
    """One of the model's tensors that ``keep`` accepts, or None when there is none."""
    tensors = [t for t in _tensors(model) if keep(t)]
    return rng.choice(tensors) if tensors else None


def m_elem_type(rng, model):
    t = _pick(rng, model)
    if t is None:
        return None
    t.data_type = rng.choice((0, 999, 30, -1 & 0x7FFFFFFF, rng.randrange(1, 29)))
    return f"data_type of {t.name!r} -> {t.data_type}"


def m_raw_data(rng, model):
    t = _pick(rng, model, lambda t: t.raw_data)
    if t is None:
        return None
    t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    return f"raw_data of {t.name!r} cut to {len(t.raw_data)}"


def m_external(rng, model):
    import onnx
    t = _pick(rng, model)
    if t is None:
        return None
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=rng.choice(("missing.bin", "../../etc/passwd", "/etc/passwd",
                                                            "model.onnx", "")))
    t.external_data.add(key=rng.choice(("offset", "length")), value=rng.choice(("-1", "abc", "99999999", "0", "1e3")))
    return f"tensor {t.name!r} made external {[(e.key, e.value) for e in t.external_data]}"


def m_sparse(rng, model):
    import numpy as np
    import onnx
    from onnx import numpy_helper
    graph = model.graph
    if not graph.initializer:
        return None
    i = rng.randrange(len(graph.initializer))
    t = graph.initializer[i]
    n = rng.randrange(1, 4)
    indices = [rng.choice((0, 1, -1, 10**6, 2**40)) for _ in range(n)]
    values = numpy_helper.from_array(np.ones(n, np.float32), t.name)
    dims = list(t.dims) if rng.random() < 0.6 else [rng.choice(HUGE[:4])]
    sparse = onnx.SparseTensorProto(values=values, indices=numpy_helper.from_array(np.array(indices, np.int64)),
                                    dims=[abs(d) for d in dims])
    del graph.initializer[i]
    graph.sparse_initializer.append(sparse)
    return f"initializer {t.name!r} made sparse, indices {indices}, dims {list(sparse.dims)}"


def _pick_node(rng, model):
    """One of the model's nodes (any graph), or None when it has none."""
    nodes = _nodes(model)
    return rng.choice(nodes)[1] if nodes else None


def m_op(rng, model):
    node = _pick_node(rng, model)
    if node is None:
        return None
    node.op_type = rng.choice(("Conv", "NoSuchOp", "If", "Loop", "Constant", "", "Cast", "MatMul", "Softmax",
                               "Reshape", "Add"))
    return f"op of {node.name!r} -> {node.op_type!r}"


def m_domain(rng, model):
    node = _pick_node(rng, model)
    if node is None:
        return None
    node.domain = rng.choice(("com.example", "ai.onnx.ml", "com.microsoft", "ai.onnx", "x" * 300))
    if rng.random() < 0.5:
        model.opset_import.add(domain=node.domain, version=1)
    return f"domain of {node.name!r} -> {node.domain[:20]!r}"


def m_inputs(rng, model):
    node = _pick_node(rng, model)
    if node is None:
        return None
    choice = rng.randrange(4)
    if choice == 0 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(("nowhere", "", node.output[0] if node.output else "x"))
    elif choice == 1:
        node.input.extend(["" for _ in range(rng.choice((1, 5, 1000)))])
    elif choice == 2 and node.output:
        node.output[rng.randrange(len(node.output))] = rng.choice(("", "dup", node.input[0] if node.input else "y"))
    else:
        del node.input[:]
    return f"inputs/outputs of {node.name!r} -> {list(node.input)[:4]} / {list(node.output)[:4]}"


def m_attr(rng, model):
    import onnx
    nodes = [(g, n) for g, n in _nodes(model) if n.attribute]
    if not nodes:
        return None
    _, node = rng.choice(nodes)
    attr = rng.choice(list(node.attribute))
    A = onnx.AttributeProto
    choice = rng.randrange(5)
    if choice == 0:
        attr.type = rng.choice((A.INT, A.FLOAT, A.STRING, A.INTS, A.TENSOR, A.GRAPH, A.UNDEFINED, A.SPARSE_TENSOR))
    elif choice == 1:
        attr.ints[:] = [rng.choice(HUGE) for _ in range(rng.randrange(6))]
        attr.type = A.INTS
    elif choice == 2:
        attr.i = rng.choice(HUGE)
        attr.type = A.INT
    elif choice == 3:
        attr.ref_attr_name = "outer"
    else:
        attr.name = rng.choice(("", "to", "value", "perm", attr.name * 2))
    return f"attribute {attr.name!r} of {node.name!r} mutated ({choice})"


def m_graph_io(rng, model):
    graph = model.graph
    choice = rng.randrange(5)
    values = list(graph.input) + list(graph.output)
    if choice == 0 and values:
        vi = rng.choice(values)
        vi.type.tensor_type.elem_type = rng.choice((0, 999, 16, 10, 7, 9))
        return f"elem_type of {vi.name!r} -> {vi.type.tensor_type.elem_type}"
    if choice == 1 and values:
        vi = rng.choice(values)
        shape = vi.type.tensor_type.shape
        dim = shape.dim.add() if not shape.dim or rng.random() < 0.3 else shape.dim[rng.randrange(len(shape.dim))]
        dim.dim_value = rng.choice(HUGE)
        return f"a dim of {vi.name!r} -> {dim.dim_value}"
    if choice == 2 and graph.output:
        graph.output[0].name = rng.choice(("nowhere", graph.input[0].name if graph.input else "x"))
        return f"output renamed {graph.output[0].name!r}"
    if choice == 3:
        del graph.output[:]
        return "outputs removed"
    if graph.input:
        del graph.input[rng.randrange(len(graph.input))]
        return "an input removed"
    return None


def m_nodes(rng, model):
    graph = model.graph
    if len(graph.node) < 2:
        return None
    i, j = rng.randrange(len(graph.node)), rng.randrange(len(graph.node))
    choice = rng.randrange(3)
    if choice == 0:
        a, b = graph.node[i], graph.node[j]
        tmp = type(a)()
        tmp.CopyFrom(a)
        a.CopyFrom(b)
        b.CopyFrom(tmp)
        return f"nodes {i} and {j} swapped"
    if choice == 1:
        del graph.node[i]
        return f"node {i} removed"
    graph.node.add().CopyFrom(graph.node[i])
    return f"node {i} duplicated"


def m_opset(rng, model):
    if not model.opset_import:
        return None
    entry = rng.choice(list(model.opset_import))
    entry.version = rng.choice((0, 1, 7, 13, 22, 99, 2**40))
    if rng.random() < 0.3:
        model.ir_version = rng.choice((0, 1, 3, 99))
    return f"opset {entry.domain!r} -> {entry.version}, ir_version {model.ir_version}"


def m_name_bytes(rng, model):
    """A name that is not UTF-8 (done on the serialized bytes: Python refuses to set it)."""
    nodes = [n for _, n in _nodes(model) if len(n.name) >= 3]
    if not nodes:
        return None
    node = rng.choice(nodes)
    node.name = "\u00e9" + node.name[1:]  # 2 bytes in UTF-8, replaced on the bytes below
    return f"name of {node.name!r} made non-UTF-8"


def m_values(rng, model):
    """Structurally valid: a float initializer's values become NaN, inf, huge or tiny
    (the conversion and its output check must cope)."""
    import numpy as np
    from onnx import numpy_helper
    floats = [t for t in model.graph.initializer if t.data_type == 1 and t.dims]
    if not floats:
        return None
    t = rng.choice(floats)
    array = numpy_helper.to_array(t).copy()
    flat = array.reshape(-1)
    value = rng.choice((np.nan, np.inf, -np.inf, 3e38, 1e-45, 0.0, -1e30))
    flat[rng.randrange(flat.size) if rng.random() < 0.5 else slice(None)] = value
    t.CopyFrom(numpy_helper.from_array(array, t.name))
    return f"values of {t.name!r} set to {value}"


def m_similar_op(rng, model):
    """Structurally valid more often than not: an op swapped for one of the same arity."""
    unary = ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Identity", "Softmax", "Erf")
    binary = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "MatMul")
    nodes = [n for _, n in _nodes(model) if n.op_type in unary + binary]
    if not nodes:
        return None
    node = rng.choice(nodes)
    node.op_type = rng.choice(unary if node.op_type in unary else binary)
    del node.attribute[:]
    return f"op of {node.name!r} -> {node.op_type}"


def m_input_dims(rng, model):
    """A graph input's dims become symbolic, 1, 0 or another size."""
    inputs = [vi for vi in model.graph.input if vi.type.tensor_type.shape.dim]
    if not inputs:
        return None
    vi = rng.choice(inputs)
    dim = rng.choice(list(vi.type.tensor_type.shape.dim))
    choice = rng.choice(("sym", 1, 0, 7, 3))
    if choice == "sym":
        dim.dim_param = "n"
    else:
        dim.dim_value = choice
    return f"a dim of input {vi.name!r} -> {choice}"


FIELD_MUTATIONS: list[Callable] = [m_dims, m_elem_type, m_raw_data, m_external, m_sparse, m_op, m_domain,
                                   m_inputs, m_attr, m_graph_io, m_nodes, m_opset, m_name_bytes]
#: mutations that usually leave a valid model, so that the passes, the backend and the
#: output check see hostile values and shapes too
GENTLE_MUTATIONS: list[Callable] = [m_values, m_similar_op, m_input_dims]


def mutate_fields(rng: random.Random, data: bytes, gentle: bool = False) -> tuple[bytes, list[str]]:
    import onnx
    model = onnx.ModelProto()
    model.ParseFromString(data)
    done = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        what = rng.choice(GENTLE_MUTATIONS if gentle else FIELD_MUTATIONS)(rng, model)
        if what:
            done.append(what)
    out = model.SerializeToString()
    if any(w.endswith("non-UTF-8") for w in done):
        out = out.replace("\u00e9".encode(), b"\xff\xfe", 1)
    return out, done


def model_case(seed: int, bases: dict[str, tuple[bytes, bool]]) -> ModelCase:
    """The mutated model of ``seed``: field mutations most often, then byte flips,
    truncations and spliced spans of the serialized file."""
    rng = random.Random(seed)
    name = rng.choice(sorted(bases))
    data, cheap = bases[name]
    kind = rng.random()
    if kind < 0.30:
        data, what = mutate_fields(rng, data, gentle=True)
    elif kind < 0.65:
        data, what = mutate_fields(rng, data)
    elif kind < 0.85:
        data, step = flip_bytes(rng, data)
        what = [step]
    elif kind < 0.93:
        data, step = truncate(rng, data)
        what = [step]
    else:
        data, step = splice(rng, data)
        what = [step]
    return ModelCase(seed, name, what, data, cheap)


# ------------------------------------------------------------------ IR texts ---
def base_texts() -> list[str]:
    """IR texts of real small models (dumped from the ONNX frontend) and hand-written ones."""
    import onnx_models
    from mixprec.frontends.onnx import load
    from mixprec.ir import dump
    texts = [dump(load(onnx_models.MODELS[name]()).graph) for name in ("matmul", "control_flow", "shadowing",
                                                                       "exotic_types")]
    texts.append(dump(load(light_models()["squeezenet"]).graph))
    texts.append('graph main<onnx>(%x: f32[2,?], %c: bool[]) -> (%y: f32[2,?]) {\n'
                 '  const %k: i64[3] = [1, 2, 3]\n'
                 '  const %f: bf16[2] = [0.5, -inf]\n'
                 '  const %s: str[2] = ["a", "\\u00e9"]\n'
                 '  %y: f32[2,?] = If(%c) {else_branch=graph e() -> (%e: f32[2,?]) {\n'
                 '    %e: f32[2,?] = Neg(%x)\n    return %e\n  }, then_branch=graph t() -> (%t: f32[2,?]) {\n'
                 '    %t: f32[2,?] = Relu(%x) {alpha=1.0, t=tensor<f32[2]>[1.0, 2.0], o=opaque("x")} @"n 1"'
                 '  # bf16 allow: allow list\n    return %t\n  }}\n  return %y\n}\n')
    return texts


_SNIPPETS = ("[", "]", "{", "}", "(", ")", "%", '"', "\\", ",", ":", "=", "<", ">", "?", "#", "@", "-", ".",
             "e", "0", "9", "1e400", "1.5", "-4", "99999999999999999999", "inf", "nan", "_", "graph", "const",
             "return", "tensor<f32[2]>", "opaque(", '"\\q"', '"\\ud800"', "\n", "\t", "\u00e9", "\x00", "f33",
             "unk", "bool", "str", "c64", "::", "->", "...", "[" * 200, "]" * 200, "{a=" * 50,
             "graph g() -> () {" * 80)


_NUMBER = re.compile(r"(?<![A-Za-z_%.])\d+(?:\.\d+)?")
_DTYPE = re.compile(r"\b(f32|bf16|f16|i64|i32|i8|bool|u8|f64)\b")


def _swap_token(rng: random.Random, text: str) -> tuple[str, str]:
    pattern = rng.choice((_NUMBER, _DTYPE))
    found = list(pattern.finditer(text))
    if not found:
        return text, "swap (none)"
    m = rng.choice(found)
    new = rng.choice(("0", "1", "3", "-1", "1e30", "nan", "2.5", "4294967296")) if pattern is _NUMBER else \
        rng.choice(("f32", "bf16", "f16", "i64", "bool", "str", "unk", "c64", "i4"))
    return text[:m.start()] + new + text[m.end():], f"swap {m.group()!r}->{new!r}"


def text_case(seed: int, texts: list[str]) -> tuple[str, list[str]]:
    """The mutated IR text of ``seed`` and the mutations applied."""
    rng = random.Random(seed)
    text = rng.choice(texts)
    done = []
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        if not text:
            text = rng.choice(texts)
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randrange(1, 40))
        kind = rng.randrange(9)
        if kind >= 7:  # gentle: a number or a dtype swapped for another, the text stays well formed
            text, step = _swap_token(rng, text)
        elif kind == 0:
            text, step = text[:i] + rng.choice(_SNIPPETS) + text[i:], "insert"
        elif kind == 1:
            text, step = text[:i] + text[j:], "delete"
        elif kind == 2:
            text, step = text[:i] + rng.choice(_SNIPPETS) + text[j:], "replace"
        elif kind == 3:
            text, step = text[:i] + text[i:j] * rng.choice((2, 5)) + text[j:], "repeat"
        elif kind == 4:
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text, step = "\n".join(lines), "swap lines"
        elif kind == 5:
            text, step = text[:i], "truncate"
        else:
            text, step = text[:i] + chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0x3000)))) + text[j:], \
                "char"
        done.append(f"{step}@{i}")
    return text, done
