"""The tests: per-unit scores of the distinct tuples in, an exact p-value out.

A scheme names its test (``scheme.test``) and the test's null parameters
(``scheme.test_params``); scoring stays with the scheme, testing here, so two schemes can share a
test. Every test is exact under the null hypothesis that the text does not depend on the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import binomial_tail

__all__ = ["TESTS", "Outcome", "binomial_test", "run_test"]


@dataclass(frozen=True)
class Outcome:
    """What a test found: its statistic and exact p-value, and the score per unit against the
    null's expectation (units: scored tuples, or tuple x layer for layered schemes)."""

    statistic: float
    pvalue: float
    log10_pvalue: float
    score_mean: float
    null_mean: float
    z_score: float


def binomial_test(scores: np.ndarray, *, p: float) -> Outcome:
    """Green bits ``scores (n,) bool``: ``P(Binomial(n, p) >= count)``."""
    n = int(scores.size)
    k = int(np.count_nonzero(scores))
    tail = binomial_tail(k, n, p)
    z = (k - p * n) / math.sqrt(n * p * (1 - p)) if n else 0.0
    return Outcome(statistic=k, pvalue=tail.pvalue, log10_pvalue=tail.log10_pvalue,
                   score_mean=k / n if n else 0.0, null_mean=p, z_score=z)


TESTS: dict[str, Callable[..., Outcome]] = {"binomial": binomial_test}


def run_test(name: str, scores: np.ndarray, params: dict[str, Any]) -> Outcome:
    """Run test ``name`` on the scores of the distinct tuples."""
    try:
        test = TESTS[name]
    except KeyError:
        raise ValueError(f"unknown test {name!r}; known: {', '.join(TESTS)}") from None
    return test(scores, **params)
