"""Detection: deduplication and prompts, the Detector, null calibration on human text, power."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from distillmark.verify import (
    DEFAULT_ALPHA,
    DetectionResult,
    Detector,
    Verdict,
    binomial_tail,
    detect_ids,
)
from distillmark.watermark import (
    GreenList,
    InputError,
    ParameterError,
    TokenizerMismatchError,
    WatermarkSpec,
    scheme_for,
)
from distillmark.watermark.tokenizer import builtin_tokenizer_path

V = 49152
SpecFactory = Callable[..., WatermarkSpec]


@pytest.fixture(scope="module")
def detector(spec_factory: SpecFactory) -> Detector:
    return Detector(spec_factory())


# -- deduplication, prompts, counts ---------------------------------------------------------------

@pytest.mark.parametrize("h", [0, 1, 2])
def test_one_token_repeated_is_insufficient_evidence(spec_factory: SpecFactory, h: int) -> None:
    scheme = scheme_for(spec_factory(context_width=h, n_lists=64))
    r = detect_ids(np.full(500, 260), scheme)
    assert r.n_tokens == 500
    assert r.n_scored == 1
    assert r.n_repeated == 500 - h - 1
    assert r.dedup
    for alpha in (0.999, 0.5, DEFAULT_ALPHA, 1e-12):
        assert r.verdict(alpha) == Verdict.INSUFFICIENT == "insufficient evidence"
        assert not r.is_watermarked(alpha)
    # without deduplication the same text counts 500 - h times
    r_all = detect_ids(np.full(500, 260), scheme, dedup=False)
    assert r_all.n_scored == 500 - h and r_all.n_repeated == 0 and not r_all.dedup
    assert r_all.statistic in (0, 500 - h)


def test_repeated_text_through_the_detector(detector: Detector) -> None:
    r = detector.detect(" the" * 500)
    assert (r.n_tokens, r.n_scored, r.n_repeated) == (500, 1, 498)
    assert r.verdict(0.5) == Verdict.INSUFFICIENT


def test_n_repeated_counts_repeated_tuples(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory(context_width=1))
    a, b, c = 11, 22, 33
    ids = np.array([a, b, a, b, a, b, c])
    # tuples (a,b) (b,a) (a,b) (b,a) (a,b) (b,c): three distinct, three repeats
    r = detect_ids(ids, scheme)
    assert (r.n_tokens, r.n_scored, r.n_repeated) == (7, 3, 3)
    green = scheme.green_indicators(ids)
    assert r.statistic == int(green[0]) + int(green[1]) + int(green[5])
    # with a two-token prompt the first scored tuple is (b, a)
    r = detect_ids(ids, scheme, prompt_len=2)
    assert (r.n_tokens, r.n_scored, r.n_repeated) == (5, 3, 2)


def test_statistic_and_pvalue_are_the_binomial_test(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory(context_width=2))
    rng = np.random.default_rng(1)
    ids = np.concatenate([rng.integers(0, V, size=300), rng.integers(0, V, size=50)])
    ids = np.concatenate([ids, ids[:80]])  # some repeated passages
    r = detect_ids(ids, scheme)
    keys = scheme.tuple_keys(ids)
    distinct = {}
    for key, green in zip(keys.tolist(), scheme.green_indicators(ids).tolist()):
        distinct[key] = green
    assert r.n_scored == len(distinct)
    assert r.n_repeated == keys.size - len(distinct)
    assert r.statistic == sum(distinct.values())
    assert r.null_mean == scheme.gamma_effective == 0.25
    tail = binomial_tail(r.statistic, r.n_scored, r.null_mean)
    assert (r.pvalue, r.log10_pvalue) == (tail.pvalue, tail.log10_pvalue)
    assert r.pvalue == pytest.approx(stats.binom.sf(r.statistic - 1, r.n_scored, 0.25),
                                     rel=1e-12, abs=0)
    assert r.score_mean == r.statistic / r.n_scored
    assert r.z_score == pytest.approx((r.statistic - 0.25 * r.n_scored)
                                      / math.sqrt(r.n_scored * 0.25 * 0.75))


@pytest.mark.parametrize("h", [1, 2, 3])
def test_prompt_is_context_but_never_scored(spec_factory: SpecFactory, h: int) -> None:
    scheme = scheme_for(spec_factory(context_width=h, n_lists=256))
    rng = np.random.default_rng(2 + h)
    completion = rng.choice(V, size=60, replace=False)  # distinct tokens: no repeats
    prompt = rng.integers(0, V, size=30)
    ids = np.concatenate([prompt, completion])
    r = detect_ids(ids, scheme, prompt_len=prompt.size)
    # the same as scoring the completion after only the prompt's last h tokens
    short = detect_ids(np.concatenate([prompt[-h:], completion]), scheme, prompt_len=h)
    assert r == short
    assert r.n_tokens == completion.size and r.n_scored == completion.size
    assert r.statistic == int(scheme.green_indicators(ids)[prompt.size - h:].sum())
    # other prompt tokens do not matter
    other = np.concatenate([rng.integers(0, V, size=30 - h), prompt[-h:], completion])
    assert detect_ids(other, scheme, prompt_len=30) == r
    # without the prompt the first h completion tokens have no context
    alone = detect_ids(completion, scheme)
    assert alone.n_scored == completion.size - h
    # prompt tokens are never scored: a prompt made only of green tuples changes nothing
    green_after = scheme.green_indicators(ids)
    assert r.statistic == int(green_after[-completion.size:].sum())


def test_prompt_shorter_than_context(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory(context_width=3, n_lists=256))
    ids = np.arange(100, 140)
    r = detect_ids(ids, scheme, prompt_len=1)
    assert r.n_tokens == 39 and r.n_scored == 37  # the first 2 completion tokens lack context
    assert detect_ids(ids, scheme, prompt_len=40).n_scored == 0


def test_detect_ids_argument_errors(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory())
    with pytest.raises(ParameterError, match="`prompt_len` must be in 0..5, got 6"):
        detect_ids(np.arange(5), scheme, prompt_len=6)
    with pytest.raises(ParameterError, match="`prompt_len` must be in 0..5, got -1"):
        detect_ids(np.arange(5), scheme, prompt_len=-1)
    with pytest.raises(ParameterError, match="`min_scored` must be >= 1, got 0"):
        detect_ids(np.arange(5), scheme, min_scored=0)
    with pytest.raises(ParameterError, match=f"token id {V} is outside"):
        detect_ids(np.array([1, 2, V]), scheme)


def test_result_verdicts_and_dict(spec_factory: SpecFactory) -> None:
    spec = spec_factory(context_width=1, n_lists=256, delta=100.0)
    scheme = scheme_for(spec)
    rng = np.random.default_rng(4)
    # greedy generation with a bias that always wins: every tuple is green
    seq = [int(rng.integers(V))]
    for _ in range(40):
        logits = scheme.bias(rng.normal(size=(1, V)), np.array([seq[-1:]]))
        seq.append(int(np.argmax(logits[0])))
    marked = detect_ids(np.array(seq), scheme, min_scored=10)
    assert marked.statistic == marked.n_scored == 40
    assert marked.log10_pvalue == pytest.approx(40 * math.log10(0.25))
    assert marked.verdict(1e-6) == Verdict.WATERMARKED and marked.is_watermarked(1e-6)
    assert detect_ids(np.array(seq[:20]), scheme).verdict(1e-6) == Verdict.INSUFFICIENT
    ids = rng.integers(0, V, size=400)
    null = detect_ids(ids, scheme)
    assert null.verdict(1e-6) == Verdict.NOT_WATERMARKED
    d = null.to_dict(alpha=1e-6)
    assert d["verdict"] == "not watermarked" and d["alpha"] == 1e-6
    assert d["key_id"] == spec.key_id and d["scheme"] == "greenlist" and d["test"] == "binomial"
    assert {"statistic", "pvalue", "log10_pvalue", "n_tokens", "n_scored", "n_repeated", "null_mean",
            "min_scored", "dedup", "score_mean", "z_score"} <= set(d)
    assert "verdict" not in null.to_dict()
    json.dumps(d)
    assert spec.secret.hex() not in json.dumps(d)
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ParameterError, match="`alpha` must be in \\(0, 1\\)"):
            null.is_watermarked(bad)
    assert isinstance(null, DetectionResult)


# -- the Detector -----------------------------------------------------------------------------------

def test_detector_refuses_empty_text(detector: Detector) -> None:
    with pytest.raises(InputError, match="^text is empty$"):
        detector.detect("")
    for blank in (" ", "\n\t  \n"):
        with pytest.raises(InputError, match="^text is only whitespace$"):
            detector.detect(blank)
    with pytest.raises(InputError, match="`text` must be a str, got bytes"):
        detector.encode(b"abc")  # type: ignore[arg-type]


def test_detector_detect_with_prompt(detector: Detector, human_texts: list[str]) -> None:
    prompt, text = human_texts[0][:300], human_texts[1]
    r = detector.detect(text, prompt=prompt)
    p_ids, t_ids = detector.encode(prompt), detector.encode(text)
    assert r == detect_ids(np.concatenate([p_ids, t_ids]), detector.scheme, prompt_len=p_ids.size)
    assert r.n_tokens == t_ids.size
    assert detector.detect(text) == detector.detect_ids(t_ids)
    assert detector.detect(text, prompt="") == detector.detect(text)


@pytest.fixture(scope="module")
def tokenizer_jsons() -> dict[str, str]:
    """The builtin tokenizer.json re-serialised (other layout and key order), as it is and with
    one merge dropped."""
    data = json.loads(builtin_tokenizer_path().read_text(encoding="utf-8"))
    same = json.dumps(dict(reversed(list(data.items()))), indent=1)
    data["model"]["merges"].pop(1000)
    return {"same": same, "modified": json.dumps(data)}


def test_detector_accepts_the_same_tokenizer_saved_differently(
        spec_factory: SpecFactory, tokenizer_jsons: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer_jsons["same"], encoding="utf-8")
    det = Detector(spec_factory(), tokenizer=path)
    also_dir = Detector(spec_factory(), tokenizer=tmp_path)  # a model directory holding it
    text = "Return the indices of the maximum values along an axis."
    builtin = Detector(spec_factory())
    np.testing.assert_array_equal(det.encode(text), builtin.encode(text))
    np.testing.assert_array_equal(also_dir.encode(text), builtin.encode(text))


def test_detector_refuses_a_modified_tokenizer(spec_factory: SpecFactory,
                                               tokenizer_jsons: dict[str, str],
                                               tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer_jsons["modified"], encoding="utf-8")
    with pytest.raises(TokenizerMismatchError) as exc:
        Detector(spec_factory(), tokenizer=path)
    msg = str(exc.value)
    assert "does not match the spec's tokenizer" in msg and "\n" not in msg
    assert isinstance(exc.value, ValueError)


def test_detector_refuses_a_tokenizer_modified_in_place(spec_factory: SpecFactory,
                                                        tokenizer_jsons: dict[str, str],
                                                        tmp_path: Path) -> None:
    # the fingerprint must be that of the file as it is now, not as it was when first loaded
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer_jsons["same"], encoding="utf-8")
    Detector(spec_factory(), tokenizer=path)
    path.write_text(tokenizer_jsons["modified"], encoding="utf-8")
    with pytest.raises(TokenizerMismatchError):
        Detector(spec_factory(), tokenizer=path)


# -- null calibration on human text ----------------------------------------------------------------

N_TEXTS = 100
KEYS_PER_TEXT = 10


@pytest.fixture(scope="module")
def human_ids(human_texts: list[str], detector: Detector) -> list[np.ndarray]:
    rng = np.random.default_rng(20261128)
    chosen = np.sort(rng.choice(len(human_texts), size=N_TEXTS, replace=False))
    return [detector.encode(human_texts[i]) for i in chosen]


def _randomized_pvalues(results: list[DetectionResult], u: np.ndarray) -> np.ndarray:
    """Uniform under the null: P(X > k) + u P(X = k), X ~ Binomial(n_scored, gamma) exactly."""
    k = np.array([r.statistic for r in results])
    n = np.array([r.n_scored for r in results])
    gamma = results[0].null_mean
    above = stats.binom.sf(k, n, gamma)
    at = stats.binom.pmf(k, n, gamma)
    return above + u * at


@pytest.mark.parametrize("h", [0, 1, 2])
def test_null_calibration_on_human_text(h: int, human_ids: list[np.ndarray],
                                        spec_factory: SpecFactory) -> None:
    # Every (text, key) pair has its own random key: a key shared by several texts would make
    # their p-values dependent (common phrases hit the same table cells), and neither the KS test
    # nor the binomial bound below holds for dependent samples.
    rng = np.random.default_rng(1000 + h)
    results, raw = [], []
    for ids in human_ids:
        for _ in range(KEYS_PER_TEXT):
            scheme = scheme_for(spec_factory(secret=rng.bytes(32), context_width=h))
            results.append(detect_ids(ids, scheme))
            if h == 1:
                raw.append(detect_ids(ids, scheme, dedup=False))
    n = len(results)
    assert n == N_TEXTS * KEYS_PER_TEXT
    assert min(r.n_scored for r in results) >= 25
    u = rng.random(n)
    randomized = _randomized_pvalues(results, u)
    pvalues = np.array([r.pvalue for r in results])
    # the randomized p-value is exactly the exact p-value's upper end when u = 1
    np.testing.assert_allclose(_randomized_pvalues(results, np.ones(n)), pvalues, rtol=1e-9)
    assert stats.kstest(randomized, "uniform").pvalue > 1e-3
    # the exact (discrete) test is valid: its false-positive rate at alpha is at most alpha
    alpha = 0.01
    false_pos = int(np.sum(pvalues < alpha))
    assert stats.binomtest(false_pos, n, alpha, alternative="greater").pvalue > 1e-3
    # the randomized test's rate is alpha itself
    rand_pos = int(np.sum(randomized < alpha))
    assert stats.binomtest(rand_pos, n, alpha).pvalue > 1e-3
    if h == 1:
        # the same check rejects a test that counts repeated tuples: the calibration check can fail
        assert stats.kstest(_randomized_pvalues(raw, u), "uniform").pvalue < 1e-3


# -- power: sampling with the scheme's own bias --------------------------------------------------

LM_SEED = 77
N_SEQ, N_NEW, N_CAND = 10, 200, 256
_ZIPF = -1.2 * np.log(np.arange(1, N_CAND + 1))


def _lm(context: np.ndarray) -> np.ndarray:
    """A fixed random 'language model': after the last two tokens of ``context``, the 256
    distinct tokens it can emit, most likely first (logits ``_ZIPF``; every other token is
    impossible): ``(c,) int -> (256,) int``."""
    g = np.random.default_rng([LM_SEED, int(context[-2]), int(context[-1])])
    return g.choice(V, size=N_CAND, replace=False)


def _sample(scheme: GreenList | None, seed: int) -> np.ndarray:
    """N_SEQ sequences of a 2-token prompt and N_NEW tokens sampled at temperature 1, with the
    scheme's bias applied to the full ``(N_SEQ, V)`` logits at each step (none when ``scheme``
    is None)."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, V, size=(N_SEQ, 2))
    logits = np.full((N_SEQ, V), -1e4, dtype=np.float32)
    for _ in range(N_NEW):
        cands = [_lm(s) for s in seqs]
        if scheme is None:
            cand_logits = [_ZIPF] * N_SEQ
        else:
            for b, cand in enumerate(cands):
                logits[b, cand] = _ZIPF
            out = scheme.bias(logits, seqs)
            cand_logits = [out[b, cand].astype(np.float64) for b, cand in enumerate(cands)]
            for b, cand in enumerate(cands):
                logits[b, cand] = -1e4
        nxt = np.empty(N_SEQ, dtype=np.int64)
        for b, (cand, z) in enumerate(zip(cands, cand_logits)):
            w = np.cumsum(np.exp(z - z.max()))
            nxt[b] = cand[np.searchsorted(w, rng.random() * w[-1])]
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
    return seqs


@pytest.mark.parametrize("params", [
    {},  # the defaults
    {"context_width": 2, "n_lists": 256},
    {"context_width": 3, "seeding": "selfhash", "combine": "min", "n_lists": 256},
])
def test_power_on_watermarked_samples(params: dict[str, Any], spec_factory: SpecFactory) -> None:
    spec = spec_factory(**params)
    generator, detector_scheme = scheme_for(spec), scheme_for(spec)  # two independent objects
    marked = _sample(generator, seed=5)
    plain = _sample(None, seed=5)
    hits = [detect_ids(s, detector_scheme, prompt_len=2) for s in marked]
    misses = [detect_ids(s, detector_scheme, prompt_len=2) for s in plain]
    assert all(r.n_tokens == N_NEW and r.n_scored >= 150 for r in hits + misses)
    assert sum(r.is_watermarked(1e-6) for r in hits) >= 9
    assert not any(r.is_watermarked(1e-6) for r in misses)
    assert np.mean([r.score_mean for r in hits]) > 0.5
    # the key matters: another key does not see the watermark
    other = scheme_for(spec_factory(secret=bytes(range(1, 33)), **params))
    assert not any(detect_ids(s, other, prompt_len=2).is_watermarked(1e-6) for s in marked)


@pytest.mark.parametrize("params", [{}, {"context_width": 0}, {"context_width": 3, "combine": "min"},
                                    {"context_width": 2, "seeding": "selfhash"}])
def test_detect_ids_batch_equals_one_by_one(spec_factory, params) -> None:
    from distillmark.verify import detect_ids_batch

    scheme = scheme_for(spec_factory(n_lists=64, **params))
    rng = np.random.default_rng(11)
    seqs = [rng.integers(0, 300, int(rng.integers(0, 300))) for _ in range(300)]
    seqs += [np.full(500, 7), np.arange(3), np.zeros(0, dtype=np.int64)]
    plens = [int(rng.integers(0, s.size + 1)) if s.size and i % 3 == 0 else 0
             for i, s in enumerate(seqs)]
    one = [detect_ids(s, scheme, prompt_len=p) for s, p in zip(seqs, plens)]
    assert detect_ids_batch(seqs, scheme, prompt_lens=plens) == one
    with pytest.raises(ParameterError, match=r"`prompt_lens\[0\]` must be in 0..3, got 4"):
        detect_ids_batch([np.arange(3)], scheme, prompt_lens=[4])
