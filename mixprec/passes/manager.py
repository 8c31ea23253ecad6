"""PassManager: runs passes in order, verifies the IR after each pass that changed it,
and optionally writes ``NN-<pass>.ir`` after each such pass.

On a graph of ``background.LARGE_GRAPH_NODES`` nodes and more each verification (the IR's invariants
and the pass's ``ensures``) runs in a forked child on the graph as the pass left it
(``mixprec.background``: the fork is a copy-on-write snapshot) while the next passes run:
on the 100k-node graph of bench/scale.py three verifications take 1.3-1.7 s. Every result
is collected before ``run`` returns or raises, and the error raised is the one the first
failing verification names, as if each had run in line."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mixprec import background
from mixprec import progress as bars
from mixprec.errors import IRError, MixprecError, PassError, PostconditionError, PreconditionError
from mixprec.fileio import atomic_write_text
from mixprec.ir.gcpause import paused_gc
from mixprec.ir.graph import Graph
from mixprec.ir.text import dump
from mixprec.ir.verify import verify as verify_ir
from mixprec.passes.base import Pass, PassResult

logger = logging.getLogger(__name__)


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float


@dataclass
class PassManager:
    """Runs ``passes`` on a graph. Invariants: each pass's ``requires`` holds before it
    runs (else PreconditionError); after every pass that reports a structural change the
    IR verifies (else PassError) and the pass's ``ensures`` holds (else
    PostconditionError); each error names the pass. The manager knows no policy: what a
    pass guarantees about dtypes is the pass's own ``ensures``."""

    passes: Sequence[Pass]
    verify: bool = True
    dump_dir: str | os.PathLike | None = None
    progress: Callable[[int, int, str], None] | None = None
    history: list[PassRecord] = field(default_factory=list)
    _pending: list[tuple[str, background.Job]] = field(default_factory=list, repr=False)

    def run(self, graph: Graph, defer: bool = False) -> PassResult:
        """Run the passes (a progress bar of them when ``mixprec.progress`` is on). With
        ``defer``, background verifications still running when the last pass ends are
        left to ``finish()``, which must be called before the result is trusted (the caller
        emits meanwhile)."""
        with paused_gc(), bars.stage("passes", total=len(self.passes), unit="pass") as bar:
            return self._run(graph, bar, defer)

    def finish(self) -> None:
        """Collect the verifications ``run(defer=True)`` left running; raises as ``run``."""
        pending, self._pending = self._pending, []
        self._collect(pending)

    def _run(self, graph: Graph, bar: bars.Bar, defer: bool) -> PassResult:
        self.history = []
        pending: list[tuple[str, background.Job]] = []
        try:
            result = self._passes(graph, bar, pending)
        except BaseException:
            self._collect(pending)  # a pass that failed on a broken IR: the break is the error
            raise
        if defer:
            self._pending = pending
        else:
            self._collect(pending)
        return result

    def _passes(self, graph: Graph, bar: bars.Bar, pending: list[tuple[str, background.Job]]) -> PassResult:
        if self.verify:
            self._verify(graph, None, pending)
        if self.dump_dir is not None:
            Path(self.dump_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(self.dump_dir) / "00-input.ir", dump(graph))
        changed_any = False
        for index, p in enumerate(self.passes, start=1):
            if self.progress:
                self.progress(index, len(self.passes), p.name)
            bar.update(0, p.name)
            if self.verify:
                problem = p.requires(graph)
                if problem:
                    self._collect(pending)  # an earlier pass's broken guarantee comes first
                    raise PreconditionError(f"pass {p.name!r} cannot run on this graph: {problem}")
            start = time.perf_counter()
            try:
                result = p.run(graph)
            except MixprecError:
                raise
            except Exception as exc:
                raise PassError(f"pass {p.name!r} failed: {type(exc).__name__}: {exc}") from exc
            elapsed = time.perf_counter() - start
            self.history.append(PassRecord(p.name, result.modified, elapsed))
            bar.update(1, p.name)
            logger.debug("pass %s: modified=%s in %.3fs", p.name, result.modified, elapsed)
            graph = result.graph
            if not result.modified:
                continue
            changed_any = True
            if self.verify and p.changes_structure:
                self._verify(graph, p, pending)
            if self.dump_dir is not None:
                atomic_write_text(Path(self.dump_dir) / f"{index:02d}-{p.name}.ir", dump(graph))
        return PassResult(graph, changed_any)

    def _verify(self, graph: Graph, p: Pass | None, pending: list[tuple[str, background.Job]]) -> None:
        """Verify the IR (and ``p.ensures``) after ``p`` (None: the input graph), in a child
        beside the next passes on a large graph, else here."""
        if len(graph) >= background.LARGE_GRAPH_NODES:
            job = background.start(lambda: _problem(graph, p), f"verification after {_after(p)}")
            if job is not None:
                pending.append((_after(p), job))
                return
        _raise(_problem(graph, p))

    @staticmethod
    def _collect(pending: list[tuple[str, background.Job]]) -> None:
        """Every background verification's result, in order; the first failure raised."""
        jobs, pending[:] = list(pending), []
        first: tuple[str, str, str] | None = None
        for _, job in jobs:
            answer = job.result()
            if answer is None:
                raise PassError(f"the {job.what} ended without an answer; run again with MIXPREC_BACKGROUND=0")
            if first is None and answer[0]:
                first = answer
        if first is not None:
            _raise(first)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)


def _after(p: Pass | None) -> str:
    return "the input" if p is None else f"pass {p.name!r}"


def _problem(graph: Graph, p: Pass | None) -> tuple[str, str, str]:
    """(kind, pass name, message) of the first broken invariant after ``p`` (None: the
    input graph); ("", "", "") when the IR verifies and ``p.ensures`` holds."""
    name = "" if p is None else p.name
    try:
        verify_ir(graph)
    except IRError as exc:
        return "ir", name, str(exc)
    problem = p.ensures(graph) if p is not None else None
    return ("ensures", name, problem) if problem else ("", "", "")


def _raise(problem: tuple[str, str, str]) -> None:
    kind, name, message = problem
    if kind == "ir" and not name:
        raise PassError(f"the input graph is already broken: {message}")
    if kind == "ir":
        raise PassError(f"pass {name!r} broke the IR: {message}")
    if kind == "ensures":
        raise PostconditionError(f"pass {name!r} broke its guarantee: {message}")
