"""The Gumbel-max / exponential watermark (Aaronson 2022, "EXP"): distortion-free keyed sampling.

How it works
------------
Each context selects a row of keyed uniforms ``r[row, t]`` in (0, 1), one per token. Instead of
sampling the next token from its distribution ``p``, generation takes

    t* = argmax_t r_t ** (1 / p_t)  =  argmin_t E_t / p_t,   E_t = -log(r_t),

over the tokens with ``p_t > 0``. With the ``E_t`` independent Exp(1) draws this is an
exponential race: ``P(t* = t) = p_t`` exactly, so *averaged over keys* every step is an
unbiased sample of ``p`` (distortion-free). For one key it is deterministic: the same context and
the same distribution always give the same token. The chosen token tends to have a large
``r``, which detection measures with ``-log(1 - r)`` (Exp(1) under the null, larger when
watermarked); see the ``gamma`` test in ``distillmark.verify.nulls``.

Keyed values
------------
* Rows: the ``h = context_width`` tokens before a token select one of ``n_lists`` rows through
  :class:`~distillmark.watermark.context.ContextRows` (sub-key ``"gumbel/token-values"``,
  ``combine`` ``"hash"`` or ``"min"``, lefthash only); ``h = 0`` uses row 0 for every token.
* Cells: ``r[row, t]`` is element ``c = row * V + t`` of the keyed ``uint64`` stream of sub-key
  ``"gumbel/table"`` (:func:`~distillmark.watermark.prf.u64_stream`), mapped to (0, 1) by

      r = (2 * (u >> 12) + 1) * 2**-53,

  the midpoints of the 2**52 cells of a uniform grid. Every such value is an odd integer below
  2**53 times a power of two, so it is *exactly* a float64 (no rounding), it lies in
  [2**-53, 1 - 2**-53] (never 0 or 1: ``log r`` and ``log(1 - r)`` are always finite), and the
  grid is symmetric, so ``1 - r`` is exact too. ``r`` is uniform on that grid: its CDF differs
  from U(0, 1)'s by at most 2**-53, far below anything a test resolves.

The *tuple key* of a scored token is ``row * V + token`` (the cell index), as for the green-list
scheme; :meth:`Gumbel.key_scores` returns the cell's ``r`` as float64, computed from the PRF
itself, never from a rounded copy.

Generation and its table
------------------------
For speed, generation keeps ``float32(E)`` for every cell of the ``n_lists x V`` table (4 bytes
a cell: 50 MB at 256 lists and V = 49,152) and finds the argmin of ``E32_t / p_t``. float32
rounding changes each ratio by a relative 2**-24 at most, so every token whose ratio lies within
a relative 2**-20 of the minimum is a candidate; the winner among candidates is decided with the
exact float64 ``E`` from the PRF. The choice is therefore that of the exact definition (ties:
the lowest token id), whatever path computed it. A step whose distribution has few tokens
(top-p, top-k, ``-inf`` logits) and no table yet is computed from the exact values directly.

Where ``p`` comes from: ``temperature`` (logits / T), then ``top_k`` (the scheme parameter;
tokens below the k-th largest logit are dropped, ties kept), then softmax in float64, then
``top_p`` (the smallest set of most likely tokens whose mass reaches ``top_p``, renormalised).
Temperature 0 is plain greedy decoding, without a watermark. With fewer than ``h`` context
tokens the step uses row 0 (such tokens are never scored: detection starts after ``h`` tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from . import prf
from .context import RowParams, RowScheme
from .errors import ParameterError
from .sampling import check_logits, nucleus

__all__ = ["SCHEME_NAME", "Gumbel", "GumbelParams", "uniforms_from_u64"]

SCHEME_NAME = "gumbel"
_MAX_LISTS = 4096
_TABLE_CHUNK_CELLS = 1 << 22
# Generation without a table: steps whose distribution has at most this many tokens.
_DIRECT_SUPPORT = 4096
# Relative slack of the float32 candidate search (float32 rounding is at most 2**-24).
_CANDIDATE_SLACK = 2.0 ** -20
_TWO_M53 = 2.0 ** -53


def uniforms_from_u64(u: np.ndarray) -> np.ndarray:
    """The keyed uniforms: ``u (...) uint64 -> r = (2 (u >> 12) + 1) 2**-53, (...) float64``.

    Exact in float64, in ``[2**-53, 1 - 2**-53]``; see the module docstring.
    """
    k = (np.asarray(u, dtype=np.uint64) >> np.uint64(12)).astype(np.float64)
    return (2.0 * k + 1.0) * _TWO_M53


@dataclass(frozen=True)
class GumbelParams(RowParams):
    """Parameters of the Gumbel-max scheme (validated on construction).

    Attributes:
        context_width: ``h``, tokens before the next one that select its row (0 to 8).
        combine: how a window of h >= 2 tokens is combined, ``"hash"`` or ``"min"``.
        n_lists: rows of the keyed table, a power of two <= 4096 (generation holds
            ``n_lists * V`` float32: 50 MB for 256 rows at V = 49,152).
        top_k: generation keeps only the tokens whose logit is at least the k-th largest
            (ties kept) before softmax; 0 keeps all.
    """

    scheme_name = SCHEME_NAME

    context_width: int = 2
    combine: str = "hash"
    n_lists: int = 256
    top_k: int = 0

    def __post_init__(self) -> None:
        self.check_context_width()
        self.check_rows(_MAX_LISTS)
        if self.integer("top_k") < 0:
            raise ParameterError(f"`top_k` must be >= 0 (0 = off), got {self.top_k}")


class Gumbel(RowScheme, name=SCHEME_NAME, params_class=GumbelParams, default_effect=0.8,
             samples=True, test="gamma"):
    """The Gumbel-max scheme for one spec: keyed sampling for generation, tuple keys and keyed
    uniforms for detection, from the same functions. ``process`` returns the chosen token (0
    there, -inf elsewhere): the engine must sample that distribution as it is (temperature 1,
    no other warper).

    Built as every :class:`~.context.RowScheme`, with :class:`GumbelParams`.
    """

    def __init__(self, secret: bytes, params: GumbelParams, vocab_size: int, *,
                 key_id: str = "") -> None:
        super().__init__(secret, params, vocab_size, key_id=key_id)
        self.test_params: dict[str, Any] = {}

    # -- keyed values ------------------------------------------------------------------------
    def uniforms(self, cells: np.ndarray) -> np.ndarray:
        """Exact keyed uniforms of table cells ``row * V + token``: ``(n,) int -> (n,) float64``.

        One AES block per cell; above a few hundred thousand cells the stream is read in
        bulk instead (same values).
        """
        return uniforms_from_u64(self.table_values(cells))

    @cached_property
    def table(self) -> np.ndarray:
        """``float32(-log r)`` of every cell: ``(n_rows, V) float32`` (generation's fast path).

        Built on first use (``n_rows * V * 4`` bytes); detection never needs it.
        """
        return self.build_table(np.float32, _TABLE_CHUNK_CELLS, lambda start, n: -np.log(
            uniforms_from_u64(prf.u64_stream(self._table_key, n, start=start))))

    # -- detection ---------------------------------------------------------------------------
    def key_scores(self, keys: np.ndarray) -> np.ndarray:
        """Keyed uniform ``r`` of each tuple key: ``(n,) uint64 -> (n,) float64`` in (0, 1)."""
        return self.uniforms(keys)

    def token_uniforms(self, ids: np.ndarray) -> np.ndarray:
        """``r`` of every scorable token, no deduplication: ``(n,) -> (max(n - h, 0),) float64``."""
        return self.key_scores(self.tuple_keys(ids))

    # -- generation --------------------------------------------------------------------------
    def distribution(self, logits: np.ndarray, *, temperature: float = 1.0,
                     top_p: float = 1.0) -> np.ndarray:
        """The next-token distribution generation draws from: ``(B, >= V) -> (B, V) float64``.

        ``logits / temperature``, then the ``top_k`` parameter, softmax, then ``top_p``
        (smallest set of most likely tokens whose mass reaches ``top_p``; ties in probability
        broken by lower token id; renormalised). ``temperature`` must be > 0 here.
        """
        V = self.vocab_size
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] < V:
            raise ParameterError(f"`logits` must be (B, W) with W >= vocab_size {V}, "
                                 f"got shape {logits.shape}")
        _check_sampling(temperature, top_p, allow_zero=False)
        z = logits[:, :V].astype(np.float64)
        if temperature != 1.0:
            z /= temperature
        zmax = z.max(axis=1, keepdims=True)
        if np.isnan(z).any() or not np.isfinite(zmax).all():
            raise ParameterError("`logits` must hold no NaN or +inf and at least one finite "
                                 "value per row")
        k = self.params.top_k
        if 0 < k < V:
            kth = -np.partition(-z, k - 1, axis=1)[:, k - 1:k]
            z[z < kth] = -np.inf
        p = np.exp(z - zmax)
        p /= p.sum(axis=1, keepdims=True)
        if top_p < 1.0:
            for b in range(p.shape[0]):
                keep = nucleus(p[b], top_p)
                kept = p[b, keep]
                p[b] = 0.0
                p[b, keep] = kept / kept.sum()
        return p

    def context_rows(self, contexts: np.ndarray) -> np.ndarray:
        """Row of each generation step: ``contexts (B, c) int -> (B,) int64``.

        The last ``h`` tokens of each row select it; with ``c < h``, row 0.
        """
        contexts = np.asarray(contexts, dtype=np.int64)
        if contexts.ndim != 2:
            raise ParameterError(f"`contexts` must be (B, c), got shape {contexts.shape}")
        h, c = self.context_width, contexts.shape[1]
        if c < h:
            return np.zeros(contexts.shape[0], dtype=np.int64)
        return np.asarray(self.rows(contexts[:, c - h:]), dtype=np.int64).reshape(-1)

    def choose(self, p: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The keyed choice ``argmin_t E[row, t] / p_t`` over ``p_t > 0`` (ties: lowest id).

        ``p (B, V) float64`` (each row a distribution), ``rows (B,) int`` -> ``(B,) int64``.
        """
        p = np.asarray(p, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        V = self.vocab_size
        if p.ndim != 2 or p.shape[1] != V or rows.shape[0] != p.shape[0]:
            raise ParameterError(f"`p` must be (B, {V}) and `rows` (B,), got {p.shape} and "
                                 f"{rows.shape}")
        out = np.empty(p.shape[0], dtype=np.int64)
        for b in range(p.shape[0]):
            pb, base = p[b], int(rows[b]) * V
            if "table" not in self.__dict__:
                support = np.flatnonzero(pb > 0.0)
                if support.size <= _DIRECT_SUPPORT:
                    e = -np.log(self.uniforms(support + base))
                    out[b] = support[np.argmin(e / pb[support])]
                    continue
            with np.errstate(divide="ignore"):
                approx = self.table[rows[b]] / pb  # float64; inf where p = 0
            cand = np.flatnonzero(approx <= approx.min() * (1.0 + _CANDIDATE_SLACK))
            if cand.size > 1:  # a near tie in float32: decide with the exact values
                e = -np.log(self.uniforms(cand + base))
                out[b] = cand[np.argmin(e / pb[cand])]
            else:
                out[b] = cand[0]
        return out

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """The engine-neutral generation hook: the chosen next token of each row.

        ``logits (B, W) float`` (``W >= V``; columns ``>= V`` are never chosen), ``contexts
        (B, c) int`` each row's tokens so far (prompt included, right-aligned; only the last
        ``h`` are read). Returns ``(B, W)`` logits that are 0 at the chosen token and ``-inf``
        elsewhere; the engine's sampler at temperature 1 then emits exactly that token.
        Temperature 0 chooses the largest logit (greedy, no watermark). ``prompt_width`` is
        not used: every generated step is watermarked.
        """
        V = self.vocab_size
        logits, contexts = check_logits(logits, contexts, V)
        _check_sampling(temperature, top_p, allow_zero=True)
        if temperature == 0.0:
            if np.isnan(logits[:, :V]).any():
                raise ParameterError("`logits` must hold no NaN")
            choice = np.argmax(logits[:, :V], axis=1)
        else:
            p = self.distribution(logits, temperature=temperature, top_p=top_p)
            choice = self.choose(p, self.context_rows(contexts))
        out = np.full(logits.shape, -np.inf, dtype=np.result_type(logits.dtype, np.float32))
        out[np.arange(logits.shape[0]), choice] = 0.0
        return out


def _check_sampling(temperature: float, top_p: float, *, allow_zero: bool) -> None:
    def real(v: Any) -> float:
        return float(v) if isinstance(v, (int, float, np.floating, np.integer)) else math.nan

    t = real(temperature)
    if not (math.isfinite(t) and (t >= 0.0 if allow_zero else t > 0.0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ParameterError(f"`temperature` must be finite and {bound}, got {temperature!r}")
    if not 0.0 < real(top_p) <= 1.0:
        raise ParameterError(f"`top_p` must be in (0, 1], got {top_p!r}")
