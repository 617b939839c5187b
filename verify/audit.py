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
    the exact tail (valid, slightly conservative). With ``weighting="window"`` or
    ``"context"``, ``w_c`` is the model's probability of token ``t`` summed over the distinct
    contexts (or windows) that score ``t`` in row ``r``. With ``weighting="coverage"`` (the
    default for keys with ``h >= 1``) a cell weighs ``1 - prod (1 - p)`` over the distinct
    contexts that score it: the chance that sampling one token at each context draws it at
    least once. The statistic is then the expected number of distinct green cells in one
    sampled pass, given the readings: the black-box test's statistic
    (:mod:`~distillmark.verify.probe` counts distinct green tuples in sampled answers) with
    the sampling noise averaged out. It scores a rarely chosen continuation almost as much as
    a common one, as the black-box test does, where probability weights let the few
    continuations a model is sure of dominate; a mark learned from a small share of the
    training data lives in the rare ones.
``"reading"``: the "reading mode" of Sander et al. (2024): the model's ``reading_k`` most likely
    tokens at each distinct context (its argmax for 1); each distinct cell counts once; the
    number of green ones is exactly Binomial(``n_scored``, ``gamma``) under H0.

Deduplication: contexts are deduplicated on their whole prefix (a repeated prefix is one
reading of the model, counted once); cells are deduplicated by construction (weights add up).
The contexts themselves must not carry the key: text watermarked with the key would let any
model copy green tokens from its context (:func:`text_contexts` refuses such text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError, SpecError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import Scheme, scheme_for

from .cells import PairTable, TableScheme, context_windows, pair_cells, pair_table
from .decision import DEFAULT_MIN_SCORED, Decision
from .detect import detect_ids
from .nulls import run_test
from .stats import bonferroni, bonferroni_log10

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
    #: every key tested on these readings (:func:`~.cells.pair_table`).
    _pairs: dict[tuple[int, int, int, float], PairTable] = field(
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
    from distillmark.watermark import hf_readings

    if top_k < 1:
        raise ParameterError(f"`top_k` must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ParameterError(f"`batch_size` must be >= 1, got {batch_size}")
    seqs = tuple(np.asarray(s, dtype=np.int64) for s in sequences if len(s) > 0)
    if not seqs:
        raise InputError("no contexts to read (the text is empty)")
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
    top_ids, top_probs = hf_readings.top_k_after(
        lm, seqs, seq_a, pos_a, min(top_k, hf_readings.output_width(lm)),
        batch_size=batch_size, progress=progress)
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


def _auditable(scheme: Scheme) -> bool:
    """Whether the audit can read ``scheme``'s bias from a model: the scheme biases the logits
    (it does not sample the token itself) toward the cells of a bounded keyed table, each cell
    green with probability ``p`` (the binomial test)."""
    return not scheme.samples and scheme.test == "binomial" and scheme.n_cells is not None


def _check_scheme(scheme: Scheme) -> TableScheme:
    if not _auditable(scheme):
        raise SpecError(
            f"audit supports the greenlist scheme only; key {scheme.key_id} is "
            f"{scheme.name!r}: a sampling scheme (gumbel, tournament, dipmark) leaves the "
            "next-token distribution unbiased for every key, so there is no per-cell bias to "
            "read; test the model's sampled answers (detect or probe) instead")
    return cast(TableScheme, scheme)


def _cell_keys(readings: ModelReadings, scheme: TableScheme, k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell key ``row * V + token`` of each context's ``k`` top tokens: ``(m', k) uint64``,
    the contexts kept (those with a full window: ``(m,) bool``), and the index of each kept
    context's window (its last ``h`` tokens) among the distinct windows: ``(m',) int64``."""
    h, V = scheme.context_width, scheme.vocab_size
    ok, win = context_windows(readings, h)
    toks = readings.top_ids[ok, :k]
    if h:
        _, window_of = np.unique(win, axis=0, return_inverse=True)
        window_of = window_of.ravel()
    else:
        window_of = np.zeros(win.shape[0], dtype=np.int64)
    # Logit columns beyond the spec's vocabulary (padding of a model's head) are ids no text
    # holds: their cells are computed on a stand-in id and left out by the caller.
    t_clip = np.minimum(toks, V - 1)
    if scheme.window > h:  # selfhash: the scored token is part of the window
        full = np.concatenate([np.broadcast_to(win[:, None, :], (*toks.shape, h)),
                               t_clip[:, :, None]], axis=2)
        rows = scheme.rows(full)
    else:
        rows = np.broadcast_to(scheme.rows(win)[:, None], toks.shape)
    keys = rows.astype(np.uint64) * np.uint64(V) + t_clip.astype(np.uint64)
    return keys, ok, window_of


def audit_readings(readings: ModelReadings, scheme: Scheme, *, mode: str = DEFAULT_MODE,
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
    V, g = scheme.vocab_size, float(scheme.test_params["p"])
    if weighting == "auto":
        weighting = "coverage" if scheme.context_width else "window"
    if weighting not in WEIGHTINGS:
        raise ParameterError(f"`weighting` must be one of auto, {', '.join(WEIGHTINGS)}, "
                             f"got {weighting!r}")
    if mode == "reading" and not 0.0 <= min_prob < 1.0:
        raise ParameterError(f"`min_prob` must be in [0, 1), got {min_prob}")
    h = scheme.context_width
    cache_key = (h, V, k, min_prob if mode == "reading" else 0.0)
    table = readings._pairs.get(cache_key)
    if table is None:
        table = readings._pairs.setdefault(cache_key, pair_table(readings, *cache_key))
    n_windows = int(table.windows.shape[0])
    common: dict[str, Any] = {
        "n_tokens": readings.n_tokens, "n_contexts": readings.n_contexts,
        "n_windows": n_windows, "n_repeated": readings.n_tokens - readings.n_contexts,
        "null_mean": g, "mode": mode, "weighting": weighting, "top_k": k,
        "min_prob": min_prob if mode == "reading" else 0.0, "min_scored": min_scored,
        "dedup": True, "scheme": scheme.name, "key_id": scheme.key_id,
        "model": readings.source, "n_keys": 1}
    cells, inv = pair_cells(table, scheme)
    green = scheme.key_scores(cells)
    params: dict[str, Any] = {"p": g}
    if mode == "reading":  # each distinct cell counts once: exactly Binomial(n_scored, gamma)
        test, total = "binomial", float(cells.size)
    else:
        if weighting == "coverage":
            # P(cell drawn at least once) = 1 - prod over its contexts of (1 - p), in logs.
            w = -np.expm1(np.bincount(inv, weights=table.log_miss, minlength=cells.size))
        else:
            w = np.bincount(inv, weights=table.w_window if weighting == "window"
                            else table.w_context, minlength=cells.size)
        test, total = "chernoff-weighted-bernoulli", float(w.sum())
        params["cell_weights"] = w
    o = run_test(test, green, params)
    return AuditResult(statistic=o.statistic, pvalue=o.pvalue, log10_pvalue=o.log10_pvalue,
                       n_scored=int(cells.size), total_weight=total, score_mean=o.score_mean,
                       z_score=o.z_score, test=test, uncorrected_log10_pvalue=o.log10_pvalue,
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
    corrected = replace(best, pvalue=bonferroni(best.pvalue, n),
                        log10_pvalue=bonferroni_log10(best.log10_pvalue, n), n_keys=n)
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
    from distillmark.watermark import hf, hf_readings

    if device.startswith("cuda") and not hf_readings.cuda_available():
        raise ParameterError("--device cuda: no CUDA device is available here")
    lm = hf.load_model(path, device=device)
    width = hf_readings.output_width(lm)
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
    from distillmark.watermark.tokenizer import encoder_for

    if context_len < 2:
        raise ParameterError(f"`context_len` must be >= 2, got {context_len}")
    encoder = encoder_for(spec.tokenizer)
    out: list[np.ndarray] = []
    kept = [t for t in texts if t.strip()]
    for ids in encoder.encode_lists(kept):
        out.extend(ids[i:i + context_len] for i in range(0, ids.size, context_len))
    out = [s for s in out if s.size >= 1]
    if not out:
        raise InputError(f"{source}: the text is empty (nothing to read the model on)")
    scheme = scheme_for(spec)
    if _auditable(scheme):
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
    from distillmark.watermark import hf_readings

    if n < 1 or length < 1:
        raise ParameterError(f"--generate and the context length must be >= 1, got {n}, {length}")
    return hf_readings.sample_sequences(lm, n, length=length, seed=seed, batch_size=batch_size)
