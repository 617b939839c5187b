"""Readers of one shard: a generator of ``(location, value)``, ``value`` the parsed record (a
dict) or a :class:`~.records.BadRecord`, with memory bounded by one line, one row group or one
record batch whatever the size of the file. pyarrow and zstandard are imported only by the
readers that need them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from typing import IO, Any

from distillmark.watermark.errors import InputError, MissingDependencyError
from distillmark.watermark.files import JSONProblem, parse_json, read_at_most

from .plan import READ_BLOCK, Shard, pyarrow_parquet
from .records import BadRecord

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "iter_shard"]

#: Records larger than this (bytes of the raw line / text) are bad records by default.
DEFAULT_MAX_RECORD_BYTES = 8 << 20


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
            stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
            return io.BufferedReader(stream, buffer_size=READ_BLOCK)  # type: ignore[arg-type]
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
    columns a columnar reader needs to read (Parquet, Arrow). A shard of a file that is not
    read (``shard.bad``: a FIFO, a device) is one bad record at ``file``.
    """
    if shard.bad:
        if not skip:
            yield shard.path, BadRecord(shard.bad)
    elif shard.fmt == "parquet":
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
                    line = fh.readline(READ_BLOCK)
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
                yield loc, parse_json(text.rstrip("\r\n"), line=True)
            except JSONProblem as exc:
                yield loc, BadRecord(str(exc))
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
        with open(path, "rb") as fh:  # the limit holds for what is read, should the file grow
            data = read_at_most(fh, limit)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        yield path, BadRecord(f"record longer than --max-record-bytes {limit}")
        return
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
    pq = pyarrow_parquet()
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
