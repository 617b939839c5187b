"""Exact tails of the tests' null laws, the deduplication they rely on, and the corrections
for several tests.

Tails are exact and never round to 0 without their order of magnitude:

- the binomial upper tail (``special.bdtrc``; where it underflows double precision, below
  ~1e-308, the log of the tail summed in log space);
- the regularised upper incomplete gamma ``Q(a, x)`` (``special.gammaincc``; in the deep tail
  its continued fraction, in log space);
- the tail of a weighted sum of independent binomials (an exponentially tilted law inverted by
  a DFT), and the Chernoff-Cramer bound of a weighted sum of independent Bernoulli cells.

Several tests of one question are corrected by Bonferroni (the best of several keys) or by
Benjamini-Hochberg (many records flagged at a false-discovery rate).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillmark.watermark.errors import ParameterError

__all__ = ["BinomialTail", "benjamini_hochberg", "binomial_tail", "binomial_tails", "bonferroni",
           "clopper_pearson", "format_pvalue", "log_gammaincc", "min_scored_for", "ufuncs",
           "unique_keys", "weighted_bernoulli_logsf_bound", "weighted_binomial_logsf"]

_TAIL_TERMS = 200_000

# -- scipy's special functions, without scipy.special's import cost --------------------------

_UFUNCS: Any = None
_UFUNCS_LOCK = threading.Lock()
_UFUNCS_MODULE = "scipy.special._ufuncs"


def ufuncs() -> Any:
    """scipy.special's compiled functions (``bdtrc``, ``gammaincc``, ``expit``, ``logit``):
    the module ``scipy.special._ufuncs``, whose functions *are* scipy.special's (the same
    objects, so the same bits).

    ``import scipy.special`` takes about half a second, nearly all of it in its array-API
    layer (which imports most of numpy's submodules), and a few hundredths in these
    functions. So while this process runs one thread and nothing has imported scipy.special
    yet, the extension is imported under a stand-in for its package, removed at once; a later
    ``import scipy.special`` finds the extension loaded and uses that same module. With other
    threads running, or should the stand-in not serve, scipy.special is imported as usual.
    """
    global _UFUNCS
    if _UFUNCS is None:
        with _UFUNCS_LOCK:
            if _UFUNCS is None:
                _UFUNCS = _import_ufuncs()
    return _UFUNCS


def _import_ufuncs() -> Any:
    loaded = sys.modules.get(_UFUNCS_MODULE)
    if loaded is not None:
        return loaded
    if "scipy.special" not in sys.modules and threading.active_count() == 1:
        import scipy

        stand_in = types.ModuleType("scipy.special")
        stand_in.__path__ = [os.path.join(os.path.dirname(scipy.__file__), "special")]
        sys.modules["scipy.special"] = stand_in
        try:
            return importlib.import_module(_UFUNCS_MODULE)
        except ImportError:
            pass
        finally:
            if sys.modules.get("scipy.special") is stand_in:
                del sys.modules["scipy.special"]
    from scipy.special import _ufuncs

    return _ufuncs


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
    # as exact as stats.binom.sf and much cheaper per call, which matters for many short texts.
    pv = float(ufuncs().bdtrc(k - 1, n, p))
    if pv >= 1e-300:
        pv = min(pv, 1.0)
        return BinomialTail(pv, float(np.log10(pv)))  # np.log10: same bits as the array path
    # Deep tail (scipy's sf may return 0 well above the double-precision floor): the pmf
    # decreases geometrically beyond k > n p, so a bounded log-space sum of the leading terms is
    # exact to double precision; the float p-value is its exponential where representable.
    from scipy import special, stats  # rare path; scipy.stats takes a second to import

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
    if k.size == 1:  # one text: the scalar path, same bits, a fifth of the cost
        t = binomial_tail(int(k.flat[0]), int(n.flat[0]), p)
        return np.array([t.pvalue]), np.array([t.log10_pvalue])
    pv = np.where(k <= 0, 1.0, ufuncs().bdtrc(k - 1, n, p))
    pv = np.minimum(pv, 1.0)
    lg = np.log10(pv, out=np.full(pv.shape, -np.inf), where=pv > 0)
    for i in np.flatnonzero(pv < 1e-300):
        t = binomial_tail(int(k[i]), int(n[i]), p)
        pv[i], lg[i] = t.pvalue, t.log10_pvalue
    return pv, lg


# -- the gamma tail (sums of Exp(1) terms) ----------------------------------------------------

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
    q = float(ufuncs().gammaincc(a, x))
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


# -- weighted sums of independent binomials (tournament layers) -----------------------------

#: Hoeffding: the tilted sum leaves the DFT window with probability below 2 e^-50.
_WINDOW_LOG_TAIL = 50.0
#: Largest DFT of the weighted null; beyond it the (valid, conservative) Chernoff bound.
_MAX_DFT = 1 << 24


def _tilt(t: int, n: int, w: np.ndarray, p: float = 0.5) -> float:
    """``theta >= 0`` whose tilted mean ``n sum_l w_l expit(theta w_l + logit p)`` is ``t`` (0
    if the untilted mean already reaches it)."""
    if t <= n * float(w.sum()) * p:
        return 0.0
    special = ufuncs()
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
    ``s`` (each bit becomes Bernoulli(``expit(theta w_l + logit p)``), so ``P0(x) =
    P_theta(x) M(theta) e^{-theta x}``), the tilted pmf is computed by an inverse real DFT of
    its characteristic function ``prod_l (1 - q_l + q_l e^{-2 pi i k w_l / N})^n`` on a window
    of ``N`` lattice points around ``s`` (the whole support ``0 .. n sum w`` when that is
    smaller; otherwise wide enough by Hoeffding that what wraps around is below ``2 e^-50`` of the tilted mass), and
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
    special = ufuncs()
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


# -- weighted sums of independent Bernoulli cells (the open-model audit) --------------------


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

    special = ufuncs()
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


# -- deduplication and corrections ----------------------------------------------------------


def unique_keys(keys: np.ndarray, *, below: int | None = None) -> np.ndarray:
    """Sorted distinct values of ``keys (n,) uint64``: ``(u,) uint64``.

    A sort and a neighbour comparison: ``np.unique``'s result, without its extra passes. With
    ``below`` (a bound on every key, such as a scheme's ``n_cells``) at most ``2**32``, the
    keys are sorted as ``uint32``: the same values, in half the memory and less than half the
    time.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    if below is not None and below <= 1 << 32 and keys.size > 1:
        s = keys.astype(np.uint32)  # a copy of our own: sorted in place
        s.sort()
    else:
        s = np.sort(keys)
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep].astype(np.uint64, copy=False)


def bonferroni(pvalue: float, n_tests: int) -> float:
    """Bonferroni-corrected p-value for the best of ``n_tests`` tests."""
    return min(1.0, pvalue * max(1, n_tests))


def bonferroni_log10(log10_pvalue: float, n_tests: int) -> float:
    """:func:`bonferroni` in log10: finite whatever the p-value's size."""
    return min(0.0, log10_pvalue + math.log10(max(1, n_tests)))


def benjamini_hochberg(log10_pvalues: np.ndarray, q: float) -> tuple[np.ndarray, float]:
    """Benjamini-Hochberg step-up at FDR ``q`` on ``(m,)`` log10 p-values: the flags ``(m,)
    bool`` and the log10 threshold (``-inf`` when nothing is flagged)."""
    if not 0.0 < q < 1.0:
        raise ParameterError(f"`fdr` must be in (0, 1), got {q}")
    lg = np.asarray(log10_pvalues, dtype=np.float64)
    m = lg.size
    if m == 0:
        return np.zeros(0, dtype=bool), -math.inf
    s = np.sort(lg)
    crit = np.log10(q * np.arange(1, m + 1) / m)
    ok = np.flatnonzero(s <= crit)
    if ok.size == 0:
        return np.zeros(m, dtype=bool), -math.inf
    t = float(s[ok[-1]])
    return lg <= t, t


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided ``confidence`` interval of a binomial proportion
    from ``k`` successes in ``n`` trials: each end holds with probability at least
    ``(1 + confidence) / 2``."""
    if not 0.0 < confidence < 1.0:
        raise ParameterError(f"`confidence` must be in (0, 1), got {confidence}")
    if n < 1 or not 0 <= k <= n:
        raise ParameterError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1.0 - confidence) / 2.0
    lower = 0.0 if k == 0 else float(ufuncs().betaincinv(k, n - k + 1, tail))
    upper = 1.0 if k == n else float(ufuncs().betaincinv(k + 1, n - k, 1.0 - tail))
    return lower, upper


def min_scored_for(alpha: float, p: float) -> int:
    """Fewest scored tokens at which an all-green text could reach ``pvalue < alpha``."""
    return max(1, math.floor(math.log(alpha) / math.log(p)) + 1)


def format_pvalue(pvalue: float, log10_pvalue: float) -> str:
    """A p-value for people: three significant digits, or ``1e-412.3`` where the float
    underflows (the log10 still holds it)."""
    return f"{pvalue:.3g}" if pvalue > 0 else f"1e{log10_pvalue:.1f}"
