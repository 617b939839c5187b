"""API keys and the accounts they belong to (``distillmark serve --accounts``).

An accounts file is one JSON object ``{"API_KEY": "ACCOUNT_ID", ...}``. Only the SHA-256
digests of the keys are held in memory, never the keys; a key that appears twice is refused,
since one key cannot belong to two accounts. Needs the core dependencies alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import read_json

__all__ = ["Accounts", "load_accounts"]


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Accounts:
    """API keys -> account ids. Only the keys' SHA-256 digests are held (never the keys)."""

    by_digest: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], *, where: str = "accounts") -> Accounts:
        """From ``{api_key: account_id}``; one :class:`InputError` line per problem."""
        if not mapping:
            raise InputError(f"{where}: no accounts (expected {{\"API_KEY\": \"ACCOUNT_ID\", "
                             "...})")
        out: dict[str, str] = {}
        for i, (key, account) in enumerate(mapping.items(), 1):
            if not isinstance(key, str) or not key.strip() or len(key) > 512:
                raise InputError(f"{where}: entry {i}: the API key must be a non-empty string "
                                 "of at most 512 characters")
            if not isinstance(account, str) or not account or len(account) > 256:
                raise InputError(f"{where}: entry {i}: the account id must be a non-empty "
                                 f"string of at most 256 characters, got {account!r}")
            out[_digest(key)] = account
        return cls(by_digest=out)

    def account_for(self, api_key: str) -> str | None:
        """The account of ``api_key``, or None if it is not a known key."""
        return self.by_digest.get(_digest(api_key))

    @property
    def account_ids(self) -> list[str]:
        return sorted(set(self.by_digest.values()))

    def __len__(self) -> int:
        return len(self.by_digest)


def load_accounts(path: str | Path) -> Accounts:
    """Read an accounts file: one JSON object mapping API keys to account ids."""
    where = f"accounts file {Path(path)}"

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen:
                raise InputError(f"{where}: an API key appears twice (the same key cannot "
                                 "belong to two accounts)")
            seen[k] = v
        return seen

    data = read_json(path, what=where, object_pairs_hook=pairs)
    if not isinstance(data, dict):
        raise InputError(f"{where} must hold one JSON object {{\"API_KEY\": \"ACCOUNT_ID\", "
                         f"...}}, got {type(data).__name__}")
    return Accounts.from_mapping(data, where=where)
