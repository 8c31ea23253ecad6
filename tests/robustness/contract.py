"""The error contract every hostile input must meet, checked in-process.

Through the CLI (``mixprec.cli.main``): exit 0 (the input was still a valid model and
converted) or 2; on 2, exactly one ``mixprec: error:`` line, the last one, and nothing
but mixprec's own lines on stderr; never a traceback or an internal error (exit 3);
the input's bytes unchanged; nothing at OUT after an error. Through ``fit``: a
ConvertedModel or a MixprecError subclass, the input unchanged. Each case runs under a
generous deadline (a hang fails the case instead of hanging the run)."""
from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: seconds one case may take before it counts as a hang (conversions here take < 10 s)
CASE_SECONDS = 120


#: a bug dressed as a MixprecError: "pass 'x' failed: KeyError: ..." (the PassManager wraps them)
WRAPPED = re.compile(r"failed: [A-Z][A-Za-z]*(Error|Exception)\b")


class CaseTimeout(BaseException):
    """Raised by the deadline; a BaseException so that no ``except Exception`` hides it."""


@contextlib.contextmanager
def deadline(seconds: int, what: str) -> Iterator[None]:
    """Fail the case after ``seconds`` (SIGALRM); if native code never returns to Python,
    faulthandler dumps the stacks and ends the run after twice that."""
    def expire(signum, frame):
        raise CaseTimeout(f"{what} ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    faulthandler.dump_traceback_later(seconds * 2, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the input model and its neighbours)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Outcome:
    rc: int
    err: str
    out: str


def run_cli(argv: list[str], capsys, what: str) -> Outcome:
    from mixprec import cli
    capsys.readouterr()
    main = cli.main
    with deadline(CASE_SECONDS, what):
        rc = main(argv)
    captured = capsys.readouterr()
    return Outcome(rc, captured.err, captured.out)


def assert_cli_contract(outcome: Outcome, what: str, out_path: Path | None = None) -> None:
    """See the module docstring."""
    err = outcome.err
    assert "Traceback" not in err and "internal error" not in err, f"{what}: {err}"
    assert not WRAPPED.search(err), f"{what}: an internal exception wrapped in a MixprecError: {err}"
    assert outcome.rc in (0, 2), f"{what}: exit {outcome.rc}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("mixprec: ") for line in lines), f"{what}: foreign lines on stderr: {err}"
    errors = [line for line in lines if line.startswith("mixprec: error: ")]
    if outcome.rc == 2:
        assert len(errors) == 1 and lines[-1] == errors[0], f"{what}: not one error line: {err}"
        if out_path is not None:
            assert not out_path.exists(), f"{what}: {out_path} written although the command failed"
    else:
        assert not errors, f"{what}: exit 0 with an error line: {err}"
