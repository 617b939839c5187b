"""A probe of an endpoint: its answers fetched (:mod:`.client`), then tested together
(:mod:`.scoring`) for one key or several (a key ring, Bonferroni-corrected for their number).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from distillmark.watermark.errors import ParameterError
from distillmark.watermark.keys import WatermarkSpec

from ..aggregate import TupleSet
from ..decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, CorrectedDecision
from ..detect import Detector
from ..stats import bonferroni, bonferroni_log10
from .client import EndpointError, QueryStats, chat_completions_url, fetch_answers
from .scoring import AnswersResult, as_detector, score_answers

__all__ = ["ProbeResult", "probe"]


@dataclass(frozen=True)
class ProbeResult(CorrectedDecision):
    """A probe of an endpoint: the pooled test of its answers for each key, the best key's
    p-value Bonferroni-corrected for their number, and what the queries cost.

    Its JSON holds the endpoint and model, then the best key's test (as ``detect``:
    ``statistic``, ``pvalue``, ``n_scored``, ...; ``pvalue`` and ``log10_pvalue`` corrected)
    and the answers' counts, ``n_keys``, the uncorrected p-value and the correction, then the
    queries' counts (``n_queries``, ``n_cached``, ...) and every key's own test (``per_key``).

    Attributes:
        answers: the best key's test on the answers (its p-value uncorrected).
        queries: what fetching the answers cost.
        endpoint: the chat-completions URL asked.
        model: the model id asked for.
        pvalue, log10_pvalue: the best key's p-value corrected for ``n_keys`` keys (its own
            with one key).
        n_keys: keys tested (the Bonferroni multiplier).
        per_key: every key's test on the same answers, in the order given.
    """

    answers: AnswersResult
    queries: QueryStats
    endpoint: str
    model: str
    pvalue: float
    log10_pvalue: float
    n_keys: int
    per_key: tuple[AnswersResult, ...]

    best_field: ClassVar[str] = "answers"
    power_statement: ClassVar[bool] = True

    @classmethod
    def of(cls, per_key: Sequence[AnswersResult], *, queries: QueryStats, endpoint: str,
           model: str) -> ProbeResult:
        """The result of every key's test on the same answers: the best one, corrected."""
        best = min(per_key, key=lambda r: r.log10_pvalue)
        k = len(per_key)
        return cls(answers=best, queries=queries, endpoint=endpoint, model=model,
                   pvalue=bonferroni(best.pvalue, k),
                   log10_pvalue=bonferroni_log10(best.log10_pvalue, k), n_keys=k,
                   per_key=tuple(per_key))

    @property
    def n_scored(self) -> int:
        return self.answers.n_scored

    def detectable_fraction(self, alpha: float = DEFAULT_ALPHA) -> float:
        """Smallest watermarked share of the scored tuples the test finds at ``alpha`` (after
        the correction for the keys) with probability 1/2; ``inf`` if none would be."""
        return self.answers.aggregate.detectable_fraction(min(0.5, alpha / self.n_keys))

    def fields_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"endpoint": self.endpoint, "model": self.model}
        d.update(super().fields_dict())
        d.update(self.queries.to_dict())
        d["per_key"] = [r.to_dict() for r in self.per_key]
        return d


KeyLike: TypeAlias = WatermarkSpec | Detector


def _detectors(spec: KeyLike | Sequence[KeyLike], tokenizer: str | Path | None
               ) -> list[Detector]:
    keys = [spec] if isinstance(spec, (WatermarkSpec, Detector)) else list(spec)
    if not keys:
        raise ParameterError("give at least one key")
    detectors = [as_detector(k, tokenizer) for k in keys]
    ids = [d.spec.key_id for d in detectors]
    if len(set(ids)) != len(ids):
        raise ParameterError(f"key {next(k for k in ids if ids.count(k) > 1)} is given twice")
    return detectors


def _references(reference: TupleSet | Sequence[TupleSet] | None, n_keys: int
                ) -> list[TupleSet | None]:
    if reference is None:
        return [None] * n_keys
    if isinstance(reference, TupleSet):
        if n_keys > 1:
            raise ParameterError("a reference TupleSet holds one key's tuples: give one per key "
                                 "(read_reference(path, spec) for each spec)")
        return [reference]
    refs: list[TupleSet | None] = list(reference)
    if len(refs) != n_keys:
        raise ParameterError(f"give one reference per key: {len(refs)} for {n_keys} keys")
    return refs


def probe(endpoint: str, model: str, spec: KeyLike | Sequence[KeyLike], prompts: Sequence[str],
          *, reference: TupleSet | Sequence[TupleSet] | None = None,
          min_scored: int = DEFAULT_MIN_SCORED, tokenizer: str | Path | None = None,
          allow_marked_reference: bool = False, **fetch: Any) -> ProbeResult:
    """:func:`fetch_answers` then :func:`score_answers` for each key; ``fetch`` takes the
    former's options.

    ``spec``: one key (a spec or a :class:`~distillmark.verify.detect.Detector`) or several,
    tested on the same answers; the result's p-value is the best key's, Bonferroni-corrected
    for their number. ``reference``: the reference corpus's tuples (:func:`read_reference`),
    one set per key.
    """
    detectors = _detectors(spec, tokenizer)
    refs = _references(reference, len(detectors))
    for det, ref in zip(detectors, refs):  # a marked reference is refused before any query
        if ref is not None:
            score_answers([], det, reference=ref, allow_marked_reference=allow_marked_reference)
    got = fetch_answers(endpoint, model, prompts, **fetch)
    if not got.pairs:
        why = (" (the request budget was spent first)" if got.stats.budget_exhausted
               else f" ({got.first_error})" if got.first_error else "")
        raise EndpointError(f"the endpoint answered none of the {len(prompts)} prompts{why}")
    per_key = [score_answers(got.pairs, det, reference=ref, min_scored=min_scored,
                             allow_marked_reference=allow_marked_reference)
               for det, ref in zip(detectors, refs)]
    return ProbeResult.of(per_key, queries=got.stats, endpoint=chat_completions_url(endpoint),
                          model=model)
