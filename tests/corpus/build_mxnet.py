"""MXNet corpus models: Gluon model-zoo networks (pretrained=False, seeded MSRA init,
BatchNorm statistics calibrated on the bundled photos) and an Embedding-first GRU language
model, exported to prefix-symbol.json + prefix-0000.params the way Gluon users do."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.corpus import inputs


def _mx():
    np.bool = np.bool_  # mxnet 1.9.1 with numpy 1.26
    import mxnet as mx
    mx.random.seed(0)
    np.random.seed(0)
    return mx


def _calibrate_bn(net, x) -> None:
    """Running BatchNorm statistics := the statistics of each BatchNorm's own input on ``x``,
    set by a forward pre-hook in one inference pass (so every layer is calibrated with the
    layers before it already calibrated)."""
    mx = _mx()
    handles = []

    def calibrate(block, args):
        data = args[0].asnumpy().astype(np.float64)
        axes = (0,) + tuple(range(2, data.ndim))
        block.running_mean.set_data(mx.nd.array(data.mean(axes)))
        block.running_var.set_data(mx.nd.array(data.var(axes)))

    def hook(block):
        if isinstance(block, mx.gluon.nn.BatchNorm):
            handles.append(block.register_forward_pre_hook(calibrate))
    net.apply(hook)
    net(x)
    for handle in handles:
        handle.detach()


def _export(net, x, out: Path) -> None:
    net.hybridize()
    net(x)
    prefix = str(out)[: -len("-symbol.json")]
    net.export(prefix, epoch=0)


def zoo(name: str, side: int = 128):
    """A builder for gluon.model_zoo.vision.<name>(pretrained=False)."""
    def build(out: Path) -> dict:
        mx = _mx()
        net = mx.gluon.model_zoo.vision.get_model(name, pretrained=False)
        net.initialize(mx.init.MSRAPrelu(), ctx=mx.cpu())
        data = inputs.photos(side)
        x = mx.nd.array(data)
        net(x)
        _calibrate_bn(net, x)
        _export(net, x, out)
        return {"data": data}
    return build


def language_model(out: Path) -> dict:
    """Embedding -> 2-layer GRU -> vocabulary projection; token ids from the MiniLM tokenizer."""
    mx = _mx()
    vocab = 5000

    class LanguageModel(mx.gluon.HybridBlock):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = mx.gluon.nn.Embedding(vocab, 64)
            self.gru = mx.gluon.rnn.GRU(64, num_layers=2, layout="NTC")
            self.decoder = mx.gluon.nn.Dense(vocab, flatten=False)

        def hybrid_forward(self, F, data):
            return self.decoder(self.gru(self.embedding(data)))

    net = LanguageModel()
    net.initialize(mx.init.Xavier(magnitude=2.0), ctx=mx.cpu())
    ids, _ = inputs.token_batch(16, vocab=vocab)
    data = ids.astype(np.float32)  # Gluon's Embedding takes float ids
    _export(net, mx.nd.array(data), out)
    return {"data": data}
