"""Shared by the DiPmark tests (test_dipmark*.py): the fixed secret, the vocabulary size and
a scheme maker."""

from __future__ import annotations

from typing import Any

from distillmark.watermark import DiPmark, DiPmarkParams

SECRET = bytes(range(32))
V = 49152  # the builtin SmolLM2 tokenizer's vocabulary


def make(secret: bytes = SECRET, vocab_size: int = V, **params: Any) -> DiPmark:
    return DiPmark(secret, DiPmarkParams(**params), vocab_size)
