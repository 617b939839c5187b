"""A probe of an endpoint: its answers fetched (:mod:`.client`), then tested together
(:mod:`.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from distillmark.watermark.keys import WatermarkSpec

from ..aggregate import TupleSet
from ..decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, WrappedDecision
from ..detect import Detector
from .client import EndpointError, QueryStats, chat_completions_url, fetch_answers
from .scoring import AnswersResult, as_detector, score_answers

__all__ = ["ProbeResult", "probe"]


@dataclass(frozen=True)
class ProbeResult(WrappedDecision):
    """A probe of an endpoint: the pooled test on its answers and what the queries cost.

    Its JSON holds the endpoint and model, then the test's keys (as ``detect``:
    ``statistic``, ``pvalue``, ``n_scored``, ...) and the answers' counts, then the queries'
    (``n_queries``, ``n_cached``, ...), in one object.
    """

    answers: AnswersResult
    queries: QueryStats
    endpoint: str
    model: str

    nested_field: ClassVar[str] = "answers"
    leading_fields: ClassVar[tuple[str, ...]] = ("endpoint", "model")

    def detectable_fraction(self, alpha: float = DEFAULT_ALPHA) -> float:
        return self.answers.aggregate.detectable_fraction(alpha)


def probe(endpoint: str, model: str, spec: WatermarkSpec | Detector, prompts: Sequence[str],
          *, reference: TupleSet | None = None, min_scored: int = DEFAULT_MIN_SCORED,
          tokenizer: str | Path | None = None, allow_marked_reference: bool = False,
          **fetch: Any) -> ProbeResult:
    """:func:`fetch_answers` then :func:`score_answers`; ``fetch`` takes the former's options."""
    detector = as_detector(spec, tokenizer)
    if reference is not None:  # refuse a marked reference before paying for any query
        score_answers([], detector, reference=reference,
                      allow_marked_reference=allow_marked_reference)
    got = fetch_answers(endpoint, model, prompts, **fetch)
    if not got.pairs:
        why = (" (the request budget was spent first)" if got.stats.budget_exhausted
               else f" ({got.first_error})" if got.first_error else "")
        raise EndpointError(f"the endpoint answered none of the {len(prompts)} prompts{why}")
    scored = score_answers(got.pairs, detector, reference=reference, min_scored=min_scored,
                           allow_marked_reference=allow_marked_reference)
    return ProbeResult(answers=scored, queries=got.stats,
                       endpoint=chat_completions_url(endpoint), model=model)
