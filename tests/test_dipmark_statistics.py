"""DiPmark's statistics: unbiasedness over keys, the exact null on human text, batch and pooled
detection, and power on a toy model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dipmark_helpers import V, make
from scipy import stats
from toy_model import toy_sequence

from distillmark.verify import binomial_tail, detect_ids, detect_ids_batch, unique_keys
from distillmark.verify.aggregate import DEFAULT_EFFECT, pool
from distillmark.watermark import BUILTIN_SMOLLM2, DiPmark, DiPmarkParams, load_tokenizer

# -- unbiasedness over keys --------------------------------------------------------------------

P8 = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])


def _target(p: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    q = p ** (1 / temperature)
    q /= q.sum()
    order = np.argsort(-q, kind="stable")
    before = np.cumsum(q[order]) - q[order]
    q[order[before >= top_p]] = 0.0
    return q / q.sum()


@pytest.mark.parametrize(("temperature", "top_p", "context"), [
    (1.0, 1.0, [5, 1, 4, 7]), (1.0, 1.0, [0, 0, 0, 0]), (0.7, 0.8, [2, 6, 3, 1]),
])
def test_unbiased_over_keys(temperature: float, top_p: float, context: list[int]) -> None:
    """Averaged over 2000 keys the watermarked distribution is the model's (after temperature
    and top-p), and one token drawn per key is distributed as it: a chi-square test."""
    n_keys = 2000
    rng = np.random.default_rng(11)
    target = _target(P8, temperature, top_p)
    logits = np.log(P8)[None, :]
    probs = np.empty((n_keys, 8))
    for i in range(n_keys):
        d = DiPmark(rng.bytes(32), DiPmarkParams(), 8)
        probs[i] = np.exp(d.process(logits, np.array([context]), prompt_width=2,
                                    temperature=temperature, top_p=top_p)[0])
    mean, se = probs.mean(axis=0), probs.std(axis=0, ddof=1) / math.sqrt(n_keys)
    support = target > 0
    assert np.all(np.abs(mean - target)[support] < 4.5 * se[support])
    assert np.all(probs[:, ~support] == 0.0)
    draws = np.array([rng.choice(8, p=row / row.sum()) for row in probs])
    counts = np.bincount(draws, minlength=8)
    assert stats.chisquare(counts[support], n_keys * target[support]).pvalue > 1e-3
    # and each key really does reweight (the tests above could not pass by doing nothing)
    assert np.abs(probs - target).sum(axis=1).mean() > 0.3


# -- the exact null on human text ----------------------------------------------------------------

N_CALIBRATION = 300


def test_null_calibration_on_human_text(human_texts: list[str]) -> None:
    """One fresh random key per docstring: the binomial p-values are calibrated (FPR at 0.01
    within the binomial bound; randomised p-values, exactly uniform under the null, pass a KS
    test) and detect_ids gives the same p-value."""
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    rng = np.random.default_rng(2025)
    plain, randomised = [], []
    for text in human_texts[:N_CALIBRATION]:
        d = DiPmark(rng.bytes(32), DiPmarkParams(), V)
        ids = np.array(tok.encode(text, add_special_tokens=False).ids)
        keys = unique_keys(d.tuple_keys(ids))
        k, n, p = int(d.key_scores(keys).sum()), int(keys.size), d.p_green
        ge, gt = binomial_tail(k, n, p).pvalue, binomial_tail(k + 1, n, p).pvalue
        r = detect_ids(ids, d)
        assert (r.statistic, r.n_scored, r.test) == (k, n, "binomial")
        assert r.pvalue == pytest.approx(ge, rel=1e-12)
        plain.append(ge)
        randomised.append(gt + float(rng.random()) * (ge - gt))
    assert len(plain) == N_CALIBRATION
    assert np.count_nonzero(np.array(plain) < 0.01) <= stats.binom.ppf(0.999, N_CALIBRATION,
                                                                        0.01)
    assert stats.kstest(randomised, "uniform").pvalue > 1e-3


def test_batch_detection_and_pooling_agree_with_one_by_one(human_texts: list[str]) -> None:
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    d = make()
    seqs = [np.array(tok.encode(t, add_special_tokens=False).ids) for t in human_texts[:12]]
    plens = [3] * len(seqs)
    batch = detect_ids_batch(seqs, d, prompt_lens=plens)
    for s, pl, r in zip(seqs, plens, batch):
        assert r == detect_ids(s, d, prompt_len=pl)
    res = pool(seqs, d).result()
    keys = unique_keys(np.concatenate([d.tuple_keys(s) for s in seqs]))
    assert (res.n_scored, res.statistic) == (keys.size, int(d.key_scores(keys).sum()))
    assert res.test == "binomial" and res.effect == DEFAULT_EFFECT["dipmark"]


# -- power ---------------------------------------------------------------------------------------

def test_power_on_toy_model() -> None:
    """Ten 200-token sequences sampled through ``process``: detected at p < 1e-6; neither the
    same model without the watermark nor another key is."""
    detected = 0
    for seed in range(10):
        d = make(secret=bytes([seed + 1]) * 32)
        ids, prompt_len = toy_sequence(d, seed)
        r = detect_ids(ids, d, prompt_len=prompt_len)
        detected += r.pvalue < 1e-6
        if seed < 3:
            plain, _ = toy_sequence(None, seed)
            assert detect_ids(plain, d, prompt_len=prompt_len).pvalue > 1e-4
            other = make(secret=bytes([seed + 101]) * 32)
            assert detect_ids(ids, other, prompt_len=prompt_len).pvalue > 1e-4
    assert detected >= 9, detected
