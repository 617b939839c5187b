"""Per-token detail of one text's test: what each token counted for, and the p-value as the
text goes on.

The detail runs the very test :func:`~.detect.detect_ids` runs (the same tuple keys, the
scheme's ``key_scores`` of the same distinct keys, :func:`~.nulls.run_test`): its
``result`` is detect's, bit for bit. Each token gets one status:

- ``g``: scored, and its score is above the null's mean (green-list schemes: green);
- ``n``: scored, not above it (not green);
- ``r``: scorable, but its (context, token) tuple was already counted: repeated, not scored;
- ``u``: not scorable: the prompt, or the first ``h`` tokens that are context only.

``running`` holds the test of the first ``c`` scored tuples at up to :data:`RUNNING_POINTS`
points along the text (the last is the whole text's test): the same test on a prefix, so its
last log10 p-value is the result's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillmark.watermark.errors import InputError

from .decision import check_min_scored
from .detect import DetectionResult, Detector, _result, scorable_keys
from .nulls import run_test

__all__ = ["RUNNING_POINTS", "TokenDetail", "token_detail"]

#: How many points of the running p-value a detail holds at most.
RUNNING_POINTS = 200


@dataclass(frozen=True)
class TokenDetail:
    """One text's test, token by token.

    Attributes:
        result: the test of the whole text (:func:`~.detect.detect_ids`'s result).
        pieces: the text of each token, prompt tokens first; joined, they give the prompt and
            the text back (a character a byte-level token shares with the next goes to the
            first).
        status: one character per token (``g``, ``n``, ``r``, ``u``: the module's list).
        n_prompt: how many of ``pieces`` are the prompt's.
        running: ``(token index, log10 p-value of the tuples scored up to and including that
            token)``, at most :data:`RUNNING_POINTS` of them, in text order.
    """

    result: DetectionResult
    pieces: tuple[str, ...]
    status: str
    n_prompt: int
    running: tuple[tuple[int, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"pieces": list(self.pieces), "status": self.status, "n_prompt": self.n_prompt,
                "running": [[i, v] for i, v in self.running]}


def _pieces(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """Cut ``text`` at the tokens' start offsets: every character in exactly one piece."""
    cuts, last = [], 0
    for start, _ in offsets:
        last = min(max(last, start), len(text))
        cuts.append(last)
    if cuts:
        cuts[0] = 0
    ends = [*cuts[1:], len(text)]
    return [text[a:b] for a, b in zip(cuts, ends)]


def _encode(detector: Detector, text: str) -> tuple[np.ndarray, list[str]]:
    """Token ids and pieces of ``text``, tokenised as :meth:`Detector.encode` does it."""
    from .detect import CHUNK_CHARS, text_chunks

    tok = detector.tokenizer
    chunks = [text] if len(text) <= CHUNK_CHARS else text_chunks(text)
    encs = ([tok.encode(text, add_special_tokens=False)] if len(chunks) == 1
            else tok.encode_batch(chunks, add_special_tokens=False))
    ids: list[int] = []
    pieces: list[str] = []
    for chunk, enc in zip(chunks, encs):
        ids.extend(enc.ids)
        pieces.extend(_pieces(chunk, list(enc.offsets)))
    return np.asarray(ids, dtype=np.int64), pieces


def _above_null(scores: np.ndarray, test: str, null_mean: float) -> np.ndarray:
    """Whether each scored row's score is above its null mean: ``(n,) bool``."""
    s = np.asarray(scores)
    if test == "gamma":  # keyed uniforms: the term -log(1 - r), Exp(1) under the null
        unit = -np.log1p(-s.astype(np.float64))
    elif s.ndim == 2:  # g-values: the row's share of ones
        unit = s.astype(np.float64).mean(axis=1) if s.shape[1] else np.zeros(s.shape[0])
    else:
        unit = s.astype(np.float64)
    return np.asarray(unit > null_mean)


def token_detail(detector: Detector, text: str, *, prompt: str | None = None,
                 min_scored: int | None = None) -> TokenDetail:
    """Test ``text`` (after ``prompt``) with ``detector``'s key, token by token."""
    scheme = detector.scheme
    min_scored = detector.min_scored if min_scored is None else min_scored
    check_min_scored(min_scored)
    if not isinstance(text, str):
        raise InputError(f"`text` must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InputError("text is empty" if not text else "text is only whitespace")
    ids, pieces = _encode(detector, text)
    p_pieces: list[str] = []
    if prompt:
        p_ids, p_pieces = _encode(detector, prompt)
        ids = np.concatenate([p_ids, ids])
    n_prompt = len(p_pieces)
    keys = scorable_keys(ids, scheme, n_prompt)
    first = max(scheme.context_width, n_prompt)  # token index of keys[0]
    status = np.full(ids.size, "u", dtype="<U1")
    if detector.dedup:
        uniq, first_idx, inverse = np.unique(keys, return_index=True, return_inverse=True)
        scores_u = scheme.key_scores(uniq)
        outcome = run_test(scheme.test, scores_u, scheme.test_params)
        scored_pos = np.sort(first_idx)  # positions in keys, text order
        # each scored tuple's scores, in text order, and its key (for sorted prefixes)
        order_scores = scores_u[inverse[scored_pos]]
        order_keys = keys[scored_pos]
        status[first:] = "r"
    else:
        uniq = keys
        scores_u = scheme.key_scores(keys)
        outcome = run_test(scheme.test, scores_u, scheme.test_params)
        scored_pos = np.arange(keys.size)
        order_scores, order_keys = scores_u, keys
    result = _result(outcome, scheme, n_tokens=int(ids.size - n_prompt),
                     n_scored=int(uniq.size), n_scorable=int(keys.size),
                     min_scored=min_scored, dedup=detector.dedup)
    green = _above_null(order_scores, scheme.test, outcome.null_mean)
    status[first + scored_pos] = np.where(green, "g", "n")
    running = []
    n = int(scored_pos.size)
    for c in sorted({math.ceil(j * n / RUNNING_POINTS) for j in range(1, RUNNING_POINTS + 1)}
                    if n else ()):
        if detector.dedup:  # the prefix's distinct keys in sorted order, as detect_ids has them
            prefix = order_scores[:c][np.argsort(order_keys[:c], kind="stable")]
        else:
            prefix = order_scores[:c]
        out = run_test(scheme.test, prefix, scheme.test_params)
        running.append((int(first + scored_pos[c - 1]), float(out.log10_pvalue)))
    return TokenDetail(result=result, pieces=tuple(p_pieces + pieces),
                       status="".join(status.tolist()), n_prompt=n_prompt,
                       running=tuple(running))
