"""PassManager: runs passes in order, verifies the IR after each pass that changed it,
and optionally writes ``NN-<pass>.ir`` after each such pass."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

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

    def run(self, graph: Graph) -> PassResult:
        """Run the passes (a progress bar of them when ``mixprec.progress`` is on)."""
        with paused_gc(), bars.stage("passes", total=len(self.passes), unit="pass") as bar:
            return self._run(graph, bar)

    def _run(self, graph: Graph, bar: bars.Bar) -> PassResult:
        self.history = []
        if self.verify:
            try:
                verify_ir(graph)
            except IRError as exc:
                raise PassError(f"the input graph is already broken: {exc}") from None
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
                try:
                    verify_ir(graph)
                except IRError as exc:
                    raise PassError(f"pass {p.name!r} broke the IR: {exc}") from None
                problem = p.ensures(graph)
                if problem:
                    raise PostconditionError(f"pass {p.name!r} broke its guarantee: {problem}")
            if self.dump_dir is not None:
                atomic_write_text(Path(self.dump_dir) / f"{index:02d}-{p.name}.ir", dump(graph))
        return PassResult(graph, changed_any)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)
