"""Which accounts harvested a dataset: a pooled test per account that stays valid after the
records were chosen by their scores.

Each record is attributed on its own (:class:`~.attribute.Attributor`). For the dataset as a
whole, the records' distinct cells are split in two halves by an unkeyed hash of the cell (the
same cell always falls in the same half; the split does not depend on the key):

1. *selection*: each record's best candidate on its first-half cells, kept when its
   Bonferroni-corrected p-value on those cells is below ``select_alpha``;
2. *test*: for each account selected by at least one record, the second-half cells of the
   records that selected it, pooled and counted once each, tested exactly for that account.

Under H0 for an account (none of the records was served to it) its green bits on second-half
cells are independent Bernoulli(gamma) draws, independent of the first-half bits that drove the
selection, so the pooled count is exactly Binomial(n, gamma) given the selection; its p-value is
Bonferroni-corrected for the N candidates, so the chance of reporting any account that served
no record is at most alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from distillmark.watermark import prf

from .attribute import Attributor
from .decision import DEFAULT_ALPHA
from .grouping import group_distinct
from .nulls import binomial
from .stats import binomial_tails, bonferroni, bonferroni_log10

__all__ = ["AccountFound", "DatasetAccumulator", "DatasetAttribution", "attribute_cells",
           "merge_keys"]

DEFAULT_SELECT_ALPHA = 0.05


@dataclass(frozen=True)
class AccountFound:
    """One account's pooled test over the records that selected it, under the key ``key_id``
    (``pvalue`` corrected for every candidate, and for every key of a ring)."""

    account: str
    number: int
    n_records: int
    statistic: int
    n_scored: int
    pvalue: float
    log10_pvalue: float
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DatasetAttribution:
    """The accounts a dataset's records point to, each with its pooled test.

    Attributes:
        accounts: every account selected by at least one record, best first.
        n_records: records read; n_candidates: accounts that could have been named.
        select_alpha: level of the per-record selection on first-half cells.
        n_keys: keys tried (a key ring); each account's p-value is corrected for them too.
    """

    accounts: tuple[AccountFound, ...]
    n_records: int
    n_candidates: int
    select_alpha: float
    n_keys: int = 1

    def found(self, alpha: float = DEFAULT_ALPHA) -> tuple[AccountFound, ...]:
        """The accounts whose corrected pooled p-value is below ``alpha``."""
        return tuple(a for a in self.accounts if a.log10_pvalue < math.log10(alpha))

    def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"n_records": self.n_records, "n_candidates": self.n_candidates,
                             "n_keys": self.n_keys, "select_alpha": self.select_alpha,
                             "accounts": [a.to_dict() for a in self.accounts]}
        if alpha is not None:
            d["alpha"] = alpha
            d["accounts_found"] = [a.account for a in self.found(alpha)]
        return d


def _halves(cells: np.ndarray) -> np.ndarray:
    """Whether each cell is in the second half: one bit of an unkeyed 64-bit mix."""
    return (prf.fmix64(cells ^ np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)).astype(bool)


class DatasetAccumulator:
    """Streams a dataset's records through the selection, keeping only the second-half cells
    of the records that selected an account (memory grows with the harvested records, not with
    the dataset).

    Args:
        att: the attributor (key, account layer, candidates).
        select_alpha: level of the per-record selection on first-half cells.
    """

    def __init__(self, att: Attributor, *, select_alpha: float = DEFAULT_SELECT_ALPHA) -> None:
        self.att = att
        self.select_alpha = select_alpha
        self.n_records = 0
        self._cells: list[np.ndarray] = []  # second-half cells of selecting records
        self._picks: list[np.ndarray] = []  # the candidate each of them selected
        self._selected: list[np.ndarray] = []  # the candidate of each selecting record

    def add(self, cells: np.ndarray, groups: np.ndarray, n_records: int) -> None:
        """A batch of ``n_records`` records: their distinct cells ``(n,) uint64`` and the record
        (``0 .. n_records - 1``) of each."""
        att, cand = self.att, self.att.candidates
        second = _halves(cells)
        first = ~second
        best = att.layer.best(cells[first], groups[first], n_records, cand.numbers)
        _, lg = binomial_tails(best.count, best.n, att.layer.gamma)
        chosen = ((lg + math.log10(cand.size) < math.log10(self.select_alpha))
                  & (best.count > best.second))
        keep = second & chosen[groups]
        self._cells.append(cells[keep])
        self._picks.append(best.index[groups[keep]])
        self._selected.append(best.index[chosen])
        self.n_records += n_records

    def result(self) -> DatasetAttribution:
        """The pooled test of every account some record selected."""
        cand = self.att.candidates
        picks = np.concatenate(self._picks) if self._picks else np.zeros(0, dtype=np.int64)
        cells = np.concatenate(self._cells) if self._cells else np.zeros(0, dtype=np.uint64)
        selected = (np.concatenate(self._selected) if self._selected
                    else np.zeros(0, dtype=np.int64))
        accounts, slot = np.unique(selected, return_inverse=True)
        if accounts.size == 0:
            return DatasetAttribution((), self.n_records, cand.size, self.select_alpha)
        cell_slot = np.searchsorted(accounts, picks)
        d = group_distinct(cells, cell_slot, accounts.size, None)
        layer = self.att.layer
        green = layer.green(layer.cell_values(d.keys), cand.numbers[accounts[d.groups]])
        out = binomial(green, d.groups, accounts.size, p=layer.gamma)
        n_sel = np.bincount(slot, minlength=accounts.size)
        found = [AccountFound(account=cand.name(int(a)), number=int(cand.numbers[int(a)]),
                              n_records=int(n_sel[j]), statistic=int(out.statistic[j]),
                              n_scored=int(out.n_scored[j]),
                              pvalue=bonferroni(float(out.pvalue[j]), cand.size),
                              log10_pvalue=bonferroni_log10(float(out.log10_pvalue[j]),
                                                            cand.size),
                              key_id=self.att.scheme.key_id)
                 for j, a in enumerate(accounts.tolist())]
        found.sort(key=lambda a: a.log10_pvalue)
        return DatasetAttribution(tuple(found), self.n_records, cand.size, self.select_alpha)


def attribute_cells(att: Attributor, cells: np.ndarray, groups: np.ndarray, n_records: int, *,
                    select_alpha: float = DEFAULT_SELECT_ALPHA) -> DatasetAttribution:
    """The dataset test from every record's distinct cells at once (see
    :class:`DatasetAccumulator`)."""
    acc = DatasetAccumulator(att, select_alpha=select_alpha)
    acc.add(cells, groups, n_records)
    return acc.result()


def merge_keys(per_key: Sequence[DatasetAttribution]) -> DatasetAttribution:
    """The dataset tests of one dataset under each of K keys (a key ring) as one: every
    account found under any key, its p-value corrected once more for the K keys."""
    k = len(per_key)
    if k == 1:
        return per_key[0]
    found = [replace(a, pvalue=bonferroni(a.pvalue, k),
                     log10_pvalue=bonferroni_log10(a.log10_pvalue, k))
             for d in per_key for a in d.accounts]
    found.sort(key=lambda a: a.log10_pvalue)
    first = per_key[0]
    return DatasetAttribution(tuple(found), first.n_records, first.n_candidates,
                              first.select_alpha, n_keys=k)
