"""A request's body, read within limits and checked, before any work is done for it.

The body is read only after the request's API key was accepted, at most ``max_bytes`` of it
(a 413 as soon as it passes the limit, whatever its ``Content-Length`` says; a client that
leaves before its body ends is no fault of the server's), parsed as JSON (a nesting too deep
for the parser is a 400, not a crash) and validated against :class:`~.request.ChatRequest`; a
request with more than ``max_messages`` messages is refused before its prompt is rendered or
counted. Every refusal is an :class:`~.protocol.APIError` worded as OpenAI would.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InputError
from ..files import decode_json
from .protocol import APIError, missing_extra
from .request import ChatRequest

try:
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect, Request
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra(exc) from None

__all__ = ["read_chat_request", "validation_error"]


def validation_error(err: dict[str, Any]) -> APIError:
    """pydantic's first complaint about a request body, as OpenAI would word it."""
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON")
    # pydantic reports a union's branches as loc parts (str, list[...]): keep field names
    loc = [x for x in loc if not any(c in x for c in "[]") and x not in ("str", "list")]
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "missing" and param is not None:
        return APIError(400, f"missing required parameter: {param}", param=param)
    if "input" in err and err.get("type") != "model_attributes_type":
        shown = json.dumps(err["input"])[:80]
        msg = f"{msg}, got {shown}"
    if param is None:
        msg = ("the request body is missing (send a JSON object)"
               if err.get("type") == "missing" else "the request body must be a JSON object")
        return APIError(400, msg)
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    too_big = APIError(413, f"the request body is larger than {max_bytes} bytes",
                       code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks, n = [], 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
            if n > max_bytes:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:  # gone before its body ended: nobody to answer, nothing failed
        raise APIError(499, "the client closed the request", code="client_closed") from None
    return b"".join(chunks)


async def read_chat_request(request: Request, *, max_bytes: int, max_messages: int
                            ) -> ChatRequest:
    """The request's body as a :class:`ChatRequest`, or an :class:`APIError`."""
    raw = await _read_body(request, max_bytes)
    if not raw.strip():
        raise APIError(400, "the request body is missing (send a JSON object)")
    try:
        data = decode_json(raw, what="the request body")
    except InputError as exc:
        raise APIError(400, str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list) \
            and len(data["messages"]) > max_messages:
        raise APIError(400, f"messages: at most {max_messages} messages per request, got "
                       f"{len(data['messages'])}", param="messages")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        raise validation_error(dict(errors[0]) if errors else
                               {"loc": (), "msg": "invalid request"}) from None
