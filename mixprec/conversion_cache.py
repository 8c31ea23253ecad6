"""The conversion cache: a whole ``objective="performance"`` conversion reused when the same
model is converted again with the same options, mixprec and frameworks on the same machine.

The timing cache (mixprec.profiling.cache) already makes a second conversion time nothing;
this one makes it skip capturing, the pipeline, the output check and validation too.

Where: ``$MIXPREC_CACHE_DIR/conversions/<key>/`` (default ``~/.cache/mixprec``), each entry
a directory of ``entry.json`` (when it was made, from what: for people), ``result.bin``
(the report, the sample inputs of the output check and the FP32 model's outputs on them)
and ``ir.bin`` (the converted IR, mixprec.ir.serialize).

The key: mixprec's own code (every .py and .toml of the package), the frameworks'
versions, the machine's fingerprint (CPU model, flags, cores, oneDNN ISA), every option of
the configuration (policy and profile files by their bytes), the ``MIXPREC_``/oneDNN/OpenMP
environment, and the model: a path by the bytes of every file it reads, a model object by
its adapter's fingerprint (its classes' code, attributes and every weight's bytes).

Reuse: the IR is loaded and emitted again without the framework's separate validation
(it passed with the same IR, framework version and mixprec code when it was stored). A
model object must first give, on the stored sample inputs, the FP32 outputs it gave then
(within 1e-4 relative): what its fingerprint cannot see (a helper in another file that
``forward`` calls) cannot make a stale result come back. A conversion that returned the
FP32 model as given (mixprec.profiling.guard) returns the model as given again.

Safety: entries are pickles, so one is read only when its directory and files belong to
this user and no one else can write them; a damaged, foreign or stale entry is a miss
and is replaced. At most ``$MIXPREC_CACHE_MAX_BYTES`` (default 4 GiB) are kept, the least
recently used entries removed first.

Not cached: another objective, ``cache=False``, an evaluation function (its code and data
cannot be fingerprinted), ``dump_dir``, ``mixprec profile``, and model objects whose
fingerprint cannot be made (the reason is logged)."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pickle
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixprec import machine
from mixprec.config import MixedPrecisionConfig
from mixprec.ir import serialize
from mixprec.ir.graph import Model
from mixprec.passes.pipeline import split_items
from mixprec.profiling.cache import cache_root
from mixprec.report import Report
from mixprec.runtimes.base import Adapter
from mixprec.runtimes.fingerprint import Fingerprint, Unfingerprintable, file_digest, package_digest

logger = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_MAX_BYTES = 4 << 30
#: environment settings that change what a conversion measures or makes
_ENV_PREFIXES = ("MIXPREC_", "ONEDNN_", "DNNL_", "OMP_", "MKL_", "KMP_", "TF_ENABLE_ONEDNN")
_ENV_IGNORED = {"MIXPREC_CACHE_DIR", "MIXPREC_CACHE_MAX_BYTES", "MIXPREC_PROGRESS"}
#: the stored FP32 outputs must be given again within this (relative to the output's scale)
VERIFY_RTOL = 1e-4


@dataclass
class Slot:
    """Where one conversion is (or will be) cached. ``verify``: the model is an object, so
    its FP32 outputs are checked before reuse; ``given_example``: the user gave example
    inputs (otherwise a .pt2's own are stored with the entry)."""
    key: str
    directory: Path
    verify: bool
    given_example: bool


@dataclass
class Reused:
    """A cached conversion: the native model, its IR and its report."""
    native: Any
    ir: Model
    report: Report


def conversions_root() -> Path:
    return cache_root() / "conversions"


def slot(adapter: Adapter, model: Any, config: MixedPrecisionConfig, cacheable: bool) -> Slot | None:
    """The cache slot of this conversion, or None when it is not cached (see the module
    docstring; ``cacheable`` is False when fit knows it cannot be: an evaluation function,
    ``mixprec profile``)."""
    if not cacheable or config.objective != "performance" or not config.cache or config.dump_dir is not None:
        return None
    started = time.perf_counter()
    try:
        key = _key(adapter, model, config)
    except Unfingerprintable as exc:
        logger.info("conversion cache: not used (%s)", exc)
        return None
    logger.info("conversion cache key %s (%.3f s)", key, time.perf_counter() - started)
    return Slot(key, conversions_root() / key, not isinstance(model, (str, os.PathLike)),
                config.example_inputs is not None)


def _key(adapter: Adapter, model: Any, config: MixedPrecisionConfig) -> str:
    digest = Fingerprint(f"mixprec conversion {FORMAT}", other=adapter.hash_value)
    digest.text(package_digest(), adapter.name)
    digest.plain(machine.fingerprint(), "the machine")
    digest.plain(_versions(), "the frameworks")
    digest.plain({k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES) and k not in _ENV_IGNORED},
                 "the environment")
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        digest.text(field.name)
        if field.name in ("policy", "profile") and value is not None:
            digest.text(file_digest(value))
        elif dataclasses.is_dataclass(value):
            digest.plain(dataclasses.asdict(value), field.name)
        else:
            digest.plain(value, field.name)
    if config.pipeline:  # passes registered from outside mixprec are hashed by their code
        from mixprec.passes.registry import get_pass
        for item in split_items(config.pipeline):
            digest.code(get_pass(item.split("{")[0].strip()))
    if isinstance(model, (str, os.PathLike)):
        digest.files(adapter.input_files(Path(model)))
    else:
        adapter.fingerprint(model, digest)
    return digest.hexdigest()


@functools.cache
def _versions() -> dict[str, str | None]:
    """The installed frameworks' versions (read once per process: 25 ms)."""
    return {fw: machine.version(fw) for fw in sorted(machine.DISTRIBUTIONS)}


# ------------------------------------------------------------------------- reuse ---
def reuse(found: Slot, adapter: Adapter, model: Any, config: MixedPrecisionConfig) -> Reused | None:
    """The cached conversion of ``found``, or None (a miss: no entry, or one that is
    damaged, not private to this user, or whose model no longer gives its FP32 outputs)."""
    directory = found.directory
    if not (directory / "entry.json").is_file():
        return None
    started = time.perf_counter()
    try:
        _check_private(directory, *sorted(p.name for p in directory.iterdir()))
        with open(directory / "result.bin", "rb") as handle:
            stored = pickle.load(handle)
        if stored.get("format") != FORMAT:
            raise ValueError(f"format {stored.get('format')!r}")
        if found.verify and stored["check"] is not None and not _same_fp32_outputs(adapter, model, stored["check"]):
            logger.info("conversion cache: the model no longer gives the FP32 outputs of entry %s; converting again",
                        found.key)
            _remove(directory)
            return None
        ir_model = serialize.read(directory / "ir.bin")
        if stored["example_inputs"] is not None and not found.given_example:
            config.example_inputs = stored["example_inputs"]
        native = adapter.native(model) if stored["returned_fp32"] else \
            adapter.load_native(directory, serialize.read(directory / "ir.bin"), config)  # a mapping of its own
        report = Report.from_dict(stored["report"])
    except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss, never a failed conversion
        logger.warning("conversion cache: ignoring entry %s (%s: %s)", directory, type(exc).__name__, exc)
        _remove(directory)
        return None
    seconds = time.perf_counter() - started
    report.notes.append(f"conversion cache: reused the conversion of {stored['created']} (entry {found.key}, "
                        f"{seconds:.2f} s): nothing was captured, measured or checked again"
                        + (", the model gave the cached FP32 outputs again" if found.verify and stored["check"]
                           else ""))
    if report.profile is not None:
        report.profile.update(seconds=0.0, timer_calls=0, cached=True)
    os.utime(directory / "entry.json")  # least recently used goes first
    logger.info("conversion cache: reused entry %s in %.3f s", found.key, seconds)
    return Reused(native, ir_model, report)


def _same_fp32_outputs(adapter: Adapter, model: Any, check: tuple[Any, list[Any]]) -> bool:
    inputs, reference = check
    try:
        outputs = adapter.run_original(model, inputs)
    except Exception as exc:  # the model changed so much that it no longer runs on them
        logger.info("conversion cache: the FP32 model fails on the cached sample inputs (%s)", exc)
        return False
    if len(outputs) != len(reference):
        return False
    for new, old in zip(outputs, reference):
        new, old = np.asarray(new), np.asarray(old)
        if new.shape != old.shape or new.dtype != old.dtype:
            return False
        if old.dtype.kind in "fc":
            scale = max(1.0, float(np.max(np.abs(old.astype(np.float64))))) if old.size else 1.0
            if not np.allclose(new.astype(np.float64), old.astype(np.float64), rtol=VERIFY_RTOL,
                               atol=VERIFY_RTOL * scale, equal_nan=True):
                return False
        elif not np.array_equal(new, old):
            return False
    return True


# ------------------------------------------------------------------------- store ---
def store(found: Slot, adapter: Adapter, result: Any, config: MixedPrecisionConfig,
          check: tuple[Any, list[Any]] | None) -> None:
    """Cache ``result`` (the ConvertedModel fit returns) in ``found``; ``check`` is the
    output check's sample inputs and FP32 outputs (None when the check did not run).
    Failing to store is logged, never raised: the conversion itself succeeded."""
    root = conversions_root()
    staging = root / f".staging-{found.key}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(root)
        staging.mkdir(mode=0o700)
        ir_size = serialize.write(result.ir, staging / "ir.bin")
        returned_fp32 = (result.report.profile or {}).get("returned") == "fp32"
        stored = {"format": FORMAT, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "report": result.report.to_dict(), "returned_fp32": returned_fp32,
                  "example_inputs": None if found.given_example else config.example_inputs,
                  "check": check if found.verify else None}
        result_bytes = pickle.dumps(stored, protocol=5)
        size = ir_size + len(result_bytes)
        limit = max_bytes()
        if size > limit:
            logger.info("conversion cache: not storing %s (%d MiB > the %d MiB limit, MIXPREC_CACHE_MAX_BYTES)",
                        found.key, size >> 20, limit >> 20)
            return
        (staging / "result.bin").write_bytes(result_bytes)
        if not returned_fp32:
            adapter.store_native(result.model, staging)
            size += sum(p.stat().st_size for p in staging.iterdir() if p.name not in ("ir.bin", "result.bin"))
        (staging / "entry.json").write_text(json.dumps({"created": stored["created"], "framework": result.framework,
                                                        "bytes": size, "model": _describe(result)}, indent=1))
        if found.directory.exists():
            _remove(found.directory)
        os.replace(staging, found.directory)
        logger.info("conversion cache: stored entry %s (%.1f MiB)", found.key, size / 2**20)
        _evict(root, limit)
    except Exception as exc:  # noqa: BLE001 - a cache that cannot store never fails the conversion
        logger.warning("conversion cache: could not store the conversion (%s: %s)", type(exc).__name__, exc)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _describe(result: Any) -> str:
    return f"{result.framework}, {len(result.report.nodes)} nodes, precision {result.report.precision}"


def describe_entry(directory: Path) -> str:
    """What ``entry.json`` says of the entry in ``directory`` (made when, of what)."""
    try:
        data = json.loads((directory / "entry.json").read_text())
    except (OSError, ValueError):
        return "(unreadable entry.json)"
    return f"made {data.get('created', '?')}: {data.get('model', '?')}"


def max_bytes() -> int:
    """``$MIXPREC_CACHE_MAX_BYTES`` (a whole number of bytes), or 4 GiB."""
    given = os.environ.get("MIXPREC_CACHE_MAX_BYTES")
    try:
        return int(given) if given else DEFAULT_MAX_BYTES
    except ValueError:
        logger.warning("MIXPREC_CACHE_MAX_BYTES=%r is not a whole number of bytes; using 4 GiB", given)
        return DEFAULT_MAX_BYTES


def entries(root: Path | None = None) -> list[tuple[Path, int, float]]:
    """``(directory, bytes, last used)`` of every entry, least recently used first."""
    root = root or conversions_root()
    found = []
    for directory in root.iterdir() if root.is_dir() else ():
        marker = directory / "entry.json"
        if directory.name.startswith(".") or not marker.is_file():
            continue
        size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        found.append((directory, size, marker.stat().st_mtime))
    return sorted(found, key=lambda e: e[2])


def _evict(root: Path, limit: int) -> None:
    listed = entries(root)
    total = sum(size for _, size, _ in listed)
    for directory, size, _ in listed:
        if total <= limit:
            break
        logger.info("conversion cache: removing the least recently used entry %s", directory.name)
        _remove(directory)
        total -= size


def _check_private(directory: Path, *names: str) -> None:
    """OSError unless ``directory`` (and its files ``names``) are this user's own, not
    symbolic links, and writable by no one else."""
    if not hasattr(os, "getuid"):
        return
    for path in (directory, *(directory / n for n in names)):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise OSError(f"{path} is not private to this user (owner, mode {stat.filemode(info.st_mode)}); "
                          "the conversion cache only reads its own files")


def _remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
