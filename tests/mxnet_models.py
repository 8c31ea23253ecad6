"""Small MXNet models for the MXNet frontend/backend tests, built with Gluon (and one with
the symbol API for what Gluon does not expose: BatchNorm's mean/var outputs).

Every builder is deterministic (seeded) and returns ``(model, example_input)``: a
HybridBlock (not hybridized, parameters initialized) or a ``(Symbol, arg_params,
aux_params)`` triple, and one float32 NDArray. Numeric tests need outputs that are not
degenerate, so weights use Xavier init and every BatchNorm's running statistics are set
from the activations it sees on a calibration batch (Gluon's BatchNorm does not update
them in a plain forward pass).

Import this module only after ``mixprec.frontends.mxnet`` imported mxnet (it restores
``np.bool`` for numpy >= 1.24 first).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from mixprec.frontends.mxnet import mx

logger = logging.getLogger(__name__)

nn = mx.gluon.nn
Built = tuple[Any, Any]
BATCH = 2


def _seed(seed: int) -> np.random.RandomState:
    mx.random.seed(seed)
    return np.random.RandomState(seed)


def _input(rng: np.random.RandomState, *shape: int) -> Any:
    return mx.nd.array(rng.normal(size=shape).astype(np.float32))


def calibrate_batchnorm(net: Any, batch: Any, rng: np.random.RandomState) -> None:
    """Walk ``net``'s children in order; before each BatchNorm set its running mean and
    variance to the per-channel statistics of its input on ``batch``, and give it a
    non-trivial gamma/beta, so that its output is normalized but not degenerate."""
    x = batch
    for child in net._children.values():
        if isinstance(child, nn.BatchNorm):
            channels = x.shape[1]
            axes = (0,) + tuple(range(2, x.ndim))
            data = x.asnumpy()
            child.running_mean.set_data(mx.nd.array(data.mean(axis=axes)))
            child.running_var.set_data(mx.nd.array(data.var(axis=axes) + 1e-3))
            child.gamma.set_data(mx.nd.array(rng.uniform(0.5, 1.5, size=channels).astype(np.float32)))
            child.beta.set_data(mx.nd.array(rng.normal(scale=0.1, size=channels).astype(np.float32)))
        x = child(x)


def cnn(seed: int = 0) -> Built:
    """Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, GlobalAvgPool, Dense(10) on 3x16x16 images."""
    rng = _seed(seed)
    net = nn.HybridSequential(prefix="cnn_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
                nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    calibrate_batchnorm(net, _input(rng, 16, 3, 16, 16), rng)
    return net, _input(rng, BATCH, 3, 16, 16)


class Mlp(nn.HybridBlock):
    """Dense(32, relu) -> Dense(10) -> softmax: a deny op at the end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.hidden = nn.Dense(32, activation="relu")
            self.out = nn.Dense(10)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.softmax(self.out(self.hidden(x)), axis=-1)


def mlp(seed: int = 0) -> Built:
    rng = _seed(seed)
    net = Mlp(prefix="mlp_")
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net, _input(rng, BATCH, 20)


class DotHead(nn.HybridBlock):
    """Dense -> dot with a weight -> split into halves -> add: ``dot`` has no bf16 CPU
    kernel in mxnet 1.9.1, SliceChannel has two outputs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.dense = nn.Dense(16, flatten=True)
            self.proj = self.params.get("proj", shape=(16, 8), init=mx.init.Xavier())

    def hybrid_forward(self, F: Any, x: Any, proj: Any) -> Any:
        h = F.dot(self.dense(x), proj)
        left, right = F.split(h, num_outputs=2, axis=1)
        return F.elemwise_add(left, right)


def dot_head(seed: int = 0) -> Built:
    rng = _seed(seed)
    net = DotHead(prefix="dot_")
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net, _input(rng, BATCH, 12)


def two_outputs(seed: int = 0) -> Built:
    """Symbol API: Convolution -> BatchNorm(output_mean_var=True) -> relu -> split ->
    add -> FullyConnected; heads: the classifier and BatchNorm's batch mean."""
    rng = _seed(seed)
    data = mx.sym.var("data")
    conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=4, pad=(1, 1), name="conv")
    bn = mx.sym.BatchNorm(conv, fix_gamma=False, output_mean_var=True, name="bn")
    act = mx.sym.Activation(bn[0], act_type="relu", name="act")
    halves = mx.sym.split(act, num_outputs=2, axis=1, name="halves")
    merged = mx.sym.elemwise_add(halves[0], halves[1], name="merged")
    fc = mx.sym.FullyConnected(mx.sym.Flatten(merged, name="flat"), num_hidden=5, name="fc")
    symbol = mx.sym.Group([fc, bn[1]])
    shapes = dict(zip(symbol.list_arguments(), symbol.infer_shape(data=(BATCH, 3, 8, 8))[0]))
    args = {n: mx.nd.array(rng.normal(scale=0.3, size=s).astype(np.float32))
            for n, s in shapes.items() if n != "data"}
    aux = {"bn_moving_mean": mx.nd.array(rng.normal(scale=0.1, size=4).astype(np.float32)),
           "bn_moving_var": mx.nd.array(rng.uniform(0.5, 2.0, size=4).astype(np.float32))}
    return (symbol, args, aux), _input(rng, BATCH, 3, 8, 8)


MODELS: dict[str, Callable[[], Built]] = {"cnn": cnn, "mlp": mlp, "dot_head": dot_head, "two_outputs": two_outputs}


def export(block: Any, example: Any, prefix: str) -> tuple[str, str]:
    """Save ``block`` the way users do: hybridize it (this changes the block), run it
    once and export ``prefix-symbol.json`` + ``prefix-0000.params``; returns both paths."""
    block.hybridize()
    block(example)
    block.export(prefix)
    return f"{prefix}-symbol.json", f"{prefix}-0000.params"


def calibrate_all_batchnorms(net: Any, batch: Any) -> None:
    """Set every BatchNorm's running mean/variance (nested blocks included) to the
    statistics of its input on ``batch``, in one inference pass: a forward pre-hook sets
    them just before each BatchNorm runs, so later layers see normalized activations.
    (MXNet's oneDNN BatchNorm does not update them in a forward pass.) Model-zoo
    networks built with random weights are otherwise degenerate."""
    handles = [b.register_forward_pre_hook(_set_statistics) for b in _blocks(net) if isinstance(b, nn.BatchNorm)]
    with mx.autograd.predict_mode():
        net(batch)
    for handle in handles:
        handle.detach()


def _set_statistics(block: Any, inputs: Any) -> None:
    data = inputs[0].asnumpy()
    axes = (0,) + tuple(range(2, data.ndim))
    block.running_mean.set_data(mx.nd.array(data.mean(axis=axes)))
    block.running_var.set_data(mx.nd.array(data.var(axis=axes) + 1e-3))


def _blocks(block: Any) -> list[Any]:
    out = [block]
    for child in block._children.values():
        out.extend(_blocks(child))
    return out


def model_zoo(name: str, side: int = 64, seed: int = 0) -> Built:
    """A Gluon model-zoo network (``pretrained=False``: random Xavier weights, BatchNorm
    statistics calibrated on a seeded batch of ``side``-pixel images)."""
    rng = _seed(seed)
    net = mx.gluon.model_zoo.vision.get_model(name, pretrained=False, classes=10)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    calibrate_all_batchnorms(net, _input(rng, 4, 3, side, side))
    return net, _input(rng, 1, 3, side, side)


class EmbeddingLstmLm(mx.gluon.HybridBlock):
    """A word-level language model as Gluon's examples build it: Embedding -> LSTM (TNC
    layout) -> Dense decoder over the vocabulary. Its input is token ids (float32, as
    MXNet stores them) of shape (seq, batch)."""

    def __init__(self, vocab: int = 200, embed: int = 32, hidden: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding = nn.Embedding(vocab, embed)
            self.lstm = mx.gluon.rnn.LSTM(hidden, num_layers=1, layout="TNC", input_size=embed)
            self.decoder = nn.Dense(vocab, flatten=False, in_units=hidden)

    def hybrid_forward(self, F: Any, tokens: Any) -> Any:
        return self.decoder(self.lstm(self.embedding(tokens)))


def embedding_lm(vocab: int = 200, seed: int = 0) -> Built:
    rng = _seed(seed)
    net = EmbeddingLstmLm(vocab, prefix="lm_")
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net, mx.nd.array(rng.randint(0, vocab, size=(12, 2)).astype(np.float32))


def batchnorm_stem(offset: float = 0.0, head: bool = True, seed: int = 0) -> Built:
    """A ``resnet*_v2``-style stem: BatchNorm(scale=False, center=False) normalizes the
    raw image first, then Conv(8, 3x3) -> relu and, with ``head``, GlobalAvgPool ->
    Dense(10); without it the per-pixel feature map is the output. The BatchNorm's
    statistics are those of images with mean ``offset`` (its inputs)."""
    rng = _seed(seed)
    net = nn.HybridSequential(prefix="stem_")
    with net.name_scope():
        net.add(nn.BatchNorm(scale=False, center=False), nn.Conv2D(8, 3, padding=1), nn.Activation("relu"))
        if head:
            net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    images = mx.nd.array(rng.normal(size=(8, 3, 16, 16)).astype(np.float32) + offset)
    calibrate_all_batchnorms(net, images)
    return net, images[:2]
