"""Line-oriented input files (prompt files, reference corpora): their bytes and their lines,
with errors that name the file and the line.

A prompts file and a reference corpus are read the same way: the whole file, refused with one
line that says why (``p.jsonl: no such prompts file``), then line by line, each line decoded as
UTF-8 and, in JSON Lines, parsed as one JSON value (``p.jsonl:3: not valid JSON: Expecting
',' delimiter at column 17``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillmark.watermark.errors import InputError
from distillmark.watermark.files import JSONProblem, parse_json, read_at_most

__all__ = ["MAX_INPUT_BYTES", "json_line", "read_input", "text_line"]


#: The largest prompts or reference file read (counted on the bytes read: a pipe or a device
#: is cut off there too).
MAX_INPUT_BYTES = 1 << 30


def read_input(path: Path, kind: str, *, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of ``path``, a ``kind`` file (``prompts``, ``reference``)."""
    try:
        with open(path, "rb") as fh:
            data = read_at_most(fh, max_bytes)
        if data is None:
            raise InputError(f"{path}: {kind} file larger than {max_bytes} bytes")
        return data
    except FileNotFoundError:
        raise InputError(f"{path}: no such {kind} file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a {kind} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {kind} file ({exc.strerror})") from None


def text_line(path: Path, no: int, line: bytes) -> str:
    """Line ``no`` of ``path`` decoded as UTF-8."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:{no}: not valid UTF-8 (byte {exc.start})") from None


def json_line(path: Path, no: int, line: bytes | str) -> Any:
    """The JSON value on line ``no`` of ``path``."""
    text = text_line(path, no, line) if isinstance(line, bytes) else line
    try:
        return parse_json(text, line=True)
    except JSONProblem as exc:
        raise InputError(f"{path}:{no}: {exc}") from None
