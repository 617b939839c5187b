"""Tuples shared by many texts of a corpus, left out of every text's test.

Each text's test is exact over keys: for a fixed text, ``P(p <= alpha) <= alpha`` when the key
is drawn at random. An investigator holds *one* key and tests *many* texts, and texts that
share a tuple (", the"; an import line; a licence's sentences) share its table cell, coloured
once for that key: one key makes every such text a little greener, another a little redder,
and the share of a corpus's texts under ``alpha`` spreads from key to key far more than the
binomial allows (docs/statistics.md, "One key, one corpus").

The remedy here: count, for every tuple of width ``h + 1`` (the scored token and the ``h``
before it), the texts of the corpus it occurs in, and leave out of every text's test the
tuples found in at least :attr:`SharedTuples.threshold` texts. Which tuples are left out
depends on the texts alone, never on the key, so each text's test stays exact over keys; and
texts then share only tuples that few other texts hold, so one key shifts few of them
together. A tuple is named by a 64-bit mix of its token ids (:func:`ngram_codes`): two tuples
that collide are left out together, which costs a tuple, never validity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distillmark.watermark.errors import ParameterError
from distillmark.watermark.prf import fmix64

__all__ = ["DEFAULT_MAX_SHARE", "DEFAULT_MIN_TEXTS", "SharedTuples", "ngram_codes",
           "shared_tuples"]

#: By default a tuple found in two texts or more is left out: each text is then tested on
#: tuples of its own, disjoint from every other text's, whatever the key.
DEFAULT_MIN_TEXTS = 2
#: By default no share: the threshold is :data:`DEFAULT_MIN_TEXTS` whatever the corpus's size.
DEFAULT_MAX_SHARE: float | None = None
_SALT = np.uint64(0x9E3779B97F4A7C15)


def ngram_codes(ids: np.ndarray, width: int) -> np.ndarray:
    """A 64-bit code of every run of ``width`` consecutive tokens: ``ids (n,) int ->
    (max(n - width + 1, 0),) uint64``; entry ``i`` names ``ids[i : i + width]``.

    The code of the tuple of the token at position ``h + i`` (its ``h`` predecessors and
    itself) is entry ``i`` of ``ngram_codes(ids, h + 1)``: aligned with
    ``scheme.tuple_keys(ids)``. Unkeyed (MurmurHash3's finaliser over the ids)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = ids.size - width + 1
    if width < 1:
        raise ParameterError(f"`width` must be >= 1, got {width}")
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    u = ids.astype(np.uint64)
    code = np.zeros(n, dtype=np.uint64)
    for j in range(width):
        code = fmix64((code ^ u[j:j + n]) + _SALT)
    return code


@dataclass(frozen=True)
class SharedTuples:
    """The tuples of width ``h + 1`` left out of every text's test.

    Attributes:
        context_width: ``h`` of the scheme the tuples were counted for.
        codes: ``(m,) uint64``, sorted codes (:func:`ngram_codes`) of the tuples left out.
        n_texts: texts counted.
        max_share: share of the texts from which a tuple is left out, or None.
        min_texts: the fewest texts that a left-out tuple is found in, whatever the share.
        threshold: texts a tuple must be found in to be left out: ``min_texts``, or
            ``max(min_texts, ceil(max_share * n_texts))`` with a share.
    """

    context_width: int
    codes: np.ndarray
    n_texts: int
    max_share: float | None
    min_texts: int
    threshold: int

    def left_out(self, ids: np.ndarray) -> np.ndarray:
        """Whether each scorable token's tuple is left out: ``ids (n,) -> (max(n - h, 0),)
        bool``, aligned with ``scheme.tuple_keys(ids)``."""
        codes = ngram_codes(ids, self.context_width + 1)
        if not self.codes.size or not codes.size:
            return np.zeros(codes.size, dtype=bool)
        at = np.searchsorted(self.codes, codes)
        at[at == self.codes.size] = 0
        return np.asarray(self.codes[at] == codes)

    def to_dict(self) -> dict[str, float | int | None]:
        return {"max_share": self.max_share, "min_texts": self.min_texts,
                "threshold": self.threshold, "n_texts": self.n_texts,
                "n_left_out": int(self.codes.size)}


def _check(h: int, max_share: float | None, min_texts: int) -> None:
    if isinstance(h, bool) or not isinstance(h, int) or h < 0:
        raise ParameterError(f"`context_width` must be an integer >= 0, got {h!r}")
    if max_share is not None and not 0.0 < max_share <= 1.0:
        raise ParameterError(f"`max_share` must be in (0, 1], got {max_share}")
    if isinstance(min_texts, bool) or not isinstance(min_texts, int) or min_texts < 2:
        raise ParameterError(f"`min_texts` must be an integer >= 2, got {min_texts!r}")


def shared_tuples(seqs: Sequence[np.ndarray], context_width: int, *,
                  min_texts: int = DEFAULT_MIN_TEXTS,
                  max_share: float | None = DEFAULT_MAX_SHARE) -> SharedTuples:
    """Count the texts each tuple of width ``context_width + 1`` occurs in, over ``seqs``
    (token ids, ``(n_j,) int`` each; prompts included: a tuple is shared wherever it occurs),
    and keep those found in at least ``min_texts`` texts (with ``max_share``: in at least
    ``max(min_texts, ceil(max_share * len(seqs)))``).

    With the default, two texts, no two texts share a scored tuple: for any corpus, the texts'
    tests then fall on disjoint table cells, independent when the key is drawn at random, and
    the share of texts a key flags is a sum of independent indicators (docs/statistics.md). A
    share raises the threshold on large corpora: more tuples scored, dependence measured
    rather than excluded."""
    _check(context_width, max_share, min_texts)
    width = context_width + 1
    per_text = [np.unique(ngram_codes(s, width)) for s in seqs]
    threshold = min_texts if max_share is None else max(
        min_texts, math.ceil(max_share * len(per_text) - 1e-9))
    codes = np.zeros(0, dtype=np.uint64)
    if per_text:
        u, counts = np.unique(np.concatenate(per_text), return_counts=True)
        codes = u[counts >= threshold]
    return SharedTuples(context_width=context_width, codes=codes, n_texts=len(per_text),
                        max_share=None if max_share is None else float(max_share),
                        min_texts=min_texts, threshold=threshold)
