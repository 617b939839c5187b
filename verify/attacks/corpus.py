"""The texts an attack reads: watermarked answers to learn from, a base corpus, human text.

A ``.jsonl`` file holds one answer per line, a JSON object with a ``text`` field (what
``distillmark generate --json`` prints) or a JSON string; any other file is one text.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distillmark.watermark.errors import InputError

from ..textfiles import json_line, read_input, text_line
from .edits import EditResult
from .steal import StolenLists, rewrite_ids

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["encode_all", "learn", "read_texts", "steal_text"]


def read_texts(path: str | Path, kind: str, *, max_bytes: int) -> list[str]:
    """The texts of one ``kind`` file (``answers``, ``base``): JSON Lines or one plain text."""
    p = Path(path)
    data = read_input(p, kind, max_bytes=max_bytes)
    if p.suffix != ".jsonl":
        text = text_line(p, 1, data)
        if not text.strip():
            raise InputError(f"{p}: empty {kind} file")
        return [text]
    out = []
    for no, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        value = json_line(p, no, line)
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise InputError(f"{p}:{no}: expected an object with a \"text\" string, or a string")
        if value.strip():
            out.append(value)
    if not out:
        raise InputError(f"{p}: no texts in the {kind} file")
    return out


def encode_all(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text, no special tokens: ``(n_i,) int64`` each."""
    return [np.asarray(e.ids, dtype=np.int64)
            for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def learn(tokenizer: Tokenizer, answers: list[str], base: list[str], *, context_width: int,
          prior: float = 2.0) -> StolenLists:
    """:class:`StolenLists` from watermarked answers and a base corpus, as texts."""
    return StolenLists(encode_all(tokenizer, answers), encode_all(tokenizer, base),
                       vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
                       context_width=context_width, prior=prior)


def steal_text(text: str, stolen: StolenLists, attack: str, *, rate: float,
               tokenizer: Tokenizer) -> EditResult:
    """:func:`~.steal.rewrite_ids` (spoof or scrub) on the tokens of ``text``, decoded back."""
    if not text.strip():
        raise InputError("the text is empty")
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    out, n = rewrite_ids(ids, stolen, attack, rate=rate)
    return EditResult(text=str(tokenizer.decode(out.tolist(), skip_special_tokens=False)),
                      attack=attack, strength=float(rate), seed=0, n_tokens_in=int(ids.size),
                      n_tokens_out=int(out.size), n_edited=n)
