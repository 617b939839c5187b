"""One shard of a scan's input scored chunk by chunk: records read
(:mod:`~distillmark.verify.sources`), their texts tokenised in large batches, every key's scores
added to the state, and the records' result lines and rejected records handed back.

:func:`process_shard` scores a whole shard from scratch: the unit of work of a cluster engine
(pure: the same shard and config give the same output anywhere).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from distillmark.watermark.errors import InputError

from ..sources import BadRecord, Segment, Shard, iter_shard
from .output import result_lines
from .scoring import score_tokens
from .state import ScanState
from .worker import ScanConfig, Worker

__all__ = ["ScanProgress", "ShardOutput", "iter_shard_chunks", "process_shard"]


@dataclass(frozen=True)
class ScanProgress:
    """Reported after each chunk: bytes of input covered (of ``total_bytes``), records, tokens."""

    bytes_done: int
    total_bytes: int
    records: int
    tokens: int


@dataclass
class _Chunk:
    """Records gathered for one tokenizer batch."""

    locs: list[str] = field(default_factory=list)
    segs: list[list[Segment]] = field(default_factory=list)
    chars: int = 0


def _score_chunk(w: Worker, chunk: _Chunk, state: ScanState) -> str:
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
    named = _attribute_chunk(w, ids, lens, plens, seq_rec, n_rec, state)
    state.n_read += n_rec
    if not w.config.rows:
        return ""
    return result_lines(chunk.locs, per_key, [k.scheme.key_id for k in state.keys],
                        accounts=named)


def _attribute_chunk(w: Worker, ids: np.ndarray, lens: np.ndarray, plens: np.ndarray,
                     seq_rec: np.ndarray, n_rec: int, state: ScanState
                     ) -> list[tuple[str | None, float]] | None:
    """With candidate accounts: each record's account named at the scan's level (or None) and
    its corrected log10 p-value; the records' cells go to the dataset attribution."""
    att = w.attributor
    if att is None or state.accounts is None:
        return None
    seqs = np.split(ids, np.cumsum(lens)[:-1]) if lens.size else []
    cells, groups = att.distinct_cells(seqs, prompt_lens=plens.tolist(), records=seq_rec)
    state.accounts.add(cells, groups, n_rec)
    n_tok = np.bincount(seq_rec, weights=lens - plens, minlength=n_rec).astype(np.int64)
    results = att.results(cells, groups, n_rec, n_tok, [""] * n_rec)
    return [(r.account_at(w.config.alpha), r.log10_pvalue) for r in results]


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
    w = Worker.of(config)
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
    w = Worker.of(config)
    state = ScanState(w.schemes, defer_pairs=True)
    rows, rejects = [], []
    for r, j, _ in iter_shard_chunks(shard, config, state):
        rows.append(r)
        rejects.append(j)
    return ShardOutput(state, "".join(rows), "".join(rejects))
