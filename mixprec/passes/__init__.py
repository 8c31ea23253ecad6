"""Passes: the Pass contract, the registry, pipelines and the built-in precision passes."""
from mixprec.passes.base import Pass, PassResult, function_pass
from mixprec.passes.manager import PassManager
from mixprec.passes.pipeline import DEFAULT_PIPELINE, build_pipeline, parse_pipeline
from mixprec.passes.registry import get_pass, list_passes, register_pass

__all__ = ["Pass", "PassResult", "PassManager", "function_pass", "register_pass", "get_pass",
           "list_passes", "build_pipeline", "parse_pipeline", "DEFAULT_PIPELINE"]
