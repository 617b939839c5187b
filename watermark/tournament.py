"""Tournament sampling (SynthID-Text, Dathathri et al. 2024), used by generation and detection.

How it works
------------
Every (context, token) pair carries ``m = depth`` keyed bits, the *g-values*
``g_0 .. g_{m-1}``, independent fair coins under the key. Generation replaces the model's
next-token distribution ``p`` by the distribution of the winner of an ``m``-layer knock-out
tournament between ``2**m`` independent draws from ``p``, where each match goes to the draw whose
``g_l`` is larger (ties at random). With two players per match this has a closed form, applied
layer after layer::

    p  <-  p * (1 + g_l - sum_t g_l(t) p(t))          for l = 0 .. m-1

Averaged over keys the update changes nothing (``E[g_l(t)] = 1/2`` for every token, so
``E[1 + g_l(t) - sum g_l p] = 1``, layer after layer): the scheme is non-distortionary per step.
For one key the winner tends to have g-values of 1, which detection counts.

Here the g-values live in a keyed table, like the green-list scheme's:

* ``row(window)``: the ``h = context_width`` tokens before the scored one select one of
  ``n_lists`` rows (:class:`~distillmark.watermark.context.ContextRows`, token values from the
  sub-key ``"tournament/token-values"``, ``"hash"`` or ``"min"`` combine); ``h = 0`` is one
  fixed row.
* ``cell(row, t)`` is element ``row * V + t`` of the keyed ``uint64`` stream of the sub-key
  ``"tournament/table"`` (:mod:`~distillmark.watermark.prf`), and ``g_l(row, t)`` is its bit
  ``l`` (``l = 0`` is the first layer applied). Distinct cells, and distinct bits of one cell,
  are independent fair coins.

The *tuple key* ``row * V + t`` names the cell; detection deduplicates on it, so under the null
hypothesis (text written without the key) the scored g-values are ``n * m`` independent
Bernoulli(1/2) bits and both tests (``distillmark.verify.nulls``) are exact:

* ``"tournament-mean"``: the number of ones, Binomial(``n m``, 1/2);
* ``"tournament-weighted"``: ``sum_l w_l sum_t g_{t,l}`` with integer weights (default
  ``m, m-1, .., 1``: the first layers carry the most signal), whose exact null is the law of
  ``sum_l w_l B_l`` with ``B_l ~ Binomial(n, 1/2)`` independent.

Repeated contexts (``mask_repeated_contexts``): when the current ``h``-token window already
preceded a token generated earlier in the same completion, the step is left unwatermarked (as
SynthID does) so that a loop is not pushed towards the same tokens again. The check reads the
row's own generated tokens, so :meth:`Tournament.process` stays a pure function of its inputs.
Detection still scores those steps: their g-values are fair coins under the null (validity
holds) and carry no signal under the alternative (a little power is lost).

Context width: ``h = 4`` by default, SynthID's ``ngram_len = 5`` (four previous tokens and the
candidate). A smaller ``h`` is much easier for a student model distilled on watermarked text to
learn (which is what detects distillation) but also easier to steal, and with masking on more
steps repeat a short window; docs/schemes/tournament.md discusses the trade-off.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import prf
from .context import RowParams, RowScheme
from .errors import ParameterError
from .sampling import reweighted_log_probs

__all__ = ["SCHEME_NAME", "SCORES", "Tournament", "TournamentParams", "tournament_log_factors",
           "tournament_update"]

SCHEME_NAME = "tournament"
#: Detection scores (``TournamentParams.score``) -> test name in ``distillmark.verify.nulls``.
SCORES = {"weighted": "tournament-weighted", "mean": "tournament-mean"}
_MAX_DEPTH = 64
_MAX_LISTS = 65536
_MAX_WEIGHT = 1024
# Running probabilities below this stop counting towards the layer sums s_l (their share is
# below 1e-195; as subnormals they would only slow float64 down).
_FLUSH = 1e-200
_ROW_CACHE = 32
# A support below V / this reads its cells one AES block each instead of the whole row.
_RANDOM_ACCESS_SHARE = 16
# Supports up to this size run the plain layer-by-layer loop.
_SMALL_SUPPORT = 256
#: ``_BYTE_BITS[j, b]`` = bit ``j`` of byte value ``b``, as 0.0 / 1.0: ``(8, 256) float64``.
_BYTE_BITS = ((np.arange(256)[None, :] >> np.arange(8)[:, None]) & 1).astype(np.float64)


@dataclass(frozen=True)
class TournamentParams(RowParams):
    """Parameters of the tournament scheme (validated on construction).

    Attributes:
        depth: ``m``, tournament layers = g-values per (context, token), 1..64.
        context_width: ``h``, tokens before the scored one that select its row (0 to 8).
        combine: how a window of ``h >= 2`` tokens is combined, ``"hash"`` or ``"min"``.
        n_lists: rows of the keyed table, a power of two <= 65536.
        mask_repeated_contexts: leave a step unwatermarked when its context window already
            preceded an earlier generated token of the same completion.
        weights: one non-negative integer weight per layer for the weighted score; ``None``
            means ``depth, depth - 1, .., 1`` (stored resolved, so a spec records them).
        score: detection's test, ``"weighted"`` or ``"mean"``.
    """

    scheme_name = SCHEME_NAME
    numpy_integers = True

    depth: int = 30
    context_width: int = 4
    combine: str = "hash"
    n_lists: int = 256
    mask_repeated_contexts: bool = True
    weights: tuple[int, ...] | None = None
    score: str = "weighted"

    def __post_init__(self) -> None:
        m = self.integer("depth")
        if not 1 <= m <= _MAX_DEPTH:
            raise ParameterError(f"`depth` must be in 1..{_MAX_DEPTH} (one uint64 per cell "
                                 f"holds the layer bits), got {m}")
        self.check_context_width()
        self.check_rows(_MAX_LISTS)
        self.flag("mask_repeated_contexts")
        self.choice("score", tuple(SCORES))
        w = self.weights
        if w is None:
            w = tuple(range(m, 0, -1))
        if isinstance(w, (str, bytes)) or not isinstance(w, Sequence):
            raise ParameterError(f"`weights` must be a list of {m} integers, got {w!r}")
        if len(w) != m:
            raise ParameterError(f"`weights` must have one entry per layer (depth = {m}), "
                                 f"got {len(w)}: {list(w)!r}")
        if any(not self.is_integer(x) or not 0 <= x <= _MAX_WEIGHT for x in w):
            raise ParameterError(f"`weights` must be integers in 0..{_MAX_WEIGHT}, "
                                 f"got {list(w)!r}")
        if not any(w):
            raise ParameterError(f"`weights` must not all be 0, got {list(w)!r}")
        self._store("weights", tuple(int(x) for x in w))
        for name in ("depth", "context_width", "n_lists"):
            self._store(name, int(getattr(self, name)))


def _byte_factors(mass: np.ndarray, first: int, depth: int) -> np.ndarray:
    """Layers ``first .. first + 7`` (those below ``depth``) on the 256 values of one byte of
    the cell: ``mass (256,)`` the probability per byte value -> ``(256,)`` the product of their
    factors ``1 + g_l - s_l`` per byte value."""
    factor = np.ones(256)
    for layer in range(first, min(first + 8, depth)):
        g = _BYTE_BITS[layer - first]  # (256,) this layer's bit of each byte value
        s = min(max(float(np.dot(g, mass * factor)), 0.0), 1.0)  # rounding: keep 1 - s >= 0
        factor *= g + (1.0 - s)
    return factor


def tournament_log_factors(p: np.ndarray, cells: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth``-layer tournament as a log-reweighting of one distribution.

    ``p: (k,) float64`` probabilities (summing to 1), ``cells: (k,) uint`` the keyed cell of each
    of the ``k`` tokens (bit ``l`` is ``g_l``) -> ``(k,) float64``, the log of the factor each
    probability is multiplied by (``-inf``: the token cannot win), normalised so that
    ``p * exp(result)`` sums to 1. Layer by layer the update is ``p <- p * (1 + g_l - s_l)``
    with ``s_l = sum_t g_l(t) p(t)``.

    Computed eight layers at a time: within a block the factor a token receives depends only on
    its byte of the cell, so the block's ``s_l`` are sums over the 256 byte values of the mass
    per byte (one ``bincount``), and the tokens are updated by one gather of the block's 256
    factors. The same numbers as the layer-by-layer loop up to rounding, in a few passes over
    the vocabulary per block instead of ~5 per layer (small ``k``: the plain loop).
    Probabilities below 1e-200 stop counting towards ``s_l`` (as subnormals they would only
    make float64 slow); their log-factors stay exact.
    """
    q = np.array(p, dtype=np.float64, copy=True)
    log_f = np.zeros(q.shape, dtype=np.float64)
    kind = cells.dtype.type
    with np.errstate(divide="ignore"):
        if q.size <= _SMALL_SUPPORT:
            shifts = np.arange(depth, dtype=cells.dtype)[:, None]
            bits = ((cells[None, :] >> shifts) & kind(1)).astype(np.float64)  # (depth, k)
            for g in bits:
                factor = g + (1.0 - min(max(float(np.dot(g, q)), 0.0), 1.0))
                q *= factor
                log_f += np.log(factor)
            return log_f - math.log(q.sum())
        for start in range(0, depth, 8):
            byte = ((cells >> kind(start)) & kind(0xFF)).astype(np.intp)
            factor = _byte_factors(np.bincount(byte, weights=q, minlength=256), start, depth)
            q *= factor[byte]
            q[q < _FLUSH] = 0.0
            log_f += np.log(factor)[byte]
    return log_f - math.log(q.sum())


def tournament_update(p: np.ndarray, cells: np.ndarray, depth: int) -> np.ndarray:
    """The winner's distribution: ``p * exp(tournament_log_factors(p, cells, depth))``,
    ``(k,) float64``."""
    return np.asarray(p, dtype=np.float64) * np.exp(tournament_log_factors(p, cells, depth))


class Tournament(RowScheme, name=SCHEME_NAME, params_class=TournamentParams, default_effect=0.6,
                 samples=True):
    """The tournament scheme for one spec: :meth:`process` for generation, tuple keys and
    g-values for detection. Both sides read the same keyed cells, so they cannot drift apart.

    Built as every :class:`~.context.RowScheme`, with :class:`TournamentParams`.
    """

    def __init__(self, secret: bytes, params: TournamentParams, vocab_size: int, *,
                 key_id: str = "") -> None:
        super().__init__(secret, params, vocab_size, key_id=key_id)
        self.depth = params.depth
        self.weights: tuple[int, ...] = tuple(params.weights or ())
        #: Detection's test (see ``distillmark.verify.nulls``) and its null parameters.
        self.test = SCORES[params.score]
        self.test_params: dict[str, Any] = (
            {"weights": self.weights} if params.score == "weighted" else {})
        self._cell_dtype = np.uint32 if self.depth <= 32 else np.uint64
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- keyed cells -------------------------------------------------------------------------
    def cells(self, keys: np.ndarray) -> np.ndarray:
        """Keyed cell of each tuple key: ``(n,) uint64 -> (n,) uint64``; bit ``l`` is ``g_l``.

        The stream element, reduced to its low 32 bits when ``depth <= 32`` (only bits below
        ``depth`` are ever read). Random access: one AES block per key.
        """
        keys = np.asarray(keys, dtype=np.uint64).ravel()
        if keys.size and int(keys.max()) >= self.n_rows * self.vocab_size:
            raise ParameterError(f"tuple key {int(keys.max())} is outside the table "
                                 f"({self.n_rows} rows x {self.vocab_size} tokens)")
        cells = prf.u64_at(self._table_key, keys)
        if self.depth <= 32:
            return cells & np.uint64(0xFFFFFFFF)
        return cells

    def row_cells(self, row: int) -> np.ndarray:
        """The cells of one row, every token: ``(V,) uint32`` (depth <= 32) or ``uint64``.

        Read from the stream in bulk; the last few rows are kept.
        """
        row = int(row)
        cached = self._rows.get(row)
        if cached is not None:
            self._rows.move_to_end(row)
            return cached
        if not 0 <= row < self.n_rows:
            raise ParameterError(f"`row` must be in 0..{self.n_rows - 1}, got {row}")
        V = self.vocab_size
        cells = prf.u64_stream(self._table_key, V, start=row * V)
        if self._cell_dtype is np.uint32:
            cells = (cells & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        cells.setflags(write=False)
        self._rows[row] = cells
        if len(self._rows) > _ROW_CACHE:
            self._rows.popitem(last=False)
        return cells

    def g_values(self, cells: np.ndarray) -> np.ndarray:
        """Layer bits of cells: ``(n,) uint -> (n, m) uint8``, column ``l`` = ``g_l``."""
        cells = np.asarray(cells, dtype=np.uint64)
        shifts = np.arange(self.depth, dtype=np.uint64)
        return ((cells[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)

    # -- detection ---------------------------------------------------------------------------
    def key_scores(self, keys: np.ndarray) -> np.ndarray:
        """g-values of each tuple key: ``(n,) uint64 -> (n, m) uint8`` of 0/1."""
        return self.g_values(self.cells(keys))

    def token_g_values(self, ids: np.ndarray) -> np.ndarray:
        """g-values of every scorable token, no deduplication: ``(n,) -> (max(n-h,0), m)``."""
        return self.key_scores(self.tuple_keys(ids))

    # -- generation --------------------------------------------------------------------------
    def is_repeated_context(self, context: np.ndarray, prompt_width: int) -> bool:
        """Whether the last ``h`` tokens of ``context (L,) int`` already preceded a generated
        token (one at a position ``>= prompt_width``): the step is then left unwatermarked.

        Always False with masking off or ``h = 0`` (there is no context to repeat).
        """
        h = self.context_width
        L = context.shape[0]
        if not self.params.mask_repeated_contexts or h == 0 or L < h:
            return False
        first = max(prompt_width, h)  # earliest generated position with a full window
        if first > L - 1:
            return False
        current = context[L - h:]
        earlier = np.lib.stride_tricks.sliding_window_view(context[first - h:L - 1], h)
        return bool((earlier == current).all(axis=1).any())

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """The engine-neutral generation hook: the watermarked next-token log-probabilities
        ``(B, W)`` of ``logits (B, W)`` after ``contexts (B, L)``, as
        :func:`~distillmark.watermark.sampling.reweighted_log_probs` describes them (the
        engine samples them at temperature 1 with no other filter).

        Each row's distribution goes through the tournament of the table row its last ``h``
        context tokens select; the context's tokens from ``prompt_width`` on are the generated
        ones, read by the repeated-context check. Fewer than ``h`` context tokens, or a
        repeated context, leave the step unwatermarked (``log p`` of the tempered, filtered
        distribution); greedy decoding (temperature 0: one token, probability 1) is left as it
        is.
        """
        V, h = self.vocab_size, self.context_width

        def reweight(ctx: np.ndarray, support: np.ndarray, p: np.ndarray, log_p: np.ndarray
                     ) -> np.ndarray:
            L = ctx.shape[0]
            if L < h or self.is_repeated_context(ctx, prompt_width):
                return log_p
            row = int(self.rows(ctx[L - h:][None, :])[0])
            if support.size == V:
                cells = self.row_cells(row)
            elif support.size * _RANDOM_ACCESS_SHARE < V:  # read only the support's cells
                cells = self.cells(np.uint64(row * V) + support.astype(np.uint64))
            else:
                cells = self.row_cells(row)[support]
            return log_p + tournament_log_factors(p, cells, self.depth)

        return reweighted_log_probs(logits, contexts, V, prompt_width=prompt_width,
                                    temperature=temperature, top_p=top_p, reweight=reweight)
