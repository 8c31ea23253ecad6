"""The Adapter contract every framework implements for ``mix_precision.fit``."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from mixprec.config import MixedPrecisionConfig
from mixprec.ir.graph import Model

logger = logging.getLogger(__name__)


class Adapter(ABC):
    """One framework's glue. Invariants: ``load`` never mutates the user's model;
    ``emit`` returns a model that passed the framework's own validation; ``save`` writes
    atomically and refuses to overwrite the file the model was read from."""

    name: str = ""

    @abstractmethod
    def load(self, model: Any, config: MixedPrecisionConfig) -> Model:
        """The user's model (object or path) as IR."""

    def runtime_fp32_ops(self, ir_model: Model, config: MixedPrecisionConfig) -> tuple[list[str], str]:
        """(ops the chosen runtime cannot run in the target dtype, runtime name)."""
        return [], "the target runtime"

    @abstractmethod
    def emit(self, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """The converted IR as a native, validated model."""

    @abstractmethod
    def sample_inputs(self, original: Any, ir_model: Model, config: MixedPrecisionConfig) -> Any:
        """Inputs for the output check: the user's, or generated from the input types."""

    @abstractmethod
    def run_original(self, original: Any, inputs: Any) -> list[np.ndarray]:
        """Outputs of the FP32 model, flattened, as float arrays."""

    @abstractmethod
    def run_converted(self, converted: Any, inputs: Any, config: MixedPrecisionConfig) -> list[np.ndarray]:
        """Outputs of the converted model, flattened, as float arrays."""

    @abstractmethod
    def output_names(self, ir_model: Model) -> list[str]:
        """Names of the flattened outputs, for the report."""

    @abstractmethod
    def save(self, converted: Any, path: str, ir_model: Model, config: MixedPrecisionConfig,
             input_path: str | None) -> None:
        """Write the converted model to ``path`` atomically."""
