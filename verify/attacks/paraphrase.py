"""Paraphrase by a local language model, unwatermarked: each chunk of a text rewritten by the
model from an instruction, the rewrites joined.

The model is any engine of :mod:`distillmark.watermark.engines` (the embedded
SmolLM2-135M-Instruct by default), called with ``scheme=None``, or with a generation hook that
steers away from stolen green lists (:class:`~.steal.StolenBias` with a negative strength):
a paraphrase that also scrubs. Long texts are cut at line or sentence ends into chunks of at
most ``chunk_tokens`` tokens, so that a small model rewrites each whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from distillmark.watermark.engine_types import Generator, Marker
from distillmark.watermark.errors import InputError, ParameterError

__all__ = ["INSTRUCTION", "ParaphraseResult", "chunk_text", "paraphrase"]

INSTRUCTION = ("Rewrite the following text in your own words. Keep its meaning and its length; "
               "reply with the rewritten text only.\n\n")

_BREAK = re.compile(r"(?<=[.!?;:])\s+|\n+")


@dataclass(frozen=True)
class ParaphraseResult:
    """A paraphrased text.

    Attributes:
        text: the rewrite.
        attack: ``paraphrase``.
        n_chunks: pieces rewritten one at a time.
        n_tokens_in: tokens of the input (the attacker's tokenizer).
        n_tokens_out: tokens the model wrote.
        seed: the sampler's seed (answer ``i`` uses ``seed + i``).
    """

    text: str
    attack: str
    n_chunks: int
    n_tokens_in: int
    n_tokens_out: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_text(text: str, count: Callable[[str], int], chunk_tokens: int) -> list[str]:
    """``text`` cut at line and sentence ends into pieces of at most ``chunk_tokens`` tokens
    (``count`` counts a piece's tokens); a single sentence longer than that is a piece of its
    own."""
    if chunk_tokens < 1:
        raise ParameterError(f"`chunk_tokens` must be >= 1, got {chunk_tokens}")
    pieces = [p for p in _BREAK.split(text) if p.strip()]
    out: list[str] = []
    cur: list[str] = []
    n = 0
    for p in pieces:
        k = count(p)
        if cur and n + k > chunk_tokens:
            out.append(" ".join(cur))
            cur, n = [], 0
        cur.append(p.strip())
        n += k
    if cur:
        out.append(" ".join(cur))
    return out


def paraphrase(texts: Sequence[str], generator: Generator, *, count: Callable[[str], int],
               chunk_tokens: int = 200, seed: int = 0, temperature: float = 0.7,
               marker: Marker | None = None, instruction: str = INSTRUCTION
               ) -> list[ParaphraseResult]:
    """Rewrite each text with ``generator`` (no watermark; ``marker``: a hook such as
    :class:`~.steal.StolenBias`), chunk by chunk; each chunk may grow to twice its length."""
    chunked = []
    for i, text in enumerate(texts):
        if not text.strip():
            raise InputError(f"text {i} is empty")
        chunked.append(chunk_text(text, count, chunk_tokens))
    flat = [c for cs in chunked for c in cs]
    budget = max(16, 2 * max(count(c) for c in flat))
    outs = generator.generate([instruction + c for c in flat], scheme=marker,
                              max_new_tokens=budget, temperature=temperature, seed=seed)
    results, k = [], 0
    for text, cs in zip(texts, chunked):
        part = outs[k:k + len(cs)]
        k += len(cs)
        results.append(ParaphraseResult(
            text="\n".join(o.text.strip() for o in part), attack="paraphrase", n_chunks=len(cs),
            n_tokens_in=count(text), n_tokens_out=sum(len(o.completion_ids) for o in part),
            seed=seed))
    return results
