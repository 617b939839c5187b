"""What a server serves and its limits: :class:`ServeConfig` (needs the core alone)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParameterError
from ..keys import WatermarkSpec
from .accounts import Accounts
from .log import RequestLog

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """What the server serves and its limits.

    Attributes:
        model_name: the id clients give as ``model`` (``GET /v1/models`` lists it).
        spec: the master watermark spec; None serves without a watermark.
        accounts: API keys -> accounts; None: no authentication, every answer carries
            ``spec``'s own mark. With accounts, ``spec`` must have an account layer: each
            account's answers carry the provider's mark and the account's.
        log: where answered requests are logged (None: nowhere).
        max_batch: most prompts generated together (transformers; llama.cpp takes them in turn).
        default_max_tokens: ``max_tokens`` of a request that gives none.
        max_tokens_limit: largest ``max_tokens`` accepted.
        max_n: largest ``n`` (choices per request) accepted.
        max_body_bytes: largest request body read; a larger one is refused with a 413 as soon
            as it passes the limit (a request without a valid API key is refused before its
            body is read).
        max_messages: most messages in one request.
    """

    model_name: str
    spec: WatermarkSpec | None = None
    accounts: Accounts | None = None
    log: RequestLog | None = None
    max_batch: int = 8
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_n: int = 8
    max_body_bytes: int = 8 << 20
    max_messages: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_batch", "default_max_tokens", "max_tokens_limit", "max_n",
                     "max_body_bytes", "max_messages"):
            if getattr(self, name) < 1:
                raise ParameterError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ParameterError(f"`default_max_tokens` {self.default_max_tokens} exceeds "
                                 f"`max_tokens_limit` {self.max_tokens_limit}")
        if self.spec is not None and self.accounts is not None and self.spec.accounts is None:
            raise ParameterError(f"key {self.spec.key_id} has no account layer, so its answers "
                                 "could not name their account: serve accounts with a key made "
                                 "with one (keygen's default)")
