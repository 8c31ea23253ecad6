"""``fit``: the Intel Neural Compressor-style entry point.

    from mixprec import mix_precision
    from mixprec.config import MixedPrecisionConfig
    converted = mix_precision.fit("model.onnx", config=MixedPrecisionConfig())   # or conf= (INC 3.x)
    converted.save("model_bf16.onnx")

Invariants: the user's model is never modified; the returned model passed its framework's
validation and, unless ``check_outputs=False``, its outputs were compared with the FP32
model's on sample inputs (the report has the numbers); ``fit`` never returns None and
never exits the process: every failure is a MixprecError saying what to do. Nothing is
unpickled in a way that can run code unless ``config.trust_pickle``; ``save`` and
:func:`check_paths` refuse an output that is, holds or lies inside a file the input
reads, or that is not a regular file (or a directory mixprec wrote). A conversion served by the
conversion cache (objective "performance", mixprec.conversion_cache) is the one that passed
these checks when it was stored, for the same model bytes (or fingerprint and FP32 outputs),
options, mixprec code, frameworks and machine."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mixprec import progress as bars
from mixprec.runtimes import Adapter, adapter_for, framework_of, get_adapter
from mixprec.runtimes.base import per_fit_memo, per_fit_scope
from mixprec.config import AccuracyCriterion, MixedPrecisionConfig, pickle_trust
from mixprec.errors import (AccuracyCheckError, ConfigError, ConversionError, MixprecError, ModelRunError,
                            OutputCheckUnavailable, SampleInputError, UnsupportedModelError)
from mixprec.fileio import check_disjoint, check_dump_dir, check_output_dir, check_output_file, first_line
from mixprec.ir.dtypes import DType
from mixprec.ir.graph import Graph, Model
from mixprec.memory import check_skip_reason
from mixprec.numerics import compare_outputs
from mixprec import conversion_cache, machine, profiling
from mixprec.passes import DEFAULT_PIPELINE, build_pipeline
from mixprec.passes.pipeline import split_items
from mixprec.report import Report
from mixprec.sample_inputs import check_sample_inputs, held_out, image_kind, noise_images
from mixprec.tuning import Candidate, Trial, attribution, budget, fallback_search

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


class ConvertedModel:
    """What ``fit`` returns: ``.model`` (native converted model), ``.ir`` (the converted
    ir.Model), ``.report`` (decisions, statistics, output checks) and ``.save(path)``."""

    def __init__(self, model: Any, ir: Model, report: Report, adapter: Adapter, config: MixedPrecisionConfig,
                 input_path: str | None) -> None:
        self.model = model
        self.ir = ir
        self.report = report
        self._adapter = adapter
        self._config = config
        self._input_path = input_path

    @property
    def framework(self) -> str:
        return self._adapter.name

    def save(self, path: str | os.PathLike) -> str:
        """Write the converted model atomically (parent directories made). Refuses
        (OutputPathError) a path that is, holds or lies inside a file the input model
        reads, or that is not a regular file (or a directory mixprec wrote). A conversion served by the
conversion cache (objective "performance", mixprec.conversion_cache) is the one that passed
these checks when it was stored, for the same model bytes (or fingerprint and FP32 outputs),
options, mixprec code, frameworks and machine."""
        path = os.fspath(path)
        check_paths(self._input_path, output=path, framework=self.framework)
        with bars.stage("write"):
            self._adapter.save(self.model, path, self.ir, self._config, self._input_path)
        logger.info("saved the converted model to %s", path)
        return path

    def __repr__(self) -> str:
        return f"ConvertedModel({self.framework}, {self.report.precision}, {len(self.report.nodes)} nodes)"


def fit(model: Any, config: MixedPrecisionConfig | None = None, eval_func: Callable[[Any], float] | None = None,
        eval_dataloader: Any = None, eval_metric: Any = None, progress: Progress | None = None, *,
        conf: MixedPrecisionConfig | None = None) -> ConvertedModel:
    """Convert ``model`` (a model object or a model file path) to mixed precision as
    ``config`` (or ``conf``, INC 3.x's name for it) says; see the module docstring.

    With ``eval_func(model) -> float`` (or ``eval_dataloader`` yielding ``(inputs, labels)``
    plus ``eval_metric`` with ``update(preds, labels)``/``result()``), the FP32 model is
    scored first and ops fall back to FP32 until ``config.accuracy_criterion`` holds
    (mixprec.tuning); the trials are in ``report.tuning``.

    Raises AccuracyCheckError (carrying the converted model and its report) when an
    output misses ``config.min_cosine``."""
    if conf is not None and config is not None and conf is not config:
        raise ConfigError("give the configuration once: config= or conf=, not both")
    config = config if config is not None else conf if conf is not None else MixedPrecisionConfig()
    if not isinstance(config, MixedPrecisionConfig):
        raise ConfigError(f"config must be a MixedPrecisionConfig, not {type(config).__name__}")
    if config.dump_dir is not None:
        check_dump_dir(config.dump_dir)
    with pickle_trust(config.trust_pickle), profiling.scope(), per_fit_scope():
        return _fit(model, config, eval_func, eval_dataloader, eval_metric, progress)


def _fit(model: Any, config: MixedPrecisionConfig, eval_func: Callable[[Any], float] | None, eval_dataloader: Any,
         eval_metric: Any, progress: Progress | None) -> ConvertedModel:
    adapter = adapter_for(model)
    config = _resolve_bare_shape(adapter, model, config)
    adapter.bind(config)
    evaluate = _evaluator(adapter, config, eval_func, eval_dataloader, eval_metric)
    input_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    slot = conversion_cache.slot(adapter, model, config, cacheable=evaluate is None and not profiling.exhaustive())
    if slot is not None:
        if logger.isEnabledFor(logging.INFO):  # profiling.begin logs it when the model is converted (25 ms)
            logger.info("machine: %s", machine.summary_line())
        with bars.stage("conversion cache"):
            reused = conversion_cache.reuse(slot, adapter, model, config)
        if reused is not None:
            return ConvertedModel(reused.native, reused.ir, reused.report, adapter, config, input_path)
    logger.info("loading the %s model", adapter.name)
    with bars.stage("load"):
        loaded = adapter.load(model, config)
    profiling.begin(adapter, model, loaded, config)  # objective="performance": the timer, cache or profile file
    if evaluate is None:
        if config.check_outputs:
            adapter.prefetch_original(model, loaded, config)
        # the FP32 IR is read again by the performance session and by the error budget; where
        # loading is cheap (ONNX) the budget loads it again when the check fails, which is
        # rare, instead of a clone at every conversion (10% of a large one)
        keep_fp32 = config.objective == "performance" or (
            config.check_outputs and bool(config.error_budget) and not adapter.reloads_cheaply)
        converted, ir_model, report = _convert(adapter, loaded.clone() if keep_fp32 else loaded, config, [], [],
                                               progress)
        fp32: Model | None = loaded if keep_fp32 else None
        # sized before the validation's child forks: walking the IR after it copies its pages
        too_big = check_skip_reason(ir_model) if config.check_outputs else None
        validated = adapter.start_validation(converted, config)  # it may run beside the check
    else:
        converted, ir_model, report = _tune(adapter, model, loaded, config, evaluate, progress)
        fp32, validated = loaded, lambda: None
        too_big = check_skip_reason(ir_model) if config.check_outputs else None
    try:
        check = _check_outputs(adapter, model, converted, ir_model, config, report, too_big) \
            if config.check_outputs else None
    except Exception:
        validated()  # a model that fails its validation: that is the error to report
        raise
    validated()
    if config.check_outputs:
        if report.failed_check and evaluate is not None:
            _criterion_decides(report)
        elif report.failed_check and config.error_budget:
            if fp32 is None:
                logger.info("loading the %s model again for the error budget", adapter.name)
                with bars.stage("load"):
                    fp32 = adapter.load(model, config)
            converted, ir_model, report = _meet_error_budget(adapter, model, fp32, config, report, progress)
    result = ConvertedModel(converted, ir_model, report, adapter, config, input_path)
    # measured and predicted latency against FP32; the FP32 model as given when the converted one is slower
    result = profiling.finish(adapter, model, result, config)
    report = result.report
    if report.failed_check:
        raise AccuracyCheckError(report.failed_check, converted=result, report=report)
    if slot is not None:
        conversion_cache.store(slot, adapter, result, config, check)
    return result


def _convert(adapter: Adapter, ir_model: Model, config: MixedPrecisionConfig, fallback_ops: list[str],
             fallback_nodes: list[str], progress: Progress | None) -> tuple[Any, Model, Report]:
    """Run the pipeline on ``ir_model`` in place and emit it, without the framework's
    separate validation (``adapter.validate``: a tuning trial is only run; the model fit
    returns is validated by its caller)."""
    if logger.isEnabledFor(logging.INFO):  # counting walks every node
        logger.info("running the pipeline on %d nodes", sum(1 for _ in ir_model.graph.all_nodes()))
    verified: list[Callable[[], None]] = []  # the last verification runs beside the emitter
    report = run_pipeline(adapter, ir_model, config, progress=progress, fallback_ops=fallback_ops,
                          fallback_nodes=fallback_nodes, deferred=verified)
    logger.info("emitting the converted model")
    try:
        with bars.stage("emit"):
            native = adapter.emit_unvalidated(ir_model, config)
    except Exception:
        verified[0]()  # a broken IR the emitter tripped on: the pass that broke it is the error
        raise
    verified[0]()
    report.notes.extend(ir_model.meta.pop("notes", []))  # what emitting changed (opset raised, nodes kept f32)
    return native, ir_model, report


Evaluate = Callable[[Any, bool], float]


def _criterion_decides(report: Report) -> None:
    """With an evaluation function, the accuracy criterion the tuning met on the user's
    own data decides (INC's contract): an output under ``min_cosine`` on generated sample
    inputs is reported (a warning and a note), not a failed check."""
    message = f"{report.failed_check}; the accuracy criterion holds on eval_func, so the tuned model is returned"
    logger.warning("output check: %s", message)
    report.notes.append(f"output check: {message}")
    report.failed_check = None


def _evaluator(adapter: Adapter, config: MixedPrecisionConfig, eval_func: Callable[[Any], float] | None,
               dataloader: Any, metric: Any) -> Evaluate | None:
    """``evaluate(native_model, is_original) -> score``, or None when no evaluation was given."""
    if eval_func is not None:
        if dataloader is not None or metric is not None:
            raise ConfigError("give either eval_func or eval_dataloader with eval_metric, not both")
        if not callable(eval_func):
            raise ConfigError("eval_func must be a callable taking the model and returning a number")
        return lambda native, is_original: _score(eval_func(native))
    if dataloader is None and metric is None:
        return None
    if dataloader is None or metric is None or not all(hasattr(metric, m) for m in ("update", "result")):
        raise ConfigError("eval_dataloader needs an eval_metric with update(preds, labels) and result() "
                          "(and eval_metric needs an eval_dataloader yielding (inputs, labels))")

    def evaluate(native: Any, is_original: bool) -> float:
        if hasattr(metric, "reset"):
            metric.reset()
        for inputs, labels in dataloader:
            outputs = adapter.run_original(native, inputs) if is_original else \
                adapter.run_converted(native, inputs, config)
            metric.update(outputs[0], labels)
        return _score(metric.result())
    return evaluate


def _score(value: Any) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"the evaluation returned {value!r}; it must return one number") from None
    if score != score:
        raise ConfigError("the evaluation returned NaN")
    return score


def _tune(adapter: Adapter, model: Any, loaded: Model, config: MixedPrecisionConfig, evaluate: Evaluate,
          progress: Progress | None) -> tuple[Any, Model, Report]:
    """The fallback search; the model was loaded once (``loaded``) and every trial runs the
    pipeline on a clone of it. Error attribution on sample inputs ranks the culprits."""
    baseline = evaluate(adapter.native(model), True)
    convert = _trial_converter(adapter, loaded, config, progress)
    ranking = _ranking(adapter, model, loaded, config, convert([], []))

    result = fallback_search(convert, lambda native: evaluate(native, False), baseline, config.accuracy_criterion,
                             config.tuning_criterion, ranking=ranking,
                             on_trial=_trial_progress(progress, "tuning", config.tuning_criterion.max_trials),
                             workers=config.tuning_criterion.workers)
    ir_model, report = result.best.payload
    report.tuning = result.summary()
    report.tuning["ranked"] = ranking is not None
    adapter.validate(result.best.model, config)  # trials skip it; the model returned passes it
    return result.best.model, ir_model, report


def _meet_error_budget(adapter: Adapter, model: Any, loaded: Model, config: MixedPrecisionConfig, missed: Report,
                       progress: Progress | None) -> tuple[Any, Model, Report]:
    """The default conversion missed ``min_cosine`` (or ``max_flip_rate``) on the sample
    inputs: fall back the nodes most to blame (error attribution's ranking, then the
    group-testing search of mixprec.tuning, at most ``budget.trial_cap`` trials a round)
    until every output meets the budget with slack (``budget.search_cosine``) on the
    draws of sample inputs (the check's, and one of each ``budget.DRAW_KINDS`` of image),
    then check the result on a fresh held-out draw of each kind. A miss there
    joins the draws and the next round falls back more on top of what was found; after
    ``budget.ROUNDS`` rounds (or when no fallback meets the draws) every converted node
    goes FP32. So a budget that falling back can meet is met: fit raises
    AccuracyCheckError only when even that misses. The report keeps every trial and names
    the fallbacks. User-given sample inputs are the same in every draw."""
    logger.info("%s; falling back the nodes most to blame", missed.failed_check)
    draws = [reference_run(adapter, model, loaded, config)]
    for kind in budget.DRAW_KINDS:  # more draws, so that the search does not fit one
        _add_draw(adapter, model, loaded, config, draws, 2, kind)
    convert = _trial_converter(adapter, loaded, config, progress)
    default = convert([], [])
    converted = [name for name, _, _ in default.lowered]
    ranking = _ranking(adapter, model, loaded, config, default)
    fixed: list[str] = []
    trials: list[Trial] = []
    for index in range(budget.ROUNDS):
        result = _budget_round(adapter, convert, draws, fixed, ranking, config, len(converted), trials, progress)
        if result is None:
            break
        fixed = fixed + result.fallback_nodes
        native, (ir_model, report) = result.best.model, result.best.payload
        missed_kind = _held_out_miss(adapter, model, native, ir_model, config, report, 3 + index)
        if missed_kind is None:
            adapter.validate(native, config)  # trials skip it; the model returned passes it
            return native, ir_model, _budget_report(report, missed, config, fixed, trials, ranking, "")
        logger.info("error budget: %d fallback(s) miss held-out draw %d (%s images); falling back more", len(fixed),
                    3 + index, missed_kind)
        _add_draw(adapter, model, loaded, config, draws, 3 + index, missed_kind)
    last = convert([], converted)  # the last resort
    native, (ir_model, report) = last.model, last.payload
    adapter.validate(native, config)
    _held_out_miss(adapter, model, native, ir_model, config, report, 3 + budget.ROUNDS)
    return native, ir_model, _budget_report(report, missed, config, converted, trials, ranking,
                                            "; the search did not meet it on held-out inputs, so every "
                                            "converted node is FP32")


def _add_draw(adapter: Adapter, model: Any, loaded: Model, config: MixedPrecisionConfig,
              draws: list[tuple[Any, list[Any]]], variant: int, kind: str) -> None:
    """Append the sample inputs of held-out draw ``variant`` with ``kind`` images and their
    FP32 outputs (none when no candidate fits in that draw, or when its FP32 outputs are
    those of a draw already there: user-given inputs, or a model without image inputs)."""
    with held_out(variant), image_kind(kind):
        try:
            draw = reference_run(adapter, model, loaded, config)
        except SampleInputError:
            return
    if not any(budget.same_outputs(draw[1], reference) for _, reference in draws):
        draws.append(draw)


def _budget_round(adapter: Adapter, convert: Callable[[list[str], list[str]], Candidate],
                  draws: list[tuple[Any, list[Any]]], fixed: list[str], ranking: list[str] | None,
                  config: MixedPrecisionConfig, converted: int, trials: list[Trial],
                  progress: Progress | None = None) -> Any:
    """One search for more fallbacks on top of ``fixed`` that meet the slack target on every
    draw; its TuningResult (trials appended to ``trials``), or None when none does."""
    target = budget.search_cosine(config.min_cosine)

    def score(native: Any) -> float:
        return min(budget.margin(reference, adapter.run_converted(native, inputs, config), target,
                                 config.max_flip_rate) for inputs, reference in draws)

    def convert_more(ops: list[str], nodes: list[str]) -> Candidate:
        return convert(ops, list(dict.fromkeys(fixed + nodes)))

    cap = budget.trial_cap(converted, config.tuning_criterion.max_trials)
    limits = dataclasses.replace(config.tuning_criterion, max_trials=cap)
    within = AccuracyCriterion(higher_is_better=True, criterion="absolute", tolerable_loss=0.0)
    remaining = [name for name in ranking or () if name not in set(fixed)] or None
    try:
        result = fallback_search(convert_more, score, 0.0, within, limits, ranking=remaining,
                                 on_trial=_trial_progress(progress, "error budget", cap))
    except ConversionError as exc:
        logger.info("error budget: no fallback meets the draws (%s)", first_line(exc))
        return None
    offset = len(trials)
    trials.extend(dataclasses.replace(t, index=offset + t.index, fallback_nodes=fixed + t.fallback_nodes)
                  for t in result.trials)
    return result


def _held_out_miss(adapter: Adapter, model: Any, native: Any, ir_model: Model, config: MixedPrecisionConfig,
                   report: Report, variant: int) -> str | None:
    """The output check on held-out draw ``variant`` with each of ``budget.DRAW_KINDS`` of
    images in turn; the first kind it fails on, or None when it passes on all (``report``
    holds the last check: the failing one, or the last kind's)."""
    for kind in budget.DRAW_KINDS:
        report.failed_check = None
        with held_out(variant), image_kind(kind):
            _check_outputs(adapter, model, native, ir_model, config, report)
        if report.failed_check:
            return kind
    return None


def _budget_report(report: Report, missed: Report, config: MixedPrecisionConfig, fallbacks: list[str],
                   trials: list[Trial], ranking: list[str] | None, how: str) -> Report:
    """``report`` with the budget's trials and a note naming the fallbacks."""
    report.tuning = {"baseline": 0.0, "fallback_ops": [], "fallback_nodes": list(fallbacks),
                     "trials": [t.__dict__ for t in trials], "kind": "error budget", "ranked": ranking is not None,
                     "missed_before": missed.failed_check, "search_cosine": budget.search_cosine(config.min_cosine)}
    report.notes.append(f"error budget: {len(fallbacks)} node(s) kept in FP32 to meet min_cosine={config.min_cosine} "
                        f"({', '.join(fallbacks)}), found in {len(trials)} trials{how}; checked again on held-out "
                        "inputs")
    return report


def error_attribution(model: Any, config: MixedPrecisionConfig | None = None) -> list[attribution.NodeError]:
    """The default conversion's error, node by node, on sample inputs: every converted
    node's relative error against FP32 and the error it adds (largest first). Raises
    SampleInputError when no sample input fits, AttributionUnavailable when the framework
    cannot run the probes."""
    config = config if config is not None else MixedPrecisionConfig()
    adapter = adapter_for(model)
    with pickle_trust(config.trust_pickle):
        loaded = adapter.load(model, config)
        default = _trial_converter(adapter, loaded, config, None)([], [])
        inputs, _ = reference_run(adapter, model, loaded, config)
        errors = attribution.measure(adapter, loaded, default.payload[0], [n for n, _, _ in default.lowered],
                                     inputs, config)
    return sorted(errors, key=lambda e: -e.local)


def _trial_progress(progress: Progress | None, name: str, total: int) -> Callable[[Trial, int], None]:
    """The search's ``on_trial``: the caller's ``progress(index, total, text)`` callback, or
    else a progress bar (drawn only when bars are on) showing the trial, its score and how
    many nodes it keeps in FP32."""
    show = progress if progress is not None else bars.callback(name)

    def on_trial(trial: Trial, fp32_nodes: int) -> None:
        show(trial.index, total, f"trial {trial.index}: {trial.accuracy:.4g}, {fp32_nodes} fp32")
    return on_trial


def _trial_converter(adapter: Adapter, loaded: Model, config: MixedPrecisionConfig,
                     progress: Progress | None) -> Callable[[list[str], list[str]], Candidate]:
    """``convert(fallback_ops, fallback_nodes)`` on clones of ``loaded``; the default
    conversion is made once and reused."""
    memo: dict[tuple, Candidate] = {}

    def convert(ops: list[str], nodes: list[str]) -> Candidate:
        key = (tuple(ops), tuple(nodes))
        if key in memo:
            return memo[key]
        native, ir_model, report = _convert(adapter, loaded.clone(), config, ops, nodes, progress)
        lowered = [(n.name, n.op, n.meta.get("category", "")) for n in ir_model.graph.all_nodes()
                   if n.meta.get("precision") == config.precision and n.meta.get("category") != "cast"]
        candidate = Candidate(native, lowered, (ir_model, report))
        if not key[0] and not key[1]:
            memo[key] = candidate
        return candidate
    return convert


def _ranking(adapter: Adapter, model: Any, loaded: Model, config: MixedPrecisionConfig,
             default: Candidate) -> list[str] | None:
    """Converted nodes most likely to blame first, from the intermediate errors of the
    default conversion on sample inputs; None (graph order) when they cannot be measured."""
    lowered = [name for name, _, _ in default.lowered]
    try:
        inputs, _ = reference_run(adapter, model, loaded, config)
        errors = attribution.measure(adapter, loaded, default.payload[0], lowered, inputs, config)
    except (SampleInputError, attribution.AttributionUnavailable) as exc:
        logger.info("no error attribution (%s); tuning searches in graph order", first_line(exc))
        return None
    return attribution.rank(errors, loaded, lowered) or None


def run_pipeline(adapter: Adapter, ir_model: Model, config: MixedPrecisionConfig, stop_after: str | None = None,
                 progress: Progress | None = None, fallback_ops: Sequence[str] = (),
                 fallback_nodes: Sequence[str] = (), deferred: list[Callable[[], None]] | None = None) -> Report:
    """Run the configured pipeline (up to and including pass ``stop_after``) on
    ``ir_model`` in place and return the report of its decisions. With ``deferred`` (a
    list), verifications still running in the background are left to the function it
    appends, which the caller calls before it trusts the result (``PassManager.finish``)."""
    _refuse_converted(ir_model.graph, config.precision)
    limits = adapter.runtime_limits(ir_model, config)
    spec = config.pipeline or DEFAULT_PIPELINE
    if stop_after is not None:
        names = [item.split("{")[0].strip() for item in split_items(spec)]
        if stop_after not in names:
            raise ConfigError(f"--after {stop_after!r}: the pipeline has no such pass; its passes: {', '.join(names)}")
        spec = ",".join(split_items(spec)[: names.index(stop_after) + 1])
    spec, objective_options = profiling.extend_pipeline(spec, config)  # profile-precision for the objective
    manager = build_pipeline(spec, dump_dir=config.dump_dir, precision=config.precision, policy=config.policy,
                             keep=config.keep_io_types, runtime_fp32_ops=limits.ops,
                             runtime_fp32_nodes=limits.nodes, runtime=limits.runtime,
                             fallback_ops=list(fallback_ops), fallback_nodes=list(fallback_nodes),
                             **config.overrides(), **objective_options)
    manager.progress = progress
    manager.run(ir_model.graph, defer=deferred is not None)
    if deferred is not None:
        deferred.append(manager.finish)
    report = Report.from_graph(ir_model.graph, config.precision, config.target)
    profiling.annotate(report, config)
    report.passes = [asdict(record) for record in manager.history]
    if limits.ops:
        report.notes.append(f"{limits.runtime} lacks {config.precision} kernels for: {', '.join(limits.ops)}")
    return report


def _resolve_bare_shape(adapter: Adapter, model: Any, config: MixedPrecisionConfig) -> MixedPrecisionConfig:
    """``input_shapes`` given as bare dims (CLI ``--input-shape 1,3,224,224``) name the
    model's only input: a copy of ``config`` with ``{that input: dims}``; ConfigError
    naming the inputs when the model has more than one."""
    if not isinstance(config.input_shapes, list):
        return config
    probe = dataclasses.replace(config, input_shapes=None)
    names = input_names(adapter.load(model, probe))
    if len(names) != 1:
        raise ConfigError(f"--input-shape {','.join(map(str, config.input_shapes))} gives no input name, but the "
                          f"model has {len(names)} inputs ({', '.join(names) or 'none'}); write NAME=DIMS")
    return dataclasses.replace(config, input_shapes={names[0]: config.input_shapes})


def input_names(ir_model: Model) -> list[str]:
    """The names a user gives the model's inputs by (sample_inputs keys, input_shapes):
    the frontend's ``input_keys`` when it records them (TensorFlow signature keys), else
    the framework's own names of the graph inputs."""
    meta = ir_model.meta.get(ir_model.graph.framework, {}) if isinstance(ir_model.meta, dict) else {}
    keys = list(meta.get("input_keys") or [])
    if len(keys) == len(ir_model.graph.inputs):
        return keys
    renamed = meta.get("renamed", {})
    return [renamed.get(v.name, v.name) for v in ir_model.graph.inputs]


# ----------------------------------------------------------------- output paths ---
def model_files(model: Any, external: bool = True) -> list[Path]:
    """The files a model path makes its reader open (see ``Adapter.input_files``); empty
    for an in-memory model."""
    if not isinstance(model, (str, os.PathLike)):
        return []
    return adapter_for(model).input_files(Path(model), external)


def check_paths(model: Any, output: str | os.PathLike | None = None, report: str | os.PathLike | None = None,
                dump_dir: str | os.PathLike | None = None, framework: str | None = None) -> None:
    """Check every output path before any work: OutputPathError when ``output`` (or a
    companion file its framework writes), ``report`` or ``dump_dir`` cannot be written
    (device, FIFO, symlink, a directory mixprec did not write, a read-only or non-directory
    parent), or when one is, holds or lies inside a file ``model`` reads, or two of them
    collide. ``model`` is the input (a path; an object has no files)."""
    adapter = get_adapter(framework or framework_of(model))
    targets = adapter.output_targets(Path(output)) if output is not None else []
    # an input's data file can only collide with an output path that exists already
    existing = any(os.path.lexists(p) for p in [*(t for _, t in targets), report, dump_dir] if p is not None)
    inputs = [("the input model's file", p) for p in model_files(model, external=existing)]
    outputs: list[tuple[str, Path]] = []
    if output is not None:
        outputs = [("the output", path) for _, path in targets]
        check_disjoint(outputs, inputs)
        for kind, path in targets:
            if kind == "dir":
                check_output_dir(path, "the output", f"a {adapter.output_directory_kind} mixprec wrote")
            else:
                check_output_file(path, "the output")
    if report is not None:
        check_disjoint([("the report", Path(report))], inputs + outputs)
        check_output_file(report, "the report")
    if dump_dir is not None:
        others = inputs + outputs + ([("the report", Path(report))] if report is not None else [])
        check_disjoint([("the dump directory", Path(dump_dir))], others, refuse=("is", "lies inside"))
        check_dump_dir(dump_dir)


def _refuse_converted(graph: Graph, precision: str) -> None:
    """A model with no FP32 tensor left has nothing to convert: say so instead of
    returning it unchanged."""
    if any(v.dtype is DType.FLOAT32 for g in graph.all_graphs() for v in g.values()):
        return  # the usual answer, found at the first float32 value (a set of every dtype: 0.2 s at 100k nodes)
    low = {DType.BFLOAT16, DType.FLOAT16} & {v.dtype for g in graph.all_graphs() for v in g.values()}
    if low:
        names = ", ".join(sorted(d.value for d in low))
        raise UnsupportedModelError(f"the model is already in {names} (it has no float32 tensor); "
                                    f"convert the FP32 model instead")


def _check_outputs(adapter: Adapter, original: Any, converted: Any, ir_model: Model,
                   config: MixedPrecisionConfig, report: Report,
                   too_big: str | None | object = ...) -> tuple[Any, list[Any]] | None:
    """Compare the converted model's outputs with the FP32 model's; see ``fit``. Returns
    the sample inputs and the FP32 outputs on them, or None when the check was skipped.

    A safety net never turns a valid conversion into a failure: when no sample input fits
    (the FP32 model fails or gives non-finite outputs on every candidate), or no runtime
    can run the converted model, the check is skipped with a note. Only a converted model
    whose outputs miss ``min_cosine`` (or are not finite where the FP32 ones are) fails,
    with AccuracyCheckError raised by ``fit``. ``too_big``: ``check_skip_reason`` of
    ``ir_model`` when the caller asked it already."""
    if too_big is ...:
        too_big = check_skip_reason(ir_model)
    if too_big:
        _skip_check(report, too_big)
        return
    logger.info("comparing outputs with the FP32 model")
    started = time.perf_counter()
    try:
        with bars.stage("check: FP32 model"):
            inputs, reference = reference_run(adapter, original, ir_model, config)
    except SampleInputError as exc:
        _skip_check(report, f"output check skipped: {exc}")
        return
    adapter.last_check_note = None
    try:
        with bars.stage("check: converted model"):
            outputs = adapter.run_converted(converted, inputs, config)
    except OutputCheckUnavailable as exc:
        _skip_check(report, f"output check skipped: {exc}; the model passed its framework's validation only")
        return inputs, reference
    report.checks = compare_outputs(adapter.output_names(ir_model), reference, outputs)
    if adapter.last_check_note:
        report.notes.append(adapter.last_check_note)
    report.notes.append(f"output check took {time.perf_counter() - started:.2f} s")
    failing = [c for c in report.checks if c.cosine != c.cosine or c.cosine < config.min_cosine]
    if not failing:
        return inputs, reference
    check = min(failing, key=lambda c: -2.0 if c.cosine != c.cosine else c.cosine)  # the worst output
    what = ("is not finite or has the wrong shape" if check.cosine != check.cosine
            or (check.cosine == 0.0 and check.max_abs_error == float("inf"))
            else f"has cosine {check.cosine:.6f} to the FP32 output (max abs error "
                 f"{check.max_abs_error:.3g}), below min_cosine={config.min_cosine}")
    others = f" ({len(failing) - 1} other output(s) fail too)" if len(failing) > 1 else ""
    report.failed_check = (f"output {check.output} of the converted model {what}{others}; keep the sensitive ops "
                           "in FP32 (op_type_dict / --fp32-op-type) or lower min_cosine")
    logger.info(report.failed_check)  # fit raises it as AccuracyCheckError; the caller reports it
    return inputs, reference


def _skip_check(report: Report, message: str) -> None:
    logger.warning(message)
    report.notes.append(message)


def _candidates(adapter: Adapter, original: Any, ir_model: Model, config: MixedPrecisionConfig,
                failures: list[str]) -> Iterator[Any]:
    """adapter.candidate_inputs, where a failure to make or adapt the user's sample
    inputs ends the candidates (recorded in ``failures``) instead of escaping as an
    internal error; generated candidates' errors (SampleInputError) pass through."""
    iterator = iter(adapter.candidate_inputs(original, ir_model, config))
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except MixprecError:
            raise
        except Exception as exc:
            if config.sample_inputs is None:
                raise
            failures.append(f"{type(exc).__name__}: {first_line(exc)}")
            return


def reference_run(adapter: Adapter, original: Any, ir_model: Model,
                  config: MixedPrecisionConfig) -> tuple[Any, list[Any]]:
    """The first candidate sample input on which the FP32 model runs with finite
    outputs, and those outputs. SampleInputError (naming --input-shape/--sample-inputs)
    when there is none; the user's own sample_inputs are tried alone. Generated images
    are photo-like (``sample_inputs.photo_like_image``); when a float output is flat on them (a
    text detector finds nothing in such an image, and a cosine of near-zero maps
    measures nothing), the candidates are made again with noise images, whose outputs
    are used unless they are flat too."""
    found = _first_reference_run(adapter, original, ir_model, config)
    if config.sample_inputs is not None or not any(_flat(r) for r in found[1]):
        return found
    with noise_images():
        try:
            again = _first_reference_run(adapter, original, ir_model, config)
        except SampleInputError:
            return found
    if any(_flat(r) for r in again[1]):
        return found
    logger.info("the FP32 outputs are flat on photo-like sample images; the check uses noise images")
    return again


def _flat(output: Any) -> bool:
    """A float output of 2 or more values that all lie within 1e-4 (absolute, or of its
    largest magnitude): it carries no signal a cosine could compare (a text detector's
    probability map on a photo-like image without text reads 0 to 2e-6: sigmoids of noise)."""
    values = np.asarray(output)
    if values.dtype.kind not in "fc" or values.size < 2:
        return False
    values = values.astype(np.float64)
    return float(np.ptp(values)) <= 1e-4 * max(1.0, float(np.max(np.abs(values))))


def _float_shapes(inputs: Any) -> tuple | None:
    """The (shape, dtype) of every array in ``inputs`` (a mapping, sequence or array)
    when all are float arrays; None otherwise (integer inputs such as token ids can fail
    on their values, not their shapes)."""
    values = list(inputs.values()) if isinstance(inputs, dict) else \
        list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    arrays = [v for v in values if isinstance(v, np.ndarray)]
    if not arrays or len(arrays) != len(values) or any(a.dtype.kind != "f" for a in arrays):
        return None
    return tuple((a.shape, a.dtype.str) for a in arrays)


def _first_reference_run(adapter: Adapter, original: Any, ir_model: Model,
                         config: MixedPrecisionConfig) -> tuple[Any, list[Any]]:
    """``reference_run`` for the current kind of sample images."""
    failures: list[str] = []
    rejected = per_fit_memo("rejected sample shapes")  # tried once per fit: the budget and tuning run many
    for inputs in _candidates(adapter, original, ir_model, config, failures):
        shapes = _float_shapes(inputs) if rejected is not None and config.sample_inputs is None else None
        if shapes is not None and shapes in rejected:
            failures.append(rejected[shapes])
            continue
        try:
            reference = adapter.run_original(original, inputs)
        except ModelRunError as exc:  # the model loaded and rejects these inputs
            failures.append(first_line(exc))
            if shapes is not None:
                rejected[shapes] = failures[-1]
            continue
        except MixprecError as exc:
            failures.append(first_line(exc))
            continue
        except Exception as exc:  # the FP32 model itself rejects the inputs: a bad guess, not a bug
            failures.append(f"{type(exc).__name__}: {first_line(exc)}")
            if shapes is not None:
                rejected[shapes] = failures[-1]
            continue
        if all(np.all(np.isfinite(np.asarray(r, dtype=np.float64))) for r in reference
               if np.asarray(r).dtype.kind in "fc"):
            return inputs, reference
        failures.append("the FP32 outputs are not finite")
    given = config.sample_inputs is not None
    if given:  # the user's inputs failed: say what the model expects when they cannot fit
        check_sample_inputs(config.sample_inputs, [(name, value.shape) for name, value
                                                   in zip(input_names(ir_model), ir_model.graph.inputs)])
    what = "the given sample inputs" if given else f"{len(failures)} generated sample input(s)"
    raise SampleInputError(f"the FP32 model does not run on {what} ({failures[-1] if failures else 'none made'}); "
                           "if the inputs are the cause, give ones that fit with --sample-inputs FILE.npz or "
                           "--input-shape NAME=DIMS (config: sample_inputs= / input_shapes=)")
