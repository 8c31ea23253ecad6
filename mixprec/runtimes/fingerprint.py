"""Fingerprints of models and of what a conversion depends on, for the conversion cache.

A fingerprint is a 128-bit xxh3 digest of everything fed to a ``Fingerprint``: text, plain
data, arrays (dtype, shape and bytes), files (their bytes) and code (the source file that
defines a class or function, or its compiled code where there is no file). Arrays are
hashed at memory speed (about 20 GB/s), so fingerprinting a model object costs far less
than capturing it.

Invariant: equal inputs give equal digests within and across processes (no ``id``, no
``hash()`` of strings, sets and dicts in sorted order); what cannot be hashed faithfully
raises ``Unfingerprintable`` naming it, and the caller then does not cache."""
from __future__ import annotations

import enum
import functools
import inspect
import logging
import marshal
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

logger = logging.getLogger(__name__)

_CHUNK = 16 << 20
_PLAIN = (str, int, float, bool, bytes, type(None), complex)


Other = Callable[["Fingerprint", Any, str, int], bool]


class Unfingerprintable(Exception):
    """Something a conversion depends on cannot be fingerprinted (the message says what)."""


class Fingerprint:
    """An incremental digest; every ``add_*`` call is framed (a tag and a length) so that
    different sequences of parts never give the same stream."""

    def __init__(self, tag: str = "", other: "Other | None" = None) -> None:
        import xxhash  # imported when a cache is used: ``import mixprec`` needs only numpy and networkx
        self._hash = xxhash.xxh3_128()
        #: hashes values ``plain`` does not know (a framework's tensors): True when it did
        self.other = other
        self.text(tag)

    def _frame(self, tag: bytes, payload: bytes) -> None:
        self._hash.update(tag + len(payload).to_bytes(8, "little"))
        self._hash.update(payload)

    def text(self, *parts: str) -> "Fingerprint":
        for part in parts:
            self._frame(b"t", part.encode("utf-8", "surrogatepass"))
        return self

    def array(self, array: np.ndarray) -> "Fingerprint":
        """dtype, shape and bytes (a C-contiguous copy only when the array is not one)."""
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise Unfingerprintable("an array of Python objects")
        self.text(array.dtype.str, array.dtype.name, repr(array.shape))
        data = np.ascontiguousarray(array)
        self._hash.update(b"a" + data.nbytes.to_bytes(8, "little"))
        self._hash.update(memoryview(data.reshape(-1).view(np.uint8)))
        return self

    def plain(self, value: Any, where: str = "value", depth: int = 0) -> "Fingerprint":
        """Plain data: scalars, strings, bytes, enums, arrays, and lists, tuples, sets and
        dicts of them; classes and functions by their code (``code``)."""
        if depth > 12:
            raise Unfingerprintable(f"{where} is nested too deeply")
        if isinstance(value, _PLAIN):
            return self.text(type(value).__name__, repr(value))
        if isinstance(value, enum.Enum):
            return self.text("enum", type(value).__qualname__, repr(value.value))
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, np.generic):
            return self.array(np.asarray(value))
        if isinstance(value, (list, tuple)):
            self.text(type(value).__name__, str(len(value)))
            for i, item in enumerate(value):
                self.plain(item, f"{where}[{i}]", depth + 1)
            return self
        if isinstance(value, (set, frozenset)):
            items = sorted(value, key=repr)
            return self.plain(items, where, depth + 1)
        if isinstance(value, dict):
            self.text("dict", str(len(value)))
            for key in sorted(value, key=repr):
                self.plain(key, f"{where} key", depth + 1)
                self.plain(value[key], f"{where}[{key!r}]", depth + 1)
            return self
        if isinstance(value, (type, types.FunctionType, types.MethodType, functools.partial)):
            return self.code(value)
        if isinstance(value, types.BuiltinFunctionType):  # compiled: its name and its package's version say it
            return self.text("builtin", getattr(value, "__module__", None) or "", value.__qualname__)
        if isinstance(value, os.PathLike):
            return self.text("path", os.fspath(value))
        if self.other is not None and self.other(self, value, where, depth):
            return self
        raise Unfingerprintable(f"{where} is a {type(value).__module__}.{type(value).__qualname__}")

    def code(self, obj: Any) -> "Fingerprint":
        """A class, function, method or partial by its qualified name and code: the source
        file it is defined in (its bytes), or, where it has none (an interactive session),
        the compiled code of the function or of every function in the class."""
        if isinstance(obj, functools.partial):
            self.code(obj.func)
            return self.plain((obj.args, obj.keywords), "a partial's arguments")
        if isinstance(obj, types.MethodType):
            return self.code(obj.__func__)
        module = getattr(obj, "__module__", None) or ""
        self.text("code", module, getattr(obj, "__qualname__", repr(obj)))
        path = _source_file(obj)
        if path is not None:
            self.text(file_digest(path))
            return self
        functions = [obj] if isinstance(obj, types.FunctionType) else \
            [f for f in vars(obj).values() if isinstance(f, types.FunctionType)] if isinstance(obj, type) else []
        if isinstance(obj, type) and module == "builtins":
            return self
        if not functions and not isinstance(obj, type):
            raise Unfingerprintable(f"the code of {module}.{getattr(obj, '__qualname__', obj)} cannot be read")
        for function in functions:
            self._hash.update(marshal.dumps(function.__code__))
        return self

    def files(self, paths: Iterable[Path]) -> "Fingerprint":
        """Files by content; a directory by every file under it (relative names, sorted)."""
        for path in paths:
            path = Path(path)
            if path.is_dir():
                for child in sorted(p for p in path.rglob("*") if p.is_file()):
                    self.text(child.relative_to(path).as_posix(), file_digest(child))
            else:
                self.text("file", file_digest(path))
        return self

    def attributes(self, obj: Any, where: str, depth: int, skip: Iterable[str] = ()) -> "Fingerprint":
        """An object by its class's code and its instance attributes (``vars``), sorted by
        name, leaving out ``skip``."""
        self.code(type(obj))
        skipped = set(skip)
        state = getattr(obj, "__dict__", None)
        if state is None:
            raise Unfingerprintable(f"{where} is a {type(obj).__qualname__} without attributes to read")
        for name in sorted(state):
            if name not in skipped:
                self.text(name)
                self.plain(state[name], f"{where}.{name}", depth + 1)
        return self

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The xxh3-128 digest of a file's bytes (read once per process while its size and
    modification time stay the same)."""
    path = os.path.realpath(path)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise Unfingerprintable(f"{path} cannot be read ({exc.strerror})") from None
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    import xxhash
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _source_file(obj: Any) -> str | None:
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None) if module is not None else None
    if path is None:
        try:
            path = inspect.getsourcefile(obj)
        except (TypeError, OSError):
            return None
    return path if path is not None and os.path.isfile(path) else None


@functools.cache
def package_digest() -> str:
    """mixprec's own code and policy files: a conversion cached by one version of mixprec
    is never reused by another (an edited checkout included)."""
    root = Path(__file__).resolve().parents[1]
    digest = Fingerprint("mixprec package")
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()):
        digest.text(path.relative_to(root).as_posix(), file_digest(path))
    return digest.hexdigest()
