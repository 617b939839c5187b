"""Dataset scans: every record of a corpus tested for a watermark, and the dataset as a whole.

A scan reads records (:mod:`.sources`), tokenises their texts in large batches
(``encode_batch_fast``), and for each key

* tests every record on its own (distinct tuples within the record, exact p-value), and marks
  the records flagged by Benjamini-Hochberg at a chosen false-discovery rate;
* pools the distinct tuples of *all* records (:class:`~.aggregate.AggregateAccumulator`) for
  one exact dataset-level test: a tuple seen in two records is one draw of the key, counted
  once;
* counts the records' ``(scored, green)`` pairs for the estimate of the watermarked fraction
  (:mod:`.fraction`).

Several keys: every p-value (record and dataset) is Bonferroni-corrected for their number.

The scoring core, :func:`score_tokens`, is a pure function over token arrays whose partial
results (:class:`ScanState`) merge in any order; :func:`process_shard` runs it over one shard
of the input. The local engine (:func:`scan`) streams shard after shard with bounded memory,
writing per-record results to disk as it goes and, with ``resume``, an atomic checkpoint; the
Dask engine (:mod:`.dask_engine`) runs :func:`process_shard` on a cluster and merges the
results in shard order, so both give the same output, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillmark.watermark.errors import DistillmarkError, InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import Scheme, scheme_for
from distillmark.watermark.tokenizer import tokenizer_for

from .aggregate import AggregateAccumulator, AggregateResult
from .decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, CorrectedDecision, check_alpha
from .detect import text_chunks
from .fraction import FractionEstimate, PairCounts, binomial_mixture, pvalue_mixture, theta_floor
from .grouping import group_distinct, sequence_tuple_keys
from .nulls import BINOMIAL_TESTS, run_grouped
from .sources import (
    DEFAULT_MAX_RECORD_BYTES,
    BadRecord,
    Segment,
    Selector,
    Shard,
    iter_shard,
    plan_shards,
)
from .stats import benjamini_hochberg

__all__ = [
    "DEFAULT_FDR",
    "RecordScores",
    "ScanConfig",
    "ScanResult",
    "ScanState",
    "process_shard",
    "scan",
    "score_tokens",
]

DEFAULT_FDR = 0.05
#: Text (characters) per tokenizer batch: large enough for the tokenizer's threads, small
#: enough that a batch's arrays stay a few MB.
DEFAULT_BATCH_CHARS = 2 << 20
_CHUNK_CHARS = 1 << 16


# --------------------------------------------------------------------------------------------
# The scoring core: token arrays in, per-record scores and pooled tuples out


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


# --------------------------------------------------------------------------------------------
# Mergeable state


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
        from .aggregate import TupleSet

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


# --------------------------------------------------------------------------------------------
# Configuration and one shard


@dataclass(frozen=True)
class ScanConfig:
    """What every worker needs to score a shard (picklable; holds the keys' secrets: send it
    only to machines you trust with them).

    Attributes:
        specs: the keys.
        field, chat: what to score (:class:`~.sources.Selector`).
        max_record_bytes: longer records are bad records.
        skip_bad: go on past bad records (else the first one stops the scan).
        tokenizer: tokenizer path replacing the keys' recorded one (must match it).
        batch_chars: text per tokenizer batch.
        rows: produce per-record result lines (off when no per-record file is wanted).
    """

    specs: tuple[WatermarkSpec, ...]
    field: str | None = None
    chat: str | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    skip_bad: bool = False
    tokenizer: str | None = None
    batch_chars: int = DEFAULT_BATCH_CHARS
    rows: bool = True

    def __post_init__(self) -> None:
        if not self.specs:
            raise ParameterError("a scan needs at least one key")
        ids = [s.key_id for s in self.specs]
        if len(set(ids)) != len(ids):
            dup = next(k for k in ids if ids.count(k) > 1)
            raise ParameterError(f"key {dup} is given twice")
        if len({s.tokenizer.sha256 for s in self.specs}) > 1:
            raise InputError("the keys are bound to different tokenizers; scan them separately")
        if self.max_record_bytes < 1:
            raise ParameterError(f"`max_record_bytes` must be >= 1, got {self.max_record_bytes}")
        if self.batch_chars < 1:
            raise ParameterError(f"`batch_chars` must be >= 1, got {self.batch_chars}")
        Selector(self.field, self.chat)  # validates the paths

    def fingerprint(self) -> dict[str, Any]:
        """What the results depend on (no secret): for checkpoints."""
        return {"keys": [s.key_id for s in self.specs], "field": self.field, "chat": self.chat,
                "max_record_bytes": self.max_record_bytes, "skip_bad": self.skip_bad,
                "tokenizer": self.specs[0].tokenizer.sha256, "rows": self.rows}


class _Worker:
    """Tokenizer, schemes and selector of a config, built once per process."""

    _cache: ClassVar[dict[tuple[Any, ...], _Worker]] = {}

    def __init__(self, config: ScanConfig) -> None:
        self.config = config
        self.selector = Selector(config.field, config.chat)
        self.tokenizer = tokenizer_for(config.specs[0].tokenizer, config.tokenizer)
        self.schemes = [scheme_for(s) for s in config.specs]
        self.columns: list[str] = list(dict.fromkeys([self.selector.parts[0],
                                                      str(self.selector.path)]))

    @classmethod
    def of(cls, config: ScanConfig) -> _Worker:
        key = (tuple((s.key_id, s.scheme, json.dumps(dict(s.params), sort_keys=True,
                                                     default=str)) for s in config.specs),
               config.field, config.chat, config.tokenizer)
        w = cls._cache.get(key)
        if w is None:
            w = cls(config)
            cls._cache.clear()
            cls._cache[key] = w
        elif w.config != config:
            w.config = config
        return w

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts`` end to end and each text's length (long texts in line-
        aligned pieces, as :meth:`~.detect.Detector.encode`)."""
        pieces: list[str] = []
        owner: list[int] | None = None
        if any(len(t) > _CHUNK_CHARS for t in texts):
            owner = []
            for i, t in enumerate(texts):
                parts = text_chunks(t) if len(t) > _CHUNK_CHARS else [t]
                pieces.extend(parts)
                owner.extend([i] * len(parts))
        else:
            pieces = texts
        enc = self.tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
        id_lists = [e.ids for e in enc]
        plens = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(plens.sum()))
        if owner is None:
            return ids, plens
        return ids, np.bincount(np.asarray(owner, dtype=np.int64), weights=plens,
                                minlength=len(texts)).astype(np.int64)


def _fmt_num(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else "null"


@dataclass
class _Chunk:
    """Records gathered for one tokenizer batch."""

    locs: list[str] = field(default_factory=list)
    segs: list[list[Segment]] = field(default_factory=list)
    chars: int = 0


def _score_chunk(w: _Worker, chunk: _Chunk, state: ScanState) -> str:
    """Score a chunk's records into ``state``; their result lines (JSONL, without the BH flag)."""
    texts: list[str] = []
    is_prompt: list[bool] = []
    seq_record: list[int] = []
    for r, segs in enumerate(chunk.segs):
        for s in segs:
            if s.context:
                texts.append(s.context)
                is_prompt.append(True)
                seq_record.append(r)
            texts.append(s.text)
            is_prompt.append(False)
            seq_record.append(r)
    ids, tlens = w.encode(texts)
    # a context and the text after it form one sequence whose prompt is the context
    isp = np.asarray(is_prompt, dtype=bool)
    srec = np.asarray(seq_record, dtype=np.int64)
    text_idx = np.flatnonzero(~isp)
    lens = tlens[text_idx].copy()
    plens = np.zeros(text_idx.size, dtype=np.int64)
    has_ctx = np.zeros(text_idx.size, dtype=bool)
    if isp.any():
        has_ctx = (text_idx > 0) & isp[np.maximum(text_idx - 1, 0)]
        plens[has_ctx] = tlens[text_idx[has_ctx] - 1]
        lens += plens
    seq_rec = srec[text_idx]
    n_rec = len(chunk.locs)
    per_key = []
    for ks in state.keys:
        rs, pooled = score_tokens(ids, lens, plens, seq_rec, n_rec, ks.scheme)
        ks.add(rs, pooled)
        per_key.append(rs)
    state.n_read += n_rec
    if not w.config.rows:
        return ""
    return _result_lines(chunk.locs, per_key, [k.scheme.key_id for k in state.keys])


_PLAIN = re.compile(r'^[^"\\\x00-\x1f\x7f]*$')


def _json_str(s: str) -> str:
    return f'"{s}"' if _PLAIN.match(s) else json.dumps(s)


def _result_lines(locs: list[str], per_key: list[RecordScores], key_ids: list[str]) -> str:
    """One JSON line per record: the best key's result, p-values corrected for the keys."""
    n_keys = len(per_key)
    if n_keys == 1:
        rs = per_key[0]
        pv, lg = rs.pvalue, rs.log10_pvalue
        kid = [key_ids[0]] * len(locs)
        stats_, nt, ns, sm = rs.statistic, rs.n_tokens, rs.n_scored, rs.score_mean
    else:
        best = np.argmin(np.stack([r.log10_pvalue for r in per_key]), axis=0)
        take = np.arange(len(locs))

        def pick(name: str) -> np.ndarray:
            return np.stack([getattr(r, name) for r in per_key])[best, take]

        pv = np.minimum(1.0, pick("pvalue") * n_keys)
        lg = np.minimum(0.0, pick("log10_pvalue") + math.log10(n_keys))
        stats_, nt, ns, sm = (pick(n) for n in ("statistic", "n_tokens", "n_scored",
                                                "score_mean"))
        kid = [key_ids[b] for b in best.tolist()]
    integral = bool(np.all(np.mod(stats_, 1.0) == 0.0))
    st = stats_.astype(np.int64).tolist() if integral else [_fmt_num(x) for x in stats_.tolist()]
    return "".join(
        f'{{"location": {_json_str(loc)}, "n_tokens": {a}, "n_scored": {b}, "statistic": {c}, '
        f'"pvalue": {d!r}, "log10_pvalue": {e!r}, "score_mean": {f!r}, "key_id": "{k}"}}\n'
        for loc, a, b, c, d, e, f, k in zip(locs, nt.tolist(), ns.tolist(), st, pv.tolist(),
                                            lg.tolist(), sm.tolist(), kid))


@dataclass
class ShardOutput:
    """What one shard produced: its state, result lines and rejected records."""

    state: ScanState
    rows: str
    rejects: str


def _bad(loc: str, reason: str) -> InputError:
    return InputError(f"{loc}: {reason} (--skip-bad skips bad records)")


def iter_shard_chunks(shard: Shard, config: ScanConfig, state: ScanState, *, skip: int = 0
                      ) -> Iterator[tuple[str, str, int]]:
    """Score ``shard`` (after its first ``skip`` records) into ``state`` chunk by chunk; yield
    each chunk's result lines, rejected-record lines and the records of the shard done so far."""
    w = _Worker.of(config)
    chunk = _Chunk()
    rejects: list[str] = []
    done = skip
    for loc, rec in iter_shard(shard, max_record_bytes=config.max_record_bytes, skip=skip,
                               columns=w.columns):
        segs = rec if isinstance(rec, BadRecord) else w.selector.segments(rec)
        done += 1
        n_chars = 0 if isinstance(segs, BadRecord) else sum(len(s.text) + len(s.context)
                                                             for s in segs)
        if n_chars > config.max_record_bytes:  # columnar inputs: the text alone
            segs = BadRecord(f"record of {n_chars} characters is longer than "
                             f"--max-record-bytes {config.max_record_bytes}")
        if isinstance(segs, BadRecord):
            if not config.skip_bad:
                raise _bad(loc, segs.reason)
            state.n_read += 1
            state.n_skipped += 1
            rejects.append(json.dumps({"location": loc, "reason": segs.reason}) + "\n")
            continue
        chunk.locs.append(loc)
        chunk.segs.append(segs)
        chunk.chars += n_chars + 1
        state.n_chars += n_chars
        if chunk.chars >= config.batch_chars:
            rows = _score_chunk(w, chunk, state)
            yield rows, "".join(rejects), done
            chunk, rejects = _Chunk(), []
    if chunk.locs or rejects:
        rows = _score_chunk(w, chunk, state) if chunk.locs else ""
        yield rows, "".join(rejects), done


def process_shard(shard: Shard, config: ScanConfig) -> ShardOutput:
    """Score one shard from scratch: the unit of work of a cluster engine (pure: the same
    shard and config give the same output anywhere)."""
    w = _Worker.of(config)
    state = ScanState(w.schemes, defer_pairs=True)
    rows, rejects = [], []
    for r, j, _ in iter_shard_chunks(shard, config, state):
        rows.append(r)
        rejects.append(j)
    return ShardOutput(state, "".join(rows), "".join(rejects))


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ScanResult(CorrectedDecision):
    """Result of a dataset scan.

    Attributes:
        aggregate: the pooled exact test of the key with the smallest p-value (its
            ``pvalue`` uncorrected).
        pvalue, log10_pvalue: the dataset p-value, Bonferroni-corrected for ``n_keys``.
        n_keys: keys tested.
        per_key: every key's pooled test, in the order given.
        n_records_read, n_records_scored, n_records_skipped: records seen, tested, and skipped
            as bad (read = scored + skipped).
        fdr: the Benjamini-Hochberg level of the per-record flags.
        n_flagged: records flagged.
        bh_log10_threshold: largest flagged log10 p-value (``-inf``: none).
        fraction: estimated fraction of watermarked records and its interval (best key).
    """

    aggregate: AggregateResult
    pvalue: float
    log10_pvalue: float
    n_keys: int
    per_key: tuple[AggregateResult, ...]
    n_records_read: int
    n_records_scored: int
    n_records_skipped: int
    fdr: float
    n_flagged: int
    bh_log10_threshold: float
    fraction: FractionEstimate

    best_field: ClassVar[str] = "aggregate"
    power_statement: ClassVar[bool] = True

    def detectable_fraction(self, alpha: float = DEFAULT_ALPHA) -> float:
        """Smallest watermarked share of the pooled tuples the test would find at ``alpha``
        (after the correction for the keys) with probability 1/2; ``inf`` if none would be."""
        return self.aggregate.detectable_fraction(min(0.5, alpha / self.n_keys))

    def fields_dict(self) -> dict[str, Any]:
        """The best key's pooled fields with the corrected p-value, the record counts, the
        flags and the fraction estimate (``fraction_*``), every key's result (``per_key``)."""
        d = super().fields_dict()
        for f in fields(self):
            if f.name in ("aggregate", "pvalue", "log10_pvalue", "n_keys", "per_key",
                          "fraction"):
                continue
            v = getattr(self, f.name)
            d[f.name] = v if not (isinstance(v, float) and math.isinf(v)) else None
        for k, v in self.fraction.to_dict().items():
            d[f"fraction_{k}" if k != "estimate" else "fraction"] = v
        d["per_key"] = [r.to_dict() for r in self.per_key]
        return d


def _fraction(ks: KeyState, agg: AggregateResult, confidence: float) -> FractionEstimate:
    """Among the records with at least ``min_scored`` fresh tuples (binomial family) or scored
    tuples (others): a record with less says too little to be classified, and which records
    say little is not independent of what they are (near-duplicates of other records)."""
    if ks.scheme.test in BINOMIAL_TESTS:
        n, k, c = ks.pairs.arrays()
        return binomial_mixture(n, k, c, p0=agg.null_mean, confidence=confidence,
                                theta_min=theta_floor(agg.null_mean, agg.effect),
                                min_units=agg.min_scored * ks._depth)
    lg = ks.log10_pvalues[ks.n_scored >= agg.min_scored]
    return pvalue_mixture(lg, confidence=confidence, min_units=agg.min_scored)


def finish(state: ScanState, *, fdr: float = DEFAULT_FDR, min_scored: int = DEFAULT_MIN_SCORED,
           effect: float | None = None, confidence: float = 0.95
           ) -> tuple[ScanResult, np.ndarray, np.ndarray]:
    """The dataset result of a complete state, with the per-record corrected log10 p-values
    ``(m,)`` and BH flags ``(m,) bool``."""
    per_key = tuple(ks.acc.result(min_scored=min_scored, effect=effect) for ks in state.keys)
    n_keys = len(per_key)
    b = int(np.argmin([r.log10_pvalue for r in per_key]))
    agg = per_key[b]
    if n_keys == 1:
        rec = state.keys[0].log10_pvalues
    else:
        rec = np.minimum(0.0, np.min(np.stack([k.log10_pvalues for k in state.keys]), axis=0)
                         + math.log10(n_keys))
    flags, t = benjamini_hochberg(rec, fdr)
    res = ScanResult(
        aggregate=agg, pvalue=min(1.0, agg.pvalue * n_keys),
        log10_pvalue=min(0.0, agg.log10_pvalue + math.log10(n_keys)), n_keys=n_keys,
        per_key=per_key, n_records_read=state.n_read,
        n_records_scored=state.n_scored_records, n_records_skipped=state.n_skipped, fdr=fdr,
        n_flagged=int(flags.sum()), bh_log10_threshold=t,
        fraction=_fraction(state.keys[b], agg, confidence))
    return res, rec, flags


# --------------------------------------------------------------------------------------------
# Output files


def _atomic_path(path: Path) -> Path:
    """A temporary file beside ``path`` (to be renamed onto it), with the usual mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return Path(tmp)


def _write_results(rows_path: Path, flags: np.ndarray, out: Path) -> None:
    """Final per-record file from the work file's lines and the BH flags (atomic)."""
    tmp = _atomic_path(out)
    try:
        if out.suffix.lower() == ".parquet":
            _write_parquet(rows_path, flags, tmp)
        else:
            with open(rows_path, "rb") as src, open(tmp, "wb") as dst:
                for line, flag in zip(src, flags.tolist()):
                    dst.write(line[:-2])
                    dst.write(b', "flagged": true}\n' if flag else b', "flagged": false}\n')
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_COLUMNS = ("location", "n_tokens", "n_scored", "statistic", "pvalue", "log10_pvalue",
            "score_mean", "key_id")


def _write_parquet(rows_path: Path, flags: np.ndarray, dest: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from distillmark.watermark.errors import MissingDependencyError

        raise MissingDependencyError("--out .parquet needs pyarrow: pip install "
                                     "'distillmark[scale]'") from None
    schema = pa.schema([("location", pa.string()), ("n_tokens", pa.int64()),
                        ("n_scored", pa.int64()), ("statistic", pa.float64()),
                        ("pvalue", pa.float64()), ("log10_pvalue", pa.float64()),
                        ("score_mean", pa.float64()), ("key_id", pa.string()),
                        ("flagged", pa.bool_())])
    with pq.ParquetWriter(dest, schema) as writer, open(rows_path, "rb") as src:
        start = 0
        while True:
            lines = [ln for _, ln in zip(range(1 << 17), src)]
            if not lines:
                break
            recs = [json.loads(ln) for ln in lines]
            cols = {c: [r[c] for r in recs] for c in _COLUMNS}
            cols["flagged"] = flags[start:start + len(recs)].tolist()
            writer.write_table(pa.table(cols, schema=schema))
            start += len(recs)
        if start == 0:
            writer.write_table(schema.empty_table())


# --------------------------------------------------------------------------------------------
# The local engine, with checkpoints


@dataclass(frozen=True)
class ScanProgress:
    """Reported after each chunk: bytes of input covered (of ``total_bytes``), records, tokens."""

    bytes_done: int
    total_bytes: int
    records: int
    tokens: int


def _plan_fingerprint(shards: list[Shard], config: ScanConfig) -> str:
    files = []
    for sh in shards:
        st = os.stat(sh.path)
        files.append([sh.path, sh.fmt, sh.compression, sh.start, sh.stop, st.st_size,
                      st.st_mtime_ns])
    blob = json.dumps({"files": files, "config": config.fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class _Work:
    """The work files of a scan (result lines, rejects) and its checkpoint, in one folder."""

    def __init__(self, folder: Path, keep: bool) -> None:
        self.folder = folder
        self.keep = keep
        folder.mkdir(parents=True, exist_ok=True)
        self.rows = folder / "rows.jsonl"
        self.rejects = folder / "rejects.jsonl"
        self.checkpoint = folder / "checkpoint.npz"

    def save(self, meta: dict[str, Any], state: ScanState, rows_fh: Any, rej_fh: Any) -> None:
        rows_fh.flush()
        rej_fh.flush()
        os.fsync(rows_fh.fileno())
        os.fsync(rej_fh.fileno())
        meta = dict(meta, rows_bytes=rows_fh.tell(), rejects_bytes=rej_fh.tell())
        arrays = state.to_arrays()
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = self.folder / "checkpoint.tmp.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.checkpoint)

    def load(self, state: ScanState, fingerprint: str) -> dict[str, Any] | None:
        if not self.checkpoint.is_file():
            return None
        try:
            with np.load(self.checkpoint) as arrays:
                meta = json.loads(bytes(arrays["meta"]).decode())
                if meta.get("fingerprint") != fingerprint:
                    raise InputError(f"{self.folder}: the checkpoint there belongs to another "
                                     "scan (inputs, keys or options changed); delete it or "
                                     "give another --state-dir")
                state.load_arrays(arrays)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.checkpoint}: unreadable checkpoint ({exc}); delete it to "
                             "start again") from None
        return meta  # type: ignore[no-any-return]


def scan(inputs: Sequence[str | Path], specs: Sequence[WatermarkSpec], *,
         field: str | None = None, chat: str | None = None, fmt: str = "auto",
         out: str | Path | None = None, rejects: str | Path | None = None,
         skip_bad: bool = False, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
         fdr: float = DEFAULT_FDR, min_scored: int = DEFAULT_MIN_SCORED,
         effect: float | None = None, confidence: float = 0.95,
         tokenizer: str | None = None, resume: bool = False,
         state_dir: str | Path | None = None, engine: str = "local",
         scheduler: str | None = None, n_workers: int = 2, shard_bytes: int = 64 << 20,
         batch_chars: int = DEFAULT_BATCH_CHARS, checkpoint_seconds: float = 30.0,
         report: str | Path | None = None, alpha: float = DEFAULT_ALPHA,
         progress: Callable[[ScanProgress], None] | None = None,
         on_checkpoint: Callable[[int], None] | None = None) -> ScanResult:
    """Scan a dataset for the watermark of ``specs`` (see the module doc).

    Args:
        inputs: files and directories (JSONL[.gz|.zst], Parquet, CSV, text, datasets folders).
        specs: the keys (several: every p-value Bonferroni-corrected).
        field, chat: the text's dotted path, or the chat messages' path (one of them).
        fmt: ``auto`` (from the file names) or a format for every file.
        out: per-record results, ``.jsonl`` or ``.parquet`` (written atomically at the end).
        rejects: where ``skip_bad`` writes the bad records (JSONL: location and reason);
            default ``OUT.rejects.jsonl`` beside ``out``, or none without ``out``.
        skip_bad: go on past bad records (else the first one raises :class:`InputError`).
        fdr: Benjamini-Hochberg level of the per-record flags.
        min_scored, effect, confidence: of the dataset test, its power statement, the fraction
            interval.
        resume: keep an atomic checkpoint in ``state_dir`` (default ``OUT.scan-state``, or
            ``.distillmark-scan-state``) and continue from it if one is there; the result is
            the same as an uninterrupted scan's. The folder is removed when the scan ends.
        engine: ``local`` or ``dask`` (``scheduler`` address, else a LocalCluster of
            ``n_workers`` processes; inputs cut into shards of about ``shard_bytes``).
        report: write a self-contained HTML report there (needs matplotlib).
        alpha: level of the verdict shown in the report.
        progress: called after each chunk; on_checkpoint: called after each checkpoint with
            their count.
    """
    if engine not in ("local", "dask"):
        raise InputError(f"--engine must be local or dask, got {engine!r}")
    if not 0.0 < fdr < 1.0:
        raise ParameterError(f"`fdr` must be in (0, 1), got {fdr}")
    if not 0.0 < confidence < 1.0:
        raise ParameterError(f"`confidence` must be in (0, 1), got {confidence}")
    if min_scored < 1:
        raise ParameterError(f"`min_scored` must be >= 1, got {min_scored}")
    check_alpha(alpha)
    out_p = Path(out) if out is not None else None
    if out_p is not None and out_p.suffix.lower() not in (".jsonl", ".parquet"):
        raise InputError(f"--out must end in .jsonl or .parquet, got {out_p.name}")
    if out_p is not None and not out_p.parent.is_dir():
        raise InputError(f"--out {out_p}: folder {out_p.parent} does not exist")
    if resume and engine != "local":
        raise InputError("--resume works with the local engine only")
    config = ScanConfig(specs=tuple(specs), field=field, chat=chat,
                        max_record_bytes=max_record_bytes, skip_bad=skip_bad,
                        tokenizer=tokenizer, batch_chars=batch_chars, rows=out_p is not None)
    rej_p = (Path(rejects) if rejects is not None
             else out_p.with_name(out_p.name + ".rejects.jsonl") if out_p is not None and skip_bad
             else None)
    shards = plan_shards(list(inputs), fmt=fmt,
                         shard_bytes=shard_bytes if engine == "dask" else None)
    w = _Worker.of(config)
    state = ScanState(w.schemes)
    if resume:
        folder = Path(state_dir) if state_dir is not None else (
            out_p.with_name(out_p.name + ".scan-state") if out_p is not None
            else Path(".distillmark-scan-state"))
        work = _Work(folder, keep=True)
    else:
        base = out_p.parent if out_p is not None else None
        work = _Work(Path(tempfile.mkdtemp(prefix=".distillmark-scan-", dir=base)), keep=False)
    ok = False
    try:
        if engine == "dask":
            from .dask_engine import run_dask

            with open(work.rows, "w", encoding="utf-8") as rows_fh, \
                    open(work.rejects, "w", encoding="utf-8") as rej_fh:
                run_dask(shards, config, state, rows_fh, rej_fh, scheduler=scheduler,
                         n_workers=n_workers, progress=progress)
        else:
            _run_local(shards, config, state, work, resume=resume,
                       checkpoint_seconds=checkpoint_seconds, progress=progress,
                       on_checkpoint=on_checkpoint)
        result, rec_log10p, flags = finish(state, fdr=fdr, min_scored=min_scored,
                                           effect=effect, confidence=confidence)
        if out_p is not None:
            _write_results(work.rows, flags, out_p)
        if rej_p is not None:
            tmp = _atomic_path(rej_p)
            shutil.copyfile(work.rejects, tmp)
            os.replace(tmp, rej_p)
        if report is not None:
            from .report import write_report

            write_report(Path(report), result, rec_log10p, state.keys[
                [r.key_id for r in result.per_key].index(result.aggregate.key_id)],
                alpha=alpha)
        ok = True
        return result
    except DistillmarkError:
        ok = True  # an input or usage error: a checkpoint of it is of no use
        raise
    finally:
        if ok or not work.keep:
            shutil.rmtree(work.folder, ignore_errors=True)


def _run_local(shards: list[Shard], config: ScanConfig, state: ScanState, work: _Work, *,
               resume: bool, checkpoint_seconds: float,
               progress: Callable[[ScanProgress], None] | None,
               on_checkpoint: Callable[[int], None] | None) -> None:
    fingerprint = _plan_fingerprint(shards, config) if resume else ""
    meta = work.load(state, fingerprint) if resume else None
    first_shard, skip = (meta["shard"], meta["skip"]) if meta else (0, 0)
    mode = "r+" if meta else "w"
    if meta:
        for path, size in ((work.rows, meta["rows_bytes"]), (work.rejects, meta["rejects_bytes"])):
            if not path.is_file() or path.stat().st_size < size:
                raise InputError(f"{work.folder}: work files shorter than the checkpoint "
                                 "records; delete the folder to start again")
            os.truncate(path, size)
    total = sum(sh.size for sh in shards)
    done_bytes = sum(sh.size for sh in shards[:first_shard])
    last = time.monotonic()
    n_ckpt = 0
    if progress is not None:
        progress(ScanProgress(done_bytes, total, state.n_read, state.keys[0].acc.n_tokens))
    with open(work.rows, mode, encoding="utf-8") as rows_fh, \
            open(work.rejects, mode, encoding="utf-8") as rej_fh:
        rows_fh.seek(0, os.SEEK_END)
        rej_fh.seek(0, os.SEEK_END)
        for si in range(first_shard, len(shards)):
            sh = shards[si]
            chars0 = state.n_chars
            for rows, rejects, n_done in iter_shard_chunks(sh, config, state, skip=skip):
                rows_fh.write(rows)
                rej_fh.write(rejects)
                if progress is not None:  # text read so far stands for the bytes of the shard
                    within = min(sh.size, state.n_chars - chars0)
                    progress(ScanProgress(done_bytes + within, total, state.n_read,
                                          state.keys[0].acc.n_tokens))
                if resume and time.monotonic() - last >= checkpoint_seconds:
                    work.save({"fingerprint": fingerprint, "shard": si, "skip": n_done},
                              state, rows_fh, rej_fh)
                    last = time.monotonic()
                    n_ckpt += 1
                    if on_checkpoint is not None:
                        on_checkpoint(n_ckpt)
            skip = 0
            done_bytes += sh.size
        if progress is not None:
            progress(ScanProgress(total, total, state.n_read, state.keys[0].acc.n_tokens))

