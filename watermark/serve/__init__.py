"""An OpenAI-compatible HTTP server whose answers carry the watermark (extra ``serve``).

``POST /v1/chat/completions`` (plain JSON or server-sent events with ``"stream": true``),
``GET /v1/models`` and ``GET /health``, in front of any :class:`~distillmark.watermark.
engine_types.Generator` (transformers or llama.cpp). Every answer is generated with the scheme
of the server's key; with an accounts file, the API key of a request picks its account, and the
answer carries the key's own mark, the same for every account, and the key's account layer for
the account's number (:mod:`distillmark.watermark.accounts`), so a leaked answer can later be
attributed to the account while a student of many accounts' answers learns the provider's mark.
Answered requests can be logged (:mod:`.log`).

Concurrency: the event loop never generates. Requests go to one queue; one worker thread takes
every request waiting when it becomes free, groups those that can share a batch and generates
each group in one engine call (:mod:`.batching`).

Errors: every failure is an OpenAI-style body ``{"error": {"message", "type", "param",
"code"}}`` with a 4xx status for a bad request (never a traceback), 401 for a missing or unknown
API key, 404 for an unknown model or path, 500 only for a fault of the server itself. API keys
are held only as SHA-256 digests and never logged; keys' secrets never leave the process.

The modules: :mod:`.accounts` (API keys -> accounts), :mod:`.config` (:class:`ServeConfig`),
:mod:`.protocol` (OpenAI's errors and stop strings), :mod:`.request` (the request body),
:mod:`.batching` (the generation queue), :mod:`.limits` (an engine's context and prompt
lengths), :mod:`.app` (the FastAPI application) and :mod:`.server` (running it). The first
ones need the core dependencies alone; the application and the runner are imported on first
use of their names here, so that reading an accounts file or a config does not load FastAPI
or uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .accounts import Accounts, load_accounts
from .config import ServeConfig

if TYPE_CHECKING:
    from .app import create_app
    from .server import (
        RunningServer,
        bind_socket,
        default_threads,
        run_server_on,
        start_server,
    )

__all__ = [
    "Accounts",
    "RunningServer",
    "ServeConfig",
    "bind_socket",
    "create_app",
    "default_threads",
    "load_accounts",
    "run_server_on",
    "start_server",
]

#: Names of the modules that need the extra, by the module that defines them.
_LAZY = {"create_app": "app", "RunningServer": "server", "bind_socket": "server",
         "default_threads": "server", "run_server_on": "server", "start_server": "server"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
