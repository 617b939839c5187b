"""The decision every result makes, and its JSON: one base for every verifier's result.

A result holds a test's figures (``pvalue``, ``log10_pvalue``, ``n_scored``, ...) and decides
the same way everywhere, in three outcomes: "watermarked" when the evidence suffices and the
p-value is below ``alpha``, "insufficient evidence" when fewer than ``min_scored`` units were
scored, "not watermarked" otherwise. :class:`Decision` gives every result these methods and its
``to_dict`` (the fields, then ``alpha`` and the verdict when a level is given). Two kinds of
result report the test of a nested result:

- :class:`CorrectedDecision`: the best of several keys' tests (a key ring, a scan over several
  keys), with its own p-value Bonferroni-corrected for their number; how much evidence there
  was is the best test's.
- :class:`WrappedDecision`: a test with what it cost or what was left out around it (a
  probe's answers, a probe of an endpoint); its p-value, scored count and decision are the
  nested test's, and its JSON is the nested test's with the result's own fields around it.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

from distillmark.watermark.errors import ParameterError

__all__ = ["DEFAULT_ALPHA", "DEFAULT_MIN_SCORED", "CorrectedDecision", "Decision", "Verdict",
           "WrappedDecision", "check_alpha", "check_min_scored"]

#: Default number of scored (distinct) tuples below which the answer is "insufficient evidence".
DEFAULT_MIN_SCORED = 25
#: Default significance level of the decision.
DEFAULT_ALPHA = 1e-3


class Verdict:
    WATERMARKED = "watermarked"
    NOT_WATERMARKED = "not watermarked"
    INSUFFICIENT = "insufficient evidence"


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ParameterError(f"`alpha` must be in (0, 1), got {alpha}")


def check_min_scored(min_scored: int) -> None:
    if min_scored < 1:
        raise ParameterError(f"`min_scored` must be >= 1, got {min_scored}")


class Decision:
    """The three-outcome decision, from ``log10_pvalue`` and :meth:`is_sufficient` (by
    default ``n_scored >= min_scored``), and the JSON of a result (a frozen dataclass).

    A result that states its power (:meth:`detectable_fraction`, from ``power_statement``)
    adds it to the decision in its JSON (``None`` where no share would be found).
    """

    #: Whether the result has ``detectable_fraction(alpha)`` to report with its decision.
    power_statement: ClassVar[bool] = False
    #: The words of the three outcomes: found, not found, insufficient evidence.
    outcomes: ClassVar[tuple[str, str, str]] = (Verdict.WATERMARKED, Verdict.NOT_WATERMARKED,
                                                Verdict.INSUFFICIENT)

    if TYPE_CHECKING:  # fields of every result (or properties, for wrapped results)

        @property
        def pvalue(self) -> float: ...

        @property
        def log10_pvalue(self) -> float: ...

        @property
        def n_scored(self) -> int: ...

        @property
        def min_scored(self) -> int: ...

        def detectable_fraction(self, alpha: float = DEFAULT_ALPHA) -> float: ...

    def is_sufficient(self) -> bool:
        return self.n_scored >= self.min_scored

    def is_watermarked(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """True when the evidence suffices and ``pvalue < alpha``."""
        check_alpha(alpha)
        return self.is_sufficient() and self.log10_pvalue < math.log10(alpha)

    def verdict(self, alpha: float = DEFAULT_ALPHA) -> str:
        """One of :attr:`outcomes`: "watermarked", "not watermarked", "insufficient
        evidence" (other words for other tests: "attributed"...)."""
        found, not_found, insufficient = self.outcomes
        if self.is_watermarked(alpha):
            return found
        if not self.is_sufficient():
            return insufficient
        return not_found

    def fields_dict(self) -> dict[str, Any]:
        """The result's figures as JSON-ready values (its fields, in order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def decision_dict(self, alpha: float) -> dict[str, Any]:
        """``alpha``, the verdict at that level and, with a power statement, the detectable
        fraction."""
        d: dict[str, Any] = {"alpha": alpha, "verdict": self.verdict(alpha)}
        if self.power_statement:
            frac = self.detectable_fraction(alpha)
            d["detectable_fraction"] = frac if math.isfinite(frac) else None
        return d

    def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
        """JSON-ready dict; with ``alpha``, the decision at that level is included."""
        d = self.fields_dict()
        if alpha is not None:
            d.update(self.decision_dict(alpha))
        return d


class CorrectedDecision(Decision):
    """The best of ``n_keys`` keys' tests (the field named by ``best_field``), with the
    Bonferroni-corrected ``pvalue`` and ``log10_pvalue`` as the result's own fields.

    Its JSON starts with the best test's fields, the corrected p-value in their place, then
    ``n_keys``, the uncorrected p-value and the correction's name.
    """

    best_field: ClassVar[str]
    n_keys: int

    @property
    def best_result(self) -> Decision:
        """The test of the key with the smallest p-value (uncorrected)."""
        return getattr(self, self.best_field)  # type: ignore[no-any-return]

    def is_sufficient(self) -> bool:
        return self.best_result.is_sufficient()

    def fields_dict(self) -> dict[str, Any]:
        best = self.best_result
        d = best.to_dict()
        d.update(pvalue=self.pvalue, log10_pvalue=self.log10_pvalue, n_keys=self.n_keys,
                 uncorrected_pvalue=best.pvalue, uncorrected_log10_pvalue=best.log10_pvalue,
                 correction="bonferroni")
        return d


class WrappedDecision(Decision):
    """A nested test (the field named by ``nested_field``) with the result's own fields around
    it: ``pvalue``, ``log10_pvalue``, ``n_scored`` and the decision are the nested test's.

    Its JSON is the nested test's (with the decision, at ``alpha``), then the result's other
    fields in order; those named in ``leading_fields`` come first, and a field that has its
    own ``to_dict`` is spread in place.
    """

    nested_field: ClassVar[str]
    leading_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def nested(self) -> Decision:
        return getattr(self, self.nested_field)  # type: ignore[no-any-return]

    @property
    def pvalue(self) -> float:
        return self.nested.pvalue

    @property
    def log10_pvalue(self) -> float:
        return self.nested.log10_pvalue

    @property
    def n_scored(self) -> int:
        return self.nested.n_scored

    def is_sufficient(self) -> bool:
        return self.nested.is_sufficient()

    def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
        names = [f.name for f in fields(self)]  # type: ignore[arg-type]
        d: dict[str, Any] = {}
        for name in [*self.leading_fields, *(n for n in names if n not in self.leading_fields)]:
            value = getattr(self, name)
            if name == self.nested_field:
                d.update(value.to_dict(alpha))
            elif hasattr(value, "to_dict"):
                d.update(value.to_dict())
            else:
                d[name] = value
        return d
