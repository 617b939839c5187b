"""The local engine of a scan, and :func:`scan`, which runs it (or the Dask engine) and writes
the results.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from distillmark.watermark.errors import DistillmarkError, InputError, ParameterError
from distillmark.watermark.files import atomic_write, check_writable
from distillmark.watermark.keys import WatermarkSpec

from ..attribute_dataset import DatasetAccumulator
from ..candidates import Candidates
from ..decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, check_alpha
from ..sources import DEFAULT_MAX_RECORD_BYTES, Shard, plan_shards
from .checkpoint import WorkFolder, plan_fingerprint
from .output import write_results
from .result import DEFAULT_FDR, ScanResult, finish
from .shards import ScanProgress, iter_shard_chunks
from .state import ScanState
from .worker import DEFAULT_BATCH_CHARS, ScanConfig, Worker

__all__ = ["scan"]


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
         html: str | Path | None = None, alpha: float = DEFAULT_ALPHA,
         progress: Callable[[ScanProgress], None] | None = None,
         on_checkpoint: Callable[[int], None] | None = None,
         accounts: Candidates | None = None) -> ScanResult:
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
        html: write a self-contained HTML page of the scan there, with figures (needs
            matplotlib).
        alpha: level of the verdict shown on the page.
        progress: called after each chunk; on_checkpoint: called after each checkpoint with
            their count.
        accounts: candidate accounts: every record is also attributed with the first key's
            account layer (named at ``alpha``), and the result holds the accounts the dataset
            points to (local engine, without ``resume``).
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
    if resume and engine != "local":
        raise InputError("--resume works with the local engine only")
    if accounts is not None and (resume or engine != "local"):
        raise InputError("--accounts works with the local engine, without --resume")
    config = ScanConfig(specs=tuple(specs), field=field, chat=chat,
                        max_record_bytes=max_record_bytes, skip_bad=skip_bad,
                        tokenizer=tokenizer, batch_chars=batch_chars, rows=out_p is not None,
                        accounts=accounts, alpha=alpha)
    rej_p = (Path(rejects) if rejects is not None
             else out_p.with_name(out_p.name + ".rejects.jsonl") if out_p is not None and skip_bad
             else None)
    # outputs that cannot be written are refused now, not after the whole scan
    for name, path in (("--out", out_p), ("--rejects", rej_p), ("--html", html)):
        if path is not None:
            check_writable(path, what=f"{name} {path}")
    shards = plan_shards(list(inputs), fmt=fmt, skip_bad=skip_bad,
                         shard_bytes=shard_bytes if engine == "dask" else None)
    w = Worker.of(config)
    state = ScanState(w.schemes)
    if w.attributor is not None:
        state.accounts = DatasetAccumulator(w.attributor)
    if resume:
        folder = Path(state_dir) if state_dir is not None else (
            out_p.with_name(out_p.name + ".scan-state") if out_p is not None
            else Path(".distillmark-scan-state"))
        work = WorkFolder(folder, keep=True, what=f"--state-dir {folder}")
    else:
        base = out_p.parent if out_p is not None else Path(tempfile.gettempdir())
        try:
            tmp = tempfile.mkdtemp(prefix=".distillmark-scan-", dir=base)
        except OSError as exc:
            raise InputError(f"cannot make the scan's work folder in {base}: "
                             f"{exc.strerror or exc}") from None
        work = WorkFolder(Path(tmp), keep=False)
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
            write_results(work.rows, flags, out_p)
        if rej_p is not None:
            with open(work.rejects, "rb") as src, \
                    atomic_write(rej_p, text=False, what=f"--rejects {rej_p}") as dst:
                shutil.copyfileobj(src, dst)
        if html is not None:
            from .report import write_report

            write_report(Path(html), result, rec_log10p, state.keys[
                [r.key_id for r in result.per_key].index(result.aggregate.key_id)],
                alpha=alpha)
        ok = True
        return result
    except DistillmarkError:
        ok = True  # an input or usage error: a checkpoint of it is of no use
        raise
    except OSError as exc:  # the disk full, a work file gone: one line; a checkpoint is kept
        where = f"{exc.filename}: " if exc.filename else ""
        again = "; run it again with --resume to continue" if work.keep else ""
        raise InputError(f"the scan stopped: {where}{exc.strerror or exc}{again}") from None
    finally:
        if ok or not work.keep:
            shutil.rmtree(work.folder, ignore_errors=True)


def _run_local(shards: list[Shard], config: ScanConfig, state: ScanState, work: WorkFolder, *,
               resume: bool, checkpoint_seconds: float,
               progress: Callable[[ScanProgress], None] | None,
               on_checkpoint: Callable[[int], None] | None) -> None:
    fingerprint = plan_fingerprint(shards, config) if resume else ""
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
