"""Attributing the records of files and datasets, as ``distillmark attribute`` does.

Inputs are read as a scan reads them (:mod:`.sources`: text files, JSON Lines, Parquet, CSV,
``datasets`` folders, a dotted ``field`` or a ``chat`` path); records are tokenised in batches
and attributed one by one (:class:`~.attribute.Attributor`), and every batch feeds the dataset
test (:class:`~.attribute_dataset.DatasetAccumulator`). Bad records stop the run with their
location, or are skipped and reported. With a request log, each attributed record is checked
against what the server logged for the account it names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distillmark.watermark.errors import InputError
from distillmark.watermark.serve.log import read_log, text_digest

from .attribute import AttributionResult, Attributor, best_of_keys
from .attribute_dataset import DatasetAccumulator, DatasetAttribution, merge_keys
from .decision import DEFAULT_ALPHA
from .sources import DEFAULT_MAX_RECORD_BYTES, BadRecord, Segment, Selector, iter_shard, plan_shards

__all__ = ["AttributedRecord", "AttributionRun", "attribute_inputs", "logged_answers"]

_BATCH_CHARS = 1 << 20


@dataclass(frozen=True)
class AttributedRecord:
    """One record's attribution, and whether the request log holds its text for the account
    named (None without a log, or when no account is named)."""

    result: AttributionResult
    in_log: bool | None


@dataclass
class AttributionRun:
    """What a run read: record counts, the rejected records (location, reason) and the dataset
    test."""

    n_read: int = 0
    n_skipped: int = 0
    n_attributed: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)
    dataset: DatasetAttribution | None = None


def logged_answers(path: str | Path) -> dict[str, set[str]]:
    """Account -> SHA-256 digests of the answers a request log says it was served."""
    out: dict[str, set[str]] = {}
    for rec in read_log(path):
        if rec.account is not None:
            out.setdefault(rec.account, set()).update(rec.answer_digests)
    return out


def _records(inputs: Sequence[str | Path], selector: Selector, *, fmt: str,
             max_record_bytes: int, skip_bad: bool
             ) -> Iterator[tuple[str, list[Segment] | BadRecord]]:
    for shard in plan_shards(list(inputs), fmt=fmt, skip_bad=skip_bad):
        for loc, rec in iter_shard(shard, max_record_bytes=max_record_bytes):
            yield loc, rec if isinstance(rec, BadRecord) else selector.segments(rec)


def attribute_inputs(inputs: Sequence[str | Path], att: Attributor | Sequence[Attributor], *,
                     on_records: Callable[[list[AttributedRecord]], None],
                     field_path: str | None = None, chat: str | None = None,
                     fmt: str = "auto", skip_bad: bool = False,
                     max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                     alpha: float = DEFAULT_ALPHA, log: dict[str, set[str]] | None = None,
                     progress: Callable[[int], None] | None = None) -> AttributionRun:
    """Attribute every record of ``inputs``; ``on_records`` receives each batch's results in
    input order, ``progress`` the records read so far.

    ``att``: one attributor, or one per key of a key ring, all with the same candidates: each
    record is then attributed under every key and the best kept (:func:`.best_of_keys`), and
    the dataset test runs under every key (:func:`.attribute_dataset.merge_keys`)."""
    atts = [att] if isinstance(att, Attributor) else list(att)
    selector = Selector(field_path, chat)
    run = AttributionRun()
    accs = [DatasetAccumulator(a) for a in atts]
    batch: list[tuple[str, list[Segment]]] = []
    chars = 0

    def flush() -> None:
        results = _attribute_batch(atts, batch, accs, alpha=alpha, log=log)
        run.n_attributed += sum(r.result.account_at(alpha) is not None for r in results)
        on_records(results)
        if progress is not None:
            progress(run.n_read)

    for loc, segs in _records(inputs, selector, fmt=fmt, max_record_bytes=max_record_bytes,
                              skip_bad=skip_bad):
        run.n_read += 1
        if isinstance(segs, BadRecord):
            if not skip_bad:
                raise InputError(f"{loc}: {segs.reason} (--skip-bad skips bad records)")
            run.n_skipped += 1
            run.rejects.append((loc, segs.reason))
            continue
        batch.append((loc, segs))
        chars += sum(len(s.text) + len(s.context) for s in segs)
        if chars >= _BATCH_CHARS:
            flush()
            batch, chars = [], 0
    if batch:
        flush()
    run.dataset = merge_keys([a.result() for a in accs])
    return run


def _attribute_batch(atts: Sequence[Attributor], batch: list[tuple[str, list[Segment]]],
                     accs: Sequence[DatasetAccumulator], *, alpha: float,
                     log: dict[str, set[str]] | None) -> list[AttributedRecord]:
    results = best_of_keys([_key_batch(att, batch, acc) for att, acc in zip(atts, accs)])
    out = []
    for (_, segs), r in zip(batch, results):
        named = r.account_at(alpha)
        in_log = None
        if log is not None and named is not None:
            digests = log.get(named, set())
            in_log = any(text_digest(s.text) in digests for s in segs)
        out.append(AttributedRecord(r, in_log))
    return out


def _key_batch(att: Attributor, batch: list[tuple[str, list[Segment]]],
               acc: DatasetAccumulator) -> list[AttributionResult]:
    """A batch's records attributed under one key, their cells fed to its dataset test."""
    contexts: list[str] = []
    texts: list[str] = []
    records: list[int] = []
    for i, (_, segs) in enumerate(batch):
        for s in segs:
            contexts.append(s.context)
            texts.append(s.text)
            records.append(i)
    enc = att.detector.encoder.encode_lists(contexts + texts) if texts else []
    ctx_ids, text_ids = enc[:len(texts)], enc[len(texts):]
    # a context and the text after it form one sequence whose prompt is the context
    seqs = [np.concatenate([c, t]) for c, t in zip(ctx_ids, text_ids)]
    plens = [int(c.size) for c in ctx_ids]
    rec = np.asarray(records, dtype=np.int64)
    cells, groups = att.distinct_cells(seqs, prompt_lens=plens, records=rec)
    acc.add(cells, groups, len(batch))
    n_tokens = np.bincount(rec, weights=[s.size - p for s, p in zip(seqs, plens)],
                           minlength=len(batch)).astype(np.int64)
    return att.results(cells, groups, len(batch), n_tokens, [loc for loc, _ in batch])
