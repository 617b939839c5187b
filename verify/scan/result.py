"""The result of a scan: the pooled test of every key, the best one Bonferroni-corrected for
their number, the records flagged by Benjamini-Hochberg and the estimated fraction of
watermarked records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..aggregate import AggregateResult
from ..attribute_dataset import DatasetAttribution
from ..decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, CorrectedDecision
from ..fraction import FractionEstimate, binomial_mixture, pvalue_mixture, theta_floor
from ..nulls import BINOMIAL_TESTS
from ..stats import benjamini_hochberg, bonferroni, bonferroni_log10
from .state import KeyState, ScanState

__all__ = ["DEFAULT_FDR", "ScanResult", "finish"]

DEFAULT_FDR = 0.05


@dataclass(frozen=True)
class ScanResult(CorrectedDecision):
    """Result of a dataset scan.

    Attributes:
        aggregate: the pooled exact test of the key with the smallest p-value (its
            ``pvalue`` uncorrected).
        pvalue, log10_pvalue: the dataset p-value, Bonferroni-corrected for ``n_keys``.
        n_keys: keys tested.
        per_key: every key's pooled test, in the order given.
        n_records_read, n_records_scored, n_records_skipped: records seen, tested, and skipped
            as bad (read = scored + skipped).
        fdr: the Benjamini-Hochberg level of the per-record flags.
        n_flagged: records flagged.
        bh_log10_threshold: largest flagged log10 p-value (``-inf``: none).
        fraction: estimated fraction of watermarked records and its interval (best key).
        accounts: with candidate accounts, the accounts the records point to (the dataset
            attribution: :mod:`~distillmark.verify.attribute_dataset`); None without.
    """

    aggregate: AggregateResult
    pvalue: float
    log10_pvalue: float
    n_keys: int
    per_key: tuple[AggregateResult, ...]
    n_records_read: int
    n_records_scored: int
    n_records_skipped: int
    fdr: float
    n_flagged: int
    bh_log10_threshold: float
    fraction: FractionEstimate
    accounts: DatasetAttribution | None = None

    best_field: ClassVar[str] = "aggregate"
    power_statement: ClassVar[bool] = True

    def detectable_fraction(self, alpha: float = DEFAULT_ALPHA) -> float:
        """Smallest watermarked share of the pooled tuples the test would find at ``alpha``
        (after the correction for the keys) with probability 1/2; ``inf`` if none would be."""
        return self.aggregate.detectable_fraction(min(0.5, alpha / self.n_keys))

    def fields_dict(self) -> dict[str, Any]:
        """The best key's pooled fields with the corrected p-value, the record counts, the
        flags and the fraction estimate (``fraction_*``), every key's result (``per_key``)."""
        d = super().fields_dict()
        for f in fields(self):
            if f.name in ("aggregate", "pvalue", "log10_pvalue", "n_keys", "per_key",
                          "fraction", "accounts"):
                continue
            v = getattr(self, f.name)
            d[f.name] = v if not (isinstance(v, float) and math.isinf(v)) else None
        for k, v in self.fraction.to_dict().items():
            d[f"fraction_{k}" if k != "estimate" else "fraction"] = v
        d["per_key"] = [r.to_dict() for r in self.per_key]
        if self.accounts is not None:
            d["accounts"] = self.accounts.to_dict()
        return d


def _fraction(ks: KeyState, agg: AggregateResult, confidence: float) -> FractionEstimate:
    """Among the records with at least ``min_scored`` fresh tuples (binomial family) or scored
    tuples (others): a record with less says too little to be classified, and which records
    say little is not independent of what they are (near-duplicates of other records)."""
    if ks.scheme.test in BINOMIAL_TESTS:
        n, k, c = ks.pairs.arrays()
        return binomial_mixture(n, k, c, p0=agg.null_mean, confidence=confidence,
                                theta_min=theta_floor(agg.null_mean, agg.effect),
                                min_units=agg.min_scored * ks._depth)
    lg = ks.log10_pvalues[ks.n_scored >= agg.min_scored]
    return pvalue_mixture(lg, confidence=confidence, min_units=agg.min_scored)


def finish(state: ScanState, *, fdr: float = DEFAULT_FDR, min_scored: int = DEFAULT_MIN_SCORED,
           effect: float | None = None, confidence: float = 0.95
           ) -> tuple[ScanResult, np.ndarray, np.ndarray]:
    """The dataset result of a complete state, with the per-record corrected log10 p-values
    ``(m,)`` and BH flags ``(m,) bool``."""
    per_key = tuple(ks.acc.result(min_scored=min_scored, effect=effect) for ks in state.keys)
    n_keys = len(per_key)
    b = int(np.argmin([r.log10_pvalue for r in per_key]))
    agg = per_key[b]
    if n_keys == 1:
        rec = state.keys[0].log10_pvalues
    else:
        rec = np.minimum(0.0, np.min(np.stack([k.log10_pvalues for k in state.keys]), axis=0)
                         + math.log10(n_keys))
    flags, t = benjamini_hochberg(rec, fdr)
    res = ScanResult(
        aggregate=agg, pvalue=bonferroni(agg.pvalue, n_keys),
        log10_pvalue=bonferroni_log10(agg.log10_pvalue, n_keys), n_keys=n_keys,
        per_key=per_key, n_records_read=state.n_read,
        n_records_scored=state.n_scored_records, n_records_skipped=state.n_skipped, fdr=fdr,
        n_flagged=int(flags.sum()), bh_log10_threshold=t,
        fraction=_fraction(state.keys[b], agg, confidence),
        accounts=state.accounts.result() if state.accounts is not None else None)
    return res, rec, flags
