"""The ``mixprec`` command line: convert | dump | passes | report.

Every MixprecError becomes one line on stderr and exit status 2; nothing is written
over the input model, and outputs appear atomically."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from mixprec.errors import ConfigError, MixprecError

logger = logging.getLogger(__name__)

EXIT_ERROR = 2
EXIT_INTERNAL = 3


def _progress_bar(stream=sys.stderr):
    """A one-line progress bar on a terminal; silent when stderr is not a TTY."""
    if not stream.isatty():
        return None

    def show(index: int, total: int, name: str) -> None:
        width = 24
        done = int(width * index / total)
        stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {index}/{total} {name:<24}")
        if index == total:
            stream.write("\n")
        stream.flush()
    return show


def _add_conversion_options(p: argparse.ArgumentParser) -> None:
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


def _config(args: argparse.Namespace, **extra):
    from mixprec.config import MixedPrecisionConfig
    fp32 = {"activation": {"dtype": ["fp32"]}}
    low = {"activation": {"dtype": [args.precision]}}
    op_types = {**{t: low for t in args.lp_op_type}, **{t: fp32 for t in args.fp32_op_type}}
    op_names = {**{n: low for n in args.lp_node}, **{n: fp32 for n in args.fp32_node}}
    return MixedPrecisionConfig(precisions=args.precision, target=args.target, op_type_dict=op_types,
                                op_name_dict=op_names, pipeline=args.pipeline, policy=args.policy,
                                keep_io_types=not args.no_keep_io_types, dump_dir=args.dump_dir, **extra)


def cmd_convert(args: argparse.Namespace) -> int:
    from mixprec.mix_precision import fit
    from mixprec.fileio import same_file
    if same_file(args.input, args.output):
        raise ConfigError(f"the output path {args.output} is the input model; choose another output path")
    config = _config(args, check_outputs=not args.no_check)
    converted = fit(args.input, config=config, progress=_progress_bar())
    converted.save(args.output)
    if args.report:
        converted.report.save(args.report)
    print(converted.report.summary_table())
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


def _load_and_run(args: argparse.Namespace, stop_after: str | None):
    from mixprec.adapters import adapter_for
    from mixprec.mix_precision import run_pipeline
    config = _config(args)
    adapter = adapter_for(args.input)
    ir_model = adapter.load(args.input, config)
    report = run_pipeline(adapter, ir_model, config, stop_after=stop_after, progress=_progress_bar()) \
        if stop_after != "" else None
    return ir_model, report


def cmd_dump(args: argparse.Namespace) -> int:
    from mixprec.ir import dump
    from mixprec.ir.formats import to_dot, to_json
    ir_model, _ = _load_and_run(args, args.after if args.after else "")
    graph = ir_model.graph
    text = {"text": dump, "json": to_json, "dot": to_dot}[args.format](graph)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.input.endswith(".ir"):
        from mixprec.ir import parse
        from mixprec.report import Report
        try:
            text = open(args.input).read()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.input}: {exc.strerror}") from None
        report = Report.from_graph(parse(text), args.precision)
    else:
        _, report = _load_and_run(args, None)
    sys.stdout.write((report.to_json() if args.json else report.to_text()) + "\n")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from mixprec.passes import DEFAULT_PIPELINE, list_passes
    passes = list_passes()
    width = max(map(len, passes))
    for name, description in passes.items():
        print(f"{name:<{width}}  {description}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixprec", description="Convert FP32 models to BF16/FP16 mixed precision.")
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage (load, passes, check, save)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert a model and write it out")
    p.add_argument("input", help="model file: .onnx, .pt2, .pb, .keras, a SavedModel directory, or an MXNet "
                                 "-symbol.json/.params file")
    p.add_argument("-o", "--output", required=True, help="where to write the converted model")
    p.add_argument("--report", metavar="FILE", help="write the report (.json, or text otherwise)")
    p.add_argument("--no-check", action="store_true", help="skip comparing outputs with the FP32 model")
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
    p = sub.add_parser("report", help="explain, node by node, what converting a model does")
    p.add_argument("input", help="model file, or an .ir file written by `mixprec dump`/--dump-dir")
    p.add_argument("--json", action="store_true")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
                        format="mixprec: %(levelname)s: %(message)s")
    if not args.debug:  # TensorFlow's C++ info lines would bury the summary
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except MixprecError as exc:
        print(f"mixprec: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mixprec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in mixprec: say so, in one line unless --debug
        if args.debug:
            raise
        print(f"mixprec: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback "
              "and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
