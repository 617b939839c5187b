"""Watermark specs: the secret key, the scheme and its parameters, the tokenizer it is bound to.

A spec is a small JSON file (mode 0600, written atomically)::

    {"distillmark_spec": 2, "key_id": "dmk-3f9c0a...", "secret": "<base64, 32 bytes>",
     "scheme": "greenlist", "params": {...},
     "tokenizer": {"source": "builtin:smollm2-135m-instruct", "sha256": "...", "vocab_size": 49152},
     "created": "2026-11-28T21:00:00Z", "accounts": {"gamma": 0.25, "delta": 2.0},
     "mac": "<hex, 32 bytes>"}

``key_id`` is public: a one-way function of the secret (HKDF label ``key-id``), safe to print and
to put in reports. The secret itself never appears in ``repr``, logs, ``--json`` output or
reports. ``accounts``, when present, is the key's account layer: answers served for accounts
carry it on top of the key's own mark (:mod:`.accounts`).

``mac`` is the file's integrity tag: HMAC-SHA256, under an HKDF sub-key of the secret (label
``spec-mac``), of the canonical JSON (keys sorted, no spaces, ASCII) of every field but the
secret and the tag. A key whose parameters were edited (gamma 0.25 to 0.05) keeps its
``key_id``, and its verdicts would change under it: it is refused. Version 1 files carry no tag;
they are read with a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as _secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .accounts import AccountLayerParams
from .errors import ParameterError, SpecError
from .files import atomic_write, decode_json, read_bounded
from .prf import derive_subkey
from .registry import secret_params, validate_params
from .tokenizer import TokenizerInfo

__all__ = [
    "SECRET_BYTES",
    "SPEC_VERSION",
    "WatermarkSpec",
    "key_id_of",
    "load_spec",
    "new_spec",
    "read_secret_json",
    "save_spec",
    "spec_from_dict",
]

SPEC_VERSION = 2
SECRET_BYTES = 32
_FORMAT_FIELD = "distillmark_spec"
#: Versions read: 1 (no integrity tag, read with a warning) and 2.
_READ_VERSIONS = (1, 2)
_MAC_FIELD = "mac"
#: A spec is a few hundred bytes; a file larger than this is not one.
_MAX_SPEC_BYTES = 1 << 20
#: The field that names a key ring file (:mod:`.ring`); a spec reader refuses it by name.
RING_FORMAT_FIELD = "distillmark_ring"


def key_id_of(secret: bytes) -> str:
    """The public identifier of a secret: ``dmk-`` and 16 hex digits of an HKDF output."""
    return "dmk-" + derive_subkey(secret, "key-id", length=8).hex()


def _spec_mac(secret: bytes, fields: Mapping[str, Any]) -> str:
    """The integrity tag of a spec file's ``fields``: HMAC-SHA256 under the secret's
    ``spec-mac`` sub-key of the canonical JSON of every field but the secret and the tag."""
    body = {k: v for k, v in fields.items() if k not in ("secret", _MAC_FIELD)}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(derive_subkey(secret, "spec-mac"), canon.encode("ascii"),
                    hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class WatermarkSpec:
    """Everything needed to embed or detect one watermark.

    Attributes:
        secret: 32 bytes of key material (never shown by ``repr``).
        scheme: scheme name, e.g. ``"greenlist"``.
        params: the scheme's parameters, validated by the scheme.
        tokenizer: the tokenizer the token ids refer to.
        key_id: public id derived from ``secret``.
        created: ISO-8601 UTC time of creation.
        accounts: the account layer answers served for accounts carry on top of the scheme's
            own mark (docs/schemes/accounts.md); None: the key names no account.
    """

    secret: bytes = field(repr=False)
    scheme: str
    params: Mapping[str, Any]
    tokenizer: TokenizerInfo
    key_id: str = ""
    created: str = ""
    accounts: AccountLayerParams | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise SpecError(f"secret must be {SECRET_BYTES} bytes")
        expected = key_id_of(self.secret)
        if not self.key_id:
            object.__setattr__(self, "key_id", expected)
        elif self.key_id != expected:
            raise SpecError(f"key_id {self.key_id!r} does not belong to this secret "
                            "(the spec was edited or corrupted)")
        if not self.created:
            object.__setattr__(self, "created", _now())
        object.__setattr__(self, "params", validate_params(self.scheme, self.params))
        if self.accounts is not None and (self.scheme != "greenlist"
                                          or self.params.get("seeding") != "lefthash"):
            raise SpecError("an account layer rides on a green-list key with lefthash seeding "
                            f"(docs/schemes/accounts.md); this key is {self.scheme!r} "
                            f"{self.params.get('seeding', '')}".rstrip())

    def __repr__(self) -> str:
        # The dataclass repr would print params, which hold the key of interop schemes.
        pub = self.public_dict()
        return (f"WatermarkSpec(scheme={self.scheme!r}, params={pub['params']!r}, "
                f"tokenizer={self.tokenizer!r}, key_id={self.key_id!r}, "
                f"created={self.created!r}, accounts={self.accounts!r})")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def public_dict(self) -> dict[str, Any]:
        """Everything but the secret: what may go into logs and reports.

        Interop schemes keyed by their params (transformers' ``hashing_key``, SynthID's
        ``keys``: the scheme's ``secret_params``) have those params shown as ``"<secret>"``:
        for them the params ARE the secret, and the 32-byte ``secret`` keys nothing.
        """
        hidden = secret_params(self.scheme)
        d: dict[str, Any] = {
            "key_id": self.key_id,
            "scheme": self.scheme,
            "params": {k: "<secret>" if k in hidden else v for k, v in self.params.items()},
            "tokenizer": self.tokenizer.to_dict(),
        }
        if self.accounts is not None:
            d["accounts"] = self.accounts.to_dict()
        return d

    def to_json(self) -> str:
        """The spec file's content, secret included. Write it only with :func:`save_spec`."""
        return json.dumps(self.to_file_dict(), indent=2) + "\n"

    def to_file_dict(self) -> dict[str, Any]:
        """The spec file's fields, secret and integrity tag included (a key ring holds its
        members so). Never log or print it."""
        d: dict[str, Any] = {_FORMAT_FIELD: SPEC_VERSION, "key_id": self.key_id,
                             "secret": base64.b64encode(self.secret).decode("ascii"),
                             "scheme": self.scheme, "params": dict(self.params),
                             "tokenizer": self.tokenizer.to_dict(), "created": self.created}
        if self.accounts is not None:
            d["accounts"] = self.accounts.to_dict()
        # tagged as the reader will see the fields: after a JSON round trip
        d[_MAC_FIELD] = _spec_mac(self.secret, json.loads(json.dumps(d)))
        return d


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def new_spec(scheme: str, params: Mapping[str, Any], tokenizer: TokenizerInfo, *,
             secret: bytes | None = None, accounts: AccountLayerParams | None = None
             ) -> WatermarkSpec:
    """A spec with a fresh 32-byte secret from the OS's CSPRNG (or the ``secret`` given);
    ``accounts``: its account layer, if any."""
    if secret is None:
        secret = _secrets.token_bytes(SECRET_BYTES)
    return WatermarkSpec(secret=secret, scheme=scheme, params=params, tokenizer=tokenizer,
                         accounts=accounts)


def save_spec(spec: WatermarkSpec, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a spec atomically with mode 0600. Refuses to replace a file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path} is a directory; give a file name for the key")
    if path.exists() and not overwrite:
        raise SpecError(f"{path} already exists; refusing to overwrite a key (use --force)")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise SpecError(f"{parent} is not a directory")
    if not parent.is_dir():
        raise SpecError(f"directory {parent} does not exist")
    with atomic_write(path, mode=0o600, what=f"key file {path}") as fh:
        fh.write(spec.to_json())
    return path


def _require(d: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in d:
        raise SpecError(f"{where}: missing field {name!r}")
    value = d[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SpecError(f"{where}: field {name!r} must be {kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def read_secret_json(path: str | Path, *, what: str) -> Any:
    """The JSON of a secret file (a key or a key ring): read bounded, with a warning when other
    users may read it; any problem is one :class:`SpecError` line naming ``what``."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{what} is a directory, not a key file")
    if not path.exists():
        raise SpecError(f"{what} does not exist (make one with `distillmark keygen`)")
    raw = read_bounded(path, _MAX_SPEC_BYTES, what=what, error=SpecError)
    try:
        mode = path.stat().st_mode & 0o077
    except OSError:
        mode = 0
    if mode:
        warnings.warn(f"{what} is readable by other users (mode {oct(path.stat().st_mode & 0o777)});"
                      " chmod 600 it", stacklevel=3)
    return decode_json(raw, what=what, error=SpecError)


def load_spec(path: str | Path) -> WatermarkSpec:
    """Read and validate a spec file; any problem is one :class:`SpecError` line.

    A key ring is read by :func:`distillmark.watermark.ring.load_keys` (every key) or
    :func:`~distillmark.watermark.ring.load_active_key` (the key to mark with)."""
    where = f"key file {Path(path)}"
    d = read_secret_json(path, what=where)
    if isinstance(d, dict) and RING_FORMAT_FIELD in d:
        raise SpecError(f"{where} is a key ring, not a single key; read it as a ring")
    return spec_from_dict(d, where=where)


def spec_from_dict(d: Any, *, where: str) -> WatermarkSpec:
    """A spec from the JSON object of its file (or of a key ring's member), validated and its
    integrity tag checked; any problem is one :class:`SpecError` line starting with ``where``."""
    if not isinstance(d, dict):
        raise SpecError(f"{where} must hold a JSON object")
    if _FORMAT_FIELD not in d:
        raise SpecError(f"{where} is not a distillmark spec (no {_FORMAT_FIELD!r} field)")
    version = d[_FORMAT_FIELD]
    if type(version) is not int or version not in _READ_VERSIONS:
        raise SpecError(f"{where} has spec version {version!r}; this distillmark reads versions "
                        f"{' and '.join(map(str, _READ_VERSIONS))} (upgrade distillmark)")
    secret_b64 = _require(d, "secret", str, where)
    try:
        secret = base64.b64decode(secret_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(f"{where}: field 'secret' is not valid base64") from None
    if len(secret) != SECRET_BYTES:
        raise SpecError(f"{where}: secret must decode to {SECRET_BYTES} bytes, got {len(secret)}")
    scheme = _require(d, "scheme", str, where)
    params = _require(d, "params", dict, where)
    tokd = _require(d, "tokenizer", dict, where)
    tokenizer = TokenizerInfo(source=_require(tokd, "source", str, where + " tokenizer"),
                              sha256=_require(tokd, "sha256", str, where + " tokenizer"),
                              vocab_size=_require(tokd, "vocab_size", int, where + " tokenizer"))
    key_id = _require(d, "key_id", str, where)
    layer = None
    if "accounts" in d:
        try:
            layer = AccountLayerParams.from_mapping(d["accounts"])
        except (ParameterError, TypeError) as exc:
            raise SpecError(f"{where}: field 'accounts': {exc}") from None
    if "account" in d:
        raise SpecError(f"{where} is a per-account key derived from a master key; accounts are "
                        "now a layer of the master key itself (docs/schemes/accounts.md): serve "
                        "and attribute with the master key")
    try:
        spec = WatermarkSpec(secret=secret, scheme=scheme, params=params, tokenizer=tokenizer,
                             key_id=key_id, created=str(d.get("created", "")), accounts=layer)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    _check_mac(d, secret, version, where)
    return spec


def _check_mac(d: Mapping[str, Any], secret: bytes, version: int, where: str) -> None:
    """Refuse a file whose fields do not match its integrity tag; warn about a version 1 file,
    which has none (a tag, when a file has one, must match whatever its version)."""
    if _MAC_FIELD not in d:
        if version >= 2:
            raise SpecError(f"{where}: missing field {_MAC_FIELD!r} (its integrity tag)")
        warnings.warn(f"{where} is of spec version 1 and carries no integrity tag: an edit of "
                      "its parameters would go unnoticed", stacklevel=3)
        return
    tag = d[_MAC_FIELD]
    if not isinstance(tag, str) or not hmac.compare_digest(
            tag.encode("utf-8", "surrogatepass"), _spec_mac(secret, d).encode("ascii")):
        raise SpecError(f"{where} was edited: its parameters do not match its integrity tag "
                        "(make a new key with `distillmark keygen`)")
