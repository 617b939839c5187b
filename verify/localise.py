"""Localisation of watermarked spans inside long texts (``distillmark detect --windows``).

A text is tokenised with character offsets, its windows are scanned (:mod:`.windows`) and
every span found is reported in characters of the text: ``start`` inclusive, ``end``
exclusive, in Unicode code points (Python ``str`` indices), so ``text[start:end]`` is the
span. A span covers whole characters: a token that holds part of a character (a byte-level
token of an emoji) reaches over all of it, so two adjacent spans may share that one character.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from distillmark.watermark.errors import InputError
from distillmark.watermark.keys import WatermarkSpec

from .decision import DEFAULT_MIN_SCORED, WrappedDecision, check_alpha
from .detect import CHUNK_CHARS, DetectionResult, Detector, detect_ids, text_chunks
from .windows import (
    DEFAULT_LENGTHS,
    DEFAULT_STRIDE,
    SpanScan,
    TokenSpan,
    check_windows_scheme,
    scan_spans,
    token_flags,
)

__all__ = ["LocalisationResult", "Localiser", "SpanResult", "TokenPlaces", "localise_ids"]

#: How character offsets count: Python ``str`` indices.
OFFSET_UNIT = "code point"


@dataclass(frozen=True)
class SpanWindow:
    """The grid window whose test found a span: its place (characters and tokens), counts and
    own p-value, uncorrected."""

    start: int
    end: int
    token_start: int
    token_end: int
    scored: int
    statistic: int
    pvalue: float
    log10_pvalue: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SpanResult:
    """A marked span of a text.

    Attributes:
        start, end: characters ``[start, end)`` of the text (code points).
        token_start, token_end: its tokens ``[token_start, token_end)`` (prompt excluded).
        tokens: ``token_end - token_start``.
        scored: distinct tuples in the span; ``statistic``: the green ones among them.
        score_mean: ``statistic / scored``.
        pvalue, log10_pvalue: the p-value of ``window``'s test times the number of windows
            (Bonferroni): the evidence that marked text lies there. The span's boundaries are
            chosen from the data and carry no p-value of their own.
        window: the grid window that found the span.
    """

    start: int
    end: int
    token_start: int
    token_end: int
    tokens: int
    scored: int
    statistic: int
    score_mean: float
    pvalue: float
    log10_pvalue: float
    window: SpanWindow

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["window"] = self.window.to_dict()
        return d


@dataclass(frozen=True)
class LocalisationResult(WrappedDecision):
    """The test of a whole text (``detection``, as ``detect`` gives it) and the marked spans
    found in it at ``alpha``, best first.

    Its decision (``verdict``, ``is_watermarked``) is the whole text's; :meth:`found` says
    whether a span was found. ``n_windows`` windows were tested (the whole text among them)
    and each span's p-value is corrected for them.
    """

    nested_field = "detection"

    detection: DetectionResult
    spans: tuple[SpanResult, ...]
    n_windows: int
    window_lengths: tuple[int, ...]
    window_stride: float
    span_alpha: float

    def found(self) -> bool:
        """Whether at least one span is significant at ``span_alpha`` (corrected)."""
        return bool(self.spans)

    def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
        d = self.detection.to_dict(alpha)
        d.update(spans=[s.to_dict() for s in self.spans], n_windows=self.n_windows,
                 window_lengths=list(self.window_lengths), window_stride=self.window_stride,
                 span_alpha=self.span_alpha, span_correction="bonferroni",
                 offset_unit=OFFSET_UNIT)
        return d


class TokenPlaces:
    """Characters of the tokens of a text tokenised in pieces (``pieces``, starting at
    characters ``bases`` of the text, of ``counts`` tokens each). A piece's offsets are
    computed only when one of its tokens is asked about, by tokenising that piece again with
    offsets (the same tokens): the ids of a long text come from the tokenizer's faster path
    without offsets, and a span needs the offsets of two tokens."""

    def __init__(self, tokenizer: Any, pieces: Sequence[str], bases: Sequence[int],
                 counts: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._pieces = list(pieces)
        self._bases = list(bases)
        self._first = np.cumsum([0, *counts]).tolist()
        self._cache: dict[int, np.ndarray] = {}

    def _piece(self, c: int) -> np.ndarray:
        if c not in self._cache:
            e = self._tokenizer.encode(self._pieces[c], add_special_tokens=False)
            off = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) + self._bases[c]
            if off.shape[0] != self._first[c + 1] - self._first[c]:  # pragma: no cover
                raise RuntimeError("the tokenizer gave different tokens for the same piece")
            self._cache[c] = off
        return self._cache[c]

    def _of(self, i: int) -> tuple[int, int]:
        c = bisect.bisect_right(self._first, i) - 1
        a, b = self._piece(c)[i - self._first[c]].tolist()
        return int(a), int(b)

    def span(self, token_start: int, token_end: int) -> tuple[int, int]:
        """Characters ``[start, end)`` of tokens ``[token_start, token_end)``."""
        return self._of(token_start)[0], self._of(token_end - 1)[1]

    def array(self) -> np.ndarray:
        """Every token's ``[start, end)``: ``(n, 2) int64``."""
        parts = [self._piece(c) for c in range(len(self._pieces))]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def _chars(span: TokenSpan, places: TokenPlaces) -> SpanResult:
    start, end = places.span(span.token_start, span.token_end)
    w_start, w_end = places.span(span.window_start, span.window_end)
    window = SpanWindow(start=w_start, end=w_end, token_start=span.window_start,
                        token_end=span.window_end, scored=span.window_scored,
                        statistic=span.window_statistic, pvalue=span.window_pvalue,
                        log10_pvalue=span.window_log10_pvalue)
    return SpanResult(start=start, end=end, token_start=span.token_start,
                      token_end=span.token_end, tokens=span.token_end - span.token_start,
                      scored=span.scored, statistic=span.statistic,
                      score_mean=span.statistic / span.scored if span.scored else 0.0,
                      pvalue=span.pvalue, log10_pvalue=span.log10_pvalue, window=window)


def localise_ids(ids: np.ndarray, scheme: Any, *, alpha: float, prompt_len: int = 0,
                 lengths: Sequence[int] = DEFAULT_LENGTHS, stride: float = DEFAULT_STRIDE,
                 min_scored: int = DEFAULT_MIN_SCORED) -> SpanScan:
    """The marked spans of token ids ``(n,) int`` (the first ``prompt_len`` the prompt), in
    token positions of the text after the prompt: :func:`~.windows.scan_spans` of their
    :func:`~.windows.token_flags`."""
    check_alpha(alpha)
    flags = token_flags(np.asarray(ids), scheme, prompt_len=prompt_len)
    return scan_spans(flags, alpha=alpha, lengths=lengths, stride=stride,
                      min_scored=min_scored)


class Localiser(Detector):
    """Finds the marked spans of texts, for one spec: a :class:`~.detect.Detector` whose
    :meth:`localise` also scans windows (lengths ``lengths``, stride ``stride`` of the length)
    and reports the spans significant at ``alpha`` after correction.

    Refuses (``ParameterError``) a spec whose scheme has no binomial test.
    """

    def __init__(self, spec: WatermarkSpec, *, alpha: float,
                 tokenizer: str | Path | None = None, min_scored: int = DEFAULT_MIN_SCORED,
                 lengths: Sequence[int] = DEFAULT_LENGTHS,
                 stride: float = DEFAULT_STRIDE) -> None:
        super().__init__(spec, tokenizer=tokenizer, min_scored=min_scored)
        check_windows_scheme(self.scheme)
        check_alpha(alpha)
        self.alpha = alpha
        self.lengths = tuple(lengths)
        self.stride = stride

    def encode_places(self, text: str) -> tuple[np.ndarray, TokenPlaces]:
        """Token ids ``(n,) int64`` of ``text`` (those of :meth:`encode`: line-aligned pieces
        for a long text) and their characters (:class:`TokenPlaces`)."""
        if not isinstance(text, str):
            raise InputError(f"`text` must be a str, got {type(text).__name__}")
        if not text.strip():
            raise InputError("text is empty" if not text else "text is only whitespace")
        pieces = [text] if len(text) <= CHUNK_CHARS else text_chunks(text)
        encoded = self.tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
        bases = np.cumsum([0] + [len(piece) for piece in pieces[:-1]]).tolist()
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encoded]
        places = TokenPlaces(self.tokenizer, pieces, bases, [a.size for a in ids])
        return np.concatenate(ids), places

    def encode_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``(n,) int64`` of ``text`` (those of :meth:`encode`) and each token's
        characters ``(n, 2) int64``: ``[start, end)`` in code points of ``text``."""
        ids, places = self.encode_places(text)
        return ids, places.array()

    def localise(self, text: str, *, prompt: str | None = None) -> LocalisationResult:
        """The whole text's test and its marked spans. With ``prompt``, the text follows it:
        the prompt's last tokens are context for the first scored ones, never scored."""
        ids, places = self.encode_places(text)
        prompt_len = 0
        if prompt:
            p_ids = np.asarray(self.tokenizer.encode(prompt, add_special_tokens=False).ids,
                               dtype=np.int64)
            ids, prompt_len = np.concatenate([p_ids, ids]), int(p_ids.size)
        detection = detect_ids(ids, self.scheme, prompt_len=prompt_len, dedup=self.dedup,
                               min_scored=self.min_scored)
        scan = localise_ids(ids, self.scheme, alpha=self.alpha, prompt_len=prompt_len,
                            lengths=self.lengths, stride=self.stride,
                            min_scored=self.min_scored)
        return LocalisationResult(
            detection=detection, spans=tuple(_chars(s, places) for s in scan.spans),
            n_windows=scan.n_windows, window_lengths=scan.lengths, window_stride=scan.stride,
            span_alpha=self.alpha)
