"""Token-level edits of a text: random substitution, deletion and insertion at a given rate, and
copy-paste dilution of marked text inside human text.

Each edit is a pure function over token ids with a seeded :class:`numpy.random.Generator` (the
attacker's randomness: plain, reproducible, never keyed), so the same seed gives the same edit
on every machine. The text forms tokenise with the attacker's tokenizer and decode the result.

* ``substitute``: each token, independently with probability ``rate``, is replaced by a token
  drawn uniformly from the candidate vocabulary (never itself);
* ``delete``: each token is dropped with probability ``rate``;
* ``insert``: after each token, with probability ``rate``, one uniform token is inserted;
* ``dilute``: the marked text is pasted, whole, at a random token boundary inside the first
  tokens of a human text, so that it is ``share`` of the result's tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "EDITS",
    "EditResult",
    "candidate_vocab",
    "delete",
    "dilute",
    "dilute_text",
    "edit_ids",
    "edit_text",
    "insert",
    "substitute",
]

EDITS = ("substitute", "delete", "insert")


@dataclass(frozen=True)
class EditResult:
    """An edited text and what was done to it.

    Attributes:
        text: the edited text.
        attack: ``substitute``, ``delete``, ``insert``, ``dilute`` (or a stealing attack).
        strength: the rate (edits) or the marked share (dilution).
        seed: the seed of the attacker's randomness.
        n_tokens_in: tokens of the input (for dilution: of the marked text).
        n_tokens_out: tokens of the result as edited (before decoding).
        n_edited: tokens substituted, deleted or inserted (dilution: human tokens added).
    """

    text: str
    attack: str
    strength: float
    seed: int
    n_tokens_in: int
    n_tokens_out: int
    n_edited: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ParameterError(f"`rate` must be in [0, 1], got {rate}")
    return rate


def _ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ParameterError("`ids` must be a 1-D sequence of token ids")
    return arr.astype(np.int64, copy=False)


def candidate_vocab(tokenizer: Tokenizer) -> np.ndarray:
    """Token ids an attacker draws from: every id of the vocabulary but the added (special)
    tokens: ``(n,) int64``."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    special = set(tokenizer.get_added_tokens_decoder()) if hasattr(
        tokenizer, "get_added_tokens_decoder") else set()
    return np.array([t for t in range(size) if t not in special], dtype=np.int64)


def _draw_other(rng: np.random.Generator, vocab: np.ndarray, current: np.ndarray) -> np.ndarray:
    """One uniform draw from ``vocab`` per entry of ``current``, never equal to it."""
    out = vocab[rng.integers(0, vocab.size, size=current.size)]
    same = out == current
    while same.any():  # redraw the few that hit the token they replace
        out[same] = vocab[rng.integers(0, vocab.size, size=int(same.sum()))]
        same = out == current
    return out


def substitute(ids: Any, rate: float, rng: np.random.Generator, vocab: np.ndarray
               ) -> tuple[np.ndarray, int]:
    """Each token replaced with probability ``rate`` by another uniform token of ``vocab``:
    ``(n,) -> (n,)``, and the number replaced."""
    ids, rate = _ids(ids), _check_rate(rate)
    hit = rng.random(ids.size) < rate
    out = ids.copy()
    out[hit] = _draw_other(rng, np.asarray(vocab, dtype=np.int64), ids[hit])
    return out, int(hit.sum())


def delete(ids: Any, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Each token dropped with probability ``rate``: ``(n,) -> (n - d,)``, and ``d``."""
    ids, rate = _ids(ids), _check_rate(rate)
    hit = rng.random(ids.size) < rate
    return ids[~hit], int(hit.sum())


def insert(ids: Any, rate: float, rng: np.random.Generator, vocab: np.ndarray
           ) -> tuple[np.ndarray, int]:
    """After each token, with probability ``rate``, one uniform token of ``vocab``:
    ``(n,) -> (n + k,)``, and ``k``."""
    ids, rate = _ids(ids), _check_rate(rate)
    hit = rng.random(ids.size) < rate
    vocab = np.asarray(vocab, dtype=np.int64)
    new = vocab[rng.integers(0, vocab.size, size=int(hit.sum()))]
    # insert before the token that follows each hit (np.insert keeps the order)
    return np.insert(ids, np.flatnonzero(hit) + 1, new), int(hit.sum())


def edit_ids(ids: Any, attack: str, rate: float, rng: np.random.Generator,
             vocab: np.ndarray) -> tuple[np.ndarray, int]:
    """One of :data:`EDITS` by name."""
    if attack == "substitute":
        return substitute(ids, rate, rng, vocab)
    if attack == "delete":
        return delete(ids, rate, rng)
    if attack == "insert":
        return insert(ids, rate, rng, vocab)
    raise ParameterError(f"`attack` must be one of {', '.join(EDITS)}, got {attack!r}")


def dilute(marked: Any, human: Any, share: float, rng: np.random.Generator
           ) -> tuple[np.ndarray, int]:
    """``marked`` pasted whole at a random boundary inside the first human tokens, so that it is
    ``share`` of the result: ``(m,), (k,) -> (m + round(m (1 - share) / share),)``, and the
    number of human tokens used. Refused when ``human`` is too short for that share."""
    marked, human = _ids(marked), _ids(human)
    share = float(share)
    if not 0.0 < share <= 1.0:
        raise ParameterError(f"`share` must be in (0, 1], got {share}")
    if marked.size == 0:
        raise InputError("the marked text has no tokens")
    n_human = round(marked.size * (1.0 - share) / share)
    if n_human > human.size:
        raise InputError(f"the human text has {human.size} tokens; a marked share of {share} "
                         f"needs {n_human} (give a longer text or a larger --share)")
    cut = int(rng.integers(0, n_human + 1))
    return np.concatenate([human[:cut], marked, human[cut:n_human]]), n_human


def _encode(tokenizer: Tokenizer, text: str, what: str) -> np.ndarray:
    if not text.strip():
        raise InputError(f"{what} is empty")
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)


def _decode(tokenizer: Tokenizer, ids: np.ndarray) -> str:
    return str(tokenizer.decode(ids.tolist(), skip_special_tokens=False))


def edit_text(text: str, attack: str, rate: float, *, seed: int, tokenizer: Tokenizer,
              vocab: np.ndarray | None = None) -> EditResult:
    """:func:`edit_ids` on the tokens of ``text``, decoded back to text."""
    ids = _encode(tokenizer, text, "the text")
    if vocab is None:
        vocab = candidate_vocab(tokenizer)
    out, n = edit_ids(ids, attack, rate, np.random.default_rng(seed), vocab)
    return EditResult(text=_decode(tokenizer, out), attack=attack, strength=float(rate),
                      seed=seed, n_tokens_in=int(ids.size), n_tokens_out=int(out.size),
                      n_edited=n)


def dilute_text(marked: str, human: str, share: float, *, seed: int, tokenizer: Tokenizer
                ) -> EditResult:
    """:func:`dilute` on the tokens of two texts, decoded back to text."""
    m = _encode(tokenizer, marked, "the marked text")
    h = _encode(tokenizer, human, "the human text")
    out, n = dilute(m, h, share, np.random.default_rng(seed))
    return EditResult(text=_decode(tokenizer, out), attack="dilute", strength=float(share),
                      seed=seed, n_tokens_in=int(m.size), n_tokens_out=int(out.size), n_edited=n)
