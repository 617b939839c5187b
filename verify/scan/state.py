"""What a scan keeps between batches, for each key: mergeable in input order, so that one
process, a resumed run and a cluster's workers all end with the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distillmark.watermark.registry import Scheme

from ..aggregate import AggregateAccumulator, TupleSet
from ..attribute_dataset import DatasetAccumulator
from ..fraction import PairCounts
from ..nulls import BINOMIAL_TESTS
from .scoring import Pooled, RecordScores

__all__ = ["KeyState", "ScanState"]


class KeyState:
    """What a scan keeps for one key: the pooled tuples, the ``(n, k)`` pair counts and the
    per-record p-values, scores and scored counts (16 bytes per record)."""

    def __init__(self, scheme: Scheme, *, defer_pairs: bool = False) -> None:
        self.scheme = scheme
        self.acc = AggregateAccumulator(scheme)
        self.pairs = PairCounts()
        self.defer_pairs = defer_pairs
        self._fresh: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._depth = 1
        self._log10p: list[np.ndarray] = []
        self._score_mean: list[np.ndarray] = []
        self._n_scored: list[np.ndarray] = []

    def add(self, rs: RecordScores, pooled: Pooled) -> None:
        """Add a batch of records (after those already added)."""
        n_rec = int(rs.n_tokens.size)
        if self.scheme.test in BINOMIAL_TESTS:
            # Each record's *fresh* tuples (in no earlier record) for the fraction estimate:
            # disjoint across records, so the records' counts are independent under the null
            # even when records repeat each other (near-duplicates are common in corpora).
            self._depth = pooled.depth
            cells, rec = pooled.keys[pooled.first], pooled.owner[pooled.first]
            new = ~self.acc.tuples.contains(cells)
            cells, rec = cells[new], rec[new]
            scores = self.scheme.key_scores(cells)
            ones = (scores if scores.ndim == 1 else scores.sum(axis=1)).astype(np.int64)
            if self.defer_pairs:  # kept until merged in input order (cluster workers)
                self._fresh.append((cells, rec + self.acc.n_texts, ones))
            else:
                self._count_pairs(rec, ones, n_rec)
        self.acc.add_keys(pooled.keys, n_texts=n_rec, n_tokens=int(rs.n_tokens.sum()),
                          n_scorable=pooled.n_scorable)
        self._log10p.append(rs.log10_pvalue.astype(np.float64))
        self._score_mean.append(rs.score_mean.astype(np.float32))
        self._n_scored.append(rs.n_scored.astype(np.int32))

    def _count_pairs(self, rec: np.ndarray, ones: np.ndarray, n_rec: int) -> None:
        n = np.bincount(rec, minlength=n_rec) * self._depth
        k = np.bincount(rec, weights=ones, minlength=n_rec).astype(np.int64)
        self.pairs.add(n, k)

    def merge(self, other: KeyState) -> None:
        """Append ``other``'s records after this state's (order matters for the arrays and
        for which record a repeated tuple is fresh in)."""
        if other.defer_pairs and self.scheme.test in BINOMIAL_TESTS:
            self._depth = other._depth
            if other._fresh:
                cells, rec, ones = (np.concatenate(x) for x in zip(*other._fresh))
                new = ~self.acc.tuples.contains(cells)
                self._count_pairs(rec[new], ones[new], other.acc.n_texts)
            else:
                self._count_pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                                  other.acc.n_texts)
        self.acc.merge(other.acc)
        self.pairs.merge(other.pairs)
        self._log10p.extend(other._log10p)
        self._score_mean.extend(other._score_mean)
        self._n_scored.extend(other._n_scored)

    @staticmethod
    def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    @property
    def log10_pvalues(self) -> np.ndarray:
        self._log10p = [self._cat(self._log10p, np.float64)]
        return self._log10p[0]

    @property
    def score_means(self) -> np.ndarray:
        self._score_mean = [self._cat(self._score_mean, np.float32)]
        return self._score_mean[0]

    @property
    def n_scored(self) -> np.ndarray:
        self._n_scored = [self._cat(self._n_scored, np.int32)]
        return self._n_scored[0]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}tuples_{k}": v for k, v in self.acc.tuples.to_arrays().items()}
        arrays[f"{prefix}counts"] = np.array(
            [self.acc.n_texts, self.acc.n_tokens, self.acc.n_scorable, self._depth],
            dtype=np.int64)
        arrays[f"{prefix}pairs"] = self.pairs.to_array()
        arrays[f"{prefix}log10p"] = self.log10_pvalues
        arrays[f"{prefix}score_mean"] = self.score_means
        arrays[f"{prefix}n_scored"] = self.n_scored
        return arrays

    def load_arrays(self, arrays: Any, prefix: str) -> None:
        tl = f"{prefix}tuples_"
        self.acc.tuples = TupleSet.from_arrays(
            {k[len(tl):]: arrays[k] for k in arrays.files if k.startswith(tl)})
        self.acc.n_texts, self.acc.n_tokens, self.acc.n_scorable, self._depth = (
            int(x) for x in arrays[f"{prefix}counts"])
        self.pairs = PairCounts.from_array(arrays[f"{prefix}pairs"])
        self._log10p = [np.array(arrays[f"{prefix}log10p"])]
        self._score_mean = [np.array(arrays[f"{prefix}score_mean"])]
        self._n_scored = [np.array(arrays[f"{prefix}n_scored"])]


class ScanState:
    """Mergeable partial results of a scan: record counts and one :class:`KeyState` per key.

    ``defer_pairs``: a cluster worker's state, whose fresh tuples are decided when it is
    merged (in input order) into the client's.
    """

    def __init__(self, schemes: Sequence[Scheme], *, defer_pairs: bool = False) -> None:
        self.keys = [KeyState(s, defer_pairs=defer_pairs) for s in schemes]
        self.n_read = 0
        self.n_skipped = 0
        self.n_chars = 0  # text characters scored: progress only, not checkpointed
        #: the dataset attribution, when records are also attributed (local engine only)
        self.accounts: DatasetAccumulator | None = None

    @property
    def n_scored_records(self) -> int:
        return self.n_read - self.n_skipped

    def merge(self, other: ScanState) -> None:
        self.n_read += other.n_read
        self.n_skipped += other.n_skipped
        for a, b in zip(self.keys, other.keys):
            a.merge(b)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"state_counts": np.array([self.n_read, self.n_skipped], dtype=np.int64)}
        for i, k in enumerate(self.keys):
            out.update(k.to_arrays(f"k{i}_"))
        return out

    def load_arrays(self, arrays: Any) -> None:
        self.n_read, self.n_skipped = (int(x) for x in arrays["state_counts"])
        for i, k in enumerate(self.keys):
            k.load_arrays(arrays, f"k{i}_")
