"""Detection against several keys at once (a key ring), corrected for the number of keys tried.

Testing K keys and keeping the best p-value inflates false positives K-fold; the ring reports
the Bonferroni-corrected p-value ``min(1, K * min_k p_k)``, valid whatever the dependence between
the keys' tests, and records ``n_keys``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from distillmark.watermark.errors import ParameterError
from distillmark.watermark.keys import WatermarkSpec

from .decision import DEFAULT_MIN_SCORED, CorrectedDecision
from .detect import DetectionResult, Detector
from .stats import bonferroni, bonferroni_log10

__all__ = ["KeyRingDetector", "KeyRingResult"]


@dataclass(frozen=True)
class KeyRingResult(CorrectedDecision):
    """Result of testing one text against ``n_keys`` keys.

    Attributes:
        best: the per-key result with the smallest p-value.
        pvalue: Bonferroni-corrected p-value of the best key, ``min(1, n_keys * best.pvalue)``.
        log10_pvalue: its log10, finite whatever its size.
        n_keys: number of keys tested (the correction's multiplier).
        results: every key's own (uncorrected) result, in the ring's order.
    """

    best: DetectionResult
    pvalue: float
    log10_pvalue: float
    n_keys: int
    results: tuple[DetectionResult, ...]

    best_field: ClassVar[str] = "best"

    def fields_dict(self) -> dict[str, Any]:
        """The best key's fields with the corrected p-value, plus ``n_keys``, the uncorrected
        p-value and every key's result (``per_key``)."""
        d = super().fields_dict()
        d["per_key"] = [r.to_dict() for r in self.results]
        return d


class KeyRingDetector:
    """Tests texts against every spec of a ring; texts are tokenised once per tokenizer."""

    def __init__(self, specs: Sequence[WatermarkSpec], *, tokenizer: str | Path | None = None,
                 min_scored: int = DEFAULT_MIN_SCORED) -> None:
        if not specs:
            raise ParameterError("a key ring needs at least one key")
        ids = [s.key_id for s in specs]
        if len(set(ids)) != len(ids):
            dup = next(k for k in ids if ids.count(k) > 1)
            raise ParameterError(f"key {dup} is in the ring twice")
        self.detectors = [Detector(s, tokenizer=tokenizer, min_scored=min_scored)
                          for s in specs]

    def detect(self, text: str, *, prompt: str | None = None) -> KeyRingResult:
        encoded: dict[str, Any] = {}
        results = []
        for det in self.detectors:
            sha = det.spec.tokenizer.sha256
            if sha not in encoded:
                encoded[sha] = det.encode_with_prompt(text, prompt)
            ids, p_len = encoded[sha]
            results.append(det.detect_ids(ids, prompt_len=p_len))
        best = min(results, key=lambda r: r.log10_pvalue)
        k = len(results)
        return KeyRingResult(best=best, pvalue=bonferroni(best.pvalue, k),
                             log10_pvalue=bonferroni_log10(best.log10_pvalue, k),
                             n_keys=k, results=tuple(results))
