"""Attribution: which account was an answer served to?

Every answer served for an account carries the key's account layer
(:mod:`distillmark.watermark.accounts`, docs/schemes/accounts.md). For a text, the distinct
cells of the provider layer are scored for every candidate account at once; the best is named
when its exact binomial p-value, Bonferroni-corrected for every candidate that could have been
named, is below the level. For a candidate that did not serve the text the count is exactly
Binomial(n, gamma), whatever the text (human, provider-only, or another account's), so the
corrected p-value bounds the chance of naming a wrong account.

A dataset's records are attributed one by one, and the dataset as a whole by a pooled test per
account that stays valid after the records were chosen by their scores: see
:mod:`.attribute_dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillmark.watermark.accounts import AccountLayer
from distillmark.watermark.errors import InputError
from distillmark.watermark.keys import WatermarkSpec

from .candidates import Candidates
from .decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, Decision, check_min_scored
from .detect import Detector
from .grouping import batch_tuple_keys, group_distinct
from .nulls import binomial
from .stats import bonferroni, bonferroni_log10

__all__ = ["AttributionResult", "AttributionVerdict", "Attributor", "best_of_keys"]


class AttributionVerdict:
    ATTRIBUTED = "attributed"
    NOT_ATTRIBUTED = "not attributed"
    INSUFFICIENT = "insufficient evidence"


@dataclass(frozen=True)
class AttributionResult(Decision):
    """Which account a text was served to.

    Attributes:
        source: the input (file name, record location) echoed back.
        statistic: cells green for the best candidate.
        pvalue: its exact binomial p-value, Bonferroni-corrected for ``n_candidates``.
        log10_pvalue: log10 of ``pvalue`` (finite below 1e-308).
        uncorrected_log10_pvalue: log10 of the best candidate's own p-value.
        candidate: the best-scoring candidate, named or not.
        runner_up: cells green for the second-best candidate (equal to ``statistic`` on a tie:
            then no account is named).
        n_tokens: tokens of the text (prompt excluded); n_scored: distinct cells scored.
        n_candidates: accounts that could have been named.
        score_mean: ``statistic / n_scored``; null_mean: the layer's gamma.
        provider_log10_pvalue: log10 p of the provider layer on the same cells (is the text
            ours at all?).
        min_scored: fewer scored cells than this is "insufficient evidence".
        key_id: the master key (of a key ring: the key whose layer named the account).
        n_keys: keys tried (a key ring's, each with its own account layer): ``pvalue`` is then
            corrected for ``n_candidates * n_keys`` tests (:func:`best_of_keys`).
    """

    outcomes: ClassVar[tuple[str, str, str]] = (AttributionVerdict.ATTRIBUTED,
                                                AttributionVerdict.NOT_ATTRIBUTED,
                                                AttributionVerdict.INSUFFICIENT)

    source: str
    statistic: int
    pvalue: float
    log10_pvalue: float
    uncorrected_log10_pvalue: float
    candidate: str
    runner_up: int
    n_tokens: int
    n_scored: int
    n_candidates: int
    score_mean: float
    null_mean: float
    provider_log10_pvalue: float
    min_scored: int
    key_id: str
    n_keys: int = 1

    @property
    def account(self) -> str | None:
        """The account named at the default level (None when none is)."""
        return self.account_at(DEFAULT_ALPHA)

    def account_at(self, alpha: float) -> str | None:
        """The account named at level ``alpha``, or None."""
        return self.candidate if self.is_watermarked(alpha) else None

    def is_watermarked(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """Whether an account is named at ``alpha`` (enough cells, corrected p below it, and a
        unique best candidate)."""
        return super().is_watermarked(alpha) and self.runner_up < self.statistic

    def decision_dict(self, alpha: float) -> dict[str, Any]:
        """``alpha``, the account named at that level (None when none is) and the verdict."""
        return {"alpha": alpha, "account": self.account_at(alpha),
                "verdict": self.verdict(alpha)}


class Attributor:
    """Attributes texts to the accounts of ``candidates`` with a key's account layer.

    Args:
        spec: the master key (it must have an account layer).
        candidates: the accounts that could be named.
        tokenizer: path replacing the tokenizer recorded in the spec (same fingerprint).
        min_scored: fewer distinct cells than this is "insufficient evidence".
    """

    def __init__(self, spec: WatermarkSpec, candidates: Candidates, *,
                 tokenizer: str | Path | None = None,
                 min_scored: int = DEFAULT_MIN_SCORED) -> None:
        if spec.accounts is None:
            raise InputError(f"key {spec.key_id} has no account layer: answers served with it "
                             "name no account (make the key with the default account layer)")
        check_min_scored(min_scored)
        self.detector = Detector(spec, tokenizer=tokenizer)
        self.scheme = self.detector.scheme
        self.layer = AccountLayer(spec.secret, spec.vocab_size, spec.accounts)
        self.candidates = candidates
        self.min_scored = min_scored

    def attribute(self, text: str, *, prompt: str | None = None, source: str = ""
                  ) -> AttributionResult:
        """Attribute one text (``prompt``: what it answered, context only, never scored)."""
        ids, plen = self.detector.encode_with_prompt(text, prompt)
        return self.attribute_ids([ids], prompt_lens=[plen], sources=[source])[0]

    def attribute_pooled(self, texts: Sequence[str], *, source: str = "") -> AttributionResult:
        """Attribute several texts taken to come from ONE account, their cells pooled."""
        seqs = [self.detector.encode(t) for t in texts]
        cells, _ = self.distinct_cells(seqs)
        n_tokens = int(sum(s.size for s in seqs))
        return self.results(cells, np.zeros(cells.size, dtype=np.int64), 1,
                             np.array([n_tokens]), [source])[0]

    def attribute_ids(self, seqs: Sequence[np.ndarray], *,
                      prompt_lens: Sequence[int] | None = None,
                      sources: Sequence[str] | None = None,
                      records: Sequence[int] | None = None) -> list[AttributionResult]:
        """Attribute many token sequences at once: each on its own distinct cells, or, with
        ``records`` (the record of each sequence, ``0 .. r - 1``, non-decreasing), each
        record on the distinct cells of its sequences (``sources`` then names records)."""
        plens = [0] * len(seqs) if prompt_lens is None else list(prompt_lens)
        rec = (np.arange(len(seqs), dtype=np.int64) if records is None
               else np.asarray(records, dtype=np.int64))
        n_rec = int(rec.max()) + 1 if rec.size else 0
        cells, groups = self.distinct_cells(seqs, prompt_lens=plens, records=rec)
        n_tokens = np.bincount(rec, weights=[np.asarray(s).size - p for s, p in
                                             zip(seqs, plens)], minlength=n_rec).astype(np.int64)
        names = list(sources) if sources is not None else [""] * n_rec
        return self.results(cells, groups, n_rec, n_tokens, names)

    def distinct_cells(self, seqs: Sequence[np.ndarray], *,
                       prompt_lens: Sequence[int] | None = None,
                       records: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The distinct cells of each sequence (or of each record, ``records`` giving the
        record of every sequence): ``(cells (n,) uint64, groups (n,) int64)``; the first
        ``prompt_lens[j]`` tokens of sequence ``j`` are context."""
        keys, owner = batch_tuple_keys(seqs, self.scheme, prompt_lens=prompt_lens)
        n_groups = len(seqs)
        if records is not None:
            rec = np.asarray(records, dtype=np.int64)
            owner = rec[owner]
            n_groups = int(rec.max()) + 1 if rec.size else 0
        d = group_distinct(keys, owner, max(n_groups, 1), self.scheme.n_cells)
        return d.keys, d.groups

    def results(self, cells: np.ndarray, groups: np.ndarray, n_groups: int,
                n_tokens: np.ndarray, sources: Sequence[str]) -> list[AttributionResult]:
        """One result per group from its distinct ``cells`` (``groups`` in ``0 ..
        n_groups - 1``), its tokens and its name."""
        best = self.layer.best(cells, groups, n_groups, self.candidates.numbers)
        values = self.layer.cell_values(cells)
        named = self.candidates.numbers[best.index][groups]
        green = self.layer.green(values, named)
        acct = binomial(green, groups, n_groups, p=self.layer.gamma)
        prov = binomial(self.scheme.key_scores(cells), groups, n_groups,
                        p=self.scheme.test_params["p"])
        n_cand = self.candidates.size
        out = []
        for i in range(n_groups):
            lg = float(acct.log10_pvalue[i])
            out.append(AttributionResult(
                source=sources[i], statistic=int(acct.statistic[i]),
                pvalue=bonferroni(float(acct.pvalue[i]), n_cand),
                log10_pvalue=bonferroni_log10(lg, n_cand),
                uncorrected_log10_pvalue=lg,
                candidate=self.candidates.name(int(best.index[i])),
                runner_up=int(best.second[i]), n_tokens=int(n_tokens[i]),
                n_scored=int(acct.n_scored[i]), n_candidates=n_cand,
                score_mean=float(acct.score_mean[i]), null_mean=self.layer.gamma,
                provider_log10_pvalue=float(prov.log10_pvalue[i]), min_scored=self.min_scored,
                key_id=self.scheme.key_id))
        return out


def best_of_keys(per_key: Sequence[Sequence[AttributionResult]]) -> list[AttributionResult]:
    """The same texts attributed under each of K keys (a key ring: answers served before a
    rotation carry the retired key's account layer): for each text, the key with the smallest
    p-value, that p-value Bonferroni-corrected once more for the K keys (``n_keys``)."""
    k = len(per_key)
    if k == 1:
        return list(per_key[0])
    out = []
    for rs in zip(*per_key, strict=True):
        best = min(rs, key=lambda r: r.log10_pvalue)
        out.append(replace(best, pvalue=bonferroni(best.pvalue, k),
                           log10_pvalue=bonferroni_log10(best.log10_pvalue, k), n_keys=k))
    return out
