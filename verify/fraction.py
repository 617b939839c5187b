"""How many records of a dataset are watermarked: a two-component mixture and its profile-
likelihood confidence interval.

Binomial-family tests (green lists, SynthID's mean score): each record ``i`` gives ``n_i``
scored units (distinct tuples, x layers) of which ``k_i`` score 1. A record written without the
key has ``k_i ~ Binomial(n_i, p0)`` *exactly* (``p0`` the test's null mean); a watermarked one
``k_i ~ BetaBinomial(n_i, theta, rho)`` (mean ``theta``, overdispersion ``rho``: watermark
strength varies from record to record with the text's entropy). The likelihood of the mixed
dataset, with ``f`` the fraction of watermarked records, is

    L(f, theta, rho) = prod_i [(1 - f) Bin(k_i; n_i, p0) + f BetaBin(k_i; n_i, theta, rho)].

``f`` is estimated by maximum likelihood; the nuisance ``(theta, rho)`` is profiled out over a
grid (``theta`` from ``theta_min`` to 0.995, ``rho`` in {0, 0.015, 0.05}); the confidence
interval is ``{f : 2 (max log L - max_{theta,rho} log L(f, .)) <= chi2_1(confidence)}``
(Wilks; at the boundary ``f = 0`` the statistic's law is a 50:50 mixture of chi2_0 and chi2_1,
so the interval is conservative there). ``theta_min`` makes the fraction identifiable: a
"watermarked record" is one whose expected score is at least ``theta_min`` (by default half
the scheme's typical standardised effect above ``p0``); without a floor, "100% watermarked with
a vanishing effect" could not be told from "0%". The data enter only through the counts of
each distinct ``(n, k)`` pair (:class:`PairCounts`, mergeable), so the fit costs the same for a
thousand or a billion records; records longer than 256 units are scaled to 256 (their green
share kept): they are classified with near certainty either way.

Other tests (the gamma test of the Gumbel scheme, SynthID's weighted score): the same mixture on
the records' exact p-values, uniform under the null, ``Beta(a, 1)`` (``a <= a_max``) when
watermarked: a beta-uniform mixture (Pounds and Morris 2003).

Records with nothing scored carry no information: ``f`` is the fraction among the records the
data speak about, with the empty ones assumed to be mixed alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from distillmark.watermark.errors import ParameterError

__all__ = ["MIN_FRACTION_RECORDS", "FractionEstimate", "PairCounts", "binomial_mixture",
           "pvalue_mixture"]

#: Fewer records than this, and the fraction of them is not stated (their own tests are).
MIN_FRACTION_RECORDS = 10

_RHOS = (0.0, 0.015, 0.05)
_N_THETA = 16
_THETA_MAX = 0.995
_N_CAP = 256
_BISECT = 25
_N_A = 40


@dataclass(frozen=True)
class FractionEstimate:
    """Estimated fraction of watermarked records, with a confidence interval.

    Attributes:
        estimate: maximum-likelihood fraction.
        ci_low, ci_high: profile-likelihood interval at ``confidence``.
        confidence: e.g. 0.95.
        method: ``binomial-mixture``, ``beta-uniform-mixture`` or ``none`` (no informative
            record: the interval is [0, 1]).
        n_records: records the fit used: those with at least ``min_units`` scored units; the
            fraction is among them.
        min_units: the threshold.
        min_effect: the alternative's floor: ``theta_min`` (binomial mixture) or ``a_max``
            (beta-uniform mixture).
    """

    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    method: str
    n_records: int
    min_units: int
    min_effect: float

    def is_estimated(self) -> bool:
        """Whether the data say enough about the fraction to state it: at least
        :data:`MIN_FRACTION_RECORDS` records fitted, and an interval that rules out some
        fraction. Otherwise the point estimate is noise (one clean record can give 100%, with
        an interval of 0% to 100%), and with a handful of records the per-record tests say
        which are watermarked better than a fraction of them."""
        return (self.n_records >= MIN_FRACTION_RECORDS
                and (self.ci_low > 0.0 or self.ci_high < 1.0))

    def to_dict(self) -> dict[str, float | int | str | bool]:
        """The fields, and ``estimated``: :meth:`is_estimated`."""
        return {**asdict(self), "estimated": self.is_estimated()}


class PairCounts:
    """Mergeable counts of ``(n, k)`` pairs (scored units, units scoring 1) of records."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}

    def add(self, n: np.ndarray, k: np.ndarray) -> None:
        """Count records with ``n (r,) int`` units of which ``k (r,) int`` scored 1."""
        n = np.asarray(n, dtype=np.uint64)
        k = np.asarray(k, dtype=np.uint64)
        if n.size == 0:
            return
        codes = np.sort((n << np.uint64(32)) | k)
        edges = np.flatnonzero(np.diff(codes)) + 1
        starts = np.concatenate([[0], edges])
        counts = np.diff(np.concatenate([starts, [codes.size]]))
        d = self._counts
        for code, c in zip(codes[starts].tolist(), counts.tolist()):
            d[code] = d.get(code, 0) + c

    def merge(self, other: PairCounts) -> None:
        d = self._counts
        for code, c in other._counts.items():
            d[code] = d.get(code, 0) + c

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(n, k, count)``, each ``(g,) int64``, sorted by ``(n, k)``."""
        if not self._counts:
            e = np.zeros(0, dtype=np.int64)
            return e, e, e
        codes = np.array(sorted(self._counts), dtype=np.uint64)
        counts = np.array([self._counts[c] for c in codes.tolist()], dtype=np.int64)
        return ((codes >> np.uint64(32)).astype(np.int64),
                (codes & np.uint64(0xFFFFFFFF)).astype(np.int64), counts)

    def to_array(self) -> np.ndarray:
        """``(g, 2) uint64`` of (code, count), for checkpoints."""
        n, k, c = self.arrays()
        codes = (n.astype(np.uint64) << np.uint64(32)) | k.astype(np.uint64)
        return np.stack([codes, c.astype(np.uint64)], axis=1) if n.size else \
            np.zeros((0, 2), dtype=np.uint64)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> PairCounts:
        out = cls()
        out._counts = {int(a): int(b) for a, b in np.asarray(arr, dtype=np.uint64).tolist()}
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PairCounts) and self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ParameterError(f"`confidence` must be in (0, 1), got {confidence}")


def _profile_fit(base: np.ndarray, alt: np.ndarray, weights: np.ndarray, confidence: float
                 ) -> tuple[float, float, float]:
    """ML fraction and profile-likelihood interval of the mixture ``(1-f) e^base + f e^alt``.

    ``base (g,)`` log-likelihoods of each data group under the null, ``alt (g, J)`` under each
    alternative of the nuisance grid, ``weights (g,)`` the groups' record counts.
    """

    def prof(f: float) -> float:
        if f <= 0.0:
            return float(weights @ base)
        if f >= 1.0:
            return float((weights @ alt).max())
        mix = np.logaddexp(math.log1p(-f) + base[:, None], math.log(f) + alt)
        return float((weights @ mix).max())

    grid = np.unique(np.concatenate([[0.0, 1.0], np.geomspace(1e-5, 1.0, 16),
                                     np.linspace(0.0, 1.0, 11)]))
    vals = np.array([prof(float(f)) for f in grid])
    i = int(np.argmax(vals))
    lo, hi = float(grid[max(0, i - 1)]), float(grid[min(grid.size - 1, i + 1)])
    best_f, best_v = float(grid[i]), float(vals[i])
    # golden-section refinement between the neighbours of the best grid point
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = prof(c), prof(d)
    for _ in range(25):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = prof(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = prof(d)
    for f, v in ((c, fc), (d, fd)):
        if v > best_v:
            best_f, best_v = f, v
    crit = float(stats.chi2.ppf(confidence, 1)) / 2.0

    def outside(f: float) -> bool:
        return best_v - prof(f) > crit

    def bisect(inside: float, out: float) -> float:
        for _ in range(_BISECT):
            mid = (inside + out) / 2.0
            if outside(mid):
                out = mid
            else:
                inside = mid
        return inside

    ci_low = 0.0 if not outside(0.0) else bisect(best_f, 0.0)
    ci_high = 1.0 if not outside(1.0) else bisect(best_f, 1.0)
    return best_f, ci_low, ci_high


def binomial_mixture(n: np.ndarray, k: np.ndarray, counts: np.ndarray, *, p0: float,
                     theta_min: float, min_units: int = 1, confidence: float = 0.95
                     ) -> FractionEstimate:
    """Fraction of watermarked records from grouped ``(n, k)`` data (see the module doc).

    Args:
        n, k, counts: ``(g,) int``: records with ``n`` units of which ``k`` scored 1, and how
            many records had that pair.
        p0: exact null probability of a unit scoring 1.
        theta_min: smallest mean score of a watermarked record, in ``(p0, 1)``.
        min_units: records with fewer units are left out (the fraction is among the others).
        confidence: of the interval.
    """
    _check_confidence(confidence)
    if not 0.0 < p0 < theta_min < _THETA_MAX:
        raise ParameterError(f"need 0 < p0 < theta_min < {_THETA_MAX}, got p0={p0}, "
                             f"theta_min={theta_min}")
    n = np.asarray(n, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    w: np.ndarray = np.asarray(counts, dtype=np.float64)
    keep = (n >= max(1, min_units)) & (w > 0)
    n, k, w = n[keep], k[keep], w[keep]
    n_records = int(w.sum())
    if n_records == 0:
        return FractionEstimate(0.0, 0.0, 1.0, confidence, "none", 0, min_units, theta_min)
    big = n > _N_CAP
    k = np.where(big, np.rint(k * (_N_CAP / np.maximum(n, 1))).astype(np.int64), k)
    n = np.minimum(n, _N_CAP)
    codes = (n << 32) | k
    order = np.argsort(codes, kind="stable")
    codes, w = codes[order], w[order]
    first = np.concatenate([[True], codes[1:] != codes[:-1]])
    idx = np.cumsum(first) - 1
    w = np.bincount(idx, weights=w)
    codes = codes[first]
    n, k = codes >> 32, codes & 0xFFFFFFFF
    base = stats.binom.logpmf(k, n, p0)
    thetas = np.linspace(theta_min, _THETA_MAX, _N_THETA)
    cols = []
    for rho in _RHOS:
        for th in thetas:
            if rho == 0.0:
                cols.append(stats.binom.logpmf(k, n, th))
            else:
                s = 1.0 / rho - 1.0
                cols.append(stats.betabinom.logpmf(k, n, th * s, (1.0 - th) * s))
    alt = np.stack(cols, axis=1)
    f, lo, hi = _profile_fit(base, alt, w, confidence)
    return FractionEstimate(f, lo, hi, confidence, "binomial-mixture", n_records, min_units,
                            theta_min)


def pvalue_mixture(log10_pvalues: np.ndarray, *, a_max: float = 0.5, min_units: int = 1,
                   confidence: float = 0.95) -> FractionEstimate:
    """Fraction of watermarked records from their exact (continuous) p-values: a beta-uniform
    mixture, ``p ~ (1 - f) U(0, 1) + f Beta(a, 1)`` with ``a`` profiled over ``(0, a_max]``.

    Args:
        log10_pvalues: ``(m,) float`` log10 p-values of the records with something scored.
        a_max: the alternative's floor of strength (``E[p] = a / (a + 1)`` at most).
        min_units: recorded in the result: the threshold the caller selected the records by.
    """
    _check_confidence(confidence)
    if not 0.0 < a_max < 1.0:
        raise ParameterError(f"`a_max` must be in (0, 1), got {a_max}")
    x = -np.asarray(log10_pvalues, dtype=np.float64) * math.log(10.0)  # -ln p >= 0
    x = np.maximum(x, 0.0)
    if x.size == 0:
        return FractionEstimate(0.0, 0.0, 1.0, confidence, "none", 0, min_units, a_max)
    # group: 0.01 resolution in -ln p below 20, 1 above (the likelihood is smooth in it)
    q = np.where(x < 20.0, np.round(x, 2), np.round(x))
    vals, w = np.unique(q, return_counts=True)
    a = np.geomspace(1e-4, a_max, _N_A)
    base = np.zeros(vals.size)
    # log density of Beta(a, 1) at p = e^-x: log a + (a - 1) log p = log a - (a - 1) x
    alt = np.log(a)[None, :] - (a[None, :] - 1.0) * vals[:, None]
    f, lo, hi = _profile_fit(base, alt, w.astype(np.float64), confidence)
    return FractionEstimate(f, lo, hi, confidence, "beta-uniform-mixture", int(x.size),
                            min_units, a_max)


def theta_floor(p0: float, effect: float) -> float:
    """``theta_min`` for a standardised effect: ``p0 + effect / 2 * sqrt(p0 (1 - p0))``."""
    t = p0 + 0.5 * effect * math.sqrt(p0 * (1.0 - p0))
    return float(min(max(t, p0 + 1e-3), _THETA_MAX - 1e-3))

