"""The scoring core of a scan: token arrays of a batch of records in, each record's test and
the records' tuples for the pooled test out, for one key.

:func:`score_tokens` is a pure function: the tuple keys of the records' sequences laid end to
end (:func:`~distillmark.verify.grouping.sequence_tuple_keys`), their distinct (record, key)
pairs in one sort (:func:`~distillmark.verify.grouping.group_distinct`), and the scheme's test
run with every record as a group (:mod:`distillmark.verify.nulls`): each record is tested as
:func:`~distillmark.verify.detect.detect_ids` tests the same text alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillmark.watermark.registry import Scheme

from ..grouping import group_distinct, sequence_tuple_keys
from ..nulls import BINOMIAL_TESTS, run_grouped

__all__ = ["Pooled", "RecordScores", "score_tokens"]


@dataclass(frozen=True)
class RecordScores:
    """Per-record results of one key for a batch of ``r`` records (arrays of shape ``(r,)``).

    ``n_units``/``n_ones`` are the binomial view of the test (units scored, units scoring 1;
    zero for other tests), used by the fraction estimate.
    """

    n_tokens: np.ndarray
    n_scored: np.ndarray
    statistic: np.ndarray
    pvalue: np.ndarray
    log10_pvalue: np.ndarray
    score_mean: np.ndarray
    n_units: np.ndarray
    n_ones: np.ndarray


@dataclass(frozen=True)
class Pooled:
    """The tuples a batch of records contributes to the pooled test.

    Attributes:
        keys: ``(u,) uint64``, tuple keys distinct within each record, sorted by (key, record).
        owner: ``(u,) int64``, the record of each.
        first: ``(u,) bool``, the first (lowest) record of each distinct key.
        depth: units per tuple (1; layers of a tournament).
        n_scorable: scorable tuples before the per-record deduplication.
    """

    keys: np.ndarray
    owner: np.ndarray
    first: np.ndarray
    depth: int
    n_scorable: int


def score_tokens(ids: np.ndarray, lens: np.ndarray, prompt_lens: np.ndarray,
                 seq_record: np.ndarray, n_records: int, scheme: Scheme
                 ) -> tuple[RecordScores, Pooled]:
    """Score records made of token sequences, for one scheme.

    Args:
        ids: ``(N,) int64``, the token ids of all sequences end to end.
        lens: ``(S,) int64``, each sequence's length; ``prompt_lens (S,)`` its leading context
            tokens (never scored).
        seq_record: ``(S,) int64``, the record each sequence belongs to (non-decreasing).
        n_records: ``r``, records in the batch (some may have no sequence).

    Returns:
        the per-record scores (each record's distinct tuples tested exactly, as
        :func:`~.detect.detect_ids` would) and the records' tuples for pooling.
    """
    keys, seq = sequence_tuple_keys(ids, lens, prompt_lens, scheme)
    # one sort gives both deduplications: (key, record) pairs, and each key's first record
    distinct = group_distinct(keys, seq_record[seq], n_records, scheme.n_cells)
    scores = scheme.key_scores(distinct.keys)
    grouped = run_grouped(scheme.test, scores, distinct.groups, n_records, scheme.test_params)
    depth = scores.shape[1] if scheme.test in BINOMIAL_TESTS and scores.ndim == 2 else 1
    n_tok = np.bincount(seq_record, weights=lens - prompt_lens, minlength=n_records)
    rs = RecordScores(n_tokens=n_tok.astype(np.int64), n_scored=grouped.n_scored,
                      statistic=grouped.statistic, pvalue=grouped.pvalue,
                      log10_pvalue=grouped.log10_pvalue, score_mean=grouped.score_mean,
                      n_units=grouped.n_units, n_ones=grouped.n_ones)
    return rs, Pooled(distinct.keys, distinct.groups, distinct.first, depth, int(keys.size))
