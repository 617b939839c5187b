"""Readers of the datasets a scan reads: records in, the texts to score and their location out.

Formats: JSON Lines (``.jsonl``/``.json``/``.ndjson``, optionally ``.gz`` or ``.zst``),
Parquet (read one row group at a time), CSV, plain-text files (one file is one record), and
datasets saved by Hugging Face ``datasets``' ``save_to_disk`` (a folder of Arrow stream files
listed in ``state.json``; a ``DatasetDict`` folder holds one such folder per split). A directory
is read recursively, its files in sorted order.

Every reader is a generator over one :class:`Shard` (a file, or a line-aligned byte range of an
uncompressed JSONL file, or a range of Parquet row groups) and yields ``(location, value)``:
``value`` is the parsed record (a dict) or a :class:`BadRecord`. Memory is bounded by one line,
one row group or one record batch, whatever the size of the file. pyarrow and zstandard are
imported only by the readers that need them.

A record's text is picked by :class:`Selector`: a dotted field path (``response``,
``output.text``, ``choices.0.message.content``), or a chat field (OpenAI-style ``messages``)
whose ``assistant`` turns are scored, each after the turn before it as context (never scored).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from distillmark.watermark.errors import InputError, MissingDependencyError

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FORMATS",
    "BadRecord",
    "Segment",
    "Selector",
    "Shard",
    "iter_shard",
    "plan_shards",
]

#: Records larger than this (bytes of the raw line / text) are bad records by default.
DEFAULT_MAX_RECORD_BYTES = 8 << 20
FORMATS = ("auto", "jsonl", "parquet", "csv", "text", "hf")

_JSONL_EXT = (".jsonl", ".ndjson", ".json")
_TEXT_EXT = (".txt", ".text", ".md")
_COMPRESSED = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be scored, and why (one line)."""

    reason: str


@dataclass(frozen=True)
class Segment:
    """One text to score: ``text``, after ``context`` (tokenised for its last tokens, never
    scored; empty for none)."""

    text: str
    context: str = ""


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
    """

    path: str
    fmt: str
    compression: str = ""
    start: int = 0
    stop: int = -1
    first_line: int = 1
    size: int = 0


# --------------------------------------------------------------------------------------------
# Picking the text of a record


class Selector:
    """Extracts the segments to score from a parsed record.

    Args:
        field: dotted path of the text (``a.b``; integer parts index lists).
        chat: dotted path of an OpenAI-style list of messages (``{"role", "content"}``); only
            ``assistant`` turns are scored, each after the message before it as context.
    """

    def __init__(self, field: str | None = None, chat: str | None = None) -> None:
        if (field is None) == (chat is None):
            raise InputError("give one of --field PATH or --chat PATH")
        self.path = field if field is not None else chat
        assert self.path is not None
        if not self.path or any(not p for p in self.path.split(".")):
            raise InputError(f"field path must be names separated by dots, got {self.path!r}")
        self.parts = self.path.split(".")
        self.chat = chat is not None

    def lookup(self, record: Any) -> Any:
        """The value at the path, or a :class:`BadRecord` saying where the path stops. A key
        spelled like the whole path (a CSV column ``a.b``) is taken as it is."""
        if isinstance(record, dict) and len(self.parts) > 1 and self.path in record:
            return record[self.path]
        cur = record
        for i, part in enumerate(self.parts):
            where = ".".join(self.parts[:i + 1])
            if isinstance(cur, dict):
                if part not in cur:
                    return BadRecord(f"no field {where!r}")
                cur = cur[part]
            elif isinstance(cur, list) and part.lstrip("-").isdigit():
                j = int(part)
                if not -len(cur) <= j < len(cur):
                    return BadRecord(f"no item {where!r} (list of {len(cur)})")
                cur = cur[j]
            else:
                return BadRecord(f"no field {where!r} (the value above it is "
                                 f"{_kind(cur)}, not an object)")
        return cur

    def segments(self, record: Any) -> list[Segment] | BadRecord:
        value = self.lookup(record)
        if isinstance(value, BadRecord):
            return value
        if not self.chat:
            if not isinstance(value, str):
                return BadRecord(f"field {self.path!r} is {_kind(value)}, not a string")
            return [Segment(value)]
        if not isinstance(value, list):
            return BadRecord(f"field {self.path!r} is {_kind(value)}, not a list of messages")
        out: list[Segment] = []
        previous = ""
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or "role" not in msg:
                return BadRecord(f"{self.path}[{i}] is not a message (an object with 'role')")
            content = _content_text(msg.get("content"))
            if isinstance(content, BadRecord):
                return BadRecord(f"{self.path}[{i}].content {content.reason}")
            if msg["role"] == "assistant" and content:
                out.append(Segment(content, previous))
            previous = content
        return out


def _content_text(content: Any) -> str | BadRecord:
    """Text of a message's content: a string, null (e.g. tool calls), or a list of parts of
    which the ``{"type": "text", "text": ...}`` ones are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    return BadRecord("has a text part whose 'text' is not a string")
                texts.append(part["text"])
        return "".join(texts)
    return BadRecord(f"is {_kind(content)}, not a string or a list of parts")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", bytes: "bytes"}
    return names.get(type(value), f"a {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Planning: inputs -> shards


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
        try:
            files = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
            return [folder / f["filename"] for f in files]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{state}: not a datasets state file: {exc}") from None
    dd = folder / "dataset_dict.json"
    if dd.is_file():
        try:
            splits = json.loads(dd.read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError) as exc:
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


def plan_shards(inputs: list[str | Path], *, fmt: str = "auto",
                shard_bytes: int | None = None) -> list[Shard]:
    """The shards of ``inputs`` (files and directories), in a fixed order.

    With ``shard_bytes``, uncompressed JSONL files are cut into line-aligned byte ranges of
    about that size (their first line numbers counted here) and Parquet files into runs of row
    groups; without it each file is one shard.
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
                block = fh.read(min(_READ_BLOCK, left))
                if not block:
                    break
                n += block.count(b"\n")
                left -= len(block)
            out.append(Shard(str(path), "jsonl", "", start, stop, line, stop - start))
            start, line = stop, line + n
    return out


def _split_parquet(path: Path, size: int, shard_bytes: int) -> list[Shard]:
    pq = _pyarrow_parquet()
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


# --------------------------------------------------------------------------------------------
# Reading one shard


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("reading Parquet needs pyarrow: pip install "
                                     "'distillmark[scale]'") from None
    return pq


def _open_binary(shard: Shard) -> IO[bytes]:
    path = shard.path
    try:
        if shard.compression == "gz":
            import gzip

            return gzip.open(path, "rb")  # type: ignore[return-value]
        if shard.compression == "zst":
            try:
                import zstandard
            except ImportError:
                raise MissingDependencyError("reading .zst files needs zstandard: pip install "
                                             "'distillmark[scale]'") from None
            raw = open(path, "rb")  # noqa: SIM115 - closed with the reader it wraps
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(  # type: ignore[arg-type]
                raw, closefd=True), buffer_size=_READ_BLOCK)
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _utf8_error(data: bytes, exc: UnicodeDecodeError) -> BadRecord:
    return BadRecord(f"not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}")


def _too_long(n: int, limit: int) -> BadRecord:
    return BadRecord(f"record of {n} bytes is longer than --max-record-bytes {limit}")


def iter_shard(shard: Shard, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
               skip: int = 0, columns: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record or BadRecord)`` for each record of ``shard``, after the first
    ``skip`` (which are read past without being parsed).

    Locations: ``file:line`` (JSONL, CSV), ``file`` (text), ``file:row_group:row`` (Parquet),
    ``file:batch:row`` (Arrow). Blank JSONL lines are not records. ``columns``: the only
    columns a columnar reader needs to read (Parquet, Arrow).
    """
    if shard.fmt == "parquet":
        yield from _iter_parquet(shard, max_record_bytes, skip, columns)
    elif shard.fmt == "arrow":
        yield from _iter_arrow(shard, max_record_bytes, skip, columns)
    else:
        readers = {"jsonl": _iter_jsonl, "csv": _iter_csv, "text": _iter_text}
        yield from readers[shard.fmt](shard, max_record_bytes, skip)


def _iter_jsonl(shard: Shard, limit: int, skip: int) -> Iterator[tuple[str, Any]]:
    fh = _open_binary(shard)
    path = shard.path
    try:
        if shard.start:
            fh.seek(shard.start)
        left = shard.stop - shard.start if shard.stop >= 0 else -1
        line_no = shard.first_line - 1
        seen = 0
        while left != 0:
            try:
                line = fh.readline(limit + 2)
            except (OSError, EOFError) as exc:  # a truncated or corrupt compressed stream
                raise InputError(f"{path}:{line_no + 1}: cannot read: {exc}") from None
            if not line:
                break
            if left > 0:
                left -= len(line)
            line_no += 1
            over = 0
            if len(line) > limit + 1 or (len(line) == limit + 1 and not line.endswith(b"\n")):
                # over-long: read to the end of the line without keeping it
                over = len(line)
                while not line.endswith(b"\n"):
                    line = fh.readline(_READ_BLOCK)
                    if not line:
                        break
                    over += len(line)
                    if left > 0:
                        left -= len(line)
            elif not line.strip():
                continue
            seen += 1
            if seen <= skip:
                continue
            loc = f"{path}:{line_no}"
            if over:
                yield loc, _too_long(over - 1, limit)
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield loc, _utf8_error(line, exc)
                continue
            try:
                yield loc, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield loc, BadRecord(f"not valid JSON: {exc.msg} (column {exc.colno})")
    finally:
        fh.close()


def _iter_csv(shard: Shard, limit: int, skip: int) -> Iterator[tuple[str, Any]]:
    path = shard.path
    fh = _open_binary(shard)
    # surrogateescape keeps invalid bytes as lone surrogates, found per field below
    text = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
    try:
        csv.field_size_limit(max(limit + 1, 1 << 20))
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:1: not valid CSV: {exc}") from None
        seen = 0
        while True:
            line_no = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                seen += 1
                if seen > skip:
                    yield f"{path}:{line_no}", BadRecord(f"not valid CSV: {exc}")
                continue
            if not row:
                continue
            seen += 1
            if seen <= skip:
                continue
            loc = f"{path}:{line_no}"
            n = sum(len(v) for v in row)
            if n > limit:
                yield loc, _too_long(n, limit)
                continue
            bad = next((v for v in row if _has_surrogate(v)), None)
            if bad is not None:
                raw = bad.encode("utf-8", "surrogateescape")
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield loc, _utf8_error(raw, exc)
                    continue
            if len(row) != len(header):
                yield loc, BadRecord(f"row has {len(row)} fields, the header {len(header)}")
                continue
            yield loc, dict(zip(header, row))
    finally:
        text.close()


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_text(shard: Shard, limit: int, skip: int) -> Iterator[tuple[str, Any]]:
    if skip:
        return
    path = shard.path
    try:
        size = os.path.getsize(path)
        if size > limit:
            yield path, _too_long(size, limit)
            return
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        yield path, {"text": data.decode("utf-8")}
    except UnicodeDecodeError as exc:
        yield path, _utf8_error(data, exc)


def _table_rows(table: Any, limit: int, prefix: str, skip: int) -> Iterator[tuple[str, Any]]:
    """Rows of an Arrow table or record batch as dicts (only the columns read)."""
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    names = list(cols)
    for i in range(skip, table.num_rows):
        row = {n: cols[n][i] for n in names}
        loc = f"{prefix}:{i}"
        n = sum(len(v) for v in row.values() if isinstance(v, (str, bytes)))
        if n > limit:
            yield loc, _too_long(n, limit)
            continue
        yield loc, row


def _iter_parquet(shard: Shard, limit: int, skip: int, columns: list[str] | None
                  ) -> Iterator[tuple[str, Any]]:
    pq = _pyarrow_parquet()
    path = shard.path
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    if columns is not None:
        columns = [c for c in columns if c in pf.schema_arrow.names]
    stop = pf.metadata.num_row_groups if shard.stop < 0 else shard.stop
    for rg in range(shard.start, stop):
        n_rows = pf.metadata.row_group(rg).num_rows
        if skip >= n_rows:
            skip -= n_rows
            continue
        try:
            table = pf.read_row_group(rg, columns=columns)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}:{rg}: cannot read row group: {exc}") from None
        yield from _table_rows(table, limit, f"{path}:{rg}", skip)
        skip = 0


def _iter_arrow(shard: Shard, limit: int, skip: int, columns: list[str] | None
                ) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingDependencyError("reading datasets folders needs pyarrow: pip install "
                                     "'distillmark[scale]'") from None
    path = shard.path
    try:
        source = pa.memory_map(path, "r")
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable Arrow file: {exc}") from None
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    for b, batch in enumerate(batches):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        if columns is not None:
            batch = batch.select([c for c in columns if c in batch.schema.names])
        yield from _table_rows(batch, limit, f"{path}:{b}", skip)
        skip = 0
