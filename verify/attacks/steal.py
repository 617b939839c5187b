"""Watermark stealing (Jovanovic et al. 2024, "Watermark Stealing in Large Language Models"):
green lists estimated from watermarked answers alone, without the key, then used to spoof
(make text the detector calls watermarked) and to scrub (edit marked text until it is not).

The estimator
-------------
The attacker assumes a context width ``h`` (the ``h`` tokens before a token pick its list) and
counts, in the watermarked answers and in a base corpus (unwatermarked answers of a model, or
human text), how often each token follows each context. A green token is one the watermark made
*more* frequent after its context than the base has it, so the score of token ``t`` after
context ``c`` is the log ratio of the two conditional frequencies, each shrunk towards its
context-free (unigram) frequency with a prior of ``prior`` pseudo-counts::

    s(c, t) = log((W[c, t] + a qW[t]) / (W[c] + a)) - log((B[c, t] + a qB[t]) / (B[c] + a))

``qW``, ``qB``: add-1/2 smoothed unigram frequencies. A context never seen falls back to the
context-free ratio ``log qW[t] - log qB[t]``, which is the whole estimate for ``h = 0``. ``s >
0``: likely green. With ``h = 0`` every answer teaches the one list; with ``h >= 1`` and many
lists each context has a list of its own and needs its own evidence: stealing then takes many
more answers (the price of small ``h`` is that it is the easiest to steal).

The attacks
-----------
* :class:`StolenBias`: a generation hook (the engines' ``Marker`` protocol) that adds
  ``strength * clip(s, -1, 1)`` to the logits: the attacker's own model then writes text that
  leans to the estimated green tokens (spoofing), or with a negative strength away from them
  (scrubbing by regeneration).
* :func:`rewrite_ids`: edits without a model. Spoof: replace estimated-red tokens of a text
  (human text) by the best estimated-green candidate; scrub: replace estimated-green tokens of
  marked text by the best estimated-red candidate. Candidates are plausible tokens: those seen
  after the same context in the corpus the attacker writes from, and the most frequent tokens
  of that corpus. At most ``rate`` of the tokens are edited, the most confident first.

Everything here is deterministic given its inputs; no key is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillmark.watermark.errors import ParameterError

__all__ = ["MAX_ATTACK_WIDTH", "STEALS", "StolenBias", "StolenLists", "rewrite_ids"]

STEALS = ("spoof", "scrub")
#: The widest context the attacker models: (context, token) pairs stay in one uint64.
MAX_ATTACK_WIDTH = 3
_UNIGRAM_SMOOTH = 0.5


def _context_ids(ids: np.ndarray, h: int, vocab_size: int) -> np.ndarray:
    """Context id of every token from position ``h`` on: ``(n,) -> (n - h,) uint64``, the
    ``h`` tokens before it read as digits base ``V``."""
    n = ids.size - h
    out = np.zeros(max(n, 0), dtype=np.uint64)
    if n <= 0:
        return out
    V = np.uint64(vocab_size)
    for j in range(h):
        out = out * V + ids[j:j + n].astype(np.uint64)
    return out


def _count(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq, counts.astype(np.float64)


def _lookup(sorted_keys: np.ndarray, counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Counts of ``keys`` in a sorted table (0 where absent)."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=np.float64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return np.where(sorted_keys[pos] == keys, counts[pos], 0.0)


class _Corpus:
    """Token counts of one corpus: per (context, token), per context, per token."""

    def __init__(self, seqs: Sequence[np.ndarray], h: int, vocab_size: int) -> None:
        V = np.uint64(vocab_size)
        pair_keys, ctx_keys, tokens = [], [], []
        for s in seqs:
            s = np.asarray(s, dtype=np.int64)
            if s.size and (s.min() < 0 or s.max() >= vocab_size):
                raise ParameterError(f"token id outside the vocabulary 0..{vocab_size - 1}")
            tokens.append(s)
            ctx = _context_ids(s, h, vocab_size)
            ctx_keys.append(ctx)
            pair_keys.append(ctx * V + s[h:].astype(np.uint64))
        allt = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int64)
        self.n_tokens = int(allt.size)
        uni = np.bincount(allt, minlength=vocab_size).astype(np.float64)
        self.unigram = uni
        self.q = (uni + _UNIGRAM_SMOOTH) / (uni.sum() + _UNIGRAM_SMOOTH * vocab_size)
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.uint64))
        self.pairs, self.pair_counts = _count(cat(pair_keys))
        self.contexts, self.context_counts = _count(cat(ctx_keys))
        self.vocab_size = vocab_size

    def followers(self, ctx_id: np.uint64) -> tuple[np.ndarray, np.ndarray]:
        """Tokens seen after one context and their counts."""
        V = np.uint64(self.vocab_size)
        lo, hi = np.searchsorted(self.pairs, [ctx_id * V, ctx_id * V + V])
        return ((self.pairs[lo:hi] - ctx_id * V).astype(np.int64), self.pair_counts[lo:hi])


class StolenLists:
    """Green-list estimates learnt from watermarked answers against a base corpus.

    Args:
        watermarked: token ids of the watermarked answers, one ``(n_i,) int`` array each.
        base: token ids of unwatermarked text (answers of a model, or human text).
        vocab_size: ``V`` of the tokenizer.
        context_width: ``h`` the attacker assumes, 0..3.
        prior: pseudo-counts that shrink a context's frequencies to the unigram ones.
    """

    def __init__(self, watermarked: Sequence[np.ndarray], base: Sequence[np.ndarray], *,
                 vocab_size: int, context_width: int = 1, prior: float = 2.0) -> None:
        if not 0 <= context_width <= MAX_ATTACK_WIDTH:
            raise ParameterError(f"`context_width` must be in 0..{MAX_ATTACK_WIDTH}, got "
                                 f"{context_width}")
        if prior <= 0:
            raise ParameterError(f"`prior` must be > 0, got {prior}")
        if not watermarked or not base:
            raise ParameterError("stealing needs watermarked answers and a base corpus")
        self.vocab_size = vocab_size
        self.context_width = context_width
        self.prior = float(prior)
        self.n_answers = len(watermarked)
        self.wm = _Corpus(watermarked, context_width, vocab_size)
        self.base = _Corpus(base, context_width, vocab_size)
        if self.wm.n_tokens == 0 or self.base.n_tokens == 0:
            raise ParameterError("stealing needs watermarked answers and a base corpus with "
                                 "tokens")
        #: The context-free score ``log qW - log qB``: ``(V,) float64``.
        self.unigram_scores = np.log(self.wm.q) - np.log(self.base.q)
        self._prior_scores = self.unigram_scores  # log(a qW) - log(a qB): the same

    def _conditional(self, corpus: _Corpus, ctx: np.ndarray, pair: np.ndarray,
                     tokens: np.ndarray) -> np.ndarray:
        a = self.prior
        c = _lookup(corpus.pairs, corpus.pair_counts, pair)
        n = _lookup(corpus.contexts, corpus.context_counts, ctx)
        return np.log((c + a * corpus.q[tokens]) / (n + a))

    def scores(self, ids: Any) -> np.ndarray:
        """Estimated log boost of every token after its context: ``(n,) -> (n - h,) float64``
        (entry ``i`` belongs to ``ids[h + i]``); ``> 0``: likely green."""
        ids = np.asarray(ids, dtype=np.int64)
        h = self.context_width
        if ids.size <= h:
            return np.zeros(0)
        ctx = _context_ids(ids, h, self.vocab_size)
        tokens = ids[h:]
        pair = ctx * np.uint64(self.vocab_size) + tokens.astype(np.uint64)
        return (self._conditional(self.wm, ctx, pair, tokens)
                - self._conditional(self.base, ctx, pair, tokens))

    def context_scores(self, window: Any) -> np.ndarray:
        """Scores of every token after one context (its last ``h`` tokens): ``(V,) float64``."""
        window = np.asarray(window, dtype=np.int64)
        h = self.context_width
        if window.size < h:
            return self.unigram_scores.copy()
        cid = _context_ids(np.append(window[window.size - h:], 0), h, self.vocab_size)[0]
        ctx = np.array([cid], dtype=np.uint64)
        a = self.prior
        n_w = _lookup(self.wm.contexts, self.wm.context_counts, ctx)[0]
        n_b = _lookup(self.base.contexts, self.base.context_counts, ctx)[0]
        # the prior part for every token, then the counted followers corrected one by one
        out = self._prior_scores + (np.log(n_b + a) - np.log(n_w + a))
        for corpus, sign in ((self.wm, 1.0), (self.base, -1.0)):
            toks, counts = corpus.followers(cid)
            aq = a * corpus.q[toks]
            out[toks] += sign * (np.log(aq + counts) - np.log(aq))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"n_answers": self.n_answers, "n_tokens_learnt": self.wm.n_tokens,
                "n_tokens_base": self.base.n_tokens, "context_width": self.context_width,
                "n_contexts_seen": int(self.wm.contexts.size)}


class StolenBias:
    """A generation hook from stolen lists: ``strength * clip(s, -1, 1)`` added to the logits
    of every token (the engines' ``Marker`` protocol). ``strength > 0`` spoofs (the text leans
    to estimated-green tokens), ``< 0`` scrubs."""

    key_id = "stolen"
    samples = False

    def __init__(self, stolen: StolenLists, strength: float = 3.0) -> None:
        self.stolen = stolen
        self.strength = float(strength)
        self.vocab_size = stolen.vocab_size

    @property
    def context_width(self) -> int:
        return self.stolen.context_width

    def in_place_bias(self) -> None:
        return None

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """``logits (B, W)``, ``contexts (B, c)`` right-aligned -> biased ``(B, W)`` copy."""
        logits = np.asarray(logits)
        out = np.array(logits, dtype=np.result_type(logits.dtype, np.float32), copy=True)
        V = self.vocab_size
        for b in range(out.shape[0]):
            s = self.stolen.context_scores(np.asarray(contexts[b]))
            out[b, :V] += (self.strength * np.clip(s, -1.0, 1.0)).astype(out.dtype)
        return out


@dataclass(frozen=True)
class _Plan:
    sign: float  # +1 spoof (raise the score), -1 scrub (lower it)
    source: _Corpus  # the corpus candidates come from


def rewrite_ids(ids: Any, stolen: StolenLists, attack: str, *, rate: float,
                n_candidates: int = 50) -> tuple[np.ndarray, int]:
    """Spoof or scrub ``ids`` by substitution: ``(n,) -> (n,)``, and the number of tokens
    replaced (at most ``round(rate * n)``).

    Spoof: estimated-red tokens (``s <= 0``), the most confident first, become the candidate
    with the highest score after their current context, if it scores ``> 0``; scrub:
    estimated-green tokens (``s > 0``) become the candidate with the lowest, if ``< 0``.
    Candidates: tokens seen after the context in the watermarked answers (spoof) or the base
    corpus (scrub), and that corpus's ``n_candidates`` most frequent tokens.
    """
    if attack not in STEALS:
        raise ParameterError(f"`attack` must be one of {', '.join(STEALS)}, got {attack!r}")
    if not 0.0 <= rate <= 1.0:
        raise ParameterError(f"`rate` must be in [0, 1], got {rate}")
    plan = _Plan(sign=1.0 if attack == "spoof" else -1.0,
                 source=stolen.wm if attack == "spoof" else stolen.base)
    ids = np.asarray(ids, dtype=np.int64).copy()
    h = stolen.context_width
    s = stolen.scores(ids) * plan.sign  # to raise: small first
    budget = round(rate * ids.size)
    todo = np.flatnonzero(s <= 0.0) if plan.sign > 0 else np.flatnonzero(s < 0.0)
    todo = todo[np.argsort(s[todo], kind="stable")][:budget] + h
    top = np.argsort(-plan.source.unigram, kind="stable")[:n_candidates]
    top = top[plan.source.unigram[top] > 0]
    done = 0
    for p in np.sort(todo).tolist():
        window = ids[p - h:p]
        row = stolen.context_scores(window) * plan.sign
        if row[ids[p]] > 0.0:  # an earlier edit changed its context: nothing to do now
            continue
        cand = top
        if h:
            ctx = _context_ids(np.append(window, 0), h, stolen.vocab_size)[0]
            cand = np.union1d(top, plan.source.followers(ctx)[0])
        if cand.size == 0:
            continue
        best = cand[int(np.argmax(row[cand]))]
        if row[best] > 0.0 and best != ids[p]:
            ids[p] = best
            done += 1
    return ids, done
