"""A model's readings folded onto the cells of a keyed table, for the open-model audit.

The audit (:mod:`.audit`) scores a candidate token ``t`` after a context through one cell
``(row(window), t)`` of the key's table, the window being the context's last ``h`` tokens (with
selfhash seeding, those and ``t``). A cell is a function of the (window, token) pair, so all
that does not depend on the key is computed once per set of readings: the distinct pairs and
their summed weights (:func:`pair_table`); per key, only the pairs are mapped to cells
(:func:`pair_cells`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from distillmark.watermark.registry import Scheme

__all__ = ["PairTable", "Readings", "TableScheme", "context_windows", "pair_cells", "pair_table"]


class Readings(Protocol):
    """What the folding reads of a model's readings (:class:`~.audit.ModelReadings`)."""

    @property
    def sequences(self) -> Sequence[np.ndarray]: ...

    @property
    def seq(self) -> np.ndarray: ...

    @property
    def pos(self) -> np.ndarray: ...

    @property
    def top_ids(self) -> np.ndarray: ...

    @property
    def top_probs(self) -> np.ndarray: ...


class TableScheme(Scheme, Protocol):
    """A scheme scored through a keyed table of rows (what the audit reads cells of)."""

    @property
    def window(self) -> int: ...

    def rows(self, windows: np.ndarray) -> np.ndarray: ...


def context_windows(readings: Readings, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The contexts with a full window (``(m,) bool``) and their windows, the last ``h``
    tokens of each: ``(m', h) int64``."""
    ok = readings.pos + 1 >= h
    seq, pos = readings.seq[ok], readings.pos[ok]
    win = np.zeros((seq.size, h), dtype=np.int64)
    for j in np.unique(seq).tolist():
        sel = seq == j
        s = readings.sequences[j]
        p = pos[sel]
        for c in range(h):
            win[sel, c] = s[p - h + 1 + c]
    return ok, win


@dataclass(frozen=True)
class PairTable:
    """The readings folded onto their distinct (window, token) pairs, for one ``h``, ``V``,
    ``k`` and ``min_prob``: everything the tests need that does not depend on the key.

    A cell is ``(row(window), token)`` (with selfhash seeding, ``row(window + token)``): a
    function of the pair, so entries sharing a pair always share a cell, whatever the key. The
    per-entry weights are additive over a cell (probabilities, or ``log(1 - p)`` for coverage),
    so they are summed per pair here, once, and per key only the far fewer pairs are mapped to
    cells and summed again where two windows select the same row.

    Attributes:
        windows: the distinct windows (last ``h`` tokens) of the contexts with a full window,
            ``(n_w, h) int64``.
        window: each pair's window, an index into ``windows``: ``(n_p,) int64``.
        token: each pair's token (``< V``): ``(n_p,) int64``.
        w_context: summed probability over the pair's contexts, ``(n_p,) float64``.
        w_window: the same with each context's probabilities divided by the number of contexts
            sharing its window.
        log_miss: summed ``log(1 - p)`` over the pair's contexts.
    """

    windows: np.ndarray
    window: np.ndarray
    token: np.ndarray
    w_context: np.ndarray
    w_window: np.ndarray
    log_miss: np.ndarray


def pair_table(readings: Readings, h: int, V: int, k: int, min_prob: float) -> PairTable:
    """:class:`PairTable` of the entries among each context's ``k`` top tokens with an id
    below ``V`` and a probability of at least ``min_prob``."""
    ok, win = context_windows(readings, h)
    if h and win.shape[0]:
        windows, window_of = np.unique(win, axis=0, return_inverse=True)
        window_of = window_of.ravel()
    else:
        windows = np.zeros((1 if win.shape[0] else 0, h), dtype=np.int64)
        window_of = np.zeros(win.shape[0], dtype=np.int64)
    ids = readings.top_ids[ok, :k]
    probs = readings.top_probs[ok, :k].astype(np.float64)
    sel = ids < V
    if min_prob > 0:
        sel &= probs >= min_prob
    per_window = np.bincount(window_of, minlength=windows.shape[0])[window_of]
    pair = (np.broadcast_to(window_of[:, None], ids.shape)[sel] * V + ids[sel])
    uniq, inv = np.unique(pair, return_inverse=True)
    inv = inv.ravel()
    p = probs[sel]
    table = PairTable(
        windows=windows, window=uniq // V, token=uniq % V,
        w_context=np.bincount(inv, weights=p, minlength=uniq.size),
        w_window=np.bincount(inv, weights=(probs / np.maximum(per_window, 1)[:, None])[sel],
                             minlength=uniq.size),
        log_miss=np.bincount(inv, weights=np.log1p(-np.minimum(p, 1.0 - 1e-12)),
                             minlength=uniq.size))
    return table


def pair_cells(table: PairTable, scheme: TableScheme) -> tuple[np.ndarray, np.ndarray]:
    """The key's distinct cells (``row * V + token``, sorted) and each pair's cell index."""
    V = scheme.vocab_size
    if scheme.window > scheme.context_width:  # selfhash: the window holds the scored token
        rows = scheme.rows(np.concatenate([table.windows[table.window],
                                           table.token[:, None]], axis=1))
    else:
        rows = scheme.rows(table.windows)[table.window]
    keys = rows.astype(np.uint64) * np.uint64(V) + table.token.astype(np.uint64)
    cells, inv = np.unique(keys, return_inverse=True)
    return cells, inv.ravel()
