"""Detection against several keys at once, corrected for the number of keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.verify import Detector, KeyRingDetector
from distillmark.watermark import ParameterError, save_spec, scheme_for


def _watermarked_text(spec, seed=0, n=150):
    det = Detector(spec)
    scheme = scheme_for(spec)
    rng = np.random.default_rng(seed)
    vocab = rng.choice(np.arange(1000, 20000), 2000, replace=False)
    ids = [int(vocab[0])]
    for _ in range(n):
        logits = np.full((1, scheme.vocab_size), -1e9, np.float32)
        logits[0, vocab] = 0.0
        b = scheme.bias(logits, np.array([ids]))[0]
        p = np.exp(b - b.max())
        ids.append(int(rng.choice(scheme.vocab_size, p=p / p.sum())))
    return det.tokenizer.decode(ids)


@pytest.fixture(scope="module")
def ring(spec_factory):
    return [spec_factory(secret=bytes([i]) * 32, n_lists=16) for i in range(1, 6)]


def test_ring_finds_the_right_key_and_corrects(ring):
    text = _watermarked_text(ring[2])
    res = KeyRingDetector(ring).detect(text)
    assert res.n_keys == 5
    assert res.best.key_id == ring[2].key_id
    assert res.pvalue == pytest.approx(min(1.0, 5 * res.best.pvalue))
    assert res.log10_pvalue == pytest.approx(res.best.log10_pvalue + np.log10(5))
    assert res.is_watermarked(1e-6)
    single = Detector(ring[2]).detect(text)
    assert single.pvalue == res.best.pvalue
    d = res.to_dict(1e-3)
    assert d["n_keys"] == 5 and d["correction"] == "bonferroni"
    assert d["key_id"] == ring[2].key_id and len(d["per_key"]) == 5
    assert d["uncorrected_pvalue"] == res.best.pvalue and d["verdict"] == "watermarked"


def test_ring_false_positive_rate_is_controlled(spec_factory, human_texts):
    """Without correction the best of 5 keys would flag about 5 alpha of human texts."""
    alpha, n_texts = 0.05, 150
    rng = np.random.default_rng(7)
    flagged_corrected = flagged_raw = 0
    texts = human_texts[:n_texts]
    for i, text in enumerate(texts):
        specs = [spec_factory(secret=rng.bytes(32), n_lists=16) for _ in range(5)]
        res = KeyRingDetector(specs).detect(text)
        flagged_corrected += res.pvalue < alpha
        flagged_raw += res.best.pvalue < alpha
    n = len(texts)
    # Corrected: at most alpha in expectation; binomial upper bound at 99.9%.
    assert flagged_corrected <= stats.binom.ppf(0.999, n, alpha)
    # The uncorrected minimum is visibly inflated (the correction is doing work).
    assert flagged_raw > flagged_corrected


def test_ring_refuses_duplicates_and_empty(ring):
    with pytest.raises(ParameterError, match="is in the ring twice"):
        KeyRingDetector([ring[0], ring[0]])
    with pytest.raises(ParameterError, match="at least one key"):
        KeyRingDetector([])


def test_cli_several_keys(ring, tmp_path):
    paths = []
    for i, spec in enumerate(ring[:3]):
        paths.append(save_spec(spec, tmp_path / f"k{i}.json"))
    text = tmp_path / "t.txt"
    text.write_text(_watermarked_text(ring[1], seed=3))
    args = ["detect", "--json"] + [a for p in paths for a in ("--key", str(p))] + [str(text)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["n_keys"] == 3 and d["key_id"] == ring[1].key_id and d["verdict"] == "watermarked"
    human = CliRunner().invoke(app, ["detect"] + args[2:-1] + ["-"],
                               input="A plain sentence written by a person, long enough to be "
                                     "scored against several keys without any watermark in it.")
    assert human.exit_code == 1
    assert "best of 3 keys" in human.stdout


def test_probe_tests_several_keys_on_the_same_answers(ring, tmp_path):
    """probe with several keys: one set of answers, every key's test, the best one corrected
    for their number and the correction recorded, as detect, scan and audit do."""
    from serving_helpers import MODEL_NAME, serving, tiny_generator

    from distillmark.verify.probe import SamplingParams, probe

    paths = [save_spec(spec, tmp_path / f"k{i}.json") for i, spec in enumerate(ring[:3])]
    keys = [a for p in paths for a in ("--key", str(p))]
    with serving(tiny_generator(seed=5), spec=ring[1]) as url:
        res = probe(url, MODEL_NAME, ring[:3], ["Say something.", "And more."],
                    sampling=SamplingParams(max_tokens=40))
        cli = CliRunner().invoke(app, ["probe", "--endpoint", url, "--model", MODEL_NAME,
                                       *keys, "--n-prompts", "2", "--max-tokens", "40",
                                       "--json"])
        human = CliRunner().invoke(app, ["probe", "--endpoint", url, "--model", MODEL_NAME,
                                         *keys, "--n-prompts", "2", "--max-tokens", "40",
                                         "--cache", str(tmp_path / "c")])
        twice = CliRunner().invoke(app, ["probe", "--endpoint", url, "--model", MODEL_NAME,
                                         "--key", str(paths[0]), "--key", str(paths[0]),
                                         "--n-prompts", "2", "--max-tokens", "40", "--json"])
    assert res.n_keys == 3 and res.answers.aggregate.key_id == ring[1].key_id
    assert [r.aggregate.key_id for r in res.per_key] == [s.key_id for s in ring[:3]]
    best = min(res.per_key, key=lambda r: r.log10_pvalue)
    assert res.answers is best
    assert res.pvalue == pytest.approx(min(1.0, 3 * best.pvalue))
    assert res.log10_pvalue == pytest.approx(min(0.0, best.log10_pvalue + np.log10(3)))
    assert res.is_watermarked(1e-6)
    assert {r.n_answers for r in res.per_key} == {res.queries.n_prompts} == {2}
    assert cli.exit_code == 0, cli.stderr
    d = json.loads(cli.stdout)
    assert (d["n_keys"], d["correction"], d["key_id"]) == (3, "bonferroni", ring[1].key_id)
    assert d["log10_pvalue"] == pytest.approx(d["uncorrected_log10_pvalue"] + np.log10(3))
    assert len(d["per_key"]) == 3 and d["verdict"] == "watermarked"
    assert human.exit_code == 0, human.stderr
    assert f"best of 3 keys: {ring[1].key_id}, p corrected for 3 keys" in human.stdout
    # the same key named twice is one key, tested once and corrected for nothing
    assert twice.exit_code in (0, 1), twice.stderr
    once = json.loads(twice.stdout)
    assert (once["n_keys"], once["key_id"]) == (1, ring[0].key_id)


def test_probe_with_one_key_records_a_ring_of_one(ring, tmp_path):
    from distillmark.verify.probe import ProbeResult, QueryStats, score_answers

    text = _watermarked_text(ring[0], seed=4)
    answers = score_answers([("Hi", text)], ring[0])
    res = ProbeResult.of([answers], queries=QueryStats(1, 1, 1, 0, 0, 0, False), endpoint="e",
                         model="m")
    d = res.to_dict(1e-3)
    assert (d["n_keys"], d["pvalue"], d["uncorrected_pvalue"]) == (1, answers.pvalue,
                                                                  answers.pvalue)
    assert d["verdict"] == answers.verdict(1e-3) == "watermarked"
    assert d["detectable_fraction"] == answers.to_dict(1e-3)["detectable_fraction"]
