"""Tokenizers and their fingerprints.

A spec is bound to one tokenizer: the green lists are defined over its token ids. The
fingerprint is the SHA-256 of the tokenizer's *canonical* JSON (keys sorted, no whitespace), so
the same tokenizer saved by different tools, or with its keys in another order, fingerprints the
same; any change to its vocabulary, merges, normaliser or pre-tokeniser does not.

The embedded default model's tokenizer (SmolLM2-135M-Instruct, 49,152 tokens) ships with the
package, so detection needs only the ``tokenizers`` package.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .encoder import TextEncoder
from .errors import InputError, TokenizerMismatchError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "BUILTIN_SMOLLM2",
    "TextEncoder",
    "TokenizerInfo",
    "builtin_tokenizer_path",
    "encoder_for",
    "fingerprint",
    "load_tokenizer",
    "tokenizer_for",
]

#: Name under which specs refer to the shipped SmolLM2 tokenizer.
BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
_BUILTIN_FILES = {BUILTIN_SMOLLM2: "smollm2-135m-instruct.tokenizer.json"}
#: SHA-256 of a shipped tokenizer file's bytes -> its fingerprint (:func:`fingerprint`): the
#: canonical form costs a quarter second to compute, its bytes' digest a few milliseconds.
#: A test recomputes every entry.
_KNOWN_FINGERPRINTS = {
    "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4":
        "ccfa9f7cf67748ee56807e4b2d193771e7bf25b8cdcfb7e2a97ecda7db44c6e7",
}


@dataclass(frozen=True)
class TokenizerInfo:
    """What a spec records about its tokenizer: where it came from, its hash and size."""

    source: str
    sha256: str
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "vocab_size": self.vocab_size}


def builtin_tokenizer_path(name: str = BUILTIN_SMOLLM2) -> Path:
    """Path of a tokenizer.json shipped with distillmark."""
    try:
        fname = _BUILTIN_FILES[name]
    except KeyError:
        known = ", ".join(sorted(_BUILTIN_FILES))
        raise InputError(f"unknown built-in tokenizer {name!r}; known: {known}") from None
    return Path(str(resources.files("distillmark.watermark").joinpath("data", fname)))


def _resolve_path(source: str | Path) -> Path:
    if isinstance(source, str) and source.startswith("builtin:"):
        return builtin_tokenizer_path(source)
    path = Path(source)
    if path.is_dir():
        cand = path / "tokenizer.json"
        if not cand.is_file():
            raise InputError(f"tokenizer directory {path} has no tokenizer.json")
        return cand
    if not path.exists():
        raise InputError(f"tokenizer file {path} does not exist")
    return path


@lru_cache(maxsize=8)
def _load(path_str: str, mtime_ns: int, size: int) -> tuple[Tokenizer, str, int, TextEncoder]:
    """Cached per (path, modification time, size): a file edited in place is read again."""
    from tokenizers import Tokenizer

    path = Path(path_str)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read tokenizer {path}: {exc}") from None
    try:
        tok = Tokenizer.from_str(raw)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        msg = (str(exc).splitlines() or ["invalid tokenizer.json"])[0]
        raise InputError(f"cannot read tokenizer {path}: {msg}") from None
    return (tok, fingerprint(raw), tok.get_vocab_size(with_added_tokens=True),
            TextEncoder(tok, raw))


def fingerprint(tokenizer_json: str) -> str:
    """SHA-256 (hex) of a tokenizer.json's canonical form."""
    known = _KNOWN_FINGERPRINTS.get(hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest())
    if known is not None:
        return known
    return canonical_fingerprint(tokenizer_json)


def canonical_fingerprint(tokenizer_json: str) -> str:
    """:func:`fingerprint` computed from the canonical form itself."""
    canon = json.dumps(json.loads(tokenizer_json), sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _load_all(source: str | Path) -> tuple[Tokenizer, TokenizerInfo, TextEncoder]:
    path = _resolve_path(source)
    st = path.stat()
    tok, sha, vocab, enc = _load(str(path.resolve()), st.st_mtime_ns, st.st_size)
    # a path is recorded absolute, so that a key made with a relative one works from anywhere
    label = (source if isinstance(source, str) and source.startswith("builtin:")
             else os.path.abspath(path))
    return tok, TokenizerInfo(source=label, sha256=sha, vocab_size=vocab), enc


def load_tokenizer(source: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    """Load a tokenizer from ``builtin:NAME``, a tokenizer.json or a model directory holding one."""
    tok, info, _ = _load_all(source)
    return tok, info


def tokenizer_for(expected: TokenizerInfo, override: str | Path | None = None) -> Tokenizer:
    """The tokenizer a spec was made for, checked against its fingerprint.

    ``override`` (a path) replaces the spec's recorded source, e.g. when the spec was made on
    another machine. A tokenizer whose fingerprint differs is refused.
    """
    return encoder_for(expected, override).tokenizer


def encoder_for(expected: TokenizerInfo, override: str | Path | None = None) -> TextEncoder:
    """The encoder of the tokenizer a spec was made for (:func:`tokenizer_for`): every
    verifier's texts become ids through it (exact fast path where the tokenizer allows one;
    :mod:`.encoder`). One encoder per tokenizer file and process."""
    source = override if override is not None else expected.source
    _, info, enc = _load_all(source)
    if info.sha256 != expected.sha256:
        raise TokenizerMismatchError(
            f"tokenizer {info.source} (sha256 {info.sha256[:12]}…) does not match the spec's "
            f"tokenizer (sha256 {expected.sha256[:12]}…); pass the tokenizer the key was made for"
        )
    return enc
