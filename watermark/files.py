"""Files in and out: bounded reads, JSON with one-line errors, atomic writes.

Every layer reads keys, accounts, prompts, caches and records, and writes keys, results,
caches and checkpoints; these helpers are the one place where that is done, so that every
input gets the same limits and every problem the same kind of message (the file, what is
wrong, where), and no interrupted write leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import DistillmarkError, InputError

__all__ = ["JSONProblem", "atomic_path", "atomic_write", "check_writable", "decode_json",
           "parse_json", "read_at_most", "read_bounded", "read_json"]

_READ_BLOCK = 1 << 20


def _fail(error: type[DistillmarkError], message: str) -> DistillmarkError:
    return error(message)


def read_at_most(stream: IO[bytes], max_bytes: int) -> bytes | None:
    """The bytes of ``stream`` to its end, read in blocks; None as soon as more than
    ``max_bytes`` arrive (the rest is left unread), whatever the stream is: a pipe or a device
    (``/dev/zero``) is cut off like a regular file."""
    chunks: list[bytes] = []
    n = 0
    while True:
        block = stream.read(min(_READ_BLOCK, max_bytes + 1 - n))
        if not block:
            return b"".join(chunks)
        chunks.append(block)
        n += len(block)
        if n > max_bytes:
            return None


def read_bounded(path: str | Path, max_bytes: int, *, what: str = "",
                 error: type[DistillmarkError] = InputError) -> bytes:
    """The bytes of ``path``, refused with one line once more than ``max_bytes`` arrive.

    The limit is enforced on what is read, not on the size the file system reports, so a pipe,
    a FIFO or a device (``/dev/zero``) is cut off at ``max_bytes`` like a regular file.
    ``what`` names the file in messages (default: its path).
    """
    p = Path(path)
    label = what or str(p)
    try:
        if p.is_dir():
            raise _fail(error, f"{label} is a directory, not a file")
        with open(p, "rb") as fh:
            data = read_at_most(fh, max_bytes)
    except FileNotFoundError:
        raise _fail(error, f"{label} does not exist") from None
    except PermissionError:
        raise _fail(error, f"{label} cannot be read: permission denied") from None
    except OSError as exc:
        raise _fail(error, f"{label} cannot be read: {exc.strerror or exc}") from None
    if data is None:
        raise _fail(error, f"{label} is larger than {max_bytes} bytes")
    return data


class JSONProblem(ValueError):
    """JSON text that cannot be parsed. Its message is a phrase that follows the place of the
    text (``p.jsonl:3: not valid JSON: Expecting ',' delimiter at column 17``); ``too_deep``:
    the text nests arrays or objects deeper than the parser goes."""

    def __init__(self, message: str, *, too_deep: bool = False) -> None:
        super().__init__(message)
        self.too_deep = too_deep


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _mend_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD; an
    explicit stack, not recursion, for values nested as deep as the parser allows."""

    def mend(s: Any) -> Any:
        return _SURROGATE.sub("\ufffd", s) if isinstance(s, str) else s

    root = [value]
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for i, item in enumerate(node):
                node[i] = mend(item)
                if isinstance(item, (list, dict)):
                    stack.append(item)
        elif isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for k, v in items:
                node[mend(k)] = mend(v)
                if isinstance(v, (list, dict)):
                    stack.append(v)
    return root[0]


def parse_json(text: str, *, line: bool = False,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """``json.loads``, with every way it fails one :class:`JSONProblem`: bad syntax, nesting
    too deep for the parser, an integer longer than Python converts (``sys.int_info``'s
    4300 digits). ``line``: the text is one line of a file, so only the column is named.

    Every string it returns is Unicode text: a lone surrogate (a ``\\ud800`` escape without
    its pair, which is no character, cannot be written as UTF-8 and is refused by tokenizers)
    becomes U+FFFD, the rest of the string kept.
    """
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook)
        return _mend_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if line else f"line {exc.lineno} column {exc.colno}"
        raise JSONProblem(f"not valid JSON: {exc.msg} at {where}") from None
    except RecursionError:
        raise JSONProblem("JSON arrays or objects nested too deeply", too_deep=True) from None
    except DistillmarkError:  # the object_pairs_hook's own refusal, as it is
        raise
    except ValueError:  # int("1" * 5000): past the interpreter's integer-string limit
        raise JSONProblem(f"a JSON number with more than {sys.get_int_max_str_digits()} "
                          "digits") from None


def decode_json(raw: bytes | str, *, what: str, error: type[DistillmarkError] = InputError,
                object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
                ) -> Any:
    """Parse JSON text; a bad encoding, bad syntax or nesting too deep for the parser is one
    ``error`` line that names ``what`` and the place."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise _fail(error, f"{what} is not UTF-8 (byte offset {exc.start})") from None
    try:
        return parse_json(text, object_pairs_hook=object_pairs_hook)
    except JSONProblem as exc:
        if exc.too_deep:
            raise _fail(error, f"{what} nests JSON arrays or objects too deeply") from None
        raise _fail(error, f"{what} is {exc}") from None


def read_json(path: str | Path, *, what: str = "", max_bytes: int = 64 << 20,
              error: type[DistillmarkError] = InputError,
              object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """:func:`read_bounded` then :func:`decode_json`: a JSON file, or one line saying why not."""
    label = what or str(path)
    raw = read_bounded(path, max_bytes, what=label, error=error)
    return decode_json(raw, what=label, error=error, object_pairs_hook=object_pairs_hook)


def _write_error(path: Path, exc: OSError, what: str) -> InputError:
    """One line for an output that cannot be written: its name and the OS's reason."""
    label, parent = what or str(path), path.parent
    if not parent.is_dir():
        reason = (f"{parent} is not a folder" if parent.exists()
                  else f"folder {parent} does not exist")
    elif isinstance(exc, IsADirectoryError) or path.is_dir():
        reason = "it is a directory"
    else:
        reason = exc.strerror or str(exc)
    return InputError(f"cannot write {label}: {reason}")


def atomic_path(path: Path, *, mode: int | None = None, what: str = "") -> Path:
    """A new empty temporary file beside ``path``, to be renamed onto it with ``os.replace``.

    Its mode is ``mode``, or what a new file gets under the process's umask. An OS error (no
    such folder, permission denied, a read-only file system) is one :class:`InputError` line
    naming ``what`` (default: the path) and the reason.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc, what) from None
    try:
        if mode is None:
            mask = os.umask(0)
            os.umask(mask)
            mode = 0o666 & ~mask
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return Path(tmp)


def check_writable(path: str | Path, *, what: str = "") -> None:
    """Refuse, now and in one :class:`InputError` line, an output that could not be written
    at the end of a long run: a directory, a missing folder, a folder that takes no new file
    (a temporary file is created beside ``path`` and removed)."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"cannot write {what or target}: it is a directory")
    atomic_path(target, what=what).unlink()


@contextmanager
def atomic_write(path: str | Path, *, mode: int | None = None, text: bool = True,
                 what: str = "") -> Iterator[IO[Any]]:
    """Write ``path`` all at once or not at all: a temporary file beside it, flushed, synced
    and renamed onto it when the block ends; removed if the block raises.

    ``mode``: the file's permissions (``0o600`` for keys); default as a new file. An OS error
    of writing (the folder, the disk full, the rename) is one :class:`InputError` line naming
    ``what`` (default: the path); one the block raises about another file (its ``filename``)
    passes through unchanged.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"cannot write {what or target}: it is a directory")
    tmp = atomic_path(target, mode=mode, what=what)
    try:
        with open(tmp, "w" if text else "wb", encoding="utf-8" if text else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename not in (None, str(tmp)):
            raise
        raise _write_error(target, exc, what) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
