"""Verification: statistical tests for watermarks in one text, many texts pooled, datasets and
models."""

from .aggregate import AggregateAccumulator, AggregateResult, TupleSet
from .decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, Verdict
from .detect import DetectionResult, Detector, detect_ids, detect_ids_batch
from .keyring import KeyRingDetector, KeyRingResult
from .stats import binomial_tail, unique_keys

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_SCORED",
    "AggregateAccumulator",
    "AggregateResult",
    "DetectionResult",
    "Detector",
    "KeyRingDetector",
    "KeyRingResult",
    "TupleSet",
    "Verdict",
    "binomial_tail",
    "detect_ids",
    "detect_ids_batch",
    "unique_keys",
]
