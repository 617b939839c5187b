"""Key rings: several keys of one provider, one of them active, for rotating keys.

A ring is a secret file like a key (mode 0600, written atomically, never logged)::

    {"distillmark_ring": 1,
     "keys": [{"state": "retired", "activated": "2026-06-01T09:00:00Z",
               "retired": "2026-12-01T09:00:00Z", "spec": {<a key file's fields>}},
              {"state": "active", "activated": "2026-12-01T09:00:00Z", "retired": null,
               "spec": {...}}]}

Each member is a whole key, its integrity tag (``mac``) included and checked on reading. The
active key is the one that marks: ``generate`` and ``serve`` use it, and ``serve --accounts``
derives the account layer from it. Retired keys no longer mark but are still tested: text
marked before a rotation must still be found after it. Detection tries every key of the ring
and corrects its p-value for their number (Bonferroni), so every key kept costs a little power;
drop one whose texts no longer matter.

Wherever a command takes ``--key``, a ring file is read transparently (told apart from a single
key by its format field): detection gets every key (:func:`load_keys`), generation the active
one (:func:`load_active_key`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import SpecError
from .files import atomic_write
from .keys import RING_FORMAT_FIELD, WatermarkSpec, read_secret_json, spec_from_dict

__all__ = ["ACTIVE", "RETIRED", "RING_VERSION", "KeyRing", "RingMember", "load_active_key",
           "load_keys", "load_ring", "merge_keys", "read_key_file", "ring_from_dict", "save_ring"]

RING_VERSION = 1
ACTIVE, RETIRED = "active", "retired"
_STATES = (ACTIVE, RETIRED)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class RingMember:
    """One key of a ring.

    Attributes:
        spec: the key (its secret is never shown by ``repr``).
        state: ``"active"`` (it marks) or ``"retired"`` (it is only tested).
        activated: ISO-8601 UTC time it last became active.
        retired: ISO-8601 UTC time it was last retired; None while it is active.
    """

    spec: WatermarkSpec
    state: str
    activated: str
    retired: str | None = None

    @property
    def key_id(self) -> str:
        return self.spec.key_id

    def public_dict(self) -> dict[str, Any]:
        """The key's public fields and its state: what may be shown and logged."""
        return {**self.spec.public_dict(), "state": self.state, "activated": self.activated,
                "retired": self.retired}


@dataclass(frozen=True)
class KeyRing:
    """Keys with exactly one active, no key twice (checked on construction).

    Changes return a new ring: :meth:`add` (a new active key, the old one retired),
    :meth:`activate` (back to an earlier key), :meth:`remove` (drop a retired key).
    """

    members: tuple[RingMember, ...]
    where: str = field(default="key ring", repr=False, compare=False)

    def __post_init__(self) -> None:
        where = self.where
        if not self.members:
            raise SpecError(f"{where} holds no key")
        seen: set[str] = set()
        for m in self.members:
            if m.state not in _STATES:
                raise SpecError(f"{where}: key {m.key_id} has state {m.state!r}; "
                                "expected active or retired")
            if m.key_id in seen:
                raise SpecError(f"{where} holds key {m.key_id} twice")
            seen.add(m.key_id)
        active = [m.key_id for m in self.members if m.state == ACTIVE]
        if not active:
            raise SpecError(f"{where} has no active key (activate one with "
                            "`distillmark keys RING --activate ID`)")
        if len(active) > 1:
            raise SpecError(f"{where} has {len(active)} active keys ({', '.join(active)}); "
                            "a ring marks with exactly one")

    @property
    def active(self) -> WatermarkSpec:
        """The key that marks."""
        return next(m.spec for m in self.members if m.state == ACTIVE)

    @property
    def specs(self) -> tuple[WatermarkSpec, ...]:
        """Every key, the active one first, then the retired ones, most recently retired
        first: the order detection tries them in."""
        retired = sorted((m for m in self.members if m.state == RETIRED),
                         key=lambda m: m.retired or "", reverse=True)
        return (self.active, *(m.spec for m in retired))

    def member(self, key_id: str) -> RingMember:
        """The member with ``key_id``, or one :class:`SpecError` line listing the ids."""
        for m in self.members:
            if m.key_id == key_id:
                return m
        raise SpecError(f"{self.where} has no key {key_id!r}; its keys: "
                        f"{', '.join(m.key_id for m in self.members)}")

    def add(self, spec: WatermarkSpec) -> KeyRing:
        """The ring with ``spec`` as its active key and the previously active one retired."""
        if any(m.key_id == spec.key_id for m in self.members):
            raise SpecError(f"{self.where} already holds key {spec.key_id}")
        now = _now()
        old = tuple(replace(m, state=RETIRED, retired=now) if m.state == ACTIVE else m
                    for m in self.members)
        return replace(self, members=(*old, RingMember(spec, ACTIVE, now)))

    def activate(self, key_id: str) -> KeyRing:
        """The ring with ``key_id`` active again and the active key retired."""
        target = self.member(key_id)
        if target.state == ACTIVE:
            raise SpecError(f"key {key_id} is already the active key of {self.where}")
        now = _now()
        return replace(self, members=tuple(
            RingMember(m.spec, ACTIVE, now) if m.key_id == key_id
            else replace(m, state=RETIRED, retired=now) if m.state == ACTIVE else m
            for m in self.members))

    def remove(self, key_id: str) -> KeyRing:
        """The ring without the retired key ``key_id`` (texts marked with it are no longer
        tested). The active key cannot be removed: activate or add another first."""
        if self.member(key_id).state == ACTIVE:
            raise SpecError(f"key {key_id} is the active key of {self.where}; activate or add "
                            "another key before removing it")
        return replace(self, members=tuple(m for m in self.members if m.key_id != key_id))

    @classmethod
    def first(cls, spec: WatermarkSpec, *, where: str = "key ring") -> KeyRing:
        """A new ring of one active key."""
        return cls((RingMember(spec, ACTIVE, _now()),), where=where)

    def to_json(self) -> str:
        """The ring file's content, secrets included. Write it only with :func:`save_ring`."""
        d = {RING_FORMAT_FIELD: RING_VERSION,
             "keys": [{"state": m.state, "activated": m.activated, "retired": m.retired,
                       "spec": m.spec.to_file_dict()} for m in self.members]}
        return json.dumps(d, indent=2) + "\n"


def _field(d: dict[str, Any], name: str, kinds: tuple[type, ...], where: str) -> Any:
    if name not in d:
        raise SpecError(f"{where}: missing field {name!r}")
    value = d[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise SpecError(f"{where}: field {name!r} must be "
                        f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}"
                        f", got {type(value).__name__}")
    return value


def ring_from_dict(d: dict[str, Any], *, where: str) -> KeyRing:
    """A ring from its file's JSON object; any problem is one :class:`SpecError` line."""
    version = d.get(RING_FORMAT_FIELD)
    if type(version) is not int or version != RING_VERSION:
        raise SpecError(f"{where} has ring version {version!r}; this distillmark reads version "
                        f"{RING_VERSION} (upgrade distillmark)")
    keys = _field(d, "keys", (list,), where)
    members = []
    for i, item in enumerate(keys):
        at = f"{where}, keys[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{at} must be a JSON object")
        members.append(RingMember(
            spec=spec_from_dict(_field(item, "spec", (dict,), at), where=at),
            state=_field(item, "state", (str,), at),
            activated=_field(item, "activated", (str,), at),
            retired=_field(item, "retired", (str, type(None)), at)))
    return KeyRing(tuple(members), where=where)


def read_key_file(path: str | Path) -> WatermarkSpec | KeyRing:
    """A key file or a key ring, told apart by its format field."""
    path = Path(path)
    d = read_secret_json(path, what=f"key file {path}")
    if isinstance(d, dict) and RING_FORMAT_FIELD in d:
        return ring_from_dict(d, where=f"key ring {path}")
    return spec_from_dict(d, where=f"key file {path}")


def load_ring(path: str | Path) -> KeyRing:
    """Read a key ring; a single key, or any problem, is one :class:`SpecError` line."""
    got = read_key_file(path)
    if isinstance(got, WatermarkSpec):
        raise SpecError(f"key file {path} is a single key, not a key ring (start a ring with "
                        f"`distillmark keys RING --add {path}`)")
    return got


def load_keys(paths: str | Path | list[str | Path] | list[Path]) -> list[WatermarkSpec]:
    """Every key the files name, for detection: a key file gives its key, a ring all of its
    keys (active first); see :func:`merge_keys`."""
    items = [paths] if isinstance(paths, (str, Path)) else paths
    return merge_keys([(p, read_key_file(p)) for p in items])


def merge_keys(read: list[tuple[str | Path, WatermarkSpec | KeyRing]]) -> list[WatermarkSpec]:
    """The keys of files already read (``(path, key or ring)``), in order. A key named twice
    (a ring and its member's own file) is tested once; two different keys with one id are
    refused."""
    out: dict[str, WatermarkSpec] = {}
    for p, got in read:
        for spec in got.specs if isinstance(got, KeyRing) else (got,):
            prev = out.get(spec.key_id)
            if prev is not None and prev.public_dict() != spec.public_dict():
                raise SpecError(f"key {spec.key_id} is given twice with different parameters "
                                f"(again in {p})")
            out.setdefault(spec.key_id, spec)
    return list(out.values())


def load_active_key(path: str | Path) -> WatermarkSpec:
    """The key to mark with: a key file's key, or a ring's active key."""
    got = read_key_file(path)
    return got.active if isinstance(got, KeyRing) else got


def save_ring(ring: KeyRing, path: str | Path) -> Path:
    """Write a ring atomically with mode 0600 (replacing the file: a ring changes in place)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SpecError(f"directory {parent} does not exist")
    with atomic_write(path, mode=0o600, what=f"key ring {path}") as fh:
        fh.write(ring.to_json())
    return path
