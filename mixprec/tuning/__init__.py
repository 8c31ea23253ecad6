"""Accuracy-aware fallback search: see mixprec.tuning.search."""
from mixprec.tuning.search import Candidate, Trial, TuningResult, fallback_search

__all__ = ["Candidate", "Trial", "TuningResult", "fallback_search"]
