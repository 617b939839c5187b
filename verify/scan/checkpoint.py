"""The work folder of a scan: its result and reject lines as they come and, with ``resume``,
an atomic checkpoint of the state that a later run continues from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from distillmark.watermark.errors import InputError
from distillmark.watermark.files import atomic_write, check_writable

from ..sources import Shard
from .state import ScanState
from .worker import ScanConfig

__all__ = ["WorkFolder", "plan_fingerprint"]


def plan_fingerprint(shards: list[Shard], config: ScanConfig) -> str:
    """What a checkpoint belongs to: the input files as they are (size, modification time),
    the shards cut from them and the configuration."""
    files = []
    for sh in shards:
        try:
            st = os.stat(sh.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a file skipped as unreadable (a broken link)
            size, mtime = -1, -1
        files.append([sh.path, sh.fmt, sh.compression, sh.start, sh.stop, size, mtime,
                      sh.bad])
    blob = json.dumps({"files": files, "config": config.fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class WorkFolder:
    """The work files of a scan (result lines, rejects) and its checkpoint, in one folder."""

    def __init__(self, folder: Path, keep: bool, *, what: str = "") -> None:
        self.folder = folder
        self.keep = keep
        label = what or str(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"cannot write {label}: it is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot write {label}: {exc.strerror or exc}") from None
        self.rows = folder / "rows.jsonl"
        self.rejects = folder / "rejects.jsonl"
        self.checkpoint = folder / "checkpoint.npz"
        check_writable(self.checkpoint, what=label)

    def save(self, meta: dict[str, Any], state: ScanState, rows_fh: Any, rej_fh: Any) -> None:
        rows_fh.flush()
        rej_fh.flush()
        os.fsync(rows_fh.fileno())
        os.fsync(rej_fh.fileno())
        meta = dict(meta, rows_bytes=rows_fh.tell(), rejects_bytes=rej_fh.tell())
        arrays = state.to_arrays()
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_write(self.checkpoint, text=False) as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

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
