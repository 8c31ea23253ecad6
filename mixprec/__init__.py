"""mixprec: convert FP32 models into BF16/FP16 mixed-precision models.

``import mixprec`` needs only numpy and networkx; frameworks load when a model of theirs
is converted."""
__version__ = "0.1.0"
