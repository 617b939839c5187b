"""Tournament sampling (SynthID-Text): known answers, the documented construction, the exact
nulls, calibration on human text, unbiasedness over keys, repeated-context masking, power, and
the transformers and llama.cpp adapters."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from toy_model import toy_sequence
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distillmark.verify import binomial_tail, detect_ids, unique_keys
from distillmark.verify.nulls import run_test, tournament_mean_test, tournament_weighted_test
from distillmark.verify.stats import weighted_binomial_logsf
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    ParameterError,
    SpecError,
    Tournament,
    TournamentParams,
    hf,
    load_tokenizer,
    new_spec,
    prf,
    scheme_for,
)
from distillmark.watermark.llamacpp import LlamaCppWatermark
from distillmark.watermark.tokenizer import builtin_tokenizer_path

SECRET = bytes(range(32))
V = 49152  # the builtin SmolLM2 tokenizer's vocabulary
KAT_IDS = [0, 1, 2, 100, 49151, 7, 7, 7, 12345, 100, 49151]

# Known answers, recorded from the implementation for SECRET and V = 49152 (parameters pinned:
# a change of the defaults must not silently change the vectors). ``cells``: the stream element
# of each tuple key (its low 32 bits when depth <= 32); ``ones``: g-values equal to 1 per key.
KAT: dict[str, dict[str, Any]] = {
    "h4": {
        "params": {"depth": 30, "context_width": 4, "n_lists": 256, "combine": "hash"},
        "keys": [9781247, 11206663, 7716871, 11993095, 5124153, 98404, 294911],
        "cells": [0x9CF36DA1, 0x40C09322, 0xEE1C0FA, 0xA56875A0, 0x36231F3C, 0x898F858A,
                  0xBE87AB0A],
        "ones": [17, 8, 15, 13, 16, 13, 16],
    },
    "h1-min": {
        "params": {"depth": 30, "context_width": 1, "combine": "min", "n_lists": 1024},
        "keys": [8945665, 39714818, 10715236, 13713407, 31113223, 23248903, 23248903,
                 23261241, 37994596, 13713407],
        "cells": [0xF6F3869E, 0xF0CDD365, 0xCE41410D, 0xFA977883, 0xFB0AC8D, 0xA9FEAB0F,
                  0xA9FEAB0F, 0xC6E7315C, 0xDD6B1095, 0xFA977883],
        "ones": [18, 16, 10, 16, 15, 19, 19, 15, 14, 16],
    },
    "h2-depth40": {
        "params": {"depth": 40, "context_width": 2, "combine": "hash", "n_lists": 64},
        "keys": [2211842, 2703460, 1228799, 1523719, 786439, 2310151, 2322489, 2408548,
                 491519],
        "cells": [0x67E03F5453948277, 0x9E91D1D3B7E6B2DC, 0xB1649762FB64F587,
                  0x81D67EF18A0A2839, 0xC099CB264B533D3, 0x5BAA8E2757B1AB39,
                  0xB419511850F6CF00, 0x366F42BBDD36E04F, 0x380987F11F51B31],
        "ones": [18, 25, 23, 16, 21, 22, 16, 24, 22],
    },
    "h0": {
        "params": {"depth": 8, "context_width": 0},
        "keys": KAT_IDS,
        "cells": [0x562AAC99, 0xF5A9130E, 0x7AF81837, 0xE0F7CCE9, 0x193E2BD9, 0xF975F41E,
                  0xF975F41E, 0xF975F41E, 0x1037EBB2, 0xE0F7CCE9, 0x193E2BD9],
        "ones": [4, 3, 5, 5, 5, 4, 4, 4, 4, 5, 5],
    },
}
# Watermarked distribution for SECRET, V = 16, depth 6, h = 2, 4 lists, logits linspace(-2, 2),
# context [3, 9, 5, 11] of which 2 are prompt.
KAT_PROCESS = [0.000163945619005, 0.000845963577018, 0.0223367456158, 0.00274907940085,
               0.014392918835, 0.000569286602799, 0.000454969523707, 0.0152968482252,
               0.0031099668572, 0.00165416341335, 0.00104644766247, 0.0574848906425,
               0.00657056441131, 0.0549020742215, 0.547976886324, 0.270445249068]


def make(secret: bytes = SECRET, vocab_size: int = V, **params: Any) -> Tournament:
    return Tournament(secret, TournamentParams(**params), vocab_size)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


# -- known answers and the documented construction --------------------------------------------

@pytest.mark.parametrize("case", sorted(KAT))
def test_known_answer_keys_cells_and_g_values(case: str) -> None:
    kat = KAT[case]
    t = make(**kat["params"])
    keys = t.tuple_keys(np.array(KAT_IDS))
    assert keys.tolist() == kat["keys"]
    assert t.cells(keys).tolist() == kat["cells"]
    g = t.key_scores(keys)
    assert g.shape == (len(kat["keys"]), t.depth) and g.dtype == np.uint8
    assert g.sum(axis=1).tolist() == kat["ones"]
    np.testing.assert_array_equal(t.token_g_values(np.array(KAT_IDS)), g)


def test_known_answer_process() -> None:
    t = make(vocab_size=16, depth=6, context_width=2, n_lists=4)
    out = t.process(np.linspace(-2, 2, 16)[None, :], np.array([[3, 9, 5, 11]]), prompt_width=2)
    np.testing.assert_allclose(np.exp(out[0]), KAT_PROCESS, rtol=1e-9)


@pytest.mark.parametrize("params", [
    {"depth": 30, "context_width": 3, "n_lists": 512},
    {"depth": 64, "context_width": 1, "n_lists": 128, "combine": "min"},
])
def test_matches_documented_construction(params: dict[str, Any]) -> None:
    """cell = element row * V + t of the uint64 stream of "tournament/table", g_l = its bit l;
    rows are the ContextRows of "tournament/token-values"; row_cells == random access."""
    from distillmark.watermark.context import ContextRows

    t = make(**params)
    h, m = params["context_width"], params["depth"]
    table_key = prf.derive_subkey(SECRET, "tournament/table")
    ctx = ContextRows(prf.derive_subkey(SECRET, "tournament/token-values"), V,
                      context_width=h, selfhash=False, combine=params.get("combine", "hash"),
                      n_rows=params["n_lists"])
    ids = np.random.default_rng(3).integers(0, V, size=80)
    np.testing.assert_array_equal(t.tuple_keys(ids), ctx.tuple_keys(ids))
    keys = t.tuple_keys(ids)
    g = t.key_scores(keys)
    for j in (0, 17, keys.size - 1):
        row, tok = divmod(int(keys[j]), V)
        cell = int(prf.u64_stream(table_key, 1, start=row * V + tok)[0])
        assert g[j].tolist() == [(cell >> layer) & 1 for layer in range(m)]
        full = int(t.row_cells(row)[tok])
        assert full == cell & ((1 << (32 if m <= 32 else 64)) - 1)
    assert t.test == "tournament-weighted"
    assert t.test_params == {"weights": tuple(range(m, 0, -1))}


def _reference_update(p: np.ndarray, cells: np.ndarray, depth: int) -> np.ndarray:
    """The tournament written out layer by layer: ``p <- p (1 + g_l - sum g_l p)``."""
    q = p.astype(np.float64).copy()
    for layer in range(depth):
        g = ((cells.astype(np.uint64) >> np.uint64(layer)) & np.uint64(1)).astype(np.float64)
        q = q * (1.0 + g - float((g * q).sum()))
    return q


@pytest.mark.parametrize(("depth", "vocab", "scale"), [
    (30, V, 0.1), (30, V, 4.0), (64, V, 2.0), (5, V, 1.0), (30, 8, 1.0), (13, 300, 3.0),
])
def test_process_is_the_layer_by_layer_update(depth: int, vocab: int, scale: float) -> None:
    t = make(vocab_size=vocab, depth=depth, context_width=2, n_lists=64)
    rng = np.random.default_rng(depth + vocab)
    logits = rng.normal(size=vocab) * scale
    ctx = np.array([[17 % vocab, 5, 3 % vocab]])
    got = np.exp(t.process(logits[None, :], ctx, prompt_width=3)[0])
    row = int(t.rows(ctx[:, 1:])[0])
    want = _reference_update(np.exp(log_softmax(logits)), t.row_cells(row), depth)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-14)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_g_values_are_fair_independent_bits() -> None:
    t = make(depth=64, n_lists=64)
    g = t.g_values(t.row_cells(5)).astype(np.int64)  # (V, 64)
    n = g.shape[0]
    per_layer = g.sum(axis=0)
    bound = stats.binom.ppf(1 - 1e-6 / 64, n, 0.5)
    assert per_layer.max() <= bound and per_layer.min() >= n - bound
    # neighbouring layers and neighbouring tokens are uncorrelated
    for a, b in ((g[:, :-1], g[:, 1:]), (g[:-1], g[1:])):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(a.size)


# -- the exact nulls -----------------------------------------------------------------------------

def _brute_force_tail(n: int, weights: tuple[int, ...]) -> dict[int, Fraction]:
    """P(S >= s) for every s, by enumerating all 2**(n m) equally likely bit matrices."""
    m = len(weights)
    bits = (np.arange(2 ** (n * m))[:, None] >> np.arange(n * m)[None, :]) & 1
    s_all = bits.reshape(-1, n, m).sum(axis=1) @ np.array(weights)
    counts = np.bincount(s_all, minlength=n * sum(weights) + 1)
    total = 2 ** (n * m)
    tail = np.cumsum(counts[::-1])[::-1]
    return {s: Fraction(int(tail[s]), total) for s in range(counts.size)}


@pytest.mark.parametrize(("n", "weights"), [
    (1, (1,)), (2, (2, 1)), (3, (3, 2, 1)), (4, (4, 3, 2, 1)), (2, (5, 0, 2)), (3, (1, 1, 1)),
    (1, (7, 7, 3, 1)),
])
def test_weighted_null_matches_brute_force(n: int, weights: tuple[int, ...]) -> None:
    exact = _brute_force_tail(n, weights)
    top = n * sum(weights)
    for s in range(-2, top + 3):
        ge = exact.get(s, Fraction(1) if s <= 0 else Fraction(0))
        gt = exact.get(s + 1, Fraction(1) if s + 1 <= 0 else Fraction(0))
        got_ge, got_gt = weighted_binomial_logsf(s, n, weights)
        for got, want in ((got_ge, ge), (got_gt, gt)):
            if want == 0:
                assert got == -math.inf
            else:
                assert math.exp(got) == pytest.approx(float(want), rel=1e-10)


def test_weighted_test_statistic_and_pvalue_by_enumeration() -> None:
    weights = (3, 2, 1)
    exact = _brute_force_tail(3, weights)
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = rng.integers(0, 2, size=(3, 3)).astype(np.uint8)
        out = tournament_weighted_test(g, weights=weights)
        stat = int(sum(w * int(g[:, j].sum()) for j, w in enumerate(weights)))
        assert out.statistic == stat
        assert out.pvalue == pytest.approx(float(exact[stat]), rel=1e-10)
        assert out.log10_pvalue == pytest.approx(math.log10(float(exact[stat])), rel=1e-9)
        mean = tournament_mean_test(g)
        assert mean.statistic == int(g.sum())
        assert mean.pvalue == pytest.approx(binomial_tail(int(g.sum()), 9, 0.5).pvalue)
    assert run_test("tournament-weighted", g, {"weights": weights}) == out
    empty = tournament_weighted_test(np.zeros((0, 3), dtype=np.uint8), weights=weights)
    assert empty.pvalue == 1.0 and empty.statistic == 0


@pytest.mark.parametrize("s", [4200, 6000, 7500, 7999, 8000])
def test_weighted_null_deep_tail_equal_weights_is_binomial(s: int) -> None:
    # equal weights: S ~ Binomial(n m, 1/2), down to p = 1e-2408
    got, _ = weighted_binomial_logsf(s, 2000, (1, 1, 1, 1))
    want = binomial_tail(s, 8000, 0.5).log10_pvalue
    assert got / math.log(10) == pytest.approx(want, rel=1e-10)


def test_weighted_null_deep_tail_against_exact_integers() -> None:
    n, weights = 150, (3, 2, 1)
    counts = {0: 1}
    for w in weights:  # exact integer convolution
        new: dict[int, int] = {}
        for x, c in counts.items():
            for k in range(n + 1):
                new[x + w * k] = new.get(x + w * k, 0) + c * math.comb(n, k)
        counts = new
    log_total = n * len(weights) * math.log(2)
    for s in (500, 600, 800, 890, 899):
        want = math.log(sum(c for x, c in counts.items() if x >= s)) - log_total
        got, _ = weighted_binomial_logsf(s, n, weights)
        assert got == pytest.approx(want, rel=1e-10)


# -- null calibration on human text ------------------------------------------------------------

N_CALIBRATION = 300


def _randomised_pvalues(scores: np.ndarray, weights: tuple[int, ...],
                        u: float) -> tuple[float, float, float, float]:
    """(p_mean, p_weighted, randomised p_mean, randomised p_weighted): the randomised p-value
    ``P(S > s) + u P(S = s)`` is exactly uniform under the null (the nulls are discrete)."""
    k, bits = int(scores.sum()), int(scores.size)
    p_ge, p_gt = binomial_tail(k, bits, 0.5).pvalue, binomial_tail(k + 1, bits, 0.5).pvalue
    stat = int(scores.sum(axis=0, dtype=np.int64) @ np.array(weights))
    log_ge, log_gt = weighted_binomial_logsf(stat, scores.shape[0], weights)
    q_ge, q_gt = math.exp(log_ge), math.exp(log_gt)
    return p_ge, q_ge, p_gt + u * (p_ge - p_gt), q_gt + u * (q_ge - q_gt)


def test_null_calibration_on_human_text(human_texts: list[str]) -> None:
    """One fresh random key per docstring: p-values of both tests are calibrated (FPR at 0.01
    within the binomial bound; randomised p-values pass a KS test for uniformity)."""
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    rng = np.random.default_rng(2024)
    params = TournamentParams()
    rows = []
    for text in human_texts[:N_CALIBRATION]:
        t = Tournament(rng.bytes(32), params, V)
        ids = np.array(tok.encode(text, add_special_tokens=False).ids)
        keys = unique_keys(t.tuple_keys(ids))
        scores = t.key_scores(keys)
        rows.append(_randomised_pvalues(scores, t.weights, float(rng.random())))
    res = np.array(rows)
    assert len(rows) == N_CALIBRATION
    limit = stats.binom.ppf(0.999, N_CALIBRATION, 0.01)
    for col in (0, 1):
        assert np.count_nonzero(res[:, col] < 0.01) <= limit
    for col in (2, 3):
        assert stats.kstest(res[:, col], "uniform").pvalue > 1e-3


def test_detect_ids_runs_the_weighted_test(human_texts: list[str]) -> None:
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    t = make()
    ids = np.array(tok.encode(human_texts[0], add_special_tokens=False).ids)
    r = detect_ids(ids, t)
    keys = unique_keys(t.tuple_keys(ids))
    assert r.test == "tournament-weighted" and r.scheme == "tournament"
    assert r.n_scored == keys.size
    want = tournament_weighted_test(t.key_scores(keys), weights=t.weights)
    assert r.statistic == want.statistic and r.pvalue == want.pvalue
    mean = make(score="mean")
    assert detect_ids(ids, mean).test == "tournament-mean"


# -- unbiasedness over keys ------------------------------------------------------------------------

P8 = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])


def _target(p: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    q = p ** (1 / temperature)
    q /= q.sum()
    order = np.argsort(-q, kind="stable")
    before = np.cumsum(q[order]) - q[order]
    q[order[before >= top_p]] = 0.0
    return q / q.sum()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.8)])
def test_unbiased_over_keys(temperature: float, top_p: float) -> None:
    """Averaged over 4000 keys the watermarked distribution is the model's (after temperature
    and top-p), and one token drawn per key is distributed as it: a chi-square test."""
    n_keys = 4000
    rng = np.random.default_rng(11)
    target = _target(P8, temperature, top_p)
    logits = np.log(P8)[None, :]
    context = np.array([[5, 1, 4, 7, 2, 6]])
    probs = np.empty((n_keys, 8))
    for i in range(n_keys):
        t = Tournament(rng.bytes(32), TournamentParams(context_width=3), 8)
        probs[i] = np.exp(t.process(logits, context, prompt_width=6, temperature=temperature,
                                    top_p=top_p)[0])
    mean, se = probs.mean(axis=0), probs.std(axis=0, ddof=1) / math.sqrt(n_keys)
    support = target > 0
    assert np.all(np.abs(mean - target)[support] < 4.5 * se[support])
    assert np.all(probs[:, ~support] == 0.0)
    draws = np.array([rng.choice(8, p=row / row.sum()) for row in probs])
    counts = np.bincount(draws, minlength=8)
    assert stats.chisquare(counts[support], n_keys * target[support]).pvalue > 1e-3
    # and each key really does reweight (the test above could not pass by doing nothing)
    assert np.abs(probs - target).sum(axis=1).mean() > 0.2


def test_temperature_zero_is_greedy_and_left_alone() -> None:
    t = make(vocab_size=16, depth=6, context_width=1, n_lists=4)
    out = t.process(np.linspace(-2, 2, 16)[None, :], np.array([[3, 4]]), temperature=0.0)
    assert out[0, 15] == 0.0 and np.all(np.isneginf(out[0, :15]))


# -- repeated-context masking -----------------------------------------------------------------------

def test_repeated_context_is_left_unwatermarked() -> None:
    t = make(vocab_size=64, depth=30, context_width=2, n_lists=16)
    logits = np.random.default_rng(0).normal(size=(1, 64))
    plain = log_softmax(logits[0])
    # window (20, 21) already preceded generated token 22: masked
    masked = t.process(logits, np.array([[10, 11, 12, 13, 20, 21, 22, 20, 21]]), prompt_width=4)
    np.testing.assert_allclose(masked[0], plain, rtol=0, atol=1e-12)
    # the same window seen only inside the prompt: watermarked
    prompt_only = t.process(logits, np.array([[7, 20, 21, 9, 20, 21]]), prompt_width=4)
    assert np.abs(np.exp(prompt_only[0]) - np.exp(plain)).sum() > 0.05
    # masking off: watermarked
    off = make(vocab_size=64, depth=30, context_width=2, n_lists=16,
               mask_repeated_contexts=False)
    unmasked = off.process(logits, np.array([[10, 11, 12, 13, 20, 21, 22, 20, 21]]),
                           prompt_width=4)
    assert np.abs(np.exp(unmasked[0]) - np.exp(plain)).sum() > 0.05
    # rows of a batch are checked independently
    both = t.process(np.repeat(logits, 2, axis=0),
                     np.array([[10, 11, 12, 13, 20, 21, 22, 20, 21],
                               [10, 11, 12, 13, 20, 21, 22, 23, 21]]), prompt_width=4)
    np.testing.assert_allclose(both[0], plain, rtol=0, atol=1e-12)
    assert np.abs(np.exp(both[1]) - np.exp(plain)).sum() > 0.05


def test_fewer_than_h_tokens_is_unwatermarked() -> None:
    t = make(vocab_size=64, depth=10, context_width=4, n_lists=16)
    logits = np.random.default_rng(1).normal(size=(1, 64))
    out = t.process(logits, np.array([[1, 2, 3]]), prompt_width=3)
    np.testing.assert_allclose(out[0], log_softmax(logits[0]), atol=1e-12)


# -- power -------------------------------------------------------------------------------------------

def test_power_on_toy_model() -> None:
    """Ten 200-token sequences sampled through ``process``: both tests detect at p < 1e-6."""
    detected = {"weighted": 0, "mean": 0}
    for seed in range(10):
        secret = bytes([seed + 1]) * 32
        t = make(secret=secret)
        ids, prompt_len = toy_sequence(t, seed)
        for score in detected:
            r = detect_ids(ids, make(secret=secret, score=score), prompt_len=prompt_len)
            assert r.test == f"tournament-{score}"
            detected[score] += r.pvalue < 1e-6
        if seed < 3:  # the same model without the watermark is not detected
            plain, _ = toy_sequence(None, seed)
            assert detect_ids(plain, t, prompt_len=prompt_len).pvalue > 1e-6
    assert detected["weighted"] >= 9 and detected["mean"] >= 9, detected


# -- adapters ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm() -> hf.LoadedModel:
    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                  eos_token="<|im_end|>", pad_token="<|im_end|>")
    return hf.LoadedModel(model=LlamaForCausalLM(cfg).eval(), tokenizer=tok, source="tiny")


def test_hf_generate_is_detected(tiny_lm: hf.LoadedModel) -> None:
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    scheme = scheme_for(new_spec("tournament", {}, info, secret=bytes(range(5, 37))))
    (out,) = hf.generate(tiny_lm, ["Write a poem about the sea and the sky"], scheme=scheme,
                         max_new_tokens=150, temperature=1.0, seed=0)
    assert len(out.completion_ids) >= 100
    ids = np.array(out.prompt_ids + out.completion_ids)
    r = detect_ids(ids, scheme, prompt_len=len(out.prompt_ids))
    assert r.pvalue < 1e-6, r


def test_hf_processor_equals_process() -> None:
    t = make(depth=12, context_width=2, n_lists=32)
    rng = np.random.default_rng(4)
    proc = hf.WatermarkLogitsProcessor(t, temperature=0.8, top_p=0.9)
    ids = torch.tensor([[2, 2, 50, 60, 70], [11, 12, 13, 14, 15]])  # row 0 left-padded
    for step in range(3):
        scores = torch.from_numpy(rng.normal(size=(2, V)).astype(np.float32))
        want = t.process(scores.numpy(), ids.numpy(), prompt_width=5, temperature=0.8,
                         top_p=0.9)
        got = proc(ids, scores.clone())
        np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))
        ids = torch.cat([ids, ids[:, 3:5] if step == 1 else ids[:, 2:3]], dim=1)


def test_llamacpp_adapter_equals_process() -> None:
    t = make(depth=20, context_width=2, n_lists=32)
    rng = np.random.default_rng(5)
    proc = LlamaCppWatermark(t, temperature=1.2, top_p=0.95)
    prompt = [5, 6, 7, 8]
    seqs = [prompt, prompt + [9], prompt + [9, 7, 8], prompt + [9, 7, 8, 9]]  # last is masked
    for ids in seqs:
        scores = rng.normal(size=V).astype(np.float32)
        got = proc(np.array(ids, dtype=np.intc), scores.copy())
        want = t.process(scores[None, :], np.array([ids]), prompt_width=len(prompt),
                         temperature=1.2, top_p=0.95)[0]
        np.testing.assert_array_equal(got, want)


# -- parameters and errors -------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "message"), [
    ({"depth": 0}, "`depth` must be in 1..64"),
    ({"depth": 65}, "got 65"),
    ({"depth": True}, "`depth` must be an integer"),
    ({"depth": 2.5}, "got 2.5"),
    ({"context_width": -1}, "`context_width` must be in 0..8, got -1"),
    ({"context_width": 9}, "got 9"),
    ({"combine": "xor"}, "`combine` must be one of hash, min, got 'xor'"),
    ({"n_lists": 3}, "`n_lists` must be a power of two in 1..65536, got 3"),
    ({"n_lists": 131072}, "got 131072"),
    ({"mask_repeated_contexts": "yes"}, "`mask_repeated_contexts` must be true or false"),
    ({"depth": 3, "weights": [1, 2]}, "`weights` must have one entry per layer (depth = 3)"),
    ({"depth": 2, "weights": [1, -1]}, "`weights` must be integers in 0..1024, got [1, -1]"),
    ({"depth": 2, "weights": [1, 1.5]}, "`weights` must be integers"),
    ({"depth": 2, "weights": [0, 0]}, "`weights` must not all be 0"),
    ({"depth": 2, "weights": "12"}, "`weights` must be a list of 2 integers"),
    ({"score": "median"}, "`score` must be one of weighted, mean, got 'median'"),
])
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        TournamentParams(**params)
    assert message in str(exc.value)
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    with pytest.raises(SpecError) as spec_exc:
        new_spec("tournament", params, info, secret=SECRET)
    assert message in str(spec_exc.value)


def test_params_round_trip_and_unknown() -> None:
    p = TournamentParams(depth=5)
    assert p.weights == (5, 4, 3, 2, 1)
    d = p.to_dict()
    assert d["weights"] == [5, 4, 3, 2, 1]
    assert TournamentParams.from_mapping(d) == p
    with pytest.raises(ParameterError, match="unknown tournament parameter"):
        TournamentParams.from_mapping({"layers": 3})
    with pytest.raises(ParameterError, match="`vocab_size` must be an integer >= 2"):
        Tournament(SECRET, p, 1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": -1.0}, "`temperature` must be >= 0"),
    ({"top_p": 0.0}, "`top_p` must be in (0, 1]"),
    ({"top_p": 1.5}, "`top_p` must be in (0, 1]"),
    ({"prompt_width": 9}, "`prompt_width` must be in 0..3"),
])
def test_process_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    t = make(vocab_size=16, depth=4, context_width=1, n_lists=4)
    with pytest.raises(ParameterError) as exc:
        t.process(np.zeros((1, 16)), np.array([[1, 2, 3]]), **kwargs)
    assert message in str(exc.value)
    with pytest.raises(ParameterError, match="smaller than the spec's vocab_size 16"):
        t.process(np.zeros((1, 8)), np.array([[1, 2, 3]]))
    with pytest.raises(ParameterError, match=r"must be \(B, W\)"):
        t.process(np.zeros(16), np.array([[1, 2, 3]]))


def test_registered_with_a_preset() -> None:
    from distillmark.watermark import PRESETS, SCHEMES

    assert SCHEMES["tournament"] == (TournamentParams, Tournament)
    assert PRESETS["tournament"] == ("tournament", {})
    assert make().weights == tuple(range(30, 0, -1))  # SynthID-style, decreasing
