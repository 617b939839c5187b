"""Windows of a long token stream, their exact tests by cumulative sums, and the scan that
finds the marked spans among them.

Every window is tested as a text of its own: its distinct tuples (each counted once *within the
window*: a token is scored in window ``[s, e)`` when no earlier token of the window has its
tuple key), their ones, and the exact binomial tail of :func:`~.nulls.binomial_counts`, the
one test path. Counts come from prefix sums: a token ``t`` whose key last occurred at
``prev[t]`` is a repeat exactly in the windows with ``start <= prev[t]`` and ``end > t``, a
run of consecutive windows when starts and ends are both sorted, so each repeat is one
``+1 / -1`` pair of a difference array. A text of ``n`` tokens costs ``O(n log n)`` per window
length, whatever the number of windows.

The scan (:func:`scan_spans`) tests a fixed grid (dyadic lengths, a stride of a fraction of the
length, plus the whole text), corrects the best p-values by Bonferroni over the windows that
could be reported, refines the boundaries of each significant window (for location only: the
p-value stays the grid window's), and reports disjoint spans, best first. docs/statistics.md
gives the reasoning.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from distillmark.watermark.errors import ParameterError
from distillmark.watermark.registry import Scheme

from .nulls import binomial_counts, ones_per_row
from .stats import bonferroni, bonferroni_log10

__all__ = ["DEFAULT_LENGTHS", "DEFAULT_STRIDE", "SUPPORTED_TESTS", "SpanScan", "TokenFlags",
           "TokenSpan", "check_windows_scheme", "scan_spans", "span_counts", "token_flags",
           "window_counts", "window_grid"]

#: Window lengths (tokens) of the scan: 32, 64, ..., 2048.
DEFAULT_LENGTHS: tuple[int, ...] = tuple(1 << k for k in range(5, 12))
#: Stride between windows of one length, as a fraction of the length.
DEFAULT_STRIDE = 0.25
#: Tests whose windows are counted here: one unit per tuple, Bernoulli(``p``) under the null.
SUPPORTED_TESTS = frozenset({"binomial"})
#: Alternatives of the boundary refinement: ``q = p + (1 - p) f`` for these ``f``.
_REFINE_FRACTIONS = np.linspace(0.05, 0.95, 19)
_LN10 = math.log(10.0)


def check_windows_scheme(scheme: Scheme) -> float:
    """The null probability ``p`` of a scheme whose windows can be scanned; a
    :class:`~distillmark.watermark.errors.ParameterError` naming the scheme otherwise."""
    params = scheme.test_params
    if scheme.test not in SUPPORTED_TESTS or set(params) != {"p"}:
        raise ParameterError(
            f"--windows supports the schemes with the binomial test (greenlist, dipmark, "
            f"transformers-kgw); this key's scheme {scheme.name!r} uses the {scheme.test!r} test")
    return float(params["p"])


@dataclass(frozen=True)
class TokenFlags:
    """Per-token view of a text of ``n`` tokens (the prompt removed), every array ``(n,)``.

    Attributes:
        valid: ``bool``, the token is scored (it has a full context: not among the first
            ``h`` tokens unless a prompt precedes them).
        ones: ``int64``, units of its tuple scoring 1 (its green bit); 0 where not valid.
        prev: ``int64``, the last earlier valid position with the same tuple key, -1 if none.
        p: a unit's null probability of scoring 1.
    """

    valid: np.ndarray
    ones: np.ndarray
    prev: np.ndarray
    p: float

    @property
    def n_tokens(self) -> int:
        return int(self.valid.size)

    @cached_property
    def prefix(self) -> tuple[np.ndarray, np.ndarray]:
        """Prefix sums of ``valid`` and ``ones``: ``(n + 1,) int64`` each."""
        return (np.concatenate([[0], np.cumsum(self.valid, dtype=np.int64)]),
                np.concatenate([[0], np.cumsum(self.ones)]))

    @cached_property
    def repeats(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the repeated tokens (``prev >= 0``) and their distance to the previous
        occurrence: ``(r,) int64`` each."""
        t = np.flatnonzero(self.prev >= 0)
        return t, t - self.prev[t]


def token_flags(ids: np.ndarray, scheme: Scheme, *, prompt_len: int = 0) -> TokenFlags:
    """The :class:`TokenFlags` of ``ids (n,) int`` (the first ``prompt_len`` the prompt: context,
    never scored); each distinct tuple key is scored once (one keyed look-up per key)."""
    p = check_windows_scheme(scheme)
    ids = np.asarray(ids)
    if prompt_len < 0 or prompt_len > ids.size:
        raise ParameterError(f"`prompt_len` must be in 0..{ids.size}, got {prompt_len}")
    h = scheme.context_width
    n = int(ids.size - prompt_len)
    keys = scheme.tuple_keys(ids)  # keys[i] belongs to ids[h + i]
    first = max(0, h - prompt_len)  # first text token with a full context
    valid = np.zeros(n, dtype=bool)
    valid[first:] = True
    k = np.zeros(n, dtype=np.uint64)
    k[first:] = keys[prompt_len + first - h:]
    ones = np.zeros(n, dtype=np.int64)
    prev = np.full(n, -1, dtype=np.int64)
    pos = np.arange(first, n, dtype=np.int64)
    if pos.size:
        order = np.argsort(k[first:], kind="stable")  # equal keys stay in text order
        sk, spos = k[first:][order], pos[order]
        new = np.empty(sk.size, dtype=bool)
        new[0] = True
        np.not_equal(sk[1:], sk[:-1], out=new[1:])
        depth, per_key = ones_per_row(scheme.key_scores(sk[new]), p)
        if depth != 1:
            raise ParameterError(f"--windows needs one unit per tuple, got {depth}")
        ones[spos] = per_key.astype(np.int64)[np.cumsum(new) - 1]
        again = ~new[1:]
        prev[spos[1:][again]] = spos[:-1][again]
    return TokenFlags(valid=valid, ones=ones, prev=prev, p=p)


def window_grid(n_tokens: int, lengths: Sequence[int] = DEFAULT_LENGTHS,
                stride: float = DEFAULT_STRIDE) -> list[tuple[np.ndarray, np.ndarray]]:
    """Windows of a text of ``n_tokens``: per length ``L < n_tokens`` (ascending), starts
    ``0, d, 2d, ...`` with ``d = max(1, round(stride L))`` and one more window ending at the
    text's end if the grid misses it, as ``(starts, ends)`` ``(m,) int64`` both ascending; then
    the whole text ``[0, n_tokens)`` as a group of its own."""
    if not 0.0 < stride <= 1.0:
        raise ParameterError(f"`stride` must be in (0, 1], got {stride}")
    if not lengths or min(lengths) < 1:
        raise ParameterError(f"window lengths must be >= 1, got {list(lengths)}")
    out = []
    for L in sorted({int(x) for x in lengths}):
        if L >= n_tokens:
            break
        d = max(1, round(stride * L))
        starts = np.arange(0, n_tokens - L + 1, d, dtype=np.int64)
        if starts[-1] + L < n_tokens:
            starts = np.append(starts, n_tokens - L)
        out.append((starts, starts + L))
    if n_tokens > 0:
        out.append((np.zeros(1, dtype=np.int64), np.full(1, n_tokens, dtype=np.int64)))
    return out


def window_counts(flags: TokenFlags, starts: np.ndarray, ends: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Scored tuples and their ones in each window ``[starts[w], ends[w])``, each distinct key
    counted once within the window: ``(scored, ones)``, ``(m,) int64``. ``starts`` and ``ends``
    must both be ascending (one length's grid is)."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    cv, co = flags.prefix
    scored = cv[ends] - cv[starts]
    ones = co[ends] - co[starts]
    m = starts.size
    if m == 0:
        return scored, ones
    span = int((ends - starts).max())
    rep_t, dist = flags.repeats
    t = rep_t[dist < span]
    if t.size:
        lo = np.searchsorted(ends, t, side="right")  # first window ending after t
        hi = np.searchsorted(starts, flags.prev[t], side="right")  # first starting after prev
        keep = lo < hi
        lo, hi, w = lo[keep], hi[keep], flags.ones[t[keep]].astype(np.float64)
        rep = np.cumsum(np.bincount(lo, minlength=m + 1) - np.bincount(hi, minlength=m + 1))
        rep_ones = np.cumsum(np.bincount(lo, weights=w, minlength=m + 1)
                             - np.bincount(hi, weights=w, minlength=m + 1))
        scored = scored - rep[:m]
        ones = ones - np.rint(rep_ones[:m]).astype(np.int64)
    return scored, ones


def span_counts(flags: TokenFlags, start: int, end: int) -> tuple[int, int]:
    """Scored tuples and their ones in ``[start, end)``, each distinct key once."""
    first = flags.valid[start:end] & (flags.prev[start:end] < start)
    return int(np.count_nonzero(first)), int(flags.ones[start:end][first].sum())


@dataclass(frozen=True)
class TokenSpan:
    """A reported span, in token positions of the text (the prompt removed).

    Attributes:
        token_start, token_end: the refined span ``[token_start, token_end)``.
        scored, statistic: its distinct tuples and their ones.
        pvalue, log10_pvalue: the p-value of the grid window that found it, multiplied by
            the number of windows (Bonferroni).
        window_start, window_end: that grid window, ``[window_start, window_end)``.
        window_scored, window_statistic: its distinct tuples and their ones.
        window_pvalue, window_log10_pvalue: its own p-value, uncorrected.
    """

    token_start: int
    token_end: int
    scored: int
    statistic: int
    pvalue: float
    log10_pvalue: float
    window_start: int
    window_end: int
    window_scored: int
    window_statistic: int
    window_pvalue: float
    window_log10_pvalue: float


@dataclass(frozen=True)
class SpanScan:
    """What the scan found: the disjoint spans (best first) and the correction's size.

    ``n_windows`` counts the windows that could be reported (those with at least
    ``min_scored`` scored tuples), the whole text among them; ``lengths`` and ``stride`` are
    the grid's."""

    spans: tuple[TokenSpan, ...]
    n_windows: int
    lengths: tuple[int, ...]
    stride: float


def _refine(flags: TokenFlags, start: int, end: int, lo: int, hi: int) -> tuple[int, int]:
    """Boundaries of the marked run around window ``[start, end)``, within ``[lo, hi)``.

    For each alternative ``q`` of a grid, the run maximising the log-likelihood ratio of
    Bernoulli(``q``) against Bernoulli(``p``) (a maximum-sum subarray of per-token scores, a
    token's key counted at its first occurrence in the region); of those runs, the one whose
    exact binomial p-value is smallest (``n KL(k/n, p) = max_q LLR_q``: the grid approximates
    the minimum p over all runs). The run is a location only: its p-value is never
    reported as a test."""
    a = max(lo, start - (end - start))
    b = min(hi, end + (end - start))
    p = flags.p
    first = flags.valid[a:b] & (flags.prev[a:b] < a)
    g = (flags.ones[a:b] > 0) & first
    r = first & ~g
    q = p + (1.0 - p) * _REFINE_FRACTIONS
    gain, loss = np.log(q / p), np.log((1.0 - q) / (1.0 - p))
    cands = []
    for up, down in zip(gain.tolist(), loss.tolist()):
        c = np.concatenate([[0.0], np.cumsum(g * up + r * down)])
        runmin = np.minimum.accumulate(c)
        j = int(np.argmax(c - runmin))  # earliest best end
        if c[j] - runmin[j] <= 0.0:
            continue
        i = int(np.flatnonzero(c[:j + 1] == runmin[j])[-1])  # latest best start
        cands.append((a + i, a + j))
    if not cands:
        return start, end
    cands = sorted(set(cands))
    counts = [span_counts(flags, s, e) for s, e in cands]
    out = binomial_counts(np.array([c[1] for c in counts]), np.array([c[0] for c in counts]),
                          p=p)
    best = int(np.argmin(out.log10_pvalue))
    return cands[best]


def scan_spans(flags: TokenFlags, *, alpha: float, lengths: Sequence[int] = DEFAULT_LENGTHS,
               stride: float = DEFAULT_STRIDE, min_scored: int = 1) -> SpanScan:
    """The marked spans of a text: disjoint, each found by a grid window whose p-value,
    corrected for every window, is below ``alpha``.

    Greedy: the window with the smallest p-value is refined into a span, windows overlapping
    a reported span are dropped, and so on while the best remaining window is significant.
    Refinement stays within the gap between spans already reported."""
    if not 0.0 < alpha < 1.0:
        raise ParameterError(f"`alpha` must be in (0, 1), got {alpha}")
    grid = window_grid(flags.n_tokens, lengths, stride)
    starts = np.concatenate([s for s, _ in grid]) if grid else np.zeros(0, np.int64)
    ends = np.concatenate([e for _, e in grid]) if grid else np.zeros(0, np.int64)
    parts = [window_counts(flags, s, e) for s, e in grid]
    scored = np.concatenate([c[0] for c in parts]) if parts else np.zeros(0, np.int64)
    ones = np.concatenate([c[1] for c in parts]) if parts else np.zeros(0, np.int64)
    used_lengths = tuple(int(e[0] - s[0]) for s, e in grid[:-1])
    enough = scored >= max(1, min_scored)
    n_windows = int(np.count_nonzero(enough))
    if n_windows == 0:
        return SpanScan((), 0, used_lengths, stride)
    idx = np.flatnonzero(enough)
    test = binomial_counts(ones[idx], scored[idx], p=flags.p)
    log_m = math.log10(n_windows)
    limit = math.log10(alpha) - log_m
    sig = np.flatnonzero(test.log10_pvalue < limit)
    sig = sig[np.argsort(test.log10_pvalue[sig], kind="stable")]
    spans: list[TokenSpan] = []
    taken: list[tuple[int, int]] = []  # reported spans, sorted by start
    for j in sig.tolist():
        w = int(idx[j])
        s, e = int(starts[w]), int(ends[w])
        k = bisect.bisect_left(taken, (e, e))  # spans starting before e
        if k and taken[k - 1][1] > s:
            continue
        gap_lo = taken[k - 1][1] if k else 0
        gap_hi = taken[k][0] if k < len(taken) else flags.n_tokens
        rs, re_ = _refine(flags, s, e, gap_lo, gap_hi)
        n_sc, n_on = span_counts(flags, rs, re_)
        pv, lg = float(test.pvalue[j]), float(test.log10_pvalue[j])
        spans.append(TokenSpan(
            token_start=rs, token_end=re_, scored=n_sc, statistic=n_on,
            pvalue=bonferroni(pv, n_windows), log10_pvalue=bonferroni_log10(lg, n_windows),
            window_start=s, window_end=e, window_scored=int(scored[w]),
            window_statistic=int(ones[w]), window_pvalue=pv,
            window_log10_pvalue=lg))
        bisect.insort(taken, (rs, re_))
    return SpanScan(tuple(spans), n_windows, used_lengths, stride)
