"""Keyed context hashing shared by the schemes: a window of token ids -> one of ``n_rows`` rows.

A scheme scores token ``ids[i]`` against a keyed table row chosen by a window of tokens:
the ``h`` tokens before it, or those and the token itself ("selfhash"). The window's tokens are
mapped to keyed 64-bit values ``P[t]`` (a keyed ``uint64`` stream, :mod:`.prf`) and combined,
``"hash"``: ``sum_j rotl(P[w_j], 23 j)``, or ``"min"``: ``min_j P[w_j]``; MurmurHash3's
finaliser spreads the result and its top ``log2(n_rows)`` bits are the row.

The *tuple key* of a scored token is ``row * V + token``: equal keys mean the same table cell,
hence the same score, which is what detection deduplicates on.

:class:`ContextRows` is that map; :class:`RowScheme` is the base of the schemes scored this way
(green list, Gumbel, tournament, DiPmark): their keys, rows and table from a spec, and
:class:`RowParams` the checks of the parameters they all have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from . import prf
from .errors import ParameterError
from .params import SchemeParams, SchemeSource

if TYPE_CHECKING:
    from typing import Self

__all__ = ["COMBINES", "MAX_CONTEXT_WIDTH", "ContextRows", "RowParams", "RowScheme"]

COMBINES = ("hash", "min")
#: Rotation step between window positions in the "hash" combine (bits).
ROTATION = 23
#: The widest context a table scheme takes (``h``).
MAX_CONTEXT_WIDTH = 8
#: Tokens per chunk of :meth:`ContextRows.tuple_keys`: its two ``uint64`` buffers (256 KiB)
#: stay in a core's L2 cache.
KEY_CHUNK = 1 << 14


_MASK64 = (1 << 64) - 1


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    if r == 0:
        return x
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


class ContextRows:
    """Window -> row map of one key.

    Args:
        token_key: 32-byte sub-key of the per-token values ``P``.
        vocab_size: ``V``.
        context_width: ``h``, tokens before the scored one in its window.
        selfhash: the window also holds the scored token itself.
        combine: ``"hash"`` or ``"min"``.
        n_rows: number of rows, a power of two (1: every window selects row 0).
    """

    def __init__(self, token_key: bytes, vocab_size: int, *, context_width: int,
                 selfhash: bool, combine: str, n_rows: int) -> None:
        if combine not in COMBINES:
            raise ParameterError(f"`combine` must be one of {', '.join(COMBINES)}, got {combine!r}")
        if n_rows < 1 or n_rows & (n_rows - 1):
            raise ParameterError(f"`n_rows` must be a power of two >= 1, got {n_rows}")
        self._token_key = token_key
        self.vocab_size = vocab_size
        self.context_width = context_width
        self.window = context_width + bool(selfhash)
        self.combine = combine
        self.n_rows = n_rows
        self._shift = np.uint64(64 - int(math.log2(n_rows))) if n_rows > 1 else None

    @cached_property
    def token_values(self) -> np.ndarray:
        """``P``: one keyed uint64 per token id, ``(V,) uint64``."""
        return prf.u64_stream(self._token_key, self.vocab_size)

    @cached_property
    def rows_by_token(self) -> np.ndarray:
        """Row chosen by a one-token window, for every token: ``(V,) int64``."""
        return self._finish(self.token_values.copy())

    def _finish(self, s: np.ndarray) -> np.ndarray:
        if self._shift is None:
            return np.zeros(s.shape, dtype=np.int64)
        return (prf.fmix64(s) >> self._shift).astype(np.int64)

    def check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids.max() if ids.max() >= self.vocab_size else ids.min()
            raise ParameterError(f"token id {int(bad)} is outside the spec's vocabulary "
                                 f"0..{self.vocab_size - 1} (wrong tokenizer?)")

    def rows(self, windows: np.ndarray) -> np.ndarray:
        """Row selected by each window: ``(..., w) int -> (...) int64``, ``w`` = :attr:`window`."""
        windows = np.asarray(windows)
        w = windows.shape[-1]
        if w != self.window:
            raise ParameterError(f"windows must have {self.window} tokens, got {w}")
        self.check_ids(windows)
        if w == 0 or self._shift is None:
            return np.zeros(windows.shape[:-1], dtype=np.int64)
        if w == 1:
            return self.rows_by_token[windows[..., 0]]
        vals = self.token_values[windows]
        if self.combine == "min":
            s = vals.min(axis=-1)
        else:
            s = vals[..., 0].copy()
            for j in range(1, w):
                s += _rotl(vals[..., j], (ROTATION * j) % 64)
        return self._finish(s)

    @cached_property
    def _token_values_list(self) -> list[int]:
        return [int(v) for v in self.token_values.tolist()]

    @cached_property
    def _rows_by_token_list(self) -> list[int]:
        return [int(r) for r in self.rows_by_token.tolist()]

    def row_of(self, window: Sequence[int]) -> int:
        """:meth:`rows` of one window, in Python integers: the same row, without the fixed
        cost of a dozen numpy calls (what one generation step needs). ``window``: :attr:`window`
        token ids, assumed in the vocabulary."""
        w = len(window)
        if w != self.window:
            raise ParameterError(f"windows must have {self.window} tokens, got {w}")
        if w == 0 or self._shift is None:
            return 0
        if w == 1:
            return self._rows_by_token_list[window[0]]
        vals = self._token_values_list
        if self.combine == "min":
            s = min(vals[t] for t in window)
        else:
            s = vals[window[0]]
            for j in range(1, w):
                v, r = vals[window[j]], (ROTATION * j) % 64
                s = (s + (((v << r) | (v >> (64 - r))) & _MASK64 if r else v)) & _MASK64
        return prf.fmix64_int(s) >> int(self._shift)

    def _checked_ids(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` as a 1-D ``int64`` array of token ids in the vocabulary (refused if not)."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ParameterError(f"`ids` must be 1-D, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ParameterError(f"`ids` must hold integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size > self.context_width:
            self.check_ids(ids)
        return ids

    def tuple_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and tokens of every scorable token: ``ids (n,) -> rows, tokens (max(n-h,0),)``.

        Entry ``i`` belongs to token ``ids[h + i]``.
        """
        ids = self._checked_ids(ids)
        h = self.context_width
        n = ids.size - h
        if n <= 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        tokens = ids[h:]
        if self.window == 0 or self._shift is None:
            rows = np.zeros(n, dtype=np.int64)
        elif self.window == 1:
            rows = self.rows_by_token[ids[:n] if h == 1 else tokens]
        else:
            win = np.lib.stride_tricks.sliding_window_view(ids, self.window)
            rows = self.rows(win[:n])
        return rows, tokens

    @cached_property
    def _row_starts(self) -> np.ndarray:
        """First cell of the row a one-token window selects, ``row * V``, for every token:
        ``(V,) uint64``."""
        return self.rows_by_token.astype(np.uint64) * np.uint64(self.vocab_size)

    @cached_property
    def _position_values(self) -> list[np.ndarray]:
        """What window position ``j`` adds to the combined value: ``rotl(P, 23 j)`` for
        "hash", ``P`` itself for "min": :attr:`window` arrays ``(V,) uint64``."""
        P = self.token_values
        if self.combine == "min":
            return [P] * self.window
        return [_rotl(P, (ROTATION * j) % 64) for j in range(self.window)]

    def tuple_keys(self, ids: np.ndarray) -> np.ndarray:
        """Tuple key ``row * V + token`` of every scorable token: ``(max(n-h,0),) uint64``.

        The same keys as ``rows * V + tokens`` of :meth:`tuple_rows`, computed in chunks of
        :data:`KEY_CHUNK` tokens with every step in place, so that a long stream runs at the
        speed of the cache rather than of memory: per chunk, one table read per window
        position (the rotation is in the tables), the finaliser, and the token added.
        """
        ids = self._checked_ids(ids)
        h, w = self.context_width, self.window
        n = ids.size - h
        if n <= 0:
            return np.zeros(0, dtype=np.uint64)
        tokens = ids[h:].view(np.uint64)  # in the vocabulary, so the same bits
        if w == 0 or self._shift is None:
            return tokens.copy()
        out = np.empty(n, dtype=np.uint64)
        scratch = np.empty(min(n, KEY_CHUNK), dtype=np.uint64)
        tables = self._position_values if w > 1 else []
        shift, V = self._shift, np.uint64(self.vocab_size)
        combine = np.minimum if self.combine == "min" else np.add  # uint64 adds wrap mod 2**64
        for a in range(0, n, KEY_CHUNK):
            b = min(n, a + KEY_CHUNK)
            o, t = out[a:b], scratch[:b - a]
            if w == 1:
                np.take(self._row_starts, ids[a:b], out=o, mode="clip")
            else:
                np.take(tables[0], ids[a:b], out=o, mode="clip")
                for j in range(1, w):
                    np.take(tables[j], ids[a + j:b + j], out=t, mode="clip")
                    combine(o, t, out=o)
                prf.fmix64_(o, t)
                np.right_shift(o, shift, out=o)
                np.multiply(o, V, out=o)
            np.add(o, tokens[a:b], out=o)
        return out


@dataclass(frozen=True)
class RowParams(SchemeParams):
    """Base of the parameters of a scheme scored against a keyed table of rows: validators of
    the fields they all have, ``context_width`` (``h``), ``combine`` and ``n_lists``, and of a
    green fraction ``gamma`` for those that have one (each subclass declares the fields, in
    its own order)."""

    def check_context_width(self) -> int:
        """``context_width`` in 0..8."""
        h = self.integer("context_width")
        if not 0 <= h <= MAX_CONTEXT_WIDTH:
            raise ParameterError(f"`context_width` must be in 0..{MAX_CONTEXT_WIDTH}, "
                                 f"got {h}")
        return h

    def check_rows(self, max_lists: int) -> int:
        """``combine`` one of :data:`COMBINES` and ``n_lists`` a power of two in
        1..``max_lists``; returns ``n_lists``."""
        self.choice("combine", COMBINES)
        n = self.integer("n_lists")
        if n < 1 or n > max_lists or n & (n - 1):
            raise ParameterError(f"`n_lists` must be a power of two in 1..{max_lists}, got {n}")
        return n

    def check_gamma(self) -> float:
        """``gamma`` in (0, 1) and representable as a 32-bit threshold
        ``round(gamma * 2**32)`` strictly between 0 and ``2**32``."""
        gamma, given = self.number("gamma"), self.given("gamma")
        if not 0.0 < gamma < 1.0:
            raise ParameterError(f"`gamma` must be in (0, 1), got {given}")
        if not 0 < round(gamma * 2.0**32) < 2**32:
            raise ParameterError(f"`gamma` must be representable at 32-bit precision "
                                 f"(2**-32 .. 1 - 2**-32), got {given}")
        return gamma


class RowScheme:
    """What every scheme scored against a keyed table of rows shares: construction from a
    spec, the set-up of its keys and rows, its repr (never the secret), and the shape of its
    scoring (``h``, the window, rows).

    A subclass declares its facts in its class statement (``class GreenList(RowScheme,
    name="greenlist", params_class=GreenListParams, default_effect=0.65, samples=False,
    test="binomial")``; ``test`` may instead be set per instance) and in its own ``__init__``
    calls this one first, then adds what is its own. Its keyed values come from two sub-keys of the secret:
    ``"<name>/table"`` (the table's cells) and ``"<name>/token-values"`` (the context hashing,
    :class:`ContextRows`).

    Args:
        secret: the spec's 32-byte secret.
        params: the scheme's parameters (``context_width``, ``combine``, ``n_lists``).
        vocab_size: ``V``, the size of the token-id space the table covers.
        key_id: public id echoed in results.
        selfhash: the window of a scored token holds the token itself (the green list's
            selfhash seeding).
    """

    name: str
    params_class: type[RowParams]
    #: Standardised per-unit effect of fully marked text (power statements only; measured
    #: on SmolLM2 answers at temperature 0.7, docs/statistics.md).
    default_effect: float
    #: Whether ``process`` chooses or reweights the distribution itself (the engine then
    #: samples its output at temperature 1, with no other warper) rather than biasing logits.
    samples: bool
    #: Detection's test (see ``distillmark.verify.nulls``), and its null parameters.
    test: str
    test_params: dict[str, Any]
    #: Params that are key material (none: table schemes are keyed by the spec's secret).
    secret_params: frozenset[str] = frozenset()

    def __init_subclass__(cls, *, name: str, params_class: type[RowParams],
                          default_effect: float, samples: bool, test: str | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name, cls.params_class = name, params_class
        cls.default_effect, cls.samples = default_effect, samples
        if test is not None:
            cls.test = test

    def __init__(self, secret: bytes, params: Any, vocab_size: int, *, key_id: str = "",
                 selfhash: bool = False) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ParameterError(f"`vocab_size` must be an integer >= 2, got {vocab_size!r}")
        self.params = params
        self.vocab_size = vocab_size
        self.key_id = key_id
        self._table_key = prf.derive_subkey(secret, f"{self.name}/table")
        self._token_key = prf.derive_subkey(secret, f"{self.name}/token-values")
        #: Rows of the table: ``n_lists``, or one fixed row when ``h = 0``.
        self.n_rows: int = 1 if params.context_width == 0 else params.n_lists
        self.context = ContextRows(self._token_key, vocab_size,
                                   context_width=params.context_width, selfhash=selfhash,
                                   combine=params.combine, n_rows=self.n_rows)

    @classmethod
    def from_spec(cls, spec: SchemeSource) -> Self:
        return cls(spec.secret, cls.params_class.from_mapping(spec.params), spec.vocab_size,
                   key_id=spec.key_id)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(key_id={self.key_id!r}, {self.params}, "
                f"vocab_size={self.vocab_size})")

    @property
    def context_width(self) -> int:
        """Tokens before a scored token that its score depends on (``h``)."""
        return int(self.params.context_width)

    @property
    def n_cells(self) -> int:
        """Size of the tuple-key space: keys lie in ``0 .. n_rows * V - 1``."""
        return self.n_rows * self.vocab_size

    @property
    def window(self) -> int:
        """Tokens that select a row: ``h``, plus the scored token itself with selfhash."""
        return self.context.window

    def rows(self, windows: np.ndarray) -> np.ndarray:
        """Row selected by each window: ``(..., w) int -> (...) int64``, ``w`` = :attr:`window`."""
        return self.context.rows(windows)

    def tuple_keys(self, ids: np.ndarray) -> np.ndarray:
        """Tuple key (table cell) of every scorable token: ``ids (n,) int -> (max(n - h, 0),)
        uint64``.

        Entry ``i`` belongs to token ``ids[h + i]``; equal keys are the same cell, hence the
        same score, which is what detection deduplicates on.
        """
        return self.context.tuple_keys(ids)

    def in_place_bias(self) -> RowScheme | None:
        """None: engines drive the scheme through ``process`` (``Scheme.in_place_bias``; the
        green list returns itself)."""
        return None

    # -- the keyed table -----------------------------------------------------------------------
    def check_cells(self, cells: np.ndarray) -> np.ndarray:
        """``cells`` as ``(n,) uint64``, refused when one lies outside the table."""
        cells = np.asarray(cells, dtype=np.uint64).ravel()
        if cells.size and int(cells.max()) >= self.n_cells:
            raise ParameterError(f"cell {int(cells.max())} is outside the table of "
                                 f"{self.n_rows} x {self.vocab_size} cells")
        return cells

    def table_values(self, cells: np.ndarray) -> np.ndarray:
        """The keyed ``uint64`` of each table cell ``row * V + token``: ``(n,) int -> (n,)
        uint64``, element ``cell`` of the ``"<name>/table"`` stream
        (:func:`~distillmark.watermark.prf.u64_take`)."""
        return prf.u64_take(self._table_key, self.check_cells(cells))

    def build_table(self, dtype: Any, chunk: int,
                    fill: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """A whole-table array ``(n_rows, V)`` of ``dtype``, filled ``chunk`` cells at a time:
        ``fill(start, n)`` gives cells ``start .. start + n - 1``."""
        n_cells = self.n_cells
        out = np.empty(n_cells, dtype=dtype)
        for start in range(0, n_cells, chunk):
            n = min(chunk, n_cells - start)
            out[start:start + n] = fill(start, n)
        return out.reshape(self.n_rows, self.vocab_size)
