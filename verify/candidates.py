"""The accounts an attribution may name: their numbers and names.

Three sources: the server's accounts file (:func:`~distillmark.watermark.serve.accounts.
load_accounts`: numbers given there, or positions); a text file of account ids, one per line,
numbered by position from 1 like an accounts file of plain ids, or ``NUMBER ACCOUNT_ID`` lines;
or a whole number space ``1 .. N`` (every account the key could have served, named by number).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillmark.watermark.accounts import MAX_NUMBER
from distillmark.watermark.errors import InputError
from distillmark.watermark.files import read_bounded
from distillmark.watermark.serve.accounts import MAX_FILE_BYTES, Accounts, parse_accounts

__all__ = ["Candidates"]


@dataclass(frozen=True, eq=False)
class Candidates:
    """Candidate accounts: ``numbers (N,) uint64`` (distinct, increasing) and their names
    (``names`` None: each account is named by its number, as in a whole number space)."""

    numbers: np.ndarray
    names: tuple[str, ...] | None = None

    @property
    def size(self) -> int:
        return int(self.numbers.size)

    def name(self, i: int) -> str:
        """The name of candidate ``i``."""
        return self.names[i] if self.names is not None else str(int(self.numbers[i]))

    def fingerprint(self) -> str:
        """SHA-256 of the candidates' numbers and names (what a checkpoint may compare)."""
        h = hashlib.sha256(self.numbers.astype("<u8").tobytes())
        h.update("\n".join(self.names or ()).encode("utf-8"))
        return h.hexdigest()

    @classmethod
    def of(cls, pairs: list[tuple[int, str]], *, where: str) -> Candidates:
        """From ``(number, name)`` pairs; numbers distinct, in ``1 .. 2**32 - 1``."""
        if not pairs:
            raise InputError(f"{where}: no candidate accounts")
        pairs = sorted(pairs)
        nums = np.array([n for n, _ in pairs], dtype=np.uint64)
        if int(nums[0]) < 1 or int(nums[-1]) > MAX_NUMBER:
            raise InputError(f"{where}: account numbers must be in 1..{MAX_NUMBER}")
        dup = np.flatnonzero(nums[1:] == nums[:-1])
        if dup.size:
            raise InputError(f"{where}: number {int(nums[dup[0]])} is given to two accounts")
        return cls(numbers=nums, names=tuple(name for _, name in pairs))

    @classmethod
    def from_accounts(cls, accounts: Accounts, *, where: str = "accounts") -> Candidates:
        return cls.of([(a.number, a.id) for a in accounts.accounts], where=where)

    @classmethod
    def space(cls, n: int) -> Candidates:
        """Every number ``1 .. n``, each named by its number."""
        if not 1 <= n <= 1 << 24:
            raise InputError(f"the account space must be 1..{1 << 24} accounts, got {n}")
        return cls(numbers=np.arange(1, n + 1, dtype=np.uint64))

    @classmethod
    def given(cls, path: str | Path | None, space: int | None) -> Candidates:
        """The candidates of ``--accounts FILE`` or ``--account-space N`` (exactly one)."""
        if (path is None) == (space is None):
            raise InputError("give the candidate accounts: --accounts FILE or --account-space N")
        return cls.read(path) if path is not None else cls.space(int(space or 0))

    @classmethod
    def read(cls, path: str | Path) -> Candidates:
        """An accounts file (a JSON object) or a file of account ids, one per line."""
        where = f"accounts file {Path(path)}"
        raw = read_bounded(path, MAX_FILE_BYTES, what=where)
        if raw.lstrip()[:1] == b"{":
            return cls.from_accounts(parse_accounts(raw, where=where), where=where)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where} is not UTF-8 (byte offset {exc.start})") from None
        return cls._from_lines(text, where=where)

    @classmethod
    def _from_lines(cls, text: str, *, where: str) -> Candidates:
        pairs: list[tuple[int, str]] = []
        seen: dict[str, int] = {}
        explicit: bool | None = None
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            numbered = len(parts) == 2 and parts[0].isdigit()
            if len(parts) > 2 or len(parts) == 2 and not numbered:
                raise InputError(f"{where}:{lineno}: expected ACCOUNT_ID or NUMBER ACCOUNT_ID, "
                                 f"got {line.strip()[:80]!r}")
            if explicit is None:
                explicit = numbered
            elif explicit != numbered:
                raise InputError(f"{where}:{lineno}: number every line or none")
            name = parts[-1]
            if name in seen:
                raise InputError(f"{where}:{lineno}: account {name!r} is listed twice")
            number = int(parts[0]) if numbered else len(seen) + 1
            seen[name] = number
            pairs.append((number, name))
        return cls.of(pairs, where=where)

