"""Detection of a watermark in one text or one sequence of token ids.

Scoring (per-token tuple keys and green bits) belongs to the scheme; this module tests them:
it strips the prompt, deduplicates repeated (context, token) tuples, and computes the exact
p-value under the null hypothesis that the text was written without the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import Scheme, scheme_for
from distillmark.watermark.tokenizer import encoder_for

from .decision import DEFAULT_MIN_SCORED, Decision, check_min_scored
from .grouping import batch_tuple_keys, check_shared, group_distinct
from .nulls import Outcome, run_grouped, run_test
from .shared import SharedTuples
from .stats import unique_keys

__all__ = [
    "CHUNK_CHARS",
    "DetectionResult",
    "Detector",
    "detect_ids",
    "detect_ids_batch",
    "scorable_keys",
    "text_chunks",
]

#: Texts longer than this (characters) are tokenised in line-aligned pieces of about this size.
CHUNK_CHARS = 1 << 16


def text_chunks(text: str) -> list[str]:
    """Split ``text`` after newlines into pieces of about :data:`CHUNK_CHARS` characters."""
    out, start, n = [], 0, len(text)
    while start < n:
        end = min(n, start + CHUNK_CHARS)
        if end < n:
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        out.append(text[start:end])
        start = end
    return out


@dataclass(frozen=True)
class DetectionResult(Decision):
    """Result of a watermark test on one text.

    Attributes:
        statistic: the test statistic (green-list schemes: the number of green tuples).
        pvalue: exact p-value under the null hypothesis that the text does not depend on the
            key; may underflow to 0.0 below ~1e-308, then ``log10_pvalue`` still holds it.
        log10_pvalue: log10 of the p-value, finite whatever its size.
        n_tokens: tokens in the text (after stripping the prompt).
        n_scored: distinct tuples scored (after dedup, without the first ``h`` tokens).
        n_repeated: scorable tokens left out because their tuple was already counted.
        score_mean: mean score per scored unit (green-list: the share of green tuples).
        null_mean: its expectation without the key (green-list: the exact gamma).
        z_score: standardised statistic, for reading only (the p-value is exact, not from z).
        test: name of the test (``binomial``, ...).
        min_scored: fewer scored tuples than this is "insufficient evidence".
        dedup: whether repeated tuples were counted once.
        scheme: scheme name.
        key_id: public id of the key tested.
    """

    statistic: float
    pvalue: float
    log10_pvalue: float
    n_tokens: int
    n_scored: int
    n_repeated: int
    score_mean: float
    null_mean: float
    z_score: float
    test: str
    min_scored: int
    dedup: bool
    scheme: str
    key_id: str


def _result(outcome: Outcome, scheme: Scheme, *, n_tokens: int, n_scored: int,
            n_scorable: int, min_scored: int, dedup: bool) -> DetectionResult:
    return DetectionResult(statistic=outcome.statistic, pvalue=outcome.pvalue,
                           log10_pvalue=outcome.log10_pvalue, n_tokens=n_tokens,
                           n_scored=n_scored, n_repeated=n_scorable - n_scored,
                           score_mean=outcome.score_mean, null_mean=outcome.null_mean,
                           z_score=outcome.z_score, test=scheme.test, min_scored=min_scored,
                           dedup=dedup, scheme=scheme.name, key_id=scheme.key_id)


def scorable_keys(ids: np.ndarray, scheme: Scheme, prompt_len: int = 0) -> np.ndarray:
    """The tuple keys of the tokens a test may score: ``(n - max(h, prompt_len),) uint64``,
    entry ``j`` belonging to token ``ids[max(h, prompt_len) + j]`` (the prompt and the first
    ``h`` tokens are context only)."""
    h = scheme.context_width
    return scheme.tuple_keys(ids)[max(0, prompt_len - h):]


def detect_ids(ids: np.ndarray, scheme: Scheme, *, prompt_len: int = 0, dedup: bool = True,
               min_scored: int = DEFAULT_MIN_SCORED,
               shared: SharedTuples | None = None) -> DetectionResult:
    """Test token ids for ``scheme``'s watermark.

    Args:
        ids: ``(n,) int`` token ids; if ``prompt_len > 0`` the first ``prompt_len`` are the
            prompt: they serve as context for the first completion tokens but are never scored.
        scheme: the scheme object (``registry.scheme_for(spec)``).
        dedup: count each distinct tuple once (the only way the test is exact; keep it on).
        min_scored: below this many scored tuples the verdict is "insufficient evidence".
        shared: tuples shared by many texts of the corpus the text belongs to
            (:func:`~.shared.shared_tuples`): left out of the test (not counted in
            ``n_scored`` nor ``n_repeated``).
    """
    ids = np.asarray(ids)
    if prompt_len < 0 or prompt_len > ids.size:
        raise ParameterError(f"`prompt_len` must be in 0..{ids.size}, got {prompt_len}")
    check_min_scored(min_scored)
    if shared is None:
        keys = scorable_keys(ids, scheme, prompt_len)
    else:
        check_shared(shared, scheme)
        keep = ~shared.left_out(ids)
        keep[:max(0, prompt_len - scheme.context_width)] = False
        keys = scheme.tuple_keys(ids)[keep]
    n_scorable = int(keys.size)
    if dedup:
        keys = unique_keys(keys, below=scheme.n_cells)
    outcome = run_test(scheme.test, scheme.key_scores(keys), scheme.test_params)
    return _result(outcome, scheme, n_tokens=int(ids.size - prompt_len), n_scored=int(keys.size),
                   n_scorable=n_scorable, min_scored=min_scored, dedup=dedup)


def detect_ids_batch(seqs: Sequence[np.ndarray], scheme: Scheme, *,
                     prompt_lens: Sequence[int] | None = None,
                     min_scored: int = DEFAULT_MIN_SCORED,
                     shared: SharedTuples | None = None) -> list[DetectionResult]:
    """:func:`detect_ids` for many sequences at once, with identical results.

    One tuple-key pass over the concatenation, one sort for the per-sequence dedup
    (:func:`~.grouping.group_distinct`) and the scheme's test run once over every sequence as
    a group (:mod:`.nulls`), so short texts cost little more than their tokens. ``shared``:
    tuples left out of every sequence's test (:mod:`.shared`).
    """
    seqs = [np.asarray(s) for s in seqs]
    plens = list(prompt_lens) if prompt_lens is not None else [0] * len(seqs)
    if len(plens) != len(seqs):
        raise ParameterError(f"`prompt_lens` has {len(plens)} entries for {len(seqs)} sequences")
    check_min_scored(min_scored)
    if not seqs:
        return []
    keys, owner = batch_tuple_keys(seqs, scheme, prompt_lens=plens, shared=shared)
    n_seqs = len(seqs)
    distinct = group_distinct(keys, owner, n_seqs, scheme.n_cells)
    grouped = run_grouped(scheme.test, scheme.key_scores(distinct.keys), distinct.groups, n_seqs,
                          scheme.test_params)
    n_scorable = np.bincount(owner, minlength=n_seqs).tolist()
    n_scored = grouped.n_scored.tolist()
    return [_result(out, scheme, n_tokens=int(s.size) - int(pl), n_scored=n_scored[j],
                    n_scorable=n_scorable[j], min_scored=min_scored, dedup=True)
            for j, (out, s, pl) in enumerate(zip(grouped.outcomes(), seqs, plens))]


class Detector:
    """Detects one spec's watermark in texts: tokenises with the spec's tokenizer and tests.

    Args:
        spec: the watermark spec.
        tokenizer: path of the tokenizer (tokenizer.json or a model directory) to use instead of
            the one recorded in the spec; refused unless its fingerprint matches the spec's.
        min_scored: threshold of "insufficient evidence".
        dedup: count each distinct tuple once.
    """

    def __init__(self, spec: WatermarkSpec, *, tokenizer: str | Path | None = None,
                 min_scored: int = DEFAULT_MIN_SCORED, dedup: bool = True) -> None:
        self.spec = spec
        self.scheme = scheme_for(spec)
        #: texts become ids through the encoder (exact fast path where the tokenizer allows)
        self.encoder = encoder_for(spec.tokenizer, tokenizer)
        self.tokenizer = self.encoder.tokenizer
        self.min_scored = min_scored
        self.dedup = dedup

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (no special tokens added): ``(n,) int64``."""
        if not isinstance(text, str):
            raise InputError(f"`text` must be a str, got {type(text).__name__}")
        if not text.strip():
            raise InputError("text is empty" if not text else "text is only whitespace")
        if len(text) <= CHUNK_CHARS:
            return self.encoder.encode(text)
        # Long texts: tokenise line-aligned chunks in parallel (the tokenizer's own threads).
        # Tokens can differ from one-string tokenisation only at the few chunk seams, which
        # depend on the text alone, not on the key: the test stays exact.
        return self.encoder.encode_batch(text_chunks(text))[0]

    def encode_with_prompt(self, text: str, prompt: str | None = None
                           ) -> tuple[np.ndarray, int]:
        """Token ids of ``prompt`` + ``text`` and the prompt's length in tokens."""
        ids = self.encode(text)
        if not prompt:
            return ids, 0
        p_ids = self.encoder.encode(prompt)
        return np.concatenate([p_ids, ids]), int(p_ids.size)

    def detect(self, text: str, *, prompt: str | None = None) -> DetectionResult:
        """Test one text. With ``prompt``, the text is taken to follow it: the prompt's last
        tokens are context for the first scored ones (as at generation), never scored."""
        ids, prompt_len = self.encode_with_prompt(text, prompt)
        return detect_ids(ids, self.scheme, prompt_len=prompt_len, dedup=self.dedup,
                          min_scored=self.min_scored)

    def detect_ids(self, ids: np.ndarray, *, prompt_len: int = 0) -> DetectionResult:
        return detect_ids(ids, self.scheme, prompt_len=prompt_len, dedup=self.dedup,
                          min_scored=self.min_scored)
