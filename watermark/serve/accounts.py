"""API keys, the accounts they belong to, and the accounts' numbers (``serve --accounts``).

An accounts file is one JSON object mapping API keys to accounts, in one of two forms:

* ``{"API_KEY": "ACCOUNT_ID", ...}``: an account's number is its position among the distinct
  account ids, in file order, from 1 (so a file may only grow at its end: reordering it would
  renumber the accounts);
* ``{"API_KEY": {"account": "ACCOUNT_ID", "number": 42}, ...}``: numbers given, each in
  ``1 .. 2**32 - 1``.

The number is what the key's account layer carries (docs/schemes/accounts.md); several API keys
may belong to one account. Only the SHA-256 digests of the keys are held in memory, never the
keys; a key that appears twice is refused, since one key cannot belong to two accounts. Needs
the core dependencies alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..accounts import MAX_NUMBER
from ..errors import InputError
from ..files import decode_json, read_bounded

__all__ = ["MAX_FILE_BYTES", "Account", "Accounts", "load_accounts", "parse_accounts"]

#: Largest accounts file read (about 4 million accounts).
MAX_FILE_BYTES = 1 << 30
_FORMS = '{"API_KEY": "ACCOUNT_ID", ...} or {"API_KEY": {"account": "ID", "number": N}, ...}'


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Account:
    """One account: its id and the number its answers carry."""

    id: str
    number: int


def _entry(i: int, value: Any, where: str) -> tuple[str, int | None]:
    """``(account id, number or None)`` of one entry's value."""
    if isinstance(value, dict):
        extra = set(value) - {"account", "number"}
        account, number = value.get("account"), value.get("number")
        if extra or type(number) is not int or not 1 <= number <= MAX_NUMBER:
            raise InputError(f"{where}: entry {i}: expected {{\"account\": \"ID\", \"number\": "
                             f"N}} with N in 1..{MAX_NUMBER}, got {value!r}")
    else:
        account, number = value, None
    if not isinstance(account, str) or not account or len(account) > 256:
        raise InputError(f"{where}: entry {i}: the account id must be a non-empty string of at "
                         f"most 256 characters, got {account!r}")
    return account, number


@dataclass(frozen=True)
class Accounts:
    """API keys -> accounts. Only the keys' SHA-256 digests are held (never the keys)."""

    by_digest: Mapping[str, Account] = field(repr=False)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, where: str = "accounts") -> Accounts:
        """From ``{api_key: account_id}`` or ``{api_key: {"account": id, "number": n}}``; one
        :class:`InputError` line per problem."""
        if not mapping:
            raise InputError(f"{where}: no accounts (expected {_FORMS})")
        numbers: dict[str, int] = {}
        owners: dict[int, str] = {}
        out: dict[str, Account] = {}
        explicit: bool | None = None
        for i, (key, value) in enumerate(mapping.items(), 1):
            if not isinstance(key, str) or not key.strip() or len(key) > 512 \
                    or key != key.strip():
                raise InputError(f"{where}: entry {i}: the API key must be a non-empty string "
                                 "of at most 512 characters without surrounding spaces")
            account, number = _entry(i, value, where)
            if explicit is None:
                explicit = number is not None
            elif explicit != (number is not None):
                raise InputError(f"{where}: entry {i}: give every account a number, or none "
                                 "(then an account's number is its position in the file)")
            if number is None:
                number = numbers.get(account, len(numbers) + 1)
            if numbers.setdefault(account, number) != number:
                raise InputError(f"{where}: entry {i}: account {account!r} has two numbers, "
                                 f"{numbers[account]} and {number}")
            if owners.setdefault(number, account) != account:
                raise InputError(f"{where}: entry {i}: number {number} belongs to both "
                                 f"{owners[number]!r} and {account!r}")
            out[_digest(key)] = Account(account, number)
        return cls(by_digest=out)

    def account_for(self, api_key: str) -> Account | None:
        """The account of ``api_key``, or None if it is not a known key."""
        return self.by_digest.get(_digest(api_key))

    @property
    def accounts(self) -> list[Account]:
        """Every account once, by number."""
        return sorted(set(self.by_digest.values()), key=lambda a: a.number)

    @property
    def account_ids(self) -> list[str]:
        return sorted(a.id for a in self.accounts)

    def __len__(self) -> int:
        return len(self.by_digest)


def parse_accounts(raw: bytes, *, where: str) -> Accounts:
    """An accounts file's bytes (see the module doc for its two forms); ``where`` names it."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen:
                raise InputError(f"{where}: an API key appears twice (the same key cannot "
                                 "belong to two accounts)")
            seen[k] = v
        return seen

    data = decode_json(raw, what=where, object_pairs_hook=pairs)
    if not isinstance(data, dict):
        raise InputError(f"{where} must hold one JSON object {_FORMS}, got "
                         f"{type(data).__name__}")
    return Accounts.from_mapping(data, where=where)


def load_accounts(path: str | Path) -> Accounts:
    """Read an accounts file (see the module doc for its two forms)."""
    where = f"accounts file {Path(path)}"
    return parse_accounts(read_bounded(path, MAX_FILE_BYTES, what=where), where=where)
