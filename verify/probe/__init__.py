"""The black-box test of a suspect model: ask it many prompts through an OpenAI-compatible
endpoint and test all its answers together for the watermark ("closed-model radioactivity",
Sander et al. 2024).

Three parts, kept apart so that experiments can score answers they got by other means:

- :mod:`.scoring` (pure): ``(prompt, answer)`` pairs -> :class:`AnswersResult`, one exact test
  on the distinct tuples of all answers (prompts' tuples left out), optionally restricted to
  the tuples of a reference corpus written without the watermark (:func:`read_reference`).
- :mod:`.client` (HTTP, needs the ``serve`` extra for httpx): :func:`fetch_answers`,
  concurrent queries with retries, backoff and a request budget.
- :mod:`.cache`: :class:`ResponseCache`, the answers on disk (one file per answer, written
  atomically), so that an interrupted probe resumes without paying for any query twice.

:func:`probe` (:mod:`.run`) does both: fetch, then score.
"""

from .cache import ResponseCache
from .client import (
    DEFAULT_MAX_ANSWER_BYTES,
    EndpointError,
    FetchResult,
    QueryStats,
    SamplingParams,
    chat_completions_url,
    fetch_answers,
)
from .run import ProbeResult, probe
from .scoring import (
    AnswersResult,
    read_reference,
    reference_from_texts,
    reference_log10_pvalue,
    score_answers,
)

__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "AnswersResult",
    "EndpointError",
    "FetchResult",
    "ProbeResult",
    "QueryStats",
    "ResponseCache",
    "SamplingParams",
    "chat_completions_url",
    "fetch_answers",
    "probe",
    "read_reference",
    "reference_from_texts",
    "reference_log10_pvalue",
    "score_answers",
]
