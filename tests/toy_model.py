"""A seeded toy language model for the sampling schemes' power tests: no model weights, a
known entropy, and every step through the scheme's own ``process``."""

from __future__ import annotations

from typing import Any

import numpy as np

V = 49152  # the builtin SmolLM2 tokenizer's vocabulary


def toy_sequence(scheme: Any | None, seed: int, *, n_tokens: int = 200, n_support: int = 500,
                 scale: float = 4.0) -> tuple[np.ndarray, int]:
    """Tokens sampled at temperature 1 from a seeded toy model: at each step normal logits
    (sd ``scale``: ~1.8 nats of entropy) on a fixed set of 500 tokens, through ``process``."""
    rng = np.random.default_rng(seed)
    support = np.sort(rng.choice(V, n_support, replace=False))
    ids = list(rng.integers(0, V, size=8))
    prompt_len = len(ids)
    for step in range(n_tokens):
        logits = np.full(V, -np.inf)
        logits[support] = np.random.default_rng([seed, step]).normal(size=n_support) * scale
        if scheme is not None:
            logits = scheme.process(logits[None, :], np.array([ids]),
                                    prompt_width=prompt_len)[0]
        p = np.exp(logits[support] - logits[support].max())  # nothing outside the support
        ids.append(int(support[rng.choice(n_support, p=p / p.sum())]))
    return np.array(ids), prompt_len


class BigramModel:
    """A seeded bigram stand-in for a language model, for the attack tests and benchmarks: the
    next token's logits depend on the previous token only (normal logits, sd ``scale``, over a
    fixed support of ``n_support`` tokens of the SmolLM2 vocabulary), so a context-width-1
    attacker can learn its conditional frequencies as it would a real model's."""

    def __init__(self, seed: int = 0, *, n_support: int = 500, scale: float = 4.0) -> None:
        rng = np.random.default_rng([seed, 7])
        self.support = np.sort(rng.choice(V, n_support, replace=False))
        self.index = np.full(V, -1, dtype=np.int64)
        self.index[self.support] = np.arange(n_support)
        self.logits = (rng.normal(size=(n_support, n_support)) * scale).astype(np.float32)

    def sample(self, scheme: Any | None, seed: int, *, n_seqs: int, n_tokens: int = 200,
               prompt_len: int = 4, marker_prompt: bool = True) -> list[np.ndarray]:
        """``n_seqs`` completions of ``n_tokens`` tokens (prompts of ``prompt_len`` support
        tokens, not returned), each step through ``scheme.process`` when a scheme is given."""
        rng = np.random.default_rng([seed, 11])
        S = self.support.size
        ids = self.support[rng.integers(0, S, size=(n_seqs, prompt_len))]
        rows = np.arange(n_seqs)[:, None]
        for _ in range(n_tokens):
            state = self.index[ids[:, -1]]
            if scheme is None:  # the support alone: no full-vocabulary logits to build
                sub = self.logits[state].astype(np.float64)
            else:
                logits = np.full((n_seqs, V), -np.inf, dtype=np.float32)
                logits[rows, self.support[None, :]] = self.logits[state]
                logits = scheme.process(logits, ids, prompt_width=prompt_len)
                sub = np.asarray(logits[rows, self.support[None, :]], dtype=np.float64)
            p = np.exp(sub - sub.max(axis=1, keepdims=True))
            c = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
            pick = (c < rng.random((n_seqs, 1))).sum(axis=1).clip(0, S - 1)
            ids = np.concatenate([ids, self.support[pick][:, None]], axis=1)
        return [row[prompt_len:] for row in ids]
