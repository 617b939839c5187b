"""Ed25519 signatures of reports: the key pair, signing and checking.

Key files are PEM: the private key as unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``,
mode 0600, written atomically), the public key beside it in ``FILE.pub`` as
SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``, mode 0644), so ``openssl pkey`` and every
Ed25519 library read them. A signed report carries a ``signature`` member::

    {"algorithm": "ed25519", "public_key_sha256": "<hex>", "value": "<base64, 64 bytes>"}

``value`` signs :func:`~.report.unsigned_bytes` (the canonical bytes of the report without
``signature``); ``public_key_sha256`` is the SHA-256 of the raw 32-byte public key, which
names the key that signed without standing in for it: a verifier checks against the public
key it trusts, never one the report offers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillmark.watermark.errors import InputError
from distillmark.watermark.files import atomic_write, read_bounded

from .report import unsigned_bytes

__all__ = ["SignatureCheck", "check_signature", "load_private_key", "load_public_key",
           "new_signing_key", "public_key_id", "sign_report"]

_MAX_KEY_BYTES = 1 << 16


def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_key_id(public_key: Any) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()


def new_signing_key(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Make an Ed25519 key pair: the private key in ``path`` (PEM PKCS#8, mode 0600), the
    public key in ``path.pub`` (PEM). Returns both paths and the public key's id."""
    from cryptography.hazmat.primitives import serialization

    priv_path = Path(path)
    pub_path = priv_path.with_name(priv_path.name + ".pub")
    for p in (priv_path, pub_path):
        if p.is_dir():
            raise InputError(f"{p} is a directory; give a file name for the key")
        if p.exists() and not overwrite:
            raise InputError(f"{p} already exists; refusing to overwrite a key (use --force)")
    key = _ed25519().Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_write(priv_path, mode=0o600, text=False, what=f"signing key {priv_path}") as fh:
        fh.write(private_pem)
    with atomic_write(pub_path, mode=0o644, text=False, what=f"public key {pub_path}") as fh:
        fh.write(public_pem)
    return priv_path, pub_path, public_key_id(key.public_key())


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PEM file (:func:`new_signing_key`'s)."""
    from cryptography.hazmat.primitives import serialization

    where = f"signing key {path}"
    raw = read_bounded(path, _MAX_KEY_BYTES, what=where)
    try:
        loose = Path(path).stat().st_mode & 0o077
    except OSError:
        loose = 0
    if loose:
        warnings.warn(f"{where} is readable by other users; chmod 600 it", stacklevel=2)
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise InputError(f"{where} is not an unencrypted PEM private key") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise InputError(f"{where} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Any:
    """An Ed25519 public key from a PEM file (``FILE.pub`` of :func:`new_signing_key`)."""
    from cryptography.hazmat.primitives import serialization

    where = f"public key {path}"
    raw = read_bounded(path, _MAX_KEY_BYTES, what=where)
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        raise InputError(f"{where} is not a PEM public key") from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise InputError(f"{where} is not an Ed25519 key")
    return key


def sign_report(report: Mapping[str, Any], private_key: Any) -> dict[str, Any]:
    """``report`` with its ``signature`` member (any old one replaced)."""
    body = unsigned_bytes(report)
    sig = private_key.sign(body)
    out = {k: v for k, v in report.items() if k != "signature"}
    out["signature"] = {"algorithm": "ed25519",
                        "public_key_sha256": public_key_id(private_key.public_key()),
                        "value": base64.b64encode(sig).decode("ascii")}
    return out


@dataclass(frozen=True)
class SignatureCheck:
    """What :func:`check_signature` found: ``valid``, and why not when it is not."""

    valid: bool
    reason: str


def check_signature(report: Mapping[str, Any], public_key: Any) -> SignatureCheck:
    """Check ``report``'s signature against ``public_key`` (the one the verifier trusts)."""
    from cryptography.exceptions import InvalidSignature

    sig = report.get("signature")
    if sig is None:
        return SignatureCheck(False, "the report is not signed")
    if not isinstance(sig, Mapping) or sig.get("algorithm") != "ed25519":
        return SignatureCheck(False, "the report's signature is not an ed25519 signature")
    value = sig.get("value")
    try:
        raw = base64.b64decode(value if isinstance(value, str) else "", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        return SignatureCheck(False, "the report's signature value is not 64 base64 bytes")
    try:
        public_key.verify(raw, unsigned_bytes(report))
    except InvalidSignature:
        if sig.get("public_key_sha256") != public_key_id(public_key):
            return SignatureCheck(False, "signed by another key than this public key")
        return SignatureCheck(False, "the signature does not match: the report was changed "
                                     "after it was signed")
    if sig.get("public_key_sha256") != public_key_id(public_key):
        return SignatureCheck(False, "the signature's public_key_sha256 was changed")
    return SignatureCheck(True, "signature valid")
