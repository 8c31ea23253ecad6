"""File helpers shared by the backends and the CLI (no framework knowledge here)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: the same inode when both exist
    (hard links, symlinks), else the same resolved path."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), shortened to ``limit``
    characters; the exception type's name when the message is empty."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
