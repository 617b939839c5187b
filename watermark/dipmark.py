"""The distribution-preserving α-reweight (DiPmark, Wu et al. 2023), used by generation and
detection.

How it works
------------
Each context selects a keyed *permutation* of the vocabulary. Generation lays the model's
next-token probabilities ``p`` out on [0, 1] in permutation order (token ``i`` of the
permutation covers ``[F_{i-1}, F_i)``, ``F`` the cumulative mass) and reweights that line by the
density ``g(x) = 1[x > alpha] + 1[x > 1 - alpha]``: the first ``alpha`` of the mass is removed,
the last ``alpha`` doubled. Token ``i`` gets

    max(F_i - alpha, 0) - max(F_{i-1} - alpha, 0)
        + max(F_i - (1 - alpha), 0) - max(F_{i-1} - (1 - alpha), 0),

which sums to 1 and is never negative; the engine then samples it as it is. ``alpha`` lies in
[0, 1/2]; 0 leaves ``p`` alone, 1/2 moves all mass to the second half of the line.

Distribution preserving: ``g(x) + g(1 - x) = 2`` almost everywhere, so a permutation and its
reverse, which are equally likely under a uniformly random permutation, give two reweighted
distributions whose average is exactly ``p``. Averaged over keys every step is therefore an
unbiased sample of the model's distribution (after temperature and top-p). For one key, tokens
late in their context's permutation are more likely than the model makes them; that is the
signal detection counts.

Keyed values
------------
* Rows: the ``h = context_width`` tokens before a token select one of ``n_lists`` rows through
  :class:`~distillmark.watermark.context.ContextRows` (sub-key ``"dipmark/token-values"``,
  ``combine`` ``"hash"`` or ``"min"``, lefthash only); ``h = 0`` uses row 0 for every token.
* Cells: ``u[row, t]`` is element ``row * V + t`` of the keyed ``uint64`` stream of sub-key
  ``"dipmark/table"`` (:mod:`~distillmark.watermark.prf`). The permutation of a row is its tokens
  sorted by ``u`` (ties, which occur with probability about ``V**2 / 2**65``, by token id): with
  independent uniform cells it is a uniformly random permutation.
* Green: a token is green in a row when the top 32 bits of its cell reach
  ``round(gamma * 2**32)``, i.e. when it lies in the last ``1 - gamma`` (in expectation) of the
  row's permutation, where the reweight pushes mass. The green tokens of a row are exactly a
  suffix of its permutation.

The *tuple key* of a scored token is ``row * V + token`` (the cell), as for the green-list
scheme. Detection counts each distinct tuple key once; distinct cells are independent, so under
the null hypothesis (text written without the key) each is green with probability exactly
``p_green = (2**32 - round(gamma * 2**32)) / 2**32`` and the number of green keys is
Binomial(n_unique, p_green): the ``binomial`` test of ``distillmark.verify.nulls``, the same
exact test as the green-list scheme's.

Detection's ``gamma``: 1/2 by default, as in the paper. In the high-entropy limit (cumulative
mass spread evenly along the permutation) a watermarked token is green with probability
``1 - gamma + alpha`` for ``alpha <= gamma <= 1 - alpha``; the standardised effect
``alpha / sqrt(gamma (1 - gamma))`` is flat in that range (0.90 at gamma 1/2 against 0.905 at
its best, gamma = alpha or 1 - alpha, for alpha 0.45), and 1/2 keeps it so whichever
``alpha`` a key uses.

Where ``p`` comes from: ``temperature`` (logits / T), softmax, then ``top_p`` (the smallest set of
most likely tokens whose mass reaches ``top_p``, renormalised), the same as the tournament
scheme. Temperature 0 is greedy decoding, left unwatermarked. With fewer than ``h`` context
tokens the step is left unwatermarked (such tokens are never scored).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import prf
from .context import RowParams, RowScheme
from .errors import ParameterError
from .sampling import reweighted_log_probs

__all__ = ["SCHEME_NAME", "DiPmark", "DiPmarkParams", "reweight_factors", "reweight_log_factors"]

SCHEME_NAME = "dipmark"
_MAX_LISTS = 65536
# Permutations kept for generation (each row: order and rank, 8 bytes per token: 50 MB for 128
# rows at V = 49,152).
_ROW_CACHE = 128


@dataclass(frozen=True)
class DiPmarkParams(RowParams):
    """Parameters of the DiPmark scheme (validated on construction).

    Attributes:
        alpha: reweighting strength in [0, 0.5]: the share of the probability line (in
            permutation order) whose mass moves to its end. 0 is no watermark, 0.5 the
            strongest; the paper's default 0.45.
        gamma: detection's threshold in (0, 1): a token is green when its keyed value reaches
            ``gamma``, i.e. it lies in the last ``1 - gamma`` of its row's permutation.
        context_width: ``h``, tokens before the next one that select its row (0 to 8).
        combine: how a window of h >= 2 tokens is combined, ``"hash"`` or ``"min"``.
        n_lists: rows (permutations) of the keyed table, a power of two <= 65536.
    """

    scheme_name = SCHEME_NAME

    alpha: float = 0.45
    gamma: float = 0.5
    context_width: int = 1
    combine: str = "hash"
    n_lists: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.number("alpha") <= 0.5:
            raise ParameterError(f"`alpha` must be in [0, 0.5], got {self.alpha}")
        self.check_gamma()
        self.check_context_width()
        self.check_rows(_MAX_LISTS)
        self._store("alpha", float(self.alpha))
        self._store("gamma", float(self.gamma))


def _straddlers(q: np.ndarray, alpha: float) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """The cumulative mass ``F (k,)`` of ``q`` and, for each threshold ``alpha * total`` and
    ``(1 - alpha) * total``, ``(i, f)``: the first token whose interval ends beyond it (every
    later token starts beyond it) and the share ``f`` in [0, 1] of its interval that does."""
    F = np.cumsum(q)
    total = float(F[-1])
    out = []
    for t in (alpha * total, (1.0 - alpha) * total):
        i = min(int(np.searchsorted(F, t, side="right")), q.size - 1)
        f = min(max((float(F[i]) - t) / float(q[i]), 0.0), 1.0) if q[i] > 0.0 else 0.0
        out.append((i, f))
    return F, out


def reweight_factors(q: np.ndarray, alpha: float) -> np.ndarray:
    """The α-reweight of probabilities in permutation order, as factors.

    ``q: (k,) float64`` the probabilities of the ``k`` tokens in permutation order (positive;
    their sum is taken as the total mass) -> ``(k,) float64`` factors ``f`` in [0, 2] such that
    ``q * f`` is the reweighted mass: token ``i`` covers ``[F_{i-1}, F_i)`` of the line and its
    factor is the mean of ``g(x) = 1[x > alpha] + 1[x > 1 - alpha]`` over that interval (the
    thresholds scaled by the total). Tokens entirely on one side of both thresholds get exactly
    0, 1 or 2, so small probabilities keep their full precision; only the (at most two) tokens
    that straddle a threshold get a fraction. ``sum(q * f)`` equals the total up to rounding.
    """
    q = np.asarray(q, dtype=np.float64)
    if alpha == 0.0 or q.size == 0:
        return np.ones(q.shape)
    _, cuts = _straddlers(q, alpha)
    out = np.zeros(q.shape)
    for i, f in cuts:
        out[i + 1:] += 1.0
        out[i] += f
    return out


def reweight_log_factors(q: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """:func:`reweight_factors` in log space, normalised: ``(log_f (k,) float64, log_total)``
    with ``log(q) + log_f - log_total`` the log of the reweighted distribution (``log_f`` is
    ``-inf``, 0 or ``log 2`` except at the straddling tokens). Built from slices, without a
    logarithm per token."""
    q = np.asarray(q, dtype=np.float64)
    if alpha == 0.0 or q.size == 0:
        return np.zeros(q.shape), 0.0
    F, ((i1, f1), (i2, f2)) = _straddlers(q, alpha)
    log_f = np.empty(q.shape)
    log_f[:i1] = -np.inf
    log_f[i1 + 1:i2] = 0.0
    log_f[i2 + 1:] = math.log(2.0)
    end = float(F[-1])
    if i1 == i2:
        mid = f1 + f2
        mass = 2.0 * (end - float(F[i1])) + mid * float(q[i1])
    else:
        mid = 1.0 + f2
        log_f[i1] = math.log(f1) if f1 > 0.0 else -np.inf
        mass = ((end - float(F[i1])) + f1 * float(q[i1]) + (end - float(F[i2]))
                + f2 * float(q[i2]))
    log_f[i2] = math.log(mid) if mid > 0.0 else -np.inf
    return log_f, math.log(mass / end)


class DiPmark(RowScheme, name=SCHEME_NAME, params_class=DiPmarkParams, default_effect=0.27,
              samples=True, test="binomial"):
    """The DiPmark scheme for one spec: :meth:`process` for generation, tuple keys and green
    bits for detection. Both sides read the same keyed cells, so they cannot drift apart.

    Built as every :class:`~.context.RowScheme`, with :class:`DiPmarkParams`.
    """

    def __init__(self, secret: bytes, params: DiPmarkParams, vocab_size: int, *,
                 key_id: str = "") -> None:
        super().__init__(secret, params, vocab_size, key_id=key_id)
        self.alpha = params.alpha
        #: Green when the cell's top 32 bits are >= this.
        self.threshold = round(params.gamma * 2.0**32)
        #: The exact probability that a cell is green: the binomial test's null parameter.
        self.p_green = (2**32 - self.threshold) / 2.0**32
        self.test_params = {"p": self.p_green}
        self._rows: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # -- keyed values ------------------------------------------------------------------------
    def row_values(self, row: int) -> np.ndarray:
        """The keyed cells of one row, every token: ``(V,) uint64``."""
        row = int(row)
        if not 0 <= row < self.n_rows:
            raise ParameterError(f"`row` must be in 0..{self.n_rows - 1}, got {row}")
        V = self.vocab_size
        return prf.u64_stream(self._table_key, V, start=row * V)

    def permutation(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The keyed permutation of one row: ``(order, rank)``, both ``(V,) int32``.

        ``order[i]`` is the token at position ``i`` (tokens sorted by their cell, ties by id),
        ``rank[t]`` the position of token ``t``. The last few rows are kept.
        """
        row = int(row)
        cached = self._rows.get(row)
        if cached is not None:
            self._rows.move_to_end(row)
            return cached
        order = np.argsort(self.row_values(row), kind="stable").astype(np.int32)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size, dtype=np.int32)
        order.setflags(write=False)
        rank.setflags(write=False)
        self._rows[row] = (order, rank)
        if len(self._rows) > _ROW_CACHE:
            self._rows.popitem(last=False)
        return order, rank

    def _high_words(self, cells: np.ndarray) -> np.ndarray:
        """Top 32 bits of the cells ``row * V + t``: ``(n,) uint64 -> (n,) uint32``.

        One AES block per cell, or the stream read in bulk above a few hundred thousand cells
        (same values).
        """
        return (self.table_values(cells) >> np.uint64(32)).astype(np.uint32)

    # -- detection ---------------------------------------------------------------------------
    def key_scores(self, keys: np.ndarray) -> np.ndarray:
        """Green bit of each tuple key: ``(n,) uint64 -> (n,) bool``."""
        return self._high_words(keys) >= np.uint32(self.threshold)

    def green_indicators(self, ids: np.ndarray) -> np.ndarray:
        """Green bit of every scorable token, no deduplication: ``(n,) -> (max(n-h,0),) bool``."""
        return self.key_scores(self.tuple_keys(ids))

    # -- generation --------------------------------------------------------------------------
    def reweight(self, p: np.ndarray, row: int, *, support: np.ndarray | None = None
                 ) -> tuple[np.ndarray, float]:
        """The α-reweight of one distribution under one row's permutation, in log space.

        ``p: (k,) float64`` the probabilities of the tokens ``support (k,) int`` (ascending
        token ids; ``None``: all ``V`` tokens in id order) -> ``(log_f (k,) float64,
        log_total)`` in the same order: ``log p + log_f - log_total`` is the log of the
        watermarked distribution. See :func:`reweight_log_factors`.
        """
        order, rank = self.permutation(row)
        p = np.asarray(p, dtype=np.float64)
        if support is None:
            log_f, log_total = reweight_log_factors(p[order], self.alpha)
            return log_f[rank], log_total
        pos = np.argsort(rank[np.asarray(support)], kind="stable")  # indices into p
        out = np.empty(p.shape)
        out[pos], log_total = reweight_log_factors(p[pos], self.alpha)
        return out, log_total

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """The engine-neutral generation hook: the watermarked next-token log-probabilities
        ``(B, W)`` of ``logits (B, W)`` after ``contexts (B, L)``, as
        :func:`~distillmark.watermark.sampling.reweighted_log_probs` describes them (the
        engine samples them at temperature 1 with no other filter).

        Each row's distribution is α-reweighted under the permutation of the row its last ``h``
        context tokens select; ``prompt_width`` is checked, not otherwise used (every generated
        step is watermarked). Fewer than ``h`` context tokens leave the step unwatermarked
        (``log p`` of the tempered, filtered distribution), as does greedy decoding
        (temperature 0: one token, probability 1).
        """
        V, h = self.vocab_size, self.context_width

        def reweight(ctx: np.ndarray, support: np.ndarray, p: np.ndarray, log_p: np.ndarray
                     ) -> np.ndarray:
            L = ctx.shape[0]
            if L < h or self.alpha == 0.0 or support.size <= 1:
                return log_p
            row = int(self.rows(ctx[L - h:][None, :])[0])
            log_f, log_total = self.reweight(p, row, support=None if support.size == V
                                             else support)
            log_p = log_p + log_f
            if log_total != 0.0:
                log_p -= log_total
            return log_p

        return reweighted_log_probs(logits, contexts, V, prompt_width=prompt_width,
                                    temperature=temperature, top_p=top_p, reweight=reweight)
