"""The inputs of a scan cut into shards: files and directories in, :class:`Shard` units of
reading (and of work for a cluster) out, each a file or a line-aligned byte range of an
uncompressed JSONL file or a range of Parquet row groups.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillmark.watermark.errors import InputError, MissingDependencyError
from distillmark.watermark.files import read_json

__all__ = ["FORMATS", "READ_BLOCK", "Shard", "plan_shards", "pyarrow_parquet"]

FORMATS = ("auto", "jsonl", "parquet", "csv", "text", "hf")

_JSONL_EXT = (".jsonl", ".ndjson", ".json")
_TEXT_EXT = (".txt", ".text", ".md")
_COMPRESSED = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
#: Bytes read at a time.
READ_BLOCK = 1 << 20
#: A datasets folder's state.json or dataset_dict.json: a few kB.
_MAX_META_BYTES = 16 << 20


@dataclass(frozen=True)
class Shard:
    """A unit of reading (and of work for a cluster): one file or a part of it.

    Attributes:
        path: the file.
        fmt: ``jsonl``, ``csv``, ``text``, ``parquet`` or ``arrow`` (an HF Arrow stream file).
        compression: ``""``, ``"gz"`` or ``"zst"`` (JSONL only).
        start, stop: byte range of an uncompressed JSONL file (``stop = -1``: to the end),
            or the row groups ``start..stop-1`` of a Parquet file; unused otherwise.
        first_line: line number of the line at byte ``start`` (JSONL).
        size: bytes of input the shard covers (for progress).
        bad: why the file is not read (not a regular file: a FIFO, a device, a broken link);
            its reader yields this as one bad record, the file's path as its location.
    """

    path: str
    fmt: str
    compression: str = ""
    start: int = 0
    stop: int = -1
    first_line: int = 1
    size: int = 0
    bad: str = ""


def _format_of(path: Path) -> tuple[str, str]:
    """(format, compression) from a file's name."""
    name = path.name.lower()
    comp = ""
    for ext, c in _COMPRESSED.items():
        if name.endswith(ext):
            comp, name = c, name[: -len(ext)]
            break
    if name.endswith(_JSONL_EXT):
        return "jsonl", comp
    if comp:
        raise InputError(f"{path}: compressed files must be JSON Lines (.jsonl.gz, .jsonl.zst)")
    if name.endswith((".parquet", ".pq")):
        return "parquet", ""
    if name.endswith(".csv"):
        return "csv", ""
    if name.endswith(".arrow"):
        return "arrow", ""
    if name.endswith(_TEXT_EXT):
        return "text", ""
    raise InputError(f"{path}: unknown file type (use .jsonl[.gz|.zst], .parquet, .csv, .txt, "
                     "or pass --format)")


def _hf_files(folder: Path) -> list[Path] | None:
    """Arrow files of a ``save_to_disk`` folder (a Dataset or a DatasetDict), else None."""
    state = folder / "state.json"
    if state.is_file():
        d = read_json(state, max_bytes=_MAX_META_BYTES)
        try:
            names = [f["filename"] for f in d["_data_files"]]
        except (KeyError, TypeError) as exc:
            raise InputError(f"{state}: not a datasets state file: {exc}") from None
        for name in names:  # files of the folder itself, never a path out of it
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                raise InputError(f"{state}: data file {name!r} is not a file name in "
                                 f"{folder}")
        return [folder / name for name in names]
    dd = folder / "dataset_dict.json"
    if dd.is_file():
        d = read_json(dd, max_bytes=_MAX_META_BYTES)
        try:
            splits = d["splits"]
            if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
                raise TypeError("'splits' is not a list of names")
        except (KeyError, TypeError) as exc:
            raise InputError(f"{dd}: not a datasets dict file: {exc}") from None
        out: list[Path] = []
        for split in splits:
            sub = _hf_files(folder / split)
            if sub is None:
                raise InputError(f"{folder / split}: split folder without state.json")
            out.extend(sub)
        return out
    return None


def _expand(path: Path, fmt: str) -> list[tuple[Path, str, str]]:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        hf = _hf_files(path)
        if hf is not None:
            return [(p, "arrow", "") for p in hf]
        if fmt == "hf":
            raise InputError(f"{path}: not a datasets folder (no state.json or "
                             "dataset_dict.json)")
        out = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            hidden = [d for d in dirs if d.startswith(".")]
            for d in hidden:
                dirs.remove(d)
            rootp = Path(root)
            for name in sorted(files):
                if name.startswith("."):
                    continue
                p = rootp / name
                try:
                    f, c = _format_of(p) if fmt == "auto" else (fmt, _format_of_comp(p))
                except InputError:
                    continue  # a directory may hold other files (READMEs, licences): skipped
                out.append((p, f, c))
        if not out:
            raise InputError(f"{path}: no readable data files in this directory")
        return out
    if fmt == "auto":
        f, c = _format_of(path)
    else:
        f, c = ("arrow" if fmt == "hf" else fmt), _format_of_comp(path)
    return [(path, f, c)]


def _format_of_comp(path: Path) -> str:
    for ext, c in _COMPRESSED.items():
        if path.name.lower().endswith(ext):
            return c
    return ""


def _not_regular(path: Path) -> str:
    """Why ``path`` is not read as data ("" for a regular file, or a link to one): a FIFO
    would block the scan, a device (``/dev/zero``) never end."""
    link = "a symbolic link to " if path.is_symlink() else ""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return ("not a regular file: a broken symbolic link" if link
                else f"cannot read: {exc.strerror or exc}")
    if stat.S_ISREG(mode):
        return ""
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a directory" if stat.S_ISDIR(mode) else "not a file")
    return f"not a regular file: {link}{kind}"


def plan_shards(inputs: list[str | Path], *, fmt: str = "auto",
                shard_bytes: int | None = None, skip_bad: bool = False) -> list[Shard]:
    """The shards of ``inputs`` (files and directories), in a fixed order.

    With ``shard_bytes``, uncompressed JSONL files are cut into line-aligned byte ranges of
    about that size (their first line numbers counted here) and Parquet files into runs of row
    groups; without it each file is one shard.

    Only regular files are read: a FIFO, a device, a socket or a broken link among the inputs
    is an :class:`InputError` naming it, or with ``skip_bad`` a shard that is one bad record.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not inputs:
        raise InputError("no input given")
    shards: list[Shard] = []
    for inp in inputs:
        for path, f, comp in _expand(Path(inp), fmt):
            if f not in ("jsonl", "csv", "text", "parquet", "arrow"):
                raise InputError(f"{path}: unknown format {f!r}")
            bad = _not_regular(path)
            if bad and not skip_bad:
                raise InputError(f"{path}: {bad} (--skip-bad skips bad records)")
            if bad:
                shards.append(Shard(str(path), f, comp, bad=bad))
                continue
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise InputError(f"{path}: cannot read: {exc.strerror}") from None
            if f == "jsonl" and not comp and shard_bytes and size > shard_bytes:
                shards.extend(_split_jsonl(path, size, shard_bytes))
            elif f == "parquet" and shard_bytes:
                shards.extend(_split_parquet(path, size, shard_bytes))
            else:
                shards.append(Shard(str(path), f, comp, size=size))
    return shards


def _split_jsonl(path: Path, size: int, shard_bytes: int) -> list[Shard]:
    """Line-aligned byte ranges of about ``shard_bytes``, with their first line numbers."""
    out: list[Shard] = []
    with open(path, "rb") as fh:
        start, line = 0, 1
        while start < size:
            target = start + shard_bytes
            if target >= size:
                stop = size
            else:
                fh.seek(target)
                fh.readline()  # to the end of the line that straddles the target
                stop = fh.tell()
            # count the lines of [start, stop) for the next shard's first line number
            fh.seek(start)
            n, left = 0, stop - start
            while left > 0:
                block = fh.read(min(READ_BLOCK, left))
                if not block:
                    break
                n += block.count(b"\n")
                left -= len(block)
            out.append(Shard(str(path), "jsonl", "", start, stop, line, stop - start))
            start, line = stop, line + n
    return out


def _split_parquet(path: Path, size: int, shard_bytes: int) -> list[Shard]:
    pq = pyarrow_parquet()
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    out: list[Shard] = []
    start, acc = 0, 0
    for rg in range(meta.num_row_groups):
        acc += meta.row_group(rg).total_byte_size
        if acc >= shard_bytes or rg == meta.num_row_groups - 1:
            out.append(Shard(str(path), "parquet", "", start, rg + 1, size=acc))
            start, acc = rg + 1, 0
    return out or [Shard(str(path), "parquet", "", 0, 0, size=0)]


def pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or one line saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("reading Parquet needs pyarrow: pip install "
                                     "'distillmark[scale]'") from None
    return pq
