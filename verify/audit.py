"""The open-model audit: does a model whose weights are at hand favour the watermark's tokens?

A student trained on watermarked text learns the teacher's bias: after a context whose window
selects green list ``r``, it gives the tokens of ``r`` more probability than they would get
otherwise. The audit reads the suspect model's next-token distributions over many contexts
(teacher forcing over text that was written without the key, or over text the model generates
itself) and tests, against the key, whether the green cells get more of that probability than
chance allows.

The null and why the tests are exact (or provably conservative)
---------------------------------------------------------------
H0: the model (and the contexts) do not depend on the key. The scheme scores a candidate token
``t`` after a context through one cell ``(row(window), t)`` of its keyed table, and every cell
is an independent Bernoulli(``gamma``) draw (:mod:`distillmark.watermark.greenlist`). Under H0
the model's readings are fixed numbers independent of the table, so any statistic of the form
``sum over distinct cells of w_c * green_c`` with weights computed from the readings alone has
the law of a weighted sum of independent Bernoulli(``gamma``) variables. Two contexts whose
windows select the same row share its green list: their contributions to a cell are *added*
into one weight, never counted as two draws, which is what keeps the test exact.

Two tests (``mode``):

``"distribution"`` (default): statistic ``S = sum_c w_c green_c`` over the cells of the
    ``top_k`` most likely tokens of each distinct context; its p-value is the Chernoff–Cramér
    bound of :func:`~distillmark.verify.stats.weighted_bernoulli_logsf_bound`, an upper bound of
    the exact tail (valid, slightly conservative: about one decade at p = 1e-10). With
    ``weighting="window"`` or ``"context"``, ``w_c`` is the model's probability of token ``t``
    summed over the distinct contexts (or windows) that score ``t`` in row ``r``. With
    ``weighting="coverage"`` (the default for keys with ``h >= 1``) a cell weighs ``1 - prod (1 - p)`` over the distinct contexts that
    score it: the chance that sampling one token at each context draws it at least once. The
    statistic is then the expected number of distinct green cells in one sampled pass, given
    the readings: the black-box test's statistic (:mod:`~distillmark.verify.probe` counts
    distinct green tuples in sampled answers) with the sampling noise averaged out. It scores
    a rarely chosen continuation almost as much as a common one, as the black-box test does,
    where probability weights let the few continuations a model is sure of dominate; a mark
    learned from a small share of the training data lives in the rare ones.
``"reading"``: the "reading mode" of Sander et al. (2024): the model's ``reading_k`` most likely
    tokens at each distinct context (its argmax for 1); each distinct cell counts once; the
    number of green ones is exactly Binomial(``n_scored``, ``gamma``) under H0.

Deduplication: contexts are deduplicated on their whole prefix (a repeated prefix is one
reading of the model, counted once); cells are deduplicated by construction (weights add up).
The contexts themselves must not carry the key: text watermarked with the key would let any
model copy green tokens from its context (:func:`audit_texts` refuses such text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError, SpecError
from distillmark.watermark.greenlist import GreenList
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import scheme_for

from .decision import DEFAULT_MIN_SCORED, Decision
from .detect import detect_ids
from .stats import binomial_tail, weighted_bernoulli_logsf_bound

if TYPE_CHECKING:
    from distillmark.watermark.hf import LoadedModel

__all__ = ["AUDIT_MODES", "AuditResult", "ModelReadings", "audit_readings", "audit_specs",
           "generate_contexts", "load_suspect", "read_model", "text_contexts"]

AUDIT_MODES = ("distribution", "reading")
DEFAULT_MODE = "distribution"
WEIGHTINGS = ("window", "context", "coverage")
#: ``weighting="auto"``: coverage, or window for a key with a single green list (h = 0).
DEFAULT_WEIGHTING = "auto"
DEFAULT_TOP_K = 64
DEFAULT_CONTEXT_LEN = 256
#: Text whose own detection p-value falls below this is refused as audit contexts.
CONTAMINATION_ALPHA = 1e-3

_LN10 = math.log(10.0)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0xBF58476D1CE4E5B9)
_BASE_INV = np.uint64(pow(0xBF58476D1CE4E5B9, -1, 1 << 64))


# --------------------------------------------------------------------------------------------
# Readings of a model (key-independent: one pass serves every key)


@dataclass(frozen=True)
class ModelReadings:
    """The suspect model's next-token distributions over distinct contexts.

    Attributes:
        source: where the model came from (path), echoed into results.
        sequences: the token-id sequences read, each ``(n_i,) int64``.
        seq: for each distinct context, the sequence it belongs to: ``(m,) int64``.
        pos: its position: the context is ``sequences[seq][:pos + 1]``, ``(m,) int64``.
        top_ids: the ``k`` most likely next tokens after it, ``(m, k) int64``.
        top_probs: their probabilities, ``(m, k) float32``, most likely first.
        n_tokens: contexts read before deduplication.
    """

    source: str
    sequences: tuple[np.ndarray, ...]
    seq: np.ndarray
    pos: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    n_tokens: int
    #: Key-independent (window, token) tables, built once per (h, V, k, min_prob) and shared by
    #: every key tested on these readings (:func:`_pair_table`).
    _pairs: dict[tuple[int, int, int, float], _PairTable] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_contexts(self) -> int:
        return int(self.seq.size)

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[1])


def _prefix_hashes(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every prefix ``ids[:i + 1]``: ``(n,) int -> (n,) uint64``.

    The polynomial hash ``H_i = sum_{j <= i} v_j B^(i - j)`` mod 2**64 (``B`` odd, so invertible
    mod 2**64: ``H_i = B^i cumsum(v_j B^-j)``), vectorised. Two different prefixes collide with
    negligible probability, and a collision would only merge two readings of the model (the
    weights stay key-independent, the test valid).
    """
    n = ids.size
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        v = (ids.astype(np.uint64) + np.uint64(1)) * _MIX
        pw = np.cumprod(np.full(n, _BASE, dtype=np.uint64), dtype=np.uint64)
        inv = np.cumprod(np.full(n, _BASE_INV, dtype=np.uint64), dtype=np.uint64)
        return pw * np.cumsum(v * inv, dtype=np.uint64)


def read_model(lm: LoadedModel, sequences: Sequence[np.ndarray], *, top_k: int = DEFAULT_TOP_K,
               batch_size: int = 8, progress: Any = None) -> ModelReadings:
    """Teacher-force ``sequences`` through the model and keep, at every distinct prefix, the
    ``top_k`` most likely next tokens and their probabilities.

    Args:
        lm: a loaded causal LM (:func:`load_suspect`).
        sequences: token ids of the spec's tokenizer, each ``(n_i,) int`` with ``n_i >= 1``.
        top_k: tokens kept per context (the rest of the distribution is left out of the test;
            a valid choice, since which tokens are kept does not depend on the key).
        batch_size: sequences per forward pass.
        progress: optional callable ``progress(done, total)``.
    """
    import torch

    if top_k < 1:
        raise ParameterError(f"`top_k` must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ParameterError(f"`batch_size` must be >= 1, got {batch_size}")
    seqs = tuple(np.asarray(s, dtype=np.int64) for s in sequences if len(s) > 0)
    if not seqs:
        raise InputError("no contexts to read (the text is empty)")
    model = lm.model
    width = int(model.get_output_embeddings().weight.shape[0])
    k = min(top_k, width)
    # Distinct prefixes, first occurrence kept, in sequence order.
    seen: set[int] = set()
    keep_seq, keep_pos = [], []
    for j, s in enumerate(seqs):
        for i, hsh in enumerate(_prefix_hashes(s).tolist()):
            if hsh not in seen:
                seen.add(hsh)
                keep_seq.append(j)
                keep_pos.append(i)
    seq_a = np.asarray(keep_seq, dtype=np.int64)
    pos_a = np.asarray(keep_pos, dtype=np.int64)
    wanted: dict[int, np.ndarray] = {}
    for j in np.unique(seq_a).tolist():
        wanted[j] = pos_a[seq_a == j]
    top_ids = np.zeros((seq_a.size, k), dtype=np.int64)
    top_probs = np.zeros((seq_a.size, k), dtype=np.float32)
    # Row of each (seq, pos) in the output arrays.
    row_of = {(int(a), int(b)): r for r, (a, b) in enumerate(zip(seq_a, pos_a))}
    order = sorted(wanted, key=lambda j: seqs[j].size)  # similar lengths batch together
    device = next(model.parameters()).device
    done = 0
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            L = max(seqs[j].size for j in chunk)
            ids = torch.zeros((len(chunk), L), dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for r, j in enumerate(chunk):  # right padding: positions keep their indices
                ids[r, :seqs[j].size] = torch.from_numpy(seqs[j])
                mask[r, :seqs[j].size] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, j in enumerate(chunk):
                p = torch.from_numpy(wanted[j]).to(device)
                lp = torch.log_softmax(logits[r, p].float(), dim=-1)
                vals, idx = torch.topk(lp, k, dim=-1)
                rows = [row_of[(j, int(q))] for q in wanted[j].tolist()]
                top_ids[rows] = idx.cpu().numpy()
                top_probs[rows] = vals.exp().cpu().numpy()
            done += len(chunk)
            if progress is not None:
                progress(done, len(order))
    return ModelReadings(source=lm.source, sequences=seqs, seq=seq_a, pos=pos_a,
                         top_ids=top_ids, top_probs=top_probs,
                         n_tokens=int(sum(s.size for s in seqs)))


# --------------------------------------------------------------------------------------------
# The test against one key


@dataclass(frozen=True)
class AuditResult(Decision):
    """Result of auditing one model against one key (or, with ``n_keys > 1``, a key ring).

    Attributes:
        statistic: ``distribution``: the probability mass on green cells, ``sum_c w_c
            green_c``; ``reading``: the number of green cells among the scored ones.
        pvalue: p-value under H0 (the model does not depend on the key); Bonferroni-corrected
            for ``n_keys``; may underflow to 0.0, then ``log10_pvalue`` still holds it.
        log10_pvalue: its log10, finite whatever its size.
        n_tokens: contexts read (positions of the sequences, before deduplication).
        n_contexts: distinct contexts (prefixes) read.
        n_windows: distinct scoring windows among them (the last ``h`` tokens).
        n_scored: distinct table cells the test scored.
        n_repeated: contexts left out because their prefix had been read already.
        total_weight: ``distribution``: the summed weight ``sum_c w_c``; ``reading``: ``n_scored``.
        score_mean: ``statistic / total_weight``: the green share of the mass (or cells).
        null_mean: its expectation under H0 (the exact gamma).
        z_score: ``(statistic - gamma W) / sqrt(gamma (1 - gamma) sum w^2)``, for reading only.
        test: ``chernoff-weighted-bernoulli`` (an upper bound of the exact tail) or ``binomial``.
        mode: ``distribution`` or ``reading``.
        weighting: ``coverage``, ``window`` or ``context`` (distribution test; see
            :func:`audit_readings`; ``"auto"`` is recorded as the weighting it chose).
        top_k: tokens per context the test used (``reading``: ``reading_k``).
        min_prob: reading test: least probability of a scored token (0: no threshold).
        min_scored: fewer scored cells than this is "insufficient evidence".
        dedup: always True (repeated prefixes read once, cells counted once).
        scheme: scheme name.
        key_id: public id of the key (the best key of a ring).
        model: the model audited.
        n_keys: keys tested (the Bonferroni multiplier).
        uncorrected_log10_pvalue: the best key's own log10 p-value.
    """

    statistic: float
    pvalue: float
    log10_pvalue: float
    n_tokens: int
    n_contexts: int
    n_windows: int
    n_scored: int
    n_repeated: int
    total_weight: float
    score_mean: float
    null_mean: float
    z_score: float
    test: str
    mode: str
    weighting: str
    top_k: int
    min_prob: float
    min_scored: int
    dedup: bool
    scheme: str
    key_id: str
    model: str
    n_keys: int
    uncorrected_log10_pvalue: float


def _check_scheme(scheme: Any) -> GreenList:
    if not isinstance(scheme, GreenList):
        raise SpecError(
            f"audit supports the greenlist scheme only; key {scheme.key_id} is "
            f"{scheme.name!r}: a sampling scheme (gumbel, tournament, dipmark) leaves the next-token "
            "distribution unbiased for every key, so there is no per-cell bias to read; test "
            "the model's sampled answers (detect or probe) instead")
    return scheme


def _windows(readings: ModelReadings, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The contexts with a full window (``(m,) bool``) and their windows, the last ``h``
    tokens of each: ``(m', h) int64``."""
    ok = readings.pos + 1 >= h
    seq, pos = readings.seq[ok], readings.pos[ok]
    win = np.zeros((seq.size, h), dtype=np.int64)
    for j in np.unique(seq).tolist():
        sel = seq == j
        s = readings.sequences[j]
        p = pos[sel]
        for c in range(h):
            win[sel, c] = s[p - h + 1 + c]
    return ok, win


def _cell_keys(readings: ModelReadings, scheme: GreenList, k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell key ``row * V + token`` of each context's ``k`` top tokens: ``(m', k) uint64``,
    the contexts kept (those with a full window: ``(m,) bool``), and the index of each kept
    context's window (its last ``h`` tokens) among the distinct windows: ``(m',) int64``."""
    h, V = scheme.context_width, scheme.vocab_size
    ok, win = _windows(readings, h)
    toks = readings.top_ids[ok, :k]
    if h:
        _, window_of = np.unique(win, axis=0, return_inverse=True)
        window_of = window_of.ravel()
    else:
        window_of = np.zeros(win.shape[0], dtype=np.int64)
    # Logit columns beyond the spec's vocabulary (padding of a model's head) are ids no text
    # holds: their cells are computed on a stand-in id and left out by the caller.
    t_clip = np.minimum(toks, V - 1)
    if scheme.params.seeding == "selfhash":
        full = np.concatenate([np.broadcast_to(win[:, None, :], (*toks.shape, h)),
                               t_clip[:, :, None]], axis=2)
        rows = scheme.rows(full)
    else:
        rows = np.broadcast_to(scheme.rows(win)[:, None], toks.shape)
    keys = rows.astype(np.uint64) * np.uint64(V) + t_clip.astype(np.uint64)
    return keys, ok, window_of


@dataclass(frozen=True)
class _PairTable:
    """The readings folded onto their distinct (window, token) pairs, for one ``h``, ``V``,
    ``k`` and ``min_prob``: everything the tests need that does not depend on the key.

    A cell is ``(row(window), token)`` (with selfhash seeding, ``row(window + token)``): a
    function of the pair, so entries sharing a pair always share a cell, whatever the key. The
    per-entry weights are additive over a cell (probabilities, or ``log(1 - p)`` for coverage),
    so they are summed per pair here, once, and per key only the far fewer pairs are mapped to
    cells and summed again where two windows select the same row.

    Attributes:
        windows: the distinct windows (last ``h`` tokens) of the contexts with a full window,
            ``(n_w, h) int64``.
        window: each pair's window, an index into ``windows``: ``(n_p,) int64``.
        token: each pair's token (``< V``): ``(n_p,) int64``.
        w_context: summed probability over the pair's contexts, ``(n_p,) float64``.
        w_window: the same with each context's probabilities divided by the number of contexts
            sharing its window.
        log_miss: summed ``log(1 - p)`` over the pair's contexts.
    """

    windows: np.ndarray
    window: np.ndarray
    token: np.ndarray
    w_context: np.ndarray
    w_window: np.ndarray
    log_miss: np.ndarray


def _pair_table(readings: ModelReadings, h: int, V: int, k: int, min_prob: float
                ) -> _PairTable:
    """:class:`_PairTable` of the entries among each context's ``k`` top tokens with an id
    below ``V`` and a probability of at least ``min_prob`` (cached on ``readings``)."""
    cache_key = (h, V, k, float(min_prob))
    hit = readings._pairs.get(cache_key)
    if hit is not None:
        return hit
    ok, win = _windows(readings, h)
    if h and win.shape[0]:
        windows, window_of = np.unique(win, axis=0, return_inverse=True)
        window_of = window_of.ravel()
    else:
        windows = np.zeros((1 if win.shape[0] else 0, h), dtype=np.int64)
        window_of = np.zeros(win.shape[0], dtype=np.int64)
    ids = readings.top_ids[ok, :k]
    probs = readings.top_probs[ok, :k].astype(np.float64)
    sel = ids < V
    if min_prob > 0:
        sel &= probs >= min_prob
    per_window = np.bincount(window_of, minlength=windows.shape[0])[window_of]
    pair = (np.broadcast_to(window_of[:, None], ids.shape)[sel] * V + ids[sel])
    uniq, inv = np.unique(pair, return_inverse=True)
    inv = inv.ravel()
    p = probs[sel]
    table = _PairTable(
        windows=windows, window=uniq // V, token=uniq % V,
        w_context=np.bincount(inv, weights=p, minlength=uniq.size),
        w_window=np.bincount(inv, weights=(probs / np.maximum(per_window, 1)[:, None])[sel],
                             minlength=uniq.size),
        log_miss=np.bincount(inv, weights=np.log1p(-np.minimum(p, 1.0 - 1e-12)),
                             minlength=uniq.size))
    readings._pairs[cache_key] = table
    return table


def _pair_cells(table: _PairTable, scheme: GreenList) -> tuple[np.ndarray, np.ndarray]:
    """The key's distinct cells (``row * V + token``, sorted) and each pair's cell index."""
    V = scheme.vocab_size
    if scheme.params.seeding == "selfhash":
        rows = scheme.rows(np.concatenate([table.windows[table.window],
                                           table.token[:, None]], axis=1))
    else:
        rows = scheme.rows(table.windows)[table.window]
    keys = rows.astype(np.uint64) * np.uint64(V) + table.token.astype(np.uint64)
    cells, inv = np.unique(keys, return_inverse=True)
    return cells, inv.ravel()


def audit_readings(readings: ModelReadings, scheme: Any, *, mode: str = DEFAULT_MODE,
                   top_k: int | None = None, reading_k: int = 1, min_prob: float = 0.0,
                   weighting: str = DEFAULT_WEIGHTING,
                   min_scored: int = DEFAULT_MIN_SCORED) -> AuditResult:
    """Test one key against a model's readings.

    Args:
        readings: :func:`read_model`'s output.
        scheme: the key's scheme (``registry.scheme_for(spec)``); green-list only.
        mode: ``"distribution"`` (probability mass, Chernoff bound) or ``"reading"`` (the top
            ``reading_k`` tokens of each context, exact binomial).
        top_k: tokens per context used by the distribution test (default: all that were read).
        reading_k: tokens per context scored by the reading test (1: the argmax).
        min_prob: reading test: of those, score only tokens the model gives at least this
            probability (the cells the model has clearly learned; 0: all ``reading_k``).
        weighting: distribution test: ``"window"`` gives every distinct window (the last
            ``h`` tokens of a context) a total weight of one, its contexts' distributions
            averaged; ``"context"`` gives every distinct context a weight of one (a window seen
            in many contexts then weighs that many times more); ``"coverage"`` weighs a cell by
            the chance that it is drawn at least once if the model sampled one token at each
            distinct context, ``1 - prod (1 - p)`` over the contexts that score it. All three
            are valid (weights in [0, 1], computed from the readings alone). ``"auto"``
            (default): coverage, except for a key with ``h = 0``, whose single green list
            makes every token the model finds plausible a cell that one pass almost surely
            draws: coverage weights would all be near one and carry nothing, so window.
        min_scored: fewer scored cells than this is "insufficient evidence".
    """
    scheme = _check_scheme(scheme)
    if mode not in AUDIT_MODES:
        raise ParameterError(f"`mode` must be one of {', '.join(AUDIT_MODES)}, got {mode!r}")
    if min_scored < 1:
        raise ParameterError(f"`min_scored` must be >= 1, got {min_scored}")
    k = readings.top_k if top_k is None else top_k
    if mode == "reading":
        k = reading_k
    if not 1 <= k <= readings.top_k:
        raise ParameterError(f"tokens per context must be in 1..{readings.top_k} (what was "
                             f"read), got {k}")
    V, g = scheme.vocab_size, scheme.gamma_effective
    if weighting == "auto":
        weighting = "coverage" if scheme.context_width else "window"
    if weighting not in WEIGHTINGS:
        raise ParameterError(f"`weighting` must be one of auto, {', '.join(WEIGHTINGS)}, "
                             f"got {weighting!r}")
    if mode == "reading" and not 0.0 <= min_prob < 1.0:
        raise ParameterError(f"`min_prob` must be in [0, 1), got {min_prob}")
    h = scheme.context_width
    table = _pair_table(readings, h, V, k, min_prob if mode == "reading" else 0.0)
    n_windows = int(table.windows.shape[0])
    common: dict[str, Any] = {
        "n_tokens": readings.n_tokens, "n_contexts": readings.n_contexts,
        "n_windows": n_windows, "n_repeated": readings.n_tokens - readings.n_contexts,
        "null_mean": g, "mode": mode, "weighting": weighting, "top_k": k,
        "min_prob": min_prob if mode == "reading" else 0.0, "min_scored": min_scored,
        "dedup": True, "scheme": scheme.name, "key_id": scheme.key_id,
        "model": readings.source, "n_keys": 1}
    cells, inv = _pair_cells(table, scheme)
    green = scheme.key_scores(cells)
    if mode == "reading":
        n, c = int(cells.size), int(np.count_nonzero(green))
        tail = binomial_tail(c, n, g)
        z = (c - g * n) / math.sqrt(n * g * (1 - g)) if n else 0.0
        return AuditResult(statistic=c, pvalue=tail.pvalue, log10_pvalue=tail.log10_pvalue,
                           n_scored=n, total_weight=float(n),
                           score_mean=c / n if n else 0.0, z_score=z, test="binomial",
                           uncorrected_log10_pvalue=tail.log10_pvalue, **common)
    if weighting == "coverage":
        # P(cell drawn at least once) = 1 - prod over its contexts of (1 - p): summed in logs.
        w = -np.expm1(np.bincount(inv, weights=table.log_miss, minlength=cells.size))
    else:
        w = np.bincount(inv, weights=table.w_window if weighting == "window"
                        else table.w_context, minlength=cells.size)
    s = float(w[green].sum())
    total = float(w.sum())
    log_p, _ = weighted_bernoulli_logsf_bound(w, s, p=g)
    sd = math.sqrt(g * (1 - g) * float(np.dot(w, w)))
    z = (s - g * total) / sd if sd > 0 else 0.0
    l10 = log_p / _LN10
    return AuditResult(statistic=s, pvalue=math.exp(log_p), log10_pvalue=l10,
                       n_scored=int(cells.size), total_weight=total,
                       score_mean=s / total if total else 0.0, z_score=z,
                       test="chernoff-weighted-bernoulli", uncorrected_log10_pvalue=l10,
                       **common)


def audit_specs(readings: ModelReadings, specs: Sequence[WatermarkSpec], *,
                mode: str = DEFAULT_MODE, top_k: int | None = None, reading_k: int = 1,
                min_prob: float = 0.0, weighting: str = DEFAULT_WEIGHTING,
                min_scored: int = DEFAULT_MIN_SCORED
                ) -> tuple[AuditResult, tuple[AuditResult, ...]]:
    """Test every key of a ring against one set of readings; the first result is the best key
    with its p-value Bonferroni-corrected for ``len(specs)`` keys, then every key's own."""
    if not specs:
        raise ParameterError("give at least one key")
    ids = [s.key_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ParameterError(f"key {next(k for k in ids if ids.count(k) > 1)} is given twice")
    per_key = tuple(audit_readings(readings, scheme_for(s), mode=mode, top_k=top_k,
                                   reading_k=reading_k, min_prob=min_prob,
                                   weighting=weighting, min_scored=min_scored)
                    for s in specs)
    best = min(per_key, key=lambda r: r.log10_pvalue)
    n = len(per_key)
    if n == 1:
        return best, per_key
    l10 = min(0.0, best.log10_pvalue + math.log10(n))
    corrected = replace(best, pvalue=min(1.0, best.pvalue * n), log10_pvalue=l10, n_keys=n)
    return corrected, per_key


# --------------------------------------------------------------------------------------------
# Models and contexts


def load_suspect(path: str, specs: Sequence[WatermarkSpec], *, device: str = "cpu"
                 ) -> LoadedModel:
    """Load the suspect model (HF directory or GGUF file) with transformers, and check that its
    tokenizer and output width match every key's."""
    if not path:
        raise InputError("give the suspect model: --model PATH (a Hugging Face model directory "
                         "or a GGUF file)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ParameterError(f"`device` must be cpu or cuda, got {device!r}")
    from distillmark.watermark import hf

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError("--device cuda: no CUDA device is available here")
    lm = hf.load_model(path, device=device)
    width = int(lm.model.get_output_embeddings().weight.shape[0])
    for spec in specs:
        lm.check_tokenizer(spec)
        if width < spec.vocab_size:
            raise InputError(f"model {path} has {width} output logits, fewer than key "
                             f"{spec.key_id}'s vocab_size {spec.vocab_size} (another tokenizer?)")
    return lm


def text_contexts(texts: Sequence[str], spec: WatermarkSpec, *,
                  context_len: int = DEFAULT_CONTEXT_LEN, source: str = "text"
                  ) -> list[np.ndarray]:
    """Token ids of ``texts`` with the spec's tokenizer, cut into sequences of at most
    ``context_len`` tokens.

    Refuses text that itself carries ``spec``'s watermark (detection p-value below
    ``CONTAMINATION_ALPHA``): a model reading watermarked context can copy its green tokens,
    which would break the audit's null."""
    from distillmark.watermark.tokenizer import tokenizer_for

    if context_len < 2:
        raise ParameterError(f"`context_len` must be >= 2, got {context_len}")
    tok = tokenizer_for(spec.tokenizer)
    out: list[np.ndarray] = []
    for t in texts:
        if not t.strip():
            continue
        ids = np.asarray(tok.encode(t, add_special_tokens=False).ids, dtype=np.int64)
        out.extend(ids[i:i + context_len] for i in range(0, ids.size, context_len))
    out = [s for s in out if s.size >= 1]
    if not out:
        raise InputError(f"{source}: the text is empty (nothing to read the model on)")
    scheme = scheme_for(spec)
    if isinstance(scheme, GreenList):
        res = detect_ids(np.concatenate(out), scheme)
        if res.pvalue < CONTAMINATION_ALPHA and res.is_sufficient():
            raise InputError(
                f"{source}: the text itself carries the watermark of key {spec.key_id} "
                f"(p = {res.pvalue:.2g}); the audit needs contexts written without the key "
                "(other text, or --generate)")
    return out


def generate_contexts(lm: LoadedModel, n: int, *, length: int = 128, seed: int = 0,
                      batch_size: int = 8) -> list[np.ndarray]:
    """``n`` sequences the model samples itself (temperature 1, no watermark) from its BOS
    token (or EOS where it has none), each ``(<= length + 1,) int64`` including the start."""
    import torch

    if n < 1 or length < 1:
        raise ParameterError(f"--generate and the context length must be >= 1, got {n}, {length}")
    tok, model = lm.tokenizer, lm.model
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise InputError(f"model {lm.source} has neither a BOS nor an EOS token to start "
                         "generating from; supply text with --text")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            ids = torch.full((b, 1), int(start), dtype=torch.long, device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=length, min_new_tokens=length,
                                 pad_token_id=tok.pad_token_id)
            out.extend(np.asarray(row, dtype=np.int64) for row in gen.cpu().tolist())
    return out
