"""Evaluating candidates in parallel: the worker pools behind ``TuningCriterion(workers=N)``.

A pool maps the user's evaluation over a list of converted models and returns the scores
in the order of the models, whatever order the evaluations finish in. ``SerialPool``
evaluates in this process; ``RayPool`` runs each evaluation as a Ray task (one CPU each),
on the Ray already initialised in this process, else on the cluster named by
``RAY_ADDRESS``, else on a local Ray it starts with ``workers`` CPUs (its workers get this
process's ``sys.path`` as PYTHONPATH) and shuts down when the pool closes.

What goes to a Ray worker is pickled (with cloudpickle): the evaluation function, with
everything it refers to, and each converted native model. So the user's ``eval_func``
must be picklable and self-contained: its data (arrays, file paths the workers can read)
travel with it or are loaded inside it, a module it lives in must be importable by the
workers, and what it changes in its own process (appending to a list, counters) is not
seen by the caller. It must be deterministic: the search reads each score once.

Invariant: ``map`` returns one float per model, in the models' order; an exception the
evaluation raises in a worker is raised again here as its own type."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Sequence

from mixprec.errors import ConfigError, MixprecError

logger = logging.getLogger(__name__)

Evaluate = Callable[[Any], float]


class RayUnavailable(ConfigError):
    """``workers`` > 1 was asked for but Ray is not installed."""


class SerialPool:
    """Evaluate in this process, one model after the other."""
    workers = 1

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate

    def map(self, models: Sequence[Any]) -> list[float]:
        return [float(self.evaluate(model)) for model in models]

    def close(self) -> None:
        pass


class RayPool:
    """Evaluate as Ray tasks, at most ``workers`` at a time (see the module docstring)."""

    def __init__(self, evaluate: Evaluate, workers: int) -> None:
        ray = _import_ray()
        self.ray, self.workers, self.started = ray, workers, False
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS") or None
            logger.info("starting Ray (%s) for %d tuning workers", address or "local", workers)
            if address:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            else:  # the workers import what the driver can (its sys.path, not only PYTHONPATH)
                path = os.pathsep.join(os.path.abspath(p) for p in sys.path)  # "" is the working directory
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            self.started = True
        self.task = ray.remote(num_cpus=1)(_evaluate_one)
        try:
            self.evaluate_ref = ray.put(evaluate)
        except Exception as exc:
            self.close()
            raise MixprecError(f"TuningCriterion(workers={workers}): the evaluation function cannot be sent to Ray "
                               f"workers ({type(exc).__name__}: {exc}); eval_func must be picklable (a module-level "
                               "function, or a closure over picklable data)") from None

    def map(self, models: Sequence[Any]) -> list[float]:
        try:
            refs = [self.task.remote(self.evaluate_ref, model) for model in models]
        except Exception as exc:
            raise MixprecError(f"a converted model cannot be sent to Ray workers ({type(exc).__name__}: {exc}); "
                               "use workers=1 for this framework") from None
        try:
            return [float(score) for score in self.ray.get(refs)]  # ray.get keeps the order of refs
        except self.ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_pool(evaluate: Evaluate, workers: int) -> SerialPool | RayPool:
    """A SerialPool for ``workers`` <= 1, else a RayPool (RayUnavailable without Ray)."""
    return SerialPool(evaluate) if workers <= 1 else RayPool(evaluate, workers)


def _evaluate_one(evaluate: Evaluate, model: Any) -> float:
    return float(evaluate(model))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("TuningCriterion(workers>1) runs trials as Ray tasks, but Ray is not installed: "
                             "pip install mixprec[ray] (or set workers=1)") from None
    return ray
