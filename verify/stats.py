"""Exact tests and the deduplication they rely on.

Only exact tails from scipy: ``special.bdtrc`` (the binomial upper tail) for the p-value and, when it underflows double
precision (below ~1e-308), the log of the tail summed in log space, so a p-value is never
reported as 0 without its true order of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["BinomialTail", "binomial_tail", "binomial_tails", "bonferroni", "format_pvalue",
           "min_scored_for", "unique_keys"]

_TAIL_TERMS = 200_000


@dataclass(frozen=True)
class BinomialTail:
    """``P(Binomial(n, p) >= k)``, as a float and as log10 (finite even below 1e-308)."""

    pvalue: float
    log10_pvalue: float


def binomial_tail(k: int, n: int, p: float) -> BinomialTail:
    """Exact upper tail ``P(X >= k)`` for ``X ~ Binomial(n, p)``."""
    if n < 0 or not 0.0 < p < 1.0:
        raise ValueError(f"need n >= 0 and 0 < p < 1, got n={n}, p={p}")
    if k <= 0:
        return BinomialTail(1.0, 0.0)
    if k > n:
        return BinomialTail(0.0, -math.inf)
    # bdtrc(k - 1, n, p) = P(X > k - 1), the regularised incomplete beta I_p(k, n - k + 1):
    # as exact as stats.binom.sf and ~60x cheaper per call, which matters for many short texts.
    pv = float(special.bdtrc(k - 1, n, p))
    if pv >= 1e-300:
        pv = min(pv, 1.0)
        return BinomialTail(pv, float(np.log10(pv)))  # np.log10: same bits as the array path
    # Deep tail (scipy's sf may return 0 well above the double-precision floor): the pmf
    # decreases geometrically beyond k > n p, so a bounded log-space sum of the leading terms is
    # exact to double precision; the float p-value is its exponential where representable.
    from scipy import stats  # rare path; scipy.stats takes a second to import

    j = np.arange(k, min(n, k + _TAIL_TERMS) + 1, dtype=np.float64)
    log_sf = float(special.logsumexp(stats.binom.logpmf(j, n, p)))
    return BinomialTail(math.exp(log_sf), log_sf / math.log(10.0))


def binomial_tails(k: np.ndarray, n: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`binomial_tail` over arrays: ``(pvalue, log10_pvalue)``, each ``(m,) float64``.

    Vectorised ``special.bdtrc``; only the deep tails (below 1e-300) go through the scalar
    log-space sum.
    """
    k = np.asarray(k, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    with np.errstate(divide="ignore"):
        pv = np.where(k <= 0, 1.0, special.bdtrc(k - 1, n, p))
        pv = np.minimum(pv, 1.0)
        lg = np.log10(pv)
    for i in np.flatnonzero(pv < 1e-300):
        t = binomial_tail(int(k[i]), int(n[i]), p)
        pv[i], lg[i] = t.pvalue, t.log10_pvalue
    return pv, lg


def unique_keys(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``keys (n,) uint64``.

    A sort and a neighbour comparison: several times faster here than ``np.unique`` for large
    arrays, with the same result.
    """
    s = np.sort(np.asarray(keys, dtype=np.uint64))
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def bonferroni(pvalue: float, n_tests: int) -> float:
    """Bonferroni-corrected p-value for the best of ``n_tests`` tests."""
    return min(1.0, pvalue * max(1, n_tests))


def min_scored_for(alpha: float, p: float) -> int:
    """Fewest scored tokens at which an all-green text could reach ``pvalue < alpha``."""
    return max(1, math.floor(math.log(alpha) / math.log(p)) + 1)


def format_pvalue(pvalue: float, log10_pvalue: float) -> str:
    """A p-value for people: three significant digits, or ``1e-412.3`` where the float
    underflows (the log10 still holds it)."""
    return f"{pvalue:.3g}" if pvalue > 0 else f"1e{log10_pvalue:.1f}"
