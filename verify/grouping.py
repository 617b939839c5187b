"""Tuple keys of many token sequences at once, and their deduplication within groups.

Every verifier scores the tuples of many sequences in one pass (a batch of texts, the records of
a dataset, a probe's answers): :func:`sequence_tuple_keys` computes the tuple keys of sequences
laid end to end, with the sequence each belongs to (a sequence's first ``h`` tokens have no full
window and its prompt is context only: neither is scored); :func:`group_distinct` keeps the
distinct (group, key) pairs and marks each key's first group, in one sort. It packs group and key
into one ``uint64`` when the scheme's key space (``scheme.n_cells``) times the groups fits in 64
bits, and otherwise sorts the pairs lexicographically, so schemes whose keys span 64 bits are
batched like the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distillmark.watermark.errors import ParameterError
from distillmark.watermark.registry import Scheme

from .shared import SharedTuples
from .stats import unique_keys

__all__ = ["Distinct", "batch_tuple_keys", "check_shared", "group_distinct",
           "sequence_tuple_keys"]


def check_shared(shared: SharedTuples | None, scheme: Scheme) -> None:
    """Refuse shared tuples counted for another context width than the scheme's."""
    if shared is not None and shared.context_width != scheme.context_width:
        raise ParameterError(f"shared tuples were counted for context width "
                             f"{shared.context_width}, the scheme's is {scheme.context_width}")


def sequence_tuple_keys(ids: np.ndarray, lens: np.ndarray, prompt_lens: np.ndarray,
                        scheme: Scheme, *, shared: SharedTuples | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Tuple keys of the scorable tokens of sequences laid end to end.

    Args:
        ids: ``(N,) int64``, the token ids of all sequences end to end.
        lens: ``(S,) int64``, each sequence's length (summing to ``N``).
        prompt_lens: ``(S,) int64``, each sequence's leading context tokens (never scored).
        scheme: the scheme whose tuple keys to compute.
        shared: tuples shared by many texts of the corpus (:mod:`.shared`): left out.

    Returns:
        ``(keys (k,) uint64, seq (k,) int64)``: the key of every scorable token, in order, and
        the sequence it belongs to. No deduplication here.
    """
    h = scheme.context_width
    n = int(ids.size)
    if n <= h:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    keys = scheme.tuple_keys(ids)  # entry i belongs to token h + i of the concatenation
    starts = np.cumsum(lens) - lens
    seq = np.repeat(np.arange(lens.size, dtype=np.int64), lens)[h:]
    local = np.arange(h, n, dtype=np.int64) - starts[seq]
    valid = local >= np.maximum(h, prompt_lens)[seq]  # own full window, and not in the prompt
    if shared is not None:
        check_shared(shared, scheme)
        valid &= ~shared.left_out(ids)
    return keys[valid], seq[valid]


def batch_tuple_keys(seqs: Sequence[np.ndarray], scheme: Scheme, *,
                     prompt_lens: Sequence[int] | None = None,
                     shared: SharedTuples | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sequence_tuple_keys` of separate sequences ``(n_j,) int``: ``(keys (k,) uint64,
    owner (k,) int64)``, ``owner[i]`` the index of the sequence key ``i`` belongs to; the first
    ``prompt_lens[j]`` tokens of sequence ``j`` are its prompt; ``shared``: tuples left out."""
    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
    if not seqs:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    lens = np.array([s.size for s in seqs], dtype=np.int64)
    pl = (np.zeros(len(seqs), dtype=np.int64) if prompt_lens is None
          else np.asarray(prompt_lens, dtype=np.int64))
    if pl.shape != lens.shape:
        raise ParameterError(f"`prompt_lens` has {pl.size} entries for {lens.size} sequences")
    if (pl < 0).any() or (pl > lens).any():
        j = int(np.flatnonzero((pl < 0) | (pl > lens))[0])
        raise ParameterError(f"`prompt_lens[{j}]` must be in 0..{lens[j]}, got {pl[j]}")
    ids = np.concatenate(seqs) if len(seqs) > 1 else seqs[0]
    return sequence_tuple_keys(ids, lens, pl, scheme, shared=shared)


@dataclass(frozen=True)
class Distinct:
    """The distinct (group, key) pairs of tuple keys.

    Attributes:
        keys: ``(u,) uint64``, distinct within each group, sorted by (key, group): within a
            group, in increasing key order (as :func:`~.stats.unique_keys` leaves one text's).
        groups: ``(u,) int64``, the group of each.
        first: ``(u,) bool``, whether the pair is its key's first (lowest) group.
    """

    keys: np.ndarray
    groups: np.ndarray
    first: np.ndarray


def group_distinct(keys: np.ndarray, groups: np.ndarray, n_groups: int, n_cells: int | None
                   ) -> Distinct:
    """The distinct pairs of ``keys (n,) uint64`` and ``groups (n,) int64`` (groups in
    ``0 .. n_groups - 1``; keys below ``n_cells``, or anywhere in 64 bits when it is None)."""
    keys = np.asarray(keys, dtype=np.uint64)
    groups = np.asarray(groups, dtype=np.int64)
    bits = (n_groups - 1).bit_length() if n_groups > 1 else 0
    if bits == 0:
        u_keys = unique_keys(keys, below=n_cells)
        u_groups = np.zeros(u_keys.size, dtype=np.int64)
    elif n_cells is not None and n_cells <= 1 << (64 - bits):
        shift = np.uint64(bits)
        combined = unique_keys((keys << shift) | groups.astype(np.uint64),
                               below=n_cells << bits)
        u_keys = combined >> shift
        u_groups = (combined & np.uint64((1 << bits) - 1)).astype(np.int64)
    else:
        order = np.lexsort((groups, keys))
        k, g = keys[order], groups[order]
        keep = np.ones(k.size, dtype=bool)
        keep[1:] = (k[1:] != k[:-1]) | (g[1:] != g[:-1])
        u_keys, u_groups = k[keep], g[keep]
    first = np.ones(u_keys.size, dtype=bool)
    if u_keys.size:
        np.not_equal(u_keys[1:], u_keys[:-1], out=first[1:])
    return Distinct(u_keys, u_groups, first)
