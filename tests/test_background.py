"""mixprec.background: work in a forked child gives exactly the value it would give here,
or None (the caller then does it itself); it never forks beside another thread or when
turned off, and a job nobody collects is ended."""
import os
import sys
import threading
import time

import numpy as np
import pytest

from mixprec import background

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="background jobs fork on Linux only")


@pytest.fixture(autouse=True)
def single_threaded(monkeypatch):
    """Threads other tests' frameworks left running (tensorflow's) are not these tests' own."""
    monkeypatch.setattr(threading, "active_count", lambda: 1)


def test_a_job_returns_the_child_s_value():
    big = np.arange(100000, dtype=np.float32)  # the child reads the parent's memory
    job = background.start(lambda: [big * 2, {"pid": os.getpid()}], "test")
    assert job is not None
    doubled, info = job.result()
    assert np.array_equal(doubled, big * 2) and info["pid"] != os.getpid()
    assert job.result()[1] == info and not os.path.exists(job.path)  # collected once, file removed


def test_a_failing_or_dying_child_gives_none():
    def fails():
        raise ValueError("no")
    assert background.start(fails, "test").result() is None
    assert background.start(lambda: os._exit(3), "test").result() is None


def test_close_ends_a_running_child():
    job = background.start(lambda: time.sleep(60), "test")
    started = time.perf_counter()
    job.close()
    assert time.perf_counter() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(job.pid, os.WNOHANG)  # reaped: no zombie left
    assert job.result() is None and not os.path.exists(job.path)


def test_no_fork_beside_another_thread_or_when_turned_off(monkeypatch):
    monkeypatch.undo()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not background.available() and background.start(lambda: 1, "test") is None
    finally:
        stop.set()
        thread.join()
    monkeypatch.setenv("MIXPREC_BACKGROUND", "0")
    assert background.start(lambda: 1, "test") is None


def test_no_fork_without_memory_for_a_second_copy(monkeypatch):
    """A child may end up copying every page: no fork when this process is larger than 80%
    of the memory available (the 1M-node graph holds 9 GB)."""
    import builtins
    assert background._memory_allows()  # a test process is small
    real_open = builtins.open

    def tight(path, *args, **kwargs):
        if path == "/proc/meminfo":
            import io
            return io.StringIO("MemTotal: 1000 kB\nMemAvailable:      1024 kB\n")  # 1 MiB left
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", tight)
    assert not background._memory_allows() and background.start(lambda: 1, "test") is None


def test_a_child_runs_at_a_lower_priority_than_its_parent():
    mine = os.nice(0)
    job = background.start(lambda: os.nice(0), "test")
    assert job.result() == min(19, mine + background.CHILD_NICENESS) > mine
    assert os.nice(0) == mine  # the parent's own priority is untouched
