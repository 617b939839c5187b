"""A key's realised false-positive rate on human-written text: how often its test flags texts
that were written without it, at each level, with exact confidence bounds.

An operator holds one key and scans one corpus. Each text's p-value is exact over keys, but
for one key and one corpus the share of texts under ``alpha`` depends on how the key coloured
the tuples that the corpus's texts share (docs/statistics.md, "One key, one corpus").
:func:`calibrate` measures it: the corpus's texts (known to be written without the key) are
tested as ``detect`` tests them, through the one test path, with the tuples shared by many of
them left out (:mod:`.shared`) unless told otherwise, and the share under each level is set
against its Clopper-Pearson interval. A level is *exceeded* when the interval's lower end lies
above it: the key flags clean text of this kind more often than its level says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import Scheme, scheme_for
from distillmark.watermark.tokenizer import tokenizer_for

from .decision import DEFAULT_MIN_SCORED, check_min_scored
from .detect import DetectionResult, detect_ids_batch
from .shared import DEFAULT_MAX_SHARE, DEFAULT_MIN_TEXTS, SharedTuples, shared_tuples
from .stats import clopper_pearson
from .textfiles import read_input

__all__ = ["DEFAULT_CHUNK_CHARS", "DEFAULT_LEVELS", "CalibrationResult", "LevelRate",
           "calibrate", "calibrate_ids", "corpus_texts", "level_rates", "split_text"]

#: The levels whose realised rate is measured.
DEFAULT_LEVELS = (1e-2, 1e-3, 1e-4, 1e-5)
#: Corpus files are cut into line-aligned texts of about this many characters.
DEFAULT_CHUNK_CHARS = 1200
#: Pieces with fewer non-blank characters than this are not texts of their own.
MIN_TEXT_CHARS = 300


def split_text(text: str, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[str]:
    """``text`` cut after newlines into pieces of about ``chunk_chars`` characters; pieces
    with fewer than :data:`MIN_TEXT_CHARS` non-blank characters are dropped."""
    out, start, n = [], 0, len(text)
    while start < n:
        end = min(n, start + chunk_chars)
        if end < n:
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        piece = text[start:end]
        if len("".join(piece.split())) >= MIN_TEXT_CHARS:
            out.append(piece)
        start = end
    return out


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    if not path.exists():
        raise InputError(f"{path}: no such corpus file or directory")
    return [path]


def corpus_texts(paths: Iterable[str | Path], *, chunk_chars: int = DEFAULT_CHUNK_CHARS,
                 max_texts: int | None = None) -> list[str]:
    """The distinct texts of a corpus: every file named (a directory: every file under it, in
    path order; those not UTF-8 text are skipped there, refused when named), cut by
    :func:`split_text`; at most ``max_texts``, the first ones."""
    if chunk_chars < 2 * MIN_TEXT_CHARS:
        raise ParameterError(f"`chunk_chars` must be >= {2 * MIN_TEXT_CHARS}, got {chunk_chars}")
    seen: set[str] = set()
    texts: list[str] = []
    for given in paths:
        root = Path(given)
        named = not root.is_dir()
        for f in _files(root):
            data = read_input(f, "corpus")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if named:
                    raise InputError(f"{f}: not valid UTF-8 (byte {exc.start})") from None
                continue
            if "\x00" in text:
                if named:
                    raise InputError(f"{f}: a binary file, not text")
                continue
            for piece in split_text(text, chunk_chars):
                if piece not in seen:
                    seen.add(piece)
                    texts.append(piece)
                    if max_texts is not None and len(texts) >= max_texts:
                        return texts
    return texts


@dataclass(frozen=True)
class LevelRate:
    """The realised rate at one level: ``n_below`` of ``n_tests`` texts had ``pvalue <
    alpha``; ``lower``, ``upper``: its Clopper-Pearson interval."""

    alpha: float
    n_tests: int
    n_below: int
    rate: float
    lower: float
    upper: float

    def exceeded(self) -> bool:
        """Whether the rate is above ``alpha`` beyond doubt: the interval lies above it."""
        return self.lower > self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "n_tests": self.n_tests, "n_below": self.n_below,
                "rate": self.rate, "lower": self.lower, "upper": self.upper,
                "exceeded": self.exceeded()}


def level_rates(pvalues: np.ndarray, levels: Sequence[float], *, confidence: float = 0.95,
                n_comparisons: int = 1) -> list[LevelRate]:
    """:class:`LevelRate` of ``pvalues (n,)`` at each level; the intervals are simultaneous at
    ``confidence`` over the levels and ``n_comparisons`` (e.g. keys) by Bonferroni."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size < 1:
        raise InputError("no text had enough scored tuples to be tested")
    each = 1.0 - (1.0 - confidence) / (len(levels) * max(1, n_comparisons))
    out = []
    for a in levels:
        if not 0.0 < a < 1.0:
            raise ParameterError(f"levels must be in (0, 1), got {a}")
        k = int(np.count_nonzero(p < a))
        lo, hi = clopper_pearson(k, p.size, each)
        out.append(LevelRate(alpha=float(a), n_tests=int(p.size), n_below=k, rate=k / p.size,
                             lower=lo, upper=hi))
    return out


@dataclass(frozen=True)
class CalibrationResult:
    """A key's realised false-positive rates on a corpus of human text.

    Attributes:
        key_id, scheme: the key tested (public id only).
        n_texts: texts in the corpus; ``n_tests``: those with at least ``min_scored`` scored
            tuples, whose p-values are counted.
        mean_scored: mean scored tuples per tested text.
        confidence: simultaneous confidence of the intervals over the levels.
        shared: the left-out tuples (``max_share``, ``min_texts``, ``threshold``, ``n_texts``,
            ``n_left_out``), or None when every tuple was scored.
        levels: one :class:`LevelRate` per level.
    """

    key_id: str
    scheme: str
    n_texts: int
    n_tests: int
    mean_scored: float
    min_scored: int
    confidence: float
    shared: dict[str, Any] | None
    levels: tuple[LevelRate, ...]

    def exceeded(self) -> bool:
        """Whether some level's realised rate lies above it beyond doubt."""
        return any(r.exceeded() for r in self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "scheme": self.scheme, "n_texts": self.n_texts,
                "n_tests": self.n_tests, "mean_scored": self.mean_scored,
                "min_scored": self.min_scored, "confidence": self.confidence,
                "shared": self.shared, "exceeded": self.exceeded(),
                "levels": [r.to_dict() for r in self.levels]}


def tested_pvalues(results: Sequence[DetectionResult], min_scored: int
                   ) -> tuple[np.ndarray, float]:
    """The p-values of the results with at least ``min_scored`` scored tuples, and their mean
    scored tuples."""
    kept = [r for r in results if r.n_scored >= min_scored]
    mean = float(np.mean([r.n_scored for r in kept])) if kept else 0.0
    return np.array([r.pvalue for r in kept], dtype=np.float64), mean


def calibrate_ids(seqs: Sequence[np.ndarray], scheme: Scheme, *,
                  levels: Sequence[float] = DEFAULT_LEVELS, confidence: float = 0.95,
                  min_scored: int = DEFAULT_MIN_SCORED, shared: SharedTuples | None = None
                  ) -> CalibrationResult:
    """:class:`CalibrationResult` of ``scheme``'s key on token sequences ``(n_j,) int``
    written without it; ``shared``: the tuples left out (:func:`~.shared.shared_tuples` of
    the same sequences), None to score every tuple."""
    check_min_scored(min_scored)
    results = detect_ids_batch(seqs, scheme, min_scored=min_scored, shared=shared)
    pvalues, mean = tested_pvalues(results, min_scored)
    return CalibrationResult(key_id=scheme.key_id, scheme=scheme.name, n_texts=len(seqs),
                             n_tests=int(pvalues.size), mean_scored=mean,
                             min_scored=min_scored, confidence=confidence,
                             shared=None if shared is None else shared.to_dict(),
                             levels=tuple(level_rates(pvalues, levels, confidence=confidence)))


def calibrate(spec: WatermarkSpec, texts: Sequence[str], *,
              levels: Sequence[float] = DEFAULT_LEVELS, confidence: float = 0.95,
              min_scored: int = DEFAULT_MIN_SCORED, leave_out_shared: bool = True,
              max_share: float | None = DEFAULT_MAX_SHARE, min_texts: int = DEFAULT_MIN_TEXTS,
              tokenizer: str | Path | None = None) -> CalibrationResult:
    """Test ``texts`` (written without ``spec``'s key) as ``detect`` does, and measure the
    share flagged at each level; ``leave_out_shared``: leave out the tuples found in at least
    ``min_texts`` texts (with ``max_share``: ``max(min_texts, max_share * len(texts))``;
    :mod:`.shared`), as a corpus scan should."""
    if not texts:
        raise InputError("the corpus holds no text long enough to test")
    tok = tokenizer_for(spec.tokenizer, tokenizer)
    enc = tok.encode_batch_fast(list(texts), add_special_tokens=False)
    seqs = [np.asarray(e.ids, dtype=np.int64) for e in enc]
    scheme = scheme_for(spec)
    shared = (shared_tuples(seqs, scheme.context_width, max_share=max_share,
                            min_texts=min_texts) if leave_out_shared else None)
    return calibrate_ids(seqs, scheme, levels=levels, confidence=confidence,
                         min_scored=min_scored, shared=shared)
