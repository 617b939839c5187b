"""The tests: per-unit scores of the distinct tuples in, an exact p-value out.

A scheme names its test (``scheme.test``) and the test's null parameters
(``scheme.test_params``); scoring stays with the scheme, testing here, so two schemes can share a
test. Every test is exact under the null hypothesis that the text does not depend on the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from .stats import binomial_tail

__all__ = ["TESTS", "Outcome", "binomial_test", "gamma_test", "log_gammaincc", "run_test",
           "tournament_mean_test", "tournament_weighted_test", "weighted_bernoulli_logsf_bound",
           "weighted_binomial_logsf"]


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
    return binomial_test_counts(int(np.count_nonzero(scores)), int(scores.size), p=p)


def binomial_test_counts(k: int, n: int, *, p: float) -> Outcome:
    """``k`` green of ``n`` scored: ``P(Binomial(n, p) >= k)``."""
    tail = binomial_tail(k, n, p)
    z = (k - p * n) / math.sqrt(n * p * (1 - p)) if n else 0.0
    return Outcome(statistic=k, pvalue=tail.pvalue, log10_pvalue=tail.log10_pvalue,
                   score_mean=k / n if n else 0.0, null_mean=p, z_score=z)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_CF_MAX_TERMS = 100_000


def _stirling_error(a: float) -> float:
    """``lgamma(a) - ((a - 1/2) log a - a + log(2 pi) / 2)``, accurate for large ``a``."""
    if a < 30.0:
        return math.lgamma(a) - (a - 0.5) * math.log(a) + a - _HALF_LOG_2PI
    a2 = a * a  # the asymptotic series; the first omitted term is below 1e-16 here
    return (1 / 12 - (1 / 360 - (1 / 1260 - 1 / (1680 * a2)) / a2) / a2) / a


def log_gammaincc(a: float, x: float) -> float:
    """Natural log of the regularised upper incomplete gamma ``Q(a, x) = P(Gamma(a, 1) >= x)``.

    ``scipy.special.gammaincc`` where its value is representable (>= 1e-300); below that (only
    when ``x > a + 1``) the continued fraction of ``Q`` (modified Lentz), with the prefactor
    ``x^a e^-x / Gamma(a)`` in log space, written as ``a (log1p(d) - d) + log(a) / 2 -
    log(2 pi) / 2 - stirling_error(a)``, ``d = (x - a) / a``, so that large ``a`` loses no
    digits to cancellation. Finite for every ``x`` (1e-40 is -92.1, 1e-1000 is -2302.6).
    """
    a, x = float(a), float(x)
    if not (a > 0.0 and x >= 0.0 and math.isfinite(a) and math.isfinite(x)):
        raise ValueError(f"need a > 0 and x >= 0 (finite), got a={a}, x={x}")
    q = float(special.gammaincc(a, x))
    if q >= 1e-300 or x <= a + 1.0:
        return math.log(q) if q > 0.0 else -math.inf
    return _log_gammaincc_cf(a, x)


def _log_gammaincc_cf(a: float, x: float) -> float:
    """``log Q(a, x)`` from its continued fraction, for ``x > a + 1`` (where it converges fast)."""
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    f = d
    for i in range(1, _CF_MAX_TERMS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = d if abs(d) >= tiny else tiny
        c = b + an / c
        c = c if abs(c) >= tiny else tiny
        d = 1.0 / d
        step = d * c
        f *= step
        if abs(step - 1.0) < 2.2e-16:
            break
    else:  # pragma: no cover - converges in a handful of terms this deep in the tail
        raise ArithmeticError(f"continued fraction of Q({a}, {x}) did not converge")
    dd = (x - a) / a
    log_prefactor = (a * (math.log1p(dd) - dd) + 0.5 * math.log(a) - _HALF_LOG_2PI
                     - _stirling_error(a))
    return log_prefactor + math.log(f)


def gamma_test(scores: np.ndarray) -> Outcome:
    """Keyed uniforms ``scores (n,) float64`` in (0, 1): ``S = sum -log(1 - r)``, and
    ``P(Gamma(n, 1) >= S)`` (each term is Exp(1) under the null; Aaronson / EXP schemes)."""
    r = np.asarray(scores, dtype=np.float64)
    n = int(r.size)
    if n == 0:
        return Outcome(statistic=0.0, pvalue=1.0, log10_pvalue=0.0, score_mean=0.0,
                       null_mean=1.0, z_score=0.0)
    if not ((r > 0.0) & (r < 1.0)).all():
        raise ValueError("gamma test scores must lie in the open interval (0, 1)")
    s = float(-np.log1p(-r).sum())
    log_p = log_gammaincc(n, s)
    pvalue = float(special.gammaincc(n, s))
    if pvalue < 1e-300:
        pvalue = math.exp(log_p)
    return Outcome(statistic=s, pvalue=pvalue, log10_pvalue=log_p / math.log(10.0),
                   score_mean=s / n, null_mean=1.0, z_score=(s - n) / math.sqrt(n))


TESTS: dict[str, Callable[..., Outcome]] = {"binomial": binomial_test}
TESTS["gamma"] = gamma_test


# -- tournament (SynthID-Text) g-values: (n, m) fair bits under the null ----------------------

#: Hoeffding: the tilted sum leaves the DFT window with probability below 2 e^-50.
_WINDOW_LOG_TAIL = 50.0
#: Largest DFT of the weighted null; beyond it the (valid, conservative) Chernoff bound.
_MAX_DFT = 1 << 24


def _tilt(t: int, n: int, w: np.ndarray, p: float = 0.5) -> float:
    """``theta >= 0`` whose tilted mean ``n sum_l w_l expit(theta w_l + logit p)`` is ``t`` (0
    if the untilted mean already reaches it)."""
    if t <= n * float(w.sum()) * p:
        return 0.0
    lg = float(special.logit(p))

    def excess(theta: float) -> float:
        return n * float(np.dot(w, special.expit(theta * w + lg))) - t

    from scipy import optimize  # imported on use: it is slow to import

    hi = 1.0 / float(w.max())
    for _ in range(200):
        if excess(hi) >= 0.0:
            break
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi))


def weighted_binomial_logsf(s: int, n: int, weights: Sequence[int], *, p: float = 0.5
                            ) -> tuple[float, float]:
    """Natural logs of ``P(S >= s)`` and ``P(S > s)`` for ``S = sum_l w_l B_l``, ``B_l ~
    Binomial(n, p)`` independent (``p = 1/2`` by default), integer weights ``w_l >= 0``.

    Exact up to float rounding, at any depth: the law of ``S`` is tilted to put its mean at
    ``s`` (each bit becomes Bernoulli(``expit(theta w_l + logit p)``), so ``P0(x) = P_theta(x)
    M(theta) e^{-theta x}``), the tilted pmf is computed by an inverse real DFT of its characteristic
    function ``prod_l (1 - q_l + q_l e^{-2 pi i k w_l / N})^n`` on a window of ``N`` lattice
    points around ``s`` (the whole support ``0 .. n sum w`` when that is smaller; otherwise wide
    enough by Hoeffding that what wraps around is below ``2 e^-50`` of the tilted mass), and
    ``log P(S >= s) = log M - theta s + log sum_{x >= s} P_theta(x) e^{-theta (x - s)}``, a sum
    of positive terms of order one. Only where the window would exceed 2**24 points (``n`` in
    the millions) is the Chernoff bound ``log M - theta s`` returned: an upper bound, so the
    test stays valid (conservative).
    """
    from scipy import fft  # imported on use: it is slow to import

    w = np.array([int(x) for x in weights if int(x) != 0], dtype=np.float64)
    if n < 0 or any(int(x) < 0 for x in weights):
        raise ValueError(f"need n >= 0 and weights >= 0, got n={n}, weights={list(weights)}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"need 0 < p < 1, got p={p}")
    total = n * int(w.sum())

    def trivial(t: int) -> float | None:
        if t <= 0:
            return 0.0
        if t > total:
            return -math.inf
        if t == total:  # every weighted bit is 1
            return n * w.size * math.log(p)
        return None

    known = (trivial(s), trivial(s + 1))
    if known[0] is not None and known[1] is not None:
        return known[0], known[1]
    t0 = s if known[0] is None else s + 1
    lg = float(special.logit(p))
    theta = _tilt(t0, n, w, p)
    q = special.expit(theta * w + lg)
    log_m = n * float(np.sum(np.logaddexp(0.0, theta * w + lg) + math.log1p(-p)))
    half = math.ceil(math.sqrt(_WINDOW_LOG_TAIL / 2.0 * n * float(np.dot(w, w)))) + 1
    if total + 1 <= 2 * half:
        size, lo = total + 1, 0
    else:
        size = min(fft.next_fast_len(2 * half, real=True), total + 1)
        mean = n * float(np.dot(w, q))
        lo = min(max(0, math.floor(mean) - size // 2), total + 1 - size)
    out = []
    if size > _MAX_DFT:
        for t, k in zip((s, s + 1), known):
            out.append(k if k is not None else min(0.0, log_m - theta * t))
        return out[0], out[1]
    k_idx = np.arange(size // 2 + 1, dtype=np.int64)
    roots = np.exp((-2j * math.pi / size) * np.arange(size))  # roots[j] = e^{-2 pi i j / N}
    log_phi = np.zeros(k_idx.size, dtype=np.complex128)
    prod = np.ones(k_idx.size, dtype=np.complex128)
    with np.errstate(divide="ignore"):
        for i, (wl, ql) in enumerate(zip(w.astype(np.int64), q)):
            prod *= (1.0 - ql) + ql * roots[(k_idx * wl) % size]
            if i % 8 == 7 or i == w.size - 1:  # logs of blocks of 8: no underflow
                log_phi += np.log(prod)
                prod[:] = 1.0
    log_phi *= n
    log_phi += 1j * (2.0 * math.pi / size) * ((k_idx * lo) % size)  # index 0 <-> x = lo
    pmf = np.maximum(fft.irfft(np.exp(log_phi), n=size), 0.0)
    x = lo + np.arange(size, dtype=np.float64)
    for t, k in zip((s, s + 1), known):
        if k is not None:
            out.append(k)
            continue
        sel = x >= t
        mass = float(np.sum(pmf[sel] * np.exp(-theta * (x[sel] - t0))))
        log_sf = log_m - theta * t0 + math.log(mass) if mass > 0.0 else log_m - theta * t
        out.append(min(0.0, log_sf))
    return out[0], out[1]


def tournament_mean_test(scores: np.ndarray, *, p: float = 0.5) -> Outcome:
    """g-values ``scores (n, m)`` of 0/1: ``P(Binomial(n m, p) >= number of ones)``; ``p`` is
    a g-value's null probability of 1 (1/2, or a fixed table's exact mean, as transformers'
    SynthID)."""
    g = np.asarray(scores)
    units = int(g.size)
    k = int(np.count_nonzero(g))
    tail = binomial_tail(k, units, p)
    z = (k - units * p) / math.sqrt(units * p * (1 - p)) if units else 0.0
    return Outcome(statistic=k, pvalue=tail.pvalue, log10_pvalue=tail.log10_pvalue,
                   score_mean=k / units if units else 0.0, null_mean=p, z_score=z)


def tournament_weighted_test(scores: np.ndarray, *, weights: Sequence[int], p: float = 0.5
                             ) -> Outcome:
    """g-values ``scores (n, m)`` of 0/1 and integer layer weights ``(m,)``: ``S = sum_l w_l
    sum_t g[t, l]`` and its exact ``P(S >= observed)`` (:func:`weighted_binomial_logsf`), each
    g-value Bernoulli(``p``) under the null."""
    w = np.array([int(x) for x in weights], dtype=np.int64)
    g = np.asarray(scores)
    if g.size == 0:
        g = g.reshape(0, w.size)
    if g.ndim != 2 or g.shape[1] != w.size:
        raise ValueError(f"tournament scores must be (n, {w.size}), got shape {g.shape}")
    n = g.shape[0]
    stat = int(np.count_nonzero(g, axis=0).astype(np.int64) @ w)
    log_sf, _ = weighted_binomial_logsf(stat, n, w.tolist(), p=p)
    w_sum, w_sq = int(w.sum()), int(np.dot(w, w))
    z = (stat - n * w_sum * p) / math.sqrt(n * w_sq * p * (1 - p)) if n else 0.0
    return Outcome(statistic=stat, pvalue=math.exp(log_sf),
                   log10_pvalue=log_sf / math.log(10.0),
                   score_mean=stat / (n * w_sum) if n else 0.0, null_mean=p, z_score=z)


TESTS["tournament-mean"] = tournament_mean_test
TESTS["tournament-weighted"] = tournament_weighted_test


def run_test(name: str, scores: np.ndarray, params: dict[str, Any]) -> Outcome:
    """Run test ``name`` on the scores of the distinct tuples."""
    try:
        test = TESTS[name]
    except KeyError:
        raise ValueError(f"unknown test {name!r}; known: {', '.join(TESTS)}") from None
    return test(scores, **params)


# -- weighted sums of independent Bernoulli cells (the open-model audit) ----------------------


def weighted_bernoulli_logsf_bound(weights: np.ndarray, s: float, *, p: float
                                   ) -> tuple[float, float]:
    """Chernoff–Cramér bound on ``P(S >= s)`` for ``S = sum_c w_c B_c``, ``B_c ~
    Bernoulli(p)`` independent, fixed weights ``w_c >= 0``: ``(log_bound, theta)``, natural log.

    ``P(S >= s) <= exp(log M(theta) - theta s)`` for every ``theta >= 0`` (Markov's inequality
    on ``e^{theta S}``), ``log M(theta) = sum_c log(1 - p + p e^{theta w_c})``; the bound is
    minimised at the ``theta`` where the tilted mean ``sum_c w_c expit(theta w_c + logit p)``
    equals ``s`` (convex in ``theta``, found by bracketing and Brent's method). Everything is in
    log space (``logaddexp``), so bounds far below 1e-308 stay finite. The result is an upper
    bound of the true tail, never below it: a p-value computed from it is valid (conservative).
    ``s`` at or below the mean gives 0 (p = 1); ``s`` above ``sum w`` is impossible (-inf); ``s``
    equal to ``sum w`` gives the exact ``log P(every weighted cell is 1)``.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    if not 0.0 < p < 1.0:
        raise ValueError(f"need 0 < p < 1, got p={p}")
    if w.size and (not np.isfinite(w).all() or w.min() < 0.0):
        raise ValueError("weights must be finite and >= 0")
    w = w[w > 0.0]
    total = float(w.sum())
    if s <= p * total or w.size == 0:
        return 0.0, 0.0
    # Relative tolerance of float sums: s within it of the maximum counts as the maximum.
    if s > total * (1.0 + 1e-12):
        return -math.inf, math.inf
    if s >= total * (1.0 - 1e-12):
        return w.size * math.log(p), math.inf
    from scipy import optimize  # imported on use: it is slow to import

    lg, l1 = float(special.logit(p)), math.log1p(-p)

    def excess(theta: float) -> float:
        return float(np.dot(w, special.expit(theta * w + lg))) - s

    hi = 1.0 / float(w.max())
    for _ in range(2000):
        if excess(hi) >= 0.0:
            break
        hi *= 2.0
    theta = float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12))
    log_m = float(np.sum(np.logaddexp(0.0, theta * w + lg))) + w.size * l1
    return min(0.0, log_m - theta * s), theta
