"""The fingerprint of a ``torch.nn.Module`` object for the conversion cache: for every
submodule its class's code, its attributes (the Python values ``forward`` may read) and
its forward hooks, and every parameter and buffer by name, dtype, shape, strides and
bytes. ``.pt2`` files are hashed by their bytes (the conversion cache does that).

What the fingerprint cannot see (a helper in another file that ``forward`` calls, global
state) the cache covers by checking, before it reuses a conversion, that the module still
gives the FP32 outputs it gave on the cached sample inputs."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from mixprec.runtimes.fingerprint import Fingerprint, Unfingerprintable

logger = logging.getLogger(__name__)

#: nn.Module's own bookkeeping: parameters, buffers and children are hashed apart; hooks
#: that only act on backward passes or state dicts do not change what is captured
_HANDLED = {"_parameters", "_buffers", "_modules"}
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_hooks")


def fingerprint_module(module: torch.nn.Module, digest: Fingerprint) -> None:
    """Feed ``module`` to ``digest``; Unfingerprintable for what cannot be hashed
    faithfully (meta, sparse or quantized tensors, attributes of unknown kinds)."""
    seen: dict[int, int] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        digest.text("module", name)
        if id(sub) in seen:
            digest.text("same as", str(seen[id(sub)]))
            continue
        seen[id(sub)] = len(seen)
        for hooks in _FORWARD_HOOKS:
            found = getattr(sub, hooks, None)
            if found:
                digest.plain(list(found.values()), f"{name or 'the module'}'s {hooks[1:]}")
        skip = _HANDLED | {key for key in vars(sub) if key.startswith("_") and "hook" in key}
        digest.attributes(sub, name or type(module).__qualname__, 0, skip=skip)
        for kind in ("_parameters", "_buffers"):
            for key, tensor in getattr(sub, kind).items():
                digest.text(kind, key)
                if tensor is not None:
                    tensor_digest(digest, tensor, f"{name}.{key}" if name else key)


def tensor_digest(digest: Fingerprint, tensor: torch.Tensor, where: str) -> None:
    """dtype, shape, strides, requires_grad and bytes of a dense CPU-readable tensor."""
    if tensor.is_meta or tensor.layout != torch.strided or tensor.is_quantized:
        raise Unfingerprintable(f"{where} is a {'meta' if tensor.is_meta else tensor.layout} tensor")
    digest.text(str(tensor.dtype), repr(tuple(tensor.shape)), repr(tensor.stride()), str(tensor.requires_grad))
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest.array(flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8))


def torch_value(digest: Fingerprint, value: Any, where: str, depth: int) -> bool:
    """Values ``Fingerprint.plain`` does not know: tensors, torch's own small types, and
    plain objects (a model's config) by their class and attributes."""
    if isinstance(value, torch.Tensor):
        tensor_digest(digest, value, where)
        return True
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout, torch.Size)):
        digest.text(type(value).__name__, repr(value))
        return True
    if isinstance(value, torch.nn.Module):
        raise Unfingerprintable(f"{where} holds a module outside the module tree (its weights are not hashed)")
    if hasattr(value, "__dict__") and not callable(value):
        digest.attributes(value, where, depth)
        return True
    return False
