"""Verification: statistical tests for watermarks in one text, many texts pooled, datasets and
models.

The names below are loaded from their modules on first use, so that importing one module of
this package (``distillmark.verify.detect``) does not import the others (pooling and the
dataset statistics need scipy.stats, which takes a second to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aggregate import AggregateAccumulator, AggregateResult, TupleSet
    from .decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, Verdict
    from .detect import DetectionResult, Detector, detect_ids, detect_ids_batch
    from .keyring import KeyRingDetector, KeyRingResult
    from .stats import binomial_tail, unique_keys

#: Public name -> the module of this package that defines it.
_WHERE = {
    "AggregateAccumulator": "aggregate", "AggregateResult": "aggregate", "TupleSet": "aggregate",
    "DEFAULT_ALPHA": "decision", "DEFAULT_MIN_SCORED": "decision", "Verdict": "decision",
    "DetectionResult": "detect", "Detector": "detect", "detect_ids": "detect",
    "detect_ids_batch": "detect", "KeyRingDetector": "keyring", "KeyRingResult": "keyring",
    "binomial_tail": "stats", "unique_keys": "stats",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
