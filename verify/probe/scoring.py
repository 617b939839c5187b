"""Scoring a suspect's answers: ``(prompt, answer)`` pairs in, one pooled exact test out.

:func:`score_answers` is pure (no network): answers are re-tokenised with the spec's tokenizer
whatever tokenizer the suspect uses (the test is exact for any text that does not depend on the
key); the first ``h`` tokens of each answer have no full window in the answer and are not scored
(the endpoint's chat template, unknown here, stood before them); tuples that also occur in a
prompt are left out (the suspect may copy its prompt, and prompts are not evidence); the
distinct tuples of all answers are pooled into one exact test
(:class:`~distillmark.verify.aggregate.AggregateAccumulator`), optionally restricted to the
tuples of a reference corpus (``reference``: the "supervised" filter). The test stays exact only
if the reference does not depend on the key: a corpus *watermarked with the key* is richer in
green tuples than chance, and a clean model that shares its language reuses them, so the
filtered test finds the watermark in a model that never saw it. Such a reference is refused
unless ``allow_marked_reference``; build it from the teacher's answers generated without the
watermark instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import Scheme

from ..aggregate import AggregateAccumulator, AggregateResult, TupleSet
from ..decision import DEFAULT_MIN_SCORED, WrappedDecision
from ..detect import Detector
from ..grouping import batch_tuple_keys
from ..nulls import run_test
from ..textfiles import json_line, read_input

__all__ = ["AnswersResult", "as_detector", "read_reference", "reference_from_texts",
           "reference_log10_pvalue", "score_answers"]


@dataclass(frozen=True)
class AnswersResult(WrappedDecision):
    """The pooled exact test over a suspect's answers.

    Attributes:
        aggregate: the test on the distinct tuples of all answers
            (:class:`~distillmark.verify.aggregate.AggregateResult`: ``statistic``,
            ``pvalue``, ``log10_pvalue``, ``n_scored``, ...).
        n_answers: answers given (empty ones included).
        n_empty: answers with no text (nothing to score).
        n_prompt_excluded: scorable tuples left out because the same tuple occurs in a prompt.
        reference_log10_pvalue: log10 p-value of the reference corpus's own tuples tested for
            the key (0.0 without a reference); far below 0, the reference carries the
            watermark and the filtered test is not exact.
    """

    aggregate: AggregateResult
    n_answers: int
    n_empty: int
    n_prompt_excluded: int
    reference_log10_pvalue: float = 0.0

    nested_field: ClassVar[str] = "aggregate"


def _encode_all(detector: Detector, texts: Sequence[str]) -> list[np.ndarray]:
    if not texts:
        return []
    return detector.encoder.encode_lists(texts)


def as_detector(spec: WatermarkSpec | Detector, tokenizer: str | Path | None) -> Detector:
    """``spec``'s detector (with ``tokenizer`` in place of its recorded one), or ``spec``
    itself when it is one already."""
    if isinstance(spec, Detector):
        return spec
    if not isinstance(spec, WatermarkSpec):
        raise ParameterError(f"`spec` must be a WatermarkSpec or a Detector, got "
                             f"{type(spec).__name__}")
    return Detector(spec, tokenizer=tokenizer)


def score_answers(pairs: Iterable[tuple[str, str]], spec: WatermarkSpec | Detector, *,
                  reference: TupleSet | None = None, min_scored: int = DEFAULT_MIN_SCORED,
                  exclude_prompts: bool = True, effect: float | None = None,
                  tokenizer: str | Path | None = None, allow_marked_reference: bool = False,
                  reference_alpha: float = 1e-3) -> AnswersResult:
    """Test ``(prompt, answer)`` pairs together for ``spec``'s watermark.

    Args:
        pairs: the prompts asked and the suspect's answers (text; any tokenizer made them).
        spec: the key (or a :class:`~distillmark.verify.detect.Detector` already built).
        reference: keep only tuples in this set (:func:`read_reference`); it must not be
            built from the answers tested, nor depend on the key (see the module's notes).
        allow_marked_reference: accept a reference whose own tuples test as watermarked at
            ``reference_alpha`` (the p-value is then not exact: biased toward "watermarked").
        min_scored: fewer distinct scored tuples than this is "insufficient evidence".
        exclude_prompts: leave out tuples that occur in any prompt (keep it on).
        effect: standardised per-tuple effect assumed by the power statement.
        tokenizer: path replacing the tokenizer recorded in the spec (same fingerprint).
    """
    detector = as_detector(spec, tokenizer)
    scheme = detector.scheme
    ref_log10 = 0.0
    if reference is not None:
        ref_log10 = reference_log10_pvalue(reference, scheme)
        if ref_log10 < math.log10(reference_alpha) and not allow_marked_reference:
            raise InputError(
                f"the reference corpus carries this key's watermark (p = 1e{ref_log10:.1f}): "
                "filtering on its tuples finds the watermark in models that never saw it; "
                "build the reference from the teacher's answers generated without the "
                "watermark (generate --no-watermark --json), or accept a p-value that is not "
                "exact with --allow-marked-reference")
    prompts: list[str] = []
    answers: list[str] = []
    n_answers = 0
    for item in pairs:
        try:
            prompt, answer = item
        except (TypeError, ValueError):
            raise InputError("each pair must be (prompt, answer)") from None
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise InputError(f"prompts and answers must be str, got {type(prompt).__name__} "
                             f"and {type(answer).__name__}")
        n_answers += 1
        prompts.append(prompt)
        if answer.strip():
            answers.append(answer)
    acc = AggregateAccumulator(scheme)
    seqs = _encode_all(detector, answers)
    keys, _ = batch_tuple_keys(seqs, scheme)
    n_excluded = 0
    if exclude_prompts and keys.size:
        in_prompts = TupleSet.for_scheme(scheme)
        distinct = sorted({p for p in prompts if p.strip()})
        p_seqs = _encode_all(detector, distinct)
        if p_seqs:
            in_prompts.add(batch_tuple_keys(p_seqs, scheme)[0])
        drop = in_prompts.contains(keys)
        n_excluded = int(drop.sum())
        keys = keys[~drop]
    acc.add_keys(keys, n_texts=len(seqs), n_tokens=int(sum(s.size for s in seqs)))
    result = acc.result(reference=reference, min_scored=min_scored, effect=effect)
    return AnswersResult(aggregate=result, n_answers=n_answers,
                         n_empty=n_answers - len(answers), n_prompt_excluded=n_excluded,
                         reference_log10_pvalue=ref_log10)


def reference_log10_pvalue(reference: TupleSet, scheme: Scheme) -> float:
    """log10 p-value of the reference's distinct tuples tested for ``scheme``'s key: far
    below 0 means the reference was written with the key (and cannot filter exactly)."""
    keys = reference.keys()
    if keys.size == 0:
        return 0.0
    return float(run_test(scheme.test, scheme.key_scores(keys), scheme.test_params).log10_pvalue)


def reference_from_texts(texts: Iterable[str], spec: WatermarkSpec | Detector, *,
                         tokenizer: str | Path | None = None) -> TupleSet:
    """The distinct tuples of reference texts (the supervised filter; generated without the
    watermark, see :func:`read_reference`)."""
    detector = as_detector(spec, tokenizer)
    ref = TupleSet.for_scheme(detector.scheme)
    batch: list[str] = []
    for t in texts:
        if t.strip():
            batch.append(t)
        if len(batch) >= 4096:
            ref.add(batch_tuple_keys(_encode_all(detector, batch), detector.scheme)[0])
            batch = []
    if batch:
        ref.add(batch_tuple_keys(_encode_all(detector, batch), detector.scheme)[0])
    return ref


def read_reference(path: str | Path, spec: WatermarkSpec | Detector, *,
                   field: str = "text", tokenizer: str | Path | None = None) -> TupleSet:
    """The tuples of a reference corpus — the answers a suspect could have learned from,
    generated *without* the watermark (a marked corpus biases the test; see
    :func:`score_answers`): JSON Lines whose ``field`` holds a text (as ``distillmark generate
    --json`` writes), or any other file read as one text.

    Errors name the file and line.
    """
    p = Path(path)
    raw = read_input(p, "reference")
    texts: list[str] = []
    if p.suffix == ".jsonl":
        for no, line_b in enumerate(raw.splitlines(), 1):
            if not line_b.strip():
                continue
            rec = json_line(p, no, line_b)
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise InputError(f"{p}:{no}: record has no {field!r} string field")
            texts.append(rec[field])
    else:
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: not valid UTF-8 (byte {exc.start})") from None
    ref = reference_from_texts(texts, spec, tokenizer=tokenizer)
    if len(ref) == 0:
        raise InputError(f"{p}: the reference corpus holds no scorable text")
    return ref
