"""One exact test over many texts: distinct tuples pooled across all of them.

Used wherever the evidence is spread over many texts: the answers of a suspect model (a
probe), the records of a dataset (a scan). Testing each text and combining the p-values would
be wrong as soon as two texts share a (context, token) tuple: its score is the same keyed value
in both, so the two scores are not independent. Pooling the *distinct* tuples of all texts
keeps the null exact: each distinct tuple's score is one independent draw of the keyed PRF.

The pieces are mergeable, so the same result comes out of one process or of many partial
accumulators merged in any order (a cluster, a resumed run):

- :class:`TupleSet`: the distinct tuple keys seen so far. A bitmap over the scheme's table
  cells when the key space is small (``n_rows * V`` cells, one bit each, up to 2**28: 12.6M
  bits, 1.5 MB, for 256 green lists at V = 49,152, whatever the amount of text), a sorted
  array otherwise (8 bytes per distinct tuple; the default 65,536 lists would need a 403 MB
  bitmap).
- :class:`AggregateAccumulator`: a tuple set plus the counts (texts, tokens, scorable tuples).
- :class:`AggregateResult`: the exact test on the pooled distinct tuples, with a power statement
  (:meth:`AggregateResult.detectable_fraction`): "not found" always says how much evidence
  there was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import numpy as np
from scipy import special

from distillmark.watermark.errors import ParameterError
from distillmark.watermark.registry import SCHEMES, Scheme

from .decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, Decision, check_alpha, check_min_scored
from .grouping import batch_tuple_keys
from .nulls import run_test
from .stats import unique_keys

__all__ = ["DEFAULT_EFFECT", "AggregateAccumulator", "AggregateResult", "TupleSet", "pool"]

#: Each scheme's standardised per-tuple effect of fully watermarked text, by name: a table of
#: the schemes' ``default_effect`` (see docs/statistics.md), which the power statements use.
DEFAULT_EFFECT: dict[str, float] = {name: float(cast("Scheme", cls).default_effect)
                                    for name, (_, cls) in SCHEMES.items()}

#: Largest key space kept as a bitmap (2**28 bits, 32 MiB: 4,096 green lists at V = 49,152).
#: Every tuple set allocates its bitmap whole and counting or listing it reads all of it, so a
#: larger one costs at every pooled test, probe and scan checkpoint whatever the text: 65,536
#: lists make a 384 MiB bitmap, about a CPU-second per pooled test of 100,000 tokens. A sorted
#: array (8 bytes per distinct tuple) is smaller until a 64th of the cells has been seen.
_MAX_BITMAP_CELLS = 1 << 28
#: Pending keys of a sorted-array set are merged in once they exceed this many.
_COMPACT_EVERY = 1 << 22
#: Bits set in each byte value, and the bytes of a bitmap counted at a time.
_ONES = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)
_COUNT_BLOCK = 1 << 24


class TupleSet:
    """A mergeable set of distinct tuple keys (``uint64``).

    Args:
        n_cells: size of the key space (keys lie in ``0..n_cells-1``): kept as a bitmap of
            ``n_cells`` bits packed eight to a byte (key ``k`` is bit ``7 - k % 8`` of byte
            ``k // 8``, as ``np.packbits`` orders them). None (or a space larger than
            ``2**28`` cells, :data:`_MAX_BITMAP_CELLS`): a sorted array.
    """

    def __init__(self, n_cells: int | None = None) -> None:
        if n_cells is not None and n_cells < 1:
            raise ParameterError(f"`n_cells` must be >= 1, got {n_cells}")
        self.n_cells = n_cells if n_cells is not None and n_cells <= _MAX_BITMAP_CELLS else None
        self._bits: np.ndarray | None = (np.zeros((self.n_cells + 7) // 8, dtype=np.uint8)
                                         if self.n_cells is not None else None)
        self._sorted = np.empty(0, dtype=np.uint64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    @classmethod
    def for_scheme(cls, scheme: Scheme) -> TupleSet:
        return cls(scheme.n_cells)

    @property
    def is_bitmap(self) -> bool:
        return self._bits is not None

    def add(self, keys: np.ndarray) -> None:
        """Add ``keys (n,) uint64`` (repeats allowed)."""
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.size == 0:
            return
        if self._bits is not None:
            assert self.n_cells is not None
            if int(keys.max()) >= self.n_cells:
                raise ParameterError(f"tuple key {int(keys.max())} outside the key space of "
                                     f"{self.n_cells} cells (keys of another scheme?)")
            np.bitwise_or.at(self._bits, (keys >> np.uint64(3)).astype(np.intp), _mask(keys))
            return
        self._pending.append(keys)
        self._n_pending += keys.size
        if self._n_pending > _COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        if self._pending:
            self._sorted = unique_keys(np.concatenate([self._sorted, *self._pending]))
            self._pending, self._n_pending = [], 0

    def update(self, other: TupleSet) -> None:
        """Add every key of ``other`` (same key space)."""
        if other.n_cells != self.n_cells:
            raise ParameterError("cannot merge tuple sets of different key spaces "
                                 f"({self.n_cells} and {other.n_cells} cells)")
        if self._bits is not None and other._bits is not None:
            np.bitwise_or(self._bits, other._bits, out=self._bits)
        else:
            self.add(other.keys())

    def keys(self) -> np.ndarray:
        """The distinct keys, sorted: ``(n,) uint64``."""
        if self._bits is not None:
            return _bitmap_keys(self._bits)
        self._compact()
        return self._sorted

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Membership of each of ``keys (n,) uint64``: ``(n,) bool``."""
        keys = np.asarray(keys, dtype=np.uint64)
        if self._bits is not None:
            assert self.n_cells is not None
            inside = keys < np.uint64(self.n_cells)
            k = keys[inside]
            out = np.zeros(keys.size, dtype=bool)
            out[inside] = (self._bits[(k >> np.uint64(3)).astype(np.intp)] & _mask(k)) != 0
            return out
        s = self.keys()
        if s.size == 0:
            return np.zeros(keys.size, dtype=bool)
        pos = np.minimum(np.searchsorted(s, keys), s.size - 1)
        return np.asarray(s[pos] == keys)

    def __len__(self) -> int:
        if self._bits is not None:
            return sum(int(_ONES[self._bits[i:i + _COUNT_BLOCK]].sum(dtype=np.int64))
                       for i in range(0, self._bits.size, _COUNT_BLOCK))
        self._compact()
        return int(self._sorted.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`from_arrays` rebuilds the set from (for checkpoints)."""
        if self._bits is not None:
            return {"n_cells": np.array([self.n_cells], dtype=np.int64), "bits": self._bits}
        return {"n_cells": np.array([-1], dtype=np.int64), "keys": self.keys()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TupleSet:
        n = int(arrays["n_cells"][0])
        if n < 0:
            out = cls(None)
            out._sorted = np.asarray(arrays["keys"], dtype=np.uint64)
            return out
        out = cls(n)
        bits = np.asarray(arrays["bits"], dtype=np.uint8)
        if out._bits is None:  # a bitmap of a key space now kept as a sorted array
            out._sorted = _bitmap_keys(bits)
        else:
            out._bits[:] = bits
        return out


def _bitmap_keys(bits: np.ndarray) -> np.ndarray:
    """The keys whose bits are set in ``bits (m,) uint8``, sorted: ``(n,) uint64``."""
    nz = np.flatnonzero(bits)
    unpacked = np.unpackbits(bits[nz][:, None], axis=1).astype(bool)
    rows, cols = np.nonzero(unpacked)
    return (nz[rows].astype(np.uint64) << np.uint64(3)) | cols.astype(np.uint64)


def _mask(keys: np.ndarray) -> np.ndarray:
    """The bit of each of ``keys (n,) uint64`` within its byte: ``(n,) uint8``."""
    return (np.uint8(0x80) >> (keys & np.uint64(7)).astype(np.uint8)).astype(np.uint8)


@dataclass(frozen=True)
class AggregateResult(Decision):
    """Exact test on the distinct tuples pooled over many texts.

    Attributes:
        statistic, pvalue, log10_pvalue, score_mean, null_mean, z_score, test: as in
            :class:`~distillmark.verify.detect.DetectionResult`, for the pooled tuples.
        n_texts: texts (answers, records) pooled.
        n_tokens: their tokens (prompts excluded).
        n_scored: distinct tuples tested.
        n_repeated: scorable tuples left out because an equal tuple was already counted, in
            the same text or another one.
        n_filtered: distinct tuples left out because they are not in the reference set (0
            without a reference).
        n_reference: size of the reference set the tuples were filtered on (0: no filter).
        min_scored: fewer scored tuples than this is "insufficient evidence".
        effect: standardised per-tuple effect assumed for fully watermarked text in
            :meth:`detectable_fraction` (the scheme's ``default_effect`` unless given).
        scheme, key_id: what was tested.
    """

    statistic: float
    pvalue: float
    log10_pvalue: float
    n_texts: int
    n_tokens: int
    n_scored: int
    n_repeated: int
    n_filtered: int
    n_reference: int
    score_mean: float
    null_mean: float
    z_score: float
    test: str
    min_scored: int
    effect: float
    scheme: str
    key_id: str

    power_statement: ClassVar[bool] = True

    def detectable_fraction(self, alpha: float = DEFAULT_ALPHA, *, power: float = 0.5) -> float:
        """Smallest share of watermarked tuples among the ``n_scored`` that the test would
        find at level ``alpha`` with probability ``power``; ``inf`` if even 100% would not be.

        Under the alternative a share ``f`` of the tuples carries the standardised effect
        ``effect`` (the rest none), so the standardised statistic is shifted by
        ``f * effect * sqrt(n)``; normal approximation of both tails. A planning figure that
        qualifies "not found", not part of the test.
        """
        check_alpha(alpha)
        if not 0.0 < power < 1.0:
            raise ParameterError(f"`power` must be in (0, 1), got {power}")
        if self.n_scored == 0 or self.effect <= 0:
            return math.inf
        need = float(special.ndtri(1.0 - alpha) + special.ndtri(power))
        f = need / (self.effect * math.sqrt(self.n_scored))
        return f if f <= 1.0 else math.inf


class AggregateAccumulator:
    """Pools the tuples of many texts for one scheme; mergeable (``merge``) in any order.

    Args:
        scheme: the scheme object (``registry.scheme_for(spec)``).
    """

    def __init__(self, scheme: Scheme) -> None:
        self.scheme = scheme
        self.tuples = TupleSet.for_scheme(scheme)
        self.n_texts = 0
        self.n_tokens = 0
        self.n_scorable = 0

    def add(self, ids: np.ndarray, *, prompt_len: int = 0) -> None:
        """Pool one text's token ids ``(n,) int``; its first ``prompt_len`` are the prompt."""
        self.add_batch([ids], prompt_lens=[prompt_len])

    def add_batch(self, seqs: Sequence[np.ndarray], *,
                  prompt_lens: Sequence[int] | None = None) -> None:
        """Pool many texts at once (one tuple-key pass over all of them)."""
        keys, _ = batch_tuple_keys(seqs, self.scheme, prompt_lens=prompt_lens)
        n_prompt = 0 if prompt_lens is None else int(sum(prompt_lens))
        self.add_keys(keys, n_texts=len(seqs),
                      n_tokens=int(sum(np.asarray(s).size for s in seqs)) - n_prompt)

    def add_keys(self, keys: np.ndarray, *, n_texts: int, n_tokens: int,
                 n_scorable: int | None = None) -> None:
        """Pool tuple keys already computed (e.g. by :func:`batch_tuple_keys`).

        ``n_scorable``: the scorable tuples these keys came from, when ``keys`` was already
        deduplicated (per text, say); default ``keys.size``.
        """
        self.tuples.add(keys)
        self.n_texts += n_texts
        self.n_tokens += n_tokens
        self.n_scorable += int(np.asarray(keys).size) if n_scorable is None else int(n_scorable)

    def merge(self, other: AggregateAccumulator) -> None:
        """Add the texts pooled by ``other`` (same key)."""
        if other.scheme.key_id != self.scheme.key_id:
            raise ParameterError(f"cannot merge results of key {other.scheme.key_id} into "
                                 f"those of key {self.scheme.key_id}")
        self.tuples.update(other.tuples)
        self.n_texts += other.n_texts
        self.n_tokens += other.n_tokens
        self.n_scorable += other.n_scorable

    def result(self, *, reference: TupleSet | None = None,
               min_scored: int = DEFAULT_MIN_SCORED, effect: float | None = None
               ) -> AggregateResult:
        """The exact test on the distinct pooled tuples.

        Args:
            reference: keep only tuples in this set (the supervised "filter" of Sander et
                al.: the tuples a suspect could have learned from). It must depend neither on
                the texts tested nor on the key: a set built from *watermarked* text holds
                more green cells than chance, so a clean suspect that writes like the teacher
                looks watermarked. Build it from the same prompts' answers generated without
                the watermark (``probe`` refuses a marked one).
            min_scored: threshold of "insufficient evidence".
            effect: standardised effect of watermarked tuples for the power statement
                (default: the scheme's ``default_effect``).
        """
        check_min_scored(min_scored)
        keys = self.tuples.keys()
        n_distinct = int(keys.size)
        n_filtered = 0
        if reference is not None:
            keys = keys[reference.contains(keys)]
            n_filtered = n_distinct - int(keys.size)
        sch = self.scheme
        outcome = run_test(sch.test, sch.key_scores(keys), sch.test_params)
        eff = float(sch.default_effect) if effect is None else float(effect)
        return AggregateResult(
            statistic=outcome.statistic, pvalue=outcome.pvalue,
            log10_pvalue=outcome.log10_pvalue, n_texts=self.n_texts, n_tokens=self.n_tokens,
            n_scored=int(keys.size), n_repeated=self.n_scorable - n_distinct,
            n_filtered=n_filtered, n_reference=len(reference) if reference is not None else 0,
            score_mean=outcome.score_mean, null_mean=outcome.null_mean,
            z_score=outcome.z_score, test=sch.test, min_scored=min_scored, effect=eff,
            scheme=sch.name, key_id=sch.key_id)


def pool(seqs: Iterable[np.ndarray], scheme: Scheme, *, batch: int = 1024
         ) -> AggregateAccumulator:
    """Accumulate ``seqs`` (no prompts) in batches of ``batch``: a convenience."""
    acc = AggregateAccumulator(scheme)
    buf: list[np.ndarray] = []
    for s in seqs:
        buf.append(np.asarray(s))
        if len(buf) >= batch:
            acc.add_batch(buf)
            buf = []
    if buf:
        acc.add_batch(buf)
    return acc
