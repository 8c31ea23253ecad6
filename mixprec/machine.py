"""What this machine is, for precision decisions: CPU model, the ISA flags that decide
whether BF16/FP16 pays, cores, the installed frameworks and what their CPU runtimes can
run in low precision (``mixprec env``).

Invariants: nothing here imports a framework unless asked (``probe=True``): versions
come from the installed distributions' metadata. :func:`fingerprint` is what the
measurement cache and portable profiles are keyed by: the same CPU model and flags give
the same fingerprint, whatever else runs on the machine."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

#: the CPU flags that decide how fast low precision runs (Linux /proc/cpuinfo names)
PRECISION_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                   "amx_tile", "amx_bf16", "amx_fp16", "avx_vnni")
#: framework -> the distributions that provide it, first installed one wins
DISTRIBUTIONS = {"torch": ("torch",), "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-intel"),
                 "keras": ("keras",), "onnxruntime": ("onnxruntime", "onnxruntime-openvino"),
                 "onnx": ("onnx",), "mxnet": ("mxnet", "mxnet-mkl")}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: tuple[str, ...]  # the PRECISION_FLAGS this CPU has, in that order
    cores: int
    machine: str  # platform.machine(): x86_64, aarch64, ...

    def has(self, flag: str) -> bool:
        return flag in self.flags


@dataclass
class RuntimeInfo:
    """One framework's CPU runtime: its version and how it runs BF16/FP16."""
    framework: str
    version: str | None
    bf16: str  # "native", "emulated", "none" and why
    fp16: str
    isa: str = ""  # the oneDNN ISA the runtime uses (or would), when it has oneDNN
    notes: list[str] = field(default_factory=list)


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = " ".join(value.split())
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    model, flags = _read_cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(model, tuple(f for f in PRECISION_FLAGS if f in flags), cores, platform.machine())


def onednn_isa(cpu: CpuInfo) -> str:
    """The best oneDNN CPU ISA the flags allow (``ONEDNN_MAX_CPU_ISA`` caps it), in
    oneDNN's names."""
    if cpu.has("amx_bf16"):
        isa = "avx512_core_amx_fp16" if cpu.has("amx_fp16") else "avx512_core_amx"
    elif cpu.has("avx512_fp16"):
        isa = "avx512_core_fp16"
    elif cpu.has("avx512_bf16"):
        isa = "avx512_core_bf16"
    elif cpu.has("avx512_vnni"):
        isa = "avx512_core_vnni"
    elif cpu.has("avx512f"):
        isa = "avx512_core"
    elif cpu.has("avx2"):
        isa = "avx2"
    else:
        isa = "sse41" if cpu.machine in ("x86_64", "AMD64") else "default"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f"{isa} (capped by ONEDNN_MAX_CPU_ISA={cap})" if cap else isa


def bf16_support(cpu: CpuInfo) -> str:
    if cpu.has("amx_bf16"):
        return "native (AMX tiles and avx512_bf16)"
    if cpu.has("avx512_bf16"):
        return "native (avx512_bf16 dot products)"
    if cpu.has("avx512f") or cpu.has("avx2"):
        return "emulated (BF16 widened to FP32 in the kernels: usually slower except memory-bound ops)"
    return "emulated"


def fp16_support(cpu: CpuInfo) -> str:
    if cpu.has("amx_fp16") or cpu.has("avx512_fp16"):
        return "native (" + ", ".join(f for f in ("amx_fp16", "avx512_fp16") if cpu.has(f)) + ")"
    if cpu.has("f16c"):
        return "emulated (F16C conversions, FP32 arithmetic)"
    return "emulated"


def version(framework: str) -> str | None:
    """The installed version of ``framework`` (its distribution's metadata), or None."""
    for dist in DISTRIBUTIONS.get(framework, (framework,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def runtimes(probe: bool = False) -> list[RuntimeInfo]:
    """The installed frameworks' CPU runtimes. ``probe`` imports torch to read what it
    actually dispatches to (its CPU capability and oneDNN build); otherwise everything
    comes from metadata and the CPU flags."""
    cpu = cpu_info()
    isa, bf16, fp16 = onednn_isa(cpu), bf16_support(cpu), fp16_support(cpu)
    out = []
    if version("torch"):
        info = RuntimeInfo("torch", version("torch"), bf16, fp16, isa)
        if probe:
            info.notes.extend(_torch_probe())
        out.append(info)
    if version("tensorflow"):
        enabled = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False")
        out.append(RuntimeInfo("tensorflow", version("tensorflow"), bf16 if enabled else "emulated (oneDNN off)",
                               fp16 if enabled else "emulated (oneDNN off)", isa if enabled else "",
                               [f"oneDNN {'on' if enabled else 'off'} (TF_ENABLE_ONEDNN_OPTS)"]))
    if version("onnxruntime"):
        out.append(RuntimeInfo("onnxruntime", version("onnxruntime"),
                               "none (the CPU provider has no BF16 MatMul/Gemm/Conv/elementwise kernels)",
                               "partial (FP16 kernels for a few ops on the CPU provider; most run after casts)", "",
                               ["objective='performance' keeps ONNX models FP32 for this runtime"]))
    if version("mxnet"):
        out.append(RuntimeInfo("mxnet", version("mxnet"), bf16 + "; oneDNN BF16 for Convolution/FullyConnected",
                               "none on CPU", isa))
    return out


def _torch_probe() -> list[str]:
    try:
        import torch
    except Exception as exc:  # a broken install: say so instead of failing `mixprec env`
        return [f"torch does not import: {type(exc).__name__}"]
    notes = [f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
             f"mkldnn {'available' if torch.backends.mkldnn.is_available() else 'unavailable'}",
             f"{torch.get_num_threads()} threads"]
    for line in torch.__config__.show().splitlines():
        if "oneDNN" in line or "Intel(R) MKL-DNN" in line:
            notes.append(" ".join(line.split()).strip("- "))
            break
    return notes


def fingerprint() -> dict[str, Any]:
    """The machine's identity for timing caches: CPU model, precision flags, cores and
    architecture (the oneDNN ISA cap is part of it: it changes the kernels)."""
    cpu = cpu_info()
    return {"cpu": cpu.model, "flags": list(cpu.flags), "cores": cpu.cores, "machine": cpu.machine,
            "isa": onednn_isa(cpu)}


def fingerprint_key(fp: dict[str, Any] | None = None) -> str:
    """A short stable hash of a fingerprint (this machine's by default)."""
    text = json.dumps(fp if fp is not None else fingerprint(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def summary_line() -> str:
    """One line: CPU, cores, the precision flags, and the frameworks' versions."""
    cpu = cpu_info()
    flags = ",".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_fp16", "avx512_fp16") if cpu.has(f))
    versions = ", ".join(f"{fw} {version(fw)}" for fw in ("torch", "tensorflow", "onnxruntime", "mxnet")
                         if version(fw))
    return (f"{cpu.model}, {cpu.cores} cores, {flags or 'no avx512/amx'}; bf16 {bf16_support(cpu).split(' ')[0]}, "
            f"oneDNN ISA {onednn_isa(cpu)}; {versions or 'no framework installed'}")


def env_report(probe: bool = False) -> dict[str, Any]:
    """Everything ``mixprec env`` prints, as a dict (JSON-ready)."""
    cpu = cpu_info()
    return {"cpu": {"model": cpu.model, "cores": cpu.cores, "machine": cpu.machine,
                    "flags": {f: cpu.has(f) for f in PRECISION_FLAGS}},
            "bf16": bf16_support(cpu), "fp16": fp16_support(cpu), "onednn_isa": onednn_isa(cpu),
            "frameworks": {fw: version(fw) for fw in DISTRIBUTIONS},
            "runtimes": [asdict(r) for r in runtimes(probe)], "summary": summary_line(),
            "fingerprint": fingerprint_key()}
