"""The tests: scores of the distinct tuples, and the group each belongs to, in; a statistic and
an exact p-value per group out.

A scheme names its test (``scheme.test``) and the test's null parameters
(``scheme.test_params``); scoring stays with the scheme, testing here, so two schemes can share a
test. Every test is exact under the null hypothesis that the text does not depend on the key
(the audit's weighted test: a valid upper bound of the exact tail).

Each test has one form, grouped and vectorised, in the manner of synthid-text's
``mean_score(g_values, mask)``::

    test(scores, groups, n_groups, **params) -> GroupedOutcome

``scores (n,)`` or ``(n, m)`` (one row per scored tuple), ``groups (n,) int64`` in
``0 .. n_groups - 1``, and every field of the outcome a ``(n_groups,)`` array. One text is one
group (:func:`run_test`); a batch of texts, the records of a dataset or a model's cells are
many. A group's rows are taken in their order in ``scores``, and float sums are summed per group
as numpy sums one group's array: a text gives the same bits alone or in a batch. :data:`TESTS`
maps a scheme's ``test`` name to its test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import (
    binomial_tail,
    binomial_tails,
    log_gammaincc,
    ufuncs,
    weighted_bernoulli_logsf_bound,
    weighted_binomial_logsf,
)

__all__ = ["BINOMIAL_TESTS", "TESTS", "GroupedOutcome", "Outcome", "binomial", "binomial_counts",
           "binomial_test", "gamma", "gamma_test", "ones_per_row", "run_grouped", "run_test",
           "tournament_mean", "tournament_mean_test", "tournament_weighted", "tournament_weighted_test",
           "weighted_bernoulli"]

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class Outcome:
    """What a test found in one group: its statistic and exact p-value, and the score per unit
    against the null's expectation (units: scored tuples, or tuple x layer for layered
    schemes)."""

    statistic: float
    pvalue: float
    log10_pvalue: float
    score_mean: float
    null_mean: float
    z_score: float


@dataclass(frozen=True)
class GroupedOutcome:
    """What a test found in each of ``g`` groups: every field is a ``(g,)`` array.

    Attributes:
        statistic: the test statistic: ``int64`` for counts (binomial, tournament), ``float64``
            for sums (gamma, weighted cells).
        pvalue: ``float64`` exact p-value; may underflow to 0.0, ``log10_pvalue`` still holds it.
        log10_pvalue: ``float64``, finite whatever the p-value's size.
        score_mean: ``float64`` score per unit; ``null_mean``: its expectation under the null.
        z_score: ``float64`` standardised statistic, for reading only.
        n_scored: ``int64`` rows of ``scores`` (scored tuples) in the group.
        n_units, n_ones: ``int64``, the binomial view (:data:`BINOMIAL_TESTS`): units scored
            (tuples x layers) and units scoring 1, which the fraction estimate counts; zero for
            the other tests.
    """

    statistic: np.ndarray
    pvalue: np.ndarray
    log10_pvalue: np.ndarray
    score_mean: np.ndarray
    null_mean: np.ndarray
    z_score: np.ndarray
    n_scored: np.ndarray
    n_units: np.ndarray
    n_ones: np.ndarray

    def outcomes(self) -> list[Outcome]:
        """Every group's figures as Python numbers, in group order (what :meth:`outcome` gives
        one by one, converted array by array)."""
        cols = zip(self.statistic.tolist(), self.pvalue.tolist(), self.log10_pvalue.tolist(),
                   self.score_mean.tolist(), self.null_mean.tolist(), self.z_score.tolist())
        return [Outcome(*row) for row in cols]

    def outcome(self, i: int = 0) -> Outcome:
        """Group ``i``'s figures as Python numbers (``int`` statistic for counts)."""
        return Outcome(statistic=self.statistic[i].item(), pvalue=float(self.pvalue[i]),
                       log10_pvalue=float(self.log10_pvalue[i]),
                       score_mean=float(self.score_mean[i]),
                       null_mean=float(self.null_mean[i]), z_score=float(self.z_score[i]))


GroupedTest = Callable[..., GroupedOutcome]


def _check_groups(scores: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    if groups.size != scores.shape[0]:
        raise ValueError(f"need one group per row of scores, got {groups.size} groups for "
                         f"{scores.shape[0]} rows")
    outside = (groups.any() if n_groups == 1 else
               groups.size and (int(groups.min()) < 0 or int(groups.max()) >= n_groups))
    if outside:
        raise ValueError(f"groups must lie in 0..{n_groups - 1}")
    return groups


def _group_rows(groups: np.ndarray, n_groups: int) -> Iterator[tuple[int, np.ndarray]]:
    """Each group and the indices of its rows, in their order (``(n_i,) int64``)."""
    counts = np.bincount(groups, minlength=n_groups)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    if groups.size < 2 or bool((groups[1:] >= groups[:-1]).all()):
        order = np.arange(groups.size, dtype=np.int64)
    else:
        order = np.argsort(groups, kind="stable")
    for i in range(n_groups):
        yield i, order[bounds[i]:bounds[i + 1]]


def _fill(n_groups: int) -> dict[str, np.ndarray]:
    """The figures of a group with nothing scored (p = 1), for the float-sum tests to fill."""
    return {"pvalue": np.ones(n_groups), "log10_pvalue": np.zeros(n_groups),
            "score_mean": np.zeros(n_groups), "z_score": np.zeros(n_groups),
            "n_units": np.zeros(n_groups, dtype=np.int64),
            "n_ones": np.zeros(n_groups, dtype=np.int64)}


# -- counts of ones: green bits, g-values --------------------------------------------------------


def binomial(scores: np.ndarray, groups: np.ndarray, n_groups: int, *, p: float
             ) -> GroupedOutcome:
    """Ones among units, each Bernoulli(``p``) under the null: ``P(Binomial(n, p) >= ones)``.

    Args:
        scores: ``(n,)`` green bits (bool or 0/1), or ``(n, m)`` 0/1 g-values (``m`` units per
            tuple, as tournament layers).
        groups: ``(n,) int64``, the group of each row; ``n_groups``: ``g``.
        p: a unit's null probability of scoring 1 (green lists: the exact gamma).

    Returns:
        per group ``(g,)``: ``statistic`` the ones (``int64``), their exact tail, ``score_mean``
        the share of ones, and the binomial view ``n_units``, ``n_ones``.
    """
    scores = np.asarray(scores)
    groups = _check_groups(scores, groups, n_groups)
    depth, per_row = _ones(scores, p)
    n = np.bincount(groups, minlength=n_groups).astype(np.int64)
    k = np.bincount(groups, weights=per_row, minlength=n_groups).astype(np.int64)
    return binomial_counts(k, n, depth=depth, p=p)


def binomial_counts(ones: np.ndarray, n_scored: np.ndarray, *, depth: int = 1, p: float
                    ) -> GroupedOutcome:
    """:func:`binomial` from each group's counts rather than its rows: ``ones (g,) int64``
    units scoring 1 among ``n_scored (g,) int64`` scored tuples of ``depth`` units each; the
    same figures, bit for bit. For callers that count many overlapping groups (the windows of
    a long text) by cumulative sums, where listing every group's rows would cost more than the
    test."""
    k = np.asarray(ones, dtype=np.int64)
    n = np.asarray(n_scored, dtype=np.int64)
    if k.shape != n.shape or k.ndim != 1:
        raise ValueError(f"need ones and n_scored of one shape (g,), got {k.shape} and {n.shape}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"need 0 < p < 1, got p={p}")
    n_groups = k.size
    units = n * depth
    pv, lg = binomial_tails(k, units, p)
    some = np.maximum(units, 1)  # the figures of a group with nothing scored are 0
    mean = np.where(units > 0, k / some, 0.0)
    z = np.where(units > 0, (k - p * units) / np.sqrt(some * p * (1 - p)), 0.0)
    return GroupedOutcome(statistic=k, pvalue=pv, log10_pvalue=lg, score_mean=mean,
                          null_mean=np.full(n_groups, p), z_score=z, n_scored=n,
                          n_units=units, n_ones=k)


def ones_per_row(scores: np.ndarray, p: float) -> tuple[int, np.ndarray]:
    """``(depth, ones per row)`` of binomial scores ``(n,)`` (green bits) or ``(n, m)``
    (g-values): ``depth`` units per tuple, ``(n,)`` ones of each; checks ``p``."""
    return _ones(np.asarray(scores), p)


def _ones(scores: np.ndarray, p: float) -> tuple[int, np.ndarray]:
    """``(depth, ones per row)`` of binomial scores ``(n,)`` or ``(n, m)``; checks ``p``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"need 0 < p < 1, got p={p}")
    if scores.ndim == 1:
        return 1, scores != 0
    return int(scores.shape[1]), np.count_nonzero(scores, axis=1)


def _binomial_outcome(n: int, k: int, depth: int, p: float) -> Outcome:
    """:func:`binomial` of one group (one text) in Python numbers: the same figures bit for bit
    (IEEE arithmetic and square root), without array work that costs more than the test itself
    on a short text."""
    units = n * depth
    t = binomial_tail(k, units, p)
    mean = k / units if units else 0.0
    z = (k - p * units) / math.sqrt(units * p * (1 - p)) if units else 0.0
    return Outcome(statistic=k, pvalue=t.pvalue, log10_pvalue=t.log10_pvalue, score_mean=mean,
                   null_mean=p, z_score=z)


def tournament_mean(scores: np.ndarray, groups: np.ndarray, n_groups: int, *, p: float = 0.5
                    ) -> GroupedOutcome:
    """g-values ``scores (n, m)`` of 0/1: :func:`binomial` over the ``n m`` of them; ``p`` is a
    g-value's null probability of 1 (1/2, or a fixed table's exact mean, as transformers'
    SynthID)."""
    return binomial(scores, groups, n_groups, p=p)


def tournament_weighted(scores: np.ndarray, groups: np.ndarray, n_groups: int, *,
                        weights: Sequence[int], p: float = 0.5) -> GroupedOutcome:
    """g-values ``scores (n, m)`` of 0/1 and integer layer weights ``(m,)``: per group
    ``S = sum_l w_l sum_t g[t, l]`` and its exact ``P(S >= observed)``
    (:func:`~.stats.weighted_binomial_logsf`), each g-value Bernoulli(``p``) under the null."""
    w = np.array([int(x) for x in weights], dtype=np.int64)
    g = np.asarray(scores)
    if g.size == 0:
        g = g.reshape(0, w.size)
    if g.ndim != 2 or g.shape[1] != w.size:
        raise ValueError(f"tournament scores must be (n, {w.size}), got shape {g.shape}")
    groups = _check_groups(g, groups, n_groups)
    n = np.bincount(groups, minlength=n_groups).astype(np.int64)
    ones = np.stack([np.bincount(groups, weights=g[:, col] != 0, minlength=n_groups)
                     for col in range(w.size)], axis=1).astype(np.int64).reshape(n_groups, -1)
    stat = ones @ w
    w_sum, w_sq = int(w.sum()), int(np.dot(w, w))
    log_sf = [weighted_binomial_logsf(s, m, w.tolist(), p=p)[0]
              for s, m in zip(stat.tolist(), n.tolist())]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(n > 0, (stat - n * w_sum * p) / np.sqrt(n * w_sq * p * (1 - p)), 0.0)
        mean = np.where(n > 0, stat / np.maximum(n * w_sum, 1), 0.0)
    return GroupedOutcome(statistic=stat, pvalue=np.array([math.exp(x) for x in log_sf]),
                          log10_pvalue=np.array([x / _LN10 for x in log_sf]),
                          score_mean=mean, null_mean=np.full(n_groups, p), z_score=z,
                          n_scored=n, n_units=np.zeros(n_groups, dtype=np.int64),
                          n_ones=np.zeros(n_groups, dtype=np.int64))


# -- sums of keyed uniforms and weighted cells ---------------------------------------------------


def gamma(scores: np.ndarray, groups: np.ndarray, n_groups: int) -> GroupedOutcome:
    """Keyed uniforms ``scores (n,) float64`` in (0, 1): per group ``S = sum -log(1 - r)`` and
    ``P(Gamma(n, 1) >= S)`` (each term is Exp(1) under the null; Aaronson / EXP schemes)."""
    r = np.asarray(scores, dtype=np.float64)
    groups = _check_groups(r, groups, n_groups)
    if not ((r > 0.0) & (r < 1.0)).all():
        raise ValueError("gamma test scores must lie in the open interval (0, 1)")
    out = _fill(n_groups)
    stat = np.zeros(n_groups)
    n = np.zeros(n_groups, dtype=np.int64)
    terms = -np.log1p(-r)
    for i, rows in _group_rows(groups, n_groups):
        if not rows.size:
            continue
        run = terms[rows]
        m, s = int(run.size), float(run.sum())
        log_p = log_gammaincc(m, s)
        pvalue = float(ufuncs().gammaincc(m, s))
        if pvalue < 1e-300:
            pvalue = math.exp(log_p)
        stat[i], n[i] = s, m
        out["pvalue"][i], out["log10_pvalue"][i] = pvalue, log_p / _LN10
        out["score_mean"][i], out["z_score"][i] = s / m, (s - m) / math.sqrt(m)
    return GroupedOutcome(statistic=stat, null_mean=np.ones(n_groups), n_scored=n, **out)


def weighted_bernoulli(scores: np.ndarray, groups: np.ndarray, n_groups: int, *,
                       cell_weights: np.ndarray, p: float) -> GroupedOutcome:
    """Green bits ``scores (n,) bool`` of cells with fixed weights ``cell_weights (n,)
    float64 >= 0``: per group ``S = sum_c w_c green_c`` and the Chernoff-Cramer bound on its
    tail (:func:`~.stats.weighted_bernoulli_logsf_bound`), each cell Bernoulli(``p``) under
    the null: an upper bound of the exact p-value, so the test is valid (conservative).
    ``score_mean`` is the green share of the weight."""
    green = np.asarray(scores, dtype=bool)
    groups = _check_groups(green, groups, n_groups)
    w = np.asarray(cell_weights, dtype=np.float64)
    if w.shape != green.shape:
        raise ValueError(f"need one weight per cell, got {w.shape} for {green.shape}")
    out = _fill(n_groups)
    stat = np.zeros(n_groups)
    n = np.bincount(groups, minlength=n_groups).astype(np.int64)
    for i, rows in _group_rows(groups, n_groups):
        wg = w[rows]
        s = float(wg[green[rows]].sum())
        total = float(wg.sum())
        log_p, _ = weighted_bernoulli_logsf_bound(wg, s, p=p)
        sd = math.sqrt(p * (1 - p) * float(np.dot(wg, wg)))
        stat[i] = s
        out["pvalue"][i], out["log10_pvalue"][i] = math.exp(log_p), log_p / _LN10
        out["score_mean"][i] = s / total if total else 0.0
        out["z_score"][i] = (s - p * total) / sd if sd > 0 else 0.0
    return GroupedOutcome(statistic=stat, null_mean=np.full(n_groups, p), n_scored=n, **out)


# -- the registry ------------------------------------------------------------------------------

#: Test name (a scheme's ``test``) -> its grouped form.
TESTS: dict[str, GroupedTest] = {
    "binomial": binomial,
    "gamma": gamma,
    "tournament-mean": tournament_mean,
    "tournament-weighted": tournament_weighted,
    "chernoff-weighted-bernoulli": weighted_bernoulli,
}
#: Tests whose statistic counts ones among units that are Bernoulli(``p``) under the null
#: (their outcome's ``n_units`` and ``n_ones`` are the binomial view).
BINOMIAL_TESTS = frozenset({"binomial", "tournament-mean"})


def run_grouped(name: str, scores: np.ndarray, groups: np.ndarray, n_groups: int,
                params: dict[str, Any]) -> GroupedOutcome:
    """Run test ``name`` on ``scores (n,) or (n, m)`` in ``n_groups`` groups ``(n,) int64``."""
    try:
        test = TESTS[name]
    except KeyError:
        raise ValueError(f"unknown test {name!r}; known: {', '.join(TESTS)}") from None
    return test(scores, groups, n_groups, **params)


def run_test(name: str, scores: np.ndarray, params: dict[str, Any]) -> Outcome:
    """Run test ``name`` on the scores of one text's distinct tuples (one group)."""
    scores = np.asarray(scores)
    if name in BINOMIAL_TESTS and scores.ndim in (1, 2) and set(params) == {"p"}:
        # the common case, in Python numbers (the grouped form's figures, bit for bit)
        depth, per_row = _ones(scores, params["p"])
        return _binomial_outcome(int(scores.shape[0]), int(per_row.sum()), depth,
                                 params["p"])
    return run_grouped(name, scores, np.zeros(scores.shape[0], dtype=np.int64), 1,
                       params).outcome(0)


def binomial_test(scores: np.ndarray, *, p: float) -> Outcome:
    """:func:`binomial` on one group of green bits ``scores (n,) bool``."""
    return run_test("binomial", scores, {"p": p})


def gamma_test(scores: np.ndarray) -> Outcome:
    """:func:`gamma` on one group of keyed uniforms ``scores (n,) float64``."""
    return run_test("gamma", scores, {})


def tournament_mean_test(scores: np.ndarray, *, p: float = 0.5) -> Outcome:
    """:func:`tournament_mean` on one group of g-values ``scores (n, m)``."""
    return run_test("tournament-mean", scores, {"p": p})


def tournament_weighted_test(scores: np.ndarray, *, weights: Sequence[int], p: float = 0.5
                             ) -> Outcome:
    """:func:`tournament_weighted` on one group of g-values ``scores (n, m)``."""
    return run_test("tournament-weighted", scores, {"weights": weights, "p": p})
