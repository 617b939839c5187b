"""The body of a chat-completion request, as pydantic models (extra ``serve``).

Fields the server does not read are kept (``extra="allow"``), so that the application can
refuse those it cannot honour by name rather than ignore them. The models' class names appear
in pydantic's messages, which the application passes on: they are part of the answers.
"""

from __future__ import annotations

from typing import Any, Literal

from .protocol import APIError, missing_extra

try:
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra(exc) from None

__all__ = ["ChatRequest", "message_text"]


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_ContentPart] | None = None


class ChatRequest(BaseModel):
    """The fields of a chat-completion request this server reads (others are ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None


def message_text(m: _Message, i: int) -> str:
    """The text of message ``i``: its string, or its text parts joined (other parts: a 400)."""
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    texts = []
    for j, part in enumerate(m.content):
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages.{i}.content.{j}: only text parts are supported, "
                           f"got type {part.type!r}", param=f"messages.{i}.content")
        texts.append(part.text)
    return "".join(texts)
