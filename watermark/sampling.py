"""What the sampling schemes share: the distribution an engine would sample, the checks of
their generation hook's arguments, and the hook's loop for those that reweight that
distribution (tournament and DiPmark; gumbel chooses from it)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .errors import ParameterError

__all__ = ["check_logits", "check_process_args", "nucleus", "reweighted_log_probs", "sampling_distribution"]

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
    logits, contexts = check_logits(logits, contexts, vocab_size, context="(B, L)")
    L = contexts.shape[1]
    if isinstance(prompt_width, bool) or not 0 <= prompt_width <= L:
        raise ParameterError(f"`prompt_width` must be in 0..{L} (the context's width), "
                             f"got {prompt_width!r}")
    if not temperature >= 0.0 or not np.isfinite(temperature):
        raise ParameterError(f"`temperature` must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ParameterError(f"`top_p` must be in (0, 1], got {top_p}")
    return logits, contexts


def check_logits(logits: np.ndarray, contexts: np.ndarray, vocab_size: int, *,
                 context: str = "(B, c)", vocabulary: str = "the spec's",
                 hint: str = "wrong model or tokenizer?") -> tuple[np.ndarray, np.ndarray]:
    """Any generation hook's ``logits (B, W)`` and ``contexts (B, c)``: ``(logits, contexts as
    int64)``, or one ParameterError line unless both are 2-D with as many rows and ``W >=
    vocab_size``. ``context``, ``vocabulary`` and ``hint`` word the message."""
    logits = np.asarray(logits)
    contexts = np.asarray(contexts)
    if logits.ndim != 2 or contexts.ndim != 2 or contexts.shape[0] != logits.shape[0]:
        raise ParameterError(f"`logits` must be (B, W) and `contexts` {context}, got "
                             f"{logits.shape} and {contexts.shape}")
    if logits.shape[1] < vocab_size:
        raise ParameterError(f"logits width {logits.shape[1]} is smaller than {vocabulary} "
                             f"vocab_size {vocab_size} ({hint})")
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


#: ``reweight(context, support, p, log_p) -> log_p``: one row's watermarked log-probabilities.
Reweight = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def reweighted_log_probs(logits: np.ndarray, contexts: np.ndarray, vocab_size: int, *,
                         prompt_width: int, temperature: float, top_p: float,
                         reweight: Reweight) -> np.ndarray:
    """The generation hook of a scheme that reweights the sampling distribution, row by row.

    Args:
        logits: ``(B, W) float``, the model's scores, ``W >= vocab_size``.
        contexts: ``(B, L) int``, each row's tokens so far (prompt included, left-padded in a
            batch); the first ``prompt_width`` columns are the prompt.
        temperature: applied to the logits first; 0 means greedy (one token, probability 1).
        top_p: nucleus filter applied after the temperature (1 keeps everything).
        reweight: ``reweight(contexts[b] (L,) int64, support (k,), p (k,), log_p (k,))`` ->
            the row's watermarked ``log_p (k,)`` (``log_p`` itself for an unwatermarked step),
            given its :func:`sampling_distribution`.

    Returns:
        ``(B, W)`` log-probabilities, ``-inf`` where the probability is 0 and in columns
        ``>= vocab_size``, for the engine to sample at temperature 1 with no other filter. A
        row with no finite logit is left as it is.
    """
    V = vocab_size
    logits, contexts = check_process_args(logits, contexts, V, prompt_width=prompt_width,
                                          temperature=temperature, top_p=top_p)
    out = np.full(logits.shape, -np.inf, dtype=np.result_type(logits.dtype, np.float32))
    for b in range(logits.shape[0]):
        dist = sampling_distribution(logits[b, :V], temperature, top_p)
        if dist is None:  # nothing finite to sample from: leave the row alone
            out[b] = logits[b]
            continue
        support, p, log_p = dist
        log_p = reweight(contexts[b], support, p, log_p)
        if support.size == V:
            out[b, :V] = log_p
        else:
            out[b, support] = log_p
    return out
