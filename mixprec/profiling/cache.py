"""Where measurements live: the local cache and the portable profile file.

Local cache: ``$MIXPREC_CACHE_DIR`` (default ``~/.cache/mixprec``) ``/timings/<machine
fingerprint>-<framework>-<version>/<region signature>.json``, one small JSON file per
measurement, each written atomically (mixprec.fileio), so concurrent conversions never
see half a file and the last writer wins. A file that does not parse is a miss (and is
rewritten by the next measurement).

Profile file (``mixprec profile MODEL -o machine.json``): the measurements one model
needed on one machine, with that machine's fingerprint and the framework's version, so
another machine can convert for it (``convert --profile machine.json``)."""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixprec.errors import ConfigError
from mixprec.fileio import atomic_write_text
from mixprec.profiling.timing import Measurement

logger = logging.getLogger(__name__)

PROFILE_FORMAT = "mixprec-profile"
PROFILE_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def cache_root() -> Path:
    """``$MIXPREC_CACHE_DIR`` or ``~/.cache/mixprec`` (``$XDG_CACHE_HOME`` respected)."""
    given = os.environ.get("MIXPREC_CACHE_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixprec"


class TimingCache:
    """Measurements of one machine, framework and framework version."""

    def __init__(self, machine_key: str, framework: str, version: str, root: Path | None = None) -> None:
        name = _SAFE.sub("_", f"{machine_key}-{framework}-{version}")
        self.directory = (root or cache_root()) / "timings" / name

    def _path(self, signature: str) -> Path:
        return self.directory / f"{_SAFE.sub('_', signature)}.json"

    def get(self, signature: str) -> Measurement | None:
        path = self._path(signature)
        try:
            return Measurement.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            logger.info("ignoring the unreadable timing cache entry %s (%s)", path, exc)
            return None

    def put(self, signature: str, measurement: Measurement) -> None:
        """Store atomically; a cache that cannot be written only costs time next run."""
        try:
            atomic_write_text(self._path(signature), json.dumps(measurement.to_dict(), sort_keys=True))
        except OSError as exc:
            logger.warning("cannot write the timing cache under %s (%s); set MIXPREC_CACHE_DIR to a writable "
                           "directory to reuse measurements", self.directory, exc.strerror or exc)


@dataclass
class Profile:
    """A portable profile: ``machine`` (fingerprint and summary), ``framework`` and its
    ``version``, ``entries`` (region signature -> measurement) and ``model`` (the FP32
    model's measured latency and what it was profiled on)."""
    machine: dict[str, Any]
    framework: str
    version: str
    entries: dict[str, Measurement] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "machine": self.machine,
                           "framework": self.framework, "framework_version": self.version, "model": self.model,
                           "entries": {k: m.to_dict() for k, m in sorted(self.entries.items())}},
                          indent=1, sort_keys=True)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        """ConfigError (saying how to make one) for anything but a profile file."""
        how = "write one with `mixprec profile MODEL -o machine.json` on the machine the model will run on"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"profile {path}: no such file; {how}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"profile {path}: not a readable JSON file ({exc}); {how}") from None
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ConfigError(f"profile {path}: not a mixprec profile (no \"format\": \"{PROFILE_FORMAT}\"); {how}")
        if data.get("version") != PROFILE_VERSION:
            raise ConfigError(f"profile {path}: format version {data.get('version')!r}, this mixprec reads "
                              f"{PROFILE_VERSION}; {how}")
        try:
            entries = {str(k): Measurement.from_dict(v) for k, v in dict(data["entries"]).items()}
            return cls(dict(data["machine"]), str(data["framework"]), str(data["framework_version"]), entries,
                       dict(data.get("model") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"profile {path}: malformed ({exc}); {how}") from None
