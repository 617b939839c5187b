"""What a scan scores of a record: its texts, picked by a :class:`Selector` (a dotted field
path, or the ``assistant`` turns of a chat field, each after the turn before it as context),
or a :class:`BadRecord` that says why it cannot be scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillmark.watermark.errors import InputError

__all__ = ["BadRecord", "Segment", "Selector"]


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
