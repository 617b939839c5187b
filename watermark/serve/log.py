"""The server's request log: what was served, to which account (``serve --log``).

JSON Lines, one object per answered request, appended as the request completes::

    {"time": "2026-12-03T11:02:03Z", "id": "chatcmpl-...", "account": "acct-42",
     "number": 42, "key_id": "dmk-...", "model": "...", "messages": [...],
     "answers": ["..."], "usage": {...}}

With ``hashes_only`` the texts are replaced by their SHA-256 (``messages_sha256``, one per
message, and ``answers_sha256``): the log then still confirms that an answer was served to an
account (``distillmark attribute --log``), without holding what users wrote. The file is
rotated when it would pass ``max_bytes``: ``LOG`` becomes ``LOG.1``, ``LOG.1`` becomes
``LOG.2``, and so on up to ``keep`` files; nothing is rewritten in place. A line is written
whole or not at all (one ``write`` of the encoded line, under a lock). Needs the core alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InputError, ParameterError
from ..files import decode_json

__all__ = ["LogRecord", "RequestLog", "read_log", "text_digest"]

_MAX_LINE = 64 << 20


def text_digest(text: str) -> str:
    """SHA-256 (hex) of a text's UTF-8 bytes: how a hashed log holds a message or answer."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestLog:
    """An append-only, rotated JSON Lines log of the requests a server answered.

    Args:
        path: the log file (created if missing; its folder must exist).
        max_bytes: rotate before the file would pass this size.
        keep: rotated files kept (``LOG.1`` .. ``LOG.keep``); older ones are removed.
        hashes_only: keep SHA-256 digests of messages and answers instead of their text.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = 256 << 20, keep: int = 8,
                 hashes_only: bool = False) -> None:
        if max_bytes < 1024 or keep < 1:
            raise ParameterError(f"need max_bytes >= 1024 and keep >= 1, got {max_bytes}, "
                                 f"{keep}")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InputError(f"--log {self.path}: folder {self.path.parent} does not exist")
        self.max_bytes = max_bytes
        self.keep = keep
        self.hashes_only = hashes_only
        self._lock = threading.Lock()
        try:
            self._fh = open(self.path, "ab")  # noqa: SIM115 - held open for the server's life
        except OSError as exc:
            raise InputError(f"--log {self.path}: cannot open: {exc.strerror}") from None

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    def record(self, *, request_id: str, account: str | None, number: int | None,
               key_id: str, model: str, messages: Sequence[dict[str, str]],
               answers: Sequence[str], usage: dict[str, int]) -> None:
        """Append one answered request."""
        rec: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace(
                "+00:00", "Z"),
            "id": request_id, "account": account, "number": number, "key_id": key_id,
            "model": model}
        if self.hashes_only:
            rec["messages_sha256"] = [text_digest(m["content"]) for m in messages]
            rec["answers_sha256"] = [text_digest(a) for a in answers]
        else:
            rec["messages"] = list(messages)
            rec["answers"] = list(answers)
        rec["usage"] = usage
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fh.tell() and self._fh.tell() + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)
            self._fh.flush()

    def _rotate(self) -> None:
        self._fh.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "ab")  # noqa: SIM115


@dataclass(frozen=True)
class LogRecord:
    """One logged request: the account, the conversation (None in a hashed log) and the
    digests of its answers."""

    account: str | None
    number: int | None
    messages: tuple[dict[str, str], ...] | None
    answer_digests: tuple[str, ...]


def _log_files(path: Path) -> list[Path]:
    """``LOG`` and its rotated files, oldest first."""
    rotated = []
    i = 1
    while path.with_name(f"{path.name}.{i}").is_file():
        rotated.append(path.with_name(f"{path.name}.{i}"))
        i += 1
    if not rotated and not path.is_file():
        raise InputError(f"request log {path} does not exist")
    return rotated[::-1] + ([path] if path.is_file() else [])


def read_log(path: str | Path, *, account: str | None = None) -> Iterator[LogRecord]:
    """The records of a request log and its rotated files, oldest first (only ``account``'s
    when given); a bad line is one :class:`InputError` naming its file and line."""
    for f in _log_files(Path(path)):
        with open(f, "rb") as fh:  # a line is read up to the limit, never held whole past it
            for lineno, raw in enumerate(iter(lambda: fh.readline(_MAX_LINE + 1), b""), 1):
                where = f"{f}:{lineno}"
                if len(raw) > _MAX_LINE:
                    raise InputError(f"{where}: line longer than {_MAX_LINE} bytes")
                rec = decode_json(raw, what=where)
                if not isinstance(rec, dict):
                    raise InputError(f"{where}: not a request record")
                if account is not None and rec.get("account") != account:
                    continue
                yield _parse(rec, where)


def _parse(rec: dict[str, Any], where: str) -> LogRecord:
    messages = rec.get("messages")
    if "answers" in rec:
        answers = rec["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise InputError(f"{where}: 'answers' must be a list of strings")
        digests = tuple(text_digest(a) for a in answers)
    else:
        digests = tuple(rec.get("answers_sha256") or ())
    if messages is not None and (not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
        raise InputError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    number = rec.get("number")
    return LogRecord(account=rec.get("account"), number=number if type(number) is int else None,
                     messages=tuple(messages) if messages is not None else None,
                     answer_digests=digests)
