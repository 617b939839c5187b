"""What a server serves and its limits: :class:`ServeConfig` (needs the core alone)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParameterError
from ..keys import WatermarkSpec, derive_account_spec
from .accounts import Accounts

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """What the server serves and its limits.

    Attributes:
        model_name: the id clients give as ``model`` (``GET /v1/models`` lists it).
        spec: the master watermark spec; None serves without a watermark.
        accounts: API keys -> accounts; None: no authentication, every answer carries
            ``spec``'s own watermark.
        max_batch: most prompts generated together (transformers; llama.cpp takes them in turn).
        default_max_tokens: ``max_tokens`` of a request that gives none.
        max_tokens_limit: largest ``max_tokens`` accepted.
        max_n: largest ``n`` (choices per request) accepted.
        cached_schemes: account schemes kept built (each holds its green table).
    """

    model_name: str
    spec: WatermarkSpec | None = None
    accounts: Accounts | None = None
    max_batch: int = 8
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_n: int = 8
    cached_schemes: int = 8

    def __post_init__(self) -> None:
        for name in ("max_batch", "default_max_tokens", "max_tokens_limit", "max_n",
                     "cached_schemes"):
            if getattr(self, name) < 1:
                raise ParameterError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ParameterError(f"`default_max_tokens` {self.default_max_tokens} exceeds "
                                 f"`max_tokens_limit` {self.max_tokens_limit}")
        if self.spec is not None and self.accounts is not None:
            for account in self.accounts.account_ids:  # refuses interop keys up front
                derive_account_spec(self.spec, account)
