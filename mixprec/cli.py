"""The ``mixprec`` command line: convert | dump | passes | report | opt | env | profile | cache.

Exit status: 0 done; 2 a bad input model or option (a MixprecError: one line on stderr);
3 an internal error (a bug in mixprec); 4 the converted model failed the output check
(nothing written unless ``--keep-failed``); 130 interrupted. Every output path is checked
before any work starts; nothing is written over a file the input reads, and outputs
appear atomically. stderr carries only mixprec's own lines."""
from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
import time
from typing import Sequence

from mixprec.errors import AccuracyCheckError, ConfigError, MixprecError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERNAL = 3
EXIT_FAILED_CHECK = 4
EXIT_INTERRUPTED = 130

SECURITY_NOTE = ("security: loading a model can run code it carries. A TensorFlow SavedModel runs its resource "
                 "initializers (TensorFlow ops) and a .keras file may name Python classes when loaded; a .pt2 "
                 "with pickled weights, constants or sample inputs is refused unless --trust-pickle. Convert "
                 "untrusted models only in a sandbox.")


def _add_conversion_options(p: argparse.ArgumentParser, objective: bool = True) -> None:
    p.add_argument("--precision", choices=["bf16", "fp16"], default="bf16", help="low precision to convert to")
    p.add_argument("--target", choices=["spec", "onnxruntime"], default="spec",
                   help="ONNX: everything the spec allows, or only what onnxruntime can run")
    p.add_argument("--fp32-op-type", action="append", default=[], metavar="T", help="keep op type T in FP32")
    p.add_argument("--fp32-node", action="append", default=[], metavar="NAME",
                   help="keep node (or module path / glob) NAME in FP32")
    p.add_argument("--lp-op-type", action="append", default=[], metavar="T", help="force op type T to low precision")
    p.add_argument("--lp-node", action="append", default=[], metavar="NAME", help="force node NAME to low precision")
    p.add_argument("--pipeline", metavar="SPEC", help="pass pipeline, e.g. 'infer-dtypes,assign-precision,...'")
    p.add_argument("--policy", metavar="FILE.toml", help="precision policy file replacing the built-in one")
    p.add_argument("--no-keep-io-types", action="store_true", help="let graph inputs/outputs become bf16/fp16")
    p.add_argument("--dump-dir", metavar="DIR", help="write the IR after every pass that changed it")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="shape of an input for the output check (and for models that need one to load), e.g. "
                        "image=1,3,224,224; repeatable; bare DIMS for a model with one input")
    p.add_argument("--sample-inputs", metavar="FILE.npz",
                   help="inputs for the output check: an .npz of arrays named like the model's inputs")
    p.add_argument("--inputs", metavar="A,B", help="graph (.pb) tensor names to treat as the inputs")
    p.add_argument("--outputs", metavar="A,B", help="graph (.pb) tensor names to treat as the outputs")
    p.add_argument("--check-runtime", choices=["auto", "reference"], default="auto",
                   help="ONNX output check: onnxruntime with exact low-precision emulation (auto) or "
                        "onnx.reference.ReferenceEvaluator (slow)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling model data that can run code (.pt2 with pickled parts); "
                        "only for models from a trusted source")
    if objective:  # `mixprec profile` always times (objective performance, no profile file)
        p.add_argument("--objective", choices=["memory", "performance", "accuracy"], default=None,
                       help="memory (default): the most low precision the policy allows; performance: low precision "
                            "only where measured faster on this machine (or the --profile machine); accuracy: only "
                            "allow ops, each kept only if the error budget clears it")
        p.add_argument("--no-cache", action="store_true",
                       help="objective performance: neither read nor write the measurement and conversion cache "
                            "($MIXPREC_CACHE_DIR, default ~/.cache/mixprec)")
        p.add_argument("--profile", metavar="MACHINE.json",
                       help="timings written by `mixprec profile` on the deployment machine, used instead of timing "
                            "here (implies --objective performance)")
    bars = p.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                      help="draw progress bars on stderr even when it is not a terminal")
    bars.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                      help="no progress bars (default: bars when stderr is a terminal)")


def _config(args: argparse.Namespace, **extra):
    from mixprec.config import MixedPrecisionConfig
    fp32 = {"activation": {"dtype": ["fp32"]}}
    low = {"activation": {"dtype": [args.precision]}}
    op_types = {**{t: low for t in args.lp_op_type}, **{t: fp32 for t in args.fp32_op_type}}
    op_names = {**{n: low for n in args.lp_node}, **{n: fp32 for n in args.fp32_node}}
    return MixedPrecisionConfig(precisions=args.precision, target=args.target, op_type_dict=op_types,
                                op_name_dict=op_names, pipeline=args.pipeline, policy=args.policy,
                                keep_io_types=not args.no_keep_io_types, dump_dir=args.dump_dir,
                                input_shapes=parse_input_shapes(args.input_shape), sample_inputs=args.sample_inputs,
                                inputs=_names(args.inputs, "--inputs"), outputs=_names(args.outputs, "--outputs"),
                                check_runtime=args.check_runtime, trust_pickle=args.trust_pickle,
                                objective=args.objective or ("performance" if args.profile else "memory"),
                                profile=args.profile, cache=not getattr(args, "no_cache", False), **extra)


def parse_input_shapes(items: Sequence[str]) -> dict[str, list[int]] | list[int] | None:
    """``--input-shape`` values: ``NAME=d1,d2,...`` (repeatable) -> {name: dims}, or one
    bare ``d1,d2,...`` -> dims (the model's only input). ConfigError on anything else."""
    if not items:
        return None
    shapes: dict[str, list[int]] = {}
    bare: list[int] | None = None
    for item in items:
        name, sep, dims = item.rpartition("=")
        parsed = _dims(dims, item)
        if not sep:
            if bare is not None or len(items) > 1:
                raise ConfigError(f"--input-shape {item}: with more than one --input-shape, write NAME=DIMS each")
            bare = parsed
        elif not name.strip():
            raise ConfigError(f"--input-shape {item}: the input name before '=' is empty")
        elif name.strip() in shapes:
            raise ConfigError(f"--input-shape names {name.strip()!r} twice")
        else:
            shapes[name.strip()] = parsed
    return bare if bare is not None else shapes


def _dims(text: str, item: str) -> list[int]:
    """``d1,d2,...`` (or ``d1xd2``) -> dims; nothing after ``NAME=`` is a scalar input."""
    if not text.strip() and "=" in item:
        return []
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",")]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"--input-shape {item}: give whole numbers >= 1 separated by commas, e.g. "
                          "image=1,3,224,224 (NAME= alone for a scalar input)")
    return dims


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigError(f"{option} {text!r}: give tensor names separated by commas, e.g. input:0,mask:0")
    return names


def cmd_convert(args: argparse.Namespace) -> int:
    from mixprec.mix_precision import check_paths, fit
    check_paths(args.input, output=args.output, report=args.report, dump_dir=args.dump_dir)
    config = _config(args, check_outputs=not args.no_check, min_cosine=args.min_cosine,
                     max_flip_rate=args.max_flip_rate, error_budget=not args.no_error_budget,
                     external_data=args.external_data)
    try:
        converted = fit(args.input, config=config)
    except AccuracyCheckError as exc:
        if not args.keep_failed or exc.converted is None:
            print(f"mixprec: failed check: {exc}; nothing written (--keep-failed writes it anyway)", file=sys.stderr)
            return EXIT_FAILED_CHECK
        print(f"mixprec: warning: failed check: {exc}; writing it anyway (--keep-failed)", file=sys.stderr)
        converted = exc.converted
    _write(converted, args)
    return EXIT_OK


def _write(converted, args: argparse.Namespace) -> None:
    converted.save(args.output)
    if args.report:
        converted.report.save(args.report)
    print(converted.report.summary_table())
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))


def _load_and_run(args: argparse.Namespace, stop_after: str | None):
    from mixprec.runtimes import adapter_for
    from mixprec.config import pickle_trust
    from mixprec.fileio import check_dump_dir
    from mixprec.mix_precision import run_pipeline
    config = _config(args)
    if config.dump_dir is not None:
        check_dump_dir(config.dump_dir)
    adapter = adapter_for(args.input)
    with pickle_trust(config.trust_pickle):
        ir_model = adapter.load(args.input, config)
    report = run_pipeline(adapter, ir_model, config, stop_after=stop_after) if stop_after != "" else None
    return ir_model, report


def cmd_dump(args: argparse.Namespace) -> int:
    from mixprec.ir import dump
    from mixprec.ir.formats import to_dot, to_json
    ir_model, _ = _load_and_run(args, args.after if args.after else "")
    graph = ir_model.graph
    text = {"text": dump, "json": to_json, "dot": to_dot}[args.format](graph)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _read_ir(path: str):
    from mixprec.ir import parse
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse(text)


def cmd_opt(args: argparse.Namespace) -> int:
    """The IR text after a pipeline: bugs reported and tested as text in, text out."""
    from mixprec.ir import dump
    from mixprec.passes import DEFAULT_PIPELINE, build_pipeline
    graph = _read_ir(args.input)
    build_pipeline(args.pipeline or DEFAULT_PIPELINE, precision=args.precision).run(graph)
    sys.stdout.write(dump(graph))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.errors:
        return _report_errors(args)
    if args.input.endswith(".ir"):
        from mixprec.report import Report
        report = Report.from_graph(_read_ir(args.input), args.precision)
    else:
        _, report = _load_and_run(args, None)
    sys.stdout.write((report.to_json() if args.json else report.to_text()) + "\n")
    return 0


def _report_errors(args: argparse.Namespace) -> int:
    """The twenty converted nodes that add the most error on sample inputs."""
    import json
    from mixprec.mix_precision import error_attribution
    if args.input.endswith(".ir"):
        raise ConfigError("--errors runs the model: give the model file, not an .ir file")
    errors = error_attribution(args.input, _config(args))[:20]
    if args.json:
        sys.stdout.write(json.dumps([e.__dict__ for e in errors], indent=2) + "\n")
        return 0
    width = max((len(e.name) for e in errors), default=4)
    print(f"{'node':<{width}}  {'op':<20} {'rel error':>10} {'added':>10}")
    for e in errors:
        print(f"{e.name:<{width}}  {e.op:<20} {e.rel_error:>10.3g} {e.local:>10.3g}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from mixprec.passes import DEFAULT_PIPELINE, list_passes
    passes = list_passes()
    width = max(map(len, passes))
    for name, description in passes.items():
        print(f"{name:<{width}}  {description}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """This machine's CPU, its precision flags and the frameworks' runtimes."""
    import json
    from mixprec.machine import env_report
    data = env_report(probe=not args.no_probe)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    cpu = data["cpu"]
    print(f"cpu: {cpu['model']} ({cpu['machine']}, {cpu['cores']} cores)")
    print("flags: " + " ".join(f"{flag}={'yes' if has else 'no'}" for flag, has in cpu["flags"].items()))
    print(f"bf16: {data['bf16']}\nfp16: {data['fp16']}\noneDNN ISA: {data['onednn_isa']}")
    for runtime in data["runtimes"]:
        notes = f" ({'; '.join(runtime['notes'])})" if runtime["notes"] else ""
        isa = f", oneDNN {runtime['isa']}" if runtime["isa"] else ""
        print(f"{runtime['framework']} {runtime['version']}: bf16 {runtime['bf16']}; fp16 {runtime['fp16']}{isa}{notes}")
    missing = [fw for fw, version in data["frameworks"].items() if version is None]
    if missing:
        print("not installed: " + ", ".join(missing))
    print(f"summary: {data['summary']}")
    print(f"fingerprint: {data['fingerprint']}")
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    """What the cache directory holds (cached conversions, measurements); ``--clear``
    removes the conversions, ``--clear-all`` the measurements too."""
    import shutil
    from mixprec import conversion_cache
    from mixprec.profiling.cache import cache_root
    root = cache_root()
    listed = conversion_cache.entries()
    timings = sorted((root / "timings").rglob("*.json")) if (root / "timings").is_dir() else []
    if args.clear or args.clear_all:
        for directory, _, _ in listed:
            shutil.rmtree(directory, ignore_errors=True)
        if args.clear_all and (root / "timings").is_dir():
            shutil.rmtree(root / "timings", ignore_errors=True)
        print(f"removed {len(listed)} cached conversion(s)" + (f" and {len(timings)} measurement(s)"
                                                               if args.clear_all else "") + f" from {root}")
        return EXIT_OK
    total = sum(size for _, size, _ in listed)
    print(f"cache directory: {root} ($MIXPREC_CACHE_DIR)")
    print(f"conversions: {len(listed)}, {total / 2**20:.1f} MiB (at most {conversion_cache.max_bytes() / 2**20:.0f} "
          "MiB: $MIXPREC_CACHE_MAX_BYTES; least recently used removed first)")
    for directory, size, used in reversed(listed):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(used))
        print(f"  {directory.name}  {size / 2**20:8.1f} MiB  last used {when}  {conversion_cache.describe_entry(directory)}")
    print(f"measurements: {len(timings)}")
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    """Measure every region of MODEL on this machine and write them portable."""
    from mixprec.mix_precision import check_paths
    from mixprec.profiling import profile_model
    check_paths(args.input, report=args.output)  # a file the input reads is never overwritten
    args.objective, args.profile = "performance", None
    config = _config(args, check_outputs=False)
    result, profile = profile_model(args.input, config, args.output)
    for line in result.report.profile_lines():
        print(line)
    print(f"wrote {args.output}: {len(profile.entries)} measurements on {profile.machine.get('cpu')} "
          f"({profile.framework} {profile.version}); convert with `mixprec convert MODEL -o OUT --profile "
          f"{args.output}`")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixprec", description="Convert FP32 models to BF16/FP16 mixed precision.")
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage (load, passes, check, save)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and only errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert a model and write it out", epilog=SECURITY_NOTE + " Exit status: "
                       "0 done, 2 bad input or option, 3 internal error, 4 failed output check, 130 interrupted.")
    p.add_argument("input", help="model file: .onnx, .pt2, .pb, .keras, a SavedModel directory, or an MXNet "
                                 "-symbol.json/.params file")
    p.add_argument("-o", "--output", required=True, help="where to write the converted model (missing directories "
                                                         "are made; never a file the input reads)")
    p.add_argument("--report", metavar="FILE", help="write the report (.json, or text otherwise)")
    p.add_argument("--no-check", action="store_true", help="skip comparing outputs with the FP32 model")
    p.add_argument("--external-data", action="store_true",
                   help="ONNX: write the tensors to OUT.data beside the model (automatic above 2 GB)")
    p.add_argument("--min-cosine", type=float, default=0.999, metavar="X",
                   help="every output's cosine to the FP32 output must be at least X (default 0.999): when the "
                        "conversion misses it, the nodes most to blame fall back to FP32 until it holds")
    p.add_argument("--max-flip-rate", type=float, metavar="F",
                   help="also at most this fraction of task decisions flipped (top-1 of logits, the 0.5 threshold "
                        "of probability maps)")
    p.add_argument("--no-error-budget", action="store_true",
                   help="do not fall back nodes when --min-cosine is missed: fail the check instead (exit 4)")
    p.add_argument("--keep-failed", action="store_true",
                   help="write the converted model even when its outputs miss --min-cosine (exit 0, with a warning)")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("dump", help="print a model's IR, optionally after a pass of the pipeline")
    p.add_argument("input")
    p.add_argument("--after", metavar="PASS", help="run the pipeline up to and including PASS first")
    p.add_argument("--format", choices=["text", "json", "dot"], default="text")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_dump)
    p = sub.add_parser("passes", help="list the registered passes")
    p.set_defaults(func=cmd_passes)
    p = sub.add_parser("opt", help="print the IR text of an .ir file after a pipeline (text in, text out)")
    p.add_argument("input", help="an .ir file (`mixprec dump`, --dump-dir, or written by hand)")
    p.add_argument("--pipeline", metavar="SPEC", help="pass pipeline (default: the default pipeline)")
    p.add_argument("--precision", choices=["bf16", "fp16"], default="bf16")
    p.set_defaults(func=cmd_opt)
    p = sub.add_parser("report", help="explain, node by node, what converting a model does")
    p.add_argument("input", help="model file, or an .ir file written by `mixprec dump`/--dump-dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--errors", action="store_true",
                   help="run the FP32 and converted models side by side on sample inputs and list the 20 "
                        "converted nodes that add the most error (relative error, and the error each adds)")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("env", help="this machine's CPU flags, cores and the frameworks' BF16/FP16 runtime support")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-probe", action="store_true", help="read versions only; import no framework")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("cache", help="list the cached conversions and measurements (objective performance), or "
                                     "clear them")
    p.add_argument("--clear", action="store_true", help="remove every cached conversion")
    p.add_argument("--clear-all", action="store_true", help="remove the cached conversions and measurements")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("profile", help="time a model's candidate regions on this (deployment) machine and write "
                                       "them for `convert --profile`")
    p.add_argument("input", help="model file (as for convert)")
    p.add_argument("-o", "--output", required=True, metavar="MACHINE.json", help="where to write the profile")
    _add_conversion_options(p, objective=False)
    p.set_defaults(func=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The IR of a large model is millions of small objects that live for the whole command:
    # with the default threshold (700) the collector re-walks them every few thousand
    # allocations (39.0 -> 34.5 s on a 100k-node ONNX graph, same peak memory; bench/README.md).
    # Full collections keep their default cadence, so discarded trial clones are still freed.
    gc.set_threshold(100_000, 10, 10)
    # ... and at exit the interpreter would collect them once more, 1.7M objects and 3 s after a
    # 100k-node conversion, only to free memory the process is about to give back; when the
    # process exits (atexit: not when main is called from Python, as the tests do) it does not
    atexit.register(gc.freeze)  # frozen objects are left out of the collection at exit
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    from mixprec import progress
    progress.configure(False if args.quiet else getattr(args, "progress", None))
    try:
        return args.func(args)
    except MixprecError as exc:
        print(f"mixprec: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mixprec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug in mixprec: say so, in one line unless --debug
        if args.debug:
            raise
        print(f"mixprec: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} (run with --debug "
              "for the traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        progress.configure(False)  # bars are the command's; library calls after it draw none


def _configure_logging(args: argparse.Namespace) -> None:
    """mixprec's records as ``mixprec: LEVEL: message``; frameworks' loggers only from
    WARNING on, and a malformed record from any of them is dropped instead of printing
    ``--- Logging error ---`` with a traceback (logging.raiseExceptions off)."""
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else \
        logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="mixprec: %(levelname)s: %(message)s")
    logging.raiseExceptions = bool(args.debug)
    if not args.debug:
        for name in ("torch", "tensorflow", "absl", "onnx", "onnxruntime", "mxnet", "h5py", "jax"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines would bury the summary


if __name__ == "__main__":
    sys.exit(main())
