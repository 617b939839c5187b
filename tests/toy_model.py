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
