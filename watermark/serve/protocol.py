"""OpenAI's chat API as this server speaks it, apart from the web framework: the error an
answer carries, the request fields it refuses, and stop strings (needs the core alone).

Every failure is answered as OpenAI answers it, a body ``{"error": {"message", "type",
"param", "code"}}`` with its HTTP status: :class:`APIError` holds both, and the application
turns it into a response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import MissingDependencyError

__all__ = ["PENALTIES", "UNSUPPORTED", "APIError", "missing_extra", "stop_strings",
           "truncate"]

#: Request fields the server cannot honour: refused with a 400 rather than silently ignored.
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "tool_choice",
               "function_call", "logit_bias", "response_format")
#: Penalties the sampler does not apply: accepted only when zero.
PENALTIES = ("presence_penalty", "frequency_penalty")


class APIError(Exception):
    """An error answered to the client: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (status, message, type,
                                                                       param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def missing_extra(exc: ImportError) -> MissingDependencyError:
    """The error of a module of the server whose import of the ``serve`` extra failed."""
    return MissingDependencyError(f"this needs the 'serve' extra ({exc.name} is not "
                                  "installed): pip install 'distillmark[serve]'")


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """A request's ``stop`` as a list: up to 4 non-empty strings, else a 400."""
    items = [stop] if isinstance(stop, str) else list(stop or [])
    if len(items) > 4 or any(not s for s in items):
        raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
    return items


def truncate(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
