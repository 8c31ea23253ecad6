"""Work done in a forked child process while the conversion goes on (the second core).

``start(fn, what)`` forks; the child runs ``fn()`` and writes its value (pickled) to a
private temporary file, then leaves with ``os._exit`` (no atexit handler, no buffered
output of the parent is flushed twice). ``Job.result()`` waits for the child and returns
``fn``'s value, or None when the child failed or died; the caller then does the work
itself. A job never changes what is computed, only where.

Fork is used only where it is safe and pays: Linux (macOS system libraries are not safe
to use after a fork), memory for a full second copy of this process, this process running
no other Python thread (a lock another thread held at the fork would stay locked in the
child), and not turned off with ``MIXPREC_BACKGROUND=0``. Before the fork the collector's
objects are frozen (``gc.freeze``) so that the child's collections do not touch, and copy,
the parent's memory; the parent unfreezes them right after.

The child inherits the parent's memory copy-on-write; it logs nothing (its messages would
interleave with the parent's), draws no progress bar and runs at a lower priority
(``CHILD_NICENESS``): when more children than cores are runnable, the parent, whose work
is the critical path, keeps its core."""
from __future__ import annotations

import gc
import logging
import os
import pickle
import sys
import tempfile
import threading
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: graphs of this many nodes and more are worth a fork for work beside the conversion (a fork
#: and its copy-on-write faults cost tens of milliseconds; each stage moved saves 0.5-3 s at 100k)
LARGE_GRAPH_NODES = 20000


def available() -> bool:
    """True when ``start`` would fork (see the module docstring)."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and os.environ.get("MIXPREC_BACKGROUND", "1") != "0" and threading.active_count() == 1
            and _memory_allows())


def _memory_allows() -> bool:
    """The machine could hold a second copy of this process: a child shares its memory
    until either writes a page, and in the worst case every page is copied (this process's
    resident size below 80% of the memory available, from /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open("/proc/meminfo") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
        available_bytes = int(line.split()[1]) * 1024
    except (OSError, ValueError, StopIteration):
        return False
    return resident < 0.8 * available_bytes


class Job:
    """A forked child computing one value; ``result`` collects it once, ``close`` ends it."""

    def __init__(self, pid: int, path: str, what: str) -> None:
        self.pid, self.path, self.what = pid, path, what
        self._done = False
        self._value: Any = None

    def result(self) -> Any:
        """``fn()``'s value (waiting for the child), or None when it failed."""
        if not self._done:
            self._done = True
            try:
                _, status = os.waitpid(self.pid, 0)
                if os.waitstatus_to_exitcode(status) == 0:
                    with open(self.path, "rb") as handle:
                        self._value = pickle.load(handle)  # our own child's private file
                else:
                    logger.info("background %s failed (exit %s); doing it here", self.what,
                                os.waitstatus_to_exitcode(status))
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                logger.info("background %s gave no result (%s); doing it here", self.what, exc)
            finally:
                _remove(self.path)
        return self._value

    def close(self) -> None:
        """End the child if it still runs and drop its file (its result is not wanted)."""
        if self._done:
            return
        self._done = True
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (OSError, ChildProcessError):
            pass
        _remove(self.path)


#: children run at this lower priority: where more of them than cores are runnable, the
#: parent (the critical path) keeps its core and they take what is left
CHILD_NICENESS = 10


def start(fn: Callable[[], Any], what: str) -> Job | None:
    """``fn()`` in a forked child (see the module docstring); None when fork is not
    available here, and the caller does the work itself."""
    if not available():
        return None
    handle, path = tempfile.mkstemp(prefix="mixprec-background-", suffix=".pickle")
    os.close(handle)
    gc.freeze()
    try:
        pid = os.fork()
    except OSError as exc:
        gc.unfreeze()
        _remove(path)
        logger.info("no background %s (fork failed: %s)", what, exc)
        return None
    if pid == 0:  # the child: compute, write, leave
        code = 1
        try:
            logging.disable(logging.CRITICAL)
            if CHILD_NICENESS:
                os.nice(CHILD_NICENESS)
            value = fn()
            with open(path, "wb") as out:
                pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        except BaseException:  # noqa: BLE001 - the parent does the work itself
            pass
        finally:
            os._exit(code)
    gc.unfreeze()
    logger.debug("background %s in process %d", what, pid)
    return Job(pid, path, what)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
