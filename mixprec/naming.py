"""Name helpers shared by frontends and backends (no framework knowledge here)."""
from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)


def claim(base: str, taken: set[str], sep: str = "_") -> str:
    """``base``, or ``base<sep>1``, ``base<sep>2``, ... -- the first not in ``taken``;
    the result is added to ``taken``."""
    candidate, counter = base, 0
    while candidate in taken:
        counter += 1
        candidate = f"{base}{sep}{counter}"
    taken.add(candidate)
    return candidate


def identifier(text: str, fallback: str = "input") -> str:
    """``text`` as a Python identifier: non-word characters become ``_``, a leading digit
    gets a ``<fallback>_`` prefix, an empty result is ``fallback``."""
    name = re.sub(r"\W", "_", text)
    if not name:
        return fallback
    return name if not name[0].isdigit() else f"{fallback}_{name}"
