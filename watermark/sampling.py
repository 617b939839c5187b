"""What the sampling schemes share: the distribution an engine would sample, and the checks of
their generation hook's arguments (tournament and DiPmark reweight that distribution; gumbel
chooses from it)."""

from __future__ import annotations

import math

import numpy as np

from .errors import ParameterError

__all__ = ["check_process_args", "nucleus", "sampling_distribution"]

# Logits this far below the top are probability 0 (e^-700 < 1e-304).
_MAX_NATS = 700.0
# Top-p sorts only this many top tokens when they hold the nucleus.
_NUCLEUS_GUESS = 1024


def check_process_args(logits: np.ndarray, contexts: np.ndarray, vocab_size: int, *,
                       prompt_width: int, temperature: float, top_p: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Validate a sampling scheme's ``process`` arguments; ``(logits, contexts as int64)``.

    ``logits (B, W)`` with ``W >= vocab_size``, ``contexts (B, L)``, ``0 <= prompt_width <=
    L``, ``temperature >= 0``, ``0 < top_p <= 1``; anything else is one ParameterError line.
    """
    logits = np.asarray(logits)
    contexts = np.asarray(contexts)
    if logits.ndim != 2 or contexts.ndim != 2 or contexts.shape[0] != logits.shape[0]:
        raise ParameterError(f"`logits` must be (B, W) and `contexts` (B, L), got "
                             f"{logits.shape} and {contexts.shape}")
    if logits.shape[1] < vocab_size:
        raise ParameterError(f"logits width {logits.shape[1]} is smaller than the spec's "
                             f"vocab_size {vocab_size} (wrong model or tokenizer?)")
    L = contexts.shape[1]
    if isinstance(prompt_width, bool) or not 0 <= prompt_width <= L:
        raise ParameterError(f"`prompt_width` must be in 0..{L} (the context's width), "
                             f"got {prompt_width!r}")
    if not temperature >= 0.0 or not np.isfinite(temperature):
        raise ParameterError(f"`temperature` must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ParameterError(f"`top_p` must be in (0, 1], got {top_p}")
    return logits, contexts.astype(np.int64, copy=False)


def sampling_distribution(logits: np.ndarray, temperature: float, top_p: float
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``softmax(logits / temperature)`` restricted to its top-``p`` nucleus.

    Returns ``(support, p, log_p)``: the token ids of positive probability ``(k,) int64``, their
    probabilities and log-probabilities ``(k,) float64`` (``log_p`` computed as ``z - logsumexp``,
    not as ``log(p)``). Tokens more than 700 nats below the top (``p < 1e-304``) count as 0.
    ``None`` when no logit is finite. Temperature 0: the first largest logit, probability 1.
    """
    x = np.asarray(logits, dtype=np.float64)
    top = float(np.max(x))
    if not math.isfinite(top):
        return None
    if temperature == 0.0:
        return np.array([int(np.argmax(x))]), np.ones(1), np.zeros(1)
    z = (x - top) / temperature
    keep = z > -_MAX_NATS
    if keep.all():
        support = np.arange(x.size)
    else:  # masked (-inf) or hopeless logits: exp() of them is slow and 0
        support = np.flatnonzero(keep)
        z = z[support]
    p = np.exp(z)
    if top_p < 1.0:
        keep = nucleus(p, top_p)
        support, z, p = support[keep], z[keep], p[keep]
    total = p.sum()
    return support, p / total, z - math.log(total)


def nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """The top-``p`` nucleus of weights ``p: (k,) float64`` (non-negative, any total): the
    indices, ascending, of the entries whose higher-ranked mass is below ``top_p`` of the
    total, ranked by weight with ties broken by lower index: ``(m,) int64``.

    The nucleus usually lies within the top few hundred entries: those alone are sorted when
    their mass reaches ``top_p`` and the last one kept is strictly heavier than every entry left
    out of them (so that ties rank as in a full sort); otherwise the whole array is sorted.
    """
    threshold = top_p * p.sum()
    if p.size > 2 * _NUCLEUS_GUESS:
        head = np.sort(np.argpartition(-p, _NUCLEUS_GUESS)[:_NUCLEUS_GUESS])
        if p[head].sum() >= threshold:
            order = head[np.argsort(-p[head], kind="stable")]
            ranked = p[order]
            kept = np.cumsum(ranked) - ranked < threshold  # mass ranked above is below top_p
            if not kept[-1] and ranked[kept][-1] > ranked[-1]:
                return np.sort(order[kept])
    order = np.argsort(-p, kind="stable")
    ranked = p[order]
    return np.sort(order[np.cumsum(ranked) - ranked < threshold])
