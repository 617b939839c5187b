"""The keyed green-list watermark (Kirchenbauer et al. 2023, "KGW"), used by generation and detection.

How it works
------------
The vocabulary is split, for each *context*, into a green part (fraction ``gamma``) and a red
part; generation adds ``delta`` to the logits of green tokens, so watermarked text holds more
green tokens than the ``gamma`` expected by chance, which a binomial test detects.

Here the split is a keyed table of ``n_lists`` green lists, and a context selects one row:

* ``row(window)``: the window is the ``h = context_width`` tokens before the scored token
  (``seeding="lefthash"``), or those and the scored token itself (``"selfhash"``: a candidate is
  green only if it is green in the list chosen by a window that contains it). The window's tokens
  are mapped to keyed 64-bit values ``P[t]`` and combined, ``"hash"``: ``sum_j rotl(P[w_j],
  23 j)`` (order matters, every token counts), or ``"min"``: ``min_j P[w_j]`` (one edited token
  changes the row only if it held the minimum: more robust, slightly weaker); then MurmurHash3's
  finaliser, whose top ``log2(n_lists)`` bits are the row. ``h = 0`` is the fixed "unigram" list.
* ``green(row, token) = U[row * V + token] < round(gamma * 2**32)``, ``U`` the keyed ``uint32``
  stream of :mod:`~distillmark.watermark.prf`. Every (row, token) cell is an independent
  Bernoulli(``gamma_effective``) draw, with ``gamma_effective = round(gamma * 2**32) / 2**32``.

Why a table of rows: a green list for a fresh context would cost one PRF call per vocabulary
entry per generated token (49,152 here), too slow for serving; a row of the precomputed table is
one memory read. A table of more than 2**26 cells (more than 1,024 lists at V = 49,152) is not
held whole: generation computes each row it meets (one AES-CTR run of ``V`` values) and
keeps the last 4,096, detection computes one cell per distinct tuple key.

Why it keeps the test exact: the green bit depends on the context only through
``(row, token)``, the *tuple key* (:meth:`GreenList.tuple_keys`). Detection counts each distinct
tuple key once; distinct keys are distinct table cells, independent Bernoulli(gamma) under the
null hypothesis that the text was written without the key, so the count of green keys is exactly
Binomial(n_unique, gamma_effective). Two contexts that share a row merge into one tuple key: the
test loses a little power but never validity.

The parameters default to what the mission needs: ``h = 1`` (previous token), lefthash, "hash",
gamma 0.25, delta 2. A student model trained on watermarked answers learns an ``h = 1`` mark far
more easily than a wider one (Sander et al. 2024: log10 p of -43.7, -10.2 and -1.4 for h = 1, 2
and 4 in one setting), and radioactivity is what catches distillation. And 65,536 lists: with
``h = 1`` the previous token picks the list, and with few lists many previous tokens share one,
so a continuation common to them ("the" after many words) is a single cell of every test; with
65,536 lists nearly every token of a 49,152-token vocabulary has a list of its own, and a
student trained on 5% watermarked answers gave p = 10^-12.4 (black box) and 10^-15.7 (open
weights) against 10^-7.4 and 10^-7.0 with 256 lists (docs/benchmarks.md). The rows are then
computed as met rather than held. The price: small ``h`` is the easiest to *steal* (estimate
green lists from watermarked outputs, then spoof or scrub); docs/schemes/greenlist.md gives the
trade-off. Keys record their parameters, so a key made with another default keeps its lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import prf
from .context import RowParams, RowScheme
from .errors import ParameterError
from .sampling import check_logits

__all__ = ["SCHEME_NAME", "GreenList", "GreenListParams"]

SCHEME_NAME = "greenlist"
_SEEDINGS = ("lefthash", "selfhash")
_MAX_LISTS = 65536
# Unique tuple keys above which detection builds the whole table instead of one AES block each.
_TABLE_THRESHOLD = 262_144
_TABLE_CHUNK_CELLS = 1 << 24
#: Tables of at most this many cells are held whole (256 lists x 49,152 tokens: 12.6M cells,
#: 50 MB as float32 deltas); larger ones (many lists, the default 65,536 among them) are
#: computed a row at a time.
_DENSE_MAX_CELLS = 1 << 26
#: Rows kept by a scheme whose table is not held whole (4,096 x 49,152 bools: 200 MB).
_ROW_CACHE = 4096


@dataclass(frozen=True)
class GreenListParams(RowParams):
    """Parameters of the green-list scheme (validated on construction).

    Attributes:
        gamma: fraction of the vocabulary that is green, in (0, 1).
        delta: logit bias added to green tokens at generation, >= 0.
        context_width: ``h``, tokens before the scored one that select its list (0 to 8).
        seeding: ``"lefthash"`` or ``"selfhash"`` (the scored token is part of the window).
        combine: how a window of h >= 2 tokens is combined, ``"hash"`` or ``"min"``.
        n_lists: number of green lists (rows of the keyed table), a power of two <= 65536.
        top_k: selfhash generation checks this many top candidates per step (as transformers).
    """

    scheme_name = SCHEME_NAME

    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 1
    seeding: str = "lefthash"
    combine: str = "hash"
    n_lists: int = 65536
    top_k: int = 40

    def __post_init__(self) -> None:
        self.check_gamma()
        if self.number("delta") < 0.0:
            raise ParameterError(f"`delta` must be >= 0, got {self.delta}")
        self.check_context_width()
        self.choice("seeding", _SEEDINGS)
        if self.seeding == "selfhash" and self.context_width < 1:
            raise ParameterError("`context_width` must be >= 1 with seeding 'selfhash', got 0")
        self.check_rows(_MAX_LISTS)
        if self.integer("top_k") < 1:
            raise ParameterError(f"`top_k` must be >= 1, got {self.top_k}")
        self._store("gamma", float(self.gamma))
        self._store("delta", float(self.delta))


class GreenList(RowScheme, name=SCHEME_NAME, params_class=GreenListParams, default_effect=0.65,
                samples=False, test="binomial"):
    """The green-list scheme for one spec: ``bias`` for generation, tuple keys and green bits for
    detection. Both sides call the same functions, so they cannot drift apart.

    Built as every :class:`~.context.RowScheme`, with :class:`GreenListParams`.
    """

    def __init__(self, secret: bytes, params: GreenListParams, vocab_size: int, *,
                 key_id: str = "") -> None:
        super().__init__(secret, params, vocab_size, key_id=key_id,
                         selfhash=params.seeding == "selfhash")
        self.threshold = round(params.gamma * 2.0**32)
        #: The exact probability that a cell is green: the binomial test's null parameter.
        self.gamma_effective = self.threshold / 2.0**32
        self.test_params = {"p": self.gamma_effective}

    # -- keyed tables ------------------------------------------------------------------------
    @property
    def token_values(self) -> np.ndarray:
        """``P``: one keyed uint64 per token id, ``(V,) uint64``."""
        return self.context.token_values

    @property
    def dense(self) -> bool:
        """Whether the whole table is held in memory (at most ``2**26`` cells); with more
        lists, generation computes the rows it meets (:meth:`green_row`, cached) and detection
        one cell per tuple key."""
        return self.n_rows * self.vocab_size <= _DENSE_MAX_CELLS

    def green_row(self, row: int) -> np.ndarray:
        """Green list ``row``: ``(V,) bool``, a row of :attr:`table` (computed alone, and the
        last :data:`_ROW_CACHE` kept, when the table is not held whole)."""
        if self.dense:
            return self.table[row]
        cache = self.__dict__.setdefault("_row_cache", {})
        out = cache.get(row)
        if out is None:
            V = self.vocab_size
            out = prf.u32_stream(self._table_key, V, start=row * V) < self.threshold
            if len(cache) >= _ROW_CACHE:
                del cache[next(iter(cache))]
            cache[row] = out
        return out  # type: ignore[no-any-return]

    @cached_property
    def table(self) -> np.ndarray:
        """The green table: ``(n_rows, V) bool``, ``table[r, t]`` = token t green in list r
        (``n_rows * V`` bytes: with many lists, use :meth:`green_row` and :meth:`key_scores`)."""
        return self.build_table(bool, _TABLE_CHUNK_CELLS, lambda start, n: prf.u32_stream(
            self._table_key, n, start=start) < self.threshold)

    @cached_property
    def delta_table(self) -> np.ndarray:
        """``delta`` where the table is green, 0 elsewhere: ``(n_rows, V) float32``.

        What generation adds to the logits: one row gather and one add per step
        (``n_rows * V * 4`` bytes: 50 MB for 256 lists at V = 49,152).
        """
        return self.table.astype(np.float32) * np.float32(self.params.delta)

    # -- detection ---------------------------------------------------------------------------
    def key_scores(self, keys: np.ndarray) -> np.ndarray:
        """Green bit of each tuple key: ``(n,) uint64 -> (n,) bool``."""
        keys = np.asarray(keys, dtype=np.uint64)
        if "table" in self.__dict__ or (keys.size > _TABLE_THRESHOLD and self.dense):
            return self.table.reshape(-1)[keys.astype(np.intp)]
        out = np.empty(keys.size, dtype=bool)
        for i in range(0, keys.size, _TABLE_CHUNK_CELLS):
            np.less(prf.u32_at(self._table_key, keys[i:i + _TABLE_CHUNK_CELLS]),
                    self.threshold, out=out[i:i + _TABLE_CHUNK_CELLS])
        return out

    def green_indicators(self, ids: np.ndarray) -> np.ndarray:
        """Per-token green indicator of every scorable token: ``(n,) -> (max(n - h, 0),) bool``.

        No deduplication here: that is the test's job (see ``distillmark.verify``).
        """
        return self.key_scores(self.tuple_keys(ids))

    # -- generation --------------------------------------------------------------------------
    def bias(self, logits: np.ndarray, contexts: np.ndarray) -> np.ndarray:
        """Watermarked copy of ``logits``: ``logits (B, W) float``, ``contexts (B, c) int``.

        ``contexts`` holds each row's tokens so far (prompt included), right-aligned; only the
        last ``h`` are read. ``W`` may exceed ``V`` (padded logits): columns ``>= V`` are left as
        they are. With fewer than ``h`` context tokens the step is left unwatermarked.
        """
        V = self.vocab_size
        logits, contexts = check_logits(logits, contexts, V)
        out = np.array(logits, dtype=np.result_type(logits.dtype, np.float32), copy=True)
        h = self.context_width
        if contexts.shape[1] < h or self.params.delta == 0.0:
            return out
        ctx = contexts[:, contexts.shape[1] - h:]
        if self.params.seeding == "lefthash":
            rows = self.rows(ctx)
            if self.dense:
                out[:, :V] += self.delta_table[rows]
            else:  # a row times delta, added: as the table's row (a masked add is 10x slower)
                d = out.dtype.type(self.params.delta)
                for b, r in enumerate(rows.tolist()):
                    np.add(out[b, :V], self.green_row(r) * d, out=out[b, :V])
            return out
        cand, green = self.selfhash_candidates(out[:, :V], ctx)
        np.add.at(out, (np.arange(out.shape[0])[:, None], cand),
                  out.dtype.type(self.params.delta) * green)
        return out

    def bias_(self, logits: np.ndarray, windows: Sequence[Sequence[int]]) -> None:
        """:meth:`bias` in place for lefthash seeding, one generation step: ``logits (B, W)
        float32`` (writable; a numpy view of an engine's buffer) gets ``delta`` added to the
        green columns of row ``b``'s list, ``windows[b]`` being its last ``h`` tokens (all in
        the vocabulary). Rows from :meth:`ContextRows.row_of` and one add per batch row: no
        ``(B, V)`` temporary. Same result as :meth:`bias`."""
        if self.params.seeding != "lefthash":
            raise ParameterError("bias_ is for lefthash seeding; selfhash needs the logits "
                                 "(use bias)")
        if self.params.delta == 0.0:
            return
        V = self.vocab_size
        table = self.delta_table if self.dense else None
        d = logits.dtype.type(self.params.delta)
        row_of = self.context.row_of
        for b, win in enumerate(windows):
            if win and not 0 <= min(win) <= max(win) < V:
                bad = min(win) if min(win) < 0 else max(win)
                raise ParameterError(f"token id {bad} is outside the spec's vocabulary "
                                     f"0..{V - 1} (wrong tokenizer?)")
            if table is not None:
                np.add(logits[b, :V], table[row_of(win)], out=logits[b, :V])
            else:
                np.add(logits[b, :V], self.green_row(row_of(win)) * d, out=logits[b, :V])

    def in_place_bias(self) -> GreenList:
        """The scheme itself: engines add its bias to their logits in place (:meth:`bias_`,
        or on the logits' device), not through :meth:`process`."""
        return self

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """The engine-neutral generation hook every adapter calls: here, :meth:`bias`.

        ``prompt_width``, ``temperature`` and ``top_p`` matter only to sampling schemes; a
        logit-bias scheme leaves sampling to the engine.
        """
        return self.bias(logits, contexts)

    def selfhash_candidates(self, logits: np.ndarray, ctx: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Selfhash: the top-k candidates per row and whether each is green.

        ``logits (B, V)``, ``ctx (B, h)`` -> ``cand (B, k) int64``, ``green (B, k) bool``.
        """
        k = min(self.params.top_k, logits.shape[1])
        cand = np.argpartition(-logits, k - 1, axis=1)[:, :k].astype(np.int64)
        return cand, self.candidate_green(ctx, cand)

    def candidate_green(self, ctx: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Green bit of candidates ``cand (B, k)`` after contexts ``ctx (B, h)``: ``(B, k) bool``."""
        B, k = cand.shape
        win = np.concatenate([np.broadcast_to(ctx[:, None, :], (B, k, ctx.shape[1])),
                              cand[:, :, None]], axis=2)
        rows = self.rows(win)
        if self.dense:
            return self.table[rows, cand]
        keys = rows.astype(np.uint64) * np.uint64(self.vocab_size) + cand.astype(np.uint64)
        return self.key_scores(keys.ravel()).reshape(B, k)
