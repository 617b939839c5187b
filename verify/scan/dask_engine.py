"""The Dask engine of a scan: shards scored on a cluster, merged in shard order.

Each task is :func:`~.shards.process_shard` on one shard (a file, a line-aligned byte range of a
JSONL file, a run of Parquet row groups): a pure function whose output, the shard's
:class:`~.state.ScanState` and its result lines, merges into the client's state. Tuples are
deduplicated globally by merging the shards' tuple sets (a bitmap OR for small tables, a merge of
sorted keys otherwise: what a hash-partitioned dedup computes, in one step). Results are taken
in shard order, so the output is the local engine's, byte for byte. At most ``2 x workers``
shards are in flight: the client's memory holds a few shards' results, whatever the dataset
size.

Needs the ``scale`` extra (``dask[distributed]``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import IO, Any

from distillmark.watermark.errors import InputError, MissingDependencyError

from ..sources import Shard
from .shards import ScanProgress, process_shard
from .state import ScanState
from .worker import ScanConfig

__all__ = ["run_dask"]


def _client(scheduler: str | None, n_workers: int, processes: bool) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MissingDependencyError("--engine dask needs dask.distributed: pip install "
                                     "'distillmark[scale]'") from None
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect: {exc}") from None
    if n_workers < 1:
        raise InputError(f"--workers must be >= 1, got {n_workers}")
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                           dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def run_dask(shards: list[Shard], config: ScanConfig, state: ScanState, rows_fh: IO[str],
             rejects_fh: IO[str], *, scheduler: str | None = None, n_workers: int = 2,
             processes: bool = True,
             progress: Callable[[ScanProgress], None] | None = None) -> None:
    """Score ``shards`` on a Dask cluster into ``state``, writing result and reject lines in
    shard order. A bad record (without ``skip_bad``) raises the same error as locally: the
    first in input order."""
    client, cluster = _client(scheduler, n_workers, processes)
    try:
        width = 2 * max(1, len(client.scheduler_info().get("workers", {})) or n_workers)
        pending: deque[Any] = deque()
        total = sum(sh.size for sh in shards)
        done = 0
        it = iter(shards)
        for sh in it:
            pending.append((sh, client.submit(process_shard, sh, config, pure=False)))
            if len(pending) >= width:
                break
        while pending:
            sh, fut = pending.popleft()
            try:
                out = fut.result()
            except BaseException:
                for _, f in pending:
                    f.cancel()
                raise
            state.merge(out.state)
            rows_fh.write(out.rows)
            rejects_fh.write(out.rejects)
            done += sh.size
            if progress is not None:
                progress(ScanProgress(done, total, state.n_read, state.keys[0].acc.n_tokens))
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, client.submit(process_shard, nxt, config, pure=False)))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
