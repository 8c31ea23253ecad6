"""Progress bars for the stages of a conversion (load, each pass, the output check,
writing, weight conversion), drawn with tqdm on stderr.

Off unless switched on: the CLI calls :func:`configure` (on when stderr is a terminal or
``--progress`` is given; ``--no-progress``/``--quiet`` turn it off); library use draws
nothing and logging is unaffected. Code that does long work asks for a bar and updates
it; while bars are off every bar is a no-op, so callers never test whether they are on:

    with progress.stage("load"):                      # a bar with no total (elapsed time)
        ...
    with progress.stage("passes", total=9) as bar:    # counted steps
        bar.update(1, "insert-casts")
    with progress.bytes("weights", total_bytes=n, tensors=k) as bar:   # bytes and tensors
        bar.update(nbytes)                            # one tensor of nbytes done

Invariant: a bar opened here is closed when its ``with`` block ends, so bars never
interleave with the lines the CLI prints after them. tqdm is imported only when a bar is
drawn (``import mixprec`` needs only numpy and networkx); without tqdm bars are off."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Callable, Iterator, TextIO

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {"on": False, "stream": None}


def configure(enabled: bool | None = None, stream: TextIO | None = None) -> bool:
    """Switch bars on (True), off (False) or on exactly when ``stream`` (default
    sys.stderr) is a terminal (None). Returns whether bars are now on."""
    target = stream if stream is not None else sys.stderr
    on = bool(enabled) if enabled is not None else _isatty(target)
    if on:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            logger.info("tqdm is not installed: no progress bars")
            on = False
    _state["on"], _state["stream"] = on, stream
    return on


def enabled() -> bool:
    """Whether bars are drawn."""
    return bool(_state["on"])


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Bar:
    """One bar; ``update(n, text)`` advances it by ``n`` and shows ``text`` beside it. A
    no-op when bars are off (``_bar`` None)."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar
        self.count = 0

    def update(self, n: float = 1, text: str | None = None) -> None:
        self.count += 1
        if self._bar is None:
            return
        if text is not None:
            self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ByteBar(Bar):
    """A bar counting bytes, with the number of tensors done beside it."""

    def __init__(self, bar: Any = None, tensors: int | None = None) -> None:
        super().__init__(bar)
        self.tensors = tensors

    def update(self, n: float = 0, text: str | None = None) -> None:
        """One tensor of ``n`` bytes done (``text`` replaces the tensor count)."""
        done = self.count + 1
        label = text if text is not None else \
            f"{done}/{self.tensors} tensors" if self.tensors is not None else f"{done} tensors"
        super().update(n, label)


def _tqdm(name: str, total: float | None, **kwargs: Any) -> Any:
    if not _state["on"]:
        return None
    from tqdm import tqdm

    stream = _state["stream"] if _state["stream"] is not None else sys.stderr
    return tqdm(total=total, desc=name, file=stream, leave=True, dynamic_ncols=True, mininterval=0.2, **kwargs)


@contextlib.contextmanager
def stage(name: str, total: int | None = None, unit: str = "it") -> Iterator[Bar]:
    """A bar for stage ``name`` of ``total`` steps (None: unknown; the bar shows the
    elapsed time), closed when the block ends."""
    extra = {"bar_format": "{desc}: {elapsed}{postfix}"} if total is None else {}
    bar = Bar(_tqdm(name, total, unit=unit, **extra))
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def bytes(name: str, total_bytes: int, tensors: int | None = None) -> Iterator[ByteBar]:  # noqa: A001
    """A bar for ``total_bytes`` bytes in ``tensors`` tensors (weight conversion,
    writing): call ``update(nbytes)`` once per tensor done."""
    bar = ByteBar(_tqdm(name, total_bytes, unit="B", unit_scale=True, unit_divisor=1024), tensors)
    try:
        yield bar
    finally:
        bar.close()


def callback(name: str) -> Callable[[int, int, str], None]:
    """A ``progress(index, total, text)`` callback (the form ``fit`` and the tuning
    search call) that draws one bar per run of indexes 1..total; a no-op when off."""
    current: dict[str, Any] = {"bar": None, "total": None}

    def show(index: int, total: int, text: str) -> None:
        bar = current["bar"]
        if bar is None or index <= 1 or total != current["total"]:
            if bar is not None:
                bar.close()
            bar = current["bar"] = Bar(_tqdm(name, total))
            current["total"] = total
        if bar._bar is not None:
            bar._bar.n = index
            bar._bar.set_postfix_str(text)
        if index >= total:
            bar.close()
            current["bar"] = None
    return show
