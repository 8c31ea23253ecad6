"""Small PyTorch models for the torch frontend/backend tests, built by hand (torchvision and
timm do not import beside torch 2.13 here) or from transformers configs with random
weights (no download).

Every builder is deterministic (seeded) and returns ``(module, example_inputs)`` with the
module in eval mode; ``example_inputs`` is a tuple of positional arguments or a dict of
keyword arguments, as ``mixprec.frontends.torch.load`` takes them. Numeric tests need
outputs that are not degenerate, so the CNN uses a scaled init and BatchNorm statistics
calibrated on a few random batches.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

Built = tuple[nn.Module, Any]


# ----------------------------------------------------------------------------- ResNet ---
class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a residual add (with a 1x1 projection when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """A ResNet-style CNN: stem, two stages of BasicBlocks, global pooling, classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _scaled_init(module: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions and unit-variance-preserving linears, random BN affine."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) / m.in_features ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))


def calibrate_batchnorm(module: nn.Module, make_batch: Callable[[], torch.Tensor], steps: int = 4) -> None:
    """Fill BatchNorm running statistics from a few batches (train mode), then eval mode."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(make_batch())
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    module.eval()


def resnet(batch: int = 2, size: int = 16, seed: int = 0, width: int = 16) -> Built:
    """TinyResNet with calibrated BatchNorm; input ``(batch, 3, size, size)``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyResNet(width=width)
    _scaled_init(model, gen)
    calibrate_batchnorm(model, lambda: torch.randn(8, 3, size, size, generator=gen))
    return model, (torch.randn(batch, 3, size, size, generator=gen),)


# ------------------------------------------------------------------------------- LSTM ---
class LSTMClassifier(nn.Module):
    """A two-layer batch-first LSTM over feature sequences and a Linear head on the last step."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def lstm(batch: int = 2, steps: int = 5, seed: int = 0) -> Built:
    torch.manual_seed(seed)
    model = LSTMClassifier().eval()
    return model, (torch.randn(batch, steps, 8, generator=torch.Generator().manual_seed(seed)),)


# ------------------------------------------------------------------------------- BERT ---
def bert_config():
    from transformers import BertConfig
    return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      vocab_size=256, max_position_embeddings=32, attn_implementation="eager")


class BertEncoder(nn.Module):
    """transformers' BertModel (random weights) returning a plain tuple
    ``(last_hidden_state, pooler_output)`` so that a saved program needs no transformers."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertModel
        self.bert = BertModel(bert_config())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def bert_inputs(batch: int = 2, seq: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq - 2:] = 0  # padding, so the mask path matters
    return {"input_ids": torch.randint(0, 256, (batch, seq), generator=gen), "attention_mask": mask}


def bert(batch: int = 2, seq: int = 8, seed: int = 0) -> Built:
    """BertEncoder with keyword example inputs ``input_ids`` and ``attention_mask``."""
    torch.manual_seed(seed)
    return BertEncoder().eval(), bert_inputs(batch, seq, seed)


def bert_model(batch: int = 2, seq: int = 8, seed: int = 0) -> Built:
    """The bare transformers BertModel (output is a ModelOutput) with keyword inputs."""
    from transformers import BertModel
    torch.manual_seed(seed)
    return BertModel(bert_config()).eval(), bert_inputs(batch, seq, seed)


# ------------------------------------------------------------------- dict in, two out ---
class TwoHeads(nn.Module):
    """Takes a dict ``{"image": (N,3,H,W), "meta": (N,6)}`` and returns ``(logits, score)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.side = nn.Linear(6, 8)  # not "meta": GraphModule.meta would shadow it
        self.classifier = nn.Linear(16, 5)
        self.scorer = nn.Linear(16, 1)
        self.norm = nn.LayerNorm(16)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.cat([self.backbone(batch["image"]), torch.tanh(self.side(batch["meta"]))], dim=1)
        feats = self.norm(feats)
        return torch.softmax(self.classifier(feats), dim=-1), torch.sigmoid(self.scorer(feats)).squeeze(-1)


def two_heads(batch: int = 2, seed: int = 0) -> Built:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    inputs = {"image": torch.randn(batch, 3, 8, 8, generator=gen), "meta": torch.randn(batch, 6, generator=gen)}
    return TwoHeads().eval(), (inputs,)


# ----------------------------------------------------------------------- uncapturable ---
class DataDependentBranch(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y - 1


def data_dependent(seed: int = 0) -> Built:
    torch.manual_seed(seed)
    return DataDependentBranch().eval(), (torch.randn(2, 4, generator=torch.Generator().manual_seed(seed)),)


BUILDERS: dict[str, Callable[[], Built]] = {
    "resnet": resnet,
    "lstm": lstm,
    "bert": bert,
    "two_heads": two_heads,
}


def call(module: nn.Module, example_inputs: Any) -> Any:
    """Call ``module`` the way ``example_inputs`` says (tuple: positional, dict: keywords)."""
    if isinstance(example_inputs, dict):
        return module(**example_inputs)
    return module(*example_inputs)


def flat_tensors(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) output structure, in pytree order."""
    from torch.utils import _pytree
    return [t for t in _pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)]


# --------------------------------------------------------------- hand-made conversion ---
LOW_PRECISION_OPS = ("aten.linear.default", "aten.conv2d.default")


def convert_to_bf16(model, ops: tuple[str, ...] = LOW_PRECISION_OPS, select: Callable[[Any], bool] | None = None) -> list:
    """A hand-made BF16 conversion of an IR torch model (what the pass pipeline will do):
    for every node whose op is in ``ops`` (and that ``select`` accepts), f32 constants read
    only by converted nodes are stored as bf16 (mixprec.ir.dtypes.convert_array), other f32
    inputs get a cast to bf16, and the outputs get a cast back to f32 that all former
    readers now read. Returns the converted nodes."""
    from mixprec.ir import DType
    from mixprec.ir.cast import make_cast
    from mixprec.ir.dtypes import convert_array

    graph = model.graph
    chosen = [n for n in graph.nodes if n.op in ops and (select is None or select(n))]
    chosen_ids = {id(n) for n in chosen}
    for node in chosen:
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype != DType.FLOAT32:
                continue
            if value.is_constant and all(id(user) in chosen_ids for user, _ in value.uses()):
                value.data = convert_array(value.data, DType.BFLOAT16)
                value.dtype = DType.BFLOAT16
            else:
                cast = graph.insert_before(node, make_cast(graph, value, DType.BFLOAT16))
                node.set_input(index, cast.outputs[0])
        for out in node.outputs:
            readers = out.uses()
            out.dtype = DType.BFLOAT16
            back = graph.insert_after(node, make_cast(graph, out, DType.FLOAT32))
            for reader, index in readers:
                reader.set_input(index, back.outputs[0])
            graph.replace_output(out, back.outputs[0])
    return chosen


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two output structures, flattened and concatenated (float64)."""
    x = torch.cat([t.detach().double().flatten() for t in flat_tensors(a)])
    y = torch.cat([t.detach().double().flatten() for t in flat_tensors(b)])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


# ------------------------------------------------------------------- embedding first ---
class EmbeddingNormHead(nn.Module):
    """Embedding -> LayerNorm -> Linear, the start of every sentence transformer: the
    embedding reads a table that a deny op (layer_norm) consumes."""

    def __init__(self, vocab: int = 1000, dim: int = 64, out: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(input_ids)))


def embedding_norm_head(batch: int = 2, seq: int = 12, vocab: int = 1000, seed: int = 0) -> Built:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return EmbeddingNormHead(vocab).eval(), (torch.randint(0, vocab, (batch, seq), generator=gen),)
